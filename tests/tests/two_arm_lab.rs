//! Two-arm end to end in the netns lab (`LabOptions::two_arm`,
//! docs/TOPOLOGY.md): the client on one bridge, the backends on another,
//! foobar attached to both of the LB node's interfaces in native XDP mode.
//! `nat`: frames to the backends are redirected to the backend side, the
//! backends' replies (to the LB's backend-side address, the default SNAT
//! address there) are redirected back to the client side. `dsr`: frames are
//! redirected to the backend side and the backends answer the client
//! through the lab's gateway, never through the LB. Needs root; run under
//! `flock -o /tmp/foobar-lab.lock`.

use foobar_tests::lab::{self, Lab, LabOptions, LB_BACKEND_ADDR, VIP};

fn two_arm_lab(forwarding: &str) -> Lab {
    two_arm_lab_with_config(forwarding).0
}

/// `two_arm_lab` and the config its daemon runs with.
fn two_arm_lab_with_config(forwarding: &str) -> (Lab, String) {
    let mut lab = Lab::start(&LabOptions {
        two_arm: true,
        plain_backends: forwarding == "nat",
        ..LabOptions::default()
    })
    .expect("lab starts (root? `cargo xtask setup`?)");
    let config = lab.config().replace(
        "forwarding = \"dsr\"",
        &format!("forwarding = \"{forwarding}\""),
    );
    assert!(config.contains("backend_interface = \"eth1\""), "{config}");
    lab.start_foobar(&lab::foobar_bin().unwrap(), &config)
        .expect("foobar run attaches");
    (lab, config)
}

/// Whether `iface` of the LB node has an XDP program attached.
fn xdp_on(lab: &Lab, iface: &str) -> bool {
    let link = lab
        .exec(&lab.lb.ns, &["ip", "-d", "link", "show", "dev", iface])
        .unwrap();
    link.contains("prog/xdp") || link.contains(" xdp")
}

fn stats(lab: &Lab) -> serde_json::Value {
    let out = lab
        .foobar_cli(&lab::foobar_bin().unwrap(), &["stats", "--json"])
        .unwrap();
    serde_json::from_slice(&out.stdout).expect("stats JSON")
}

fn reason(lab: &Lab, name: &str) -> u64 {
    let stats = stats(lab);
    stats["reasons"][name]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no {name} counter in {stats}"))
}

/// `ip -s link` of `iface` in `ns`: (rx, tx) packets.
fn link_packets(lab: &Lab, ns: &str, iface: &str) -> (u64, u64) {
    let out = lab
        .exec(ns, &["ip", "-s", "-j", "link", "show", iface])
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j JSON");
    let s = &v[0]["stats64"];
    (
        s["rx"]["packets"].as_u64().unwrap(),
        s["tx"]["packets"].as_u64().unwrap(),
    )
}

/// 3000 requests through the VIP all succeed, spread over every backend;
/// then a 100 MB download is intact (sha256).
fn requests_and_a_big_transfer(lab: &Lab) {
    const N: usize = 3000;
    let served = lab.requests_all_ok(&format!("http://{VIP}/"), N);
    assert_eq!(served.len(), 3, "every backend served: {served:?}");

    lab.download_intact(&format!("http://{VIP}/"), 100 * 1024 * 1024);
}

#[test]
fn two_arm_nat_redirects_both_ways_3000_requests_and_100_mb_intact() {
    let lab = two_arm_lab("nat");
    let status = lab
        .foobar_cli(&lab::foobar_bin().unwrap(), &["status"])
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("nat"), "status shows the mode: {status}");

    requests_and_a_big_transfer(&lab);

    assert!(reason(&lab, "forwarded") >= 3000);
    assert!(reason(&lab, "forwarded_reply") >= 3000);
    assert_eq!(reason(&lab, "drop_bad_backend"), 0);
    // A connection held open: its backend sees the LB's backend-side
    // address (the default SNAT address of a two-arm node) as its peer.
    let _held = lab
        .connect_from_client(std::net::SocketAddr::from((VIP, 80)))
        .expect("a connection through the VIP");
    let peers: String = lab
        .backends
        .iter()
        .map(|b| {
            lab.exec(&b.ns, &["ss", "-Htn", "state", "established"])
                .unwrap()
        })
        .collect();
    assert!(
        peers.contains(&format!("{LB_BACKEND_ADDR}:")),
        "a backend's peer is {LB_BACKEND_ADDR}: {peers}"
    );
}

#[test]
fn two_arm_dsr_redirects_to_the_backend_side_3000_requests_and_100_mb_intact() {
    let lab = two_arm_lab("dsr");
    assert!(
        xdp_on(&lab, "eth0") && xdp_on(&lab, "eth1"),
        "attached to both"
    );
    requests_and_a_big_transfer(&lab);
    assert!(reason(&lab, "forwarded") >= 3000);
    assert_eq!(reason(&lab, "drop_bad_backend"), 0);
    // The replies went through the gateway, not the LB node: it sent the
    // client more packets than the requests' count.
    let gw = format!("{}-gw", lab.id);
    let (_, gw_tx) = link_packets(&lab, &gw, "eth0");
    assert!(
        gw_tx > 3000,
        "the gateway forwarded the replies: {gw_tx} packets"
    );
}

/// A restart takes both pinned links over (the backend side keeps
/// forwarding while no daemon runs), and `foobar detach` removes both.
#[test]
fn two_arm_restart_keeps_both_links_and_detach_removes_both() {
    let (mut lab, config) = two_arm_lab_with_config("dsr");
    let (ok, out) = lab.stop_foobar().unwrap();
    assert!(ok, "foobar stopped cleanly: {out}");
    assert!(
        xdp_on(&lab, "eth0") && xdp_on(&lab, "eth1"),
        "pinned links stay"
    );
    // Still forwarding without a daemon: through the redirect to eth1.
    let body = lab.curl(&format!("http://{VIP}/")).unwrap();
    assert!(body.trim().starts_with("be"), "a backend answered: {body}");
    lab.start_foobar(&lab::foobar_bin().unwrap(), &config)
        .expect("foobar run takes over");
    for _ in 0..30 {
        let body = lab.curl(&format!("http://{VIP}/")).unwrap();
        assert!(body.trim().starts_with("be"), "a backend answered: {body}");
    }
    lab.stop_and_detach_foobar().unwrap();
    lab::wait_for(
        "both links detached",
        std::time::Duration::from_secs(5),
        || Ok(!xdp_on(&lab, "eth0") && !xdp_on(&lab, "eth1")),
    )
    .unwrap();
}
