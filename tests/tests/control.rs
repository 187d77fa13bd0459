//! The control plane in the netns lab, as an operator lives it: health
//! checks under wrk load, drain / add / remove through the CLI, refusals of
//! bad input, runtime changes across a restart, the metrics endpoint.
//! Health checks in the lab run every 300 ms with fall 2 and rise 2.
//! Needs root; `cargo xtask test` runs it so.
use std::{
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use foobar_tests::lab::{self, Lab, LabOptions, HEALTH_INTERVAL_MS, VIP};
use foobar_tests::ops::{backend, cli, foobar, request, status, wait_until};
use serde_json::Value;

fn lab_running(backends_in_config: usize) -> Lab {
    let mut lab = Lab::start(&LabOptions::default()).expect("lab starts");
    let config = lab.config_with_backends(backends_in_config);
    lab.start_foobar(&foobar(), &config)
        .expect("foobar run attaches");
    lab
}

/// `n` new connections; who served each.
fn requests(lab: &Lab, n: usize) -> Vec<Result<String, String>> {
    (0..n).map(|_| request(&lab.client.ns)).collect()
}

/// One probe: when it started and ended (since the test's start), and
/// who served it.
type Probe = (Duration, Duration, Result<String, String>);

/// Probes the VIP with new connections from a thread until stopped.
struct Prober {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Probe>>,
}

impl Prober {
    fn start(client_ns: &str, start: Instant) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ns = client_ns.to_owned();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            // Bounded: at most 10 minutes of probes, whatever the test does.
            while !flag.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(600) {
                let began = start.elapsed();
                let result = request(&ns);
                seen.push((began, start.elapsed(), result));
                std::thread::sleep(Duration::from_millis(20));
            }
            seen
        });
        Prober { stop, thread }
    }

    fn finish(self) -> Vec<Probe> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("prober thread")
    }
}

#[test]
fn a_killed_backend_leaves_within_fall_intervals_and_returns_after_rise() {
    let mut lab = lab_running(3);
    let be2 = lab.backends[1].addr.to_string();
    // A starting backend's first success settles it, and status says so.
    wait_until(
        "every backend shows its first check",
        Duration::from_secs(5),
        || {
            status(&lab)["vips"][0]["backends"]
                .as_array()
                .is_some_and(|bs| bs.iter().all(|b| b["last_check"] != "not checked yet"))
        },
    );
    let wrk = lab.start_wrk(&format!("http://{VIP}/"), 8, 8).unwrap();
    std::thread::sleep(Duration::from_secs(1));

    let t0 = Instant::now();
    let prober = Prober::start(&lab.client.ns, t0);
    std::thread::sleep(Duration::from_millis(300));
    let killed_at = t0.elapsed();
    lab.kill_backend("be2").unwrap();

    // Out of rotation: `fall` failed checks, then at most one interval more.
    let interval = Duration::from_millis(HEALTH_INTERVAL_MS);
    let detected = wait_until("be2 marked down", Duration::from_secs(10), || {
        backend(&status(&lab), &be2).is_some_and(|b| b["health"] == "down")
    });
    let bound = interval * 2 + interval;
    // Slack for the status polling and for two busy cores.
    assert!(
        detected <= bound + Duration::from_millis(700),
        "down after {detected:?}, bound {bound:?}"
    );
    let s = status(&lab);
    let reason = backend(&s, &be2).unwrap()["last_check"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        reason.contains("connect to"),
        "the transition's reason is shown: {reason}"
    );
    let down_at = t0.elapsed();
    std::thread::sleep(Duration::from_secs(2));

    lab.start_backend("be2").unwrap();
    let restarted_at = t0.elapsed();
    let back = wait_until("be2 back up", Duration::from_secs(10), || {
        backend(&status(&lab), &be2).is_some_and(|b| b["health"] == "up")
    });
    // Slack as above; nginx's own start is in this figure too.
    assert!(
        back <= interval * 3 + Duration::from_millis(1500),
        "up after {back:?}"
    );
    eprintln!("be2 marked down {detected:?} after the kill, up {back:?} after the restart");
    std::thread::sleep(Duration::from_secs(1));
    let seen = prober.finish();
    let wrk = lab::finish_wrk(wrk).unwrap();
    assert!(wrk.requests > 0, "{}", wrk.text);

    // Failures only between the kill and the detection: none ends before
    // the kill, none starts after be2 was marked down.
    assert!(
        seen.iter().any(|(_, _, r)| r.is_err()),
        "the kill was noticed by clients"
    );
    for (began, ended, r) in seen.iter().filter(|(_, _, r)| r.is_err()) {
        assert!(
            *ended >= killed_at && *began <= down_at,
            "a request failed during {began:?}..{ended:?} (killed {killed_at:?}, down by {down_at:?}): {r:?}"
        );
    }
    let served_after = |from: Duration| {
        seen.iter()
            .filter(|(began, _, r)| *began > from && r.as_deref() == Ok("be2"))
            .count()
    };
    assert_eq!(
        seen.iter()
            .filter(|(began, _, r)| *began > down_at
                && *began < restarted_at
                && r.as_deref() == Ok("be2"))
            .count(),
        0,
        "no request reaches be2 while it is down"
    );
    assert!(
        served_after(restarted_at + back) > 0,
        "be2 serves again after rise"
    );
    let log = lab.foobar_log();
    assert!(
        log.contains("health changed") && log.contains("state=\"down\""),
        "{log}"
    );
}

#[test]
fn drain_under_load_fails_no_request_and_opens_no_new_connection() {
    let lab = lab_running(3);
    let be1 = lab.backends[0].addr.to_string();
    let wrk = lab.start_wrk(&format!("http://{VIP}/"), 12, 5).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let (ok, out, err) = cli(&lab, &["backend", "drain", "web", &be1]);
    assert!(ok, "{err}");
    assert_eq!(
        out.trim(),
        format!("backend {be1} of VIP web drained: no new flows")
    );

    let after = requests(&lab, 60);
    assert!(after.iter().all(|r| r.is_ok()), "{after:?}");
    assert!(
        !after.iter().any(|r| r.as_deref() == Ok("be1")),
        "a new connection reached the drained backend: {after:?}"
    );
    let wrk = lab::finish_wrk(wrk).unwrap();
    assert!(wrk.requests > 100, "{}", wrk.text);
    assert_eq!((wrk.socket_errors, wrk.non_2xx_3xx), (0, 0), "{}", wrk.text);

    let s = status(&lab);
    assert_eq!(backend(&s, &be1).unwrap()["admin"], "drained");
    let (ok, table, _) = cli(&lab, &["status"]);
    assert!(ok);
    assert!(
        table.contains("BACKEND") && table.contains(&be1) && table.contains("drained"),
        "{table}"
    );

    // Enabled again, it takes new connections.
    assert!(cli(&lab, &["backend", "enable", "web", &be1]).0);
    let again = requests(&lab, 9);
    assert!(again.iter().any(|r| r.as_deref() == Ok("be1")), "{again:?}");
}

#[test]
fn an_added_backend_takes_traffic_and_a_removed_one_gets_no_new_connection() {
    let lab = lab_running(2);
    let (be1, be3) = (
        lab.backends[0].addr.to_string(),
        lab.backends[2].addr.to_string(),
    );
    let before = requests(&lab, 12);
    assert!(
        !before.iter().any(|r| r.as_deref() == Ok("be3")),
        "{before:?}"
    );

    let (ok, out, err) = cli(&lab, &["backend", "add", "web", &be3, "--json"]);
    assert!(ok, "{err}");
    let added: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(added["backend"], be3.as_str());
    // Its MAC is resolved in the background: it takes traffic once known.
    let resolved = wait_until("be3 has a MAC", Duration::from_secs(2), || {
        backend(&status(&lab), &be3).is_some_and(|b| b["health"] == "up")
    });
    eprintln!("be3 up {resolved:?} after `backend add`");
    let after = requests(&lab, 12);
    // Each CPU walks the ring on its own, so the split is near, not exactly,
    // a third; the new backend clearly takes its share.
    let to_be3 = after.iter().filter(|r| r.as_deref() == Ok("be3")).count();
    assert!(
        (2..=6).contains(&to_be3),
        "be3 served {to_be3} of 12: {after:?}"
    );

    assert!(cli(&lab, &["backend", "remove", "web", &be1]).0);
    let later = requests(&lab, 12);
    assert!(later.iter().all(|r| r.is_ok()), "{later:?}");
    assert!(
        !later.iter().any(|r| r.as_deref() == Ok("be1")),
        "{later:?}"
    );
    let s = status(&lab);
    assert!(backend(&s, &be1).is_none());
    assert_eq!(
        s["removed_backends"][0]["address"],
        be1.as_str(),
        "kept for its flows: {s}"
    );

    // The metrics endpoint, on the LB node's loopback.
    let metrics = lab
        .exec(
            &lab.lb.ns,
            &[
                "curl",
                "-sS",
                "--max-time",
                "2",
                "http://127.0.0.1:9183/metrics",
            ],
        )
        .unwrap();
    for want in [
        format!("foobar_backend_up{{vip=\"web\",backend=\"{be3}\"}} 1"),
        format!("foobar_backend_enabled{{vip=\"web\",backend=\"{be3}\"}} 1"),
        "foobar_flow_table_capacity 65536".to_owned(),
    ] {
        assert!(
            metrics.lines().any(|l| l == want),
            "missing {want}:\n{metrics}"
        );
    }
    let forwarded = metrics
        .lines()
        .find_map(|l| l.strip_prefix("foobar_datapath_packets_total{reason=\"forwarded\"} "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        forwarded >= 36 * 4,
        "forwarded packets in metrics: {forwarded}"
    );
}

#[test]
fn bad_cli_input_fails_with_one_line_and_changes_nothing() {
    let lab = lab_running(2);
    let be1 = lab.backends[0].addr.to_string();
    let before = status(&lab);
    let one_line = |args: &[&str], want: &str| {
        let (ok, out, err) = cli(&lab, args);
        assert!(!ok, "{args:?} succeeded: {out}");
        assert_eq!(err.lines().count(), 1, "{args:?}: not one line: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    };
    one_line(&["backend", "drain", "nope", &be1], "no VIP named \"nope\"");
    // Bad values stop at the argument parser (exit 2), before any request:
    // the first line says what is wrong, clap adds a hint line.
    let usage = |args: &[&str], want: &str| {
        let out = lab.foobar_cli(&foobar(), args).expect("running foobar");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.lines().next().unwrap_or("").contains(want),
            "{args:?}: {err}"
        );
    };
    usage(
        &["backend", "add", "web", "10.201.0.300"],
        "\"10.201.0.300\" is not an IPv4 or IPv6 address",
    );
    one_line(&["backend", "add", "web", &be1], "already has backend");
    usage(
        &["backend", "weight", "web", &be1, "300"],
        "weight 300 is out of range",
    );
    usage(
        &[
            "vip",
            "add",
            "w2",
            "10.201.0.101",
            "80",
            "--scheduler",
            "lc",
        ],
        "is not a scheduler",
    );
    one_line(
        &["backend", "remove", "web", "10.201.0.99"],
        "has no backend 10.201.0.99",
    );
    one_line(
        &["vip", "add", "web", "10.201.0.101", "80"],
        "exists already",
    );
    one_line(
        &["vip", "add", "web2", &VIP.to_string(), "80"],
        "already served by VIP \"web\"",
    );
    // Health checks and rates move between two reads; compare the rest.
    let strip = |mut s: Value| {
        for b in s["vips"][0]["backends"].as_array_mut().unwrap() {
            for k in [
                "last_check",
                "check",
                "health_since_s",
                "packets",
                "bytes",
                "packets_per_s",
                "bytes_per_s",
            ] {
                b[k] = Value::Null;
            }
        }
        for k in ["packets_per_s", "bytes_per_s"] {
            s["vips"][0][k] = Value::Null;
        }
        s["flow_table"]["entries"] = Value::Null;
        s
    };
    assert_eq!(
        strip(status(&lab)),
        strip(before),
        "a refused request changed the state"
    );

    let out = Command::new(foobar())
        .args(["--socket", "/nonexistent/foobar.sock", "status"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot reach the foobar daemon") && err.contains("foobar run"),
        "{err}"
    );
}

#[test]
fn runtime_changes_survive_a_restart_until_the_config_changes() {
    let mut lab = lab_running(2);
    let (be1, be2, be3) = (
        lab.backends[0].addr.to_string(),
        lab.backends[1].addr.to_string(),
        lab.backends[2].addr.to_string(),
    );
    assert!(cli(&lab, &["backend", "add", "web", &be3]).0);
    assert!(cli(&lab, &["backend", "drain", "web", &be1]).0);
    assert!(cli(&lab, &["backend", "weight", "web", &be2, "3"]).0);
    // With no client traffic, the health checks alone forward nothing.
    let (ok, stats, _) = cli(&lab, &["stats", "--json"]);
    assert!(ok);
    let stats: Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(
        stats["reasons"]["forwarded"]["packets"], 0,
        "health checks took the VIP path: {stats}"
    );
    assert!(
        stats["reasons"]["pass_not_vip"]["packets"]
            .as_u64()
            .unwrap()
            > 0,
        "{stats}"
    );

    let (ok, _) = lab.stop_foobar().unwrap();
    assert!(ok);
    let config = lab.config_with_backends(2);
    lab.start_foobar(&foobar(), &config).unwrap();
    let s = status(&lab);
    assert_eq!(backend(&s, &be1).unwrap()["admin"], "drained");
    assert_eq!(backend(&s, &be2).unwrap()["weight"], 3);
    assert!(
        backend(&s, &be3).is_some(),
        "the added backend is back: {s}"
    );
    assert!(lab.foobar_log().contains("restoring runtime changes"));

    // An edited config wins; the earlier runtime state is kept aside.
    let (ok, _) = lab.stop_foobar().unwrap();
    assert!(ok);
    lab.start_foobar(&foobar(), &format!("{config}\n# edited\n"))
        .unwrap();
    let s = status(&lab);
    assert_eq!(backend(&s, &be1).unwrap()["admin"], "enabled");
    assert!(backend(&s, &be3).is_none());
    assert!(lab.dir.join("foobar.state.json.stale").exists());
}

/// This daemon's flow table, found by its (unique) size among the loaded
/// maps, as a handle of the test's own.
fn flow_table_of_size(
    capacity: u32,
) -> aya::maps::HashMap<aya::maps::MapData, foobar_common::FlowKey, foobar_common::Flow> {
    use std::os::fd::AsFd as _;
    let info = aya::maps::loaded_maps()
        .filter_map(Result::ok)
        .find(|m| m.name_as_str() == Some("FLOWS") && m.max_entries() == capacity)
        .expect("the daemon's FLOWS map is loaded");
    let fd = info.fd().unwrap().as_fd().try_clone_to_owned().unwrap();
    let data = aya::maps::MapData::from_fd(fd).unwrap();
    aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(data)).unwrap()
}

#[test]
fn status_and_health_keep_their_timing_while_the_daemon_walks_4m_flows() {
    use foobar_common::{Flow, FlowKey, AF_INET};
    // A prime near 4 Mi: no other loaded flow table has this size.
    const CAPACITY: u32 = 4_194_301;
    const FILLED: u32 = 4_000_000;
    let mut lab = Lab::start(&LabOptions::default()).expect("lab starts");
    let config = lab.config().replace(
        "[datapath]\n",
        &format!("[datapath]\nflow_table_size = {CAPACITY}\n"),
    );
    lab.start_foobar(&foobar(), &config).expect("foobar runs");
    let mut flows = flow_table_of_size(CAPACITY);
    let now = foobar::daemon::monotonic_ns();
    let t = Instant::now();
    for i in 0..FILLED {
        let key = FlowKey {
            src_be: i.to_be(),
            dst_be: u32::from(VIP).to_be(),
            sport_be: 40000u16.to_be(),
            dport_be: 80u16.to_be(),
            proto: 6,
            family: AF_INET,
            _pad: [0; 2],
        };
        let flow = Flow {
            backend_id: 3, // no backend has it: the flows only weigh on the walk
            vip_id: 0,
            last_seen_ns: now,
            flags: 0,
            backend_gen: 0,
            vip_gen: 0,
        };
        flows.insert(key, flow, 0).unwrap();
    }
    eprintln!("filled {FILLED} flows in {:?}", t.elapsed());

    // A walk counts them (one starts every 5 s); the gauge is exact.
    wait_until("a walk counted the flows", Duration::from_secs(30), || {
        status(&lab)["flow_table"]["entries"].as_u64() >= Some(u64::from(FILLED))
    });
    let s = status(&lab);
    assert_eq!(s["flow_table"]["entries"], FILLED, "{}", s["flow_table"]);
    let walk_ms = s["flow_table"]["walk_ms"].as_f64().unwrap();

    // Over two more walks: every status answers quickly, and a backend
    // that comes back does so on the health checks' timing.
    let be2 = lab.backends[1].addr.to_string();
    let t0 = Instant::now();
    let mut slowest = Duration::ZERO;
    lab.kill_backend("be2").unwrap();
    let mut down = None;
    let mut restarted = None;
    let mut back = None;
    while t0.elapsed() < Duration::from_secs(12) {
        let t = Instant::now();
        let s = status(&lab);
        slowest = slowest.max(t.elapsed());
        let health = backend(&s, &be2).unwrap()["health"].clone();
        if down.is_none() && health == "down" {
            down = Some(t0.elapsed());
            lab.start_backend("be2").unwrap();
            restarted = Some(t0.elapsed());
        } else if let (Some(r), None) = (restarted, back) {
            if health == "up" {
                back = Some(t0.elapsed() - r);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let interval = Duration::from_millis(HEALTH_INTERVAL_MS);
    eprintln!(
        "{FILLED} flows: walk {walk_ms:.0} ms; slowest status {slowest:?}; be2 down {down:?} \
         after the kill, up {back:?} after its restart"
    );
    assert!(
        slowest < Duration::from_millis(500),
        "a status waited {slowest:?}"
    );
    let down = down.expect("be2 went down");
    assert!(
        down <= interval * 3 + Duration::from_millis(700),
        "{down:?}"
    );
    let back = back.expect("be2 came back");
    assert!(
        back <= interval * 3 + Duration::from_millis(700),
        "{back:?}"
    );
}

/// An entry of an array map the daemon pinned, read through the pin.
fn pinned_array<V: aya::Pod>(lab: &Lab, map: &str, index: u32) -> V {
    let path = lab
        .pin_root
        .join(lab::LB_IFACE)
        .join(foobar::datapath::pin::layout_name())
        .join(map);
    let data =
        aya::maps::MapData::from_pin(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let array = aya::maps::Array::<_, V>::try_from(aya::maps::Map::Array(data)).unwrap();
    array.get(&index, 0).unwrap()
}

/// `foobar vip add --forwarding nat` and `backend add --port` at run time:
/// the node's NAT defaults (here the interface's primary address, as the
/// config sets no SNAT address) land in the datapath's NAT maps, plain
/// backends answer through the VIP, and the refusals say what to do.
#[test]
fn a_nat_vip_and_a_backend_port_are_added_at_run_time() {
    let mut lab = Lab::start(&LabOptions {
        backends: 1,
        plain_backends: true,
        ..LabOptions::default()
    })
    .expect("lab starts");
    let config = lab.config();
    lab.start_foobar(&foobar(), &config)
        .expect("foobar run attaches");
    // The client reaches the new VIP through the LB node, which holds it.
    let api_vip = "10.201.0.101";
    lab::run(&[
        "ip",
        "-n",
        &lab.lb.ns,
        "addr",
        "add",
        &format!("{api_vip}/32"),
        "dev",
        lab::LB_IFACE,
    ])
    .unwrap();
    let be = lab.backends[0].addr.to_string();

    let (ok, out, err) = cli(
        &lab,
        &[
            "vip",
            "add",
            "api",
            api_vip,
            "8080",
            "--forwarding",
            "nat",
            "--check",
            "none",
            "--json",
        ],
    );
    assert!(ok, "{err}");
    let vip_id = serde_json::from_str::<Value>(&out).unwrap()["id"]
        .as_u64()
        .unwrap() as u32;
    let (ok, out, err) = cli(
        &lab,
        &["backend", "add", "api", &be, "--port", "80", "--json"],
    );
    assert!(ok, "{err}");
    let be_id = serde_json::from_str::<Value>(&out).unwrap()["id"]
        .as_u64()
        .unwrap() as u32;

    let s = status(&lab);
    let api = s["vips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "api")
        .unwrap();
    assert_eq!(api["forwarding"], "nat", "{api}");
    assert_eq!(
        api["snat_address"],
        lab.lb.addr.to_string(),
        "the primary address: {api}"
    );
    assert_eq!(api["backends"][0]["port"], 80, "{api}");

    // The datapath's NAT maps hold the node's defaults.
    let nat: foobar_common::NatVip = pinned_array(&lab, "NAT_VIPS", vip_id);
    assert_eq!(nat.snat_addr_be, u32::from(lab.lb.addr).to_be());
    assert_eq!((nat.port_min, nat.port_max), (1024, 32767));
    assert_eq!((nat.tcp_idle_s, nat.udp_idle_s, nat.linger_s), (300, 30, 2));
    let port: u16 = pinned_array(&lab, "NAT_BACKEND_PORTS", be_id);
    assert_eq!(u16::from_be(port), 80);

    // A plain backend answers on its port 80 for the VIP's 8080.
    let body = lab
        .exec(
            &lab.client.ns,
            &[
                "curl",
                "-sS",
                "--max-time",
                "5",
                &format!("http://{api_vip}:8080/"),
            ],
        )
        .unwrap();
    assert_eq!(body.trim(), lab.backends[0].name, "served through NAT");

    // Refusals, each saying what to do; nothing changes.
    let (ok, _, err) = cli(
        &lab,
        &[
            "vip",
            "add",
            "api2",
            "10.201.0.102",
            "80",
            "--forwarding",
            "nat",
            "--snat-address",
            "10.201.0.77",
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("`ip addr add 10.201.0.77/24 dev eth0`"),
        "{err}"
    );
    let (ok, _, err) = cli(
        &lab,
        &[
            "vip",
            "add",
            "api3",
            "10.201.0.103",
            "80",
            "--snat-address",
            "10.201.0.2",
            "--forwarding",
            "dsr",
        ],
    );
    assert!(!ok);
    assert!(err.contains("only a VIP with forwarding nat"), "{err}");
    let (ok, _, err) = cli(&lab, &["backend", "add", "web", &be, "--port", "8080"]);
    assert!(!ok);
    assert!(err.contains("a backend port needs forwarding nat"), "{err}");
    let names: Vec<String> = status(&lab)["vips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["web", "api"]);
}
