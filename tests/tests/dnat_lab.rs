//! `dnat` end to end in the netns lab: plain nginx backends (no VIP on
//! loopback, no ARP sysctls) whose only change is a route to the client
//! via the LB (`ip route add CLIENT/32 via LB`), foobar on the LB node in
//! native XDP mode, real curl traffic through the VIP. The point of the
//! mode: the backends see the client's own address. Needs root; run under
//! `flock -o /tmp/foobar-lab.lock`.
use std::collections::BTreeMap;

use foobar_tests::lab::{self, Lab, LabOptions, VIP};

fn dnat_lab() -> Lab {
    let mut lab = Lab::start(&LabOptions {
        plain_backends: true,
        ..LabOptions::default()
    })
    .expect("lab starts (root? `cargo xtask setup`?)");
    // What docs/DNAT.md asks of a backend: its replies to clients go via
    // the LB (here a /32 beats the client's on-link subnet route).
    let client = lab.client.addr.to_string();
    let via = lab.lb.addr.to_string();
    for b in &lab.backends {
        lab.exec(&b.ns, &["ip", "route", "add", &client, "via", &via])
            .expect("route to the client via the LB");
    }
    let config = lab
        .config()
        .replace("forwarding = \"dsr\"", "forwarding = \"dnat\"");
    assert!(config.contains("\"dnat\""), "the lab config names a mode");
    lab.start_foobar(&lab::foobar_bin().unwrap(), &config)
        .expect("foobar run attaches");
    lab
}

fn reason(lab: &Lab, name: &str) -> u64 {
    let out = lab
        .foobar_cli(&lab::foobar_bin().unwrap(), &["stats", "--json"])
        .unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats JSON");
    stats["reasons"][name]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no {name} counter in {stats}"))
}

#[test]
fn dnat_backends_see_the_client_address_and_a_big_transfer_is_intact() {
    let lab = dnat_lab();
    let status = lab
        .foobar_cli(&lab::foobar_bin().unwrap(), &["status"])
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("dnat"), "status shows the mode: {status}");

    // `/peer` answers with the backend's name and the peer address nginx
    // saw ($remote_addr).
    const N: usize = 3000;
    let client = lab.client.addr.to_string();
    let mut served: BTreeMap<String, usize> = BTreeMap::new();
    for (line, count) in lab.requests_all_ok(&format!("http://{VIP}/peer"), N) {
        let (backend, peer) = line.split_once(' ').expect("name and peer");
        assert_eq!(peer, client, "the backend saw the client's address");
        *served.entry(backend.to_owned()).or_default() += count;
    }
    assert_eq!(served.len(), 3, "every backend served: {served:?}");
    // The replies came back through the LB, translated (the backends do
    // not hold the VIP: a reply straight from them would be reset).
    assert!(reason(&lab, "forwarded_reply") >= N as u64);
    assert_eq!(reason(&lab, "drop_nat_ports_exhausted"), 0);

    lab.download_intact(&format!("http://{VIP}/"), 100 * 1024 * 1024);
}

/// A daemon started without a dnat VIP loads its program without the dnat
/// reply check (the pass path costs nothing for dnat): `vip add
/// --forwarding dnat` and a reload that adds a dnat VIP are refused, say to
/// restart, and change nothing; after a restart with the dnat config the
/// VIP serves.
#[test]
fn a_dnat_vip_needs_a_daemon_started_with_one() {
    let mut lab = Lab::start(&LabOptions {
        backends: 1,
        plain_backends: true,
        ..LabOptions::default()
    })
    .expect("lab starts (root? `cargo xtask setup`?)");
    let bin = lab::foobar_bin().unwrap();
    let dsr = lab.config();
    lab.start_foobar(&bin, &dsr).expect("foobar run attaches");

    let out = lab
        .foobar_cli(
            &bin,
            &[
                "vip",
                "add",
                "api",
                "10.201.0.101",
                "8080",
                "--forwarding",
                "dnat",
                "--check",
                "none",
            ],
        )
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "vip add of a dnat VIP was accepted");
    assert!(
        err.contains("dnat reply path") && err.contains("restart foobar"),
        "{err}"
    );

    let dnat = dsr.replace("forwarding = \"dsr\"", "forwarding = \"dnat\"");
    std::fs::write(lab.dir.join("foobar.toml"), &dnat).unwrap();
    let out = lab.foobar_cli(&bin, &["reload"]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a reload to dnat was applied");
    assert!(
        err.contains("dnat reply path") && err.contains("restart foobar"),
        "{err}"
    );
    let status = lab.foobar_cli(&bin, &["status", "--json"]).unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status");
    let vips = status["vips"].as_array().expect("vips");
    assert_eq!(vips.len(), 1, "{status}");
    assert_eq!(vips[0]["forwarding"], "dsr", "{status}");

    // A restart with the dnat config loads the reply path: it serves.
    lab.stop_foobar().unwrap();
    for b in &lab.backends {
        lab.exec(
            &b.ns,
            &[
                "ip",
                "route",
                "add",
                &lab.client.addr.to_string(),
                "via",
                &lab.lb.addr.to_string(),
            ],
        )
        .unwrap();
    }
    lab.start_foobar(&bin, &dnat).expect("foobar run with dnat");
    let out = lab
        .output(
            &lab.client.ns,
            &[
                "curl",
                "-sS",
                "--max-time",
                "5",
                &format!("http://{VIP}/peer"),
            ],
        )
        .unwrap();
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        body.trim().ends_with(&format!(" {}", lab.client.addr)),
        "served through dnat: {body}"
    );
}
