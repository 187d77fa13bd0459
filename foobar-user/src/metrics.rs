//! OpenMetrics text exposition (prometheus-client) of the datapath
//! counters, backend health and checks, and flow-table occupancy, served
//! over HTTP (hyper) at `/metrics` with the OpenMetrics content type (the
//! format prometheus-client writes, `# EOF` included). Each scrape asks the
//! state owner for a fresh snapshot; this module only formats and serves
//! it. README.md "Metrics" lists the families.
use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge, MetricType, TypedMetric},
    registry::Registry,
};

use crate::health::{self, CheckResult, DURATION_BUCKETS_S};

/// The content type of what [`render`] writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Everything one scrape reports, as read by the state owner.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// (reason, packets, bytes)
    pub reasons: Vec<(&'static str, u64, u64)>,
    /// (event, packets)
    pub events: Vec<(&'static str, u64)>,
    /// (vip, packets, bytes)
    pub vips: Vec<(String, u64, u64)>,
    pub backends: Vec<BackendSample>,
    pub flow_entries: u64,
    pub flow_capacity: u64,
    /// Health checks that could not run for a local reason (EMFILE, ...).
    pub health_checks_not_run: u64,
    /// The VRRP instances (`foobar_vrrp_*`).
    pub vrrp: Vec<crate::vrrp::status::Status>,
    /// NAT state and the garbage collector's removals (`foobar_nat_*`).
    pub nat: crate::daemon::NatGcTotals,
}

#[derive(Clone, Debug)]
pub struct BackendSample {
    pub vip: String,
    pub backend: String,
    pub packets: u64,
    pub bytes: u64,
    pub up: bool,
    pub enabled: bool,
    pub weight: u32,
    /// Open flows seen within the activity window (the flow-table walk).
    pub active_flows: u64,
    /// Flows the datapath scheduled to the backend.
    pub new_flows: u64,
    /// The checks' counts and durations (None: no checker yet).
    pub checks: Option<health::Record>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabels {
    table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    vip: String,
    backend: String,
    result: String,
}

/// A histogram whose buckets were counted elsewhere (the health board):
/// prometheus-client's own `Histogram` only takes observations.
#[derive(Debug, Default)]
struct CountedHistogram(std::sync::Mutex<HistogramCounts>);

/// (sum, count, per-bucket counts with their upper bounds)
type HistogramCounts = (f64, u64, Vec<(f64, u64)>);

impl CountedHistogram {
    fn set(&self, r: &health::Record) {
        let mut buckets: Vec<(f64, u64)> = DURATION_BUCKETS_S
            .iter()
            .copied()
            .zip(r.duration_buckets.iter().copied())
            .collect();
        // f64::MAX is how prometheus-client writes le="+Inf".
        buckets.push((f64::MAX, *r.duration_buckets.last().unwrap_or(&0)));
        let count = r.duration_buckets.iter().sum();
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = (r.duration_sum_s, count, buckets);
    }
}

impl TypedMetric for CountedHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for CountedHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = &*self.0.lock().unwrap_or_else(|e| e.into_inner());
        encoder.encode_histogram::<NoLabelSet>(*sum, *count, buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    revision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VipLabels {
    vip: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    vip: String,
    backend: String,
}

/// The snapshot in Prometheus text format.
pub fn render(s: &Snapshot) -> String {
    let mut registry = Registry::with_prefix("foobar");
    let counter_family = |registry: &mut Registry, name: &str, help: &str| {
        let f = Family::<BackendLabels, Counter>::default();
        registry.register(name, help, f.clone());
        f
    };

    let build_info = Family::<BuildLabels, Gauge>::default();
    registry.register(
        "build_info",
        "Always 1: the version and git revision of the running foobar",
        build_info.clone(),
    );
    build_info
        .get_or_create(&BuildLabels {
            version: crate::build_info::VERSION.to_owned(),
            revision: crate::build_info::REVISION.to_owned(),
        })
        .set(1);

    let reason_packets = Family::<ReasonLabels, Counter>::default();
    let reason_bytes = Family::<ReasonLabels, Counter>::default();
    registry.register(
        "datapath_packets",
        "Packets the XDP program saw, by the reason of its verdict",
        reason_packets.clone(),
    );
    registry.register(
        "datapath_bytes",
        "Bytes the XDP program saw, by the reason of its verdict",
        reason_bytes.clone(),
    );
    for (reason, packets, bytes) in &s.reasons {
        let l = ReasonLabels {
            reason: (*reason).to_owned(),
        };
        reason_packets.get_or_create(&l).inc_by(*packets);
        reason_bytes.get_or_create(&l).inc_by(*bytes);
    }

    let events = Family::<EventLabels, Counter>::default();
    registry.register(
        "datapath_events",
        "Datapath events counted besides the verdict (midflow_miss: a TCP segment \
         without SYN found no flow entry, e.g. evicted from a full flow table)",
        events.clone(),
    );
    for (event, packets) in &s.events {
        let l = EventLabels {
            event: (*event).to_owned(),
        };
        events.get_or_create(&l).inc_by(*packets);
    }

    let vip_packets = Family::<VipLabels, Counter>::default();
    let vip_bytes = Family::<VipLabels, Counter>::default();
    registry.register(
        "vip_packets",
        "Packets forwarded for the VIP",
        vip_packets.clone(),
    );
    registry.register(
        "vip_bytes",
        "Bytes forwarded for the VIP",
        vip_bytes.clone(),
    );
    for (vip, packets, bytes) in &s.vips {
        let l = VipLabels { vip: vip.clone() };
        vip_packets.get_or_create(&l).inc_by(*packets);
        vip_bytes.get_or_create(&l).inc_by(*bytes);
    }

    let backend_packets = counter_family(
        &mut registry,
        "backend_packets",
        "Packets forwarded to the backend",
    );
    let backend_bytes = counter_family(
        &mut registry,
        "backend_bytes",
        "Bytes forwarded to the backend",
    );
    let backend_up = Family::<BackendLabels, Gauge>::default();
    let backend_enabled = Family::<BackendLabels, Gauge>::default();
    registry.register(
        "backend_up",
        "1 if the backend's health checks pass",
        backend_up.clone(),
    );
    registry.register(
        "backend_enabled",
        "1 if the backend takes new flows (0: drained)",
        backend_enabled.clone(),
    );
    let backend_weight = Family::<BackendLabels, Gauge>::default();
    registry.register(
        "backend_weight",
        "The backend's weight (0..=256; 0 takes no new flows)",
        backend_weight.clone(),
    );
    let backend_active = Family::<BackendLabels, Gauge>::default();
    registry.register(
        "backend_active_flows",
        "Open flows on the backend seen within the activity window, as of the latest \
         flow-table walk",
        backend_active.clone(),
    );
    let backend_new_flows = Family::<BackendLabels, Counter>::default();
    registry.register(
        "backend_new_flows",
        "Flows the datapath scheduled to the backend (new connections, and flows \
         rescheduled mid-stream)",
        backend_new_flows.clone(),
    );
    let checks = Family::<CheckLabels, Counter>::default();
    registry.register(
        "health_checks",
        "Health checks of the backend by result (passed, failed, not_run: a local \
         shortage, never counted against the backend)",
        checks.clone(),
    );
    let check_seconds = Family::<BackendLabels, CountedHistogram>::default();
    registry.register(
        "health_check_duration_seconds",
        "How long the backend's health checks that ran took",
        check_seconds.clone(),
    );
    let transitions = Family::<BackendLabels, Counter>::default();
    registry.register(
        "health_transitions",
        "Changes of the backend's health (up to down or down to up) the checks decided",
        transitions.clone(),
    );
    for b in &s.backends {
        let l = BackendLabels {
            vip: b.vip.clone(),
            backend: b.backend.clone(),
        };
        backend_packets.get_or_create(&l).inc_by(b.packets);
        backend_bytes.get_or_create(&l).inc_by(b.bytes);
        backend_up.get_or_create(&l).set(i64::from(b.up));
        backend_enabled.get_or_create(&l).set(i64::from(b.enabled));
        backend_weight.get_or_create(&l).set(i64::from(b.weight));
        backend_active.get_or_create(&l).set(b.active_flows as i64);
        backend_new_flows.get_or_create(&l).inc_by(b.new_flows);
        // Every result is written, zeros too: a rate over a series that
        // appears only at its first failure misses that failure.
        let r = b.checks.clone().unwrap_or_else(health::Record::empty);
        for result in CheckResult::ALL {
            let cl = CheckLabels {
                vip: b.vip.clone(),
                backend: b.backend.clone(),
                result: result.name().to_owned(),
            };
            checks.get_or_create(&cl).inc_by(r.results[result as usize]);
        }
        check_seconds.get_or_create(&l).set(&r);
        transitions.get_or_create(&l).inc_by(r.transitions);
    }

    let entries = Gauge::<i64>::default();
    let capacity = Gauge::<i64>::default();
    registry.register(
        "flow_table_entries",
        "Entries in the flow table",
        entries.clone(),
    );
    registry.register(
        "flow_table_capacity",
        "Size of the flow table (LRU)",
        capacity.clone(),
    );
    entries.set(s.flow_entries as i64);
    capacity.set(s.flow_capacity as i64);

    let nat_states = Gauge::<i64>::default();
    let nat_reverse = Gauge::<i64>::default();
    let nat_removed = Family::<TableLabels, Counter<u64>>::default();
    registry.register(
        "nat_states",
        "NAT states (NAT_FLOWS entries not yet collected) at the latest garbage collection",
        nat_states.clone(),
    );
    registry.register(
        "nat_reverse_entries",
        "NAT reverse entries (NAT_REVERSE) at the latest garbage collection",
        nat_reverse.clone(),
    );
    registry.register(
        "nat_gc_removed",
        "Entries the daemon's NAT garbage collection removed, by table: state (ended \
         states) or reverse (entries whose state was gone)",
        nat_removed.clone(),
    );
    nat_states.set(s.nat.states as i64);
    nat_reverse.set(s.nat.reverse as i64);
    for (table, n) in [
        ("state", s.nat.states_removed),
        ("reverse", s.nat.reverse_removed),
    ] {
        nat_removed
            .get_or_create(&TableLabels {
                table: table.to_owned(),
            })
            .inc_by(n);
    }

    let not_run = Counter::<u64>::default();
    registry.register(
        "health_checks_not_run",
        "Health checks that could not run for a local reason (no file \
         descriptor, no memory, no local port): never counted against a backend",
        not_run.clone(),
    );
    not_run.inc_by(s.health_checks_not_run);

    crate::vrrp::status::register_metrics(&mut registry, &s.vrrp);

    let mut text = String::new();
    encode(&mut text, &registry).expect("writing to a String cannot fail");
    text
}

#[cfg(test)]
mod docs_tests;
mod server;
#[cfg(test)]
mod tests;

pub use server::{bind, serve, serve_with, Limits};
