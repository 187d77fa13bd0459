//! Schedulers in the XDP program under BPF_PROG_TEST_RUN: Maglev agreement
//! between independently loaded nodes, atomic ring updates under traffic,
//! flow persistence across backend changes, source affinity, and the
//! active-flow counts "wlc" weighs by. Needs root (`cargo xtask test`).
use std::{collections::HashMap, net::Ipv4Addr, time::Duration};

use foobar::{
    config,
    datapath::{Datapath, LoadOptions},
    maglev,
    state::{self, Admin, BackendSpec, State},
};
use foobar_common::{flow_hash, FlowKey, AF_INET, IPPROTO_TCP};
use foobar_tests::frames::{dst_mac, Spec};

const XDP_TX: u32 = 3;

fn mac_of(addr: std::net::IpAddr) -> [u8; 6] {
    let std::net::IpAddr::V4(addr) = addr else {
        panic!("IPv4 backends only")
    };
    let o = addr.octets();
    [0x02, 0xbe, o[0], o[1], o[2], o[3]]
}

fn addr_of(mac: [u8; 6]) -> Ipv4Addr {
    Ipv4Addr::new(mac[2], mac[3], mac[4], mac[5])
}

fn pin_to_one_cpu() {
    let mut set = nix::sched::CpuSet::new();
    set.set(0).expect("cpu 0");
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).expect("pinning");
}

/// A VIP 192.0.2.10:80 with `backends` (10.0.0.x) in the given order.
fn config_text(scheduler: &str, backends: &[u8], extra: &str) -> String {
    let mut t = format!(
        "[[vip]]\nname = \"web\"\naddress = \"192.0.2.10\"\nport = 80\nforwarding = \"dsr\"\nscheduler = \"{scheduler}\"\n{extra}\n"
    );
    for b in backends {
        t.push_str(&format!("[[vip.backend]]\naddress = \"10.0.0.{b}\"\n"));
    }
    t
}

/// Loads a datapath and programs it from the config's state.
fn node(text: &str, seed: u32) -> (Datapath, State) {
    let config = config::parse(text).expect("valid test config");
    let saved = state::saved_from_config(&config);
    let macs: HashMap<std::net::IpAddr, [u8; 6]> = saved
        .iter()
        .flat_map(|v| v.backends.iter().map(|b| (b.address, mac_of(b.address))))
        .collect();
    let st = State::build(&saved, &macs).expect("state builds");
    let mut dp = Datapath::load(&LoadOptions {
        lb_mac: Spec::default().dst_mac,
        affinity_table_size: 4096,
        hash_seed: seed,
        ..LoadOptions::default()
    })
    .expect("loading the XDP program (root?)");
    dp.apply(&st.plan()).expect("programming the maps");
    (dp, st)
}

fn flow(i: u32) -> Spec {
    Spec {
        src: (Ipv4Addr::from(0xc633_6400u32) | Ipv4Addr::from(i >> 16)).octets(),
        sport: 1024 + (i & 0xffff) as u16 % 60000,
        ..Spec::default()
    }
}

fn backend_for(dp: &mut Datapath, spec: &Spec) -> Ipv4Addr {
    let (action, out) = dp.test_run(&spec.build()).expect("BPF_PROG_TEST_RUN");
    assert_eq!(
        action,
        XDP_TX,
        "flow {}:{} not forwarded",
        Ipv4Addr::from(spec.src),
        spec.sport
    );
    addr_of(dst_mac(&out))
}

#[test]
fn two_independently_loaded_nodes_agree_on_10000_flows() {
    let backends: Vec<u8> = (11..=20).collect();
    let mut reversed = backends.clone();
    reversed.reverse();
    // Different config order, so different node-local backend ids.
    let (mut a, _) = node(&config_text("maglev", &backends, ""), 42);
    let (mut b, _) = node(&config_text("maglev", &reversed, ""), 42);
    let (mut other_seed, _) = node(&config_text("maglev", &backends, ""), 43);
    let mut differ_with_other_seed = 0;
    for i in 0..10_000 {
        let f = flow(i);
        let on_a = backend_for(&mut a, &f);
        assert_eq!(
            on_a,
            backend_for(&mut b, &f),
            "flow {i}: the nodes disagree"
        );
        if backend_for(&mut other_seed, &f) != on_a {
            differ_with_other_seed += 1;
        }
    }
    // Sanity: the seed is really part of the hash (a fleet must share it).
    assert!(differ_with_other_seed > 5_000, "{differ_with_other_seed}");
}

#[test]
fn the_datapath_picks_what_the_table_and_the_hash_say() {
    let backends: Vec<u8> = (11..=17).collect();
    let (mut dp, st) = node(
        &config_text("maglev", &backends, "maglev_table_size = 4099"),
        7,
    );
    let members: Vec<maglev::Member> = st.vips()[0]
        .backends
        .iter()
        .map(|b| maglev::Member {
            id: b.id,
            weight: b.spec.weight,
            address: b.spec.address,
        })
        .collect();
    let table = maglev::table(&members, 4099);
    let by_id: HashMap<u32, std::net::IpAddr> = members.iter().map(|m| (m.id, m.address)).collect();
    for i in 0..2_000 {
        let f = flow(i);
        let key = FlowKey {
            src_be: u32::from_ne_bytes(f.src),
            dst_be: u32::from_ne_bytes(f.dst),
            sport_be: f.sport.to_be(),
            dport_be: f.dport.to_be(),
            proto: IPPROTO_TCP,
            family: AF_INET,
            _pad: [0; 2],
        };
        let want = by_id[&table[(flow_hash(&key, 7) % 4099) as usize]];
        assert_eq!(backend_for(&mut dp, &f), want, "flow {i}");
    }
}

#[test]
fn ring_updates_never_show_traffic_a_backend_outside_old_or_new() {
    pin_to_one_cpu();
    // Ids 0..=5 in config order; 5 is never in a live ring after the start.
    let (mut dp, _) = node(&config_text("rr", &[11, 12, 13, 14, 15, 16], ""), 0);
    // Fill both halves with backend 5, beyond any later ring's length: a
    // torn read (a length of one ring with the half of the other, or a
    // half rewritten while live) would then show backend 5.
    let stale = vec![5u32; 8];
    dp.set_ring(0, &stale).unwrap();
    dp.set_ring(0, &stale).unwrap();
    let (old, new) = (vec![0u32, 1], vec![2u32, 3, 4]);
    // A real ring is live before traffic starts; the sentinel stays only
    // beyond its length.
    dp.set_ring(0, &new).unwrap();
    let mut writer = dp.ring_writer().unwrap();
    let updates = std::thread::spawn(move || {
        for i in 0..1000 {
            writer.set(0, if i % 2 == 0 { &old } else { &new }).unwrap();
        }
    });
    let allowed: Vec<Ipv4Addr> = (11..=15).map(|b| Ipv4Addr::new(10, 0, 0, b)).collect();
    let mut runs = 0u32;
    while !updates.is_finished() || runs < 1000 {
        let got = backend_for(&mut dp, &flow(runs));
        assert!(allowed.contains(&got), "run {runs}: a packet went to {got}");
        runs += 1;
        assert!(runs < 5_000_000, "bounded");
    }
    updates.join().unwrap();
    assert!(runs >= 1000);
}

#[test]
fn established_flows_keep_their_backend_across_add_remove_and_weight_changes() {
    let (mut dp, mut st) = node(&config_text("maglev", &[11, 12, 13, 14], ""), 0);
    let flows: Vec<Spec> = (0..300).map(flow).collect();
    let first: Vec<Ipv4Addr> = flows.iter().map(|f| backend_for(&mut dp, f)).collect();
    let spec = |b: u8| BackendSpec {
        address: std::net::IpAddr::from(Ipv4Addr::new(10, 0, 0, b)),
        weight: 1,
        port: None,
        admin: Admin::Enabled,
        health: Default::default(),
    };
    st.add_backend(
        "web",
        spec(15),
        mac_of(std::net::IpAddr::from(Ipv4Addr::new(10, 0, 0, 15))),
    )
    .unwrap();
    st.remove_backend("web", std::net::IpAddr::from(Ipv4Addr::new(10, 0, 0, 11)))
        .unwrap();
    st.set_weight(
        "web",
        std::net::IpAddr::from(Ipv4Addr::new(10, 0, 0, 12)),
        5,
    )
    .unwrap();
    dp.apply(&st.plan()).unwrap();
    for (f, before) in flows.iter().zip(&first) {
        assert_eq!(backend_for(&mut dp, f), *before, "flow {} moved", f.sport);
    }
    // New flows: never the removed backend; the added one takes some.
    let new: Vec<Ipv4Addr> = (10_000..10_500)
        .map(|i| backend_for(&mut dp, &flow(i)))
        .collect();
    assert!(!new.contains(&Ipv4Addr::new(10, 0, 0, 11)));
    assert!(new.contains(&Ipv4Addr::new(10, 0, 0, 15)));

    // A backend marked down: its flows are rescheduled, the others stay.
    assert!(st.set_health(st.vips()[0].backends[0].id, false, "test"));
    let down = st.vips()[0].backends[0].spec.address;
    dp.apply(&st.plan()).unwrap();
    for (f, before) in flows.iter().zip(&first) {
        let now = backend_for(&mut dp, f);
        if *before == down {
            assert_ne!(now, down, "flow {} stayed on a down backend", f.sport);
        } else {
            assert_eq!(now, *before, "flow {} moved", f.sport);
        }
    }
}

#[test]
fn source_affinity_keeps_a_client_on_its_backend_until_drain_or_timeout() {
    pin_to_one_cpu();
    let (mut dp, mut st) = node(
        &config_text("rr", &[11, 12, 13], "persistence = { timeout = \"1s\" }"),
        0,
    );
    let client = |c: u8, port: u16| Spec {
        src: [198, 51, 100, c],
        sport: port,
        ..Spec::default()
    };
    let b1 = backend_for(&mut dp, &client(1, 1000));
    for port in 1001..1020 {
        assert_eq!(backend_for(&mut dp, &client(1, port)), b1, "client 1 moved");
    }
    // Other clients spread (round-robin: the next two backends).
    let b2 = backend_for(&mut dp, &client(2, 1000));
    let b3 = backend_for(&mut dp, &client(3, 1000));
    assert!(b1 != b2 && b2 != b3 && b1 != b3, "{b1} {b2} {b3}");

    // Drained: client 1's new connections go elsewhere; its open flow stays.
    st.set_admin("web", b1.into(), Admin::Drained).unwrap();
    dp.apply(&st.plan()).unwrap();
    assert_eq!(
        backend_for(&mut dp, &client(1, 1000)),
        b1,
        "established flow kept"
    );
    let moved = backend_for(&mut dp, &client(1, 2000));
    assert_ne!(moved, b1);
    assert_eq!(
        backend_for(&mut dp, &client(1, 2001)),
        moved,
        "sticks to the new one"
    );

    // After the timeout, a new connection is scheduled afresh.
    st.set_admin("web", b1.into(), Admin::Enabled).unwrap();
    dp.apply(&st.plan()).unwrap();
    let c4 = backend_for(&mut dp, &client(4, 1000));
    std::thread::sleep(Duration::from_millis(1200));
    let after = backend_for(&mut dp, &client(4, 1001));
    assert_ne!(after, c4, "client 4 still bound after its timeout");
}

#[test]
fn active_flow_counts_do_not_drift_over_10000_opened_and_closed_connections() {
    let (mut dp, _) = node(&config_text("wlc", &[11, 12, 13], ""), 0);
    let tcp = |i: u32, fin: bool| {
        let mut f = flow(i).build();
        // TCP flags byte: 14 (Ethernet) + 20 (IP) + 13.
        f[14 + 20 + 13] = if fin { 0x11 } else { 0x02 }; // FIN|ACK or SYN
        fix_tcp_checksum(&mut f);
        f
    };
    for i in 0..10_000 {
        assert_eq!(dp.test_run(&tcp(i, false)).unwrap().0, XDP_TX);
        assert_eq!(dp.test_run(&tcp(i, true)).unwrap().0, XDP_TX);
    }
    let usage = dp.flow_usage(0).unwrap();
    assert_eq!(usage.entries, 10_000);
    assert_eq!(
        usage.active.values().sum::<u32>(),
        0,
        "closed flows still counted: {:?}",
        usage.active
    );
    // 300 open ones are counted, each on its backend.
    for i in 20_000..20_300 {
        dp.test_run(&tcp(i, false)).unwrap();
    }
    let usage = dp.flow_usage(0).unwrap();
    assert_eq!(usage.active.values().sum::<u32>(), 300);
    assert_eq!(usage.active.len(), 3);
    // A new SYN on a closed flow's 5-tuple is a new, open flow.
    dp.test_run(&tcp(5, false)).unwrap();
    assert_eq!(dp.flow_usage(0).unwrap().active.values().sum::<u32>(), 301);
}

/// Recomputes the TCP checksum of an IPv4 frame without VLAN or options
/// (etherparse computes it from the parsed headers).
fn fix_tcp_checksum(frame: &mut [u8]) {
    let ip = etherparse::Ipv4HeaderSlice::from_slice(&frame[14..])
        .unwrap()
        .to_header();
    let (tcp, payload) = etherparse::TcpHeader::from_slice(&frame[34..]).unwrap();
    let sum = tcp.calc_checksum_ipv4(&ip, payload).unwrap();
    frame[34 + 16..34 + 18].copy_from_slice(&sum.to_be_bytes());
}
