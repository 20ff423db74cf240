//! Prometheus metrics (`GET /metrics`, text format), through the prometheus-client crate:
//! reconciles by result and their duration, the queue's depth, agents by phase, the
//! engine's errors, and HTTP requests by route and status with their latency.

use std::sync::atomic::AtomicI64;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::agent::Phase;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency() -> Histogram {
    // 1 ms to about 33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Every metric Hive keeps, and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<ResultLabel, Counter>,
    pub reconcile_seconds: Histogram,
    pub queue_depth: Gauge<i64, AtomicI64>,
    pub agents: Family<PhaseLabel, Gauge<i64, AtomicI64>>,
    pub engine_errors: Family<KindLabel, Counter>,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_seconds: HistogramFamily<RouteLabel>,
    /// 1 while this Hive holds its instance's lease.
    pub leader: Gauge<i64, AtomicI64>,
    /// Containers of this instance that another store declared (left alone).
    pub foreign_containers: Gauge<i64, AtomicI64>,
    /// Times the storm guard held an agent's create back.
    pub create_backoffs: Counter,
    /// Agents Hive stopped for idleness (`spec.lifecycle.idleTimeout`).
    pub idled: Counter,
    /// Idle agents woken again (a start, a write, an action or a touch).
    pub resumed: Counter,
    /// Long-lived answers open now (watches, log reads, MCP waits).
    pub streams: Gauge<i64, AtomicI64>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("hive");
        let reconciles = Family::<ResultLabel, Counter>::default();
        registry.register(
            "reconciles",
            "Reconcile passes by result (ok or error)",
            reconciles.clone(),
        );
        let reconcile_seconds = latency();
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile pass takes",
            reconcile_seconds.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Agents waiting for a reconcile",
            queue_depth.clone(),
        );
        let agents = Family::<PhaseLabel, Gauge<i64, AtomicI64>>::default();
        registry.register("agents", "Agents by phase", agents.clone());
        let engine_errors = Family::<KindLabel, Counter>::default();
        registry.register(
            "engine_errors",
            "Failed container engine (Docker) calls by kind",
            engine_errors.clone(),
        );
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by method, route and status",
            http_requests.clone(),
        );
        let http_seconds: HistogramFamily<RouteLabel> = Family::new_with_constructor(latency);
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            http_seconds.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this Hive holds its instance's lease and reconciles",
            leader.clone(),
        );
        let foreign_containers = Gauge::default();
        registry.register(
            "foreign_containers",
            "Containers of this instance declared by another store, left alone",
            foreign_containers.clone(),
        );
        let create_backoffs = Counter::default();
        registry.register(
            "create_backoffs",
            "Times an agent's container create was held back because its containers keep disappearing or were created too often",
            create_backoffs.clone(),
        );
        let idled = Counter::default();
        registry.register(
            "agents_idled",
            "Agents stopped for idleness (spec.lifecycle.idleTimeout)",
            idled.clone(),
        );
        let streams = Gauge::default();
        registry.register(
            "open_streams",
            "Watches, log reads and MCP waits open now, all keys together",
            streams.clone(),
        );
        let resumed = Counter::default();
        registry.register(
            "agents_resumed",
            "Agents stopped for idleness and woken again",
            resumed.clone(),
        );
        Metrics {
            leader,
            foreign_containers,
            create_backoffs,
            idled,
            resumed,
            streams,
            registry,
            reconciles,
            reconcile_seconds,
            queue_depth,
            agents,
            engine_errors,
            http_requests,
            http_seconds,
        }
    }
}

impl Metrics {
    /// Sets the agents-by-phase gauges from a count of the store.
    pub fn set_phases(&self, phases: impl Iterator<Item = Phase>) {
        let mut counts = std::collections::BTreeMap::new();
        for p in Phase::ALL {
            counts.insert(p.as_str(), 0);
        }
        for p in phases {
            *counts.entry(p.as_str()).or_insert(0) += 1;
        }
        for (phase, n) in counts {
            self.agents
                .get_or_create(&PhaseLabel {
                    phase: phase.to_string(),
                })
                .set(n);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Middleware: counts and times every request by its route pattern (never the raw path,
/// so agent names do not become labels).
pub async fn track(
    State(metrics): State<std::sync::Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let start = Instant::now();
    // Only methods HTTP defines: any other string a client sends is not a label value.
    let method = match request.method().as_str() {
        m @ ("GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "PATCH" | "OPTIONS") => m.to_string(),
        _ => "other".to_string(),
    };
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    metrics
        .http_requests
        .get_or_create(&HttpLabels {
            method,
            route: route.clone(),
            status: response.status().as_u16(),
        })
        .inc();
    metrics
        .http_seconds
        .get_or_create(&RouteLabel { route })
        .observe(start.elapsed().as_secs_f64());
    response
}
