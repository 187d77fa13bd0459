//! IPv6 end to end: an IPv6 lab (client, LB node, two nginx backends on one
//! bridge, addresses added `nodad`), `foobar run` with an IPv6 VIP in `dsr`
//! or `ipip` (IPv6-in-IPv6, `foobar decap` on the backends) beside the lab's
//! IPv4 VIP. The client sends 3000 HTTP requests and downloads 100 MB through
//! the VIP: every request must be answered by a backend (the LB node holds
//! the VIP and runs an nginx of its own on [::]:80, which would answer
//! anything foobar passed), the download must be intact. Backend MACs come
//! from neighbour discovery, their health from HTTP checks over IPv6. Needs
//! root; run under `flock -o /tmp/foobar-lab.lock`.
use std::{collections::BTreeMap, process::Command, time::Instant};

use foobar_tests::lab::{self, Host, Lab, LabOptions, VIP6};

/// The outer sources of IPv6 `ipip` packets (datapath.ipip_source6), which
/// the backends' decap allows.
const SOURCE6: &str = "fd00:9::/120";
const REQUESTS: usize = 3000;
const BIG: usize = 100 * 1024 * 1024;

/// The lab's config plus an IPv6 VIP in `mode` with every backend's IPv6
/// address, HTTP-checked.
fn config6(lab: &Lab, mode: &str) -> String {
    let mut text = lab.config().replace(
        "[datapath]\n",
        &format!("[datapath]\nipip_source6 = \"{SOURCE6}\"\n"),
    );
    text.push_str(&format!(
        "\n[[vip]]\nname = \"web6\"\naddress = \"{VIP6}\"\nport = 80\nforwarding = \"{mode}\"\n\
         [vip.health]\ncheck = \"http\"\nhttp_path = \"/\"\ninterval_ms = 300\n\
         timeout_ms = 250\nrise = 2\nfall = 2\n"
    ));
    for b in &lab.backends {
        let a6 = b.addr6.expect("an IPv6 lab");
        text.push_str(&format!("\n[[vip.backend]]\naddress = \"{a6}\"\n"));
    }
    text
}

/// `foobar decap ARGS` on backend `be` (through nsenter, so the pins land
/// under the lab's pin root in the host's bpffs).
fn decap_cli(lab: &Lab, be: &Host, args: &[&str]) -> std::process::Output {
    let foobar = lab::foobar_bin().expect("foobar binary (cargo build -p foobar-user)");
    Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", be.ns))
        .arg(&foobar)
        .arg("decap")
        .args(args)
        .arg("--pin-root")
        .arg(lab.pin_root.join(format!("decap-{}", be.name)))
        .output()
        .expect("running foobar decap")
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

/// 3000 requests and a 100 MB download through the IPv6 VIP; the bodies
/// per backend, and the time both took.
fn serve_through_vip6(lab: &Lab) -> BTreeMap<String, usize> {
    let started = Instant::now();
    // curl sees the bracketed IPv6 literal as an address, not a glob.
    let served = lab.requests_all_ok(&format!("http://[{VIP6}]/"), REQUESTS);
    let requests_took = started.elapsed();

    lab.download_intact(&format!("http://[{VIP6}]/"), BIG);
    eprintln!(
        "{REQUESTS} requests in {:.1} s, 100 MB in {:.1} s",
        requests_took.as_secs_f64(),
        (started.elapsed() - requests_took).as_secs_f64()
    );
    served
}

/// What the two tests check after the traffic: only backends answered
/// (both of them), the daemon counted the forwarded packets, and `status`
/// shows the IPv6 VIP with its backends up.
fn check_served(lab: &Lab, served: &BTreeMap<String, usize>, mode: &str) {
    let names: Vec<&str> = lab.backends.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(
        served.keys().map(String::as_str).collect::<Vec<_>>(),
        names,
        "only and all backends answered (\"lb\" would be the LB's own nginx): {served:?}"
    );
    let stats = foobar_json(lab, &["stats", "--json"]);
    let forwarded = stats["reasons"]["forwarded"]["packets"].as_u64().unwrap();
    assert!(
        forwarded >= 2 * REQUESTS as u64,
        "{forwarded} packets forwarded: {stats}"
    );
    let status = foobar_json(lab, &["status", "--json"]);
    let vip = status["vips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "web6")
        .unwrap_or_else(|| panic!("no web6 in {status}"));
    assert_eq!(vip["address"], VIP6.to_string(), "{vip}");
    assert_eq!(vip["forwarding"], mode, "{vip}");
    for b in vip["backends"].as_array().unwrap() {
        assert_eq!(b["health"], "up", "{b}");
        assert!(b["address"].as_str().unwrap().contains(':'), "{b}");
    }
}

#[test]
fn lab_ipv6_dsr_serves_3000_requests_and_a_100_mb_download() {
    let mut lab = Lab::start(&LabOptions {
        backends: 2,
        ipv6: true,
        ..LabOptions::default()
    })
    .expect("lab starts (root? `cargo xtask setup`?)");
    lab.start_foobar(&lab::foobar_bin().unwrap(), &config6(&lab, "dsr"))
        .expect("foobar run attaches");
    let served = serve_through_vip6(&lab);
    check_served(&lab, &served, "dsr");
}

#[test]
fn lab_ipv6_ipip_serves_3000_requests_and_a_100_mb_download_through_the_tunnel() {
    let mut lab = Lab::start(&LabOptions {
        backends: 2,
        ipv6: true,
        // Room for the outer IPv6 header on the LB-to-backend path.
        tunnel_mtu: Some(1540),
        ..LabOptions::default()
    })
    .expect("lab starts (root? `cargo xtask setup`?)");
    for be in &lab.backends {
        let out = decap_cli(&lab, be, &["--iface", "eth0", "--allow-from", SOURCE6]);
        assert!(
            out.status.success(),
            "foobar decap on {}: {}",
            be.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    lab.start_foobar(&lab::foobar_bin().unwrap(), &config6(&lab, "ipip"))
        .expect("foobar run attaches");
    let served = serve_through_vip6(&lab);
    check_served(&lab, &served, "ipip");
    // The frames arrived tunnelled: each backend's decap stripped at least
    // the requests it answered (their packets carry the backend's address
    // only in the outer header).
    for be in &lab.backends {
        let out = decap_cli(&lab, be, &["--iface", "eth0", "--stats", "--json"]);
        assert!(out.status.success());
        let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let n = d["decapsulated"].as_u64().unwrap();
        assert!(
            n >= served[&be.name] as u64,
            "{}: {n} decapsulated: {d}",
            be.name
        );
    }
}
