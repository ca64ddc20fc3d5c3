//! `[metrics]`: `/metrics` on a listener of its own, as a Pingora service.

use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use spockfs_core::observe::PrometheusMetrics;
use std::sync::Arc;

/// Answers `GET /metrics` with the Prometheus text exposition, anything
/// else 404.
pub(crate) struct MetricsApp(pub(crate) Arc<PrometheusMetrics>);

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let path = session.req_header().uri.path();
        let (status, body) = if path == "/metrics" {
            (200, self.0.render().into_bytes())
        } else {
            (404, b"not found: the metrics are at /metrics\n".to_vec())
        };
        http::Response::builder()
            .status(status)
            .header(
                http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(body)
            .unwrap_or_default()
    }
}
