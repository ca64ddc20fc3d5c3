//! The conformance suite as one libtest trial per check and per way of
//! serving, so `cargo test --test conformance -- --list` names every check
//! and `cargo test --test conformance -- mkdir` runs one by name.
//!
//! A test target using it sets `harness = false` and its `main` calls
//! [`conformance`] with the servers to check. Each server starts at its
//! first trial and stops when every trial has run.

use crate::{suite, Target};
use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

/// A started server: the target to check and what keeps it running.
pub type Started = (Target, Box<dyn Any + Send>);

type Setup = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = Started> + Send>> + Send>;

/// A way of serving under test, started on first use.
pub struct Served {
    name: String,
    setup: Mutex<Option<Setup>>,
    started: tokio::sync::OnceCell<(Target, Mutex<Box<dyn Any + Send>>)>,
}

impl Served {
    /// A server named `name` (the trials' prefix), started by `setup`.
    pub fn new<F, Fut>(name: &str, setup: F) -> Arc<Self>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Started> + Send + 'static,
    {
        Arc::new(Served {
            name: name.to_owned(),
            setup: Mutex::new(Some(Box::new(move || Box::pin(setup())))),
            started: tokio::sync::OnceCell::new(),
        })
    }

    async fn target(&self) -> &Target {
        let started = self
            .started
            .get_or_init(|| async {
                let setup = self
                    .setup
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take()
                    .unwrap_or_else(|| panic!("{}: the server failed to start earlier", self.name));
                let (target, guard) = setup().await;
                (target, Mutex::new(guard))
            })
            .await;
        &started.0
    }
}

/// A test target's trials: the conformance checks of each [`Served`] and
/// any other tests, each run like a `#[tokio::test]`.
pub struct Harness {
    rt: tokio::runtime::Runtime,
    trials: Vec<libtest_mimic::Trial>,
    served: Vec<Arc<Served>>,
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    /// An empty harness with the runtime its servers run on.
    pub fn new() -> Self {
        Harness {
            rt: runtime(),
            trials: Vec::new(),
            served: Vec::new(),
        }
    }

    /// Every check of [`suite`] against `served`, as trials named
    /// `SERVER::CHECK`; with `ignored: Some(why)` they are listed as ignored
    /// (a tool the server needs is missing outside CI).
    pub fn conformance(&mut self, served: Arc<Served>, ignored: Option<&str>) -> &mut Self {
        for (check, f) in suite::all() {
            let s = Arc::clone(&served);
            let handle = self.rt.handle().clone();
            let trial = libtest_mimic::Trial::test(format!("{}::{check}", s.name), move || {
                handle.block_on(async {
                    let t = s.target().await;
                    let dir = format!("c_{check}");
                    t.store.mkdir(&dir);
                    f(t, &dir)
                        .await
                        .map_err(|e| format!("{check} [{}]: {e}", t.store.describe()).into())
                })
            });
            self.trials.push(match ignored {
                Some(why) => trial.with_ignored_flag(true).with_kind(why),
                None => trial,
            });
        }
        self.served.push(served);
        self
    }

    /// A test run on a runtime of its own, as `#[tokio::test(flavor =
    /// "multi_thread", worker_threads = 2)]` would; a panic fails it.
    pub fn test<F, Fut>(&mut self, name: &str, test: F) -> &mut Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        self.trials.push(libtest_mimic::Trial::test(name, move || {
            runtime().block_on(test());
            Ok(())
        }));
        self
    }

    /// Runs the trials the command line selects (one at a time unless
    /// `--test-threads` says otherwise: the checks of one server share it,
    /// as they always have), stops the servers, and returns the exit code
    /// for `main`.
    pub fn run(self) -> ExitCode {
        let mut args = libtest_mimic::Arguments::from_args();
        if args.test_threads.is_none() {
            args.test_threads = Some(1);
        }
        let conclusion = libtest_mimic::run(&args, self.trials);
        // Stop the servers (their guards' Drop) inside the runtime, then it.
        let served = self.served;
        self.rt.block_on(async move { drop(served) });
        drop(self.rt);
        conclusion.exit_code()
    }
}

/// The conformance checks against every server in `served`, and nothing
/// else: the whole `main` of such a test target.
pub fn conformance(served: Vec<Arc<Served>>) -> ExitCode {
    let mut h = Harness::new();
    for s in served {
        h.conformance(s, None);
    }
    h.run()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"))
}
