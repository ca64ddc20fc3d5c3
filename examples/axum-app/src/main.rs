//! `axum-app`: serve directories over SpockFS.
//!
//! ```text
//! cargo run --release -p axum-app -- --root ./data --listen 127.0.0.1:8080
//! ```

use axum_app::{mount_url, serve, shutdown_signal, Args};
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
        .init();
    let args = Args::parse();
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("axum-app: cannot listen on {}: {e}", args.listen);
            return std::process::ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().unwrap_or(args.listen);
    let url = mount_url(&args, addr);
    let root = args.root.display().to_string();
    let shutdown = shutdown_signal();
    let server = serve(args, listener, shutdown);
    println!("SpockFS serving {root} at {url}");
    println!("mount it with:  spockfs {url} /mnt/spockfs");
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
