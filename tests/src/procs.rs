//! Servers as separate processes (the release binaries next to the test's
//! executable), so that `/proc/<pid>` measures only the server: open fds,
//! threads, RSS. Used by the fault and soak tests.

use crate::free_port;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// True under `CI=true`: a test that cannot run must fail, not skip.
pub fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Which example server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerKind {
    /// `examples/axum-app`.
    Axum,
    /// `examples/pingora-gateway` serving the root in-process.
    Gateway,
}

impl ServerKind {
    /// Both.
    pub const ALL: [ServerKind; 2] = [ServerKind::Axum, ServerKind::Gateway];

    /// The binary's name.
    pub fn binary_name(self) -> &'static str {
        match self {
            ServerKind::Axum => "axum-app",
            ServerKind::Gateway => "pingora-gateway",
        }
    }
}

/// A binary of this workspace: in `$SPOCKFS_BIN_DIR` if set (a copy that
/// builds from another checkout sharing the target dir cannot overwrite),
/// else next to the test's executable (`<target dir>/<profile>/`, whatever
/// `CARGO_TARGET_DIR` is). Panics with the command to build it when it is
/// missing.
pub fn server_binary(name: &str) -> PathBuf {
    let dir = match std::env::var_os("SPOCKFS_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::env::current_exe().unwrap_or_else(|e| panic!("{e}"));
            exe.parent()
                .and_then(Path::parent)
                .unwrap_or_else(|| panic!("odd test path {}", exe.display()))
                .to_path_buf()
        }
    };
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build --release -p axum-app -p pingora-gateway` \
         (same profile and target dir as the tests) first",
        bin.display()
    );
    bin
}

/// How to start a server.
#[derive(Clone, Debug, Default)]
pub struct Opts {
    /// Run as this uid/gid (via `setpriv`), e.g. 65534 so that permissions
    /// apply (root bypasses them).
    pub user: Option<(u32, u32)>,
    /// `RUST_LOG` (default `warn`).
    pub log: Option<String>,
    /// Extra command-line flags of the axum app.
    pub axum_args: Vec<String>,
    /// Extra lines of the gateway's `[limits]` section.
    pub gateway_limits: String,
    /// More of the gateway's TOML, after `[limits]` (other sections).
    pub gateway_extra: String,
    /// The gateway's listener also accepts cleartext HTTP/2 (the axum app
    /// always does).
    pub h2c: bool,
    /// The server's open-file limit (`RLIMIT_NOFILE`, soft and hard), set
    /// in the child only.
    pub nofile: Option<u64>,
}

/// A server process serving `root` at `/fs` on 127.0.0.1; stopped (SIGTERM,
/// then SIGKILL, by PID) on drop.
pub struct ServerProcess {
    child: Child,
    /// Listening address.
    pub addr: SocketAddr,
    /// stdout + stderr of the server.
    pub log: PathBuf,
    /// Which server.
    pub kind: ServerKind,
}

impl ServerProcess {
    /// Starts `kind` serving `root`; `workdir` receives its config and log
    /// (and must be readable by `opts.user`).
    pub fn start(kind: ServerKind, workdir: &Path, root: &Path, opts: &Opts) -> ServerProcess {
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = workdir.join(format!("{}-{port}.log", kind.binary_name()));
        let logf = std::fs::File::create(&log).unwrap_or_else(|e| panic!("{e}"));
        let bin = server_binary(kind.binary_name());
        let mut cmd = match opts.user {
            Some((uid, gid)) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--clear-groups")
                    .arg(bin);
                c
            }
            None => Command::new(bin),
        };
        match kind {
            ServerKind::Axum => {
                cmd.arg("--listen")
                    .arg(addr.to_string())
                    .arg("--root")
                    .arg(root)
                    .args(&opts.axum_args);
            }
            ServerKind::Gateway => {
                let conf = workdir.join(format!("gateway-{port}.toml"));
                std::fs::write(
                    &conf,
                    format!(
                        "listen = [{{ addr = \"{addr}\", h2c = {} }}]\n[server]\nthreads = 2\n\
                         [[vhost]]\nhost = \"*\"\nprefix = \"/fs\"\nroot = \"{}\"\n\
                         [limits]\n{}\n{}\n",
                        opts.h2c,
                        root.display(),
                        opts.gateway_limits,
                        opts.gateway_extra
                    ),
                )
                .unwrap_or_else(|e| panic!("{e}"));
                cmd.arg("--config").arg(conf);
            }
        }
        if let Some(n) = opts.nofile {
            use std::os::unix::process::CommandExt;
            let lim = libc::rlimit {
                rlim_cur: n as libc::rlim_t,
                rlim_max: n as libc::rlim_t,
            };
            // SAFETY: runs in the forked child before exec and only calls
            // setrlimit(2), which is async-signal-safe; `lim` is a plain
            // value copied into the closure.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let child = cmd
            .current_dir(workdir)
            .env("RUST_LOG", opts.log.as_deref().unwrap_or("warn"))
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap_or_else(|e| panic!("{e}")))
            .stderr(logf)
            .spawn()
            .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        let mut p = ServerProcess {
            child,
            addr,
            log,
            kind,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(addr).is_err() {
            if let Ok(Some(st)) = p.child.try_wait() {
                panic!("{kind:?} exited with {st}:\n{}", p.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "{kind:?} not listening after 20 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        p
    }

    /// The server's PID (`setpriv` execs, so it is the server's own).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// What it has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `http://addr/fs`.
    pub fn base(&self) -> String {
        format!("http://{}/fs", self.addr)
    }

    /// Open fds, threads and RSS of the server now.
    pub fn sample(&self) -> ProcSample {
        ProcSample::of(self.pid())
    }

    /// Stops it: SIGTERM, SIGKILL after 5 s.
    pub fn stop(&mut self) {
        stop_child(&mut self.child);
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// SIGTERM to a child we spawned, then SIGKILL after 5 s; reaps it.
pub fn stop_child(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) on the PID of a child we spawned and have not
        // reaped yet (so the PID cannot have been reused).
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Resource use of a process, from `/proc/<pid>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcSample {
    /// Entries in `/proc/<pid>/fd`.
    pub fds: usize,
    /// `Threads:` of `/proc/<pid>/status`.
    pub threads: usize,
    /// `VmRSS:` in KiB.
    pub rss_kib: u64,
}

impl ProcSample {
    /// Samples `pid` (zeros if it is gone).
    pub fn of(pid: u32) -> ProcSample {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        ProcSample {
            fds,
            threads: field("Threads:") as usize,
            rss_kib: field("VmRSS:"),
        }
    }
}

/// A tmpfs of `size_kib` mounted on `dir` (created); unmounted on drop
/// (lazily if busy).
pub struct Tmpfs {
    /// The mount point.
    pub dir: PathBuf,
}

impl Tmpfs {
    /// Mounts it, or explains why not (not root, no `mount`, not allowed).
    pub fn mount(dir: &Path, size_kib: u64) -> Result<Tmpfs, String> {
        Tmpfs::mount_with(dir, size_kib, &[])
    }

    /// Mounts it with extra mount options (`"nodev"`, `"dev"`, ...), or
    /// explains why not.
    pub fn mount_with(dir: &Path, size_kib: u64, options: &[&str]) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let mut opts = format!("size={size_kib}k,mode=0755");
        for o in options {
            opts.push(',');
            opts.push_str(o);
        }
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(opts)
            .arg("tmpfs")
            .arg(dir)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs on {}: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}
