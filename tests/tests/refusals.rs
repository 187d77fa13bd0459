//! `foobar run` refuses clearly, and attaches nothing, when it cannot do
//! its job: a bad config, not root, an unknown interface, an XDP mode the
//! driver lacks. Runs inside a lab's LB namespace; needs root.
use foobar_tests::lab::{self, Lab, LabOptions, LB_IFACE};

fn lab() -> Lab {
    Lab::start(&LabOptions {
        backends: 1,
        ..LabOptions::default()
    })
    .expect("lab starts")
}

/// Runs `foobar ARGS` in the LB namespace: (exit ok, stderr).
fn foobar(lab: &Lab, prefix: &[&str], args: &[&str]) -> (bool, String) {
    let bin = lab::foobar_bin().unwrap();
    let mut full: Vec<&str> = prefix.to_vec();
    full.push(bin.to_str().unwrap());
    full.extend_from_slice(args);
    let out = lab.output(&lab.lb.ns, &full).unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn refusals_name_the_problem_and_attach_nothing() {
    let lab = lab();
    let good = lab.dir.join("good.toml");
    std::fs::write(&good, lab.config()).unwrap();
    let bad = lab.dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[datapath]\nxdp_mode = \"turbo\"\n[[vip]]\nname = \"web\"\naddress = \"10.201.0.300\"\nport = 80\n",
    )
    .unwrap();
    let (good, bad) = (good.to_str().unwrap(), bad.to_str().unwrap());

    let (ok, err) = foobar(&lab, &[], &["run", "--config", bad]);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "{bad}: datapath.xdp_mode: \"turbo\" is not a mode"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{bad}: vip[0].address: \"10.201.0.300\" is not an IPv4 or IPv6 address"
        )),
        "{err}"
    );
    assert!(err.contains("nothing was applied"), "{err}");

    let (ok, err) = foobar(&lab, &[], &["run", "--config", good, "--iface", "nosuch0"]);
    assert!(!ok);
    assert!(err.contains("interface nosuch0 does not exist"), "{err}");

    let (ok, err) = foobar(
        &lab,
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ],
        &["run", "--config", good],
    );
    assert!(!ok);
    assert!(err.contains("needs root"), "{err}");

    // `foobar detach` checks capabilities, not the uid: root without
    // CAP_NET_ADMIN is refused and told what is missing.
    let (ok, err) = foobar(
        &lab,
        &["setpriv", "--inh-caps=-all", "--bounding-set=-net_admin"],
        &["detach", "--iface", LB_IFACE],
    );
    assert!(!ok);
    assert!(err.contains("missing: CAP_NET_ADMIN"), "{err}");

    // A bridge device has no native XDP support (and this kernel has no
    // dummy module).
    lab.exec(
        &lab.lb.ns,
        &["ip", "link", "add", "dummy0", "type", "bridge"],
    )
    .unwrap();
    lab.exec(&lab.lb.ns, &["ip", "link", "set", "dummy0", "up"])
        .unwrap();
    let empty = lab.dir.join("empty.toml");
    std::fs::write(
        &empty,
        format!("[api]\nsocket = \"{}\"\n", lab.socket().display()),
    )
    .unwrap();
    let (ok, err) = foobar(
        &lab,
        &[],
        &[
            "run",
            "--config",
            empty.to_str().unwrap(),
            "--iface",
            "dummy0",
        ],
    );
    assert!(!ok);
    assert!(err.contains("does not support XDP in native mode"), "{err}");
    assert!(err.contains("--xdp-mode skb"), "{err}");

    assert!(
        !lab.xdp_attached().unwrap(),
        "nothing attached to {LB_IFACE}"
    );
    let dummy = lab
        .exec(&lab.lb.ns, &["ip", "-d", "link", "show", "dummy0"])
        .unwrap();
    assert!(!dummy.contains("xdp"), "{dummy}");
}

#[test]
fn check_validates_without_root() {
    let lab = lab();
    let good = lab.dir.join("good.toml");
    std::fs::write(&good, lab.config()).unwrap();
    let (ok, err) = foobar(
        &lab,
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ],
        &["check", "--config", good.to_str().unwrap()],
    );
    assert!(ok, "{err}");
}

/// An SNAT address the interface does not have is refused at start (exit
/// code 5, nothing attached) and on reload (exit code 5, nothing changed),
/// with the `ip addr add` that fixes it.
#[test]
fn an_snat_address_off_the_interface_is_refused_with_the_command_that_adds_it() {
    let mut lab = lab();
    let bin = lab::foobar_bin().unwrap();
    let base = lab.config();
    let nat = |snat: &str| {
        base.clone()
            .replace(
                "[datapath]\n",
                &format!("[datapath]\nsnat_address = \"{snat}\"\n"),
            )
            .replace("forwarding = \"dsr\"", "forwarding = \"nat\"")
    };
    let bad = lab.dir.join("snat-bad.toml");
    std::fs::write(&bad, nat("10.201.0.77")).unwrap();
    let out = lab
        .output(
            &lab.lb.ns,
            &[
                bin.to_str().unwrap(),
                "run",
                "--config",
                bad.to_str().unwrap(),
            ],
        )
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(
        err.contains("datapath.snat_address: SNAT address 10.201.0.77 is not an address of eth0"),
        "{err}"
    );
    assert!(
        err.contains("`ip addr add 10.201.0.77/24 dev eth0`"),
        "{err}"
    );
    assert!(
        err.contains(&lab.lb.addr.to_string()),
        "names what it has: {err}"
    );
    assert!(!lab.xdp_attached().unwrap(), "nothing attached");

    // The LB's own address is on the interface: it starts. A reload to a
    // missing address is refused the same way and changes nothing.
    let good = nat(&lab.lb.addr.to_string());
    lab.start_foobar(&bin, &good).unwrap();
    let conf = lab.dir.join("foobar.toml");
    std::fs::write(&conf, nat("10.201.0.78")).unwrap();
    let out = lab.foobar_cli(&bin, &["reload"]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(
        err.contains("`ip addr add 10.201.0.78/24 dev eth0`"),
        "{err}"
    );
    // After `ip addr add`, the same reload applies.
    lab::run(&[
        "ip",
        "-n",
        &lab.lb.ns,
        "addr",
        "add",
        "10.201.0.78/24",
        "dev",
        LB_IFACE,
    ])
    .unwrap();
    let out = lab.foobar_cli(&bin, &["reload"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = lab.foobar_cli(&bin, &["status", "--json"]).unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["vips"][0]["snat_address"], "10.201.0.78", "{status}");
}
