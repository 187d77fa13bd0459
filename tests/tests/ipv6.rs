//! IPv6 VIPs under BPF_PROG_TEST_RUN (docs/IPV6.md): `dsr` and `ipip`
//! (IPv6-in-IPv6) forwarding, the extension-header policy, fragments,
//! neighbour discovery, ICMPv6 errors following their flow, packet too big,
//! the flow-first path under VIP generations, and the IPv4 VIP beside them
//! untouched. Frames are built and expected outputs written with
//! etherparse, never with foobar's code; checksums are verified by
//! etherparse too. The maps are programmed from a plan built here, as
//! `State::plan` would build it. Needs root (loading BPF).
use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv6Addr,
};

use etherparse::{
    Icmpv6Header, Icmpv6Type, IpNumber, Ipv6Header, NetSlice, PacketBuilder, SlicedPacket,
    TransportSlice,
};
use foobar::{
    datapath::{Datapath, LoadOptions},
    plan::{Plan, PlannedVip},
};
use foobar_common::{
    flow_hash6, Backend, FlowKey6, Reason, Service, VipAddrKey, VipAddrKey6, VipKey, AF_INET,
    AF_INET6, BACKEND_NEW_FLOWS, BACKEND_UP, FWD_DSR, FWD_IPIP, IPPROTO_TCP, SCHED_MAGLEV,
    SCHED_RR,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const SEED: u32 = 7;
const MTU: u32 = 1500;

const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
const CLIENT: &str = "2001:db8:c::7";
/// rr, dsr: backends 0 and 1.
const WEB: &str = "2001:db8::10";
/// maglev, dsr: backends 2, 3, 4 over a 7-slot ring.
const HASHED: &str = "2001:db8::20";
/// rr, ipip: backends 5 and 6.
const TUNNEL: &str = "2001:db8::40";
/// The outer sources of IPv6 ipip: 2001:db8:9::/120.
const SOURCE6: &str = "2001:db8:9::";
const SOURCE6_LEN: u8 = 120;
const MAGLEV_RING: [u32; 7] = [2, 3, 4, 2, 3, 4, 3];

fn ip6(s: &str) -> [u8; 16] {
    s.parse::<Ipv6Addr>().expect("test address").octets()
}

/// An address as the maps hold it: four words in packet order.
fn words(a: [u8; 16]) -> [u32; 4] {
    std::array::from_fn(|i| u32::from_ne_bytes(a[4 * i..4 * i + 4].try_into().unwrap()))
}

fn backend_addr(id: u32) -> [u8; 16] {
    ip6(&format!("2001:db8:1::{}", 11 + id))
}

fn backend_mac(id: u32) -> [u8; 6] {
    [0x02, 0xbe, 0, 0, 0, 11 + id as u8]
}

fn vip6(
    name: &str,
    addr: &str,
    vip_id: u32,
    scheduler: u8,
    forward_mode: u8,
    ids: &[u32],
    ring: &[u32],
) -> PlannedVip {
    PlannedVip {
        name: name.into(),
        key: VipKey {
            addr_be: words(ip6(addr)),
            port_be: 80u16.to_be(),
            proto: IPPROTO_TCP,
            family: AF_INET6,
            vlan: 0,
            _pad: 0,
        },
        service: Service {
            vip_id,
            scheduler,
            forward_mode,
            ..Service::default()
        },
        backend_ids: ids.to_vec(),
        ring: ring.to_vec(),
    }
}

/// Three IPv6 VIPs and, beside them, the IPv4 VIP 192.0.2.10:80 (id 3,
/// backend 7 = 10.0.0.11).
fn plan() -> Plan {
    let mut backends = BTreeMap::new();
    for id in 0..7 {
        backends.insert(
            id,
            Backend {
                addr_be: words(backend_addr(id)),
                mac: backend_mac(id),
                family: AF_INET6,
                flags: BACKEND_UP | BACKEND_NEW_FLOWS,
                gen: 100 + id,
                egress_ifindex: 0,
            },
        );
    }
    backends.insert(
        7,
        Backend {
            addr_be: [u32::from_ne_bytes([10, 0, 0, 11]), 0, 0, 0],
            mac: backend_mac(7),
            family: AF_INET,
            flags: BACKEND_UP | BACKEND_NEW_FLOWS,
            gen: 107,
            egress_ifindex: 0,
        },
    );
    let v4 = PlannedVip {
        name: "v4".into(),
        key: VipKey {
            addr_be: [u32::from_ne_bytes([192, 0, 2, 10]), 0, 0, 0],
            port_be: 80u16.to_be(),
            proto: IPPROTO_TCP,
            family: AF_INET,
            vlan: 0,
            _pad: 0,
        },
        service: Service {
            vip_id: 3,
            ..Service::default()
        },
        backend_ids: vec![7],
        ring: vec![7],
    };
    let vips = vec![
        vip6("web", WEB, 0, SCHED_RR, FWD_DSR, &[0, 1], &[0, 1]),
        vip6(
            "hashed",
            HASHED,
            1,
            SCHED_MAGLEV,
            FWD_DSR,
            &[2, 3, 4],
            &MAGLEV_RING,
        ),
        vip6("tunnel", TUNNEL, 2, SCHED_RR, FWD_IPIP, &[5, 6], &[5, 6]),
        v4,
    ];
    let addresses6 = [WEB, HASHED, TUNNEL]
        .into_iter()
        .map(|a| {
            let key = VipAddrKey6 {
                addr_be: words(ip6(a)),
                vlan: 0,
                _pad: 0,
            };
            (key, 0)
        })
        .collect();
    let addresses = HashMap::from([(
        VipAddrKey {
            addr_be: u32::from_ne_bytes([192, 0, 2, 10]),
            vlan: 0,
            _pad: 0,
        },
        0,
    )]);
    Plan {
        vips,
        backends,
        addresses,
        addresses6,
        ..Plan::default()
    }
}

fn datapath() -> (Datapath, Plan) {
    pin_to_one_cpu();
    let mut dp = Datapath::load(&LoadOptions {
        lb_mac: LB_MAC,
        hash_seed: SEED,
        mtu: MTU,
        ipip_source6: Some((SOURCE6.parse().unwrap(), SOURCE6_LEN)),
        ..LoadOptions::default()
    })
    .expect("loading the XDP program (are you root? run `cargo xtask test`)");
    let plan = plan();
    dp.apply(&plan).expect("programming the maps");
    (dp, plan)
}

/// The per-CPU round-robin cursor must be the same CPU's on every run.
fn pin_to_one_cpu() {
    let mut set = nix::sched::CpuSet::new();
    let cpu = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .ok()
        .and_then(|s| (0..nix::sched::CpuSet::count()).find(|&c| s.is_set(c).unwrap_or(false)))
        .unwrap_or(0);
    set.set(cpu).expect("cpu index in range");
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).expect("pinning to one CPU");
}

/// A TCP segment from the client to `vip`:80 (SYN, or ACK with `ack`).
fn tcp(vip: &str, sport: u16, ack: bool, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv6(ip6(CLIENT), ip6(vip), 64)
        .tcp(sport, 80, 1000, 64240);
    let b = if ack { b.ack(1) } else { b.syn() };
    let mut out = Vec::new();
    b.write(&mut out, payload).expect("etherparse writes");
    out
}

/// `frame` with extension headers (each `[next, len, data...]` of 8 bytes,
/// `next` filled in here) between the IPv6 header and its payload.
fn with_ext(frame: &[u8], exts: &[(u8, [u8; 6])]) -> Vec<u8> {
    let (head, rest) = frame.split_at(14 + 40);
    let mut out = head.to_vec();
    let l4_proto = out[14 + 6];
    for (i, (kind, data)) in exts.iter().enumerate() {
        let next = exts.get(i + 1).map_or(l4_proto, |e| e.0);
        out.push(next);
        out.push(0);
        out.extend_from_slice(data);
        if i == 0 {
            out[14 + 6] = *kind;
        }
    }
    out.extend_from_slice(rest);
    let plen = (out.len() - 14 - 40) as u16;
    out[18..20].copy_from_slice(&plen.to_be_bytes());
    out
}

/// DSR: the frame with only its Ethernet addresses rewritten.
fn dsr(frame: &[u8], id: u32) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[..6].copy_from_slice(&backend_mac(id));
    out[6..12].copy_from_slice(&LB_MAC);
    out
}

/// Checks every checksum etherparse can see in an IPv6 frame (TCP, UDP,
/// ICMPv6, through extension headers).
fn check6(frame: &[u8]) {
    let sliced = SlicedPacket::from_ethernet(frame).expect("etherparse parses the frame");
    let Some(NetSlice::Ipv6(ip)) = &sliced.net else {
        panic!("not IPv6");
    };
    let h = ip.header().to_header();
    match &sliced.transport {
        Some(TransportSlice::Tcp(t)) => {
            let want = t
                .to_header()
                .calc_checksum_ipv6(&h, t.payload())
                .expect("length fits");
            assert_eq!(t.checksum(), want, "TCP checksum");
        }
        Some(TransportSlice::Udp(u)) => {
            let want = u
                .to_header()
                .calc_checksum_ipv6(&h, u.payload())
                .expect("length fits");
            assert_eq!(u.checksum(), want, "UDP checksum");
        }
        Some(TransportSlice::Icmpv6(i)) => {
            let want = i
                .icmp_type()
                .calc_checksum(h.source, h.destination, i.payload())
                .expect("length fits");
            assert_eq!(i.checksum(), want, "ICMPv6 checksum");
        }
        other => panic!("unexpected transport {other:?}"),
    }
}

fn key(vip: &str, sport: u16) -> FlowKey6 {
    FlowKey6 {
        src_be: words(ip6(CLIENT)),
        dst_be: words(ip6(vip)),
        sport_be: sport.to_be(),
        dport_be: 80u16.to_be(),
        proto: IPPROTO_TCP,
        family: AF_INET6,
        _pad: [0; 2],
    }
}

#[test]
fn a_v6_dsr_flow_stays_on_its_backend_and_new_flows_go_round_robin() {
    let (mut dp, plan) = datapath();
    let syn = tcp(WEB, 40000, false, b"");
    let (action, out) = dp.test_run(&syn).expect("BPF_PROG_TEST_RUN");
    assert_eq!(action, XDP_TX);
    assert_eq!(out, dsr(&syn, 0), "SYN: only the MACs change");
    check6(&out);
    let entry = dp.flow6(&key(WEB, 40000)).unwrap().expect("a FLOWS6 entry");
    assert_eq!((entry.backend_id, entry.vip_id), (0, 0));
    assert_ne!(entry.vip_gen, 0, "recorded with the VIP's generation");

    // The next segments take the flow-first path to the same backend.
    for n in 0..3 {
        let ack = tcp(WEB, 40000, true, format!("GET /{n}").as_bytes());
        let (action, out) = dp.test_run(&ack).expect("BPF_PROG_TEST_RUN");
        assert_eq!(action, XDP_TX);
        assert_eq!(out, dsr(&ack, 0), "ACK {n}");
        check6(&out);
    }
    // A new flow: round-robin's next backend.
    let other = tcp(WEB, 40001, false, b"");
    let (action, out) = dp.test_run(&other).expect("BPF_PROG_TEST_RUN");
    assert_eq!(action, XDP_TX);
    assert_eq!(out, dsr(&other, 1));

    // UDP to a TCP-only VIP's address: a closed port.
    let mut udp = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv6(ip6(CLIENT), ip6(WEB), 64)
        .udp(5000, 80)
        .write(&mut udp, b"x")
        .unwrap();
    assert_eq!(dp.test_run(&udp).unwrap(), (XDP_DROP, udp.clone()));

    let stats = dp.stats(plan.vips.len(), plan.backends.len()).unwrap();
    assert_eq!(stats.reason(Reason::Forwarded).packets, 5);
    assert_eq!(stats.reason(Reason::ClosedPort).packets, 1);
    assert_eq!(stats.vips[0].packets, 5);
    assert_eq!(stats.backends[0].packets, 4);
    assert_eq!(stats.backends[1].packets, 1);
    assert_eq!(dp.flows6_len(), 2);
    assert_eq!(
        dp.flow_usage(0).unwrap().entries,
        0,
        "the IPv4 flow table got nothing"
    );
}

#[test]
fn maglev_over_v6_flows_indexes_the_ring_by_flow_hash6() {
    let (mut dp, _) = datapath();
    let mut seen = std::collections::HashSet::new();
    for sport in 41000..41032u16 {
        let syn = tcp(HASHED, sport, false, b"");
        let (action, out) = dp.test_run(&syn).expect("BPF_PROG_TEST_RUN");
        assert_eq!(action, XDP_TX);
        let slot = flow_hash6(&key(HASHED, sport), SEED) % MAGLEV_RING.len() as u32;
        let want = MAGLEV_RING[slot as usize];
        assert_eq!(out, dsr(&syn, want), "sport {sport}");
        seen.insert(want);
    }
    assert_eq!(seen.len(), 3, "32 flows reach every backend");
}

#[test]
fn extension_headers_are_walked_or_passed_and_fragments_dropped() {
    let (mut dp, plan) = datapath();
    let hbh = (0u8, [1, 4, 0, 0, 0, 0]); // hop-by-hop, a PadN option
    let dst = (60u8, [1, 4, 0, 0, 0, 0]); // destination options
    let route0 = (43u8, [0, 0, 0, 0, 0, 0]); // routing, segments left 0
    let route1 = (43u8, [0, 1, 0, 0, 0, 0]); // segments left 1
    let frag = (44u8, [0, 0, 0, 0, 0, 1]); // fragment, offset 0, id 1

    let syn = with_ext(&tcp(WEB, 42000, false, b""), &[hbh, dst, route0]);
    let (action, out) = dp.test_run(&syn).expect("BPF_PROG_TEST_RUN");
    assert_eq!(action, XDP_TX, "three walked headers");
    assert_eq!(out, dsr(&syn, 0));
    check6(&out);

    let four = with_ext(&tcp(WEB, 42001, false, b""), &[hbh, dst, dst, dst]);
    assert_eq!(dp.test_run(&four).unwrap().0, XDP_TX, "four: the bound");

    let cases: Vec<(&str, Vec<u8>, u32, Reason)> = vec![
        (
            "five extension headers: left to the kernel",
            with_ext(&tcp(WEB, 42002, false, b""), &[hbh, dst, dst, dst, dst]),
            XDP_PASS,
            Reason::Ipv6,
        ),
        (
            "a routing header with segments left",
            with_ext(&tcp(WEB, 42003, false, b""), &[route1]),
            XDP_PASS,
            Reason::Ipv6,
        ),
        (
            "a first fragment to a VIP address",
            with_ext(&tcp(WEB, 42004, false, b""), &[frag]),
            XDP_DROP,
            Reason::Fragment,
        ),
        (
            "a fragment after a hop-by-hop header",
            with_ext(&tcp(WEB, 42005, false, b""), &[hbh, frag]),
            XDP_DROP,
            Reason::Fragment,
        ),
        (
            "IPv6 to no VIP address",
            tcp("2001:db8::99", 42006, false, b""),
            XDP_PASS,
            Reason::Ipv6,
        ),
        (
            "an extension header running past the payload",
            {
                let mut f = with_ext(&tcp(WEB, 42007, false, b""), &[hbh]);
                f[14 + 41] = 200; // 1608 bytes long
                f
            },
            XDP_PASS,
            Reason::Malformed,
        ),
        (
            "a payload length beyond the frame",
            {
                let mut f = tcp(WEB, 42008, false, b"");
                f[18..20].copy_from_slice(&1000u16.to_be_bytes());
                f
            },
            XDP_PASS,
            Reason::Malformed,
        ),
    ];
    let before = dp.stats(plan.vips.len(), plan.backends.len()).unwrap();
    for (name, frame, action, _) in &cases {
        let (got, out) = dp.test_run(frame).expect("BPF_PROG_TEST_RUN");
        assert_eq!(got, *action, "{name}");
        assert_eq!(&out, frame, "{name}: untouched");
    }
    let after = dp.stats(plan.vips.len(), plan.backends.len()).unwrap();
    for reason in [Reason::Ipv6, Reason::Fragment, Reason::Malformed] {
        let want = cases.iter().filter(|c| c.3 == reason).count() as u64;
        assert_eq!(
            after.reason(reason).packets - before.reason(reason).packets,
            want,
            "{reason:?}"
        );
    }
}

/// An ICMPv6 message from `from` to `to` (a VIP) of type `icmp`, quoting
/// `quoted`.
fn icmp6(from: [u8; 16], to: &str, icmp: Icmpv6Type, quoted: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv6(from, ip6(to), 255)
        .icmpv6(icmp)
        .write(&mut out, quoted)
        .expect("etherparse writes");
    out
}

#[test]
fn neighbour_discovery_and_echo_to_a_vip_address_go_to_the_kernel() {
    let (mut dp, plan) = datapath();
    let router = ip6("fe80::1");
    let ns_body = [&[0u8; 4][..], &ip6(WEB)].concat(); // reserved, target
    let frames = [
        icmp6(
            router,
            WEB,
            Icmpv6Type::Unknown {
                type_u8: 135,
                code_u8: 0,
                bytes5to8: [0; 4],
            },
            &ip6(WEB),
        ),
        icmp6(
            router,
            WEB,
            Icmpv6Type::Unknown {
                type_u8: 136,
                code_u8: 0,
                bytes5to8: [0x60, 0, 0, 0],
            },
            &ip6(WEB),
        ),
        icmp6(
            router,
            WEB,
            Icmpv6Type::Unknown {
                type_u8: 134,
                code_u8: 0,
                bytes5to8: [64, 0, 7, 8],
            },
            &[0; 8],
        ),
        icmp6(
            router,
            WEB,
            Icmpv6Type::Unknown {
                type_u8: 133,
                code_u8: 0,
                bytes5to8: [0; 4],
            },
            &[],
        ),
        icmp6(
            router,
            WEB,
            Icmpv6Type::Unknown {
                type_u8: 137,
                code_u8: 0,
                bytes5to8: [0; 4],
            },
            &ns_body,
        ),
        icmp6(
            ip6(CLIENT),
            WEB,
            Icmpv6Type::EchoRequest(etherparse::IcmpEchoHeader { id: 1, seq: 1 }),
            b"ping",
        ),
    ];
    for frame in &frames {
        let (action, out) = dp.test_run(frame).expect("BPF_PROG_TEST_RUN");
        assert_eq!(action, XDP_PASS, "type {}", frame[14 + 40]);
        assert_eq!(&out, frame);
    }
    let stats = dp.stats(plan.vips.len(), plan.backends.len()).unwrap();
    assert_eq!(stats.reason(Reason::OtherL4).packets, frames.len() as u64);
}

/// A router's packet too big about a reply of flow `sport` of `vip`.
fn too_big_about(vip: &str, sport: u16, mtu: u32) -> Vec<u8> {
    let mut reply = Vec::new();
    PacketBuilder::ipv6(ip6(vip), ip6(CLIENT), 64)
        .tcp(80, sport, 5000, 64240)
        .ack(1001)
        .write(&mut reply, &[0u8; 64])
        .unwrap();
    icmp6(
        ip6("2001:db8:ff::1"),
        vip,
        Icmpv6Type::PacketTooBig { mtu },
        &reply[..1232.min(reply.len())],
    )
}

#[test]
fn icmpv6_errors_follow_their_flow() {
    let (mut dp, plan) = datapath();
    // Two flows: backends 0 and 1.
    for sport in [43000, 43001] {
        let (action, _) = dp.test_run(&tcp(WEB, sport, false, b"")).unwrap();
        assert_eq!(action, XDP_TX);
    }
    for (sport, backend) in [(43001, 1), (43000, 0)] {
        let icmp = too_big_about(WEB, sport, 1280);
        let (action, out) = dp.test_run(&icmp).expect("BPF_PROG_TEST_RUN");
        assert_eq!(action, XDP_TX);
        assert_eq!(out, dsr(&icmp, backend), "packet too big about {sport}");
        check6(&out);
    }
    // Destination unreachable about the Maglev VIP's flow nobody saw: the
    // ring's choice for the flow, and nothing recorded.
    let mut reply = Vec::new();
    PacketBuilder::ipv6(ip6(HASHED), ip6(CLIENT), 64)
        .tcp(80, 43100, 5000, 64240)
        .write(&mut reply, b"")
        .unwrap();
    let icmp = icmp6(
        ip6("2001:db8:ff::1"),
        HASHED,
        Icmpv6Type::DestinationUnreachable(etherparse::icmpv6::DestUnreachableCode::Address),
        &reply,
    );
    let (action, out) = dp.test_run(&icmp).unwrap();
    assert_eq!(action, XDP_TX);
    let slot = flow_hash6(&key(HASHED, 43100), SEED) % MAGLEV_RING.len() as u32;
    assert_eq!(out, dsr(&icmp, MAGLEV_RING[slot as usize]));
    assert_eq!(dp.flow6(&key(HASHED, 43100)).unwrap(), None);
    // A quote cut short is malformed; one about no VIP passes.
    let short = icmp6(
        ip6("2001:db8:ff::1"),
        WEB,
        Icmpv6Type::PacketTooBig { mtu: 1280 },
        &reply[..44],
    );
    assert_eq!(dp.test_run(&short).unwrap().0, XDP_PASS);
    let stats = dp.stats(plan.vips.len(), plan.backends.len()).unwrap();
    assert_eq!(stats.reason(Reason::ForwardedIcmp).packets, 3);
    assert_eq!(stats.reason(Reason::Malformed).packets, 1);
}

#[test]
fn the_ipv4_vip_beside_v6_ones_is_served_as_before() {
    let (mut dp, _) = datapath();
    let syn = foobar_tests::frames::Spec::default().build();
    let (action, out) = dp.test_run(&syn).expect("BPF_PROG_TEST_RUN");
    assert_eq!(action, XDP_TX);
    assert_eq!(out, dsr(&syn, 7));
    // An IPv4 packet to an IPv6 VIP's prefilter word never matches: the
    // families have their own tables.
    assert_eq!(dp.flows6_len(), 0);
}

/// What `ipip` must send for `input`: Ethernet from the LB to the backend,
/// an outer IPv6 header built by etherparse, the input's packet untouched.
fn encapsulated6(input: &[u8], src: [u8; 16], id: u32) -> Vec<u8> {
    let inner = &input[14..];
    let inner_hdr = Ipv6Header::from_slice(inner).expect("IPv6 input").0;
    let outer = Ipv6Header {
        traffic_class: inner_hdr.traffic_class,
        flow_label: Default::default(),
        payload_length: inner.len() as u16,
        next_header: IpNumber::IPV6,
        hop_limit: 64,
        source: src,
        destination: backend_addr(id),
    };
    let mut out = Vec::new();
    out.extend_from_slice(&backend_mac(id));
    out.extend_from_slice(&LB_MAC);
    out.extend_from_slice(&input[12..14]);
    out.extend_from_slice(&outer.to_bytes());
    out.extend_from_slice(inner);
    out
}

/// The outer source docs/IPV6.md gives: the prefix with the host bits of
/// its last word from a hash of the client's address words (XOR-folded,
/// as read in the machine's little-endian order) and ports.
fn expected_source6(sport: u16) -> [u8; 16] {
    let c = words(ip6(CLIENT));
    let ports = u32::from(sport.to_be()) | u32::from(80u16.to_be()) << 16;
    let mut x = c[0] ^ c[1] ^ c[2] ^ c[3] ^ ports;
    x = x.wrapping_mul(0x9e37_79b1);
    x ^= x >> 16;
    let host = (u32::MAX >> (SOURCE6_LEN - 96)).to_be();
    let mut src = ip6(SOURCE6);
    let last = u32::from_ne_bytes(src[12..16].try_into().unwrap()) | (x & host);
    src[12..16].copy_from_slice(&last.to_ne_bytes());
    src
}

#[test]
fn a_v6_ipip_flow_leaves_inside_ipv6_to_its_backend() {
    let (mut dp, plan) = datapath();
    let mut sources = std::collections::HashSet::new();
    for (sport, id) in [(44000, 5), (44001, 6), (44002, 5)] {
        let syn = tcp(TUNNEL, sport, false, b"");
        let (action, out) = dp.test_run(&syn).expect("BPF_PROG_TEST_RUN");
        assert_eq!(action, XDP_TX);
        let src = expected_source6(sport);
        assert_eq!(&src[..15], &ip6(SOURCE6)[..15], "inside the /120");
        assert_eq!(out, encapsulated6(&syn, src, id), "sport {sport}");
        // The inner packet's checksums, read past the outer header.
        check6(&[&out[..14], &out[54..]].concat());
        let ack = tcp(TUNNEL, sport, true, b"data");
        let (_, again) = dp.test_run(&ack).unwrap();
        assert_eq!(again, encapsulated6(&ack, src, id), "the hit path");
        sources.insert(src);
    }
    assert_eq!(sources.len(), 3, "each flow its own source");
    // An ICMPv6 error about the first flow goes through the tunnel too.
    let icmp = too_big_about(TUNNEL, 44000, 1400);
    let (action, out) = dp.test_run(&icmp).unwrap();
    assert_eq!(action, XDP_TX);
    assert_eq!(out, encapsulated6(&icmp, expected_source6(44000), 5));
    let stats = dp.stats(plan.vips.len(), plan.backends.len()).unwrap();
    assert_eq!(stats.reason(Reason::Forwarded).packets, 6);
    assert_eq!(stats.reason(Reason::ForwardedIcmp).packets, 1);
}

#[test]
fn a_v6_packet_too_big_for_the_tunnel_gets_packet_too_big_back() {
    let (mut dp, plan) = datapath();
    // An inner packet of MTU − 40 + 1 bytes: one byte too many once
    // encapsulated.
    let payload = vec![0x5a; MTU as usize - 40 - 40 - 20 + 1];
    let big = tcp(TUNNEL, 45000, true, &payload);
    assert_eq!(big.len() - 14, MTU as usize - 40 + 1);
    let (action, out) = dp.test_run(&big).expect("BPF_PROG_TEST_RUN");
    assert_eq!(action, XDP_TX);
    // Expected: from the VIP to the client, MTU − 40, quoting the IPv6
    // header and 8 bytes of the original packet; built by etherparse.
    let mut want = Vec::new();
    PacketBuilder::ethernet2(LB_MAC, CLIENT_MAC)
        .ipv6(ip6(TUNNEL), ip6(CLIENT), 64)
        .icmpv6(Icmpv6Type::PacketTooBig { mtu: MTU - 40 })
        .write(&mut want, &big[14..14 + 48])
        .unwrap();
    assert_eq!(out, want);
    check6(&out);
    let (header, _) = Icmpv6Header::from_slice(&out[54..]).unwrap();
    assert_eq!(header.icmp_type, Icmpv6Type::PacketTooBig { mtu: 1460 });

    // One byte less fits exactly.
    let fits = tcp(TUNNEL, 45000, true, &payload[1..]);
    let (action, out) = dp.test_run(&fits).unwrap();
    assert_eq!(action, XDP_TX);
    assert_eq!(out.len(), fits.len() + 40);
    assert_eq!(out.len() - 14, MTU as usize);

    let stats = dp.stats(plan.vips.len(), plan.backends.len()).unwrap();
    assert_eq!(stats.reason(Reason::IcmpFragNeededSent).packets, 1);
    assert_eq!(
        stats.vips[2].packets, 1,
        "the error is not counted on the VIP"
    );
}

#[test]
fn a_v6_service_change_takes_established_flows_off_the_flow_first_path() {
    let (mut dp, _) = datapath();
    let syn = tcp(WEB, 46000, false, b"");
    assert_eq!(dp.test_run(&syn).unwrap(), (XDP_TX, dsr(&syn, 0)));
    // The VIP becomes an ipip VIP (same id, same backends): its generation
    // changes, so the established flow's next packet takes the full path
    // and leaves encapsulated, to the same backend.
    let mut changed = plan();
    changed.vips[0].service.forward_mode = FWD_IPIP;
    dp.apply(&changed).unwrap();
    let ack = tcp(WEB, 46000, true, b"more");
    let (action, out) = dp.test_run(&ack).unwrap();
    assert_eq!(action, XDP_TX);
    assert_eq!(out, encapsulated6(&ack, expected_source6(46000), 0));
    // Removing the VIP's address: its packets pass as IPv6 not for a VIP.
    let mut gone = plan();
    gone.vips.remove(0);
    gone.addresses6.retain(|k, _| k.addr_be != words(ip6(WEB)));
    dp.apply(&gone).unwrap();
    let (action, out) = dp.test_run(&ack).unwrap();
    assert_eq!((action, out), (XDP_PASS, ack));
}
