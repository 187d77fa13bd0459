//! docs/grafana-dashboard.json and docs/alerts.yml, read by real parsers:
//! every metric they query must be one the daemon serves, so a renamed
//! family cannot leave a dashboard or an alert silently empty.
use std::collections::HashSet;

use super::{render, tests::sample};

fn docs(name: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/");
    std::fs::read_to_string(format!("{path}{name}")).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Every sample name the daemon serves (with `_total`, `_bucket`...).
fn served() -> HashSet<String> {
    render(&sample())
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect()
}

/// The `foobar_...` names in a PromQL expression.
fn metrics_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("foobar_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

#[test]
fn every_alert_queries_served_metrics_and_the_four_alerts_exist() {
    let rules: serde_yaml::Value = serde_yaml::from_str(&docs("alerts.yml")).expect("valid YAML");
    let served = served();
    let mut names = Vec::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().expect("alert name");
            let expr = rule["expr"].as_str().expect("expr");
            assert!(
                rule["annotations"]["summary"].is_string(),
                "{name}: no summary"
            );
            let used = metrics_in(expr);
            assert!(!used.is_empty(), "{name}: no foobar metric in {expr}");
            for m in used {
                assert!(served.contains(&m), "{name}: {m} is not served: {served:?}");
            }
            names.push(name.to_owned());
        }
    }
    for wanted in [
        "FoobarBackendDown",
        "FoobarAllBackendsDown",
        "FoobarFlowTableNearlyFull",
        "FoobarDropsRising",
    ] {
        assert!(
            names.iter().any(|n| n == wanted),
            "no {wanted} in {names:?}"
        );
    }
}

#[test]
fn every_dashboard_panel_queries_served_metrics() {
    let dash: serde_json::Value =
        serde_json::from_str(&docs("grafana-dashboard.json")).expect("valid JSON");
    let served = served();
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8);
    let mut queried = HashSet::new();
    for p in panels {
        let title = p["title"].as_str().expect("title");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            let used = metrics_in(expr);
            assert!(!used.is_empty(), "{title}: no foobar metric in {expr}");
            for m in used {
                assert!(served.contains(&m), "{title}: {m} is not served");
                queried.insert(m);
            }
        }
    }
    for v in dash["templating"]["list"].as_array().expect("variables") {
        for m in metrics_in(v["query"].as_str().unwrap_or("")) {
            assert!(
                served.contains(&m),
                "variable {}: {m} is not served",
                v["name"]
            );
        }
    }
    // The families an operator looks at first are on it.
    for m in [
        "foobar_backend_up",
        "foobar_backend_active_flows",
        "foobar_health_checks_total",
        "foobar_health_check_duration_seconds_bucket",
        "foobar_datapath_packets_total",
    ] {
        assert!(queried.contains(m), "the dashboard does not show {m}");
    }
}

#[test]
fn metric_names_are_read_out_of_promql() {
    assert_eq!(
        metrics_in("sum by (vip) (foobar_backend_up * foobar_backend_enabled) == 0"),
        ["foobar_backend_up", "foobar_backend_enabled"]
    );
    assert_eq!(
        metrics_in("rate(foobar_x_total{a=\"b\"}[5m])"),
        ["foobar_x_total"]
    );
}
