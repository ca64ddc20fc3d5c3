//! `spockfs-mount URL MOUNTPOINT`: mounts a SpockFS server with FUSE.
//!
//! Like other FUSE clients it returns once the filesystem is mounted and
//! serves it from a background process (`--foreground`/`-f`, implied by
//! `--debug`, keeps it attached, e.g. under systemd). The exit status says
//! whether the mount worked: the background process reports back through a
//! pipe before the command exits. It serves until the filesystem is
//! unmounted: SIGINT or SIGTERM unmount it cleanly, and an external
//! `fusermount3 -u MOUNTPOINT` (or `umount`) ends the process.

use clap::Parser;
use spockfs_client::{redact_url, Client, ErrorKind};
use spockfs_mount::{MountConfig, SpockFuse};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "spockfs-mount",
    version,
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
    /// Stay in the foreground (default: return once mounted and serve from
    /// a background process)
    #[arg(long, short = 'f')]
    foreground: bool,
    /// Log every request (to stderr): each FUSE operation, and each SpockFS
    /// call with its method, path, status, errno and duration; implies
    /// --foreground
    #[arg(long, short = 'd')]
    debug: bool,
    /// Extra CA certificates (PEM) to trust for https
    #[arg(long)]
    ca_file: Vec<PathBuf>,
    /// Per-request timeout in seconds; a request that takes longer fails
    /// with EIO
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// FUSE event-loop threads, each with its own /dev/fuse descriptor and
    /// connections (Linux; elsewhere 1). Each serves any number of requests
    /// at once; more than one only helps when the mount itself runs out of
    /// CPU
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: u16,
    /// Do not let the kernel check permissions against the attributes the
    /// server reports (default: it does, `default_permissions`, as for a
    /// local disk; the server checks only what its identity rules say)
    #[arg(long)]
    no_default_permissions: bool,
    /// Do not send each caller's uid, gid and groups (`X-Spock-caller`) to
    /// a server that speaks the `identity` extension
    #[arg(long)]
    no_send_ids: bool,
    /// Drop a file's cached pages at every open (default: keep them while
    /// the server shows the file unchanged, close-to-open as NFS)
    #[arg(long)]
    no_keep_cache: bool,
    /// Let the kernel gather writes in its page cache and send them as
    /// large PUTs at writeback, close() or fsync() (which report write
    /// errors). Only for a mount that is the sole writer of its files: the
    /// kernel then trusts its own size and mtime of a cached file over the
    /// server's, so changes made by other clients can go unseen
    #[arg(long)]
    writeback_cache: bool,
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

/// Forks: the parent waits for the child to report (through a pipe) that
/// the filesystem is mounted or why it failed, and exits accordingly; the
/// child detaches (new session, stdio on /dev/null once mounted) and
/// returns the pipe's write end. Must run before any thread exists.
fn daemonize() -> Result<std::fs::File, String> {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid two-int array for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: the fds were just created and are owned here alone.
    let (mut rd, wr) = unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    };
    // SAFETY: called from main before any other thread is started, so the
    // child is a complete copy of a single-threaded process.
    match unsafe { libc::fork() } {
        -1 => Err(format!("fork: {}", std::io::Error::last_os_error())),
        0 => {
            drop(rd);
            // SAFETY: plain syscall; the child is not a group leader.
            unsafe { libc::setsid() };
            Ok(wr)
        }
        child => {
            drop(wr);
            let mut msg = String::new();
            let _ = rd.read_to_string(&mut msg);
            if msg == "ok" {
                std::process::exit(0);
            }
            // It failed before mounting and is exiting: reap it.
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(child, std::ptr::null_mut(), 0) };
            if msg.is_empty() {
                msg = "the background process exited before mounting".into();
            }
            eprintln!("spockfs-mount: {msg}");
            std::process::exit(1);
        }
    }
}

/// Detaches the background process once mounted: stdio on /dev/null, and
/// out of the caller's working directory (which it would keep busy).
fn detach() {
    let _ = std::env::set_current_dir("/");
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        use std::os::fd::AsRawFd;
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors, which stay open.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

/// Mounts and serves. `ready` (background mode) is told "ok" and closed
/// once mounted; left in place on an earlier error, for `main` to report.
fn run(args: Args, ready: &mut Option<std::fs::File>) -> Result<(), String> {
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
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    // The mount point first: a local mistake is reported before any
    // network round trip.
    let mp: PathBuf = args.mountpoint.canonicalize().map_err(|e| {
        if e.raw_os_error() == Some(libc::ENOTCONN) {
            format!(
                "{}: {e}: a mount whose server process is gone; unmount it first \
                 (fusermount3 -u {0})",
                args.mountpoint.display()
            )
        } else {
            format!("{}: {e}", args.mountpoint.display())
        }
    })?;
    spockfs_mount::check_can_mount(&mp).map_err(|e| e.to_string())?;

    let mut b = Client::builder(&args.url).timeout(secs(args.timeout, "timeout")?);
    for f in &args.ca_file {
        b = b.ca_file(f);
    }
    let client = b.build().map_err(|e| e.to_string())?;
    // For the check below and the signal handler; the FUSE threads run
    // requests on runtimes of their own.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;

    // Fail early, saying why (and learn the extensions), rather than mount
    // a dead server.
    rt.block_on(client.check()).map_err(|e| {
        let hint = match e.kind() {
            ErrorKind::UntrustedCertificate => "; trust its CA with --ca-file",
            _ => "",
        };
        format!("cannot mount {}: {e}{hint}", redact_url(&args.url))
    })?;
    tracing::debug!(url = %redact_url(&args.url), "SpockFS server checked");

    let cfg = MountConfig {
        read_only: args.read_only,
        attr_timeout: secs(args.attr_timeout, "attr-timeout")?,
        entry_timeout: secs(args.entry_timeout, "entry-timeout")?,
        allow_other: args.allow_other,
        fsname: public_url(&args.url),
        threads: usize::from(args.threads),
        default_permissions: !args.no_default_permissions,
        send_ids: !args.no_send_ids,
        keep_cache: !args.no_keep_cache,
        writeback_cache: args.writeback_cache,
    };
    let fs = SpockFuse::new(client, cfg);
    let config = fs.fuser_config();
    let session = fuser::Session::new(fs, &mp, &config)
        .map_err(|e| format!("mount {}: {e}", mp.display()))?;
    if let Some(mut w) = ready.take() {
        use std::io::Write;
        let _ = w.write_all(b"ok");
        detach();
    }
    // Once the session serves (stat of the mount point), lift the kernel's
    // 128 KiB readahead cap (root only; best effort).
    let ra = mp.clone();
    std::thread::spawn(move || {
        if !spockfs_mount::raise_readahead(&ra) {
            tracing::debug!("readahead left at the kernel default");
        }
    });
    rt.spawn(spockfs_mount::unmount_on_signal(mp));
    let r = session.run();
    rt.shutdown_timeout(Duration::from_millis(200));
    r.map_err(|e| format!("session: {e}"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut ready = None;
    if !(args.foreground || args.debug) {
        match daemonize() {
            Ok(w) => ready = Some(w),
            Err(e) => {
                eprintln!("spockfs-mount: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    match run(args, &mut ready) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Before mounting, the waiting parent prints it.
            if let Some(mut w) = ready {
                use std::io::Write;
                let _ = w.write_all(e.as_bytes());
            } else {
                eprintln!("spockfs-mount: {e}");
            }
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
