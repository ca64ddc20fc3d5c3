//! Both example servers (the axum app and the Pingora gateway) started in
//! this process on a fresh root with the limits a test sets, for tests that
//! run the same attack or cap against each.

use crate::{axum_args, free_port, start_axum, Client};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Which server.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Srv {
    /// `examples/axum-app`.
    Axum,
    /// `examples/pingora-gateway`, the root served in-process.
    Gateway,
}

/// Both servers.
pub const BOTH: [Srv; 2] = [Srv::Axum, Srv::Gateway];

/// The settings under test; `None` keeps the server's default.
#[derive(Clone, Default)]
pub struct Conf {
    /// Requests in progress at once.
    pub max_requests: Option<usize>,
    /// How long a request over the cap waits for a slot.
    pub wait_ms: Option<u64>,
    /// Largest PUT body.
    pub max_put: Option<u64>,
    /// Largest directory READDIR lists.
    pub readdir_max: Option<u64>,
    /// Largest request head.
    pub max_header: Option<usize>,
    /// Header timeout.
    pub header_ms: Option<u64>,
    /// Keep-alive idle timeout.
    pub idle_ms: Option<u64>,
    /// Request body timeout.
    pub body_ms: Option<u64>,
    /// Response write timeout.
    pub write_ms: Option<u64>,
    /// Connections per client address.
    pub per_ip: Option<usize>,
    /// HTTP/2 keep-alive ping period and answer timeout.
    pub ping_ms: Option<u64>,
    /// HTTPS (HTTP/2 by ALPN) instead of plain HTTP.
    pub tls: bool,
    /// The gateway's plain listener also takes HTTP/2 with prior knowledge
    /// (`h2c`; the axum app's always does).
    pub h2c: bool,
}

/// A running server and its root.
pub struct Up {
    /// Where it listens.
    pub addr: SocketAddr,
    /// A client of its `/fs`.
    pub client: Client,
    /// The root it serves.
    pub root: PathBuf,
    /// Trusts the server's certificate (`tls`).
    pub roots: rustls::RootCertStore,
    _server: Box<dyn std::any::Any>,
    _dir: tempfile::TempDir,
}

/// Starts `srv` with `c` on a new temporary root.
pub async fn up(srv: Srv, c: &Conf) -> Up {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap_or_else(|e| panic!("{e}"));
    let mut roots = rustls::RootCertStore::empty();
    let tls = c.tls.then(|| {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .unwrap_or_else(|e| panic!("{e}"));
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, ck.cert.pem()).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap_or_else(|e| panic!("{e}"));
        roots
            .add(ck.cert.der().clone())
            .unwrap_or_else(|e| panic!("{e}"));
        (cert, key)
    });
    let (addr, server): (SocketAddr, Box<dyn std::any::Any>) = match srv {
        Srv::Axum => {
            let mut a = axum_args(&root);
            let ms = Duration::from_millis;
            if let Some(v) = c.max_requests {
                a.max_requests = v;
            }
            if let Some(v) = c.wait_ms {
                a.max_requests_wait = ms(v);
            }
            a.max_put_size = c.max_put;
            a.readdir_max_entries = c.readdir_max;
            if let Some(v) = c.max_header {
                a.max_header_bytes = v as u32;
            }
            if let Some(v) = c.header_ms {
                a.header_timeout = ms(v);
            }
            if let Some(v) = c.idle_ms {
                a.idle_timeout = ms(v);
            }
            if let Some(v) = c.body_ms {
                a.body_timeout = ms(v);
            }
            if let Some(v) = c.write_ms {
                a.write_timeout = ms(v);
            }
            if let Some(v) = c.per_ip {
                a.max_connections_per_ip = v;
            }
            if let Some(v) = c.ping_ms {
                a.h2_keepalive_interval = ms(v);
                a.h2_keepalive_timeout = ms(v);
            }
            if let Some((cert, key)) = &tls {
                a.tls_cert = Some(cert.clone());
                a.tls_key = Some(key.clone());
            }
            let (addr, running) = start_axum(a).await;
            (addr, Box::new(running))
        }
        Srv::Gateway => {
            let port = free_port();
            let mut limits = String::new();
            let mut key = |k: &str, v: Option<u64>| {
                if let Some(v) = v {
                    limits.push_str(&format!("{k} = {v}\n"));
                }
            };
            key("max_requests", c.max_requests.map(|v| v as u64));
            key("max_requests_wait_ms", c.wait_ms);
            key("max_put_size", c.max_put);
            key("readdir_max_entries", c.readdir_max);
            key("max_header_bytes", c.max_header.map(|v| v as u64));
            key("header_timeout_ms", c.header_ms);
            key("idle_timeout_ms", c.idle_ms);
            key("body_timeout_ms", c.body_ms);
            key("write_timeout_ms", c.write_ms);
            key("max_connections_per_ip", c.per_ip.map(|v| v as u64));
            key("h2_keepalive_interval_ms", c.ping_ms);
            key("h2_keepalive_timeout_ms", c.ping_ms);
            let listener = match &tls {
                Some((cert, key)) => format!(
                    "{{ addr = \"127.0.0.1:{port}\", tls_cert = \"{}\", tls_key = \"{}\" }}",
                    cert.display(),
                    key.display()
                ),
                None => format!("{{ addr = \"127.0.0.1:{port}\", h2c = {} }}", c.h2c),
            };
            let toml = format!(
                "listen = [{listener}]\n\
                 default_upstream = \"127.0.0.1:1\"\n\
                 [[vhost]]\nhost = \"*\"\nprefix = \"/fs\"\nroot = \"{}\"\n\
                 [server]\nthreads = 2\n[limits]\n{limits}",
                root.display()
            );
            let cfg =
                pingora_gateway::Config::from_toml(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
            let running =
                pingora_gateway::run_in_background(&cfg).unwrap_or_else(|e| panic!("{e}"));
            let addr = format!("127.0.0.1:{port}")
                .parse()
                .unwrap_or_else(|e| panic!("{e}"));
            (addr, Box::new(running))
        }
    };
    let client = if c.tls {
        Client::with_tls(
            &format!("https://localhost:{}/fs", addr.port()),
            crate::tls_client_config(roots.clone()),
        )
    } else {
        Client::new(&format!("http://{addr}/fs"))
    };
    Up {
        addr,
        client,
        root,
        roots,
        _server: server,
        _dir: dir,
    }
}
