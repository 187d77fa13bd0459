//! ICMP errors about `nat` flows under BPF_PROG_TEST_RUN (docs/NAT.md,
//! "ICMP"): an error from the backend side about a packet the LB sent to a
//! backend reaches the client, quoting the client's own packet; an error
//! from the client side about a reply the LB sent reaches the backend,
//! quoting the backend's own reply. Expected frames are built with
//! etherparse from the packets as their senders wrote them (the outer IPv4
//! and ICMP checksums by etherparse, the quoted IPv4 and TCP/UDP checksums
//! are those of the original packets), so byte equality checks every
//! checksum; etherparse also verifies each one on its own. Needs root.
use etherparse::{
    icmpv4::{DestUnreachableHeader, TimeExceededCode},
    Icmpv4Type, Ipv4HeaderSlice, SlicedPacket, TcpHeaderSlice, TransportSlice, UdpHeaderSlice,
};
use foobar::datapath::{Datapath, LoadOptions};
use foobar_common::Reason;
use foobar_tests::fixture::{self, backend_mac, lb_mac};
use foobar_tests::frames::{check_checksums, icmp_error, quote, Spec, L4};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

const SNAT: [u8; 4] = [10, 0, 0, 1];
/// A router on the backends' side and one on the clients' side.
const BACKEND_ROUTER: [u8; 4] = [10, 0, 0, 254];
const CLIENT_ROUTER: [u8; 4] = [203, 0, 113, 1];
const ROUTER_MAC: [u8; 6] = [0x02, 0x99, 0, 0, 0, 1];

/// `web` (TCP, backend port 8080) and `dns` (UDP) in `nat` mode.
const CONFIG: &str = r#"
    [datapath]
    snat_address = "10.0.0.1"

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
"#;

fn datapath() -> Datapath {
    fixture::load(&fixture::plan_of(CONFIG, &[11, 21]), LoadOptions::default())
}

/// The SNAT port etherparse reads in a translated frame.
fn source_port(frame: &[u8]) -> u16 {
    match SlicedPacket::from_ethernet(frame)
        .expect("parses")
        .transport
    {
        Some(TransportSlice::Tcp(t)) => t.source_port(),
        Some(TransportSlice::Udp(u)) => u.source_port(),
        _ => panic!("not TCP/UDP"),
    }
}

/// Checks with etherparse every checksum of an ICMP error frame: outer
/// IPv4 and ICMP (check_checksums), the quoted IPv4 header, and the quoted
/// TCP/UDP checksum when the whole segment is quoted.
fn check_error(frame: &[u8], what: &str) {
    check_checksums(frame).unwrap_or_else(|e| panic!("{what}: {e}"));
    let sliced = SlicedPacket::from_ethernet(frame).expect("parses");
    let Some(TransportSlice::Icmpv4(icmp)) = &sliced.transport else {
        panic!("{what}: not ICMP")
    };
    let quoted = icmp.payload();
    let ip = Ipv4HeaderSlice::from_slice(quoted).expect("a quoted IPv4 header");
    let header = ip.to_header();
    assert_eq!(
        header.header_checksum,
        header.calc_header_checksum(),
        "{what}: quoted IPv4 checksum"
    );
    let segment = &quoted[header.header_len()..];
    if usize::from(header.total_len) != quoted.len() {
        return; // truncated: its L4 checksum cannot be recomputed
    }
    match header.protocol {
        etherparse::IpNumber::TCP => {
            let tcp = TcpHeaderSlice::from_slice(segment).expect("quoted TCP");
            let want = tcp
                .to_header()
                .calc_checksum_ipv4(&header, &segment[tcp.slice().len()..])
                .expect("checksum");
            assert_eq!(tcp.checksum(), want, "{what}: quoted TCP checksum");
        }
        etherparse::IpNumber::UDP => {
            let udp = UdpHeaderSlice::from_slice(segment).expect("quoted UDP");
            if udp.checksum() != 0 {
                let want = udp
                    .to_header()
                    .calc_checksum_ipv4(&header, &segment[8..])
                    .expect("checksum");
                assert_eq!(udp.checksum(), want, "{what}: quoted UDP checksum");
            }
        }
        p => panic!("{what}: quoted protocol {p:?}"),
    }
}

/// Which way an error travels.
#[derive(Clone, Copy, Debug)]
enum Way {
    /// From the backends' side, about a packet the LB sent to a backend:
    /// to the client.
    ToClient,
    /// From the clients' side, about a reply the LB sent to a client: to
    /// the backend.
    ToBackend,
}

/// One fixture: the client's first packet (opening the flow), the error's
/// type, how many bytes after the IP header it quotes (None: all), and
/// whether the UDP checksum of the quoted packet is 0 (none).
struct Case {
    name: &'static str,
    way: Way,
    client: Spec,
    kind: Icmpv4Type,
    quoted: Option<usize>,
    udp_zero: bool,
}

fn frag_needed() -> Icmpv4Type {
    Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
        next_hop_mtu: 1400,
    })
}

fn port_unreachable() -> Icmpv4Type {
    Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port)
}

fn ttl_exceeded() -> Icmpv4Type {
    Icmpv4Type::TimeExceeded(TimeExceededCode::TtlExceededInTransit)
}

fn tcp(sport: u16) -> Spec {
    Spec {
        sport,
        ..Spec::default()
    }
}

fn udp(sport: u16) -> Spec {
    Spec {
        l4: L4::Udp,
        dst: [192, 0, 2, 20],
        dport: 53,
        sport,
        payload: b"query".to_vec(),
        ..Spec::default()
    }
}

fn cases() -> Vec<Case> {
    let case = |name, way, client, kind, quoted| Case {
        name,
        way,
        client,
        kind,
        quoted,
        udp_zero: false,
    };
    vec![
        case(
            "TCP frag-needed to the client, 8 bytes quoted",
            Way::ToClient,
            tcp(41000),
            frag_needed(),
            Some(8),
        ),
        case(
            "TCP frag-needed to the client, whole segment quoted",
            Way::ToClient,
            tcp(41001),
            frag_needed(),
            None,
        ),
        case(
            "TCP frag-needed to the client, quoted IP options",
            Way::ToClient,
            Spec {
                ip_options: vec![1, 1, 1, 1],
                ..tcp(41002)
            },
            frag_needed(),
            Some(20),
        ),
        case(
            "TCP frag-needed to the backend, 8 bytes quoted",
            Way::ToBackend,
            tcp(41003),
            frag_needed(),
            Some(8),
        ),
        case(
            "TCP frag-needed to the backend, whole segment quoted",
            Way::ToBackend,
            tcp(41004),
            frag_needed(),
            None,
        ),
        case(
            "TCP TTL exceeded to the backend, 28 bytes quoted",
            Way::ToBackend,
            tcp(41005),
            ttl_exceeded(),
            Some(28),
        ),
        case(
            "UDP port unreachable to the client",
            Way::ToClient,
            udp(42000),
            port_unreachable(),
            None,
        ),
        case(
            "UDP port unreachable to the backend",
            Way::ToBackend,
            udp(42001),
            port_unreachable(),
            None,
        ),
        case(
            "UDP port unreachable to the backend, 8 bytes quoted",
            Way::ToBackend,
            udp(42002),
            port_unreachable(),
            Some(8),
        ),
        case(
            "UDP TTL exceeded to the client",
            Way::ToClient,
            udp(42003),
            ttl_exceeded(),
            Some(8),
        ),
        Case {
            udp_zero: true,
            ..case(
                "UDP without checksum, port unreachable to the client",
                Way::ToClient,
                udp(42004),
                port_unreachable(),
                None,
            )
        },
        Case {
            udp_zero: true,
            ..case(
                "UDP without checksum, port unreachable to the backend",
                Way::ToBackend,
                udp(42005),
                port_unreachable(),
                None,
            )
        },
    ]
}

/// Zeroes the UDP checksum of an untagged UDP frame (none, allowed over
/// IPv4).
fn zero_udp_checksum(frame: &mut [u8]) {
    let at = 14 + usize::from(frame[14] & 0x0f) * 4 + 6;
    frame[at..at + 2].copy_from_slice(&[0, 0]);
}

#[test]
fn icmp_errors_about_nat_flows_are_translated_both_ways_byte_exact() {
    let mut dp = datapath();
    let (mut to_client, mut to_backend) = (0, 0);
    for case in cases() {
        let what = case.name;
        let c = &case.client;
        let (backend, backend_port) = if c.l4 == L4::Tcp {
            (11, 8080)
        } else {
            (21, 53)
        };
        let backend_addr = [10, 0, 0, backend];
        // The client's packet, and the LB's translation of it (the flow's
        // SNAT port read from it).
        let mut sent = c.build();
        if case.udp_zero {
            zero_udp_checksum(&mut sent);
        }
        let (action, forwarded) = dp.test_run(&sent).expect("test run");
        assert_eq!(action, XDP_TX, "{what}: the client's packet");
        let port = source_port(&forwarded);
        // The backend's reply as it sends it, and as the client gets it.
        let reply = |src: [u8; 4], sport, dst: [u8; 4], dport| {
            let mut f = Spec {
                src,
                dst,
                sport,
                dport,
                ack: true,
                payload: vec![0x42; 1400],
                ..c.clone()
            }
            .build();
            if case.udp_zero {
                zero_udp_checksum(&mut f);
            }
            f
        };
        let backend_reply = reply(backend_addr, backend_port, SNAT, port);
        let client_reply = reply(c.dst, c.dport, c.src, c.sport);
        let (input, want) = match case.way {
            Way::ToClient => {
                let input = icmp_error(
                    ROUTER_MAC,
                    lb_mac(),
                    BACKEND_ROUTER,
                    SNAT,
                    case.kind.clone(),
                    &quote(&forwarded, case.quoted),
                );
                // From the VIP (IPVS's choice, docs/NAT.md), quoting the
                // client's packet as the client sent it.
                let want = icmp_error(
                    lb_mac(),
                    c.src_mac,
                    c.dst,
                    c.src,
                    case.kind.clone(),
                    &quote(&sent, case.quoted),
                );
                to_client += 1;
                (input, want)
            }
            Way::ToBackend => {
                let input = icmp_error(
                    ROUTER_MAC,
                    lb_mac(),
                    CLIENT_ROUTER,
                    c.dst,
                    case.kind.clone(),
                    &quote(&client_reply, case.quoted),
                );
                // From the SNAT address, quoting the backend's reply as
                // the backend sent it.
                let want = icmp_error(
                    lb_mac(),
                    backend_mac(backend),
                    SNAT,
                    backend_addr,
                    case.kind.clone(),
                    &quote(&backend_reply, case.quoted),
                );
                to_backend += 1;
                (input, want)
            }
        };
        check_error(&input, what);
        let (action, out) = dp.test_run(&input).expect("test run");
        assert_eq!(action, XDP_TX, "{what}: action");
        check_error(&out, what);
        assert_eq!(out, want, "{what}: translated byte for byte");
    }
    let stats = dp.stats(4, 8).expect("counters");
    assert_eq!(
        stats.reason(Reason::ForwardedIcmpReply).packets,
        to_client,
        "forwarded_icmp_reply"
    );
    assert_eq!(
        stats.reason(Reason::ForwardedIcmp).packets,
        to_backend,
        "forwarded_icmp"
    );
    assert_eq!(stats.reason(Reason::NatIcmp).packets, 0);
}

#[test]
fn an_icmp_error_does_not_touch_the_nat_state() {
    let mut dp = datapath();
    let syn = Spec::default();
    let (_, forwarded) = dp.test_run(&syn.build()).expect("test run");
    let before = dp.nat_flows().expect("NAT_FLOWS");
    let err = icmp_error(
        ROUTER_MAC,
        lb_mac(),
        BACKEND_ROUTER,
        SNAT,
        port_unreachable(),
        &quote(&forwarded, None),
    );
    assert_eq!(dp.test_run(&err).expect("test run").0, XDP_TX);
    assert_eq!(dp.nat_flows().expect("NAT_FLOWS"), before);
    assert_eq!(dp.nat_reverse().expect("NAT_REVERSE").len(), 1);
}

#[test]
fn icmp_errors_without_nat_state_keep_their_old_verdicts() {
    let mut dp = datapath();
    let syn = Spec::default();
    // No flow yet. To the VIP, about a reply nobody sent: dropped.
    let reply = Spec {
        src: syn.dst,
        dst: syn.src,
        sport: syn.dport,
        dport: syn.sport,
        ack: true,
        ..syn.clone()
    }
    .build();
    let to_vip = icmp_error(
        ROUTER_MAC,
        lb_mac(),
        CLIENT_ROUTER,
        syn.dst,
        frag_needed(),
        &quote(&reply, Some(8)),
    );
    assert_eq!(dp.test_run(&to_vip).expect("test run").0, XDP_DROP);
    // To the SNAT address, about a packet the LB never sent: the node's.
    let stray = Spec {
        src: SNAT,
        dst: [10, 0, 0, 11],
        sport: 20000,
        dport: 8080,
        ..syn.clone()
    }
    .build();
    let to_snat = icmp_error(
        ROUTER_MAC,
        lb_mac(),
        BACKEND_ROUTER,
        SNAT,
        frag_needed(),
        &quote(&stray, Some(8)),
    );
    let (action, out) = dp.test_run(&to_snat).expect("test run");
    assert_eq!(
        (action, out),
        (XDP_PASS, to_snat.clone()),
        "passed untouched"
    );

    // With the flow open, an error about another client port of the same
    // client still finds nothing.
    assert_eq!(dp.test_run(&syn.build()).expect("test run").0, XDP_TX);
    let other = Spec {
        dport: syn.sport + 1,
        ..Spec {
            src: syn.dst,
            dst: syn.src,
            sport: syn.dport,
            ack: true,
            ..syn.clone()
        }
    }
    .build();
    let err = icmp_error(
        ROUTER_MAC,
        lb_mac(),
        CLIENT_ROUTER,
        syn.dst,
        frag_needed(),
        &quote(&other, Some(8)),
    );
    assert_eq!(dp.test_run(&err).expect("test run").0, XDP_DROP);
    // Echo to the VIP is still the node's.
    let ping = Spec {
        l4: L4::Icmp,
        ..syn.clone()
    }
    .build();
    let (action, out) = dp.test_run(&ping).expect("test run");
    assert_eq!((action, out), (XDP_PASS, ping));

    let stats = dp.stats(4, 8).expect("counters");
    assert_eq!(stats.reason(Reason::NatIcmp).packets, 2, "drop_nat_icmp");
    assert_eq!(stats.reason(Reason::NotVip).packets, 1, "pass_not_vip");
    assert_eq!(stats.reason(Reason::ForwardedIcmp).packets, 0);
    assert_eq!(stats.reason(Reason::ForwardedIcmpReply).packets, 0);
}
