//! The exposition, checked by parsers of the format.
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
                new_flows: 17,
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
                new_flows: 0,
                checks: None,
            },
        ],
        flow_entries: 4,
        flow_capacity: 65536,
        health_checks_not_run: 2,
        vrrp: vec![crate::vrrp::status::tests::status()],
        nat: crate::daemon::NatGcTotals {
            states: 5,
            reverse: 6,
            states_removed: 7,
            reverse_removed: 8,
            runs: 3,
        },
    }
}

#[test]
fn exposition_has_every_family_with_labels() {
    let text = render(&sample());
    for line in [
        "foobar_datapath_packets_total{reason=\"forwarded\"} 10",
        "foobar_nat_states 5",
        "foobar_nat_reverse_entries 6",
        "foobar_nat_gc_removed_total{table=\"state\"} 7",
        "foobar_nat_gc_removed_total{table=\"reverse\"} 8",
        "foobar_datapath_bytes_total{reason=\"pass_not_vip\"} 300",
        "foobar_vip_packets_total{vip=\"web\"} 10",
        "foobar_backend_bytes_total{vip=\"web\",backend=\"10.0.0.11\"} 1000",
        "foobar_backend_up{vip=\"web\",backend=\"10.0.0.11\"} 1",
        "foobar_backend_enabled{vip=\"web\",backend=\"10.0.0.11\"} 0",
        "foobar_backend_weight{vip=\"web\",backend=\"10.0.0.11\"} 3",
        "foobar_backend_active_flows{vip=\"web\",backend=\"10.0.0.11\"} 42",
        "foobar_backend_new_flows_total{vip=\"web\",backend=\"10.0.0.11\"} 17",
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
fn build_info_names_version_and_revision() {
    let text = render(&Snapshot::default());
    let line = format!(
        "foobar_build_info{{version=\"{}\",revision=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        env!("FOOBAR_GIT_REVISION")
    );
    assert!(
        text.lines().any(|l| l == line),
        "missing {line:?} in:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("# HELP foobar_build_info ")),
        "{text}"
    );
}

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

/// Every family foobar serves, and its type: docs/grafana-dashboard.json and docs/alerts.yml
/// may use only these.
pub(crate) const FAMILIES: &[(&str, &str)] = &[
    ("foobar_build_info", "gauge"),
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
    ("foobar_backend_new_flows", "counter"),
    ("foobar_health_checks", "counter"),
    ("foobar_health_check_duration_seconds", "histogram"),
    ("foobar_health_transitions", "counter"),
    ("foobar_flow_table_entries", "gauge"),
    ("foobar_flow_table_capacity", "gauge"),
    ("foobar_health_checks_not_run", "counter"),
    ("foobar_nat_states", "gauge"),
    ("foobar_nat_reverse_entries", "gauge"),
    ("foobar_nat_gc_removed", "counter"),
    ("foobar_vrrp_state", "gauge"),
    ("foobar_vrrp_priority", "gauge"),
    ("foobar_vrrp_configured_priority", "gauge"),
    ("foobar_vrrp_transitions", "counter"),
    ("foobar_vrrp_adverts_sent", "counter"),
    ("foobar_vrrp_adverts_received", "counter"),
    ("foobar_vrrp_adverts_dropped", "counter"),
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
