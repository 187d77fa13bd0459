//! The XDP program under BPF_PROG_TEST_RUN: crafted frames in, the action
//! and the exact output frame out. Expected frames are built independently
//! with etherparse (`foobar_tests::frames`), never by foobar's code, and
//! forwarded frames have their checksums verified by etherparse too.
//! Needs root (loading BPF); `cargo xtask test` runs it so.
use std::{collections::HashMap, net::Ipv4Addr};

use foobar::{
    config,
    datapath::{Datapath, LoadOptions},
    plan::Plan,
    state::{self, State},
};
use foobar_common::{Reason, BACKEND_UP};
use foobar_tests::frames::{self, check_checksums, dst_mac, Spec, L4};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

/// VIP 192.0.2.10:80/tcp with three backends, a UDP every-port VIP on
/// 192.0.2.20, and a VIP on 192.0.2.30 whose only backend `datapath()`
/// marks down, so it has no backend to take a flow (a config cannot list a
/// VIP without backends).
const CONFIG: &str = r#"
    [[vip]]
    name = "web"
    address = "192.0.2.10"
    port = 80
    forwarding = "dsr"
    [[vip.backend]]
    address = "10.0.0.11"
    [[vip.backend]]
    address = "10.0.0.12"
    [[vip.backend]]
    address = "10.0.0.13"

    [[vip]]
    name = "udp-any"
    address = "192.0.2.20"
    port = 0
    forwarding = "dsr"
    protocol = "udp"
    [[vip.backend]]
    address = "10.0.0.21"

    [[vip]]
    name = "empty"
    address = "192.0.2.30"
    port = 80
    forwarding = "dsr"
    [[vip.backend]]
    address = "10.0.0.31"
"#;

fn backend_mac(last: u8) -> [u8; 6] {
    [0x02, 0xbe, 0, 0, 0, last]
}

fn macs() -> HashMap<std::net::IpAddr, [u8; 6]> {
    [11, 12, 13, 21, 31]
        .into_iter()
        .map(|n| (Ipv4Addr::new(10, 0, 0, n).into(), backend_mac(n)))
        .collect()
}

/// The LB interface's MAC: where the fixtures' frames are addressed.
fn lb_mac() -> [u8; 6] {
    Spec::default().dst_mac
}

fn load_options() -> LoadOptions {
    LoadOptions {
        lb_mac: lb_mac(),
        affinity_table_size: 1024,
        ..LoadOptions::default()
    }
}

/// Loads the datapath and programs it; the test thread is pinned to one CPU
/// so the per-CPU round-robin cursor is the same for every run.
fn datapath(config_text: &str) -> (Datapath, Plan) {
    pin_to_one_cpu();
    let config = config::parse(config_text).expect("test config is valid");
    let mut st =
        State::build(&state::saved_from_config(&config), &macs()).expect("every backend has a MAC");
    if let Ok(empty) = st.vip("empty") {
        let ids: Vec<u32> = empty.backends.iter().map(|b| b.id).collect();
        for id in ids {
            st.set_health(id, false, "down for the test");
        }
    }
    let plan = st.plan();
    let mut dp = Datapath::load(&load_options())
        .expect("loading the XDP program (are you root? run `cargo xtask test`)");
    dp.apply(&plan).expect("programming the maps");
    (dp, plan)
}

fn pin_to_one_cpu() {
    let mut set = nix::sched::CpuSet::new();
    let cpu = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .ok()
        .and_then(|s| (0..nix::sched::CpuSet::count()).find(|&c| s.is_set(c).unwrap_or(false)))
        .unwrap_or(0);
    set.set(cpu).expect("cpu index in range");
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).expect("pinning to one CPU");
}

/// The frame the client sent, as DSR must forward it to `backend`: only the
/// Ethernet addresses differ (LB's MAC as source).
fn forwarded(spec: &Spec, backend: [u8; 6]) -> Vec<u8> {
    Spec {
        src_mac: lb_mac(),
        dst_mac: backend,
        ..spec.clone()
    }
    .build()
}

/// `frame` with its Ethernet addresses set as DSR forwards it to `backend`.
fn with_macs(frame: &[u8], backend: [u8; 6]) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[..6].copy_from_slice(&backend);
    out[6..12].copy_from_slice(&lb_mac());
    out
}

struct Case {
    name: &'static str,
    input: Vec<u8>,
    action: u32,
    /// None: the output must equal the input, byte for byte.
    output: Option<Vec<u8>>,
    reason: Reason,
}

fn cases() -> Vec<Case> {
    let web = Spec::default();
    let web_udp = Spec {
        l4: L4::Udp,
        ..Spec::default()
    };
    let udp_any = Spec {
        l4: L4::Udp,
        dst: [192, 0, 2, 20],
        dport: 5353,
        ..Spec::default()
    };
    let with_options = Spec {
        // Record Route with room for one address: IHL 7, so the TCP header
        // starts at 28 bytes, not 20.
        ip_options: vec![7, 7, 4, 0, 0, 0, 0, 1],
        sport: 40001,
        ..Spec::default()
    };
    let tagged = Spec {
        vlan: Some(100),
        sport: 40002,
        ..Spec::default()
    };
    // ARP requests are broadcast (not for us); a unicast ARP (a reply, a
    // refresh) is addressed to the LB and is the kernel's.
    let mut arp_to_lb = frames::arp_request();
    arp_to_lb[..6].copy_from_slice(&lb_mac());
    let udp_other = Spec {
        sport: 40006,
        ..udp_any.clone()
    };
    // A router's "fragmentation needed" about web's first flow (backend 11)
    // and about a flow the table does not know (scheduled like one: the next
    // round-robin slot, 11 again, but nothing is recorded).
    let icmp_known = frames::frag_needed(&web, [203, 0, 113, 1], 1400);
    let icmp_unknown = frames::frag_needed(
        &Spec {
            sport: 40007,
            ..Spec::default()
        },
        [203, 0, 113, 1],
        1400,
    );
    let mut truncated = web.build();
    truncated.truncate(14 + 20 + 10);
    let mut short_total_len = Spec {
        sport: 40003,
        ..Spec::default()
    }
    .build();
    // Claim a total length longer than the frame.
    short_total_len[16..18].copy_from_slice(&2000u16.to_be_bytes());
    let mut bad_ihl = Spec {
        sport: 40004,
        ..Spec::default()
    }
    .build();
    bad_ihl[14] = 0x44; // IHL 4 (16 bytes): less than the minimum header

    // Round-robin over the three web backends: the ring is 11, 12, 13 and
    // each row below is a new flow, so they go 11, 12, 13, 11 in order.
    vec![
        Case {
            name: "tcp to the VIP goes to the first backend",
            output: Some(forwarded(&web, backend_mac(11))),
            input: web.build(),
            action: XDP_TX,
            reason: Reason::Forwarded,
        },
        Case {
            name: "IPv4 options: ports read at IHL*4, frame forwarded untouched",
            output: Some(forwarded(&with_options, backend_mac(12))),
            input: with_options.build(),
            action: XDP_TX,
            reason: Reason::Forwarded,
        },
        Case {
            name: "a tagged frame on a VLAN no VIP is configured for is not ours",
            input: tagged.build(),
            action: XDP_PASS,
            output: None,
            reason: Reason::NotVip,
        },
        Case {
            name: "the third flow: round-robin goes on to backend 13",
            output: Some(forwarded(
                &Spec {
                    sport: 40008,
                    ..Spec::default()
                },
                backend_mac(13),
            )),
            input: Spec {
                sport: 40008,
                ..Spec::default()
            }
            .build(),
            action: XDP_TX,
            reason: Reason::Forwarded,
        },
        Case {
            name: "the first flow again: flow table keeps it on backend 11",
            output: Some(forwarded(&web, backend_mac(11))),
            input: web.build(),
            action: XDP_TX,
            reason: Reason::Forwarded,
        },
        Case {
            name: "port-0 UDP VIP matches any port",
            output: Some(forwarded(&udp_any, backend_mac(21))),
            input: udp_any.build(),
            action: XDP_TX,
            reason: Reason::Forwarded,
        },
        Case {
            name: "ICMP frag-needed about a known flow goes to the flow's backend",
            output: Some(with_macs(&icmp_known, backend_mac(11))),
            input: icmp_known,
            action: XDP_TX,
            reason: Reason::ForwardedIcmp,
        },
        Case {
            name: "ICMP frag-needed about an unknown flow goes where the ring says",
            output: Some(with_macs(&icmp_unknown, backend_mac(11))),
            input: icmp_unknown,
            action: XDP_TX,
            reason: Reason::ForwardedIcmp,
        },
        Case {
            name: "the ICMP error recorded nothing: that flow's SYN takes the next slot",
            output: Some(forwarded(
                &Spec {
                    sport: 40007,
                    ..Spec::default()
                },
                backend_mac(12),
            )),
            input: Spec {
                sport: 40007,
                ..Spec::default()
            }
            .build(),
            action: XDP_TX,
            reason: Reason::Forwarded,
        },
        Case {
            name: "UDP to a port no VIP of the address serves is dropped",
            input: web_udp.build(),
            action: XDP_DROP,
            output: None,
            reason: Reason::ClosedPort,
        },
        Case {
            name: "another TCP port of a VIP address (sshd on 0.0.0.0) is dropped",
            input: Spec {
                dport: 22,
                ..Spec::default()
            }
            .build(),
            action: XDP_DROP,
            output: None,
            reason: Reason::ClosedPort,
        },
        Case {
            name: "broadcast is not addressed to the LB: untouched",
            input: Spec {
                dst_mac: [0xff; 6],
                ..udp_other.clone()
            }
            .build(),
            action: XDP_PASS,
            output: None,
            reason: Reason::NotForUs,
        },
        Case {
            name: "another host's unicast (promiscuous mode, flooding) is untouched",
            input: Spec {
                dst_mac: [0x02, 0, 0, 0, 0, 0x99],
                ..udp_other.clone()
            }
            .build(),
            action: XDP_PASS,
            output: None,
            reason: Reason::NotForUs,
        },
        Case {
            name: "the LB's own address is not ours",
            input: Spec {
                dst: [192, 0, 2, 2],
                ..Spec::default()
            }
            .build(),
            action: XDP_PASS,
            output: None,
            reason: Reason::NotVip,
        },
        Case {
            name: "ICMP to the VIP goes to the kernel",
            input: Spec {
                l4: L4::Icmp,
                ..Spec::default()
            }
            .build(),
            action: XDP_PASS,
            output: None,
            reason: Reason::OtherL4,
        },
        Case {
            name: "unicast ARP goes to the kernel",
            input: arp_to_lb,
            action: XDP_PASS,
            output: None,
            reason: Reason::NotIp,
        },
        Case {
            name: "IPv6 goes to the kernel",
            input: frames::ipv6_tcp(),
            action: XDP_PASS,
            output: None,
            reason: Reason::Ipv6,
        },
        Case {
            name: "a fragment to a VIP address is dropped, not answered by the node",
            input: Spec {
                more_fragments: true,
                sport: 40005,
                ..Spec::default()
            }
            .build(),
            action: XDP_DROP,
            output: None,
            reason: Reason::Fragment,
        },
        Case {
            name: "a fragment to another address is the node's",
            input: Spec {
                more_fragments: true,
                dst: [192, 0, 2, 2],
                ..Spec::default()
            }
            .build(),
            action: XDP_PASS,
            output: None,
            reason: Reason::NotVip,
        },
        Case {
            name: "truncated TCP header",
            input: truncated,
            action: XDP_PASS,
            output: None,
            reason: Reason::Malformed,
        },
        Case {
            name: "total length beyond the frame",
            input: short_total_len,
            action: XDP_PASS,
            output: None,
            reason: Reason::Malformed,
        },
        Case {
            name: "IHL below 5",
            input: bad_ihl,
            action: XDP_PASS,
            output: None,
            reason: Reason::Malformed,
        },
        Case {
            name: "a VIP without backends drops",
            input: Spec {
                dst: [192, 0, 2, 30],
                ..Spec::default()
            }
            .build(),
            action: XDP_DROP,
            output: None,
            reason: Reason::NoBackend,
        },
    ]
}

#[test]
fn fixtures_give_exact_frames_verdicts_and_reasons() {
    let (mut dp, plan) = datapath(CONFIG);
    let cases = cases();
    let mut expected_reasons = [0u64; Reason::ALL.len()];
    for case in &cases {
        let (action, out) = dp.test_run(&case.input).expect("BPF_PROG_TEST_RUN");
        assert_eq!(action, case.action, "{}: action", case.name);
        let want = case.output.as_ref().unwrap_or(&case.input);
        assert_eq!(&out, want, "{}: output frame", case.name);
        if action == XDP_TX {
            check_checksums(&out).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        }
        expected_reasons[case.reason as usize] += 1;
    }
    let stats = dp.stats(plan.vips.len(), plan.backends.len()).unwrap();
    for reason in Reason::ALL {
        assert_eq!(
            stats.reason(reason).packets,
            expected_reasons[reason as usize],
            "reason {}",
            reason.name()
        );
    }
    // Per-VIP and per-backend counters: web got 7 packets: 11 twice and
    // both ICMP errors, 12 twice, 13 once.
    let forwarded_len = |c: &Case| c.input.len() as u64;
    assert_eq!(stats.vips[0].packets, 7);
    assert_eq!(stats.backends[0].packets, 4);
    assert_eq!(stats.backends[1].packets, 2);
    assert_eq!(stats.backends[2].packets, 1);
    let icmp = cases
        .iter()
        .find(|c| c.name.starts_with("ICMP frag-needed about a known"))
        .unwrap();
    assert_eq!(
        stats.backends[0].bytes,
        2 * forwarded_len(&cases[0]) + 2 * forwarded_len(icmp)
    );
    assert_eq!(stats.vips[1].packets, 1);
    assert_eq!(stats.backends[3].packets, 1);
}

#[test]
fn every_truncation_of_a_vip_frame_is_passed_untouched() {
    let (mut dp, _) = datapath(CONFIG);
    let full = Spec::default().build();
    // 14 bytes is the least BPF_PROG_TEST_RUN accepts for XDP. The IPv4
    // total length covers the whole frame, so every shorter frame is
    // malformed and must reach the kernel as it came.
    for len in 14..full.len() {
        let input = &full[..len];
        let (action, out) = dp.test_run(input).expect("BPF_PROG_TEST_RUN");
        assert_eq!(action, XDP_PASS, "truncated to {len} bytes");
        assert_eq!(out, input, "truncated to {len} bytes: output changed");
    }
}

#[test]
fn weighted_round_robin_interleaves_new_flows() {
    let (mut dp, _) = datapath(
        r#"
        [[vip]]
        name = "web"
        address = "192.0.2.10"
        port = 80
        forwarding = "dsr"
        [[vip.backend]]
        address = "10.0.0.11"
        weight = 3
        [[vip.backend]]
        address = "10.0.0.12"
        weight = 1
        "#,
    );
    let mut seen = Vec::new();
    for i in 0..40u16 {
        let spec = Spec {
            sport: 20000 + i,
            ..Spec::default()
        };
        let (action, out) = dp.test_run(&spec.build()).unwrap();
        assert_eq!(action, XDP_TX);
        seen.push(dst_mac(&out)[5]);
    }
    let heavy = seen.iter().filter(|&&b| b == 11).count();
    assert_eq!(heavy, 30, "weights 3:1 over 40 flows: {seen:?}");
    // Smooth, not blocks: the light backend is never more than 4 flows away.
    for window in seen.windows(4) {
        assert!(
            window.contains(&12),
            "a block of the heavy backend: {seen:?}"
        );
    }
}

#[test]
fn established_flows_keep_their_backend_until_it_goes_down() {
    let (mut dp, plan) = datapath(CONFIG);
    let flows: Vec<Spec> = (0..6u16)
        .map(|i| Spec {
            sport: 30000 + i,
            ..Spec::default()
        })
        .collect();
    let first: Vec<[u8; 6]> = flows
        .iter()
        .map(|f| dst_mac(&dp.test_run(&f.build()).unwrap().1))
        .collect();
    assert_eq!(first.iter().filter(|m| **m == backend_mac(11)).count(), 2);

    // New ring without backend 11 (ids: 0 = .11, 1 = .12, 2 = .13); backend
    // 11 stays up, so its established flows stay on it.
    let web = plan.vips[0].service.vip_id;
    dp.set_ring(web, &[1, 2]).unwrap();
    for (f, mac) in flows.iter().zip(&first) {
        let (action, out) = dp.test_run(&f.build()).unwrap();
        assert_eq!(action, XDP_TX);
        assert_eq!(dst_mac(&out), *mac, "flow {} moved", f.sport);
    }
    // A new flow never lands on 11 any more.
    for i in 0..6u16 {
        let spec = Spec {
            sport: 31000 + i,
            ..Spec::default()
        };
        assert_ne!(
            dst_mac(&dp.test_run(&spec.build()).unwrap().1),
            backend_mac(11)
        );
    }

    // Backend 11 goes down: its flows are rescheduled, the others stay.
    let mut down = plan.backends[&0];
    down.flags &= !BACKEND_UP;
    dp.set_backend(0, &down).unwrap();
    for (f, mac) in flows.iter().zip(&first) {
        let out = dp.test_run(&f.build()).unwrap().1;
        if *mac == backend_mac(11) {
            assert_ne!(
                dst_mac(&out),
                backend_mac(11),
                "flow {} still on a down backend",
                f.sport
            );
        } else {
            assert_eq!(dst_mac(&out), *mac, "flow {} moved", f.sport);
        }
        assert_eq!(out, forwarded(f, dst_mac(&out)), "flow {}: frame", f.sport);
    }
}

#[test]
fn emptied_ring_drops_new_flows() {
    let (mut dp, plan) = datapath(CONFIG);
    dp.set_ring(plan.vips[0].service.vip_id, &[]).unwrap();
    let (action, out) = dp.test_run(&Spec::default().build()).unwrap();
    assert_eq!(action, XDP_DROP);
    assert_eq!(out, Spec::default().build());
    let stats = dp.stats(plan.vips.len(), plan.backends.len()).unwrap();
    assert_eq!(stats.reason(Reason::NoBackend).packets, 1);
    assert_eq!(stats.reason(Reason::Forwarded).packets, 0);
}

#[test]
fn removing_a_vip_hands_its_address_back_to_the_kernel() {
    let (mut dp, _) = datapath(CONFIG);
    let config = config::parse(CONFIG).unwrap();
    let saved = foobar::state::saved_from_config(&config);
    let mut st = foobar::state::State::build(&saved, &macs()).unwrap();
    let udp = Spec {
        l4: L4::Udp,
        dst: [192, 0, 2, 20],
        dport: 53,
        ..Spec::default()
    };
    assert_eq!(dp.test_run(&udp.build()).unwrap().0, XDP_TX);
    // 192.0.2.20 has one VIP: removing it takes the address out of the
    // prefilter, so its traffic is the kernel's again, untouched.
    st.remove_vip("udp-any").unwrap();
    dp.apply(&st.plan()).unwrap();
    let (action, out) = dp.test_run(&udp.build()).unwrap();
    assert_eq!((action, out), (XDP_PASS, udp.build()));
    let web = Spec::default();
    assert_eq!(
        dp.test_run(&web.build()).unwrap().0,
        XDP_TX,
        "the other VIPs still serve"
    );
    // Added back, it is served again.
    let spec = saved.iter().find(|v| v.spec.name == "udp-any").unwrap();
    st.add_vip(spec.spec.clone()).unwrap();
    st.add_backend("udp-any", spec.backends[0].clone(), backend_mac(21))
        .unwrap();
    dp.apply(&st.plan()).unwrap();
    assert_eq!(dp.test_run(&udp.build()).unwrap().0, XDP_TX);
}

/// The prefilter bitmap in front of the VIP-address table holds exactly
/// the bits of the plan's addresses, after `apply` adds or removes one and
/// after `resync`: a missing bit would pass a VIP's traffic, a stale one
/// only costs the pass path a hash lookup.
#[test]
fn the_prefilter_bitmap_follows_the_vip_addresses() {
    fn expected(plan: &Plan) -> Vec<u64> {
        let mut bits = vec![0u64; foobar_common::VIP_ADDR_BITMAP_WORDS as usize];
        for key in plan.addresses.keys() {
            let (word, mask) = foobar_common::vip_addr_bit(key.addr_be);
            bits[word as usize] |= mask;
        }
        bits
    }
    let (mut dp, plan) = datapath(CONFIG);
    assert!(!plan.addresses.is_empty());
    assert_eq!(dp.prefilter_bits().unwrap(), expected(&plan));
    let config = config::parse(CONFIG).unwrap();
    let saved = foobar::state::saved_from_config(&config);
    let mut st = foobar::state::State::build(&saved, &macs()).unwrap();
    let udp_addr = u32::from_ne_bytes([192, 0, 2, 20]);
    let (word, mask) = foobar_common::vip_addr_bit(udp_addr);
    assert_ne!(dp.prefilter_bits().unwrap()[word as usize] & mask, 0);
    st.remove_vip("udp-any").unwrap();
    let smaller = st.plan();
    dp.apply(&smaller).unwrap();
    assert_eq!(dp.prefilter_bits().unwrap(), expected(&smaller));
    assert!(
        smaller
            .addresses
            .keys()
            .all(|k| foobar_common::vip_addr_bit(k.addr_be) != (word, mask)),
        "the fixture's addresses must not share the removed address's bit"
    );
    assert_eq!(dp.prefilter_bits().unwrap()[word as usize] & mask, 0);
    // The rollback path reads the map back: back to the full plan, then to
    // the smaller one again.
    dp.resync(&plan).unwrap();
    assert_eq!(dp.prefilter_bits().unwrap(), expected(&plan));
    dp.resync(&smaller).unwrap();
    assert_eq!(dp.prefilter_bits().unwrap(), expected(&smaller));
}

/// An id freed by a removed backend and taken by another must never carry
/// the old backend's flows or affinity choices to the new one: the new
/// holder has a new generation, so the old entries no longer match.
#[test]
fn a_reused_backend_id_never_inherits_old_flows() {
    let (mut dp, _) = datapath(CONFIG);
    let config = config::parse(CONFIG).unwrap();
    let mut st =
        foobar::state::State::build(&foobar::state::saved_from_config(&config), &macs()).unwrap();
    dp.apply(&st.plan()).unwrap();
    let flow = Spec::default();
    let (_, out) = dp.test_run(&flow.build()).unwrap();
    assert_eq!(
        dst_mac(&out),
        backend_mac(11),
        "the flow starts on .11 (id 0)"
    );

    st.remove_backend("web", std::net::IpAddr::from(Ipv4Addr::new(10, 0, 0, 11)))
        .unwrap();
    dp.apply(&st.plan()).unwrap();
    assert_eq!(st.free_retired(&Default::default()).len(), 1);
    dp.apply(&st.plan()).unwrap();
    let spec = foobar::state::BackendSpec {
        address: std::net::IpAddr::from(Ipv4Addr::new(10, 0, 0, 14)),
        ..foobar::state::saved_from_config(&config)[0].backends[0].clone()
    };
    let id = st.add_backend("web", spec, backend_mac(14)).unwrap();
    assert_eq!(id, 0, "the new backend takes the freed id");
    let plan = st.plan();
    dp.apply(&plan).unwrap();
    let stats = dp.stats(plan.vips.len(), 5).unwrap();
    assert_eq!(
        stats.backend(0).packets,
        0,
        "the id's new holder starts with its own counters"
    );
    // Only the remaining old backends in the ring: a rescheduled flow can
    // land on .12 or .13; the old entry alone could send it to .14.
    dp.set_ring(plan.vips[0].service.vip_id, &[1, 2]).unwrap();
    for _ in 0..3 {
        let (action, out) = dp.test_run(&flow.build()).unwrap();
        assert_eq!(action, XDP_TX);
        assert_ne!(
            dst_mac(&out),
            backend_mac(14),
            "an old flow reached the id's new holder"
        );
        assert_ne!(
            dst_mac(&out),
            backend_mac(11),
            "a freed backend still gets traffic"
        );
    }
}

#[test]
fn a_reused_backend_id_never_inherits_affinity() {
    let text = CONFIG.replacen(
        "port = 80\n",
        "port = 80\n    persistence = { timeout = \"600s\" }\n",
        1,
    );
    let (mut dp, _) = datapath(&text);
    let config = config::parse(&text).unwrap();
    let mut st =
        foobar::state::State::build(&foobar::state::saved_from_config(&config), &macs()).unwrap();
    dp.apply(&st.plan()).unwrap();
    let (_, out) = dp.test_run(&Spec::default().build()).unwrap();
    assert_eq!(
        dst_mac(&out),
        backend_mac(11),
        "the client's choice is .11 (id 0)"
    );

    st.remove_backend("web", std::net::IpAddr::from(Ipv4Addr::new(10, 0, 0, 11)))
        .unwrap();
    assert_eq!(st.free_retired(&Default::default()).len(), 1);
    let spec = foobar::state::BackendSpec {
        address: std::net::IpAddr::from(Ipv4Addr::new(10, 0, 0, 14)),
        ..foobar::state::saved_from_config(&config)[0].backends[0].clone()
    };
    assert_eq!(st.add_backend("web", spec, backend_mac(14)).unwrap(), 0);
    let plan = st.plan();
    dp.apply(&plan).unwrap();
    // The ring names only .12: the client's next connection goes there; the
    // stale affinity entry (id 0) alone could send it to .14.
    dp.set_ring(plan.vips[0].service.vip_id, &[1]).unwrap();
    let next = Spec {
        sport: 41000,
        ..Spec::default()
    };
    let (_, out) = dp.test_run(&next.build()).unwrap();
    assert_eq!(dst_mac(&out), backend_mac(12));
}

/// A backend that was down when it was removed stays down while retired:
/// its flows are rescheduled, not sent to a dead server.
#[test]
fn a_backend_removed_while_down_stays_down() {
    let config = config::parse(CONFIG).unwrap();
    let mut st =
        foobar::state::State::build(&foobar::state::saved_from_config(&config), &macs()).unwrap();
    assert!(st.set_health(0, false, "test: connect refused"));
    st.remove_backend("web", std::net::IpAddr::from(Ipv4Addr::new(10, 0, 0, 11)))
        .unwrap();
    let plan = st.plan();
    assert_eq!(
        plan.backends[&0].flags & BACKEND_UP,
        0,
        "retired while down: still down"
    );
}

/// TCP segments without SYN that find no flow (an evicted or lost flow)
/// are counted: that is how a too-small flow table shows.
#[test]
fn new_flows_are_counted_per_backend_and_hits_are_not() {
    let (mut dp, plan) = datapath(CONFIG);
    // Backend ids: 0 = .11, 1 = .12, 2 = .13.
    let id_of = |mac: [u8; 6]| {
        (11..=13u8)
            .position(|l| backend_mac(l) == mac)
            .unwrap_or_else(|| panic!("not a backend: {mac:02x?}"))
    };
    let new_flows = |dp: &Datapath| {
        let stats = dp.stats(plan.vips.len(), plan.backends.len()).unwrap();
        (0..3u32)
            .map(|id| stats.new_flows(id))
            .collect::<Vec<u64>>()
    };
    let flows: Vec<Spec> = (0..6u16)
        .map(|i| Spec {
            sport: 32000 + i,
            ..Spec::default()
        })
        .collect();
    let mut expected = vec![0u64; 3];
    let mut on = Vec::new();
    for f in &flows {
        let id = id_of(dst_mac(&dp.test_run(&f.build()).unwrap().1));
        expected[id] += 1;
        on.push(id);
    }
    assert_eq!(new_flows(&dp), expected, "one new flow per first packet");
    // Flow-table hits schedule nothing.
    for f in &flows {
        dp.test_run(&f.build()).unwrap();
    }
    assert_eq!(new_flows(&dp), expected, "hits counted as new flows");
    // Backend .11 goes down (and leaves the ring, as apply does): its flows
    // are rescheduled, each a new flow of the backend it lands on.
    dp.set_ring(plan.vips[0].service.vip_id, &[1, 2]).unwrap();
    let mut down = plan.backends[&0];
    down.flags &= !BACKEND_UP;
    dp.set_backend(0, &down).unwrap();
    for (f, was) in flows.iter().zip(&on) {
        let id = id_of(dst_mac(&dp.test_run(&f.build()).unwrap().1));
        if *was == 0 {
            assert_ne!(id, 0);
            expected[id] += 1;
        }
    }
    assert_eq!(new_flows(&dp), expected, "rescheduled flows");
}

#[test]
fn a_midflow_miss_is_counted() {
    let (mut dp, plan) = datapath(CONFIG);
    let mut ack = Spec::default().build();
    // Clear SYN, set ACK: a segment of an established connection.
    let tcp = 14 + 20;
    ack[tcp + 13] = 0x10;
    let sum = etherparse::TcpHeader::from_slice(&ack[tcp..]).unwrap().0;
    let ip = etherparse::Ipv4Header::from_slice(&ack[14..]).unwrap().0;
    let check = sum.calc_checksum_ipv4(&ip, &ack[tcp + 20..]).unwrap();
    ack[tcp + 16..tcp + 18].copy_from_slice(&check.to_be_bytes());
    assert_eq!(dp.test_run(&ack).unwrap().0, XDP_TX);
    assert_eq!(dp.test_run(&ack).unwrap().0, XDP_TX);
    let syn = Spec {
        sport: 40100,
        ..Spec::default()
    }
    .build();
    assert_eq!(dp.test_run(&syn).unwrap().0, XDP_TX);
    let stats = dp.stats(plan.vips.len(), plan.backends.len()).unwrap();
    assert_eq!(stats.event(foobar_common::Event::MidflowMiss), 1);
}

/// A VIP bound to VLAN 100 serves tagged frames of that VLAN only, keeps
/// the tag when forwarding; the same address untagged is not ours. A VIP
/// address with `closed_ports = "pass"` hands its other ports to the node.
#[test]
fn vlan_vips_serve_their_vlan_only_and_closed_ports_can_pass() {
    let (mut dp, _) = datapath(
        r#"
        [[vip]]
        name = "tagged"
        address = "192.0.2.40"
        port = 80
        forwarding = "dsr"
        vlan = 100
        closed_ports = "pass"
        [[vip.backend]]
        address = "10.0.0.11"
        "#,
    );
    let tagged = Spec {
        dst: [192, 0, 2, 40],
        vlan: Some(100),
        ..Spec::default()
    };
    let (action, out) = dp.test_run(&tagged.build()).unwrap();
    assert_eq!(action, XDP_TX);
    assert_eq!(out, forwarded(&tagged, backend_mac(11)), "tag kept");
    check_checksums(&out).unwrap();
    for (name, spec) in [
        (
            "untagged",
            Spec {
                vlan: None,
                ..tagged.clone()
            },
        ),
        (
            "another VLAN",
            Spec {
                vlan: Some(200),
                ..tagged.clone()
            },
        ),
        (
            "a closed port that passes",
            Spec {
                dport: 22,
                ..tagged.clone()
            },
        ),
    ] {
        let input = spec.build();
        let (action, out) = dp.test_run(&input).unwrap();
        assert_eq!((action, &out), (XDP_PASS, &input), "{name}");
    }
}

/// `foobar vip purge-affinity`: after the purge a client's next connection
/// is scheduled by the ring, not sent to its remembered backend.
#[test]
fn purged_affinity_is_forgotten() {
    let text = CONFIG.replacen(
        "port = 80\n",
        "port = 80\n    persistence = { timeout = \"600s\" }\n",
        1,
    );
    let (mut dp, plan) = datapath(&text);
    let web = plan.vips[0].service.vip_id;
    let conn = |sport| Spec {
        sport,
        ..Spec::default()
    };
    let (_, out) = dp.test_run(&conn(42000).build()).unwrap();
    assert_eq!(dst_mac(&out), backend_mac(11));
    // The ring now names only .12, but the client's choice is remembered.
    dp.set_ring(web, &[1]).unwrap();
    let (_, out) = dp.test_run(&conn(42001).build()).unwrap();
    assert_eq!(
        dst_mac(&out),
        backend_mac(11),
        "affinity holds before the purge"
    );
    assert_eq!(
        dp.purge_affinity(Some(web + 1)).unwrap(),
        0,
        "another VIP has none"
    );
    assert_eq!(dp.purge_affinity(Some(web)).unwrap(), 1);
    let (_, out) = dp.test_run(&conn(42002).build()).unwrap();
    assert_eq!(
        dst_mac(&out),
        backend_mac(12),
        "scheduled afresh after the purge"
    );
}

/// The flow-first path trusts a flow entry while its VIP's generation is
/// unchanged: `apply` must give a VIP id a new generation whenever what
/// the VIP lookup finds for its flows may change — here an exact-port VIP
/// shadowing the UDP every-port VIP for port 53, then a removal — and
/// leave the others alone, so their flows keep the fast path. The flow
/// made before the shadow goes to the new VIP's backend after it.
#[test]
fn vip_generations_change_exactly_when_a_vips_flows_may_change() {
    let (mut dp, plan) = datapath(CONFIG);
    let id_of = |plan: &Plan, name: &str| {
        plan.vips
            .iter()
            .find(|v| v.name == name)
            .unwrap()
            .service
            .vip_id
    };
    let (web, udp_any) = (id_of(&plan, "web"), id_of(&plan, "udp-any"));
    let gens =
        |dp: &Datapath| -> Vec<u32> { (0..8).map(|id| dp.vip_gen(id).unwrap().gen).collect() };
    let before = gens(&dp);
    for v in &plan.vips {
        assert_ne!(
            before[v.service.vip_id as usize], 0,
            "{} has no generation",
            v.name
        );
    }
    let mut distinct = before.clone();
    distinct.retain(|g| *g != 0);
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        plan.vips.len(),
        "generations repeat: {before:?}"
    );
    dp.apply(&plan).unwrap();
    assert_eq!(gens(&dp), before, "an unchanged plan changed generations");

    // A DNS flow on the every-port VIP, established.
    let dns = Spec {
        l4: L4::Udp,
        dst: [192, 0, 2, 20],
        dport: 53,
        ..Spec::default()
    };
    let (action, out) = dp.test_run(&dns.build()).unwrap();
    assert_eq!((action, dst_mac(&out)), (XDP_TX, backend_mac(21)));
    assert_eq!(
        dst_mac(&dp.test_run(&dns.build()).unwrap().1),
        backend_mac(21)
    );

    // An exact-port VIP for 53 shadows it: only udp-any's generation moves.
    let config = config::parse(CONFIG).unwrap();
    let mut st = State::build(&state::saved_from_config(&config), &macs()).unwrap();
    let mut spec = st.vip("udp-any").unwrap().spec.clone();
    spec.name = "dns".into();
    spec.port = 53;
    let dns_id = st.add_vip(spec).unwrap();
    let mut b = st.vip("udp-any").unwrap().backends[0].spec.clone();
    b.address = std::net::IpAddr::from(Ipv4Addr::new(10, 0, 0, 41));
    st.add_backend("dns", b, backend_mac(41)).unwrap();
    if let Ok(empty) = st.vip("empty") {
        let ids: Vec<u32> = empty.backends.iter().map(|b| b.id).collect();
        for id in ids {
            st.set_health(id, false, "down for the test");
        }
    }
    let shadowed = st.plan();
    dp.apply(&shadowed).unwrap();
    let after = gens(&dp);
    assert_ne!(after[udp_any as usize], before[udp_any as usize]);
    assert_ne!(after[dns_id as usize], 0);
    for id in 0..8 {
        if id != udp_any && id != dns_id {
            assert_eq!(after[id as usize], before[id as usize], "VIP id {id}");
        }
    }
    assert_eq!(
        dst_mac(&dp.test_run(&dns.build()).unwrap().1),
        backend_mac(41),
        "the flow made before the shadow must follow the new VIP"
    );

    // web removed: its id's generation moves.
    let web_spec = st.remove_vip("web").unwrap().spec;
    let smaller = st.plan();
    dp.apply(&smaller).unwrap();
    let removed = gens(&dp);
    assert_ne!(removed[web as usize], after[web as usize]);
    // resync trusts no generation it did not write: every VIP's moves
    // (its flows take the full path once), and none goes back.
    dp.resync(&smaller).unwrap();
    let resynced = gens(&dp);
    for v in &smaller.vips {
        let id = v.service.vip_id as usize;
        assert!(resynced[id] > removed[id], "{} kept its generation", v.name);
    }
    // Re-added (the lowest free id: its old one): a generation never
    // handed out before, also after the resync.
    assert_eq!(st.add_vip(web_spec).unwrap(), web);
    dp.apply(&st.plan()).unwrap();
    let readded = dp.vip_gen(web).unwrap().gen;
    let highest = before
        .iter()
        .chain(&after)
        .chain(&removed)
        .chain(&resynced)
        .max()
        .unwrap();
    assert!(readded > *highest, "{readded} was handed out before");
}
