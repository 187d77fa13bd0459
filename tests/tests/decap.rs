//! The backend's decap program (`foobar decap`): BPF_PROG_TEST_RUN on
//! crafted frames, one table row each, and a lab run where a backend
//! answers a tunnelled SYN straight to the client. Expected frames are
//! built independently with etherparse: the inner packet as a plain frame
//! is exactly what a decapsulation must produce. Needs root.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsFd as _,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use etherparse::{
    IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header, NetSlice, PacketBuilder, SlicedPacket,
    TransportSlice,
};
use foobar::decap::{Counter, Decap, Filter};
use foobar_tests::{
    frames::check_checksums,
    lab::{self, Lab, LabOptions},
};

const XDP_PASS: u32 = 2;

const BACKEND_MAC: [u8; 6] = [0x02, 0xbe, 0, 0, 0, 0x0b];
const LB_MAC: [u8; 6] = [0x02, 0x1b, 0, 0, 0, 0x01];
const LB4: [u8; 4] = [10, 0, 0, 1];
const BACKEND4: [u8; 4] = [10, 0, 0, 11];
const STRANGER4: [u8; 4] = [10, 0, 0, 66];
const CLIENT4: [u8; 4] = [198, 51, 100, 7];
const VIP4: [u8; 4] = [192, 0, 2, 10];
const LB6: [u8; 16] = v6(1);
const BACKEND6: [u8; 16] = v6(0x11);
const STRANGER6: [u8; 16] = v6(0x66);
const CLIENT6: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
const VIP6: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10];

const fn v6(last: u8) -> [u8; 16] {
    [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, last]
}

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Inner {
    V4,
    V6,
}

/// The client's TCP SYN to the VIP as a plain frame the LB addressed to the
/// backend: what the backend's stack must see after decapsulation.
fn inner_frame(inner: Inner) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(LB_MAC, BACKEND_MAC);
    let mut out = Vec::new();
    match inner {
        Inner::V4 => eth
            .ipv4(CLIENT4, VIP4, 64)
            .tcp(40000, 80, 12345, 64240)
            .syn()
            .write(&mut out, b"hello"),
        Inner::V6 => eth
            .ipv6(CLIENT6, VIP6, 64)
            .tcp(40000, 80, 12345, 64240)
            .syn()
            .write(&mut out, b"hello"),
    }
    .expect("etherparse writes the frame");
    out
}

/// An outer IPv4 header around `payload`, as etherparse writes it.
fn outer4(src: [u8; 4], dst: [u8; 4], proto: u8, payload_len: usize) -> Ipv4Header {
    let mut h = Ipv4Header::new(payload_len as u16, 64, IpNumber(proto), src, dst).unwrap();
    h.dont_fragment = true;
    h
}

fn outer6(src: [u8; 16], dst: [u8; 16], next: u8, payload_len: usize) -> Ipv6Header {
    Ipv6Header {
        traffic_class: 0,
        flow_label: Ipv6FlowLabel::ZERO,
        payload_length: payload_len as u16,
        next_header: IpNumber(next),
        hop_limit: 64,
        source: src,
        destination: dst,
    }
}

/// Ethernet header (LB -> backend) with `ethertype`, then `rest`.
fn frame(ethertype: u16, rest: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&BACKEND_MAC);
    out.extend_from_slice(&LB_MAC);
    out.extend_from_slice(&ethertype.to_be_bytes());
    for r in rest {
        out.extend_from_slice(r);
    }
    out
}

fn proto_of(inner: Inner) -> u8 {
    match inner {
        Inner::V4 => 4,
        Inner::V6 => 41,
    }
}

/// `inner` in an outer IPv4 header from `src` to `dst`.
fn in4(src: [u8; 4], dst: [u8; 4], inner: Inner) -> Vec<u8> {
    let packet = inner_frame(inner)[14..].to_vec();
    let mut outer = Vec::new();
    outer4(src, dst, proto_of(inner), packet.len())
        .write(&mut outer)
        .unwrap();
    frame(ETH_P_IP, &[&outer, &packet])
}

/// `inner` in an outer IPv6 header from `src` to `dst`.
fn in6(src: [u8; 16], dst: [u8; 16], inner: Inner) -> Vec<u8> {
    let packet = inner_frame(inner)[14..].to_vec();
    let mut outer = Vec::new();
    outer6(src, dst, proto_of(inner), packet.len())
        .write(&mut outer)
        .unwrap();
    frame(ETH_P_IPV6, &[&outer, &packet])
}

/// What the program must do with a frame.
enum Expect {
    /// Decapsulated into exactly the plain inner frame.
    Decap(Inner),
    /// Passed byte for byte as it came, counted under this counter.
    Untouched(Counter),
}

struct Row {
    name: &'static str,
    frame: Vec<u8>,
    expect: Expect,
}

fn rows() -> Vec<Row> {
    use Expect::*;
    use Inner::*;
    let row = |name, frame, expect| Row {
        name,
        frame,
        expect,
    };
    let mut rows = vec![
        row("4in4", in4(LB4, BACKEND4, V4), Decap(V4)),
        row("6in6", in6(LB6, BACKEND6, V6), Decap(V6)),
        row("6in4", in4(LB4, BACKEND4, V6), Decap(V6)),
        row("4in6", in6(LB6, BACKEND6, V4), Decap(V4)),
        row(
            "4in4 from a source not allowed",
            in4(STRANGER4, BACKEND4, V4),
            Untouched(Counter::RefusedSource),
        ),
        row(
            "6in6 from a source not allowed",
            in6(STRANGER6, BACKEND6, V6),
            Untouched(Counter::RefusedSource),
        ),
        row(
            "4in4 spoofing the client as outer source",
            in4(CLIENT4, BACKEND4, V4),
            Untouched(Counter::RefusedSource),
        ),
        row(
            "4in4 to an outer destination not local",
            in4(LB4, STRANGER4, V4),
            Untouched(Counter::RefusedDestination),
        ),
        row(
            "6in6 to an outer destination not local",
            in6(LB6, STRANGER6, V6),
            Untouched(Counter::RefusedDestination),
        ),
        row(
            "plain TCP to the VIP",
            inner_frame(V4),
            Untouched(Counter::Passed),
        ),
        row(
            "plain IPv6 TCP to the VIP",
            inner_frame(V6),
            Untouched(Counter::Passed),
        ),
        row(
            "ARP",
            frame(0x0806, &[&[0u8; 28]]),
            Untouched(Counter::Passed),
        ),
        // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header:
        // the shortest frame it runs is a bare Ethernet header.
        row(
            "Ethernet header alone, IPv4 EtherType",
            frame(ETH_P_IP, &[]),
            Untouched(Counter::Malformed),
        ),
        row(
            "Ethernet header alone, IPv6 EtherType",
            frame(ETH_P_IPV6, &[]),
            Untouched(Counter::Malformed),
        ),
        row(
            "IPv4 header cut short",
            in4(LB4, BACKEND4, V4)[..14 + 12].to_vec(),
            Untouched(Counter::Malformed),
        ),
        row(
            "IPv6 header cut short",
            in6(LB6, BACKEND6, V6)[..14 + 30].to_vec(),
            Untouched(Counter::Malformed),
        ),
        row(
            "4in4 inner packet cut short (outer length beyond the frame)",
            in4(LB4, BACKEND4, V4)[..14 + 20 + 30].to_vec(),
            Untouched(Counter::Malformed),
        ),
        row(
            "6in6 inner packet cut short (outer length beyond the frame)",
            in6(LB6, BACKEND6, V6)[..14 + 40 + 30].to_vec(),
            Untouched(Counter::Malformed),
        ),
    ];
    // Protocol 4 with an IPv6 packet inside: the versions disagree.
    let packet = inner_frame(V6)[14..].to_vec();
    let mut outer = Vec::new();
    outer4(LB4, BACKEND4, 4, packet.len())
        .write(&mut outer)
        .unwrap();
    rows.push(row(
        "4in4 whose inner packet is IPv6",
        frame(ETH_P_IP, &[&outer, &packet]),
        Untouched(Counter::Malformed),
    ));
    // An outer length too small to hold the inner header.
    let packet = inner_frame(V4)[14..].to_vec();
    let mut outer = Vec::new();
    outer4(LB4, BACKEND4, 4, 8).write(&mut outer).unwrap();
    rows.push(row(
        "4in4 whose outer length leaves no room for the inner header",
        frame(ETH_P_IP, &[&outer, &packet]),
        Untouched(Counter::Malformed),
    ));
    // IHL 4: less than an IPv4 header.
    let mut bad = in4(LB4, BACKEND4, V4);
    bad[14] = 0x44;
    rows.push(row("outer IHL 4", bad, Untouched(Counter::Malformed)));
    // Outer IPv4 options (a record-route-sized NOP run): passed.
    let mut outer = outer4(LB4, BACKEND4, 4, packet.len());
    outer.options = [1u8, 1, 1, 0].into();
    let mut bytes = Vec::new();
    outer.write(&mut bytes).unwrap();
    assert_eq!(bytes.len(), 24);
    rows.push(row(
        "4in4 with outer IPv4 options",
        frame(ETH_P_IP, &[&bytes, &packet]),
        Untouched(Counter::Options),
    ));
    // Outer fragments: the first (MF) and a later one (offset).
    for (name, mf, offset) in [
        ("4in4 first fragment (MF)", true, 0u16),
        ("4in4 later fragment (offset)", false, 185),
    ] {
        let mut outer = outer4(LB4, BACKEND4, 4, packet.len());
        outer.dont_fragment = false;
        outer.more_fragments = mf;
        outer.fragment_offset = offset.try_into().unwrap();
        let mut bytes = Vec::new();
        outer.write(&mut bytes).unwrap();
        rows.push(row(
            name,
            frame(ETH_P_IP, &[&bytes, &packet]),
            Untouched(Counter::Fragment),
        ));
    }
    // Outer IPv6 with a destination-options header (8 bytes: next header
    // 41, length 0, a PadN option) and with a fragment header.
    let packet6 = inner_frame(V6)[14..].to_vec();
    for (name, ext_type, ext, counter) in [
        (
            "6in6 with a destination-options header",
            60u8,
            [41u8, 0, 1, 4, 0, 0, 0, 0],
            Counter::Options,
        ),
        (
            "6in6 with a hop-by-hop header",
            0,
            [41, 0, 1, 4, 0, 0, 0, 0],
            Counter::Options,
        ),
        (
            "6in6 fragment (fragment header, MF)",
            44,
            [41, 0, 0, 1, 0, 0, 0, 42],
            Counter::Fragment,
        ),
    ] {
        let mut bytes = Vec::new();
        outer6(LB6, BACKEND6, ext_type, 8 + packet6.len())
            .write(&mut bytes)
            .unwrap();
        rows.push(row(
            name,
            frame(ETH_P_IPV6, &[&bytes, &ext, &packet6]),
            Untouched(counter),
        ));
    }
    rows
}

fn filter() -> Filter {
    Filter {
        allow_from: vec![
            IpAddr::V4(Ipv4Addr::from(LB4)).into(),
            IpAddr::V6(Ipv6Addr::from(LB6)).into(),
        ],
        local: vec![
            IpAddr::V4(Ipv4Addr::from(BACKEND4)),
            IpAddr::V6(Ipv6Addr::from(BACKEND6)),
        ],
    }
}

/// Checks a decapsulated frame with etherparse: Ethernet addresses kept,
/// the EtherType of the inner packet, the inner addresses and TCP header
/// intact with valid checksums.
fn check_parsed(name: &str, out: &[u8], inner: Inner) {
    let sliced = SlicedPacket::from_ethernet(out).unwrap_or_else(|e| panic!("{name}: {e}"));
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = &sliced.link else {
        panic!("{name}: no Ethernet header");
    };
    assert_eq!(eth.destination(), BACKEND_MAC, "{name}: destination MAC");
    assert_eq!(eth.source(), LB_MAC, "{name}: source MAC");
    match (inner, &sliced.net) {
        (Inner::V4, Some(NetSlice::Ipv4(ip))) => {
            assert_eq!(eth.ether_type().0, ETH_P_IP, "{name}");
            assert_eq!(ip.header().source(), CLIENT4, "{name}");
            assert_eq!(ip.header().destination(), VIP4, "{name}");
            check_checksums(out).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        (Inner::V6, Some(NetSlice::Ipv6(ip))) => {
            assert_eq!(eth.ether_type().0, ETH_P_IPV6, "{name}");
            assert_eq!(ip.header().source(), CLIENT6, "{name}");
            assert_eq!(ip.header().destination(), VIP6, "{name}");
            let Some(TransportSlice::Tcp(tcp)) = &sliced.transport else {
                panic!("{name}: no TCP");
            };
            let want = tcp
                .to_header()
                .calc_checksum_ipv6(&ip.header().to_header(), tcp.payload())
                .unwrap();
            assert_eq!(tcp.checksum(), want, "{name}: TCP checksum");
        }
        (_, other) => panic!("{name}: {inner:?} expected, parsed {other:?}"),
    }
    let Some(TransportSlice::Tcp(tcp)) = &sliced.transport else {
        panic!("{name}: no TCP");
    };
    assert!(tcp.syn() && tcp.destination_port() == 80, "{name}");
    assert_eq!(tcp.payload(), b"hello", "{name}");
}

#[test]
fn decap_frames() {
    let mut decap = Decap::load(&filter())
        .expect("loading the decap program (are you root? `cargo xtask test`)");
    for row in rows() {
        let before = decap.counters().unwrap();
        let (action, out) = decap
            .test_run(&row.frame)
            .unwrap_or_else(|e| panic!("{}: {e}", row.name));
        let after = decap.counters().unwrap();
        assert_eq!(action, XDP_PASS, "{}: every frame is passed", row.name);
        let counted = match row.expect {
            Expect::Decap(inner) => {
                assert_eq!(
                    out,
                    inner_frame(inner),
                    "{}: not the plain inner frame",
                    row.name
                );
                check_parsed(row.name, &out, inner);
                Counter::Decapsulated
            }
            Expect::Untouched(counter) => {
                assert_eq!(out, row.frame, "{}: changed", row.name);
                counter
            }
        };
        for c in Counter::ALL {
            let want = u64::from(c == counted);
            assert_eq!(
                after.get(c) - before.get(c),
                want,
                "{}: counter {} moved by {} (want {want})",
                row.name,
                c.name(),
                after.get(c) - before.get(c)
            );
        }
    }
}

/// Ethernet padding after the outer packet (a short frame padded to 60
/// bytes) stays after the inner packet, where the stack trims it by the
/// inner length.
#[test]
fn decap_keeps_trailing_padding() {
    let mut decap = Decap::load(&filter()).expect("loading the decap program");
    let mut input = in4(LB4, BACKEND4, Inner::V4);
    input.extend_from_slice(&[0u8; 6]);
    let (action, out) = decap.test_run(&input).unwrap();
    assert_eq!(action, XDP_PASS);
    let mut want = inner_frame(Inner::V4);
    want.extend_from_slice(&[0u8; 6]);
    assert_eq!(out, want);
    check_parsed("padded 4in4", &out, Inner::V4);
}

/// An allowed prefix (an LB's `datapath.ipip_source` /24): every outer
/// source inside it is decapsulated, its neighbours outside are not.
#[test]
fn decap_accepts_sources_inside_an_allowed_prefix() {
    let mut filter = filter();
    filter.allow_from = vec!["10.9.0.0/24".parse().unwrap()];
    let mut decap = Decap::load(&filter).expect("loading the decap program");
    for (src, decapsulated) in [
        ([10, 9, 0, 0], true),
        ([10, 9, 0, 77], true),
        ([10, 9, 0, 255], true),
        ([10, 9, 1, 0], false),
        ([10, 8, 255, 255], false),
        (LB4, false),
    ] {
        let input = in4(src, BACKEND4, Inner::V4);
        let (action, out) = decap.test_run(&input).unwrap();
        assert_eq!(action, XDP_PASS);
        if decapsulated {
            assert_eq!(out, inner_frame(Inner::V4), "{src:?}: decapsulated");
        } else {
            assert_eq!(out, input, "{src:?}: untouched");
        }
    }
    let c = decap.counters().unwrap();
    assert_eq!(c.get(Counter::Decapsulated), 3);
    assert_eq!(c.get(Counter::RefusedSource), 3);
}

/// The lab: the decap attached with `foobar decap` to a backend's veth, the
/// client sends the LB's tunnelled SYN (outer LB -> backend, inner client
/// -> VIP) by hand, and the backend's nginx answers the client straight
/// from the VIP. The same SYN from a source not allowed gets no answer.
#[test]
fn lab_backend_answers_a_tunnelled_syn_directly() {
    let foobar = lab::foobar_bin().expect("foobar binary (cargo build -p foobar-user)");
    let lab = Lab::start(&LabOptions {
        backends: 1,
        ..LabOptions::default()
    })
    .expect("starting the lab");
    let be = lab.backends[0].clone();
    let netns = format!("--net=/var/run/netns/{}", be.ns);
    let pin_root = lab.pin_root.join("decap");
    let pin_root_s = pin_root.to_str().unwrap().to_owned();
    let cli = |args: &[&str]| -> std::process::Output {
        let mut full = vec![netns.as_str(), foobar.to_str().unwrap(), "decap"];
        full.extend_from_slice(args);
        full.extend_from_slice(&["--pin-root", &pin_root_s]);
        Command::new("nsenter").args(&full).output().unwrap()
    };
    let lb = lab.lb.addr.to_string();

    // No allowed source: refused with a message that says what to give.
    let out = cli(&["--iface", "eth0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--allow-from"),
        "{err}"
    );
    assert!(!pin_root.join("eth0").exists(), "pins left by a refusal");
    let out = cli(&["--iface", "nosuch0", "--allow-from", &lb]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nosuch0 does not exist"), "{err}");

    let out = cli(&["--iface", "eth0", "--allow-from", &lb]);
    assert!(
        out.status.success(),
        "foobar decap: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A second attach says it is there and how to replace it.
    let out = cli(&["--iface", "eth0", "--allow-from", &lb]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--detach"), "{err}");
    // rp_filter: the lab's backends keep the default of their namespace;
    // loose mode so a client source is accepted on eth0 whatever it is.
    for key in ["all", "eth0"] {
        lab.exec(
            &be.ns,
            &["sysctl", "-qw", &format!("net.ipv4.conf.{key}.rp_filter=2")],
        )
        .unwrap();
    }

    let client_mac = lab.mac(&lab.client, "eth0").unwrap();
    let be_mac = lab.mac(&be, "eth0").unwrap();
    let syn = |outer_src: Ipv4Addr, sport: u16| -> Vec<u8> {
        let mut inner = Vec::new();
        PacketBuilder::ipv4(lab.client.addr.octets(), lab::VIP.octets(), 64)
            .tcp(sport, 80, 1000, 64240)
            .syn()
            .write(&mut inner, &[])
            .unwrap();
        let mut outer = Vec::new();
        outer4(outer_src.octets(), be.addr.octets(), 4, inner.len())
            .write(&mut outer)
            .unwrap();
        let mut f = Vec::new();
        f.extend_from_slice(&be_mac);
        f.extend_from_slice(&client_mac);
        f.extend_from_slice(&ETH_P_IP.to_be_bytes());
        f.extend_from_slice(&outer);
        f.extend_from_slice(&inner);
        f
    };

    let capture = Capture::open(&lab.client.ns).expect("raw TCP socket in the client");
    // Allowed outer source (the LB's address): SYN-ACK from the VIP.
    lab.send_frame(&lab.client, &syn(lab.lb.addr, 41001))
        .unwrap();
    let answer = capture
        .wait_for(lab::VIP, 41001, Duration::from_secs(3))
        .unwrap();
    assert!(answer, "no SYN-ACK from the VIP for the tunnelled SYN");
    // Not allowed (the client's own address as outer source): no answer.
    lab.send_frame(&lab.client, &syn(lab.client.addr, 41002))
        .unwrap();
    let answer = capture
        .wait_for(lab::VIP, 41002, Duration::from_secs(1))
        .unwrap();
    assert!(
        !answer,
        "a SYN tunnelled from a source not allowed was answered"
    );

    let out = cli(&["--iface", "eth0", "--stats", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(stats["decapsulated"].as_u64() >= Some(1), "{stats}");
    assert!(stats["refused_source"].as_u64() >= Some(1), "{stats}");

    let out = cli(&["--iface", "eth0", "--detach"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!pin_root.join("eth0").exists(), "pins left after --detach");
    let out = cli(&["--iface", "eth0", "--stats"]);
    assert!(!out.status.success());
    // Detached: the kernel has no ipip handler, so the same tunnelled SYN
    // now gets no answer (the XDP program was what made it work).
    lab.send_frame(&lab.client, &syn(lab.lb.addr, 41003))
        .unwrap();
    let answer = capture
        .wait_for(lab::VIP, 41003, Duration::from_secs(1))
        .unwrap();
    assert!(
        !answer,
        "a tunnelled SYN was answered with no decap attached"
    );

    // Generic XDP works the same.
    let out = cli(&["--iface", "eth0", "--allow-from", &lb, "--xdp-mode", "skb"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab.send_frame(&lab.client, &syn(lab.lb.addr, 41004))
        .unwrap();
    let answer = capture
        .wait_for(lab::VIP, 41004, Duration::from_secs(3))
        .unwrap();
    assert!(answer, "no SYN-ACK with the decap in skb mode");
    let out = cli(&["--iface", "eth0", "--detach"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A raw IPPROTO_TCP socket in a namespace: a copy of every TCP segment the
/// client's stack receives (the client then resets the SYN-ACKs no socket
/// of its own asked for, which is fine here).
struct Capture {
    fd: std::os::fd::OwnedFd,
}

impl Capture {
    fn open(ns: &str) -> anyhow::Result<Capture> {
        let path = format!("/var/run/netns/{ns}");
        std::thread::spawn(move || -> anyhow::Result<Capture> {
            let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
            // SAFETY: plain socket(2); the descriptor is owned right away.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP) };
            if fd < 0 {
                bail!("raw socket: {}", std::io::Error::last_os_error());
            }
            // SAFETY: fd was just returned by socket(2) and is ours.
            let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            Ok(Capture { fd })
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the capture thread panicked"))?
    }

    /// Whether a SYN-ACK from `from`:80 to port `dport` arrives within
    /// `limit` (bounded by time; reads with a 100 ms timeout).
    fn wait_for(&self, from: Ipv4Addr, dport: u16, limit: Duration) -> anyhow::Result<bool> {
        use std::os::fd::AsRawFd as _;
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        // SAFETY: setsockopt reads a timeval that outlives the call.
        unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            // SAFETY: recv writes at most buf.len() bytes into buf.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                )
            };
            if n <= 0 {
                continue;
            }
            let Ok(p) = SlicedPacket::from_ip(&buf[..n as usize]) else {
                continue;
            };
            let (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Tcp(tcp))) = (&p.net, &p.transport)
            else {
                continue;
            };
            if ip.header().source_addr() == from
                && tcp.source_port() == 80
                && tcp.destination_port() == dport
                && tcp.syn()
                && tcp.ack()
            {
                return Ok(true);
            }
        }
        Ok(false)
    }
}
