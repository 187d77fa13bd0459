//! What an operator reads off a running foobar, in the netns lab: the
//! status table's numbers move under load and its columns line up, the
//! metrics are OpenMetrics with the content type that says so, and each
//! kind of failure has its own exit code and JSON error.
//! Needs root; run under `flock -o /tmp/foobar-lab.lock`.
use std::{process::Command, time::Duration};

use foobar::cli::exit;
use foobar_tests::lab::{self, Lab, LabOptions, VIP};
use foobar_tests::ops::{backend, foobar, status, wait_until};
use serde_json::Value;

/// `foobar ARGS` against the lab: (exit code, stdout, stderr).
fn run(lab: &Lab, args: &[&str]) -> (i32, String, String) {
    let out = lab.foobar_cli(&foobar(), args).expect("running foobar");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The JSON error document of a failed `--json` command: (kind, code).
fn json_error(stdout: &str) -> (String, i64) {
    let doc: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not a JSON document ({e}): {stdout:?}"));
    assert_eq!(doc["ok"], false, "{doc}");
    assert_eq!(doc["schema_version"], 1, "{doc}");
    assert!(doc["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    (
        doc["error"]["kind"].as_str().unwrap_or("").to_owned(),
        doc["error"]["exit_code"].as_i64().unwrap_or(-1),
    )
}

#[test]
fn each_failure_has_its_exit_code_and_a_json_error() {
    let mut lab = Lab::start(&LabOptions::default()).expect("lab starts");
    let config = lab.config_with_backends(2);
    lab.start_foobar(&foobar(), &config).expect("foobar runs");
    let be1 = lab.backends[0].addr.to_string();

    // Usage: refused by the argument parser, nothing sent.
    let (code, out, err) = run(&lab, &["backend", "add", "web", "10.201.0.300", "--json"]);
    assert_eq!(code, i32::from(exit::USAGE), "{err}");
    assert_eq!(json_error(&out), ("usage".into(), 2));
    assert!(err.contains("is not an IPv4 or IPv6 address"), "{err}");
    let (code, _, err) = run(&lab, &["backend", "weight", "web", &be1, "300"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("weight 300 is out of range"), "{err}");
    let (code, _, err) = run(
        &lab,
        &[
            "vip",
            "add",
            "w2",
            "10.201.0.101",
            "80",
            "--http-path",
            "/x",
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("need --check http"), "{err}");

    // Refused by the daemon: nothing changes.
    let (code, out, err) = run(&lab, &["backend", "drain", "nope", &be1, "--json"]);
    assert_eq!(code, i32::from(exit::REFUSED), "{err}");
    assert_eq!(json_error(&out), ("refused".into(), 4));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no VIP named \"nope\""), "{err}");

    // `vip add` takes the config's options, typed; the daemon refuses what
    // it cannot serve (persistence without an affinity table).
    let (code, out, err) = run(
        &lab,
        &[
            "vip",
            "add",
            "w2",
            "10.201.0.101",
            "8080",
            "--scheduler",
            "maglev",
            "--maglev-table-size",
            "251",
            "--check",
            "http",
            "--http-path",
            "/",
            "--interval-ms",
            "500",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let added: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (added["vip"].as_str(), added["ok"].as_bool()),
        (Some("w2"), Some(true))
    );
    let w2 = status(&lab)["vips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "w2")
        .cloned()
        .expect("w2 in status");
    assert_eq!(
        (w2["scheduler"].as_str(), w2["port"].as_u64()),
        (Some("maglev"), Some(8080))
    );
    let (code, _, err) = run(
        &lab,
        &[
            "vip",
            "add",
            "w3",
            "10.201.0.102",
            "80",
            "--persistence",
            "5m",
        ],
    );
    assert_eq!(code, i32::from(exit::REFUSED), "{err}");
    assert!(err.contains("source-affinity table"), "{err}");
    let (code, _, err) = run(
        &lab,
        &[
            "vip",
            "add",
            "w4",
            "10.201.0.103",
            "80",
            "--maglev-table-size",
            "250",
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a prime"), "{err}");
    assert_eq!(run(&lab, &["vip", "remove", "w2"]).0, 0);

    // Unreachable.
    let out = Command::new(foobar())
        .args(["--socket", "/nonexistent/foobar.sock", "status", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(i32::from(exit::UNREACHABLE)));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(json_error(&stdout), ("unreachable".into(), 3));

    // Config invalid: `check` of a broken file, and `reload` of one (the
    // daemon keeps serving what it had).
    let conf = lab.dir.join("foobar.toml");
    let good = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(&conf, format!("{good}\n[log]\nlevel = \"loud[\"\n")).unwrap();
    let checked = Command::new(foobar())
        .args(["check", "--json", "--config"])
        .arg(&conf)
        .output()
        .unwrap();
    assert_eq!(checked.status.code(), Some(i32::from(exit::CONFIG_INVALID)));
    let (kind, _) = json_error(&String::from_utf8_lossy(&checked.stdout));
    assert_eq!(kind, "config_invalid");
    let (code, out, err) = run(&lab, &["reload", "--json"]);
    std::fs::write(&conf, &good).unwrap();
    assert_eq!(code, i32::from(exit::CONFIG_INVALID), "{err}");
    assert_eq!(json_error(&out), ("config_invalid".into(), 5));
    assert!(err.contains("log.level"), "{err}");
    let (code, out, _) = run(&lab, &["reload", "--json"]);
    assert_eq!(code, 0, "{out}");
    let reloaded: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(reloaded["ok"], true);
    assert_eq!(reloaded["schema_version"], 1);

    // The caller's uid is on the control request lines.
    let log = lab.foobar_log();
    assert!(
        log.lines()
            .any(|l| l.contains("control request refused") && l.contains("uid=0")),
        "{log}"
    );
}

/// Reads the metrics over HTTP on the LB node: (content type, body).
fn scrape(lab: &Lab) -> (String, String) {
    let out = lab
        .exec(
            &lab.lb.ns,
            &[
                "curl",
                "-sS",
                "--max-time",
                "2",
                "-D",
                "-",
                "http://127.0.0.1:9183/metrics",
            ],
        )
        .expect("scrape");
    let (head, body) = out.split_once("\r\n\r\n").expect("headers and body");
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    (content_type, body.to_owned())
}

/// The value of the sample `line_prefix VALUE` in `body`.
fn sample(body: &str, line_prefix: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(line_prefix)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn status_numbers_move_under_load_and_the_metrics_are_openmetrics() {
    let mut lab = Lab::start(&LabOptions::default()).expect("lab starts");
    let config = lab.config_with_backends(2);
    lab.start_foobar(&foobar(), &config).expect("foobar runs");
    let be1 = lab.backends[0].addr.to_string();
    wait_until("a first check of be1", Duration::from_secs(5), || {
        backend(&status(&lab), &be1).is_some_and(|b| b["check"]["result"] == "passed")
    });
    let before = status(&lab);
    let b0 = backend(&before, &be1).unwrap().clone();

    let wrk = lab
        .start_wrk(&format!("http://{VIP}/"), 8, 7)
        .expect("wrk starts");
    // Active flows appear at the next flow-table walk (every 5 s).
    let mut during = Value::Null;
    wait_until(
        "traffic and active flows on be1",
        Duration::from_secs(7),
        || {
            during = status(&lab);
            backend(&during, &be1).is_some_and(|b| {
                b["packets_per_s"].as_f64() > Some(0.0) && b["active_flows"].as_u64() > Some(0)
            })
        },
    );
    let b1 = backend(&during, &be1).unwrap().clone();
    // wrk's connections were scheduled: be1 got some of them as new flows.
    assert!(
        b1["new_flows"].as_u64() > b0["new_flows"].as_u64(),
        "{b0}\n{b1}"
    );
    // Checks run every 300 ms: more have passed, each took some time.
    assert!(
        b1["check"]["passed"].as_u64() > b0["check"]["passed"].as_u64(),
        "{b0}\n{b1}"
    );
    assert!(b1["check"]["duration_ms"].as_f64() > Some(0.0), "{b1}");
    assert!(
        b1["check"]["age_s"].as_f64() < Some(2.0),
        "the latest, not the first: {b1}"
    );
    assert!(
        b1["health_since_s"].as_f64() > b0["health_since_s"].as_f64(),
        "{b0}\n{b1}"
    );
    assert_eq!(b1["check"]["consecutive_failures"], 0);
    assert!(
        b1["last_check"]
            .as_str()
            .is_some_and(|t| t.contains("HTTP")),
        "{b1}"
    );

    // The text table, read back: one row per backend, columns aligned.
    let (code, text, err) = run(&lab, &["status"]);
    assert_eq!(code, 0, "{err}");
    let table: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("BACKEND"))
        .collect();
    assert_eq!(table.len(), 3, "{text}");
    let header = table[0];
    let end_of = |name: &str| header.find(name).unwrap() + name.len();
    for row in &table[1..] {
        // Right-aligned numeric columns end under their header's end.
        for col in ["WEIGHT", "FAILS", "ACTIVE", "NEW/S", "PKT/S"] {
            let end = end_of(col);
            assert!(
                row.as_bytes()[end - 1] != b' ' && row.as_bytes()[end] == b' ',
                "{col} misaligned in {row:?}\n{text}"
            );
        }
        let at = header.find("LAST CHECK").unwrap();
        assert!(row[at..].starts_with(|c: char| c != ' '), "{row:?}\n{text}");
    }
    let row1 = table[1..]
        .iter()
        .find(|r| r.trim_start().starts_with(&be1))
        .unwrap();
    let cells: Vec<&str> = row1.split_whitespace().collect();
    assert_eq!(&cells[1..4], ["1", "enabled", "up"], "{row1}");
    assert_eq!(cells[5], "passed", "{row1}");
    assert!(
        cells[8].parse::<u64>().unwrap() > 0,
        "active flows in {row1}"
    );

    // Metrics: the content type of what is written, and numbers that move.
    let (content_type, body) = scrape(&lab);
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    for l in body.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let name = l.split(' ').next().unwrap();
        assert!(
            body.lines()
                .any(|h| h.starts_with(&format!("# HELP {name} "))),
            "no HELP for {name}"
        );
    }
    let labels = format!("vip=\"web\",backend=\"{be1}\"");
    let passed = |body: &str| {
        sample(
            body,
            &format!("foobar_health_checks_total{{{labels},result=\"passed\"}}"),
        )
        .expect("a passed-checks sample")
    };
    assert!(sample(&body, &format!("foobar_backend_active_flows{{{labels}}}")) > Some(0.0));
    assert!(
        sample(
            &body,
            &format!("foobar_backend_new_flows_total{{{labels}}}")
        ) > Some(0.0)
    );
    let first = passed(&body);
    let count = sample(
        &body,
        &format!("foobar_health_check_duration_seconds_count{{{labels}}}"),
    );
    assert!(count >= Some(first), "{body}");
    std::thread::sleep(Duration::from_millis(3 * lab::HEALTH_INTERVAL_MS));
    let (_, later) = scrape(&lab);
    assert!(passed(&later) > first, "the passed checks counter moves");
    strict_openmetrics(&later);
    lab::finish_wrk(wrk).expect("wrk ran");
}

/// The Prometheus Python client's strict OpenMetrics parser, if installed
/// (python3-prometheus-client).
fn strict_openmetrics(body: &str) {
    use std::io::Write as _;
    let python = "/usr/bin/python3";
    let have = Command::new(python)
        .args(["-c", "import prometheus_client.openmetrics.parser"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        eprintln!("skipped the strict parse: python3-prometheus-client is not installed");
        return;
    }
    let mut child = Command::new(python)
        .args([
            "-c",
            "import sys\nfrom prometheus_client.openmetrics.parser import \
             text_string_to_metric_families as p\nlist(p(sys.stdin.read()))\n",
        ])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the served metrics are not valid OpenMetrics: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
