//! `spockfs-mount URL MOUNTPOINT`: mounts a SpockFS server with FUSE.
//!
//! Runs in the foreground until the filesystem is unmounted: SIGINT or
//! SIGTERM unmount it cleanly, and an external `fusermount3 -u MOUNTPOINT`
//! (or `umount`) ends the process. It never daemonizes (`--foreground` is
//! accepted for compatibility with other FUSE clients); run it under
//! systemd, `nohup … &` or similar to keep it in the background.

use clap::Parser;
use spockfs_client::fuse::{MountConfig, SpockFuse};
use spockfs_client::Client;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "spockfs-mount",
    about = "Mount a SpockFS server (http(s)://[user:pass@]host[:port][/prefix]) with FUSE"
)]
struct Args {
    /// Server URL, e.g. http://127.0.0.1:8080/fs
    url: String,
    /// Directory to mount on
    mountpoint: PathBuf,
    /// Mount read-only
    #[arg(long)]
    read_only: bool,
    /// Seconds the kernel may cache attributes
    #[arg(long, default_value_t = 1.0)]
    attr_timeout: f64,
    /// Seconds the kernel may cache names
    #[arg(long, default_value_t = 1.0)]
    entry_timeout: f64,
    /// Let other users access the mount (needs user_allow_other in
    /// /etc/fuse.conf unless run as root)
    #[arg(long)]
    allow_other: bool,
    /// Accepted for compatibility: spockfs-mount always stays in the
    /// foreground
    #[arg(long, short = 'f')]
    foreground: bool,
    /// Log every request (to stderr)
    #[arg(long, short = 'd')]
    debug: bool,
    /// Extra CA certificates (PEM) to trust for https
    #[arg(long)]
    ca_file: Vec<PathBuf>,
    /// Per-request timeout in seconds; a request that takes longer fails
    /// with EIO
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
}

fn secs(v: f64, what: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(v).map_err(|e| format!("--{what}: {e}"))
}

/// The URL without credentials, for `/proc/mounts`.
fn public_url(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => {
            let rest = &url[at + 1..];
            if url[s + 3..at].contains('/') {
                url.to_owned()
            } else {
                format!("{}{}", &url[..s + 3], rest)
            }
        }
        _ => url.to_owned(),
    }
}

fn run(args: Args) -> Result<(), String> {
    // fuser warns about unmounting an already unmounted filesystem after an
    // external `fusermount3 -u`: not worth a line.
    let level = if args.debug {
        "debug"
    } else {
        "warn,fuser::session=error"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .init();

    let mut b = Client::builder(&args.url).timeout(secs(args.timeout, "timeout")?);
    for f in &args.ca_file {
        b = b.ca_file(f);
    }
    let client = b.build().map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;

    // Fail early (and learn the extensions) rather than mount a dead server.
    rt.block_on(async {
        client.extensions().await;
        client.getattr(b"/").await
    })
    .map_err(|e| format!("{}: {e}", args.url))?;

    let cfg = MountConfig {
        read_only: args.read_only,
        attr_timeout: secs(args.attr_timeout, "attr-timeout")?,
        entry_timeout: secs(args.entry_timeout, "entry-timeout")?,
        allow_other: args.allow_other,
        fsname: public_url(&args.url),
    };
    let fs = SpockFuse::new(client, rt.handle().clone(), cfg);
    let config = fs.fuser_config();
    let mp: PathBuf = args
        .mountpoint
        .canonicalize()
        .map_err(|e| format!("{}: {e}", args.mountpoint.display()))?;
    let session = fuser::Session::new(fs, &mp, &config)
        .map_err(|e| format!("mount {}: {e}", mp.display()))?;
    // Once the session serves (stat of the mount point), lift the kernel's
    // 128 KiB readahead cap (root only; best effort).
    let ra = mp.clone();
    std::thread::spawn(move || {
        if !spockfs_client::fuse::raise_readahead(&ra) {
            tracing::debug!("readahead left at the kernel default");
        }
    });
    rt.spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        tracing::info!("signal: unmounting {}", mp.display());
        let shown = mp.display().to_string();
        match tokio::task::spawn_blocking(move || spockfs_client::fuse::unmount(&mp)).await {
            Ok(Ok(false)) => {}
            Ok(Ok(true)) => eprintln!("spockfs-mount: {shown} busy: detached lazily"),
            Ok(Err(e)) => eprintln!("spockfs-mount: unmount {shown}: {e}"),
            Err(e) => eprintln!("spockfs-mount: unmount {shown}: {e}"),
        }
    });
    let r = session.run();
    rt.shutdown_timeout(Duration::from_millis(200));
    r.map_err(|e| format!("session: {e}"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spockfs-mount: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_are_hidden() {
        assert_eq!(
            super::public_url("https://u:p@h:1/fs"),
            "https://h:1/fs".to_string()
        );
        assert_eq!(super::public_url("http://h/fs"), "http://h/fs".to_string());
    }
}
