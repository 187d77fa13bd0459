//! The `ipip` forwarding mode (IPv4-in-IPv4 tunnel DSR) under
//! BPF_PROG_TEST_RUN: the client's packet comes out inside an outer IPv4
//! header to its backend, byte for byte as etherparse builds it
//! independently (outer checksum included), with the outer source the
//! documented hash puts in `datapath.ipip_source`; packets too big for the
//! MTU once encapsulated get ICMP frag-needed (DF) or are dropped. The lab
//! tests run the whole story: `foobar decap` on the backends, HTTP and a
//! large transfer through an `ipip` VIP, frag-needed taken by a real
//! client stack. Needs root (loading BPF); the lab tests run under
//! `flock -o /tmp/foobar-lab.lock`.
use std::{
    collections::HashMap,
    io::Write as _,
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use etherparse::{
    icmpv4::DestUnreachableHeader, Icmpv4Type, IpHeaders, IpNumber, Ipv4Extensions, Ipv4Header,
    Ipv4HeaderSlice, PacketBuilder,
};
use foobar::{
    config,
    datapath::{Datapath, LoadOptions},
    plan::Plan,
    state::{self, State},
};
use foobar_common::Reason;
use foobar_tests::{
    frames::{check_checksums, Spec},
    lab::{self, Host, Lab, LabOptions, VIP},
};

const XDP_DROP: u32 = 1;
const XDP_TX: u32 = 3;
const MTU: u32 = 1500;

/// An `ipip` VIP with two backends, a `dsr` VIP beside it, and an `ipip`
/// VIP on VLAN 100; the outer sources are 10.9.0.0/24.
const CONFIG: &str = r#"
    [datapath]
    ipip_source = "10.9.0.0/24"

    [[vip]]
    name = "tunnel"
    address = "192.0.2.40"
    port = 80
    forwarding = "ipip"
    [[vip.backend]]
    address = "10.0.0.41"
    [[vip.backend]]
    address = "10.0.0.42"

    [[vip]]
    name = "plain"
    address = "192.0.2.10"
    port = 80
    forwarding = "dsr"
    [[vip.backend]]
    address = "10.0.0.11"

    [[vip]]
    name = "tagged"
    address = "192.0.2.50"
    port = 80
    forwarding = "ipip"
    vlan = 100
    [[vip.backend]]
    address = "10.0.1.51"
"#;

const NET: [u8; 4] = [10, 9, 0, 0];
const PREFIX: u8 = 24;

fn backend_mac(last: u8) -> [u8; 6] {
    [0x02, 0xbe, 0, 0, 0, last]
}

fn lb_mac() -> [u8; 6] {
    Spec::default().dst_mac
}

fn datapath(text: &str) -> (Datapath, Plan) {
    let config = config::parse(text).expect("test config is valid");
    let macs: HashMap<std::net::IpAddr, [u8; 6]> = [
        ([10, 0, 0, 41], 41),
        ([10, 0, 0, 42], 42),
        ([10, 0, 0, 11], 11),
        ([10, 0, 1, 51], 51),
    ]
    .into_iter()
    .map(|(a, n)| (std::net::IpAddr::from(a), backend_mac(n)))
    .collect();
    let st = State::build(&state::saved_from_config(&config), &macs).expect("MACs known");
    let plan = st.plan();
    let mut dp = Datapath::load(&LoadOptions {
        lb_mac: lb_mac(),
        ipip_source: config.datapath.ipip_source,
        mtu: MTU,
        ..LoadOptions::default()
    })
    .expect("loading the XDP program (are you root? run `cargo xtask test`)");
    dp.apply(&plan).expect("programming the maps");
    (dp, plan)
}

/// The outer source the datapath must choose for a flow, computed here
/// from the formula docs/IPIP.md gives (forward/ipip.rs): the 32-bit words
/// are the packet's bytes read in the machine's (little-endian) order.
fn expected_source(client: [u8; 4], sport: u16, dport: u16) -> [u8; 4] {
    let ports = u32::from(u16::from_le_bytes(sport.to_be_bytes()))
        | u32::from(u16::from_le_bytes(dport.to_be_bytes())) << 16;
    let mut x = u32::from_le_bytes(client) ^ ports;
    x = x.wrapping_mul(0x9e37_79b1);
    x ^= x >> 16;
    let host_mask = (u32::MAX >> PREFIX).to_be();
    (u32::from_le_bytes(NET) | (x & host_mask)).to_le_bytes()
}

/// What the LB must send for `input` (a frame from the client): an
/// Ethernet header from the LB to the backend (with the input's VLAN tag),
/// an outer IPv4 header built by etherparse, and the input's IP packet
/// untouched.
fn encapsulated(input: &[u8], l3: usize, src: [u8; 4], backend: [u8; 4], mac: [u8; 6]) -> Vec<u8> {
    let inner = &input[l3..];
    let inner_hdr = Ipv4HeaderSlice::from_slice(inner).expect("the input is IPv4");
    let inner_len = usize::from(inner_hdr.total_len());
    let mut outer = Ipv4Header::new(inner_len as u16, 64, IpNumber::IPV4, src, backend)
        .expect("the inner packet fits");
    outer.dont_fragment = inner_hdr.dont_fragment();
    outer.dscp = inner_hdr.dcp();
    outer.ecn = inner_hdr.ecn();
    outer.identification = 0;
    outer.header_checksum = outer.calc_header_checksum();
    let mut out = Vec::new();
    out.extend_from_slice(&mac);
    out.extend_from_slice(&lb_mac());
    out.extend_from_slice(&input[12..l3]);
    out.extend_from_slice(&outer.to_bytes());
    out.extend_from_slice(inner);
    out
}

/// Checks the outer header of an output frame with etherparse: its
/// checksum, protocol 4, and that it covers exactly the inner packet.
fn check_outer(out: &[u8], l3: usize) {
    let outer = Ipv4HeaderSlice::from_slice(&out[l3..]).expect("outer IPv4 parses");
    let header = outer.to_header();
    assert_eq!(header.header_checksum, header.calc_header_checksum());
    assert_eq!(outer.protocol(), IpNumber::IPV4);
    assert_eq!(usize::from(outer.total_len()), out.len() - l3);
    check_checksums(&[&out[..12], &out[l3 - 2..l3], &out[l3 + 20..]].concat())
        .expect("the inner packet's checksums are intact");
}

fn tunnel_flow(sport: u16) -> Spec {
    Spec {
        dst: [192, 0, 2, 40],
        sport,
        ..Spec::default()
    }
}

#[test]
fn a_syn_to_an_ipip_vip_leaves_encapsulated_to_its_backend() {
    let (mut dp, plan) = datapath(CONFIG);
    let syn = tunnel_flow(40000).build();
    let (action, out) = dp.test_run(&syn).expect("BPF_PROG_TEST_RUN");
    assert_eq!(action, XDP_TX);
    let src = expected_source([198, 51, 100, 7], 40000, 80);
    assert_eq!(&src[..3], &NET[..3], "the outer source lies in the prefix");
    let want = encapsulated(&syn, 14, src, [10, 0, 0, 41], backend_mac(41));
    assert_eq!(out, want, "SYN: byte-exact encapsulation");
    check_outer(&out, 14);

    // The established flow's next segment takes the flow-first path: the
    // same backend and outer source, encapsulated too.
    let ack = Spec {
        ack: true,
        ..tunnel_flow(40000)
    }
    .build();
    let (action, out) = dp.test_run(&ack).expect("BPF_PROG_TEST_RUN");
    assert_eq!(action, XDP_TX);
    assert_eq!(
        out,
        encapsulated(&ack, 14, src, [10, 0, 0, 41], backend_mac(41)),
        "ACK on the hit path"
    );

    // A new flow goes round-robin to the second backend, with the source
    // of its own 5-tuple; UDP-free DSR VIP beside it is still DSR.
    let second = tunnel_flow(40001).build();
    let (action, out) = dp.test_run(&second).expect("BPF_PROG_TEST_RUN");
    assert_eq!(action, XDP_TX);
    let src2 = expected_source([198, 51, 100, 7], 40001, 80);
    assert_eq!(
        out,
        encapsulated(&second, 14, src2, [10, 0, 0, 42], backend_mac(42))
    );
    let dsr = Spec::default().build();
    let (action, out) = dp.test_run(&dsr).expect("BPF_PROG_TEST_RUN");
    assert_eq!(action, XDP_TX);
    let mut want = dsr.clone();
    want[..6].copy_from_slice(&backend_mac(11));
    want[6..12].copy_from_slice(&lb_mac());
    assert_eq!(out, want, "the dsr VIP only has its MACs rewritten");

    // A router's frag-needed about a reply of the first flow goes to that
    // flow's backend through the tunnel too, with the flow's source.
    let icmp = foobar_tests::frames::frag_needed(&tunnel_flow(40000), [203, 0, 113, 1], 1400);
    let (action, out) = dp.test_run(&icmp).expect("BPF_PROG_TEST_RUN");
    assert_eq!(action, XDP_TX);
    assert_eq!(
        out,
        encapsulated(&icmp, 14, src, [10, 0, 0, 41], backend_mac(41)),
        "forwarded ICMP error"
    );
    check_outer(&out, 14);

    let stats = dp.stats(plan.vips.len(), plan.backends.len()).unwrap();
    assert_eq!(stats.reason(Reason::Forwarded).packets, 4);
    assert_eq!(stats.reason(Reason::ForwardedIcmp).packets, 1);
    assert_eq!(stats.vips[0].packets, 4);
    // Bytes are counted as sent: with the outer header.
    assert_eq!(
        stats.vips[0].bytes,
        (syn.len() + ack.len() + second.len() + icmp.len() + 4 * 20) as u64
    );
}

#[test]
fn outer_sources_spread_over_the_prefix_and_stay_with_their_flow() {
    let (mut dp, _) = datapath(CONFIG);
    let mut seen = std::collections::HashSet::new();
    for sport in 41000..41064u16 {
        let frame = tunnel_flow(sport).build();
        let (action, out) = dp.test_run(&frame).expect("BPF_PROG_TEST_RUN");
        assert_eq!(action, XDP_TX);
        let src: [u8; 4] = out[26..30].try_into().unwrap();
        assert_eq!(src, expected_source([198, 51, 100, 7], sport, 80));
        assert_eq!(&src[..3], &NET[..3], "sport {sport}: inside 10.9.0.0/24");
        // The same flow again: the same source.
        let (_, again) = dp.test_run(&frame).expect("BPF_PROG_TEST_RUN");
        assert_eq!(&again[26..30], &src, "sport {sport}: stable");
        seen.insert(src);
    }
    // 64 flows over 256 sources: a hash that spreads gives dozens.
    assert!(seen.len() >= 32, "only {} distinct sources", seen.len());
}

#[test]
fn a_single_address_source_is_used_as_it_is() {
    let text = CONFIG.replace("10.9.0.0/24", "10.9.0.7");
    let (mut dp, _) = datapath(&text);
    for sport in [42000, 42001, 42002] {
        let frame = tunnel_flow(sport).build();
        let (action, out) = dp.test_run(&frame).expect("BPF_PROG_TEST_RUN");
        assert_eq!(action, XDP_TX);
        assert_eq!(&out[26..30], &[10, 9, 0, 7]);
        check_outer(&out, 14);
    }
}

#[test]
fn a_tagged_frame_keeps_its_tag_outside_the_tunnel() {
    let (mut dp, _) = datapath(CONFIG);
    let frame = Spec {
        dst: [192, 0, 2, 50],
        vlan: Some(100),
        ..Spec::default()
    }
    .build();
    let (action, out) = dp.test_run(&frame).expect("BPF_PROG_TEST_RUN");
    assert_eq!(action, XDP_TX);
    let src = expected_source([198, 51, 100, 7], 40000, 80);
    assert_eq!(
        out,
        encapsulated(&frame, 18, src, [10, 0, 1, 51], backend_mac(51))
    );
    check_outer(&out, 18);
}

/// A client frame to the ipip VIP whose IP packet is `ip_len` bytes.
fn sized(sport: u16, ip_len: usize, df: bool) -> Vec<u8> {
    let mut frame = Spec {
        payload: vec![0x5a; ip_len - 40],
        ..tunnel_flow(sport)
    }
    .build();
    assert_eq!(frame.len(), 14 + ip_len);
    if !df {
        let mut h = Ipv4HeaderSlice::from_slice(&frame[14..])
            .unwrap()
            .to_header();
        h.dont_fragment = false;
        h.header_checksum = h.calc_header_checksum();
        frame[14..34].copy_from_slice(&h.to_bytes());
    }
    frame
}

#[test]
fn too_big_for_the_mtu_once_encapsulated_gets_frag_needed_or_is_dropped() {
    let (mut dp, plan) = datapath(CONFIG);
    let limit = (MTU - 20) as usize;

    // Exactly the MTU once encapsulated: forwarded.
    let fits = sized(43000, limit, true);
    let (action, out) = dp.test_run(&fits).expect("BPF_PROG_TEST_RUN");
    assert_eq!(action, XDP_TX, "{limit} + 20 bytes fit a {MTU} MTU");
    assert_eq!(out.len(), 14 + MTU as usize);
    check_outer(&out, 14);

    // One byte more, DF set: ICMP frag-needed (MTU - 20) back to the client,
    // from the VIP, quoting the IP header and 8 bytes.
    let big = sized(43001, limit + 1, true);
    let (action, out) = dp.test_run(&big).expect("BPF_PROG_TEST_RUN");
    assert_eq!(action, XDP_TX, "DF: answered");
    let spec = tunnel_flow(43001);
    let mut want = Vec::new();
    PacketBuilder::ethernet2(lb_mac(), spec.src_mac)
        .ip(IpHeaders::Ipv4(
            {
                let mut h = Ipv4Header::new(0, 64, IpNumber::ICMP, spec.dst, spec.src).unwrap();
                h.dont_fragment = false;
                h
            },
            Ipv4Extensions::default(),
        ))
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            DestUnreachableHeader::FragmentationNeeded {
                next_hop_mtu: (MTU - 20) as u16,
            },
        ))
        .write(&mut want, &big[14..14 + 20 + 8])
        .unwrap();
    assert_eq!(out, want, "frag-needed: byte-exact");
    check_checksums(&out).expect("IPv4 and ICMP checksums");

    // The same without DF: dropped (XDP does not fragment).
    let big_no_df = sized(43002, limit + 1, false);
    let (action, _) = dp.test_run(&big_no_df).expect("BPF_PROG_TEST_RUN");
    assert_eq!(action, XDP_DROP, "no DF: dropped");

    // IP options are quoted whole: IHL 7 quotes 28 + 8 bytes.
    let mut opts = Spec {
        ip_options: vec![7, 7, 4, 0, 0, 0, 0, 1],
        payload: vec![0x5a; limit + 1 - 48],
        ..tunnel_flow(43003)
    }
    .build();
    assert_eq!(opts.len(), 14 + limit + 1);
    let (action, out) = dp.test_run(&opts).expect("BPF_PROG_TEST_RUN");
    assert_eq!(action, XDP_TX);
    assert_eq!(out.len(), 14 + 20 + 8 + 28 + 8);
    assert_eq!(&out[14 + 28..], &opts[14..14 + 36], "quoted header + 8");
    check_checksums(&out).expect("IPv4 and ICMP checksums");
    opts.clear();

    let stats = dp.stats(plan.vips.len(), plan.backends.len()).unwrap();
    assert_eq!(stats.reason(Reason::Forwarded).packets, 1);
    assert_eq!(stats.reason(Reason::IcmpFragNeededSent).packets, 2);
    assert_eq!(stats.reason(Reason::TooBig).packets, 1);
    assert_eq!(stats.vips[0].packets, 1, "only the forwarded one");
}

// ---------------------------------------------------------------------------
// The lab: foobar with an `ipip` VIP, `foobar decap` on every backend.

/// The lab's outer-source prefix (exists only inside the lab).
const LAB_SOURCE: &str = "10.201.9.0/24";

/// The lab's config with its VIP in `ipip` mode and the outer sources.
fn ipip_config(lab: &Lab) -> String {
    lab.config()
        .replace(
            "[datapath]\n",
            &format!("[datapath]\nipip_source = \"{LAB_SOURCE}\"\n"),
        )
        .replace("forwarding = \"dsr\"", "forwarding = \"ipip\"")
}

/// `foobar decap ARGS` on backend `be` (through nsenter, so the pins land
/// in the host's bpffs, under the lab's pin root).
fn decap_cli(lab: &Lab, be: &Host, args: &[&str]) -> std::process::Output {
    let foobar = lab::foobar_bin().expect("foobar binary (cargo build -p foobar-user)");
    let pin_root = lab.pin_root.join(format!("decap-{}", be.name));
    let netns = format!("--net=/var/run/netns/{}", be.ns);
    Command::new("nsenter")
        .arg(&netns)
        .arg(&foobar)
        .arg("decap")
        .args(args)
        .arg("--pin-root")
        .arg(&pin_root)
        .output()
        .expect("running foobar decap")
}

/// Attaches the decap to every backend's eth0, allowing the LB's outer
/// sources, with loose reverse-path filtering (docs/IPIP.md).
fn attach_decap(lab: &Lab) {
    for be in &lab.backends {
        let out = decap_cli(lab, be, &["--iface", "eth0", "--allow-from", LAB_SOURCE]);
        assert!(
            out.status.success(),
            "foobar decap on {}: {}",
            be.name,
            String::from_utf8_lossy(&out.stderr)
        );
        for key in ["all", "eth0"] {
            lab.exec(
                &be.ns,
                &["sysctl", "-qw", &format!("net.ipv4.conf.{key}.rp_filter=2")],
            )
            .unwrap();
        }
    }
}

/// Backend `be`'s decap counters.
fn decap_stats(lab: &Lab, be: &Host) -> serde_json::Value {
    let out = decap_cli(lab, be, &["--iface", "eth0", "--stats", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn foobar_json(lab: &Lab, args: &[&str]) -> serde_json::Value {
    let out = lab
        .foobar_cli(&lab::foobar_bin().unwrap(), args)
        .expect("foobar CLI");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn lab_ipip_serves_3000_requests_and_a_100_mb_download_through_the_tunnel() {
    let mut lab = Lab::start(&LabOptions {
        backends: 2,
        // Room for the outer header on the LB-to-backend path.
        tunnel_mtu: Some(1520),
        ..LabOptions::default()
    })
    .expect("lab starts (root? `cargo xtask setup`?)");
    attach_decap(&lab);
    let foobar = lab::foobar_bin().unwrap();
    // First the plain DSR config: a daemon without datapath.ipip_source
    // refuses an ipip VIP at run time, saying what it needs.
    lab.start_foobar(&foobar, &lab.config())
        .expect("foobar run attaches");
    let out = lab
        .foobar_cli(
            &foobar,
            &[
                "vip",
                "add",
                "tun",
                &VIP.to_string(),
                "8081",
                "--forwarding",
                "ipip",
            ],
        )
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("datapath.ipip_source"),
        "vip add ipip without a source: {err}"
    );
    // Then a restart with the VIP in ipip mode: the restarted daemon adopts
    // the pinned maps and switches the VIP's mode.
    let (ok, _) = lab.stop_foobar().unwrap();
    assert!(ok, "foobar exits 0 on SIGTERM");
    let config = ipip_config(&lab);
    lab.start_foobar(&foobar, &config)
        .expect("foobar run attaches");
    let status = foobar_json(&lab, &["status", "--json"]);
    assert_eq!(
        status["vips"][0]["forwarding"], "ipip",
        "status shows the mode: {status}"
    );

    const N: usize = 3000;
    let started = Instant::now();
    let served = lab.requests_all_ok(&format!("http://{VIP}/"), N);
    assert_eq!(served.len(), 2, "both backends served: {served:?}");
    let requests_took = started.elapsed();

    lab.download_intact(&format!("http://{VIP}/"), 100 * 1024 * 1024);
    let download_took = started.elapsed() - requests_took;

    // Every packet the LB forwarded arrived tunnelled and was
    // decapsulated: the backends' decap counted them, and none of the
    // client's traffic reached a backend plain (without the decap the
    // backends would not have answered at all: DSR needs no tunnel, but
    // these frames carry the backend's address only in the outer header).
    let stats = foobar_json(&lab, &["stats", "--json"]);
    let forwarded = stats["reasons"]["forwarded"]["packets"].as_u64().unwrap();
    let frag = stats["reasons"]["icmp_frag_needed_sent"]["packets"]
        .as_u64()
        .unwrap();
    assert_eq!(frag, 0, "1500-byte client frames fit a 1520 MTU: {stats}");
    let mut decapsulated = 0;
    for be in &lab.backends {
        let d = decap_stats(&lab, be);
        let n = d["decapsulated"].as_u64().unwrap();
        assert!(n >= N as u64, "{}: only {n} decapsulated: {d}", be.name);
        // (refused_source may count the namespaces' own IPv6 multicast
        // listener reports: hop-by-hop headers from no allowed source.)
        decapsulated += n;
    }
    assert!(
        forwarded >= 4 * N as u64,
        "{forwarded} forwarded for {N} connections"
    );
    eprintln!(
        "ipip lab: {N} requests in {requests_took:.2?} ({served:?}), 100 MB (make + \
         download) in {download_took:.2?}; forwarded {forwarded}, decapsulated {decapsulated}"
    );
    // veth does not lose frames here; a little slack for the shared host.
    assert!(
        decapsulated <= forwarded && decapsulated * 100 >= forwarded * 99,
        "forwarded {forwarded}, decapsulated {decapsulated}"
    );
}

/// Without room for the outer header (every MTU 1500), the client's
/// full-size DF segments get ICMP frag-needed (MTU 1480) from the LB; the
/// client's stack takes it (right checksums, right quote), lowers its path
/// MTU to the VIP, and a 4 MB upload completes intact.
#[test]
fn lab_ipip_without_mtu_room_answers_frag_needed_and_uploads_complete() {
    let mut lab = Lab::start(&LabOptions {
        backends: 1,
        ..LabOptions::default()
    })
    .expect("lab starts (root? `cargo xtask setup`?)");
    attach_decap(&lab);
    const PORT: u16 = 9000;
    // A second ipip VIP on PORT, served by a sink in the backend.
    let config = format!(
        "{}\n[[vip]]\nname = \"sink\"\naddress = \"{VIP}\"\nport = {PORT}\n\
         forwarding = \"ipip\"\n[vip.health]\ncheck = \"none\"\n\
         [[vip.backend]]\naddress = \"{}\"\n",
        ipip_config(&lab),
        lab.backends[0].addr
    );
    let sink = lab::sink_in(&lab.backends[0].ns, PORT);
    lab.start_foobar(&lab::foobar_bin().unwrap(), &config)
        .expect("foobar run attaches");

    let data: Vec<u8> = (0..4 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut conn = lab
        .connect_from_client(SocketAddr::new(VIP.into(), PORT))
        .expect("connecting to the sink VIP");
    conn.set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    conn.write_all(&data).expect("uploading through the VIP");
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    let received = sink.join().expect("sink thread").expect("sink");
    assert_eq!(received.len(), data.len(), "upload length");
    assert!(received == data, "the upload differs");

    let stats = foobar_json(&lab, &["stats", "--json"]);
    let frag = stats["reasons"]["icmp_frag_needed_sent"]["packets"]
        .as_u64()
        .unwrap();
    assert!(frag >= 1, "no frag-needed sent: {stats}");
    let route = lab
        .exec(&lab.client.ns, &["ip", "route", "get", &VIP.to_string()])
        .unwrap();
    assert!(
        route.contains("mtu 1480"),
        "the client did not learn the path MTU: {route}"
    );
    let d = decap_stats(&lab, &lab.backends[0]);
    assert!(d["decapsulated"].as_u64().unwrap() >= 1000, "{d}");
}
