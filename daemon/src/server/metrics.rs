//! `GET /metrics`: Prometheus metrics in the OpenMetrics text format.
//!
//! - Requests are counted and timed per matched route template
//!   (`/v1/layers/{chain}`, never the raw path, so the label set stays
//!   bounded), method and status class. The time is to the response head: a
//!   streamed tar may go on after it.
//! - Store facts (layer counts and size) are read from [`Store::info`] on
//!   each scrape; the store's lock wait/hold histograms and key-table sizes
//!   are read by a [`Collector`] straight from the store, so nothing is
//!   copied between scrapes.
//! - Tar bytes are counted as they flow through the upload and download
//!   streams ([`stream`](super::stream)), failed transfers included.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use layer::Store;
use layer::lockstats::{BUCKETS_US, Histogram as LockHistogram, LockStats};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use super::error::ApiError;
use super::routes::AppState;

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `route` label of a request no route matched.
pub const UNMATCHED: &str = "unmatched";

/// Counts bytes of a tar stream.
pub type ByteCounter = Counter;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    /// `2xx`, `4xx`, `5xx`, ...
    status: String,
}

type DurationFamily = Family<RequestLabels, Histogram, fn() -> Histogram>;

/// Request latency buckets: 0.5 ms to about 16 s.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Every metric of one daemon.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: DurationFamily,
    layers: Gauge,
    rw_layers: Gauge,
    layers_size: Gauge,
    /// Tar bytes received by `POST /v1/layers`.
    pub imported: ByteCounter,
    /// Tar bytes sent by the `.../tar` routes.
    pub exported: ByteCounter,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new(store: Store) -> Metrics {
        let mut registry = Registry::with_prefix("layerd");
        let requests = Family::<RequestLabels, Counter>::default();
        let durations: DurationFamily = Family::new_with_constructor(duration_histogram);
        let (layers, rw_layers, layers_size) = (Gauge::default(), Gauge::default(), Gauge::default());
        let (imported, exported) = (ByteCounter::default(), ByteCounter::default());
        registry.register(
            "http_requests",
            "HTTP requests answered, by route template and status class",
            requests.clone(),
        );
        registry.register_with_unit(
            "http_request_duration",
            "Time to the response head, by route template and status class",
            Unit::Seconds,
            durations.clone(),
        );
        registry.register("layers", "Read-only layers in the store", layers.clone());
        registry.register("rw_layers", "Writable (container) layers in the store", rw_layers.clone());
        registry.register_with_unit(
            "layers_size",
            "Sum of every layer's content size",
            Unit::Bytes,
            layers_size.clone(),
        );
        registry.register_with_unit("import", "Tar bytes received by layer imports", Unit::Bytes, imported.clone());
        registry.register_with_unit(
            "export",
            "Tar bytes sent by layer and rw layer exports",
            Unit::Bytes,
            exported.clone(),
        );
        registry.register_collector(Box::new(StoreCollector(store)));
        Metrics { registry, requests, durations, layers, rw_layers, layers_size, imported, exported }
    }

    fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let labels = RequestLabels {
            method: method_label(method).to_owned(),
            route: route.to_owned(),
            status: format!("{}xx", status / 100),
        };
        self.requests.get_or_create(&labels).inc();
        self.durations.get_or_create(&labels).observe(seconds);
    }

    /// The exposition text, with the store's facts read now.
    pub async fn render(&self, store: &Store) -> Result<String, fmt::Error> {
        let info = store.info().await;
        self.layers.set(gauge_value(info.layers));
        self.rw_layers.set(gauge_value(info.rw_layers));
        self.layers_size.set(gauge_value(info.layers_size));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The method label: one of the methods HTTP defines, else `OTHER`, so a
/// client sending made-up methods can't grow the number of series.
fn method_label(method: &str) -> &'static str {
    const KNOWN: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"];
    KNOWN.into_iter().find(|m| *m == method).unwrap_or("OTHER")
}

/// Middleware: count and time every request.
pub async fn track(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().as_str().to_owned();
    let route = req.extensions().get::<MatchedPath>().map_or(UNMATCHED, MatchedPath::as_str).to_owned();
    let resp = next.run(req).await;
    metrics.observe(&method, &route, resp.status().as_u16(), start.elapsed().as_secs_f64());
    resp
}

/// `GET /metrics`.
pub async fn serve(State(state): State<AppState>) -> Response {
    match state.metrics.render(&state.store).await {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(e) => ApiError::internal(format!("encode metrics: {e}")).into_response(),
    }
}

/// Which of a lock's two histograms.
type PickHistogram = fn(&LockStats) -> &LockHistogram;

/// The store's lock histograms and key-table sizes, read on each scrape.
struct StoreCollector(Store);

impl fmt::Debug for StoreCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StoreCollector")
    }
}

impl Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let stats = self.0.lock_stats();
        let families: [(&str, &str, PickHistogram); 2] = [
            ("lock_wait", "Time spent waiting for a store lock.", |s| &s.wait),
            ("lock_hold", "Time a store lock was held.", |s| &s.hold),
        ];
        for (name, help, pick) in families {
            let mut family = encoder.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
            for lock in &stats.all {
                let (sum, count, buckets) = prometheus_histogram(pick(lock));
                let labels = [("lock", lock.name)];
                family.encode_family(&labels)?.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
            }
        }
        let (chain_keys, name_keys, flights) = self.0.key_entries();
        let mut family = encoder.encode_descriptor(
            "store_key_entries",
            "Entries in the store's per-key lock tables and in-flight registrations (0 when idle).",
            None,
            MetricType::Gauge,
        )?;
        for (kind, n) in [("chain_keys", chain_keys), ("name_keys", name_keys), ("flights", flights)] {
            let gauge = ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX));
            gauge.encode(family.encode_family(&[("kind", kind)])?)?;
        }
        Ok(())
    }
}

/// A lock histogram as (sum in seconds, count, per-bucket counts with upper
/// bounds in seconds, ending with +Inf). The count is the sum of the bucket
/// counts, not the histogram's own total, so the exposition stays consistent
/// even when a sample lands between the reads of a snapshot.
fn prometheus_histogram(h: &LockHistogram) -> (f64, u64, Vec<(f64, u64)>) {
    let (counts, sum_us, _total) = h.snapshot();
    let bounds = BUCKETS_US.iter().map(|&us| us as f64 / 1e6).chain(std::iter::once(f64::INFINITY));
    let buckets: Vec<(f64, u64)> = bounds.zip(counts.iter().copied()).collect();
    let count = buckets.iter().map(|(_, n)| n).sum();
    (sum_us as f64 / 1e6, count, buckets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_histograms_convert_to_seconds_with_an_inf_bucket() {
        let h = LockHistogram::default();
        for us in [0, 3, 3, 700, 2_000_000] {
            h.record(us);
        }
        let (sum, count, buckets) = prometheus_histogram(&h);
        assert_eq!(count, 5);
        assert!((sum - 2.000706).abs() < 1e-9, "{sum}");
        assert_eq!(buckets.len(), BUCKETS_US.len() + 1);
        assert_eq!(buckets[0], (1e-6, 1));
        assert_eq!(buckets[1], (5e-6, 2));
        assert_eq!(buckets[6], (1e-3, 1), "700 µs is in the 1 ms bucket");
        assert_eq!(*buckets.last().unwrap(), (f64::INFINITY, 1));
        let bounds: Vec<f64> = buckets.iter().map(|b| b.0).collect();
        assert!(bounds.windows(2).all(|w| w[0] < w[1]), "{bounds:?}");
    }

    #[test]
    fn requests_are_labelled_by_template_and_status_class() {
        let labels = |status| RequestLabels { method: "GET".into(), route: "/v1/layers/{chain}".into(), status };
        let m = Family::<RequestLabels, Counter>::default();
        let d: DurationFamily = Family::new_with_constructor(duration_histogram);
        let metrics = Metrics {
            registry: Registry::default(),
            requests: m.clone(),
            durations: d,
            layers: Gauge::default(),
            rw_layers: Gauge::default(),
            layers_size: Gauge::default(),
            imported: Counter::default(),
            exported: Counter::default(),
        };
        metrics.observe("GET", "/v1/layers/{chain}", 404, 0.001);
        metrics.observe("GET", "/v1/layers/{chain}", 400, 0.001);
        metrics.observe("GET", "/v1/layers/{chain}", 200, 0.001);
        assert_eq!(m.get_or_create(&labels("4xx".into())).get(), 2);
        assert_eq!(m.get_or_create(&labels("2xx".into())).get(), 1);
        // Made-up methods share one series.
        for i in 0..100 {
            metrics.observe(&format!("X{i}"), "/v1/layers/{chain}", 405, 0.001);
        }
        let other = RequestLabels { method: "OTHER".into(), route: "/v1/layers/{chain}".into(), status: "4xx".into() };
        assert_eq!(m.get_or_create(&other).get(), 100);
        assert_eq!(method_label("DELETE"), "DELETE");
    }
}
