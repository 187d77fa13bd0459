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
use std::{
    collections::HashMap,
    io::Write as _,
    net::{Ipv4Addr, SocketAddr},
    process::Command,
    time::{Duration, Instant},
};

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
use foobar_tests::{
    frames::{check_checksums, Spec},
    lab::{self, Host, Lab, LabOptions, LB_IFACE, VIP},
};

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
    let macs: HashMap<std::net::IpAddr, [u8; 6]> = [11, 21, 41]
        .into_iter()
        .map(|n| (Ipv4Addr::new(10, 0, 0, n).into(), backend_mac(n)))
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

// ---------------------------------------------------------------------------
// The lab: every link at MTU 9000, one backend, a sink VIP on SINK_PORT.

const LAB_MTU: u16 = 9000;
/// The sink VIP's port (a second VIP beside the lab's port-80 one).
const SINK_PORT: u16 = 9000;
/// What goes each way: a few seconds at most on a loaded machine.
const TRANSFER: usize = 16 * 1024 * 1024;
/// The LB's SNAT address (nat), on its interface as an operator adds it.
const LAB_SNAT: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 5);
/// The `ipip` outer sources of the lab (only inside the lab).
const LAB_SOURCE: &str = "10.201.9.0/24";
/// Average bytes per forwarded frame above which the frames were jumbo:
/// a 1500-MTU path carries at most 1514-byte frames, and a program
/// without multi-buffer support caps the veth at 3506.
const JUMBO_AVERAGE: u64 = 8000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Dsr,
    Nat,
    Ipip,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Dsr => "dsr",
            Mode::Nat => "nat",
            Mode::Ipip => "ipip",
        }
    }
}

/// A jumbo lab for `mode`, foobar attached in `xdp_mode`, a sink VIP on
/// SINK_PORT over the one backend; `ipip` backends run `foobar decap`
/// (native mode, on a link of MTU 9020).
fn jumbo_lab(mode: Mode, xdp_mode: &str) -> Lab {
    let mut lab = Lab::start(&LabOptions {
        backends: 1,
        jumbo_mtu: Some(LAB_MTU),
        // The outer header's room on the LB-to-backend links.
        tunnel_mtu: (mode == Mode::Ipip).then_some(LAB_MTU + 20),
        plain_backends: mode == Mode::Nat,
        ..LabOptions::default()
    })
    .expect("lab starts (root? `cargo xtask setup`?)");
    let mut datapath = String::from("[datapath]\n");
    match mode {
        Mode::Dsr => {}
        Mode::Nat => {
            lab::run(&[
                "ip",
                "-n",
                &lab.lb.ns,
                "addr",
                "add",
                &format!("{LAB_SNAT}/24"),
                "dev",
                LB_IFACE,
            ])
            .unwrap();
            datapath.push_str(&format!("snat_address = \"{LAB_SNAT}\"\n"));
        }
        Mode::Ipip => {
            attach_decap(&lab, "native");
            datapath.push_str(&format!("ipip_source = \"{LAB_SOURCE}\"\n"));
        }
    }
    let forwarding = format!("forwarding = \"{}\"", mode.name());
    let config = format!(
        "{}\n[[vip]]\nname = \"sink\"\naddress = \"{VIP}\"\nport = {SINK_PORT}\n\
         {forwarding}\n[vip.health]\ncheck = \"none\"\n\
         [[vip.backend]]\naddress = \"{}\"\n",
        lab.config()
            .replace("[datapath]\n", &datapath)
            .replace("forwarding = \"dsr\"", &forwarding)
            .replace(
                "xdp_mode = \"native\"",
                &format!("xdp_mode = \"{xdp_mode}\"")
            ),
        lab.backends[0].addr
    );
    lab.start_foobar(&lab::foobar_bin().unwrap(), &config)
        .expect("foobar run attaches on a 9000-byte MTU");
    lab
}

/// `foobar decap ARGS` on backend `be` (through nsenter, so the pins land
/// in the host's bpffs, under the lab's pin root).
fn decap_cli(lab: &Lab, be: &Host, args: &[&str]) -> std::process::Output {
    let pin_root = lab.pin_root.join(format!("decap-{}", be.name));
    Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", be.ns))
        .arg(lab::foobar_bin().expect("foobar binary (cargo build -p foobar-user)"))
        .arg("decap")
        .args(args)
        .arg("--pin-root")
        .arg(&pin_root)
        .output()
        .expect("running foobar decap")
}

/// The decap on every backend's eth0 in `xdp_mode`, with loose
/// reverse-path filtering (docs/IPIP.md).
fn attach_decap(lab: &Lab, xdp_mode: &str) {
    for be in &lab.backends {
        let out = decap_cli(
            lab,
            be,
            &[
                "--iface",
                "eth0",
                "--allow-from",
                LAB_SOURCE,
                "--xdp-mode",
                xdp_mode,
            ],
        );
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

fn json(out: std::process::Output, what: &str) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn stats(lab: &Lab) -> serde_json::Value {
    json(
        lab.foobar_cli(&lab::foobar_bin().unwrap(), &["stats", "--json"])
            .unwrap(),
        "foobar stats",
    )
}

/// (packets, bytes) of VIP `name` in `stats`.
fn vip_counters(stats: &serde_json::Value, name: &str) -> (u64, u64) {
    let vip = stats["vips"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == name))
        .unwrap_or_else(|| panic!("no VIP {name} in {stats}"));
    (
        vip["packets"].as_u64().unwrap(),
        vip["bytes"].as_u64().unwrap(),
    )
}

/// The MTU of `iface` in namespace `ns`.
fn mtu(ns: &str, iface: &str) -> u32 {
    lab::run(&[
        "ip",
        "netns",
        "exec",
        ns,
        "cat",
        &format!("/sys/class/net/{iface}/mtu"),
    ])
    .unwrap()
    .trim()
    .parse()
    .unwrap()
}

fn sha256(path: &std::path::Path) -> String {
    lab::run(&["sha256sum", path.to_str().unwrap()]).unwrap()[..64].to_owned()
}

/// The whole story for `mode`: the links are at 9000 with the programs
/// attached (and the LB's peer still takes 9000 after being lowered, which
/// the kernel refuses beside a program without multi-buffer support); an
/// upload through the sink VIP (client to backend: through the LB in every
/// mode) and a download through the web VIP (back through the LB in `nat`)
/// arrive intact; the LB's counters show jumbo frames.
fn jumbo_story(mode: Mode, xdp_mode: &str) {
    let started = Instant::now();
    let mut lab = jumbo_lab(mode, xdp_mode);
    let backend = lab.backends[0].clone();
    let (sw, lb_port) = lab.bridge_port(&lab.lb);
    let (_, be_port) = lab.bridge_port(&backend);
    let link_mtu = u32::from(LAB_MTU) + if mode == Mode::Ipip { 20 } else { 0 };
    assert_eq!(mtu(&lab.client.ns, "eth0"), u32::from(LAB_MTU));
    assert_eq!(mtu(&lab.lb.ns, LB_IFACE), link_mtu);
    assert_eq!(mtu(&backend.ns, "eth0"), link_mtu);
    assert!(
        lab.xdp_attached().unwrap(),
        "foobar attached at MTU {link_mtu}"
    );
    // The peers of the links with a program: lowered, then raised back,
    // which the kernel allows only beside a frags-aware program.
    let mut peers = vec![(sw.clone(), lb_port.clone())];
    if mode == Mode::Ipip {
        peers.push((sw.clone(), be_port.clone()));
    }
    for (ns, port) in &peers {
        lab::run(&["ip", "-n", ns, "link", "set", port, "mtu", "1500"]).unwrap();
        lab::run(&[
            "ip",
            "-n",
            ns,
            "link",
            "set",
            port,
            "mtu",
            &link_mtu.to_string(),
        ])
        .unwrap_or_else(|e| panic!("{port} takes MTU {link_mtu} back: {e:#}"));
    }

    // Upload: client -> VIP:SINK_PORT -> backend, through the LB.
    let data: Vec<u8> = (0..TRANSFER as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let sink = lab::sink_in(&backend.ns, SINK_PORT);
    let before = stats(&lab);
    let mut conn = lab
        .connect_from_client(SocketAddr::new(VIP.into(), SINK_PORT))
        .expect("connecting to the sink VIP");
    conn.set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    conn.write_all(&data).expect("uploading through the VIP");
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    let received = sink.join().expect("sink thread").expect("sink");
    assert_eq!(received.len(), data.len(), "upload length");
    assert!(received == data, "the upload differs");
    let after = stats(&lab);
    let (p0, b0) = vip_counters(&before, "sink");
    let (p1, b1) = vip_counters(&after, "sink");
    let (packets, bytes) = (p1 - p0, b1 - b0);
    let min_packets = (TRANSFER / (usize::from(LAB_MTU) - 40)) as u64;
    assert!(
        packets >= min_packets,
        "{packets} packets forwarded for {TRANSFER} bytes"
    );
    let upload_average = bytes / packets;
    assert!(
        upload_average > JUMBO_AVERAGE,
        "{}: {packets} frames, {bytes} bytes: {upload_average} per frame is not jumbo",
        mode.name()
    );

    // Download: backend -> client (back through the LB in nat).
    let original = lab.make_file("big.bin", TRANSFER).unwrap();
    let copy = lab.dir.join("downloaded.bin");
    lab.exec(
        &lab.client.ns,
        &[
            "curl",
            "-sS",
            "--max-time",
            "60",
            "-o",
            copy.to_str().unwrap(),
            &format!("http://{VIP}/big.bin"),
        ],
    )
    .unwrap();
    assert_eq!(std::fs::metadata(&copy).unwrap().len(), TRANSFER as u64);
    assert_eq!(sha256(&copy), sha256(&original), "the download differs");
    let end = stats(&lab);
    let mut reply_average = None;
    if mode == Mode::Nat {
        let r =
            |s: &serde_json::Value, k: &str| s["reasons"]["forwarded_reply"][k].as_u64().unwrap();
        let packets = r(&end, "packets") - r(&after, "packets");
        let bytes = r(&end, "bytes") - r(&after, "bytes");
        assert!(
            packets >= min_packets,
            "{packets} replies for {TRANSFER} bytes"
        );
        let average = bytes / packets;
        assert!(
            average > JUMBO_AVERAGE,
            "nat replies: {packets} frames, {bytes} bytes: {average} per frame is not jumbo"
        );
        reply_average = Some(average);
    }
    if mode == Mode::Ipip {
        let d = json(
            decap_cli(&lab, &backend, &["--iface", "eth0", "--stats", "--json"]),
            "decap stats",
        );
        let n = d["decapsulated"].as_u64().unwrap();
        assert!(n >= min_packets, "only {n} decapsulated: {d}");
        assert_eq!(d["malformed"].as_u64(), Some(0), "{d}");
    }
    for reason in ["pass_malformed", "drop_too_big"] {
        assert_eq!(
            end["reasons"][reason]["packets"].as_u64(),
            Some(0),
            "{reason}: {end}"
        );
    }
    lab.stop_foobar().unwrap();
    let replies = reply_average
        .map(|a| format!("; replies {a} bytes per frame"))
        .unwrap_or_default();
    eprintln!(
        "jumbo {} ({xdp_mode}): upload {packets} frames, {upload_average} bytes per frame{replies}; \
         {:.1?} in all",
        mode.name(),
        started.elapsed()
    );
}

#[test]
fn lab_jumbo_dsr_forwards_9000_byte_frames_intact() {
    jumbo_story(Mode::Dsr, "native");
}

#[test]
fn lab_jumbo_nat_translates_9000_byte_frames_both_ways_intact() {
    jumbo_story(Mode::Nat, "native");
}

#[test]
fn lab_jumbo_ipip_tunnels_9000_byte_frames_to_the_decap_intact() {
    jumbo_story(Mode::Ipip, "native");
}

/// The LB program in skb (generic) mode on a jumbo link: it attaches, and
/// frames of the whole MTU come through it whole.
#[test]
fn lab_jumbo_dsr_in_skb_mode_forwards_9000_byte_frames_intact() {
    jumbo_story(Mode::Dsr, "skb");
}
