//! Full NAT under BPF_PROG_TEST_RUN: the forward translation (DNAT to the
//! backend and its port, SNAT to the VIP's SNAT address and a port of its
//! range), the reverse translation of replies, checksums, state lifetime
//! and port allocation. Expected frames are built with etherparse
//! (`foobar_tests::frames`), an independent parser, and every translated
//! frame's checksums are verified by it. Needs root (loading BPF).
use std::{collections::HashSet, net::Ipv4Addr, time::Duration};

use foobar::{
    config,
    datapath::{Datapath, LoadOptions},
    plan::Plan,
    state::{self, State},
};
use foobar_common::{Reason, VipAddrKey, ADDR_SNAT, ADDR_SNAT_ONLY, FWD_NAT, NAT_CLOSED};
use foobar_tests::fixture::{self, backend_mac, lb_mac};
use foobar_tests::frames::{check_checksums, Spec, L4};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

/// The LB's SNAT address (an address of its interface, not a VIP).
const SNAT: [u8; 4] = [10, 0, 0, 1];

/// Three NAT VIPs (`web` sends to port 8080 of its backend) and a DSR one;
/// the `[datapath]` NAT keys come from `datapath()`.
const VIPS: &str = r#"
    [[vip]]
    name = "web"
    address = "192.0.2.10"
    port = 80
    forwarding = "nat"
    [[vip.backend]]
    address = "10.0.0.11"
    port = 8080

    [[vip]]
    name = "dns"
    address = "192.0.2.20"
    port = 53
    protocol = "udp"
    forwarding = "nat"
    [[vip.backend]]
    address = "10.0.0.21"

    [[vip]]
    name = "tiny"
    address = "192.0.2.50"
    port = 80
    forwarding = "nat"
    [[vip.backend]]
    address = "10.0.0.51"

    [[vip]]
    name = "dsr"
    address = "192.0.2.60"
    port = 80
    forwarding = "dsr"
    [[vip.backend]]
    address = "10.0.0.61"
"#;

fn client_mac() -> [u8; 6] {
    Spec::default().src_mac
}

/// The plan of the config: `datapath` is the `[datapath]` table's NAT keys.
fn nat_plan(datapath: &str) -> Plan {
    let text = format!("[datapath]\nsnat_address = \"10.0.0.1\"\n{datapath}\n{VIPS}");
    fixture::plan_of(&text, &[11, 21, 51, 61])
}

fn datapath_with(datapath: &str) -> Datapath {
    fixture::load(&nat_plan(datapath), LoadOptions::default())
}

/// The datapath with NAT state lasting `linger_s` after a close and
/// `udp_idle_s` after a UDP flow's last packet.
fn datapath(linger_s: u32, udp_idle_s: u32) -> Datapath {
    datapath_with(&format!(
        "nat_linger = \"{linger_s}s\"\nnat_udp_idle = \"{udp_idle_s}s\""
    ))
}

#[test]
fn the_plan_carries_mode_snat_address_and_backend_port() {
    let plan = nat_plan("");
    let web = plan.vips.iter().find(|v| v.name == "web").expect("web");
    assert_eq!(web.service.forward_mode, FWD_NAT);
    let nat = plan.nat_vips[&web.service.vip_id];
    assert_eq!(nat.snat_addr_be, u32::from_ne_bytes(SNAT));
    assert_eq!((nat.port_min, nat.port_max), (1024, 32767));
    assert_eq!((nat.tcp_idle_s, nat.udp_idle_s, nat.linger_s), (300, 30, 2));
    assert_eq!(plan.backend_ports[&web.backend_ids[0]], 8080u16.to_be());
    let dsr = plan.vips.iter().find(|v| v.name == "dsr").expect("dsr");
    assert_eq!(dsr.service.forward_mode, 0);
    assert!(!plan.nat_vips.contains_key(&dsr.service.vip_id));
    let snat_key = VipAddrKey {
        addr_be: u32::from_ne_bytes(SNAT),
        vlan: 0,
        _pad: 0,
    };
    assert_eq!(plan.addresses[&snat_key], ADDR_SNAT | ADDR_SNAT_ONLY);
}

/// The SNAT port etherparse reads in a translated frame.
fn source_port(frame: &[u8]) -> u16 {
    let sliced = etherparse::SlicedPacket::from_ethernet(frame).expect("a frame etherparse reads");
    match sliced.transport {
        Some(etherparse::TransportSlice::Tcp(t)) => t.source_port(),
        Some(etherparse::TransportSlice::Udp(u)) => u.source_port(),
        _ => panic!("not TCP/UDP"),
    }
}

/// The client's frame as NAT forwards it: from the SNAT address and
/// `snat_port` to the backend and `backend_port`, LB MAC to backend MAC.
fn translated(client: &Spec, backend: u8, backend_port: u16, snat_port: u16) -> Vec<u8> {
    Spec {
        src_mac: lb_mac(),
        dst_mac: backend_mac(backend),
        src: SNAT,
        dst: [10, 0, 0, backend],
        sport: snat_port,
        dport: backend_port,
        ..client.clone()
    }
    .build()
}

/// The backend's reply to a translated frame.
fn reply(client: &Spec, backend: u8, backend_port: u16, snat_port: u16, payload: &[u8]) -> Spec {
    Spec {
        src_mac: backend_mac(backend),
        dst_mac: lb_mac(),
        src: [10, 0, 0, backend],
        dst: SNAT,
        sport: backend_port,
        dport: snat_port,
        ack: true,
        payload: payload.to_vec(),
        ..client.clone()
    }
}

/// The reply as the client must get it: from the VIP and its port.
fn untranslated_reply(client: &Spec, payload: &[u8]) -> Vec<u8> {
    Spec {
        src_mac: lb_mac(),
        dst_mac: client.src_mac,
        src: client.dst,
        dst: client.src,
        sport: client.dport,
        dport: client.sport,
        ack: true,
        payload: payload.to_vec(),
        ..client.clone()
    }
    .build()
}

/// Runs `frame`, expects XDP_TX with valid checksums, returns the output.
fn tx(dp: &mut Datapath, frame: &[u8], what: &str) -> Vec<u8> {
    let (action, out) = dp.test_run(frame).expect("test run");
    assert_eq!(action, XDP_TX, "{what}: action");
    check_checksums(&out).unwrap_or_else(|e| panic!("{what}: {e}"));
    out
}

#[test]
fn tcp_forward_and_reply_are_translated_byte_exact() {
    let mut dp = datapath(2, 30);
    let syn = Spec::default();
    let out = tx(&mut dp, &syn.build(), "SYN");
    let port = source_port(&out);
    assert!((1024..=32767).contains(&port), "SNAT port {port} in range");
    assert_eq!(out, translated(&syn, 11, 8080, port), "SYN translated");

    // The state holds what the reverse path needs.
    let states = dp.nat_flows().expect("NAT_FLOWS");
    assert_eq!(states.len(), 1);
    let (key, st) = states[0];
    assert_eq!(key.src_be, u32::from_ne_bytes(syn.src));
    assert_eq!(st.snat_port_be, port.to_be());
    assert_eq!(st.backend_port_be, 8080u16.to_be());
    assert_eq!(st.client_mac, client_mac());
    let reverse = dp.nat_reverse().expect("NAT_REVERSE");
    assert_eq!(reverse.len(), 1);
    assert_eq!(reverse[0].1.flow, key);
    assert_eq!(reverse[0].1.nonce, st.nonce);

    // The SYN-ACK goes back to the client, from the VIP.
    let synack = reply(&syn, 11, 8080, port, b"");
    let back = tx(&mut dp, &synack.build(), "SYN-ACK");
    assert_eq!(back, untranslated_reply(&syn, b""), "reply translated back");

    // The client's next segment takes the flow-first path: same SNAT port.
    let ack = Spec {
        ack: true,
        ..syn.clone()
    };
    let out = tx(&mut dp, &ack.build(), "ACK");
    assert_eq!(out, translated(&ack, 11, 8080, port), "ACK translated");
    let data = reply(&syn, 11, 8080, port, &[0x42; 1000]);
    let back = tx(&mut dp, &data.build(), "reply data");
    assert_eq!(back, untranslated_reply(&syn, &[0x42; 1000]));

    // IP options move nothing: the L4 header is found at IHL * 4.
    let opts = Spec {
        ack: true,
        ip_options: vec![1, 1, 1, 1],
        ..syn.clone()
    };
    let out = tx(&mut dp, &opts.build(), "with IP options");
    assert_eq!(out, translated(&opts, 11, 8080, port));

    let stats = dp.stats(4, 8).expect("counters");
    assert_eq!(stats.reason(Reason::Forwarded).packets, 3);
    assert_eq!(stats.reason(Reason::ForwardedReply).packets, 2);
}

#[test]
fn udp_is_translated_with_the_zero_checksum_rule() {
    let mut dp = datapath(2, 30);
    let query = Spec {
        l4: L4::Udp,
        dst: [192, 0, 2, 20],
        dport: 53,
        payload: b"query".to_vec(),
        ..Spec::default()
    };
    let out = tx(&mut dp, &query.build(), "UDP");
    let port = source_port(&out);
    assert_eq!(out, translated(&query, 21, 53, port));
    let answer = reply(&query, 21, 53, port, b"answer");
    assert_eq!(
        tx(&mut dp, &answer.build(), "UDP reply"),
        untranslated_reply(&query, b"answer")
    );

    // A zero checksum (none, allowed over IPv4) stays zero either way.
    let udp_check = |f: &mut [u8]| {
        let at = 14 + 20 + 6;
        f[at] = 0;
        f[at + 1] = 0;
    };
    let mut frame = query.build();
    udp_check(&mut frame);
    let (action, out) = dp.test_run(&frame).expect("test run");
    assert_eq!(action, XDP_TX);
    let mut want = translated(&query, 21, 53, port);
    udp_check(&mut want);
    assert_eq!(out, want, "zero UDP checksum stays zero");

    // A checksum that computes to 0 is sent as 0xffff: find a client
    // payload whose translation etherparse checksums to 0xffff (its way of
    // writing a computed 0), send it, and compare.
    let mut found = false;
    for n in 0..=u16::MAX {
        let probe = Spec {
            payload: n.to_be_bytes().to_vec(),
            ..query.clone()
        };
        let want = translated(&probe, 21, 53, port);
        if want[14 + 20 + 6..14 + 20 + 8] == [0xff, 0xff] {
            let out = tx(&mut dp, &probe.build(), "UDP computing to zero");
            assert_eq!(out, want, "a computed zero UDP checksum is 0xffff");
            found = true;
            break;
        }
    }
    assert!(found, "some 2-byte payload gives a zero checksum");
}

#[test]
fn fin_both_ways_ends_the_state_after_the_linger_and_udp_idles_out() {
    let mut dp = datapath(1, 1);
    let syn = Spec::default();
    let port = source_port(&tx(&mut dp, &syn.build(), "SYN"));
    let query = Spec {
        l4: L4::Udp,
        dst: [192, 0, 2, 20],
        dport: 53,
        ..Spec::default()
    };
    let udp_port = source_port(&tx(&mut dp, &query.build(), "UDP"));

    // FIN from the client, FIN from the backend: closed, still translated
    // during the linger (the last ACKs must get through).
    let mut fin = Spec {
        ack: true,
        ..syn.clone()
    }
    .build();
    fin[14 + 20 + 13] |= 0x01;
    fix_tcp_checksum(&mut fin);
    tx(&mut dp, &fin, "client FIN");
    let mut fin_back = reply(&syn, 11, 8080, port, b"").build();
    fin_back[14 + 20 + 13] |= 0x01;
    fix_tcp_checksum(&mut fin_back);
    tx(&mut dp, &fin_back, "backend FIN");
    let st = dp.nat_flows().expect("NAT_FLOWS");
    let tcp_state = st
        .iter()
        .find(|(k, _)| k.proto == 6)
        .expect("the TCP state")
        .1;
    assert_ne!(tcp_state.flags & NAT_CLOSED, 0, "FIN both ways closes");
    let last_ack = reply(&syn, 11, 8080, port, b"").build();
    tx(&mut dp, &last_ack, "ACK during the linger");

    // Linger (1 s) and UDP idle (1 s) over, with slack for the coarse clock.
    std::thread::sleep(Duration::from_millis(2500));
    for (frame, what) in [
        (last_ack, "TCP reply after the linger"),
        (
            reply(&query, 21, 53, udp_port, b"late").build(),
            "UDP reply after idling out",
        ),
    ] {
        let (action, out) = dp.test_run(&frame).expect("test run");
        assert_eq!(
            (action, &out),
            (XDP_PASS, &frame),
            "{what}: passed untouched"
        );
    }
    // The stale reverse entries were removed by the replies that met them.
    assert!(dp.nat_reverse().expect("NAT_REVERSE").is_empty());
    // A new SYN on the same 5-tuple gets new state (a new nonce).
    tx(&mut dp, &syn.build(), "new SYN");
    let fresh = dp.nat_flows().expect("NAT_FLOWS");
    let fresh = fresh.iter().find(|(k, _)| k.proto == 6).expect("state").1;
    assert_ne!(fresh.nonce, tcp_state.nonce);
    assert_eq!(fresh.flags & NAT_CLOSED, 0);
}

/// Recomputes a TCP checksum after a test edited a flag (etherparse).
fn fix_tcp_checksum(frame: &mut [u8]) {
    let copy = frame.to_vec();
    let sliced = etherparse::SlicedPacket::from_ethernet(&copy).expect("parses");
    let Some(etherparse::NetSlice::Ipv4(ip)) = &sliced.net else {
        panic!("IPv4")
    };
    let ip = ip.header().to_header();
    let Some(etherparse::TransportSlice::Tcp(tcp)) = &sliced.transport else {
        panic!("TCP")
    };
    let sum = tcp
        .to_header()
        .calc_checksum_ipv4(&ip, tcp.payload())
        .expect("checksum");
    let at = 14 + ip.header_len() + 16;
    frame[at..at + 2].copy_from_slice(&sum.to_be_bytes());
}

#[test]
fn replies_nobody_asked_for_pass_untouched() {
    let mut dp = datapath(2, 30);
    // To the SNAT address (the node's own), no NAT state: the node's stack.
    for (spec, what) in [
        (
            reply(&Spec::default(), 11, 8080, 20000, b""),
            "unknown TCP reply",
        ),
        (
            Spec {
                dport: 22,
                ..reply(&Spec::default(), 11, 8080, 20000, b"")
            },
            "ssh to the node",
        ),
        (
            Spec {
                l4: L4::Icmp,
                ..reply(&Spec::default(), 11, 8080, 20000, b"")
            },
            "ping to the node",
        ),
    ] {
        let frame = spec.build();
        let (action, out) = dp.test_run(&frame).expect("test run");
        assert_eq!((action, out), (XDP_PASS, frame), "{what}");
    }
    // A fragment to the SNAT address is the node's too (not a VIP address).
    let frag = Spec {
        more_fragments: true,
        ..reply(&Spec::default(), 11, 8080, 20000, b"")
    }
    .build();
    assert_eq!(dp.test_run(&frag).expect("test run").0, XDP_PASS);
    let stats = dp.stats(4, 8).expect("counters");
    assert_eq!(stats.reason(Reason::NotVip).packets, 4);
}

#[test]
fn dsr_vips_beside_nat_ones_are_untouched() {
    let mut dp = datapath(2, 30);
    let spec = Spec {
        dst: [192, 0, 2, 60],
        ..Spec::default()
    };
    let want = Spec {
        src_mac: lb_mac(),
        dst_mac: backend_mac(61),
        ..spec.clone()
    }
    .build();
    for ack in [false, true] {
        let frame = Spec {
            ack,
            ..spec.clone()
        };
        let want = Spec {
            ack,
            src_mac: lb_mac(),
            dst_mac: backend_mac(61),
            ..spec.clone()
        }
        .build();
        assert_eq!(tx(&mut dp, &frame.build(), "DSR"), want);
    }
    assert_eq!(want.len(), spec.build().len());
    assert!(dp.nat_flows().expect("NAT_FLOWS").is_empty());
}

#[test]
fn ten_thousand_client_ports_get_distinct_snat_ports() {
    let mut dp = datapath(2, 30);
    let mut ports = HashSet::new();
    for i in 0..10_000u16 {
        let syn = Spec {
            sport: 1024 + i,
            payload: Vec::new(),
            ..Spec::default()
        };
        let out = tx(&mut dp, &syn.build(), "SYN");
        let port = source_port(&out);
        assert!((1024..=32767).contains(&port));
        assert!(ports.insert(port), "SNAT port {port} handed out twice");
    }
    assert_eq!(dp.nat_reverse().expect("NAT_REVERSE").len(), 10_000);
    let stats = dp.stats(4, 8).expect("counters");
    assert_eq!(stats.reason(Reason::NatPortsExhausted).packets, 0);
}

#[test]
fn a_full_port_range_drops_new_flows_as_exhausted() {
    let mut dp = datapath_with("snat_ports = \"30000-30003\"");
    let mut ports = HashSet::new();
    for i in 0..4u16 {
        let syn = Spec {
            dst: [192, 0, 2, 50],
            sport: 50000 + i,
            ..Spec::default()
        };
        ports.insert(source_port(&tx(&mut dp, &syn.build(), "SYN")));
    }
    assert_eq!(ports, (30000..=30003).collect::<HashSet<u16>>());
    let fifth = Spec {
        dst: [192, 0, 2, 50],
        sport: 50004,
        ..Spec::default()
    };
    let (action, _) = dp.test_run(&fifth.build()).expect("test run");
    assert_eq!(action, XDP_DROP);
    let stats = dp.stats(4, 8).expect("counters");
    assert_eq!(stats.reason(Reason::NatPortsExhausted).packets, 1);
    // An existing flow keeps its port.
    let again = Spec {
        dst: [192, 0, 2, 50],
        sport: 50000,
        ack: true,
        ..Spec::default()
    };
    let port = source_port(&tx(&mut dp, &again.build(), "existing flow"));
    assert!(ports.contains(&port));
}

/// A NAT VIP that serves every UDP port of its address and uses that
/// address as its SNAT address: a backend's stray datagram to an SNAT
/// port nobody holds is a client flow of that VIP, with a flow entry. A
/// later client flow given that port must still get its replies translated
/// back, byte for byte: the reply check comes before the flow table
/// (docs/DATAPATH.md), so such a flow entry must not take the flow-first
/// path. Found by the reference-model fuzzer (seed 1).
#[test]
fn replies_to_a_port_0_vip_on_its_snat_address_are_translated_not_flows() {
    const ANY: &str = r#"
        [datapath]
        snat_address = "10.0.0.1"

        [[vip]]
        name = "any"
        address = "192.0.2.70"
        port = 0
        protocol = "udp"
        forwarding = "nat"
        snat_address = "192.0.2.70"
        [[vip.backend]]
        address = "10.0.0.71"
        port = 5353
    "#;
    let load = || {
        let config = config::parse(ANY).expect("test config is valid");
        let macs = [(Ipv4Addr::new(10, 0, 0, 71).into(), backend_mac(71))]
            .into_iter()
            .collect();
        let plan = State::build(&state::saved_from_config(&config), &macs)
            .expect("MACs given")
            .plan();
        let mut dp = Datapath::load(&LoadOptions {
            lb_mac: lb_mac(),
            ..LoadOptions::default()
        })
        .expect("loading the XDP program (are you root?)");
        dp.apply(&plan).expect("programming the maps");
        dp
    };
    let vip = [192, 0, 2, 70];
    let client = Spec {
        l4: L4::Udp,
        dst: vip,
        dport: 53,
        payload: b"query".to_vec(),
        ..Spec::default()
    };
    // The SNAT port the client's flow gets (a fresh datapath, same seed).
    let port = source_port(&tx(&mut load(), &client.build(), "probe"));

    let mut dp = load();
    let from_backend = |payload: &[u8]| Spec {
        l4: L4::Udp,
        src_mac: backend_mac(71),
        dst_mac: lb_mac(),
        src: [10, 0, 0, 71],
        dst: vip,
        sport: 5353,
        dport: port,
        payload: payload.to_vec(),
        ..Spec::default()
    };
    // Before the client's flow: a stray to that port is the VIP's flow.
    tx(&mut dp, &from_backend(b"stray").build(), "stray");
    let out = tx(&mut dp, &client.build(), "client");
    let translated = Spec {
        src_mac: lb_mac(),
        dst_mac: backend_mac(71),
        src: vip,
        dst: [10, 0, 0, 71],
        sport: port,
        dport: 5353,
        ..client.clone()
    }
    .build();
    assert_eq!(out, translated, "the client's flow got the probed port");
    let out = tx(&mut dp, &from_backend(b"answer").build(), "answer");
    let untranslated = Spec {
        src_mac: lb_mac(),
        dst_mac: client.src_mac,
        src: vip,
        dst: client.src,
        sport: 53,
        dport: client.sport,
        payload: b"answer".to_vec(),
        ..client.clone()
    }
    .build();
    assert_eq!(out, untranslated, "the answer goes back to the client");
    let replies = dp
        .stats(0, 0)
        .expect("stats")
        .reasons
        .iter()
        .find(|(name, _)| *name == Reason::ForwardedReply.name())
        .map_or(0, |(_, c)| c.packets);
    assert_eq!(replies, 1, "counted forwarded_reply");
}
