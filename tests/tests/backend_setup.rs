//! `foobar backend-setup` on a backend and `foobar backend-check` from the
//! LB node, in the netns lab: a backend prepared by backend-setup (from a
//! bare one) passes; one without arp_ignore answers ARP for the VIP and
//! fails by name; one without the loopback VIP does not accept the VIP's
//! traffic and fails by name. Needs root; `cargo xtask test` runs it so
//! (under the lab lock).
use std::fs;

use foobar_tests::lab::{Lab, LabOptions, VIP};
use foobar_tests::ops::foobar;
use serde_json::Value;

#[test]
fn prepared_backends_pass_and_each_missing_step_fails_by_name() {
    let lab = Lab::start(&LabOptions {
        backends: 3,
        ..LabOptions::default()
    })
    .expect("lab starts");
    let bin = foobar();
    let bin = bin.to_str().unwrap();
    let vip = VIP.to_string();
    let (be0, be1, be2) = (&lab.backends[0], &lab.backends[1], &lab.backends[2]);

    // be0: undo what the lab prepared, then backend-setup does it again.
    lab.exec(
        &be0.ns,
        &["ip", "addr", "del", &format!("{vip}/32"), "dev", "lo"],
    )
    .unwrap();
    for key in ["all", "eth0"] {
        for (name, value) in [("arp_ignore", "0"), ("arp_announce", "0")] {
            lab.exec(
                &be0.ns,
                &[
                    "sysctl",
                    "-qw",
                    &format!("net.ipv4.conf.{key}.{name}={value}"),
                ],
            )
            .unwrap();
        }
    }
    let root = lab.dir.join("be0-root");
    let out = lab
        .exec(
            &be0.ns,
            &[
                bin,
                "backend-setup",
                "--mode",
                "dsr",
                "--vip",
                &vip,
                "--write-to",
                root.to_str().unwrap(),
                "--apply",
            ],
        )
        .expect("backend-setup succeeds");
    let sysctl = root.join("etc/sysctl.d/90-foobar-dsr.conf");
    let network = root.join("etc/systemd/network/60-foobar-dsr-lo.network");
    assert!(
        out.contains(&format!("wrote {}", sysctl.display())),
        "{out}"
    );
    assert!(
        out.contains(&format!("wrote {}", network.display())),
        "{out}"
    );
    let text = fs::read_to_string(&sysctl).unwrap();
    assert!(
        text.contains("net.ipv4.conf.all.arp_ignore = 1\n"),
        "{text}"
    );
    assert!(
        text.contains("net.ipv4.conf.all.arp_announce = 2\n"),
        "{text}"
    );
    let text = fs::read_to_string(&network).unwrap();
    assert!(text.contains(&format!("Address={vip}/32\n")), "{text}");
    let lo = lab
        .exec(&be0.ns, &["ip", "-4", "addr", "show", "dev", "lo"])
        .unwrap();
    assert!(lo.contains(&format!("{vip}/32")), "applied: {lo}");

    // be1: answers ARP for the VIP (arp_ignore 0 everywhere).
    for key in ["all", "eth0"] {
        lab.exec(
            &be1.ns,
            &[
                "sysctl",
                "-qw",
                &format!("net.ipv4.conf.{key}.arp_ignore=0"),
            ],
        )
        .unwrap();
    }
    // be2: the VIP is not on its loopback.
    lab.exec(
        &be2.ns,
        &["ip", "addr", "del", &format!("{vip}/32"), "dev", "lo"],
    )
    .unwrap();

    let check = |backends: &[&str]| {
        let mut args = vec![
            bin,
            "backend-check",
            "--vip",
            &vip,
            "--port",
            "80",
            "--json",
        ];
        for b in backends {
            args.extend(["--backend", b]);
        }
        let out = lab.output(&lab.lb.ns, &args).unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let json: Value =
            serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
        (out.status.success(), json, stderr)
    };
    let addr = |h: &foobar_tests::lab::Host| h.addr.to_string();
    let (a0, a1, a2) = (addr(be0), addr(be1), addr(be2));

    let (ok, json, err) = check(&[&a0]);
    assert!(ok, "a prepared backend passes: {json}\n{err}");
    let r = &json["backends"][0];
    assert_eq!(r["arp_for_vip"], "silent", "{json}");
    assert_eq!(
        r["tcp"], "syn-ack",
        "nginx listens on :80 of the VIP: {json}"
    );

    let (ok, json, err) = check(&[&a0, &a1, &a2]);
    assert!(!ok, "{json}");
    assert!(
        err.contains("2 of 3 backends are not ready for DSR"),
        "{err}\n{json:#}"
    );
    let by_addr = |a: &str| {
        json["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["backend"] == a)
            .unwrap()
            .clone()
    };
    let r0 = by_addr(&a0);
    assert_eq!(r0["ok"], true, "{json}");
    let r1 = by_addr(&a1);
    assert_eq!(r1["ok"], false, "{json}");
    assert_eq!(r1["arp_for_vip"], "answers", "{json}");
    let p1 = r1["problems"][0].as_str().unwrap();
    assert!(
        p1.contains(&format!("{a1} answers ARP for the VIP {vip}")) && p1.contains("arp_ignore"),
        "{p1}"
    );
    let r2 = by_addr(&a2);
    assert_eq!(r2["ok"], false, "{json}");
    assert_eq!(r2["arp_for_vip"], "silent", "{json}");
    assert_eq!(r2["tcp"], "none", "{json}");
    let p2 = r2["problems"][0].as_str().unwrap();
    assert!(
        p2.contains(&format!("{a2} does not accept traffic for {vip}:80"))
            && p2.contains("loopback"),
        "{p2}"
    );
}
