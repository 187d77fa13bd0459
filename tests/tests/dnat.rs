//! `dnat` under BPF_PROG_TEST_RUN: the forward rewrite changes only the
//! destination (backend address and port; the client's address and port
//! are kept), a backend's reply (routed through the LB, addressed to the
//! client) is translated back to the VIP, replies nobody asked for and
//! other traffic pass untouched, a live 5-tuple collision is dropped and
//! counted, and state ends with its reverse entry. Expected frames are
//! built with etherparse (`foobar_tests::frames`), an independent parser,
//! which also checks every translated frame's checksums. Needs root.
use std::{net::Ipv4Addr, time::Duration};

use foobar::{
    config,
    datapath::{Datapath, LoadOptions},
    plan::Plan,
    state::State,
};
use foobar_common::{vip_addr_bit, Reason, FWD_DNAT, NAT_CLOSED};
use foobar_tests::fixture::{self, backend_mac, lb_mac};
use foobar_tests::frames::{check_checksums, Spec, L4};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

/// `web` and `web2` share their backend (10.0.0.11:8080), so one client
/// address and port to both makes the same reply 5-tuple; `dns` is UDP.
const VIPS: &str = r#"
    [[vip]]
    name = "web"
    address = "192.0.2.10"
    port = 80
    forwarding = "dnat"
    [[vip.backend]]
    address = "10.0.0.11"
    port = 8080

    [[vip]]
    name = "web2"
    address = "192.0.2.11"
    port = 80
    forwarding = "dnat"
    [[vip.backend]]
    address = "10.0.0.11"
    port = 8080

    [[vip]]
    name = "dns"
    address = "192.0.2.20"
    port = 53
    protocol = "udp"
    forwarding = "dnat"
    [[vip.backend]]
    address = "10.0.0.21"
"#;

fn plan_of(text: &str) -> Plan {
    fixture::plan_of(text, &[11, 21])
}

/// The plan with `datapath` as the `[datapath]` table.
fn dnat_plan(datapath: &str) -> Plan {
    plan_of(&format!("[datapath]\n{datapath}\n{VIPS}"))
}

/// NAT state lasting `linger_s` after a close and `udp_idle_s` after a UDP
/// flow's last packet.
fn datapath(linger_s: u32, udp_idle_s: u32) -> Datapath {
    let keys = format!("nat_linger = \"{linger_s}s\"\nnat_udp_idle = \"{udp_idle_s}s\"");
    fixture::load(
        &dnat_plan(&keys),
        LoadOptions {
            dnat_replies: true,
            ..LoadOptions::default()
        },
    )
}

fn addr_be(a: [u8; 4]) -> u32 {
    u32::from_ne_bytes(a)
}

fn bit_set(bits: &[u64], a: [u8; 4]) -> bool {
    let (word, mask) = vip_addr_bit(addr_be(a));
    bits[word as usize] & mask != 0
}

#[test]
fn the_plan_and_the_config_carry_dnat() {
    let plan = dnat_plan("nat_tcp_idle = \"60s\"");
    let web = plan.vips.iter().find(|v| v.name == "web").expect("web");
    assert_eq!(web.service.forward_mode, FWD_DNAT);
    let nat = plan.nat_vips[&web.service.vip_id];
    assert_eq!(nat.snat_addr_be, 0, "no SNAT address: the client's is kept");
    assert_eq!((nat.tcp_idle_s, nat.udp_idle_s, nat.linger_s), (60, 30, 2));
    assert_eq!(plan.backend_ports[&web.backend_ids[0]], 8080u16.to_be());
    assert!(plan.dnat_sources.contains(&addr_be([10, 0, 0, 11])));
    assert!(plan.dnat_sources.contains(&addr_be([10, 0, 0, 21])));
    assert!(
        plan.addresses
            .keys()
            .all(|k| k.addr_be != addr_be([10, 0, 0, 11])),
        "backends are no VIP addresses"
    );
    // An SNAT address is nat's alone.
    let bad = VIPS.replacen(
        "forwarding = \"dnat\"",
        "forwarding = \"dnat\"\n    snat_address = \"10.0.0.1\"",
        1,
    );
    let problems = config::parse(&bad).expect_err("snat_address on a dnat VIP");
    assert!(
        problems.iter().any(|p| p.key == "vip[0].snat_address"),
        "{problems:?}"
    );
}

/// A datapath loaded without the dnat reply path (no dnat VIP at start:
/// the pass path skips the check) refuses a plan with a dnat VIP, rather
/// than forwarding flows whose replies it would never translate; loaded
/// with it, the same plan applies.
#[test]
fn a_datapath_loaded_without_the_reply_path_refuses_dnat_vips() {
    let mut dp = Datapath::load(&LoadOptions {
        lb_mac: lb_mac(),
        ..LoadOptions::default()
    })
    .expect("loading the XDP program (are you root?)");
    assert!(!dp.dnat_replies());
    let err = dp
        .apply(&dnat_plan(""))
        .expect_err("a dnat VIP without the reply path");
    let text = err.to_string();
    assert!(
        text.contains("VIP web") && text.contains("restart foobar"),
        "{text}"
    );
    assert!(
        dp.dnat_source_bits().expect("bits").iter().all(|&w| w == 0),
        "nothing written"
    );
    assert!(datapath(2, 30).dnat_replies());
}

#[test]
fn source_bits_are_set_with_the_vips_and_cleared_after_them() {
    let mut dp = datapath(2, 30);
    let bits = dp.dnat_source_bits().expect("DNAT_SRC_BITS");
    assert!(bit_set(&bits, [10, 0, 0, 11]) && bit_set(&bits, [10, 0, 0, 21]));
    // Only `dns` left: its backend's bit stays, web's goes.
    let only_dns = VIPS.split("[[vip]]").nth(3).expect("dns");
    dp.apply(&plan_of(&format!("[[vip]]{only_dns}")))
        .expect("apply");
    let bits = dp.dnat_source_bits().expect("DNAT_SRC_BITS");
    assert!(bit_set(&bits, [10, 0, 0, 21]));
    if vip_addr_bit(addr_be([10, 0, 0, 11])) != vip_addr_bit(addr_be([10, 0, 0, 21])) {
        assert!(!bit_set(&bits, [10, 0, 0, 11]));
    }
    dp.apply(&Plan::default()).expect("apply");
    assert!(dp
        .dnat_source_bits()
        .expect("DNAT_SRC_BITS")
        .iter()
        .all(|&w| w == 0));
}

/// The client's frame as dnat forwards it: to the backend and its port,
/// LB MAC to backend MAC; source address and port unchanged.
fn forwarded(client: &Spec, backend: u8, backend_port: u16) -> Vec<u8> {
    Spec {
        src_mac: lb_mac(),
        dst_mac: backend_mac(backend),
        dst: [10, 0, 0, backend],
        dport: backend_port,
        ..client.clone()
    }
    .build()
}

/// The backend's reply, routed to the LB: addressed to the client.
fn reply(client: &Spec, backend: u8, backend_port: u16, payload: &[u8]) -> Spec {
    Spec {
        src_mac: backend_mac(backend),
        dst_mac: lb_mac(),
        src: [10, 0, 0, backend],
        dst: client.src,
        sport: backend_port,
        dport: client.sport,
        ack: true,
        payload: payload.to_vec(),
        ..client.clone()
    }
}

/// The reply as the client must get it: from the VIP and its port, to the
/// MAC the client's packets came from.
fn translated_reply(client: &Spec, payload: &[u8]) -> Vec<u8> {
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

fn tx(dp: &mut Datapath, frame: &[u8], what: &str) -> Vec<u8> {
    let (action, out) = dp.test_run(frame).expect("test run");
    assert_eq!(action, XDP_TX, "{what}: action");
    check_checksums(&out).unwrap_or_else(|e| panic!("{what}: {e}"));
    out
}

fn passes_untouched(dp: &mut Datapath, frame: &[u8], what: &str) {
    let (action, out) = dp.test_run(frame).expect("test run");
    assert_eq!((action, out.as_slice()), (XDP_PASS, frame), "{what}");
}

/// Sets TCP flags (`bits`: 0x01 FIN, 0x04 RST) and fixes the checksum.
fn with_tcp_flags(spec: &Spec, bits: u8) -> Vec<u8> {
    let mut frame = spec.build();
    frame[14 + 20 + 13] |= bits;
    let copy = frame.clone();
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
    frame[14 + 20 + 16..14 + 20 + 18].copy_from_slice(&sum.to_be_bytes());
    frame
}

#[test]
fn tcp_keeps_the_client_and_replies_are_translated_back_byte_exact() {
    let mut dp = datapath(2, 30);
    let syn = Spec::default();
    let out = tx(&mut dp, &syn.build(), "SYN");
    assert_eq!(out, forwarded(&syn, 11, 8080), "SYN: destination only");

    // The state and its reverse entry: keyed by the reply's 5-tuple
    // (backend:8080 -> client:40000).
    let states = dp.nat_flows().expect("NAT_FLOWS");
    assert_eq!(states.len(), 1);
    let (key, st) = states[0];
    assert_eq!(st.snat_addr_be, addr_be(syn.src));
    assert_eq!(st.snat_port_be, syn.sport.to_be());
    assert_eq!(st.client_mac, syn.src_mac);
    let reverse = dp.nat_reverse().expect("NAT_REVERSE");
    assert_eq!(reverse.len(), 1);
    let (rkey, rev) = reverse[0];
    assert_eq!(
        (rkey.src_be, rkey.dst_be, rkey.sport_be, rkey.dport_be),
        (
            addr_be([10, 0, 0, 11]),
            addr_be(syn.src),
            8080u16.to_be(),
            syn.sport.to_be()
        )
    );
    assert_eq!((rev.flow, rev.nonce), (key, st.nonce));

    let back = tx(&mut dp, &reply(&syn, 11, 8080, b"").build(), "SYN-ACK");
    assert_eq!(back, translated_reply(&syn, b""), "reply translated back");

    // Established: the flow-first path, the same rewrite.
    let ack = Spec {
        ack: true,
        ip_options: vec![1, 1, 1, 1],
        ..syn.clone()
    };
    assert_eq!(tx(&mut dp, &ack.build(), "ACK"), forwarded(&ack, 11, 8080));
    let data = reply(&syn, 11, 8080, &[0x42; 1200]).build();
    assert_eq!(
        tx(&mut dp, &data, "reply data"),
        translated_reply(&syn, &[0x42; 1200])
    );
    let stats = dp.stats(3, 3).expect("counters");
    assert_eq!(stats.reason(Reason::Forwarded).packets, 2);
    assert_eq!(stats.reason(Reason::ForwardedReply).packets, 2);
}

#[test]
fn udp_keeps_the_client_and_its_zero_checksum() {
    let mut dp = datapath(2, 30);
    let query = Spec {
        l4: L4::Udp,
        dst: [192, 0, 2, 20],
        dport: 53,
        payload: b"query".to_vec(),
        ..Spec::default()
    };
    assert_eq!(
        tx(&mut dp, &query.build(), "UDP"),
        forwarded(&query, 21, 53)
    );
    let answer = reply(&query, 21, 53, b"answer").build();
    assert_eq!(
        tx(&mut dp, &answer, "UDP reply"),
        translated_reply(&query, b"answer")
    );
    // No checksum (0) stays none.
    let zero = |f: &mut [u8]| f[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
    let mut frame = query.build();
    zero(&mut frame);
    let (action, out) = dp.test_run(&frame).expect("test run");
    let mut want = forwarded(&query, 21, 53);
    zero(&mut want);
    assert_eq!((action, out), (XDP_TX, want));
}

#[test]
fn replies_nobody_asked_for_and_other_traffic_pass_untouched() {
    let mut dp = datapath(2, 30);
    let client = Spec::default();
    // From a backend, to a client without state: the node's (routed on).
    passes_untouched(
        &mut dp,
        &reply(&client, 11, 8080, b"").build(),
        "reply without state",
    );
    // From another host to a client: the source bit is clear.
    let stranger = [10, 0, 0, 99];
    assert_ne!(
        vip_addr_bit(addr_be(stranger)),
        vip_addr_bit(addr_be([10, 0, 0, 11]))
    );
    let mut routed = reply(&client, 11, 8080, b"");
    routed.src = stranger;
    passes_untouched(&mut dp, &routed.build(), "another host's packet");
    // From a backend, with state, but not a reply: a fragment, an echo
    // request, the backend's own connection to another port.
    tx(&mut dp, &client.build(), "SYN");
    for (spec, what) in [
        (
            Spec {
                more_fragments: true,
                ..reply(&client, 11, 8080, b"")
            },
            "fragment",
        ),
        (
            Spec {
                l4: L4::Icmp,
                ..reply(&client, 11, 8080, b"")
            },
            "ping",
        ),
        (
            Spec {
                sport: 22,
                ..reply(&client, 11, 8080, b"")
            },
            "other port",
        ),
    ] {
        passes_untouched(&mut dp, &spec.build(), what);
    }
    let stats = dp.stats(3, 3).expect("counters");
    assert_eq!(stats.reason(Reason::ForwardedReply).packets, 0);
    assert_eq!(stats.reason(Reason::NotVip).packets, 5);
    assert_eq!(stats.reason(Reason::OtherL4).packets, 0, "ping: not_vip");
}

#[test]
fn a_reply_to_a_client_whose_address_shares_a_vip_prefilter_bit() {
    // A client address with the VIP's destination prefilter bit: its
    // replies fail the VIP-address lookup instead of the prefilter.
    let vip_bit = vip_addr_bit(addr_be([192, 0, 2, 10]));
    let client = (0..=u16::MAX)
        .map(|n| [198, 18, (n >> 8) as u8, n as u8])
        .find(|a| vip_addr_bit(addr_be(*a)) == vip_bit)
        .expect("4096 bits: some address of a /16 shares one");
    let mut dp = datapath(2, 30);
    let syn = Spec {
        src: client,
        ..Spec::default()
    };
    assert_eq!(tx(&mut dp, &syn.build(), "SYN"), forwarded(&syn, 11, 8080));
    assert_eq!(
        tx(&mut dp, &reply(&syn, 11, 8080, b"ok").build(), "reply"),
        translated_reply(&syn, b"ok")
    );
}

#[test]
fn one_client_port_to_one_backend_through_two_vips_is_a_counted_collision() {
    let mut dp = datapath(1, 30);
    let first = Spec::default();
    tx(&mut dp, &first.build(), "first VIP");
    // Same client address and port, other VIP, same backend:port: the
    // backend could not tell the two flows apart.
    let second = Spec {
        dst: [192, 0, 2, 11],
        ..Spec::default()
    };
    let (action, _) = dp.test_run(&second.build()).expect("test run");
    assert_eq!(action, XDP_DROP);
    let stats = dp.stats(3, 3).expect("counters");
    assert_eq!(stats.reason(Reason::NatPortsExhausted).packets, 1);
    // The first flow is untouched, its replies still go back to it.
    assert_eq!(
        tx(&mut dp, &reply(&first, 11, 8080, b"").build(), "reply"),
        translated_reply(&first, b"")
    );
    // Once the first flow ended (RST, then the linger), the 5-tuple is free.
    let rst = with_tcp_flags(&Spec { ack: true, ..first }, 0x04);
    tx(&mut dp, &rst, "client RST");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        tx(&mut dp, &second.build(), "second VIP after the end"),
        forwarded(&second, 11, 8080)
    );
    let reverse = dp.nat_reverse().expect("NAT_REVERSE");
    assert_eq!(reverse.len(), 1);
    assert_eq!(reverse[0].1.flow.dst_be, addr_be([192, 0, 2, 11]));
}

#[test]
fn fin_both_ways_ends_the_state_and_its_reverse_entry() {
    let mut dp = datapath(1, 1);
    let syn = Spec::default();
    tx(&mut dp, &syn.build(), "SYN");
    let query = Spec {
        l4: L4::Udp,
        dst: [192, 0, 2, 20],
        dport: 53,
        ..Spec::default()
    };
    tx(&mut dp, &query.build(), "UDP");
    let ack = Spec {
        ack: true,
        ..syn.clone()
    };
    tx(&mut dp, &with_tcp_flags(&ack, 0x01), "client FIN");
    tx(
        &mut dp,
        &with_tcp_flags(&reply(&syn, 11, 8080, b""), 0x01),
        "backend FIN",
    );
    let states = dp.nat_flows().expect("NAT_FLOWS");
    let tcp = states.iter().find(|(k, _)| k.proto == 6).expect("TCP").1;
    assert_ne!(tcp.flags & NAT_CLOSED, 0, "FIN both ways closes");
    let last_ack = reply(&syn, 11, 8080, b"").build();
    tx(&mut dp, &last_ack, "last ACK during the linger");
    assert_eq!(dp.nat_reverse().expect("NAT_REVERSE").len(), 2);

    std::thread::sleep(Duration::from_millis(2500));
    passes_untouched(&mut dp, &last_ack, "TCP reply after the linger");
    passes_untouched(
        &mut dp,
        &reply(&query, 21, 53, b"late").build(),
        "UDP reply after the idle timeout",
    );
    assert!(
        dp.nat_reverse().expect("NAT_REVERSE").is_empty(),
        "the stale reverse entries went with their state"
    );
}

#[test]
fn an_icmp_error_about_a_dnat_flow_is_dropped_and_counted() {
    let mut dp = datapath(2, 30);
    let syn = Spec::default();
    tx(&mut dp, &syn.build(), "SYN");
    let err = foobar_tests::frames::frag_needed(&syn, [203, 0, 113, 1], 1400);
    assert_eq!(dp.test_run(&err).expect("test run").0, XDP_DROP);
    let stats = dp.stats(3, 3).expect("counters");
    assert_eq!(stats.reason(Reason::NatIcmp).packets, 1);
}

#[test]
fn a_dnat_vip_added_at_run_time_gets_the_default_timeouts() {
    use foobar::{
        config::{Forwarding, HealthSpec, Protocol, Scheduler},
        state::{Admin, BackendSpec, VipSpec},
    };
    let mut state = State::default();
    state
        .add_vip(VipSpec {
            name: "late".into(),
            address: Ipv4Addr::new(192, 0, 2, 30).into(),
            port: 80,
            protocol: Protocol::Tcp,
            scheduler: Scheduler::RoundRobin,
            maglev_table_size: 65537,
            affinity_timeout_s: None,
            forwarding: Forwarding::Dnat,
            nat: None,
            health: HealthSpec::default(),
            vlan: None,
            pass_closed_ports: false,
        })
        .expect("`vip add --forwarding dnat` needs no SNAT settings");
    state
        .add_backend(
            "late",
            BackendSpec {
                address: Ipv4Addr::new(10, 0, 0, 31).into(),
                weight: 1,
                port: None,
                admin: Admin::Enabled,
                health: HealthSpec::default(),
            },
            backend_mac(31),
        )
        .expect("backend");
    let plan = state.plan();
    let vip = &plan.vips[0];
    assert_eq!(vip.service.forward_mode, FWD_DNAT);
    let nat = plan.nat_vips[&vip.service.vip_id];
    assert_eq!(
        (
            nat.snat_addr_be,
            nat.tcp_idle_s,
            nat.udp_idle_s,
            nat.linger_s
        ),
        (0, 300, 30, 2)
    );
    assert!(plan.dnat_sources.contains(&addr_be([10, 0, 0, 31])));
}

/// The state file keeps VIPs as the config's rules see them: a dnat VIP
/// read back from it passes them (its settings hold no SNAT address).
#[test]
fn a_dnat_vip_passes_the_rules_when_read_back() {
    let config = config::parse(VIPS).expect("valid");
    for (i, vip) in config.vips.iter().enumerate() {
        let problems = vip.problems(&format!("vip[{i}]"));
        assert!(problems.is_empty(), "{}: {problems:?}", vip.name);
    }
}
