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
    /// The checks' counts and durations (None: no checker yet).
    pub checks: Option<health::Record>,
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
struct CountedHistogram(std::sync::Mutex<(f64, u64, Vec<(f64, u64)>)>);

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

    let not_run = Counter::<u64>::default();
    registry.register(
        "health_checks_not_run",
        "Health checks that could not run for a local reason (no file \
         descriptor, no memory, no local port): never counted against a backend",
        not_run.clone(),
    );
    not_run.inc_by(s.health_checks_not_run);

    let mut text = String::new();
    encode(&mut text, &registry).expect("writing to a String cannot fail");
    text
}

#[cfg(test)]
mod docs_tests;
mod server;

pub use server::{bind, serve, serve_with, Limits};

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// A snapshot with every family populated.
    pub(crate) fn sample() -> Snapshot {
        let mut checks = health::Record::empty();
        let now = Instant::now();
        checks.add(
            CheckResult::Passed,
            "ok".into(),
            Duration::from_millis(2),
            now,
        );
        checks.add(
            CheckResult::Failed,
            "refused".into(),
            Duration::from_millis(30),
            now,
        );
        checks.add(
            CheckResult::Failed,
            "slow".into(),
            Duration::from_secs(4),
            now,
        );
        checks.add(CheckResult::NotRun, "EMFILE".into(), Duration::ZERO, now);
        checks.transitions = 1;
        Snapshot {
            reasons: vec![("forwarded", 10, 1000), ("pass_not_vip", 3, 300)],
            events: vec![("midflow_miss", 7)],
            vips: vec![("web".into(), 10, 1000)],
            backends: vec![
                BackendSample {
                    vip: "web".into(),
                    backend: "10.0.0.11".into(),
                    packets: 10,
                    bytes: 1000,
                    up: true,
                    enabled: false,
                    weight: 3,
                    active_flows: 42,
                    checks: Some(checks),
                },
                BackendSample {
                    vip: "web".into(),
                    backend: "10.0.0.12".into(),
                    packets: 0,
                    bytes: 0,
                    up: false,
                    enabled: true,
                    weight: 1,
                    active_flows: 0,
                    checks: None,
                },
            ],
            flow_entries: 4,
            flow_capacity: 65536,
            health_checks_not_run: 2,
        }
    }

    #[test]
    fn exposition_has_every_family_with_labels() {
        let text = render(&sample());
        for line in [
            "foobar_datapath_packets_total{reason=\"forwarded\"} 10",
            "foobar_datapath_bytes_total{reason=\"pass_not_vip\"} 300",
            "foobar_vip_packets_total{vip=\"web\"} 10",
            "foobar_backend_bytes_total{vip=\"web\",backend=\"10.0.0.11\"} 1000",
            "foobar_backend_up{vip=\"web\",backend=\"10.0.0.11\"} 1",
            "foobar_backend_enabled{vip=\"web\",backend=\"10.0.0.11\"} 0",
            "foobar_backend_weight{vip=\"web\",backend=\"10.0.0.11\"} 3",
            "foobar_backend_active_flows{vip=\"web\",backend=\"10.0.0.11\"} 42",
            "foobar_health_checks_total{vip=\"web\",backend=\"10.0.0.11\",result=\"failed\"} 2",
            "foobar_health_checks_total{vip=\"web\",backend=\"10.0.0.12\",result=\"passed\"} 0",
            "foobar_health_transitions_total{vip=\"web\",backend=\"10.0.0.11\"} 1",
            "foobar_health_check_duration_seconds_count{vip=\"web\",backend=\"10.0.0.11\"} 3",
            "foobar_health_check_duration_seconds_bucket{le=\"0.0025\",vip=\"web\",backend=\"10.0.0.11\"} 1",
            "foobar_health_check_duration_seconds_bucket{le=\"0.05\",vip=\"web\",backend=\"10.0.0.11\"} 2",
            "foobar_health_check_duration_seconds_bucket{le=\"+Inf\",vip=\"web\",backend=\"10.0.0.11\"} 3",
            "foobar_flow_table_entries 4",
            "foobar_flow_table_capacity 65536",
            "foobar_health_checks_not_run_total 2",
            "foobar_datapath_events_total{event=\"midflow_miss\"} 7",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
    }

    /// What `promtool check metrics` checks, on the text as served: every
    /// family has HELP and TYPE before its samples, counters' samples end in
    /// _total, histograms have _bucket/_sum/_count and +Inf, the text ends
    /// with `# EOF`; then a real parser of the format reads every sample.
    #[test]
    fn exposition_is_valid_openmetrics_with_help_on_every_family() {
        let text = render(&sample());
        let families = check_openmetrics(&text);
        assert!(families >= 16, "only {families} families");

        // prometheus-parse: a parser of the Prometheus text format.
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("parses");
        let names: std::collections::HashSet<&str> =
            scrape.samples.iter().map(|s| s.metric.as_str()).collect();
        for (family, _) in FAMILIES {
            assert!(
                names.iter().any(|n| n.starts_with(family)),
                "the parser saw no sample of {family}"
            );
            assert!(
                scrape.docs.contains_key(*family),
                "the parser saw no HELP of {family}: {:?}",
                scrape.docs.keys()
            );
        }
        let active = scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == "foobar_backend_active_flows"
                    && s.labels.get("backend") == Some("10.0.0.11")
            })
            .expect("active flows sample");
        assert!(matches!(active.value, prometheus_parse::Value::Gauge(v) if v == 42.0));

        // The strict OpenMetrics parser of the Prometheus project's Python
        // client (Debian: python3-prometheus-client), when installed.
        strict_openmetrics_parse(&text);
    }

    /// Parses `text` with prometheus_client.openmetrics.parser (which
    /// refuses a missing # EOF, bad suffixes, unsorted buckets...); says
    /// so and returns if the module is not installed.
    fn strict_openmetrics_parse(text: &str) {
        use std::io::Write as _;
        let script = "import sys\n\
            from prometheus_client.openmetrics.parser import text_string_to_metric_families as p\n\
            fams = list(p(sys.stdin.read()))\n\
            print(len(fams))\n";
        let probe = std::process::Command::new("/usr/bin/python3")
            .args(["-c", "import prometheus_client.openmetrics.parser"])
            .output();
        if !probe.is_ok_and(|o| o.status.success()) {
            eprintln!("skipped the strict parse: python3-prometheus-client is not installed");
            return;
        }
        let mut child = std::process::Command::new("/usr/bin/python3")
            .args(["-c", script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "the OpenMetrics parser refused the exposition: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        let families: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        assert_eq!(families, FAMILIES.len());
    }

    /// Every family foobar serves (vrrp families are checked where they are
    /// made), and its type: docs/grafana-dashboard.json and docs/alerts.yml
    /// may use only these.
    pub(crate) const FAMILIES: &[(&str, &str)] = &[
        ("foobar_datapath_packets", "counter"),
        ("foobar_datapath_bytes", "counter"),
        ("foobar_datapath_events", "counter"),
        ("foobar_vip_packets", "counter"),
        ("foobar_vip_bytes", "counter"),
        ("foobar_backend_packets", "counter"),
        ("foobar_backend_bytes", "counter"),
        ("foobar_backend_up", "gauge"),
        ("foobar_backend_enabled", "gauge"),
        ("foobar_backend_weight", "gauge"),
        ("foobar_backend_active_flows", "gauge"),
        ("foobar_health_checks", "counter"),
        ("foobar_health_check_duration_seconds", "histogram"),
        ("foobar_health_transitions", "counter"),
        ("foobar_flow_table_entries", "gauge"),
        ("foobar_flow_table_capacity", "gauge"),
        ("foobar_health_checks_not_run", "counter"),
    ];

    /// The structural rules of OpenMetrics text 1.0 that promtool applies;
    /// panics on the first broken one; returns the number of families.
    pub(crate) fn check_openmetrics(text: &str) -> usize {
        assert!(text.ends_with("# EOF\n"), "no # EOF at the end");
        assert_eq!(text.matches("# EOF").count(), 1);
        let mut families: std::collections::HashMap<String, (bool, Option<String>)> =
            Default::default();
        let mut current: Option<String> = None;
        for line in text.lines().filter(|l| *l != "# EOF") {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP name text");
                assert!(!help.trim().is_empty(), "empty HELP for {name}");
                families.entry(name.into()).or_default().0 = true;
                current = Some(name.into());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                let f = families.entry(name.into()).or_default();
                assert!(f.0, "TYPE before HELP for {name}");
                f.1 = Some(kind.into());
                current = Some(name.into());
            } else if line.starts_with('#') {
                // # UNIT is allowed; nothing else.
                assert!(line.starts_with("# UNIT "), "unexpected comment {line:?}");
            } else {
                let name = line.split(['{', ' ']).next().unwrap();
                let family = current.as_deref().expect("a sample before any HELP");
                let (_, kind) = &families[family];
                let suffixes: &[&str] = match kind.as_deref() {
                    Some("counter") => &["_total", "_created"],
                    Some("histogram") => &["_bucket", "_sum", "_count", "_created"],
                    Some("gauge") | Some("info") | Some("unknown") => &["", "_info"],
                    other => panic!("{family}: type {other:?}"),
                };
                assert!(
                    suffixes.iter().any(|s| name == format!("{family}{s}")),
                    "sample {name} does not belong to family {family} ({kind:?})"
                );
                let value = line.rsplit(' ').next().unwrap();
                assert!(
                    value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
                    "{line}: value {value}"
                );
                if name.ends_with("_bucket") {
                    assert!(line.contains("le=\""), "{line}");
                }
            }
        }
        for (name, (help, kind)) in &families {
            assert!(
                *help && kind.is_some(),
                "{name}: HELP {help}, TYPE {kind:?}"
            );
            if kind.as_deref() == Some("histogram") {
                assert!(
                    text.contains(&format!("{name}_bucket{{le=\"+Inf\"")),
                    "{name} has no +Inf"
                );
            }
        }
        families.len()
    }
}
