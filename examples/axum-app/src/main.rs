//! `axum-app`: serve directories over SpockFS.
//!
//! ```text
//! cargo run --release -p axum-app -- --root ./data --listen 127.0.0.1:8080
//! ```

use axum_app::{mount_url, serve, shutdown_signal, Args};
use clap::Parser;

/// mimalloc: Pingora allocates and frees per-request buffers across
/// threads, where glibc's malloc spends ~13% of the CPU (perf); both
/// example servers use the same allocator so benchmarks compare like with
/// like.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
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
