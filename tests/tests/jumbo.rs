//! Jumbo frames (docs/DATAPATH.md, "Multi-buffer frames"). Under
//! BPF_PROG_TEST_RUN: a 9000-byte IP packet (a 9014-byte frame, which the
//! kernel splits over a linear part and page fragments for a frags-aware
//! program) is forwarded intact in `dsr`, `nat` (both ways) and `ipip`,
//! byte for byte as etherparse builds it, with the whole frame's bytes in
//! the counters; a jumbo DF packet with no room for the outer header gets
//! frag-needed (the tail shrink frees the fragments). In the lab: every
//! link at MTU 9000, a transfer each way through the VIP in every mode,
//! intact, in jumbo frames. Needs root (loading BPF); the lab tests run
//! under `flock -o /tmp/foobar-lab.lock`.
use std::{collections::HashMap, net::Ipv4Addr};

use etherparse::{
    icmpv4::DestUnreachableHeader, Icmpv4Type, IpHeaders, IpNumber, Ipv4Extensions, Ipv4Header,
    Ipv4HeaderSlice, PacketBuilder, SlicedPacket, TransportSlice,
};
use foobar::{
    config,
    datapath::{Datapath, LoadOptions},
    plan::Plan,
    state::{self, State},
};
use foobar_common::Reason;
use foobar_tests::frames::{check_checksums, Spec};

const XDP_TX: u32 = 3;
/// The jumbo MTU: the largest IP packet of the tests.
const JUMBO: usize = 9000;
/// IPv4 + TCP headers of the fixtures (no options).
const HEADERS: usize = 40;
const SNAT: [u8; 4] = [10, 0, 0, 1];
const IPIP_SOURCE: [u8; 4] = [10, 9, 0, 1];

/// One VIP per mode, one backend each; a single-address `ipip` source, so
/// the outer source is that address.
const CONFIG: &str = r#"
    [datapath]
    snat_address = "10.0.0.1"
    ipip_source = "10.9.0.1/32"

    [[vip]]
    name = "dsr"
    address = "192.0.2.10"
    port = 80
    forwarding = "dsr"
    [[vip.backend]]
    address = "10.0.0.11"

    [[vip]]
    name = "nat"
    address = "192.0.2.20"
    port = 80
    forwarding = "nat"
    [[vip.backend]]
    address = "10.0.0.21"

    [[vip]]
    name = "ipip"
    address = "192.0.2.40"
    port = 80
    forwarding = "ipip"
    [[vip.backend]]
    address = "10.0.0.41"
"#;

fn backend_mac(last: u8) -> [u8; 6] {
    [0x02, 0xbe, 0, 0, 0, last]
}

fn lb_mac() -> [u8; 6] {
    Spec::default().dst_mac
}

/// The datapath with CONFIG, on an interface of MTU `mtu`.
fn datapath(mtu: u32) -> (Datapath, Plan) {
    let config = config::parse(CONFIG).expect("test config is valid");
    let macs: HashMap<Ipv4Addr, [u8; 6]> = [11, 21, 41]
        .into_iter()
        .map(|n| (Ipv4Addr::new(10, 0, 0, n), backend_mac(n)))
        .collect();
    let st = State::build(&state::saved_from_config(&config), &macs).expect("MACs known");
    let plan = st.plan();
    let mut dp = Datapath::load(&LoadOptions {
        lb_mac: lb_mac(),
        ipip_source: config.datapath.ipip_source,
        mtu,
        ..LoadOptions::default()
    })
    .expect("loading the XDP program (are you root? run `cargo xtask test`)");
    dp.apply(&plan).expect("programming the maps");
    (dp, plan)
}

fn vip_id(plan: &Plan, name: &str) -> u32 {
    plan.vips
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no VIP {name}"))
        .service
        .vip_id
}

/// A client's TCP segment to `dst` whose IP packet is `ip_len` bytes; the
/// payload is a pattern that differs at every offset a page boundary could
/// fall on, so a fragment lost, repeated or reordered shows.
fn segment(dst: [u8; 4], sport: u16, ip_len: usize) -> Spec {
    Spec {
        dst,
        sport,
        ack: true,
        payload: (0..ip_len - HEADERS)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ (i >> 8) as u8)
            .collect(),
        ..Spec::default()
    }
}

fn run(dp: &mut Datapath, frame: &[u8], what: &str) -> Vec<u8> {
    assert_eq!(frame.len(), 14 + JUMBO, "{what}: a jumbo frame");
    let (action, out) = dp.test_run(frame).expect("BPF_PROG_TEST_RUN");
    assert_eq!(action, XDP_TX, "{what}: action");
    out
}

/// The TCP source port etherparse reads in a frame.
fn source_port(frame: &[u8]) -> u16 {
    let sliced = SlicedPacket::from_ethernet(frame).expect("a frame etherparse reads");
    match sliced.transport {
        Some(TransportSlice::Tcp(t)) => t.source_port(),
        _ => panic!("not TCP"),
    }
}

#[test]
fn test_run_forwards_a_9000_byte_frame_intact_in_every_mode() {
    let (mut dp, plan) = datapath(JUMBO as u32 + 20);

    // dsr: only the MACs change.
    let dsr = segment([192, 0, 2, 10], 41000, JUMBO);
    let out = run(&mut dp, &dsr.build(), "dsr");
    let want = Spec {
        src_mac: lb_mac(),
        dst_mac: backend_mac(11),
        ..dsr.clone()
    }
    .build();
    assert!(out == want, "dsr: the frame differs from the expected one");

    // nat: DNAT + SNAT with incremental checksums, which etherparse checks
    // over the whole 8960-byte payload.
    let nat = segment([192, 0, 2, 20], 41001, JUMBO);
    let out = run(&mut dp, &nat.build(), "nat");
    check_checksums(&out).expect("nat: checksums");
    let port = source_port(&out);
    let want = Spec {
        src_mac: lb_mac(),
        dst_mac: backend_mac(21),
        src: SNAT,
        dst: [10, 0, 0, 21],
        sport: port,
        ..nat.clone()
    }
    .build();
    assert!(out == want, "nat: the frame differs from the expected one");
    // ... and the backend's jumbo reply goes back to the client.
    let reply = Spec {
        src_mac: backend_mac(21),
        dst_mac: lb_mac(),
        src: [10, 0, 0, 21],
        dst: SNAT,
        sport: 80,
        dport: port,
        ..segment([0; 4], 0, JUMBO)
    };
    let out = run(&mut dp, &reply.build(), "nat reply");
    check_checksums(&out).expect("nat reply: checksums");
    let want = Spec {
        src_mac: lb_mac(),
        dst_mac: nat.src_mac,
        src: nat.dst,
        dst: nat.src,
        sport: nat.dport,
        dport: nat.sport,
        ..reply.clone()
    }
    .build();
    assert!(out == want, "nat reply: the frame differs");

    // ipip: the packet untouched inside an outer header etherparse builds.
    let ipip = segment([192, 0, 2, 40], 41002, JUMBO);
    let input = ipip.build();
    let out = run(&mut dp, &input, "ipip");
    let mut outer = Ipv4Header::new(
        JUMBO as u16,
        64,
        IpNumber::IPV4,
        IPIP_SOURCE,
        [10, 0, 0, 41],
    )
    .expect("the inner packet fits");
    outer.dont_fragment = true;
    outer.identification = 0;
    outer.header_checksum = outer.calc_header_checksum();
    let mut want = Vec::new();
    want.extend_from_slice(&backend_mac(41));
    want.extend_from_slice(&lb_mac());
    want.extend_from_slice(&[0x08, 0x00]);
    want.extend_from_slice(&outer.to_bytes());
    want.extend_from_slice(&input[14..]);
    assert_eq!(out.len(), 14 + 20 + JUMBO);
    assert!(out == want, "ipip: the frame differs from the expected one");
    let outer = Ipv4HeaderSlice::from_slice(&out[14..]).expect("outer IPv4");
    assert_eq!(usize::from(outer.total_len()), 20 + JUMBO);

    // The counters hold the whole frames (as sent), not the linear parts.
    let stats = dp.stats(plan.vips.len(), plan.backends.len()).unwrap();
    let frame = (14 + JUMBO) as u64;
    assert_eq!(stats.vip(vip_id(&plan, "dsr")).bytes, frame);
    assert_eq!(stats.vip(vip_id(&plan, "nat")).bytes, frame);
    assert_eq!(stats.vip(vip_id(&plan, "ipip")).bytes, frame + 20);
    assert_eq!(stats.reason(Reason::Forwarded).packets, 3);
    assert_eq!(stats.reason(Reason::Forwarded).bytes, 3 * frame + 20);
    assert_eq!(stats.reason(Reason::ForwardedReply).packets, 1);
    assert_eq!(stats.reason(Reason::ForwardedReply).bytes, frame);
    assert_eq!(stats.reason(Reason::Malformed).packets, 0);
}

/// An `ipip` VIP on a 9000-byte MTU: a full-size DF packet has no room for
/// the outer header and gets frag-needed (MTU 8980); the reply is cut from
/// a frame whose tail lies in fragments.
#[test]
fn test_run_a_jumbo_packet_without_room_for_the_tunnel_gets_frag_needed() {
    let (mut dp, plan) = datapath(JUMBO as u32);
    let big = segment([192, 0, 2, 40], 41003, JUMBO);
    let input = big.build();
    let out = run(&mut dp, &input, "ipip, no room");
    let mut ip = Ipv4Header::new(0, 64, IpNumber::ICMP, big.dst, big.src).unwrap();
    ip.dont_fragment = false;
    let mut want = Vec::new();
    PacketBuilder::ethernet2(lb_mac(), big.src_mac)
        .ip(IpHeaders::Ipv4(ip, Ipv4Extensions::default()))
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            DestUnreachableHeader::FragmentationNeeded {
                next_hop_mtu: (JUMBO - 20) as u16,
            },
        ))
        .write(&mut want, &input[14..14 + 20 + 8])
        .unwrap();
    assert_eq!(out, want, "frag-needed: byte-exact");
    check_checksums(&out).expect("IPv4 and ICMP checksums");
    let stats = dp.stats(plan.vips.len(), plan.backends.len()).unwrap();
    assert_eq!(stats.reason(Reason::IcmpFragNeededSent).packets, 1);
    assert_eq!(stats.reason(Reason::Forwarded).packets, 0);
}
