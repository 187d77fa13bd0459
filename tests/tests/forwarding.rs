//! End to end in the netns lab: a client, foobar on the LB node in native
//! XDP mode, three nginx backends, real curl traffic through the VIP.
//! Needs root; `cargo xtask test` runs it so.
use std::collections::BTreeMap;

use foobar_tests::lab::{self, Lab, LabOptions, VIP};

fn lab_with_foobar() -> Lab {
    let mut lab =
        Lab::start(&LabOptions::default()).expect("lab starts (root? `cargo xtask setup`?)");
    let config = lab.config();
    lab.start_foobar(&lab::foobar_bin().unwrap(), &config)
        .expect("foobar run attaches");
    lab
}

/// `name packets bytes` lines of foobar's final counters, by line prefix.
fn counters(out: &str, prefix: &str) -> BTreeMap<String, u64> {
    out.lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .filter_map(|rest| {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let packets = f.get(f.len().checked_sub(2)?)?.parse().ok()?;
            Some((f[..f.len() - 2].join(" "), packets))
        })
        .collect()
}

#[test]
fn three_thousand_requests_all_succeed_and_are_balanced() {
    let mut lab = lab_with_foobar();
    const N: usize = 3000;
    // One curl, N URLs: "Connection: close" makes each request a new TCP
    // connection, i.e. a new flow that foobar schedules.
    let served = lab.requests_all_ok(&format!("http://{VIP}/"), N);
    assert_eq!(served.len(), 3, "every backend served: {served:?}");
    for (backend, n) in &served {
        let share = *n as f64 / N as f64;
        assert!(
            (share - 1.0 / 3.0).abs() <= 0.05 / 3.0,
            "{backend} served {n} of {N}: not within 1/3 ± 5%: {served:?}"
        );
    }

    let (ok, out) = lab.stop_foobar().unwrap();
    assert!(ok, "foobar exits 0 on SIGTERM");
    let backends = counters(&out, "backend web ");
    assert_eq!(backends.len(), 3, "{out}");
    let reasons = counters(&out, "reason ");
    let total: u64 = backends.values().sum();
    assert_eq!(
        reasons["forwarded"], total,
        "every forwarded packet is a backend's: {out}"
    );
    // Each connection sends at least SYN, ACK, request, FIN through the LB.
    assert!(
        total >= 4 * N as u64,
        "{total} packets for {N} connections: {out}"
    );
}

#[test]
fn a_100_mb_download_through_the_vip_arrives_intact() {
    let lab = lab_with_foobar();
    let original = lab.make_file("big.bin", 100 * 1024 * 1024).unwrap();
    let copy = lab.dir.join("downloaded.bin");
    lab.exec(
        &lab.client.ns,
        &[
            "curl",
            "-sS",
            "--max-time",
            "120",
            "-o",
            copy.to_str().unwrap(),
            &format!("http://{VIP}/big.bin"),
        ],
    )
    .unwrap();
    let hash = |p: &std::path::Path| {
        lab::run(&["sha256sum", p.to_str().unwrap()]).unwrap()[..64].to_owned()
    };
    assert_eq!(std::fs::metadata(&copy).unwrap().len(), 100 * 1024 * 1024);
    assert_eq!(
        hash(&copy),
        hash(&original),
        "the download differs from the file"
    );
}

#[test]
fn lb_own_address_is_left_to_the_kernel_and_closed_vip_ports_are_dropped() {
    let mut lab = lab_with_foobar();
    // The LB node's own web server on its own address is untouched.
    assert_eq!(
        lab.curl(&format!("http://{}/", lab.lb.addr))
            .unwrap()
            .trim(),
        "lb"
    );
    // The same server listens on every address, the VIP's too, but a VIP
    // port that is not a service is dropped: the client gets nothing, not
    // the LB node's own service.
    let closed = lab.curl(&format!("http://{VIP}:8080/"));
    assert!(closed.is_err(), "a closed VIP port answered: {closed:?}");
    for target in [lab.lb.addr.to_string(), VIP.to_string()] {
        lab.exec(
            &lab.client.ns,
            &["ping", "-c", "3", "-i", "0.2", "-W", "2", &target],
        )
        .unwrap_or_else(|e| panic!("ping {target}: {e}"));
    }
    // And the service itself still works next to them.
    assert!(lab
        .curl(&format!("http://{VIP}/"))
        .unwrap()
        .starts_with("be"));

    let (ok, out) = lab.stop_foobar().unwrap();
    assert!(ok);
    let reasons = counters(&out, "reason ");
    assert!(
        reasons["pass_not_vip"] >= 10,
        "LB's own TCP traffic passed: {out}"
    );
    // Pings to the VIP are the node's to answer (those to its own address
    // are not for a VIP address at all).
    assert!(
        reasons["pass_other_l4"] >= 3,
        "pings to the VIP passed: {out}"
    );
    assert!(reasons["drop_closed_port"] >= 1, "port 8080 dropped: {out}");
    // ARP requests are broadcast (not for us); replies to the LB are
    // unicast, not IP.
    assert!(
        reasons["pass_not_for_us"] >= 1,
        "ARP requests passed: {out}"
    );
    assert_eq!(reasons["pass_malformed"], 0, "{out}");
    assert_eq!(
        reasons["drop_no_backend"] + reasons["drop_bad_backend"],
        0,
        "{out}"
    );
}

#[test]
fn sigterm_keeps_forwarding_and_detach_leaves_nothing_attached() {
    let mut lab = lab_with_foobar();
    assert!(lab.xdp_attached().unwrap());
    assert!(lab
        .curl(&format!("http://{VIP}/"))
        .unwrap()
        .starts_with("be"));
    let (ok, out) = lab.stop_foobar().unwrap();
    assert!(
        ok,
        "foobar exit status on SIGTERM; log:\n{}",
        lab.foobar_log()
    );
    assert!(out.contains("final counters"), "{out}");
    assert!(
        lab.foobar_log().contains("keeps forwarding"),
        "{}",
        lab.foobar_log()
    );
    // The pinned datapath outlives the daemon: the VIP is still served by
    // the backends, not by the LB node's own nginx.
    assert!(lab.xdp_attached().unwrap(), "SIGTERM leaves it attached");
    assert!(lab.pins_left());
    assert!(lab
        .curl(&format!("http://{VIP}/"))
        .unwrap()
        .starts_with("be"));

    let (ok, text) = lab.detach_foobar(&lab::foobar_bin().unwrap()).unwrap();
    assert!(ok, "foobar detach: {text}");
    assert!(text.contains("detached"), "{text}");
    assert!(
        !lab.pins_left(),
        "no pin left in {}",
        lab.pin_root.display()
    );
    // The link goes with its last reference: at once, but poll briefly.
    lab::wait_for("XDP detached", std::time::Duration::from_secs(5), || {
        Ok(!lab.xdp_attached()?)
    })
    .unwrap();
    // With foobar gone the LB node's kernel owns the VIP again: port 80 there
    // is the LB's own nginx.
    assert_eq!(lab.curl(&format!("http://{VIP}/")).unwrap().trim(), "lb");
    // A second detach has nothing to do, and says so.
    let (ok, text) = lab.detach_foobar(&lab::foobar_bin().unwrap()).unwrap();
    assert!(ok && text.contains("nothing pinned"), "{text}");
}
