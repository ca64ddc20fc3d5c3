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
