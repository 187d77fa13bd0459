//! VRRP against keepalived in the netns lab: foobar's vrrp task runs in
//! the LB node's namespace, keepalived (Debian's, its own config and pid
//! files) in the client's, on one bridge, same VRID and VIP. Both must
//! agree on the master in both directions, hand over on a graceful stop
//! within one advert interval, and never both hold the VIP once settled.
//! Needs root and keepalived; run under `flock -o /tmp/foobar-lab.lock`.
use std::{
    fs,
    net::Ipv4Addr,
    os::fd::AsFd as _,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use foobar::vrrp::{
    machine::State,
    task::{self, Spec, Status},
    track::Conditions,
};
use foobar_tests::lab::{wait_for, Lab, LabOptions, LB_IFACE};
use foobar_tests::ops::foobar as foobar_bin;
use tokio::sync::watch;

/// Not the lab's VIP: this test is about VRRP only.
const VVIP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 150);
const VRID: u8 = 51;

/// foobar's vrrp task on a thread inside namespace `ns`.
struct FoobarVrrp {
    stop: watch::Sender<bool>,
    status: watch::Receiver<Status>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

fn spec(priority: u8) -> Spec {
    Spec {
        iface: LB_IFACE.to_owned(),
        vrid: VRID,
        priority,
        advert_interval_cs: 100,
        preempt: true,
        preempt_delay: Duration::ZERO,
        vips: vec![VVIP],
        vip_names: vec!["ha".into()],
        track: Default::default(),
        unicast_peers: vec![],
        unicast_source: None,
        garp: Default::default(),
        use_vmac: false,
    }
}

impl FoobarVrrp {
    fn start(ns: &str, priority: u8) -> FoobarVrrp {
        FoobarVrrp::start_spec(ns, spec(priority))
    }

    fn start_spec(ns: &str, spec: Spec) -> FoobarVrrp {
        let (stop, stop_rx) = watch::channel(false);
        let (status_tx, status) = watch::channel(Status::new(&spec));
        let path = format!("/var/run/netns/{ns}");
        let thread = std::thread::spawn(move || -> Result<(), String> {
            let file = fs::File::open(&path).map_err(|e| format!("opening {path}: {e}"))?;
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("entering {path}: {e}"))?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            // No tracking: the conditions never change.
            let (_conditions, conditions_rx) = watch::channel(Conditions::default());
            rt.block_on(task::run(spec, stop_rx, conditions_rx, status_tx))
                .map_err(|e| e.to_string())
        });
        FoobarVrrp {
            stop,
            status,
            thread: Some(thread),
        }
    }

    fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// Graceful stop: priority 0 advert, VIPs removed.
    fn stop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            t.join()
                .expect("the vrrp thread does not panic")
                .expect("the vrrp task ends cleanly");
        }
    }
}

impl Drop for FoobarVrrp {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn keepalived_conf(priority: u8) -> String {
    format!(
        "global_defs {{
    router_id foobarlab
    vrrp_version 3
    enable_script_security
}}
vrrp_instance VI_{VRID} {{
    state BACKUP
    interface eth0
    virtual_router_id {VRID}
    priority {priority}
    advert_int 1
    virtual_ipaddress {{
        {VVIP}/32
    }}
}}
"
    )
}

fn start_keepalived(lab: &mut Lab, priority: u8) {
    let conf = lab.dir.join("keepalived.conf");
    fs::write(&conf, keepalived_conf(priority)).expect("writing keepalived.conf");
    start_keepalived_with(lab, &conf);
}

fn start_keepalived_with(lab: &mut Lab, conf: &std::path::Path) {
    let pid = |n: &str| lab.dir.join(n).to_string_lossy().into_owned();
    let (main_pid, vrrp_pid) = (pid("keepalived.pid"), pid("keepalived-vrrp.pid"));
    let conf = conf.to_string_lossy().into_owned();
    let ns = lab.client.ns.clone();
    lab.start_server(
        &ns,
        "keepalived",
        &[
            "keepalived",
            "--vrrp",
            "--dont-fork",
            "--log-console",
            "--log-detail",
            "--use-file",
            &conf,
            "--pid",
            &main_pid,
            "--vrrp_pid",
            &vrrp_pid,
        ],
    )
    .expect("keepalived starts (apt-get install keepalived)");
}

fn holds_vip(lab: &Lab, ns: &str) -> bool {
    lab.exec(ns, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"])
        .map(|out| out.contains(&format!("{VVIP}/32")))
        .unwrap_or(false)
}

fn keepalived_log(lab: &Lab) -> String {
    fs::read_to_string(lab.dir.join("keepalived.log")).unwrap_or_default()
}

/// Exactly one side holds the VIP for `span` (sampled every 50 ms).
fn stays(lab: &Lab, span: Duration, foobar_holds: bool) {
    let start = Instant::now();
    while start.elapsed() < span {
        let lb = holds_vip(lab, &lab.lb.ns);
        let kp = holds_vip(lab, &lab.client.ns);
        assert_eq!(
            (lb, kp),
            (foobar_holds, !foobar_holds),
            "after {:?}: foobar holds {lb}, keepalived holds {kp}\n{}",
            start.elapsed(),
            keepalived_log(lab)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn foobar_and_keepalived_elect_the_same_master_both_ways() {
    which_keepalived();
    let mut lab = Lab::start(&LabOptions {
        backends: 0,
        ..LabOptions::default()
    })
    .expect("lab starts");
    let lb_ns = lab.lb.ns.clone();
    let (lb_addr, kp_addr) = (lab.lb.addr, lab.client.addr);

    // 1. keepalived (100) is master alone; foobar (200) joins and preempts.
    start_keepalived(&mut lab, 100);
    wait_for("keepalived becomes master", Duration::from_secs(10), || {
        Ok(holds_vip(&lab, &lab.client.ns))
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", keepalived_log(&lab)));
    let mut foobar = FoobarVrrp::start(&lb_ns, 200);
    wait_for(
        "foobar (200) preempts keepalived (100)",
        Duration::from_secs(10),
        // The status is published after the actions, so a little after
        // the address is there.
        || {
            Ok(holds_vip(&lab, &lab.lb.ns)
                && !holds_vip(&lab, &lab.client.ns)
                && foobar.status().state == State::Master)
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{:?}\n{}", foobar.status(), keepalived_log(&lab)));
    let st = foobar.status();
    assert_eq!(st.state, State::Master);
    assert_eq!(st.master, Some(lb_addr));
    assert!(st.adverts_received > 0, "foobar heard keepalived: {st:?}");
    assert!(
        st.drops.is_empty(),
        "no advert of keepalived's was refused: {st:?}"
    );
    // Settled: keepalived accepts foobar's adverts and stays backup.
    stays(&lab, Duration::from_secs(4), true);
    assert!(
        keepalived_log(&lab).contains("Entering BACKUP STATE"),
        "keepalived says it is backup:\n{}",
        keepalived_log(&lab)
    );

    // 2. Graceful stop: foobar sends priority 0, keepalived takes over
    //    after its Skew_Time (609 ms at 100), within one advert interval.
    let stopped = Instant::now();
    foobar.stop();
    assert!(
        !holds_vip(&lab, &lab.lb.ns),
        "foobar removed the VIP on stop"
    );
    wait_for("keepalived takes over", Duration::from_secs(5), || {
        Ok(holds_vip(&lab, &lab.client.ns))
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", keepalived_log(&lab)));
    let gap = stopped.elapsed();
    eprintln!("graceful stop: keepalived held the VIP {gap:?} after foobar resigned");
    assert!(gap < Duration::from_secs(1), "takeover took {gap:?}");

    // 3. foobar back at 50: keepalived (100) stays master, foobar backup,
    //    knowing keepalived as master.
    let mut foobar = FoobarVrrp::start(&lb_ns, 50);
    stays(&lab, Duration::from_secs(5), false);
    // keepalived refused none of foobar's adverts (its own checks: TTL,
    // type, checksum over the pseudo-header, interval, address list).
    let log = keepalived_log(&lab);
    for refusal in [
        "TTL",
        "Invalid VRRPv3 checksum",
        "Invalid packet type",
        "advertisement interval mismatch",
        "ip address associated with VRID",
    ] {
        assert!(
            !log.contains(refusal),
            "keepalived logged {refusal:?}:\n{log}"
        );
    }
    let st = foobar.status();
    assert_eq!(st.state, State::Backup, "{st:?}");
    assert_eq!(st.master, Some(kp_addr), "{st:?}");

    // 4. keepalived stops gracefully: foobar takes over within one interval.
    let stopped = Instant::now();
    lab.stop_server("keepalived").expect("keepalived stops");
    wait_for("foobar takes over", Duration::from_secs(5), || {
        Ok(holds_vip(&lab, &lab.lb.ns) && foobar.status().state == State::Master)
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{:?}", foobar.status()));
    let gap = stopped.elapsed();
    eprintln!("keepalived stop: foobar held the VIP {gap:?} later");
    assert!(gap < Duration::from_secs(2), "takeover took {gap:?}");
    let st = foobar.status();
    assert_eq!(st.state, State::Master, "{st:?}");
    assert!(
        !holds_vip(&lab, &lab.client.ns),
        "keepalived removed the VIP on stop"
    );
    foobar.stop();
    assert!(!holds_vip(&lab, &lab.lb.ns));
}

/// The daemon itself: `[[vrrp]]` in its config, the XDP program attached
/// on the same interface (VRRP and gratuitous ARP must pass it untouched),
/// keepalived as the peer; SIGTERM resigns so keepalived takes over fast.
#[test]
fn the_daemon_runs_vrrp_from_its_config_and_resigns_on_sigterm() {
    which_keepalived();
    let mut lab = Lab::start(&LabOptions {
        backends: 1,
        ..LabOptions::default()
    })
    .expect("lab starts");
    start_keepalived(&mut lab, 100);
    wait_for("keepalived becomes master", Duration::from_secs(10), || {
        Ok(holds_vip(&lab, &lab.client.ns))
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", keepalived_log(&lab)));

    let config = format!(
        "{}\n[[vip]]\nname = \"ha\"\naddress = \"{VVIP}\"\nport = 80\nforwarding = \"dsr\"\n\
         [[vip.backend]]\naddress = \"{}\"\n\n\
         [[vrrp]]\nvrid = {VRID}\npriority = 200\nadvert_interval_ms = 1000\nvips = [\"ha\"]\n",
        lab.config(),
        lab.backends[0].addr
    );
    lab.start_foobar(&foobar_bin(), &config)
        .expect("foobar starts");
    wait_for(
        "the daemon (200) preempts keepalived (100)",
        Duration::from_secs(10),
        || Ok(holds_vip(&lab, &lab.lb.ns) && !holds_vip(&lab, &lab.client.ns)),
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", lab.foobar_log(), keepalived_log(&lab)));
    stays(&lab, Duration::from_secs(3), true);
    let st = foobar_tests::ops::status(&lab);
    let v = &st["vrrp"][0];
    assert_eq!(v["vrid"], VRID, "{st:#}");
    assert_eq!(v["state"], "master", "{st:#}");
    assert_eq!(v["priority"], 200, "{st:#}");
    assert_eq!(v["master"], lab.lb.addr.to_string(), "{st:#}");
    assert_eq!(v["last_transition"]["from"], "backup", "{st:#}");
    assert_eq!(
        v["last_transition"]["cause"],
        format!("preempted master {} of lower priority 100", lab.client.addr),
        "{st:#}"
    );
    assert!(v["adverts_received"].as_u64() > Some(0), "{st:#}");
    assert_eq!(v["adverts_dropped"], serde_json::json!({}), "{st:#}");
    let log = lab.foobar_log();
    assert!(
        log.contains("VRRP transition") && log.contains("to=\"master\""),
        "the transition is logged with its cause:\n{log}"
    );

    let pid = lab.foobar_pid().expect("foobar runs");
    let stopped = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM foobar");
    wait_for("keepalived takes over", Duration::from_secs(5), || {
        Ok(holds_vip(&lab, &lab.client.ns) && !holds_vip(&lab, &lab.lb.ns))
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", lab.foobar_log(), keepalived_log(&lab)));
    let gap = stopped.elapsed();
    eprintln!("daemon SIGTERM: keepalived held the VIP {gap:?} later");
    assert!(gap < Duration::from_secs(1), "takeover took {gap:?}");
    let (clean, _) = lab.stop_foobar().expect("foobar exits");
    assert!(clean, "foobar exits cleanly:\n{}", lab.foobar_log());
}

/// foobar against foobar: the daemon (200) on the LB node, the vrrp task
/// (100) in the client's namespace. kill -9 of the daemon: the peer takes
/// over within Master_Down_Interval (3 × 1 s + 609 ms) + 100 ms; the
/// daemon, started again, comes back as Backup, removes the address the
/// crash left, and preempts.
#[test]
fn a_crashed_master_is_replaced_in_time_and_preempts_on_return() {
    let mut lab = Lab::start(&LabOptions {
        backends: 1,
        ..LabOptions::default()
    })
    .expect("lab starts");
    let client_ns = lab.client.ns.clone();
    let peer = FoobarVrrp::start(&client_ns, 100);
    wait_for(
        "the peer becomes master alone",
        Duration::from_secs(10),
        || Ok(holds_vip(&lab, &lab.client.ns)),
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{:?}", peer.status()));
    let config = format!(
        "{}\n[[vip]]\nname = \"ha\"\naddress = \"{VVIP}\"\nport = 80\nforwarding = \"dsr\"\n\
         [[vip.backend]]\naddress = \"{}\"\n\n\
         [[vrrp]]\nvrid = {VRID}\npriority = 200\nvips = [\"ha\"]\n",
        lab.config(),
        lab.backends[0].addr
    );
    lab.start_foobar(&foobar_bin(), &config)
        .expect("foobar starts");
    wait_for("the daemon preempts", Duration::from_secs(10), || {
        Ok(holds_vip(&lab, &lab.lb.ns) && !holds_vip(&lab, &lab.client.ns))
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}\n{:?}", lab.foobar_log(), peer.status()));
    stays(&lab, Duration::from_secs(2), true);
    assert_eq!(peer.status().state, State::Backup);

    let killed = std::time::SystemTime::now();
    lab.kill_foobar().expect("kill -9 foobar");
    wait_for("the peer takes over", Duration::from_secs(10), || {
        Ok(peer.status().state == State::Master && holds_vip(&lab, &lab.client.ns))
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{:?}", peer.status()));
    let took = peer
        .status()
        .last_transition_time
        .expect("a transition time")
        .duration_since(killed)
        .expect("after the kill");
    eprintln!("kill -9: the peer became master {took:?} after the kill");
    let limit = Duration::from_millis(3_000 + 609 + 100);
    assert!(took <= limit, "takeover after {took:?}, limit {limit:?}");
    // The crashed node never resigned: its address is still there (and
    // harmless: the peer's gratuitous ARP moved the traffic).
    assert!(holds_vip(&lab, &lab.lb.ns));

    lab.start_foobar(&foobar_bin(), &config)
        .expect("foobar starts again");
    wait_for(
        "the returning daemon preempts",
        Duration::from_secs(10),
        || {
            Ok(holds_vip(&lab, &lab.lb.ns)
                && !holds_vip(&lab, &lab.client.ns)
                && peer.status().state == State::Backup)
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}\n{:?}", lab.foobar_log(), peer.status()));
    let log = lab.foobar_log();
    assert!(
        log.matches("cause=startup").count() == 2 && log.matches("preempted master").count() == 2,
        "both starts went through Backup and preempted the peer:\n{log}"
    );
    lab.stop_foobar().expect("foobar stops");
}

/// The daemon's `[[vip]]` "ha" on VVIP with the lab's backends, health
/// checked fast, and `extra` lines in its `[[vrrp]]` instance.
fn ha_config(lab: &Lab, vrrp: &str) -> String {
    let mut text = format!(
        "{}\n[[vip]]\nname = \"ha\"\naddress = \"{VVIP}\"\nport = 80\nforwarding = \"dsr\"\n\
         [vip.health]\ncheck = \"http\"\nhttp_path = \"/\"\ninterval_ms = 200\n\
         timeout_ms = 150\nrise = 2\nfall = 2\n",
        lab.config()
    );
    for b in &lab.backends {
        text.push_str(&format!("[[vip.backend]]\naddress = \"{}\"\n", b.addr));
    }
    text.push_str(&format!(
        "\n[[vrrp]]\nvrid = {VRID}\nvips = [\"ha\"]\n{vrrp}\n"
    ));
    text
}

/// Tracking: the daemon (200, track_no_backend = -100, track_detached =
/// -150) against a foobar peer (150). All backends of its VIP die: it
/// advertises 100 and the peer preempts; they come back: 200 again, and
/// it preempts in turn. Its XDP link is detached under it: 50, the peer
/// takes over.
#[test]
fn tracking_hands_the_vip_over_while_this_node_cannot_serve() {
    let mut lab = Lab::start(&LabOptions {
        backends: 2,
        ..LabOptions::default()
    })
    .expect("lab starts");
    let client_ns = lab.client.ns.clone();
    let peer = FoobarVrrp::start(&client_ns, 150);
    let config = ha_config(
        &lab,
        "priority = 200\ntrack_no_backend = -100\ntrack_detached = -150\n",
    );
    lab.start_foobar(&foobar_bin(), &config)
        .expect("foobar starts");
    let daemon_master = |lab: &Lab, peer: &FoobarVrrp| {
        holds_vip(lab, &lab.lb.ns)
            && !holds_vip(lab, &lab.client.ns)
            && peer.status().state == State::Backup
    };
    let peer_master = |lab: &Lab, peer: &FoobarVrrp| {
        !holds_vip(lab, &lab.lb.ns)
            && holds_vip(lab, &lab.client.ns)
            && peer.status().state == State::Master
    };
    wait_for(
        "the daemon (200) is master",
        Duration::from_secs(15),
        || Ok(daemon_master(&lab, &peer)),
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}\n{:?}", lab.foobar_log(), peer.status()));
    let v = foobar_tests::ops::status(&lab)["vrrp"][0].clone();
    assert_eq!(
        (v["priority"].as_u64(), v["configured_priority"].as_u64()),
        (Some(200), Some(200)),
        "{v:#}"
    );
    assert_eq!(v["tracking"], serde_json::json!([]), "{v:#}");

    // 1. Every backend of "ha" dies: 200 - 100 = 100 < 150.
    let names: Vec<String> = lab.backends.iter().map(|b| b.name.clone()).collect();
    let killed = Instant::now();
    for n in &names {
        lab.kill_backend(n).expect("kill a backend");
    }
    wait_for("the peer takes over", Duration::from_secs(15), || {
        Ok(peer_master(&lab, &peer))
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}\n{:?}", lab.foobar_log(), peer.status()));
    eprintln!(
        "no backend: the peer held the VIP {:?} after the kill",
        killed.elapsed()
    );
    let v = foobar_tests::ops::status(&lab)["vrrp"][0].clone();
    assert_eq!(v["state"], "backup", "{v:#}");
    assert_eq!(v["priority"], 100, "{v:#}");
    assert_eq!(v["configured_priority"], 200, "{v:#}");
    assert_eq!(v["master"], lab.client.addr.to_string(), "{v:#}");
    assert_eq!(
        v["tracking"],
        serde_json::json!(["no healthy backend for ha (-100)"]),
        "{v:#}"
    );
    // The operator sees it in `foobar status` and the metrics.
    let (ok, text, err) = foobar_tests::ops::cli(&lab, &["status"]);
    assert!(ok, "{err}");
    let row = text
        .lines()
        .find(|l| l.starts_with(&format!("{VRID} ")))
        .unwrap_or_else(|| panic!("no VRRP row:\n{text}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        &cols[..6],
        [
            "51",
            LB_IFACE,
            "backup",
            "100",
            "200",
            &lab.client.addr.to_string()
        ],
        "{text}"
    );
    assert!(
        text.contains("tracking: no healthy backend for ha (-100)"),
        "{text}"
    );
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
        .expect("metrics scrape");
    for want in [
        format!("foobar_vrrp_priority{{vrid=\"{VRID}\",interface=\"{LB_IFACE}\"}} 100"),
        format!("foobar_vrrp_state{{vrid=\"{VRID}\",interface=\"{LB_IFACE}\",state=\"backup\"}} 1"),
        format!("foobar_vrrp_state{{vrid=\"{VRID}\",interface=\"{LB_IFACE}\",state=\"master\"}} 0"),
    ] {
        assert!(metrics.contains(&want), "missing {want}:\n{metrics}");
    }
    // backup -> master -> backup at least.
    assert!(v["transitions"].as_u64() >= Some(2), "{v:#}");
    // The peer heard 100 (its cause names it) and stays master.
    let pst = peer.status();
    assert_eq!(
        pst.last_transition.map(|t| t.cause.to_string()),
        Some(format!(
            "preempted master {} of lower priority 100",
            lab.lb.addr
        )),
        "{pst:?}"
    );
    stays(&lab, Duration::from_secs(2), false);

    // 2. One backend back: 200 again, the daemon preempts.
    let back = Instant::now();
    lab.start_backend(&names[0]).expect("backend starts");
    wait_for(
        "the daemon takes the VIP back",
        Duration::from_secs(15),
        || Ok(daemon_master(&lab, &peer)),
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}\n{:?}", lab.foobar_log(), peer.status()));
    eprintln!(
        "backend back: the daemon held the VIP {:?} after nginx started",
        back.elapsed()
    );
    let v = foobar_tests::ops::status(&lab)["vrrp"][0].clone();
    assert_eq!(v["priority"], 200, "{v:#}");
    assert_eq!(v["tracking"], serde_json::json!([]), "{v:#}");
    assert_eq!(
        v["last_transition"]["cause"],
        format!("preempted master {} of lower priority 150", lab.client.addr),
        "{v:#}"
    );
    let log = lab.foobar_log();
    assert!(
        log.contains("VRRP priority lowered by tracking")
            && log.contains("VRRP priority raised by tracking"),
        "both priority changes are logged:\n{log}"
    );

    // 3. The XDP link detached under the running daemon: 200 - 150 = 50.
    let link = lab.pin_root.join(LB_IFACE).join("link");
    let out = std::process::Command::new("bpftool")
        .args(["link", "detach", "pinned"])
        .arg(&link)
        .output()
        .expect("bpftool runs");
    assert!(out.status.success(), "bpftool link detach: {out:?}");
    wait_for(
        "the peer takes over from a detached node",
        Duration::from_secs(15),
        || Ok(peer_master(&lab, &peer)),
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}\n{:?}", lab.foobar_log(), peer.status()));
    let v = foobar_tests::ops::status(&lab)["vrrp"][0].clone();
    assert_eq!(v["priority"], 50, "{v:#}");
    assert_eq!(
        v["tracking"],
        serde_json::json!(["the datapath is not attached (-150)"]),
        "{v:#}"
    );
    lab.stop_foobar().expect("foobar stops");
}

/// Every frame eth0 of namespace `ns` sees for `span` (an AF_PACKET socket
/// on a thread inside it), with when it arrived; bounded in time and count.
fn capture(ns: &str, span: Duration) -> JoinHandle<Vec<(Instant, Vec<u8>)>> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = fs::File::open(&path).expect("the namespace exists");
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("entering the namespace");
        let all = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain syscalls on a descriptor this thread owns and closes.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(all));
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            let name = std::ffi::CString::new(LB_IFACE).unwrap();
            let mut at: libc::sockaddr_ll = std::mem::zeroed();
            at.sll_family = libc::AF_PACKET as u16;
            at.sll_protocol = all;
            at.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
            let rc = libc::bind(
                fd,
                (&at as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            );
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 100_000,
            };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
            let start = Instant::now();
            let mut frames = Vec::new();
            let mut buf = [0u8; 2048];
            while start.elapsed() < span && frames.len() < 100_000 {
                let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
                if n > 0 {
                    frames.push((Instant::now(), buf[..n as usize].to_vec()));
                }
            }
            libc::close(fd);
            frames
        }
    })
}

/// An IPv4 VRRP packet to 224.0.0.18 in an Ethernet frame.
fn is_multicast_vrrp(frame: &[u8]) -> bool {
    frame.len() >= 34
        && frame[12..14] == [0x08, 0x00]
        && frame[23] == 112
        && frame[30..34] == [224, 0, 0, 18]
}

/// A gratuitous ARP for `vip` (sender and target address both the VIP).
fn is_garp_for(frame: &[u8], vip: Ipv4Addr) -> bool {
    frame.len() >= 42
        && frame[12..14] == [0x08, 0x06]
        && frame[28..32] == vip.octets()
        && frame[38..42] == vip.octets()
}

/// Gratuitous ARP as keepalived repeats it: a burst on becoming master, a
/// second burst `garp_master_delay` later, then refresh bursts; seen on
/// the wire from the client's namespace.
#[test]
fn a_new_master_repeats_its_gratuitous_arps_on_schedule() {
    let lab = Lab::start(&LabOptions {
        backends: 0,
        ..LabOptions::default()
    })
    .expect("lab starts");
    let watch = capture(&lab.client.ns, Duration::from_secs(4));
    let started = Instant::now();
    let node = FoobarVrrp::start_spec(
        &lab.lb.ns,
        Spec {
            // 100 ms adverts: alone, it is master after 3 x 100 + 61 ms.
            advert_interval_cs: 10,
            garp: foobar::vrrp::garp::Config {
                master_repeat: 3,
                master_delay: Duration::from_millis(1000),
                master_refresh: Duration::from_millis(1500),
                master_refresh_repeat: 1,
            },
            ..spec(100)
        },
    );
    let frames = watch.join().expect("capture thread");
    let st = node.status();
    assert_eq!(st.state, State::Master, "{st:?}");
    let garps: Vec<Instant> = frames
        .iter()
        .filter(|(_, f)| is_garp_for(f, VVIP) && f[6..12] == f[22..28])
        .map(|(at, _)| *at)
        .collect();
    // Bursts: frames less than 200 ms apart.
    let mut bursts: Vec<(Instant, usize)> = Vec::new();
    for at in garps {
        match bursts.last_mut() {
            Some((last, n)) if at.duration_since(*last) < Duration::from_millis(200) => *n += 1,
            _ => bursts.push((at, 1)),
        }
    }
    let shape: Vec<(u128, usize)> = bursts
        .iter()
        .map(|(at, n)| (at.duration_since(started).as_millis(), *n))
        .collect();
    eprintln!("gratuitous ARP bursts (ms after start, frames): {shape:?}");
    let sizes: Vec<usize> = bursts.iter().map(|(_, n)| *n).collect();
    assert_eq!(sizes, vec![3, 3, 1, 1], "{shape:?}");
    let gap = |i: usize| bursts[i + 1].0.duration_since(bursts[i].0);
    let near = |d: Duration, want_ms: u64| {
        d >= Duration::from_millis(want_ms - 100) && d <= Duration::from_millis(want_ms + 300)
    };
    assert!(near(gap(0), 1000), "second burst after {:?}", gap(0));
    assert!(near(gap(0) + gap(1), 1500), "first refresh {shape:?}");
    assert!(near(gap(2), 1500), "second refresh {shape:?}");
}

fn keepalived_unicast_conf(priority: u8, src: Ipv4Addr, peer: Ipv4Addr) -> String {
    keepalived_conf(priority).replace(
        "    advert_int 1\n",
        &format!("    advert_int 1\n    unicast_src_ip {src}\n    unicast_peer {{\n        {peer}\n    }}\n"),
    )
}

/// Unicast (`unicast_peers`): the daemon and keepalived (`unicast_peer`)
/// elect over unicast adverts only — nothing goes to 224.0.0.18 — the
/// daemon refuses a third node that is not its peer, and its priority 0
/// on SIGTERM reaches keepalived by unicast too.
#[test]
fn unicast_peers_interoperate_with_keepalived_and_refuse_strangers() {
    which_keepalived();
    let mut lab = Lab::start(&LabOptions {
        backends: 1,
        ..LabOptions::default()
    })
    .expect("lab starts");
    let (lb_addr, kp_addr) = (lab.lb.addr, lab.client.addr);
    let conf = lab.dir.join("keepalived.conf");
    fs::write(&conf, keepalived_unicast_conf(100, kp_addr, lb_addr)).unwrap();
    start_keepalived_with(&mut lab, &conf);
    wait_for("keepalived becomes master", Duration::from_secs(10), || {
        Ok(holds_vip(&lab, &lab.client.ns))
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", keepalived_log(&lab)));
    let config = ha_config(
        &lab,
        &format!(
            "priority = 200\nunicast_peers = [\"{kp_addr}\"]\nunicast_source = \"{lb_addr}\"\n"
        ),
    );
    lab.start_foobar(&foobar_bin(), &config)
        .expect("foobar starts");
    wait_for(
        "the daemon (200) preempts keepalived",
        Duration::from_secs(10),
        || Ok(holds_vip(&lab, &lab.lb.ns) && !holds_vip(&lab, &lab.client.ns)),
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", lab.foobar_log(), keepalived_log(&lab)));
    // Over 3 s: both sides settled, and not one advert to the group.
    let backend_ns = lab.backends[0].ns.clone();
    let watch = capture(&backend_ns, Duration::from_secs(3));
    stays(&lab, Duration::from_secs(3), true);
    let frames = watch.join().expect("capture thread");
    // The capture works: the daemon's health checks of this backend.
    assert!(frames.len() > 5, "the capture saw {} frames", frames.len());
    let multicast = frames.iter().filter(|(_, f)| is_multicast_vrrp(f)).count();
    assert_eq!(multicast, 0, "adverts went to 224.0.0.18 in unicast mode");
    assert!(
        keepalived_log(&lab).contains("Entering BACKUP STATE"),
        "{}",
        keepalived_log(&lab)
    );
    let v = foobar_tests::ops::status(&lab)["vrrp"][0].clone();
    assert_eq!(
        v["unicast_peers"],
        serde_json::json!([kp_addr.to_string()]),
        "{v:#}"
    );
    assert!(v["adverts_received"].as_u64() > Some(0), "{v:#}");
    assert_eq!(v["adverts_dropped"], serde_json::json!({}), "{v:#}");
    let log = keepalived_log(&lab);
    for refusal in [
        "Invalid VRRPv3 checksum",
        "not a unicast peer",
        "ip address associated with VRID",
    ] {
        assert!(
            !log.contains(refusal),
            "keepalived logged {refusal:?}:\n{log}"
        );
    }

    // A stranger (priority 250) sends the daemon unicast adverts: refused.
    let stranger = FoobarVrrp::start_spec(
        &backend_ns,
        Spec {
            unicast_peers: vec![lb_addr],
            ..spec(250)
        },
    );
    wait_for(
        "the stranger's adverts are refused",
        Duration::from_secs(10),
        || {
            let v = foobar_tests::ops::status(&lab)["vrrp"][0].clone();
            Ok(v["adverts_dropped"]["not_a_peer"].as_u64() >= Some(2))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}\n{:?}", lab.foobar_log(), stranger.status()));
    let v = foobar_tests::ops::status(&lab)["vrrp"][0].clone();
    assert_eq!(v["state"], "master", "a 250 stranger did not win: {v:#}");
    assert_eq!(v["master"], lb_addr.to_string(), "{v:#}");
    drop(stranger);

    let pid = lab.foobar_pid().expect("foobar runs");
    let stopped = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM foobar");
    wait_for("keepalived takes over", Duration::from_secs(5), || {
        Ok(holds_vip(&lab, &lab.client.ns) && !holds_vip(&lab, &lab.lb.ns))
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", lab.foobar_log(), keepalived_log(&lab)));
    let gap = stopped.elapsed();
    eprintln!("unicast, daemon SIGTERM: keepalived held the VIP {gap:?} later");
    assert!(gap < Duration::from_secs(1), "takeover took {gap:?}");
    lab.stop_foobar().expect("foobar exits");
}

fn which_keepalived() {
    let found = std::process::Command::new("keepalived")
        .arg("--version")
        .output()
        .is_ok();
    assert!(
        found,
        "keepalived is not installed: apt-get install keepalived"
    );
}

/// keepalived's `use_vmac` instance next to `keepalived_conf`'s.
fn keepalived_vmac_conf(priority: u8) -> String {
    keepalived_conf(priority).replacen("    advert_int 1\n", "    advert_int 1\n    use_vmac\n", 1)
}

/// Whether `ns` holds the VIP on the virtual MAC's macvlan (`vrrp.51`:
/// foobar names it as keepalived does).
fn holds_vip_on_vmac(lab: &Lab, ns: &str) -> bool {
    lab.exec(
        ns,
        &[
            "ip",
            "-4",
            "-o",
            "addr",
            "show",
            "dev",
            &format!("vrrp.{VRID}"),
        ],
    )
    .is_ok_and(|out| out.contains(&format!(" {VVIP}/32")))
}

/// A third host pings the VIP afresh; its neighbour entry for it.
fn resolve_from(lab: &Lab, ns: &str) -> String {
    let _ = lab.exec(ns, &["ip", "neigh", "flush", "to", &VVIP.to_string()]);
    lab.exec(ns, &["ping", "-c", "1", "-W", "2", &VVIP.to_string()])
        .unwrap_or_else(|e| panic!("ping of the VIP from {ns}: {e:#}"));
    lab.exec(ns, &["ip", "neigh", "show", &VVIP.to_string()])
        .unwrap_or_default()
}

/// foobar and keepalived, both with `use_vmac` on the same VRID: mastership
/// moves both ways, and a third host resolves the VIP to
/// 00:00:5e:00:01:33 whichever of them is master (each answers ARP from the
/// virtual MAC, neither from its physical one).
#[test]
fn use_vmac_interoperates_with_keepalived_use_vmac() {
    which_keepalived();
    let mut lab = Lab::start(&LabOptions {
        backends: 1,
        ..LabOptions::default()
    })
    .expect("lab starts");
    let lb_ns = lab.lb.ns.clone();
    let kp_ns = lab.client.ns.clone();
    let third = lab.backends[0].ns.clone();
    let vmac = format!("00:00:5e:00:01:{VRID:02x}");
    let conf = lab.dir.join("keepalived.conf");
    fs::write(&conf, keepalived_vmac_conf(100)).expect("writing keepalived.conf");
    start_keepalived_with(&mut lab, &conf);
    wait_for("keepalived becomes master", Duration::from_secs(10), || {
        Ok(holds_vip_on_vmac(&lab, &kp_ns))
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", keepalived_log(&lab)));
    let neigh = resolve_from(&lab, &third);
    assert!(
        neigh.contains(&vmac),
        "keepalived answers from the vmac: {neigh}"
    );

    // foobar (200) preempts: the VIP moves to its macvlan.
    let mut foobar = FoobarVrrp::start_spec(
        &lb_ns,
        Spec {
            use_vmac: true,
            ..spec(200)
        },
    );
    wait_for(
        "foobar preempts keepalived",
        Duration::from_secs(10),
        || {
            Ok(holds_vip_on_vmac(&lab, &lb_ns)
                && !holds_vip_on_vmac(&lab, &kp_ns)
                && foobar.status().state == State::Master)
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{:?}\n{}", foobar.status(), keepalived_log(&lab)));
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        holds_vip_on_vmac(&lab, &lb_ns) && !holds_vip_on_vmac(&lab, &kp_ns),
        "settled with foobar master\n{}",
        keepalived_log(&lab)
    );
    let st = foobar.status();
    assert!(
        st.drops.is_empty(),
        "no advert of keepalived's refused: {st:?}"
    );
    assert!(st.adverts_received > 0, "{st:?}");
    let neigh = resolve_from(&lab, &third);
    assert!(
        neigh.contains(&vmac),
        "foobar answers from the vmac: {neigh}"
    );

    // Graceful stop: keepalived takes over, the MAC stays.
    let stopped = Instant::now();
    foobar.stop();
    wait_for("keepalived takes over", Duration::from_secs(5), || {
        Ok(holds_vip_on_vmac(&lab, &kp_ns))
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", keepalived_log(&lab)));
    let gap = stopped.elapsed();
    eprintln!("use_vmac, graceful stop: keepalived held the VIP {gap:?} after foobar resigned");
    assert!(gap < Duration::from_secs(1), "takeover took {gap:?}");
    assert_eq!(
        lab.exec(
            &lb_ns,
            &["ip", "-o", "link", "show", "dev", &format!("vrrp.{VRID}")]
        )
        .unwrap_or_default(),
        "",
        "foobar deleted its macvlan"
    );
    let neigh = resolve_from(&lab, &third);
    assert!(neigh.contains(&vmac), "keepalived answers again: {neigh}");
}
