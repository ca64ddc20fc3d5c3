//! [`PrometheusMetrics`]: an [`Observer`] that keeps Prometheus counters.
//!
//! The request counters are sharded: each thread that answers requests
//! counts into a shard of its own (a cache-line-aligned, uncontended lock),
//! and a scrape sums the shards. Shared Prometheus counters would make every
//! request on every worker thread write the same few cache lines; with two
//! workers that cost 6% of GETATTR throughput (docs/benchmarks.md).

use super::{Observer, PoolStats, RequestRecord};
use crate::method::Method;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{IntGauge, Registry, TextEncoder};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

type Source<T> = Box<dyn Fn() -> T + Send + Sync>;

/// Upper bounds (seconds) of the latency histogram's buckets.
const BUCKETS: [f64; 16] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Latency histograms: one per SpockFS method, then one for `other`.
const METHODS: usize = Method::ALL.len() + 1;

/// Shards of the request counters: threads pick one each, round robin.
const SHARDS: usize = 16;

/// Statuses that mean a limit refused the request, and their label.
const REJECTED: [(u16, &str); 4] = [
    (503, "busy"),
    (408, "timeout"),
    (413, "too_large"),
    (431, "headers_too_large"),
];

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
    counts: Arc<Counts>,
    pool_queued: IntGauge,
    pool_busy: IntGauge,
    pool_threads: IntGauge,
    connections: IntGauge,
    pools: Mutex<Vec<Source<PoolStats>>>,
    conns: Mutex<Vec<Source<usize>>>,
}

impl std::fmt::Debug for PrometheusMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrometheusMetrics")
            .field("vhost_cap", &self.counts.vhost_cap)
            .finish_non_exhaustive()
    }
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
        let counts = Arc::new(Counts::new(vhost_cap));
        let _ = r.register(Box::new(Collect(counts.clone())));
        PrometheusMetrics {
            pool_queued: gauge(
                &r,
                "spockfs_pool_queued",
                "Filesystem calls waiting for a thread",
            ),
            pool_busy: gauge(
                &r,
                "spockfs_pool_busy_threads",
                "Blocking-pool threads running a call",
            ),
            pool_threads: gauge(&r, "spockfs_pool_threads", "Blocking-pool threads alive"),
            connections: gauge(&r, "spockfs_open_connections", "Client connections open"),
            counts,
            registry: r,
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

    /// The registry, to gather or to serve with other metrics (the gauges
    /// are read at [`render`](Self::render); the counters at every gather).
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
}

impl Observer for PrometheusMetrics {
    fn request(&self, r: &RequestRecord<'_>) {
        self.counts.request(r);
    }
}

/// The request counters: the shards, and the vhosts given a label.
struct Counts {
    shards: Box<[Shard]>,
    vhost_cap: usize,
    /// The hosts given a label of their own (at most `vhost_cap`).
    vhosts: Mutex<HashSet<Box<str>>>,
    descs: [Desc; 6],
}

/// One thread's counters, on cache lines of their own.
#[repr(align(128))]
#[derive(Default)]
struct Shard(Mutex<Tally>);

/// What a shard counted since the start.
#[derive(Default)]
struct Tally {
    /// By vhost label, then by (method index, status).
    requests: HashMap<Box<str>, HashMap<(usize, u16), u64>>,
    errors: HashMap<&'static str, u64>,
    rejected: [u64; REJECTED.len()],
    /// Per method index; empty until the first request.
    latency: Vec<Hist>,
    bytes_in: u64,
    bytes_out: u64,
}

/// A latency histogram: per-bucket (not cumulative) counts, the last one
/// past every bound.
#[derive(Default, Clone, Copy)]
struct Hist {
    buckets: [u64; BUCKETS.len() + 1],
    sum: f64,
}

impl Hist {
    fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// The method's histogram index (`other` last) and label.
fn method_slot(m: Option<Method>) -> (usize, &'static str) {
    match m {
        Some(m) => (m as usize, m.as_str()),
        None => (METHODS - 1, "other"),
    }
}

fn method_name(slot: usize) -> &'static str {
    Method::ALL
        .iter()
        .find(|m| **m as usize == slot)
        .map_or("other", |m| m.as_str())
}

fn desc(name: &str, help: &str, labels: &[&str]) -> Desc {
    Desc::new(
        name.to_owned(),
        help.to_owned(),
        labels.iter().map(|l| (*l).to_owned()).collect(),
        HashMap::new(),
    )
    .unwrap_or_else(|e| unreachable!("metric {name}: {e}"))
}

impl Counts {
    fn new(vhost_cap: usize) -> Counts {
        Counts {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            vhost_cap,
            vhosts: Mutex::new(HashSet::new()),
            descs: [
                desc(
                    "spockfs_requests_total",
                    "Requests answered, by method, status and virtual host",
                    &["method", "status", "vhost"],
                ),
                desc("spockfs_errors_total", "Error responses, by X-Spock-errno", &["errno"]),
                desc(
                    "spockfs_rejected_total",
                    "Requests refused by a limit: busy (503), body timeout (408), too large (413), headers too large (431)",
                    &["reason"],
                ),
                desc(
                    "spockfs_request_duration_seconds",
                    "Time from a request's start to its response head, by method",
                    &["method"],
                ),
                desc("spockfs_request_bytes_total", "Declared request body bytes", &[]),
                desc(
                    "spockfs_response_bytes_total",
                    "Response body bytes known when the response started",
                    &[],
                ),
            ],
        }
    }

    /// This thread's shard.
    fn shard(&self) -> &Shard {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
        }
        &self.shards[SLOT.with(|s| *s)]
    }

    /// Whether `host` (lowercase) gets its own vhost label: it has one
    /// already, or fewer than the cap have been given out.
    fn labelled(&self, host: &str) -> bool {
        let mut seen = lock(&self.vhosts);
        if seen.contains(host) {
            return true;
        }
        if seen.len() < self.vhost_cap {
            seen.insert(host.into());
            return true;
        }
        false
    }

    fn request(&self, r: &RequestRecord<'_>) {
        let (slot, _) = method_slot(Method::from_http(r.method));
        let lower;
        let host = match r.host {
            None => "-",
            Some(h) if h.bytes().any(|b| b.is_ascii_uppercase()) => {
                lower = h.to_ascii_lowercase();
                &lower
            }
            Some(h) => h,
        };
        let secs = r.duration.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        let status = r.status.as_u16();
        let mut t = lock(&self.shard().0);
        // A host this shard has counted is labelled already; any other asks
        // the shared set (once per shard and host while under the cap).
        let by_status = match t.requests.get_mut(host) {
            Some(m) => m,
            None => {
                let label = if host == "-" || self.labelled(host) {
                    host
                } else {
                    "other"
                };
                t.requests.entry(label.into()).or_default()
            }
        };
        *by_status.entry((slot, status)).or_default() += 1;
        if t.latency.is_empty() {
            t.latency = vec![Hist::default(); METHODS];
        }
        let h = &mut t.latency[slot];
        h.buckets[bucket] += 1;
        h.sum += secs;
        if let Some(e) = r.errno {
            *t.errors.entry(e.name()).or_default() += 1;
        }
        if let Some(i) = REJECTED.iter().position(|(s, _)| *s == status) {
            t.rejected[i] += 1;
        }
        t.bytes_in += r.bytes_in.unwrap_or(0);
        t.bytes_out += r.bytes_out.unwrap_or(0);
    }

    /// The sum of every shard.
    fn total(&self) -> Tally {
        let mut sum = Tally {
            latency: vec![Hist::default(); METHODS],
            ..Tally::default()
        };
        for shard in self.shards.iter() {
            let t = lock(&shard.0);
            for (host, by_status) in &t.requests {
                let into = sum.requests.entry(host.clone()).or_default();
                for (k, n) in by_status {
                    *into.entry(*k).or_default() += n;
                }
            }
            for (e, n) in &t.errors {
                *sum.errors.entry(e).or_default() += n;
            }
            for (i, n) in t.rejected.iter().enumerate() {
                sum.rejected[i] += n;
            }
            for (into, h) in sum.latency.iter_mut().zip(&t.latency) {
                for (a, b) in into.buckets.iter_mut().zip(&h.buckets) {
                    *a += b;
                }
                into.sum += h.sum;
            }
            sum.bytes_in += t.bytes_in;
            sum.bytes_out += t.bytes_out;
        }
        sum
    }
}

/// `Counts` as a Prometheus collector: families built from the shards'
/// sum at each gather.
struct Collect(Arc<Counts>);

fn labels(pairs: &[(&str, &str)]) -> Vec<proto::LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = proto::LabelPair::default();
            l.set_name((*k).to_owned());
            l.set_value((*v).to_owned());
            l
        })
        .collect()
}

fn counter(pairs: &[(&str, &str)], value: u64) -> proto::Metric {
    let mut c = proto::Counter::default();
    c.set_value(value as f64);
    let mut m = proto::Metric::from_label(labels(pairs));
    m.set_counter(c);
    m
}

fn family(d: &Desc, kind: MetricType, metrics: Vec<proto::Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(d.fq_name.clone());
    f.set_help(d.help.clone());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

impl Collector for Collect {
    fn desc(&self) -> Vec<&Desc> {
        self.0.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let t = self.0.total();
        let [d_requests, d_errors, d_rejected, d_latency, d_bytes_in, d_bytes_out] = &self.0.descs;
        // Sorted, for a stable exposition.
        let mut by_labels = BTreeMap::new();
        for (host, by_status) in &t.requests {
            for ((slot, status), n) in by_status {
                by_labels.insert((method_name(*slot), *status, &**host), *n);
            }
        }
        let requests = by_labels
            .into_iter()
            .map(|((method, status, host), n)| {
                let status = status.to_string();
                counter(
                    &[("method", method), ("status", &status), ("vhost", host)],
                    n,
                )
            })
            .collect();
        let errors = t
            .errors
            .iter()
            .collect::<BTreeMap<_, _>>()
            .into_iter()
            .map(|(e, n)| counter(&[("errno", e)], *n))
            .collect();
        let rejected = REJECTED
            .iter()
            .zip(t.rejected)
            .filter(|(_, n)| *n > 0)
            .map(|((_, reason), n)| counter(&[("reason", reason)], n))
            .collect();
        let latency = t
            .latency
            .iter()
            .enumerate()
            .map(|(slot, h)| {
                let mut cumulative = 0;
                let buckets = BUCKETS
                    .iter()
                    .zip(h.buckets)
                    .map(|(bound, n)| {
                        cumulative += n;
                        let mut b = proto::Bucket::default();
                        b.set_upper_bound(*bound);
                        b.set_cumulative_count(cumulative);
                        b
                    })
                    .collect();
                let mut p = proto::Histogram::default();
                p.set_sample_count(h.count());
                p.set_sample_sum(h.sum);
                p.set_bucket(buckets);
                let mut m = proto::Metric::from_label(labels(&[("method", method_name(slot))]));
                m.set_histogram(p);
                m
            })
            .collect();
        vec![
            family(d_requests, MetricType::COUNTER, requests),
            family(d_errors, MetricType::COUNTER, errors),
            family(d_rejected, MetricType::COUNTER, rejected),
            family(d_latency, MetricType::HISTOGRAM, latency),
            family(
                d_bytes_in,
                MetricType::COUNTER,
                vec![counter(&[], t.bytes_in)],
            ),
            family(
                d_bytes_out,
                MetricType::COUNTER,
                vec![counter(&[], t.bytes_out)],
            ),
        ]
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

    /// Requests counted on several threads (several shards) add up, and
    /// past the cap new hosts count as `other`.
    #[test]
    fn shards_add_up_and_vhosts_are_capped() {
        let m = std::sync::Arc::new(PrometheusMetrics::new(2));
        let method = http::Method::GET;
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let m = m.clone();
                let method = method.clone();
                std::thread::spawn(move || {
                    let host = format!("h{}", t % 3);
                    for _ in 0..1000 {
                        m.request(&RequestRecord {
                            method: &method,
                            host: Some(&host),
                            status: http::StatusCode::NOT_FOUND,
                            errno: Some(crate::Errno::ENOENT),
                            duration: std::time::Duration::from_millis(3),
                            bytes_in: Some(1),
                            bytes_out: None,
                        });
                    }
                })
            })
            .collect();
        for t in threads {
            t.join()
                .unwrap_or_else(|_| panic!("counting thread panicked"));
        }
        let text = m.render();
        let count = |vhost: &str| {
            let line = format!(
                "spockfs_requests_total{{method=\"GET\",status=\"404\",vhost=\"{vhost}\"}} "
            );
            text.lines()
                .find_map(|l| l.strip_prefix(&line))
                .map_or(0, |n| n.parse::<u64>().unwrap_or(0))
        };
        let labelled = count("h0") + count("h1") + count("h2");
        assert_eq!(labelled + count("other"), 4000, "{text}");
        assert!(
            count("other") >= 1000,
            "one of the 3 hosts is past the cap: {text}"
        );
        assert!(
            text.contains("spockfs_errors_total{errno=\"ENOENT\"} 4000"),
            "{text}"
        );
        assert!(text.contains("spockfs_request_bytes_total 4000"), "{text}");
        assert!(
            text.contains(
                "spockfs_request_duration_seconds_bucket{method=\"GET\",le=\"0.005\"} 4000"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "spockfs_request_duration_seconds_bucket{method=\"GET\",le=\"0.0025\"} 0"
            ),
            "{text}"
        );
    }
}
