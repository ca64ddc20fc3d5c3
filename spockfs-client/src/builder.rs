//! Building a [`Client`]: the URL (scheme, credentials, prefix), TLS
//! roots and the connector its pool dials with.

use crate::transport::{pool, Inner};
use crate::Client;
use http::header::HeaderValue;
use hyper_util::client::legacy::connect::HttpConnector;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The URL is not `http(s)://[user:pass@]host[:port][/prefix]` (the
    /// URL as given, its password replaced by `***` (see
    /// [`redact_url`](crate::redact_url); in a URL that does not parse,
    /// all before the last `@`)).
    #[error("bad SpockFS URL {0:?}: {1}")]
    Url(String, String),
    /// The CA file could not be read.
    #[error("CA file {0}: {1}")]
    Ca(PathBuf, String),
}

/// Builds a [`Client`].
#[derive(Debug)]
pub struct ClientBuilder {
    pub(crate) url: String,
    pub(crate) timeout: Duration,
    pub(crate) ca_files: Vec<PathBuf>,
    pub(crate) system_roots: bool,
    pub(crate) http2_prior_knowledge: bool,
}

impl ClientBuilder {
    /// Per-operation timeout; past it the call fails with `EIO`. Default
    /// 30 s.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
    /// Also trust the PEM certificates in `path`. Default: system roots only.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_files.push(path.into());
        self
    }
    /// Trust the system's root certificates. Default `true`.
    pub fn system_roots(mut self, yes: bool) -> Self {
        self.system_roots = yes;
        self
    }
    /// Speak HTTP/2 without negotiation (h2c on `http://`). Default off:
    /// HTTP/1.1 on `http://`, ALPN (h2 preferred) on `https://`.
    pub fn http2_prior_knowledge(mut self, yes: bool) -> Self {
        self.http2_prior_knowledge = yes;
        self
    }

    /// The client.
    pub fn build(self) -> Result<Client, BuildError> {
        // A URL that does not parse may hide a password anywhere before its
        // last `@` (`http://u:pa/ss@h/`): all of that is masked.
        let shown = match self.url.rsplit_once('@') {
            Some((head, tail)) if self.url.parse::<http::Uri>().is_err() => {
                let scheme = head.find("://").map_or("", |s| &head[..s + 3]);
                format!("{scheme}***@{tail}")
            }
            _ => crate::redact_url(&self.url),
        };
        let bad = |why: &str| BuildError::Url(shown.clone(), why.to_owned());
        let uri: http::Uri = self
            .url
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        let scheme = uri
            .scheme_str()
            .ok_or_else(|| bad("no scheme"))?
            .to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err(bad("scheme must be http or https"));
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?.as_str();
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let auth = match userinfo {
            Some(u) => {
                let decoded = percent_encoding::percent_decode_str(u)
                    .decode_utf8_lossy()
                    .into_owned();
                use base64::Engine as _;
                let v = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(decoded)
                );
                Some(HeaderValue::from_str(&v).map_err(|e| bad(&e.to_string()))?)
            }
            None => None,
        };
        let prefix = uri.path().trim_end_matches('/').to_owned();
        let mut roots = rustls::RootCertStore::empty();
        if self.system_roots {
            let loaded = rustls_native_certs::load_native_certs();
            for c in loaded.certs {
                let _ = roots.add(c);
            }
        }
        for f in &self.ca_files {
            use rustls_pki_types::pem::PemObject;
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(f)
                .map_err(|e| BuildError::Ca(f.clone(), e.to_string()))?;
            for c in certs {
                let c = c.map_err(|e| BuildError::Ca(f.clone(), e.to_string()))?;
                roots
                    .add(c)
                    .map_err(|e| BuildError::Ca(f.clone(), e.to_string()))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(30)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
        Ok(Client {
            caller: None,
            inner: Arc::new(Inner {
                http: pool(https.clone(), self.http2_prior_knowledge),
                connector: https,
                http2_only: self.http2_prior_knowledge,
                base: format!("{scheme}://{hostport}{prefix}"),
                auth,
                timeout: self.timeout,
                extensions: Arc::new(OnceCell::new()),
            }),
        })
    }
}
