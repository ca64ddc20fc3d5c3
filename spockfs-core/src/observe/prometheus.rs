//! [`PrometheusMetrics`]: an [`Observer`] that keeps Prometheus counters.

use super::{Observer, PoolStats, RequestRecord};
use crate::method::Method;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use std::collections::HashSet;
use std::sync::Mutex;

type Source<T> = Box<dyn Fn() -> T + Send + Sync>;

/// Prometheus metrics of SpockFS requests, fed by the engine as an
/// [`Observer`] (feature `prometheus`), in a registry of its own:
///
/// | metric | labels |
/// |---|---|
/// | `spockfs_requests_total` | `method`, `status`, `vhost` |
/// | `spockfs_errors_total` | `errno` |
/// | `spockfs_rejected_total` (503 busy, 408 body timeout, 413 too large, 431) | `reason` |
/// | `spockfs_request_duration_seconds` (histogram, to the response head) | `method` |
/// | `spockfs_request_bytes_total`, `spockfs_response_bytes_total` | |
/// | `spockfs_pool_queued`, `spockfs_pool_busy_threads`, `spockfs_pool_threads` | |
/// | `spockfs_open_connections` | |
///
/// Labels stay bounded whatever clients send: a method that is not a
/// SpockFS method is `other`, and past `vhost_cap` distinct hosts the rest
/// count as `other`. Response bytes are the sizes known when the response
/// starts (a streamed READDIR listing counts 0); request bytes are the
/// declared `Content-Length`s.
///
/// ```
/// use spockfs_core::observe::PrometheusMetrics;
/// use spockfs_core::{Engine, Mount, MemFs};
/// use std::sync::Arc;
///
/// let metrics = Arc::new(PrometheusMetrics::new(100));
/// let engine = Engine::builder()
///     .default_mount(Mount::new(MemFs::new()))
///     .observer(metrics.clone())
///     .build();
/// let pool = engine.clone();
/// metrics.watch_pool(move || pool.pool_stats());
/// assert!(metrics.render().contains("spockfs_pool_threads"));
/// ```
pub struct PrometheusMetrics {
    registry: Registry,
    requests: IntCounterVec,
    errors: IntCounterVec,
    rejected: IntCounterVec,
    bytes_in: IntCounter,
    bytes_out: IntCounter,
    pool_queued: IntGauge,
    pool_busy: IntGauge,
    pool_threads: IntGauge,
    connections: IntGauge,
    vhost_cap: usize,
    vhosts: Mutex<HashSet<String>>,
    pools: Mutex<Vec<Source<PoolStats>>>,
    conns: Mutex<Vec<Source<usize>>>,
    /// Latency histograms by method, resolved once (no label lookup per request).
    by_method: Vec<(Method, Histogram)>,
    other_latency: Histogram,
}

impl std::fmt::Debug for PrometheusMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrometheusMetrics")
            .field("vhost_cap", &self.vhost_cap)
            .finish_non_exhaustive()
    }
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
    let _ = r.register(Box::new(c.clone()));
    c
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
    let _ = r.register(Box::new(c.clone()));
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
    let _ = r.register(Box::new(g.clone()));
    g
}

impl PrometheusMetrics {
    /// Empty metrics, labelling at most `vhost_cap` distinct hosts by name.
    pub fn new(vhost_cap: usize) -> PrometheusMetrics {
        let r = Registry::new();
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "spockfs_request_duration_seconds",
                "Time from a request's start to its response head, by method",
            )
            .buckets(vec![
                0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["method"],
        )
        .unwrap_or_else(|e| unreachable!("latency histogram: {e}"));
        let _ = r.register(Box::new(latency.clone()));
        let by_method = Method::ALL
            .iter()
            .map(|m| (*m, latency.with_label_values(&[m.as_str()])))
            .collect();
        let other_latency = latency.with_label_values(&["other"]);
        PrometheusMetrics {
            requests: counter_vec(
                &r,
                "spockfs_requests_total",
                "Requests answered, by method, status and virtual host",
                &["method", "status", "vhost"],
            ),
            errors: counter_vec(
                &r,
                "spockfs_errors_total",
                "Error responses, by X-Spock-errno",
                &["errno"],
            ),
            rejected: counter_vec(
                &r,
                "spockfs_rejected_total",
                "Requests refused by a limit: busy (503), body timeout (408), too large (413), headers too large (431)",
                &["reason"],
            ),
            bytes_in: counter(
                &r,
                "spockfs_request_bytes_total",
                "Declared request body bytes",
            ),
            bytes_out: counter(
                &r,
                "spockfs_response_bytes_total",
                "Response body bytes known when the response started",
            ),
            pool_queued: gauge(&r, "spockfs_pool_queued", "Filesystem calls waiting for a thread"),
            pool_busy: gauge(&r, "spockfs_pool_busy_threads", "Blocking-pool threads running a call"),
            pool_threads: gauge(&r, "spockfs_pool_threads", "Blocking-pool threads alive"),
            connections: gauge(&r, "spockfs_open_connections", "Client connections open"),
            by_method,
            other_latency,
            registry: r,
            vhost_cap,
            vhosts: Mutex::new(HashSet::new()),
            pools: Mutex::new(Vec::new()),
            conns: Mutex::new(Vec::new()),
        }
    }

    /// Adds a blocking pool to the pool gauges (summed over all added),
    /// read at each [`render`](Self::render): `move || engine.pool_stats()`.
    pub fn watch_pool(&self, stats: impl Fn() -> PoolStats + Send + Sync + 'static) {
        lock(&self.pools).push(Box::new(stats));
    }

    /// Adds a count of open connections (summed over all added), read at
    /// each [`render`](Self::render): `move || limiter.open()`.
    pub fn watch_connections(&self, open: impl Fn() -> usize + Send + Sync + 'static) {
        lock(&self.conns).push(Box::new(open));
    }

    /// The registry, to gather or to serve with other metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of every metric, gauges read now:
    /// what a `/metrics` endpoint answers.
    pub fn render(&self) -> String {
        let (mut queued, mut busy, mut threads) = (0, 0, 0);
        for s in lock(&self.pools).iter() {
            let st = s();
            queued += st.queued;
            busy += st.busy;
            threads += st.threads;
        }
        self.pool_queued.set(queued as i64);
        self.pool_busy.set(busy as i64);
        self.pool_threads.set(threads as i64);
        let open: usize = lock(&self.conns).iter().map(|f| f()).sum();
        self.connections.set(open as i64);
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
    }

    /// Whether `host` (lowercase) gets its own vhost label: it has one
    /// already, or fewer than the cap have been given out.
    fn labelled(&self, host: &str) -> bool {
        let mut seen = lock(&self.vhosts);
        if seen.contains(host) {
            return true;
        }
        if seen.len() < self.vhost_cap {
            seen.insert(host.to_owned());
            return true;
        }
        false
    }
}

impl Observer for PrometheusMetrics {
    fn request(&self, r: &RequestRecord<'_>) {
        let method = Method::from_http(r.method);
        let name = method.map_or("other", |m| m.as_str());
        let lower;
        let vhost = match r.host {
            None => "-",
            Some(h) if h.bytes().any(|b| b.is_ascii_uppercase()) => {
                lower = h.to_ascii_lowercase();
                &lower
            }
            Some(h) => h,
        };
        let vhost = if vhost == "-" || self.labelled(vhost) {
            vhost
        } else {
            "other"
        };
        self.requests
            .with_label_values(&[name, r.status.as_str(), vhost])
            .inc();
        let hist = method
            .and_then(|m| self.by_method.iter().find(|(k, _)| *k == m))
            .map_or(&self.other_latency, |(_, h)| h);
        hist.observe(r.duration.as_secs_f64());
        if let Some(e) = r.errno {
            self.errors.with_label_values(&[e.name()]).inc();
        }
        let reason = match r.status.as_u16() {
            503 => Some("busy"),
            408 => Some("timeout"),
            413 => Some("too_large"),
            431 => Some("headers_too_large"),
            _ => None,
        };
        if let Some(reason) = reason {
            self.rejected.with_label_values(&[reason]).inc();
        }
        // Shared counters cost a contended atomic each: only when they move.
        if let Some(n @ 1..) = r.bytes_in {
            self.bytes_in.inc_by(n);
        }
        if let Some(n @ 1..) = r.bytes_out {
            self.bytes_out.inc_by(n);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What one request costs the metrics (printed with --nocapture:
    /// about 0.1 µs here), and the counters it moves.
    #[test]
    fn one_request_moves_its_counters() {
        let m = PrometheusMetrics::new(100);
        let method = http::Method::from_bytes(b"GETATTR").unwrap_or(http::Method::GET);
        let rec = RequestRecord {
            method: &method,
            host: Some("Files.Test:8080"),
            status: http::StatusCode::OK,
            errno: None,
            duration: std::time::Duration::from_micros(30),
            bytes_in: None,
            bytes_out: Some(7),
        };
        let n = 100_000;
        let t = std::time::Instant::now();
        for _ in 0..n {
            m.request(&rec);
        }
        println!("{:?} per request", t.elapsed() / n);
        let text = m.render();
        assert!(
            text.contains(
                "spockfs_requests_total{method=\"GETATTR\",status=\"200\",vhost=\"files.test:8080\"} 100000"
            ),
            "{text}"
        );
        assert!(
            text.contains("spockfs_response_bytes_total 700000"),
            "{text}"
        );
    }
}
