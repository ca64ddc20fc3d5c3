//! `axum-app`: serve directories over SpockFS.
//!
//! ```text
//! cargo run --release -p axum-app -- --root ./data --listen 127.0.0.1:8080
//! ```

use axum_app::{mount_url, shutdown_signal, App, Args};
use clap::Parser;

// The system allocator, not mimalloc (used until issue 6): mimalloc 3's
// per-thread heaps kept memory that the engine's blocking threads allocate
// and async workers free (and the reverse), and under 64 concurrent
// clients (tests/tests/soak.rs) the server's RSS grew past 1.3 GiB in 20 s
// (~250 MiB and still growing with THP off; ~400 MiB with mimalloc 2);
// glibc's stays flat at ~60 MiB.
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        // The log goes to stdout: colours only on a terminal (not in a
        // file, a pipe or the journal).
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let args = Args::parse();
    // Every setting is checked (roots, users, htpasswd, TLS, the listen
    // address) before the banner: a bad one is a single line on stderr.
    let app = {
        let args = args.clone();
        match tokio::task::spawn_blocking(move || App::new(args)).await {
            Ok(Ok(app)) => app,
            Ok(Err(e)) => {
                eprintln!("axum-app: {e}");
                return std::process::ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("axum-app: start-up failed: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
    };
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("axum-app: cannot listen on {}: {e}", args.listen);
            return std::process::ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().unwrap_or(args.listen);
    let url = mount_url(&args, addr);
    let shutdown = shutdown_signal();
    println!("SpockFS serving {} at {url}", args.root_dir().display());
    println!("mount it with:  spockfs-mount {url} /mnt/spockfs");
    println!("  (or with the original C client: spockfs {url} /mnt/spockfs)");
    let server = app.serve(listener, shutdown);
    match server.await {
        Ok(()) => {
            println!("axum-app: shut down cleanly");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("axum-app: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
