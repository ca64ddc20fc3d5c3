//! The conformance suite against the axum app, on LocalFs and on MemFs: one
//! trial per check and backend (`cargo test --test conformance -- --list`).

use spockfs_tests::harness::{conformance, Served};
use spockfs_tests::{axum_local, axum_mem};
use std::process::ExitCode;

fn main() -> ExitCode {
    conformance(vec![
        Served::new("axum_app_localfs", || async {
            let (target, running) = axum_local().await;
            (target, Box::new(running) as _)
        }),
        Served::new("axum_router_memfs", || async {
            let (target, running) = axum_mem().await;
            (target, Box::new(running) as _)
        }),
    ])
}
