//! `use_vmac`: the VIP held under the VRRP virtual MAC 00:00:5e:00:01:VRID.
//!
//! - Under BPF_PROG_TEST_RUN: the XDP program serves frames addressed to
//!   the virtual MAC of each VRID it was loaded with, as it serves its own
//!   MAC, and passes every other virtual MAC as not for it.
//! - In the two-LB lab (DSR, maglev, same seed): the client resolves the
//!   VIP to the virtual MAC, the master's XDP program forwards its traffic,
//!   the node answers ping for the VIP itself, and across a SIGTERM of the
//!   master the client's entry keeps the same MAC while the traffic moves
//!   to the new master.
//!
//! Needs root (BPF, namespaces), nginx, curl; run the lab test under
//! `flock -o /tmp/foobar-lab.lock`.
use std::{
    collections::HashMap,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use foobar::{
    config,
    datapath::{Datapath, LoadOptions},
    state::{self, State},
};
use foobar_common::Reason;
use foobar_tests::{
    failover::{self, time_until, Vrrp, VRID},
    frames::Spec,
    lab::{Lab, LabOptions, Node, LB_IFACE, VIP},
    ops::foobar as foobar_bin,
};
use serde_json::Value;

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

fn vmac(vrid: u8) -> [u8; 6] {
    [0x00, 0x00, 0x5e, 0x00, 0x01, vrid]
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

const CONFIG: &str = r#"
    [[vip]]
    name = "web"
    address = "192.0.2.10"
    port = 80
    forwarding = "dsr"
    [[vip.backend]]
    address = "10.0.0.11"
"#;

const BACKEND_MAC: [u8; 6] = [0x02, 0xbe, 0, 0, 0, 11];

fn datapath(vmac_vrids: Vec<u8>) -> Datapath {
    let config = config::parse(CONFIG).expect("test config is valid");
    let macs: HashMap<std::net::IpAddr, [u8; 6]> =
        [(Ipv4Addr::new(10, 0, 0, 11).into(), BACKEND_MAC)].into();
    let st = State::build(&state::saved_from_config(&config), &macs).expect("the backend's MAC");
    let mut dp = Datapath::load(&LoadOptions {
        lb_mac: Spec::default().dst_mac,
        vmac_vrids,
        ..LoadOptions::default()
    })
    .expect("loading the XDP program (are you root?)");
    dp.apply(&st.plan()).expect("programming the maps");
    dp
}

#[test]
fn the_program_serves_the_virtual_macs_it_was_loaded_with_and_no_other() {
    let mut dp = datapath(vec![51, 200]);
    let lb_mac = Spec::default().dst_mac;
    let to = |dst_mac: [u8; 6]| {
        Spec {
            dst_mac,
            ..Spec::default()
        }
        .build()
    };
    let served = [lb_mac, vmac(51), vmac(200)];
    for dst in served {
        let input = to(dst);
        let (action, out) = dp.test_run(&input).expect("BPF_PROG_TEST_RUN");
        assert_eq!(action, XDP_TX, "to {}: forwarded", mac_text(dst));
        // DSR: to the backend, from the interface's own MAC (switches keep
        // learning the virtual MAC from the adverts only).
        assert_eq!(&out[..6], &BACKEND_MAC, "to {}", mac_text(dst));
        assert_eq!(&out[6..12], &lb_mac, "to {}", mac_text(dst));
        assert_eq!(
            &out[12..],
            &input[12..],
            "to {}: the rest as sent",
            mac_text(dst)
        );
    }
    // Another VRID's virtual MAC, the IPv6 one of a served VRID
    // (00:00:5e:00:02:VRID), a neighbour of the bitmap's words: not ours.
    let others = [
        vmac(52),
        vmac(50),
        vmac(1),
        vmac(255),
        [0x00, 0x00, 0x5e, 0x00, 0x02, 51],
        [0x00, 0x00, 0x5e, 0x01, 0x01, 51],
    ];
    for dst in others {
        let input = to(dst);
        let (action, out) = dp.test_run(&input).expect("BPF_PROG_TEST_RUN");
        assert_eq!(action, XDP_PASS, "to {}: passed", mac_text(dst));
        assert_eq!(out, input, "to {}: untouched", mac_text(dst));
    }
    let stats = dp.stats(1, 1).unwrap();
    assert_eq!(stats.reason(Reason::Forwarded).packets, served.len() as u64);
    assert_eq!(stats.reason(Reason::NotForUs).packets, others.len() as u64);

    // Loaded without virtual MACs: 51's is not served.
    let mut dp = datapath(vec![]);
    let input = to(vmac(51));
    let (action, _) = dp.test_run(&input).expect("BPF_PROG_TEST_RUN");
    assert_eq!(action, XDP_PASS);
}

const MASTER: u8 = 200;
const BACKUP: u8 = 100;
const ADVERT_MS: u64 = 200;

fn config_of(lab: &Lab, node: Node, priority: u8) -> String {
    let v = Vrrp {
        priority,
        advert_ms: ADVERT_MS,
        preempt: true,
    };
    // The [[vrrp]] table is the config's last: its keys follow.
    failover::config(lab, node, "maglev", Some(v)) + "use_vmac = true\ngarp_master_delay_ms = 0\n"
}

/// The macvlan foobar makes for VRID 51.
fn macvlan() -> String {
    format!("vrrp.{VRID}")
}

/// Whether `ns` holds the VIP on `dev`.
fn holds_on(lab: &Lab, ns: &str, dev: &str) -> bool {
    lab.exec(ns, &["ip", "-4", "-o", "addr", "show", "dev", dev])
        .is_ok_and(|out| out.contains(&format!(" {VIP}/32")))
}

/// `net.ipv4.conf.eth0.KEY` in `ns`.
fn sysctl(lab: &Lab, ns: &str, key: &str) -> String {
    lab.exec(
        ns,
        &["sysctl", "-n", &format!("net.ipv4.conf.{LB_IFACE}.{key}")],
    )
    .unwrap_or_default()
    .trim()
    .to_owned()
}

/// `ip -o link show dev` of the macvlan in `ns` (empty: no such link).
fn macvlan_link(lab: &Lab, ns: &str) -> String {
    lab.exec(ns, &["ip", "-o", "link", "show", "dev", &macvlan()])
        .unwrap_or_default()
}

fn forwarded(lab: &Lab, node: Node) -> u64 {
    let out = lab
        .foobar_cli_on(node, &foobar_bin(), &["stats", "--json"])
        .expect("running foobar stats");
    assert!(
        out.status.success(),
        "foobar stats on {node:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: Value = serde_json::from_slice(&out.stdout).expect("stats are JSON");
    stats["reasons"]["forwarded"]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no forwarded counter in {stats}"))
}

fn client_neighbour(lab: &Lab) -> String {
    lab.exec(
        &lab.client.ns,
        &["ip", "neigh", "show", &VIP.to_string(), "dev", "eth0"],
    )
    .unwrap_or_default()
}

/// `n` requests to the VIP, each answered.
fn requests(lab: &Lab, n: usize) {
    for i in 0..n {
        let body = lab
            .curl(&format!("http://{VIP}/"))
            .unwrap_or_else(|e| panic!("request {i} to the VIP: {e:#}\n{}", lab.foobar_log()));
        assert!(!body.is_empty(), "request {i}: an empty answer");
    }
}

fn logs(lab: &Lab) -> String {
    format!(
        "lb:\n{}\nlb2:\n{}",
        lab.foobar_log_of(Node::Lb1),
        lab.foobar_log_of(Node::Lb2)
    )
}

/// The two-LB lab with lb master and lb2 backup, both `use_vmac`; lb2's
/// macvlan checked down and without the VIP, lb's interface without it.
fn two_nodes() -> Lab {
    let mut lab = Lab::start(&LabOptions {
        backends: 2,
        second_lb: true,
        ..LabOptions::default()
    })
    .expect("lab starts");
    let lb2_ns = lab.node(Node::Lb2).unwrap().ns.clone();
    let lb_ns = lab.lb.ns.clone();
    let conf = config_of(&lab, Node::Lb1, MASTER);
    lab.start_foobar_on(Node::Lb1, &foobar_bin(), &conf)
        .expect("foobar starts on lb");
    let limit = failover::master_down(MASTER, ADVERT_MS) * 2 + Duration::from_secs(2);
    time_until(limit, || holds_on(&lab, &lb_ns, &macvlan()))
        .unwrap_or_else(|| panic!("lb holds the VIP on {}\n{}", macvlan(), logs(&lab)));
    let conf = config_of(&lab, Node::Lb2, BACKUP);
    lab.start_foobar_on(Node::Lb2, &foobar_bin(), &conf)
        .expect("foobar starts on lb2");
    // lb2 hears lb and stays backup: its macvlan exists, down, no VIP.
    std::thread::sleep(failover::master_down(BACKUP, ADVERT_MS));
    let link = macvlan_link(&lab, &lb2_ns);
    assert!(
        link.contains(&mac_text(vmac(VRID))) && !link.contains(",UP"),
        "lb2's macvlan: {link}\n{}",
        logs(&lab)
    );
    assert!(!holds_on(&lab, &lb2_ns, &macvlan()), "{}", logs(&lab));
    assert!(
        !holds_on(&lab, &lb_ns, LB_IFACE),
        "the VIP is on the macvlan, not the interface"
    );
    lab
}

#[test]
fn the_client_keeps_the_virtual_mac_across_a_failover_while_traffic_moves() {
    let mut lab = two_nodes();
    let lb2_ns = lab.node(Node::Lb2).unwrap().ns.clone();
    let lb_ns = lab.lb.ns.clone();
    let lb_mac = lab.mac(&lab.lb, LB_IFACE).unwrap();
    let lb2_mac = lab.mac(lab.node(Node::Lb2).unwrap(), LB_IFACE).unwrap();

    // The client resolves the VIP afresh: the answer is the virtual MAC.
    let _ = lab.exec(
        &lab.client.ns,
        &["ip", "neigh", "flush", "to", &VIP.to_string()],
    );
    let (lb_before, lb2_before) = (forwarded(&lab, Node::Lb1), forwarded(&lab, Node::Lb2));
    const N: usize = 10;
    requests(&lab, N);
    let neigh = client_neighbour(&lab);
    assert!(
        neigh.contains(&mac_text(vmac(VRID))),
        "the client's entry for the VIP is the virtual MAC: {neigh}"
    );
    let (lb_after, lb2_after) = (forwarded(&lab, Node::Lb1), forwarded(&lab, Node::Lb2));
    eprintln!(
        "before the failover: lb forwarded {}, lb2 {}",
        lb_after - lb_before,
        lb2_after - lb2_before
    );
    // Each request is at least SYN, ACK with the request, FIN's ACK.
    assert!(
        lb_after - lb_before >= 3 * N as u64,
        "the master's XDP program forwarded the traffic: {lb_before} -> {lb_after}"
    );
    assert_eq!(lb2_after, lb2_before, "nothing went through the backup");
    // The node itself answers for the VIP (ICMP is not the VIP's: passed to
    // the kernel, delivered on the macvlan).
    lab.exec(
        &lab.client.ns,
        &["ping", "-c", "1", "-W", "2", &VIP.to_string()],
    )
    .unwrap_or_else(|e| panic!("ping of the VIP: {e:#}"));

    // The interface answers ARP only for its own addresses and never
    // names a VIP as its ARP sender while the instance runs.
    assert_eq!(
        (
            sysctl(&lab, &lb_ns, "arp_ignore"),
            sysctl(&lab, &lb_ns, "arp_announce")
        ),
        ("1".to_owned(), "2".to_owned())
    );

    // SIGTERM: lb resigns (priority 0), lb2 takes over within an advert.
    let pid = lab.foobar_pid_on(Node::Lb1).expect("foobar runs on lb");
    let stopped = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM foobar on lb");
    let mut seen = std::collections::BTreeSet::new();
    let took = time_until(Duration::from_secs(5), || {
        seen.insert(client_neighbour(&lab));
        holds_on(&lab, &lb2_ns, &macvlan())
    })
    .unwrap_or_else(|| panic!("lb2 takes the VIP\n{}", logs(&lab)));
    eprintln!("SIGTERM: lb2 held the VIP on its macvlan {took:?} later");
    let (clean, _) = lab.stop_foobar_on(Node::Lb1).expect("foobar on lb exits");
    assert!(clean, "{}", logs(&lab));
    assert_eq!(
        macvlan_link(&lab, &lb_ns),
        "",
        "lb deleted its macvlan on the way out ({:?} after SIGTERM)",
        stopped.elapsed()
    );
    assert_eq!(
        (
            sysctl(&lab, &lb_ns, "arp_ignore"),
            sysctl(&lab, &lb_ns, "arp_announce")
        ),
        ("0".to_owned(), "0".to_owned()),
        "lb put the interface's sysctls back"
    );
    let lb2_before = forwarded(&lab, Node::Lb2);
    requests(&lab, N);
    seen.insert(client_neighbour(&lab));
    let lb2_after = forwarded(&lab, Node::Lb2);
    eprintln!(
        "after the failover: lb2 forwarded {}",
        lb2_after - lb2_before
    );
    assert!(
        lb2_after - lb2_before >= 3 * N as u64,
        "the new master's XDP program forwarded the traffic: {lb2_before} -> {lb2_after}"
    );
    // The entry never named a physical MAC: the same virtual MAC all along.
    for n in &seen {
        assert!(
            !n.contains(&mac_text(lb_mac)) && !n.contains(&mac_text(lb2_mac)),
            "the client's entry named a physical MAC: {seen:?}"
        );
    }
    let neigh = client_neighbour(&lab);
    assert!(
        neigh.contains(&mac_text(vmac(VRID))),
        "the client's entry is still the virtual MAC: {neigh} (seen: {seen:?})"
    );
    let st = lab
        .foobar_cli_on(Node::Lb2, &foobar_bin(), &["status", "--json"])
        .expect("foobar status");
    let st: Value = serde_json::from_slice(&st.stdout).expect("status is JSON");
    assert_eq!(st["vrrp"][0]["state"], "master", "{st:#}");
}

/// kill -9 of the master: its macvlan stays (nothing removed it), lb2
/// takes over after Master_Down_Interval. foobar started again on lb
/// takes the macvlan over (down, as a backup), then preempts lb2 (higher
/// priority): the VIP and the traffic come back to lb under the same MAC.
#[test]
fn a_restarted_master_takes_its_macvlan_over_and_preempts_under_the_same_mac() {
    let mut lab = two_nodes();
    let lb2_ns = lab.node(Node::Lb2).unwrap().ns.clone();
    let lb_ns = lab.lb.ns.clone();
    requests(&lab, 2);
    lab.kill_foobar_on(Node::Lb1).expect("kill -9 foobar on lb");
    let limit = failover::master_down(BACKUP, ADVERT_MS) + Duration::from_secs(1);
    time_until(limit, || holds_on(&lab, &lb2_ns, &macvlan()))
        .unwrap_or_else(|| panic!("lb2 takes the VIP\n{}", logs(&lab)));
    let left = macvlan_link(&lab, &lb_ns);
    assert!(
        left.contains(",UP") && holds_on(&lab, &lb_ns, &macvlan()),
        "the crashed node's macvlan stays up with the VIP: {left}"
    );

    let conf = config_of(&lab, Node::Lb1, MASTER);
    lab.start_foobar_on(Node::Lb1, &foobar_bin(), &conf)
        .expect("foobar starts again on lb");
    assert!(
        lab.foobar_log_of(Node::Lb1)
            .contains("taking over the macvlan an earlier run left"),
        "{}",
        logs(&lab)
    );
    let limit = failover::master_down(MASTER, ADVERT_MS) * 2 + Duration::from_secs(2);
    time_until(limit, || {
        holds_on(&lab, &lb_ns, &macvlan()) && !holds_on(&lab, &lb2_ns, &macvlan())
    })
    .unwrap_or_else(|| panic!("lb preempts lb2\n{}", logs(&lab)));
    let link = macvlan_link(&lab, &lb2_ns);
    assert!(!link.contains(",UP"), "lb2's macvlan is down again: {link}");

    let (lb_before, lb2_before) = (forwarded(&lab, Node::Lb1), forwarded(&lab, Node::Lb2));
    const N: usize = 10;
    requests(&lab, N);
    let (lb_after, lb2_after) = (forwarded(&lab, Node::Lb1), forwarded(&lab, Node::Lb2));
    eprintln!(
        "after the preemption: lb forwarded {}, lb2 {}",
        lb_after - lb_before,
        lb2_after - lb2_before
    );
    assert!(
        lb_after - lb_before >= 3 * N as u64,
        "lb's program forwards again: {lb_before} -> {lb_after}"
    );
    assert_eq!(lb2_after, lb2_before, "nothing through lb2 any more");
    let neigh = client_neighbour(&lab);
    assert!(
        neigh.contains(&mac_text(vmac(VRID))),
        "the client's entry is the virtual MAC: {neigh}"
    );
}
