//! VLANs in the netns lab. A VIP configured on VLAN 100 only matches
//! frames tagged 100, and its backends' MACs are resolved on the LB's VLAN
//! interface for 100 (kind "vlan" on eth0, e.g. eth0.100).
//!
//! What runs on any kernel: a VLAN VIP whose interface is missing starts
//! with its backends down (the reason says how to create the interface)
//! while the untagged VIP serves; and tagged frames sent through the veth
//! lab reach the XDP program with their tag and match only their VLAN's VIP.
//!
//! What needs a kernel with 802.1Q (CONFIG_VLAN_8021Q; the lab machines'
//! kernel has none, so these are ignored there): VLAN interfaces on the
//! client, the LB and two backends; the VLAN VIP served end to end, tag
//! kept; and an interface created while foobar runs bringing its backends
//! up. Needs root; run under `flock -o /tmp/foobar-lab.lock`.
use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    process::{Command, Stdio},
    time::Duration,
};

use foobar_tests::{
    frames::Spec,
    lab::{self, Lab, LabOptions, LB_IFACE, VIP, VLAN_ID, VLAN_VIP},
    ops::{foobar, wait_until},
};
use serde_json::Value;

/// Needs CONFIG_VLAN_8021Q (`ip link add ... type vlan` fails without it).
const NEEDS_8021Q: &str =
    "needs a kernel with 802.1Q VLAN interfaces (CONFIG_VLAN_8021Q); the lab machines lack it (docs/LAB.md)";

const REQUESTS: usize = 30;

fn cli_json(lab: &Lab, args: &[&str]) -> Value {
    let mut full = args.to_vec();
    full.push("--json");
    let out = lab.foobar_cli(&foobar(), &full).unwrap();
    assert!(
        out.status.success(),
        "foobar {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn vip<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["vips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no VIP {name} in {doc}"))
}

/// The lab's VLAN addresses of backends be1 and be2 (10.201.100.11, .12).
fn vlan_backends() -> [Ipv4Addr; 2] {
    let o = VLAN_VIP.octets();
    [11, 12].map(|last| Ipv4Addr::new(o[0], o[1], o[2], last))
}

/// Two VIPs: "web" untagged over every backend's untagged address, and
/// "web100" on VLAN 100 over be1's and be2's VLAN addresses.
fn config(lab: &Lab) -> String {
    let mut text = lab.config();
    text.push_str(&format!(
        "\n[[vip]]\nname = \"web100\"\naddress = \"{VLAN_VIP}\"\nport = 80\nprotocol = \"tcp\"\n\
         vlan = {VLAN_ID}\nscheduler = \"rr\"\nforwarding = \"dsr\"\n\
         [vip.health]\ncheck = \"http\"\nhttp_path = \"/\"\ninterval_ms = {}\n\
         timeout_ms = 250\nrise = 2\nfall = 2\n",
        lab::HEALTH_INTERVAL_MS
    ));
    for b in vlan_backends() {
        text.push_str(&format!("\n[[vip.backend]]\naddress = \"{b}\"\n"));
    }
    text
}

/// `n` new connections from the client to `vip`: who answered each.
fn requests(lab: &Lab, vip: Ipv4Addr, n: usize) -> BTreeMap<String, usize> {
    let mut served = BTreeMap::new();
    for _ in 0..n {
        let out = Command::new("ip")
            .args(["netns", "exec", &lab.client.ns, "curl", "-sS"])
            .args(["--max-time", "2", "-H", "Connection: close"])
            .arg(format!("http://{vip}/"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let who = if out.status.success() {
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        } else {
            format!("error: {}", String::from_utf8_lossy(&out.stderr).trim())
        };
        *served.entry(who).or_default() += 1;
    }
    served
}

fn reason(stats: &Value, name: &str) -> u64 {
    stats["reasons"][name]["packets"].as_u64().unwrap_or(0)
}

fn vip_packets(stats: &Value, name: &str) -> u64 {
    vip(stats, name)["packets"].as_u64().unwrap()
}

fn all_up(lab: &Lab, name: &str) -> bool {
    let s = cli_json(lab, &["status"]);
    vip(&s, name)["backends"]
        .as_array()
        .unwrap()
        .iter()
        .all(|b| b["health"] == "up")
}

#[test]
#[ignore = "needs a kernel with 802.1Q (CONFIG_VLAN_8021Q), which the lab machines lack: docs/LAB.md"]
fn a_vlan_vip_is_served_by_its_vlan_backends_with_the_tag_kept() {
    let mut lab = Lab::start(&LabOptions {
        backends: 3,
        vlan_backends: 2,
        ..Default::default()
    })
    .expect(NEEDS_8021Q);
    lab.start_foobar(&foobar(), &config(&lab))
        .expect("foobar starts");
    wait_until("every backend up", Duration::from_secs(10), || {
        all_up(&lab, "web") && all_up(&lab, "web100")
    });

    // The VLAN backends' MACs were resolved on eth0.100: each is the MAC
    // of that backend's VLAN interface (its parent's).
    let s = cli_json(&lab, &["status"]);
    for b in &lab.backends[..2] {
        let a = b.vlan_addr.unwrap().to_string();
        let entry = vip(&s, "web100")["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["address"] == a.as_str())
            .unwrap();
        let mac = lab
            .exec(
                &b.ns,
                &[
                    "cat",
                    &format!("/sys/class/net/{}/address", lab::VLAN_IFACE),
                ],
            )
            .unwrap();
        assert_eq!(entry["mac"], mac.trim(), "{s}");
    }

    let before = cli_json(&lab, &["stats"]);
    let rx_before: Vec<u64> = lab.backends[..2]
        .iter()
        .map(|b| lab.vlan_rx_packets(b).unwrap())
        .collect();

    let tagged = requests(&lab, VLAN_VIP, REQUESTS);
    eprintln!("through the VLAN VIP: {tagged:?}");
    assert_eq!(
        tagged.keys().cloned().collect::<Vec<_>>(),
        ["be1", "be2"],
        "every request served by a VLAN backend, each of them answering: {tagged:?}"
    );

    let after = cli_json(&lab, &["stats"]);
    let web100 = |doc: &Value| vip(doc, "web100")["packets"].as_u64().unwrap();
    // A connection is at least SYN, ACK + request, ACK of the answer, FIN.
    assert!(
        web100(&after) - web100(&before) >= 3 * REQUESTS as u64,
        "the VIP's counter: {} -> {}",
        web100(&before),
        web100(&after)
    );
    assert!(
        reason(&after, "forwarded") - reason(&before, "forwarded") >= 3 * REQUESTS as u64,
        "{after}"
    );
    assert_eq!(reason(&after, "pass_malformed"), 0, "{after}");
    // The backends received them on their VLAN interface: the frames kept
    // their tag (an untagged frame would arrive on eth0).
    let rx_after: Vec<u64> = lab.backends[..2]
        .iter()
        .map(|b| lab.vlan_rx_packets(b).unwrap())
        .collect();
    let grown: u64 = rx_after.iter().zip(&rx_before).map(|(a, b)| a - b).sum();
    assert!(
        grown >= 3 * REQUESTS as u64,
        "VLAN interfaces of the backends received {grown} packets"
    );

    // The untagged VIP is served as before, by all three.
    let untagged = requests(&lab, VIP, REQUESTS);
    eprintln!("through the untagged VIP: {untagged:?}");
    assert_eq!(
        untagged.keys().cloned().collect::<Vec<_>>(),
        ["be1", "be2", "be3"],
        "{untagged:?}"
    );

    let (ok, out) = lab.stop_foobar().unwrap();
    assert!(ok, "{out}");
    assert!(
        out.lines().any(|l| l == "reason pass_malformed 0 0"),
        "final counters: {out}"
    );
}

#[test]
fn a_vlan_vip_without_its_interface_starts_down_and_tagged_frames_match_only_their_vlan() {
    // No VLAN interface anywhere: the lab only keeps tags in the frames
    // that reach the LB.
    let mut lab = Lab::start(&LabOptions {
        vlan_tags: true,
        ..Default::default()
    })
    .expect("lab starts");
    lab.start_foobar(&foobar(), &config(&lab))
        .expect("foobar starts although VLAN 100 has no interface");

    let s = cli_json(&lab, &["status"]);
    let expected = format!(
        "VIP web100 is on VLAN {VLAN_ID} but {LB_IFACE} has no VLAN {VLAN_ID} interface: \
         ip link add link {LB_IFACE} name {LB_IFACE}.{VLAN_ID} type vlan id {VLAN_ID}"
    );
    assert_eq!(vip(&s, "web100")["vlan"], VLAN_ID, "{s}");
    assert_eq!(vip(&s, "web")["vlan"], Value::Null, "{s}");
    let web100 = vip(&s, "web100")["backends"].as_array().unwrap();
    assert_eq!(web100.len(), 2, "{s}");
    for b in web100 {
        assert_eq!(b["health"], "down", "{s}");
        assert_eq!(b["mac"], "none", "{s}");
        let why = b["last_check"].as_str().unwrap();
        assert!(why.starts_with(&expected), "{why}");
    }
    assert!(lab.foobar_log().contains(&expected), "{}", lab.foobar_log());
    wait_until(
        "the untagged VIP's backends up",
        Duration::from_secs(10),
        || all_up(&lab, "web"),
    );
    let untagged = requests(&lab, VIP, REQUESTS);
    assert_eq!(
        untagged.keys().cloned().collect::<Vec<_>>(),
        ["be1", "be2", "be3"],
        "{untagged:?}"
    );
    // Still down a few watcher periods later (nothing to retry on).
    std::thread::sleep(Duration::from_secs(3));
    let s = cli_json(&lab, &["status"]);
    for b in vip(&s, "web100")["backends"].as_array().unwrap() {
        assert_eq!(b["health"], "down", "{s}");
    }

    // Crafted SYNs from the client to the LB's MAC, through the bridge.
    let client = lab.client.clone();
    let syn = |vlan: Option<u16>, dst: Ipv4Addr, sport: u16| {
        Spec {
            src_mac: lab.mac(&client, "eth0").unwrap(),
            dst_mac: lab.mac(&lab.lb, LB_IFACE).unwrap(),
            vlan,
            src: client.addr.octets(),
            dst: dst.octets(),
            sport,
            dport: 80,
            payload: Vec::new(),
            ..Spec::default()
        }
        .build()
    };
    let before = cli_json(&lab, &["stats"]);
    // Not served: VLAN 100 to the untagged VIP, VLAN 200 and untagged to
    // the VLAN VIP's address. Then served by the VIP of VLAN 100 (whose
    // ring is empty: drop_no_backend, counted by nothing else here), and
    // an untagged SYN to the untagged VIP as the control (forwarded).
    for frame in [
        syn(Some(VLAN_ID), VIP, 41001),
        syn(Some(200), VLAN_VIP, 41002),
        syn(None, VLAN_VIP, 41003),
        syn(Some(VLAN_ID), VLAN_VIP, 41004),
        syn(None, VIP, 41005),
    ] {
        lab.send_frame(&client, &frame).unwrap();
    }
    wait_until("the crafted frames counted", Duration::from_secs(3), || {
        let now = cli_json(&lab, &["stats"]);
        vip_packets(&now, "web") > vip_packets(&before, "web")
            && reason(&now, "drop_no_backend") > reason(&before, "drop_no_backend")
    });
    std::thread::sleep(Duration::from_millis(300));
    let after = cli_json(&lab, &["stats"]);
    assert_eq!(
        reason(&after, "drop_no_backend") - reason(&before, "drop_no_backend"),
        1,
        "only the SYN tagged {VLAN_ID} to {VLAN_VIP} matched web100: {after}"
    );
    // The control's SYN, and the client's RST to its backend's SYN-ACK
    // (the client has no socket for it); the SYN tagged 100 to the same
    // VIP, had it matched, would add its own SYN (and RST).
    let web = vip_packets(&after, "web") - vip_packets(&before, "web");
    assert!(
        (1..=2).contains(&web),
        "only the untagged SYN (and its RST) matched web, not the tagged one: {web} packets; {after}"
    );
    assert_eq!(vip_packets(&after, "web100"), 0, "{after}");
    assert_eq!(reason(&after, "pass_malformed"), 0, "{after}");
}

#[test]
#[ignore = "needs a kernel with 802.1Q (CONFIG_VLAN_8021Q), which the lab machines lack: docs/LAB.md"]
fn backends_come_up_when_their_vlan_interface_is_created() {
    let mut lab = Lab::start(&LabOptions {
        backends: 3,
        vlan_backends: 2,
        ..Default::default()
    })
    .expect(NEEDS_8021Q);
    let lb = lab.lb.clone();
    lab.remove_vlan_interface(&lb).unwrap();
    lab.start_foobar(&foobar(), &config(&lab))
        .expect("foobar starts although VLAN 100 has no interface");
    let s = cli_json(&lab, &["status"]);
    for b in vip(&s, "web100")["backends"].as_array().unwrap() {
        assert_eq!(b["health"], "down", "{s}");
    }

    // The operator creates the interface: the watcher finds it (one
    // period), resolves the backends there, the health checks take them up.
    lab.add_vlan_interface(&lb).unwrap();
    let took = wait_until(
        "the VLAN backends up once eth0.100 exists",
        Duration::from_secs(10),
        || all_up(&lab, "web100"),
    );
    eprintln!("VLAN backends up {took:?} after the interface was created");
    let tagged = requests(&lab, VLAN_VIP, 12);
    assert_eq!(
        tagged.keys().cloned().collect::<Vec<_>>(),
        ["be1", "be2"],
        "{tagged:?}"
    );
    assert!(
        lab.foobar_log().contains("VLAN interface found"),
        "{}",
        lab.foobar_log()
    );
}
