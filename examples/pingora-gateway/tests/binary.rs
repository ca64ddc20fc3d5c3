//! The real binary: the shipped example config parses, the default config
//! serves ./data at /fs, and SIGTERM stops it within a few seconds.

use std::io::BufRead;
use std::time::{Duration, Instant};

#[test]
fn example_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.example.toml");
    let cfg =
        pingora_gateway::Config::load(std::path::Path::new(path)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.listen[0].addr, "127.0.0.1:8081");
    assert_eq!(cfg.vhosts[0].prefix, "/fs");
    assert!(
        pingora_gateway::Config::from_toml("bogus_key = 1").is_err(),
        "unknown keys are rejected"
    );
    // Every commented-out key of [limits] is a real key (uncommented, the
    // file still parses, unknown keys being rejected).
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{e}"));
    let limits_at = text
        .find("[limits]")
        .unwrap_or_else(|| panic!("no [limits]"));
    let (head, tail) = text.split_at(limits_at);
    let mut keys = 0;
    let tail: String = tail
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(kv)
                if kv.split_once(" = ").is_some_and(|(k, _)| {
                    !k.is_empty()
                        && k.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                }) =>
            {
                keys += 1;
                format!("{kv}\n")
            }
            _ => format!("{l}\n"),
        })
        .collect();
    assert_eq!(keys, 17, "commented [limits] keys found");
    // The commented [metrics] section, uncommented, is valid too.
    let metrics = text
        .replace("# [metrics]\n# listen", "[metrics]\nlisten")
        .replace("# vhost_cap", "vhost_cap");
    let m = pingora_gateway::Config::from_toml(&metrics)
        .unwrap_or_else(|e| panic!("uncommented [metrics]: {e}"));
    assert_eq!(m.metrics.listen.as_deref(), Some("127.0.0.1:9090"));
    assert_eq!(m.metrics.vhost_cap, Some(100));
    let cfg = pingora_gateway::Config::from_toml(&format!("{head}{tail}"))
        .unwrap_or_else(|e| panic!("uncommented [limits]: {e}"));
    assert_eq!(cfg.limits.max_requests, Some(1024));
    assert_eq!(cfg.limits.body_timeout_ms, Some(30000));
    let both = "[[vhost]]\nhost = \"x\"\nroot = \"/tmp\"\nupstreams = [\"127.0.0.1:1\"]\n";
    assert!(pingora_gateway::build(
        &pingora_gateway::Config::from_toml(both).unwrap_or_else(|e| panic!("{e}"))
    )
    .is_err());
}

#[test]
fn default_config_serves_data_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    // The default config listens on 127.0.0.1:8081; skip if a developer's
    // own gateway holds that port (CI machines start clean).
    if std::net::TcpListener::bind("127.0.0.1:8081").is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "port 8081 busy in CI"
        );
        eprintln!("port 8081 busy; skipping");
        return;
    }
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pingora-gateway"))
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap_or_else(|| panic!("stdout")));
    let mut line = String::new();
    out.read_line(&mut line).unwrap_or_else(|e| panic!("{e}"));
    assert!(line.contains("http://127.0.0.1:8081/fs"), "banner: {line}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut ok = false;
    while Instant::now() < deadline {
        if let Ok(mut s) = std::net::TcpStream::connect("127.0.0.1:8081") {
            use std::io::{Read, Write};
            let _ = s.write_all(b"MKDIR /fs/made HTTP/1.1\r\nHost: x\r\nX-Spock-mode: 493\r\nConnection: close\r\n\r\n");
            let mut resp = String::new();
            let _ = s.read_to_string(&mut resp);
            ok = resp.starts_with("HTTP/1.1 201");
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(ok, "MKDIR through the default config failed");
    assert!(
        dir.path().join("data/made").is_dir(),
        "./data is the default root"
    );
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM)
        .unwrap_or_else(|e| panic!("{e}"));
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap_or_else(|e| panic!("{e}")) {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(6),
            "still running 6 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("stopped {:.1} s after SIGTERM", t0.elapsed().as_secs_f64());
}

/// Runs the binary with `args` until it exits (killed, by PID, and the
/// test failed after 10 s); returns exit code, stdout and stderr.
fn run_to_exit(args: &[&str]) -> (Option<i32>, String, String) {
    use std::io::Read;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pingora-gateway"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap_or_else(|e| panic!("{e}")) {
            break st;
        }
        if t0.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("pingora-gateway {args:?} still running after 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut out, mut err) = (String::new(), String::new());
    if let Some(mut o) = child.stdout.take() {
        o.read_to_string(&mut out).unwrap_or_else(|e| panic!("{e}"));
    }
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut err).unwrap_or_else(|e| panic!("{e}"));
    }
    (status.code(), out, err)
}

/// `--version`; `--help` documents the config file; a listen address that
/// is taken is a one-line error and exit status 1, with no banner (Pingora
/// alone retries it for a long while after the banner).
#[test]
fn binary_version_help_and_a_taken_port() {
    let (code, out, _) = run_to_exit(&["--version"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        out,
        format!("pingora-gateway {}\n", env!("CARGO_PKG_VERSION"))
    );
    let (code, out, _) = run_to_exit(&["--help"]);
    assert_eq!(code, Some(0));
    for want in [
        "--config <FILE>",
        "[[vhost]]",
        "[limits]",
        "gateway.example.toml",
    ] {
        assert!(out.contains(want), "--help lacks {want}: {out}");
    }

    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let addr = taken.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let conf = dir.path().join("gateway.toml");
    std::fs::write(
        &conf,
        format!(
            "listen = [{{ addr = \"{addr}\" }}]\n[[vhost]]\nhost = \"*\"\nroot = \"{}\"\n",
            dir.path().display()
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let conf = conf.to_str().unwrap_or_else(|| panic!("non-UTF-8 tempdir"));
    let (code, out, err) = run_to_exit(&["--config", conf]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(
        err,
        format!("pingora-gateway: listener {addr}: address in use (another process is listening there)\n")
    );
    assert!(!out.contains("SpockFS at"), "announced: {out}");
}
