//! The conformance suite against the axum app, on LocalFs and on MemFs.

use spockfs_tests::{axum_local, axum_mem, suite};

fn filter() -> Option<String> {
    std::env::var("SPOCKFS_CHECK").ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_app_localfs() {
    let (target, _running) = axum_local().await;
    let failures = suite::run(&target, filter().as_deref()).await;
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_router_memfs() {
    let (target, _running) = axum_mem().await;
    let failures = suite::run(&target, filter().as_deref()).await;
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
