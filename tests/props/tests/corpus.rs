//! The fuzz targets' properties on stable Rust: every file of
//! `fuzz/corpus/<target>/` (the minimized corpus, crashers included as
//! regressions), then random inputs from proptest — half fresh bytes, half
//! mutations of corpus files.
//!
//! `SPOCKFS_PROPTEST_CASES` sets the random cases per target (default 4096;
//! the LocalFs target runs a quarter of it, it does real disk I/O).

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::path::{Path, PathBuf};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.unwrap_or_else(|e| panic!("{e}")).path();
            let data = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, data)
        })
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "{}: empty corpus (a CI checkout must carry it)",
        dir.display()
    );
    files
}

fn cases() -> u32 {
    std::env::var("SPOCKFS_PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4096)
}

/// Runs `check` on the corpus of `target`, then on `n` random inputs.
fn run(target: &str, check: fn(&[u8]), n: u32) {
    let files = corpus(target);
    for (p, data) in &files {
        if let Err(e) = std::panic::catch_unwind(|| check(data)) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{target}: corpus file {} fails: {msg}", p.display());
        }
    }
    let seeds: Vec<Vec<u8>> = files.into_iter().map(|(_, d)| d).collect();
    let nseeds = seeds.len();
    let mutated = (
        0..nseeds,
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..8),
    )
        .prop_map(move |(i, edits)| {
            let mut d = seeds[i].clone();
            for (at, b, kind) in edits {
                match kind {
                    0 if !d.is_empty() => {
                        let i = at.index(d.len());
                        d[i] = b;
                    }
                    1 => {
                        let i = at.index(d.len() + 1);
                        d.insert(i, b);
                    }
                    2 if !d.is_empty() => {
                        let i = at.index(d.len());
                        d.remove(i);
                    }
                    _ => d.push(b),
                }
            }
            d
        });
    let strategy = prop_oneof![prop::collection::vec(any::<u8>(), 0..600), mutated];
    let mut runner = TestRunner::new(Config {
        cases: n,
        failure_persistence: None,
        ..Config::default()
    });
    let start = std::time::Instant::now();
    runner
        .run(&strategy, |data| {
            std::panic::catch_unwind(|| check(&data)).map_err(|e| {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                TestCaseError::fail(msg)
            })
        })
        .unwrap_or_else(|e| panic!("{target}: {e}"));
    eprintln!(
        "{target}: {nseeds} corpus files + {n} random cases in {:.2?}",
        start.elapsed()
    );
}

fn target(name: &str) -> fn(&[u8]) {
    spockfs_props::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| *f)
        .unwrap_or_else(|| panic!("no target {name}"))
}

#[test]
fn path() {
    run("path", target("path"), cases());
}

#[test]
fn headers() {
    run("headers", target("headers"), cases());
}

#[test]
fn range() {
    run("range", target("range"), cases());
}

#[test]
fn listing() {
    run("listing", target("listing"), cases());
}

#[test]
fn client() {
    run("client", target("client"), cases());
}

#[test]
fn engine_mem() {
    run("engine_mem", target("engine_mem"), cases());
}

#[test]
fn engine_local() {
    run("engine_local", target("engine_local"), cases().div_ceil(4));
    spockfs_props::engine::cleanup_local();
}

/// Every target has a corpus directory and a test above.
#[test]
fn every_target_has_a_corpus() {
    for (name, _) in spockfs_props::TARGETS {
        assert!(corpus_dir(name).is_dir(), "{name}: no corpus directory");
    }
}
