//! Two-arm under BPF_PROG_TEST_RUN (docs/TOPOLOGY.md): the program serves
//! a client-side interface (`c0`, LB_MAC) and a backend-side one (`b0`,
//! ARM_MAC). A frame for a backend reached through the other interface
//! returns XDP_REDIRECT (through the EGRESS devmap) with the egress
//! interface's MAC as source; a NAT reply coming in on the backend side
//! is redirected to the client side; an `ipip` packet is encapsulated and
//! redirected; a backend on the interface the frame came in on still gets
//! XDP_TX. Expected frames are built and checksums
//! verified with etherparse (`foobar_tests::frames`). Each test runs in a
//! network namespace of its own thread (unshared, so it is gone when the
//! thread ends), where the veths exist. Needs root (loading BPF).
use std::{collections::HashMap, net::Ipv4Addr, process::Command};

use foobar::{
    config,
    datapath::{Arm, Datapath, LoadOptions},
    state::{self, State},
};
use foobar_tests::frames::{check_checksums, Spec};

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

const ARM_MAC: [u8; 6] = [0x02, 0xa0, 0, 0, 0, 0x01];
const SNAT: [u8; 4] = [10, 0, 0, 1];

/// A NAT VIP and a DSR VIP, each with a backend behind the backend-side
/// interface, and a DSR VIP whose backend is on the client side.
const CONFIG: &str = r#"
    [datapath]
    snat_address = "10.0.0.1"
    ipip_source = "10.0.0.1"

    [[vip]]
    name = "web"
    address = "192.0.2.10"
    port = 80
    forwarding = "nat"
    [[vip.backend]]
    address = "10.0.0.11"
    port = 8080

    [[vip]]
    name = "dsr"
    address = "192.0.2.60"
    port = 80
    forwarding = "dsr"
    [[vip.backend]]
    address = "10.0.0.61"

    [[vip]]
    name = "tunnel"
    address = "192.0.2.80"
    port = 80
    forwarding = "ipip"
    [[vip.backend]]
    address = "10.0.0.81"

    [[vip]]
    name = "near"
    address = "192.0.2.70"
    port = 80
    forwarding = "dsr"
    [[vip.backend]]
    address = "198.51.100.71"
"#;

fn backend_mac(last: u8) -> [u8; 6] {
    [0x02, 0xbe, 0, 0, 0, last]
}

fn lb_mac() -> [u8; 6] {
    Spec::default().dst_mac
}

fn client_mac() -> [u8; 6] {
    Spec::default().src_mac
}

/// The interfaces of the test's namespace.
struct Arms {
    client: u32,
    backend: u32,
}

/// Runs `test` in a new network namespace (this thread's only) holding
/// two veth pairs, `c0`/`c1` (client side) and `b0`/`b1` (backend side).
fn in_netns(test: impl FnOnce(Arms) + Send + 'static) {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare (root?)");
        for (a, b) in [("c0", "c1"), ("b0", "b1")] {
            // A child process starts in its parent thread's namespace.
            let status = Command::new("ip")
                .args(["link", "add", a, "type", "veth", "peer", "name", b])
                .status()
                .expect("running ip");
            assert!(status.success(), "ip link add {a}");
        }
        let index = |n: &str| nix::net::if_::if_nametoindex(n).expect("the veth exists");
        test(Arms {
            client: index("c0"),
            backend: index("b0"),
        });
    })
    .join()
    .expect("the test thread passed");
}

/// The datapath of CONFIG on a two-arm node: 10.0.0.0/24 behind the
/// backend side, 198.51.100.71 on the client side.
fn datapath(arms: &Arms) -> Datapath {
    let config = config::parse(CONFIG).expect("test config is valid");
    let macs: HashMap<std::net::IpAddr, [u8; 6]> = [
        (Ipv4Addr::new(10, 0, 0, 11).into(), backend_mac(11)),
        (Ipv4Addr::new(10, 0, 0, 61).into(), backend_mac(61)),
        (Ipv4Addr::new(10, 0, 0, 81).into(), backend_mac(81)),
        (Ipv4Addr::new(198, 51, 100, 71).into(), backend_mac(71)),
    ]
    .into_iter()
    .collect();
    let mut state = State::build(&state::saved_from_config(&config), &macs).expect("MACs given");
    state.set_egress(Ipv4Addr::new(10, 0, 0, 11).into(), Some(arms.backend));
    state.set_egress(Ipv4Addr::new(10, 0, 0, 61).into(), Some(arms.backend));
    state.set_egress(Ipv4Addr::new(10, 0, 0, 81).into(), Some(arms.backend));
    state.set_egress(Ipv4Addr::new(198, 51, 100, 71).into(), Some(arms.client));
    let mut dp = Datapath::load(&LoadOptions {
        lb_mac: lb_mac(),
        lb_ifindex: arms.client,
        ipip_source: config.datapath.ipip_source,
        arm: Some(Arm {
            ifindex: arms.backend,
            mac: ARM_MAC,
        }),
        ..LoadOptions::default()
    })
    .expect("loading the XDP program (are you root?)");
    dp.apply(&state.plan()).expect("programming the maps");
    dp
}

/// Runs `frame` as if it came in on `ingress`; checks the action and the
/// checksums, returns the output.
fn run(dp: &mut Datapath, ingress: u32, frame: &[u8], want: u32, what: &str) -> Vec<u8> {
    let (action, out) = dp.test_run_on(Some(ingress), frame).expect("test run");
    assert_eq!(action, want, "{what}: action");
    check_checksums(&out).unwrap_or_else(|e| panic!("{what}: {e}"));
    out
}

/// The SNAT port etherparse reads in a translated frame.
fn source_port(frame: &[u8]) -> u16 {
    let sliced = etherparse::SlicedPacket::from_ethernet(frame).expect("a frame etherparse reads");
    match sliced.transport {
        Some(etherparse::TransportSlice::Tcp(t)) => t.source_port(),
        _ => panic!("not TCP"),
    }
}

#[test]
fn nat_to_a_backend_on_the_other_arm_is_redirected_from_its_mac_and_replies_come_back() {
    in_netns(|arms| {
        let mut dp = datapath(&arms);
        let syn = Spec::default();
        let out = run(&mut dp, arms.client, &syn.build(), XDP_REDIRECT, "SYN");
        let port = source_port(&out);
        let want = Spec {
            src_mac: ARM_MAC,
            dst_mac: backend_mac(11),
            src: SNAT,
            dst: [10, 0, 0, 11],
            sport: port,
            dport: 8080,
            ..syn.clone()
        };
        assert_eq!(out, want.build(), "translated, from the backend side's MAC");

        // The backend's reply comes in on the backend side, to its MAC,
        // and leaves on the client side, from LB_MAC to the client.
        let reply = Spec {
            src_mac: backend_mac(11),
            dst_mac: ARM_MAC,
            src: [10, 0, 0, 11],
            dst: SNAT,
            sport: 8080,
            dport: port,
            ack: true,
            payload: b"HTTP/1.1 200 OK\r\n\r\n".to_vec(),
            ..syn.clone()
        };
        let back = run(&mut dp, arms.backend, &reply.build(), XDP_REDIRECT, "reply");
        let want_back = Spec {
            src_mac: lb_mac(),
            dst_mac: client_mac(),
            src: syn.dst,
            dst: syn.src,
            sport: syn.dport,
            dport: syn.sport,
            ack: true,
            payload: reply.payload.clone(),
            ..syn.clone()
        };
        assert_eq!(
            back,
            want_back.build(),
            "translated back to the client side"
        );

        // The flow's next packet goes the same way, with the same port.
        let ack = Spec {
            ack: true,
            ..syn.clone()
        };
        let out = run(&mut dp, arms.client, &ack.build(), XDP_REDIRECT, "ACK");
        assert_eq!(source_port(&out), port);
    });
}

#[test]
fn dsr_to_a_backend_on_the_other_arm_is_redirected_and_one_on_this_arm_is_sent_back() {
    in_netns(|arms| {
        let mut dp = datapath(&arms);
        let far = Spec {
            dst: [192, 0, 2, 60],
            ..Spec::default()
        };
        let out = run(&mut dp, arms.client, &far.build(), XDP_REDIRECT, "far");
        let want = Spec {
            src_mac: ARM_MAC,
            dst_mac: backend_mac(61),
            ..far.clone()
        };
        assert_eq!(out, want.build(), "only the MACs change");

        // A backend reached through the interface the frame came in on:
        // XDP_TX, from that interface's MAC, as one-arm.
        let near = Spec {
            dst: [192, 0, 2, 70],
            ..Spec::default()
        };
        let out = run(&mut dp, arms.client, &near.build(), XDP_TX, "near");
        let want = Spec {
            src_mac: lb_mac(),
            dst_mac: backend_mac(71),
            ..near.clone()
        };
        assert_eq!(out, want.build());

        // A client on the backend side, to ARM_MAC: its backend is on the
        // same arm (XDP_TX from ARM_MAC); frames there to the client
        // side's MAC are not for this interface.
        let inside = Spec {
            dst_mac: ARM_MAC,
            ..far.clone()
        };
        let out = run(&mut dp, arms.backend, &inside.build(), XDP_TX, "inside");
        assert_eq!(out, want_on(&inside, ARM_MAC, backend_mac(61)));
        let stray = far.build();
        let (action, out) = dp.test_run_on(Some(arms.backend), &stray).unwrap();
        assert_eq!(action, XDP_PASS, "another interface's MAC");
        assert_eq!(out, stray, "untouched");
    });
}

fn want_on(frame: &Spec, src_mac: [u8; 6], dst_mac: [u8; 6]) -> Vec<u8> {
    Spec {
        src_mac,
        dst_mac,
        ..frame.clone()
    }
    .build()
}

#[test]
fn ipip_to_a_backend_on_the_other_arm_is_redirected_encapsulated() {
    in_netns(|arms| {
        let mut dp = datapath(&arms);
        let flow = Spec {
            dst: [192, 0, 2, 80],
            ..Spec::default()
        };
        let frame = flow.build();
        let (action, out) = dp.test_run_on(Some(arms.client), &frame).unwrap();
        assert_eq!(action, XDP_REDIRECT);
        assert_eq!(out[..6], backend_mac(81), "to the backend's MAC");
        assert_eq!(out[6..12], ARM_MAC, "from the backend side's MAC");
        assert_eq!(out[12..14], [0x08, 0x00]);
        let outer = etherparse::Ipv4HeaderSlice::from_slice(&out[14..]).expect("outer IPv4");
        let header = outer.to_header();
        assert_eq!(header.header_checksum, header.calc_header_checksum());
        assert_eq!(outer.protocol(), etherparse::IpNumber::IPV4);
        assert_eq!(outer.source(), SNAT, "the ipip source (a /32)");
        assert_eq!(outer.destination(), [10, 0, 0, 81]);
        assert_eq!(&out[34..], &frame[14..], "the client's packet, untouched");
    });
}
