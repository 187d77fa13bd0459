//! Next-hop MACs in the netns lab: foobar follows the kernel's neighbour
//! table while it runs, and a backend nobody answers ARP for is down (with
//! the reason shown) instead of stopping the daemon or stalling the API.
//! Needs root; run under `flock -o /tmp/foobar-lab.lock`.
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use foobar_tests::lab::{self, Lab, LabOptions, LB_IFACE, VIP};
use foobar_tests::ops::{backend, cli, foobar, request, status, wait_until};
use serde_json::Value;

/// Nobody in the lab holds these addresses: ARP for them gets no answer.
const NOBODY: &str = "10.201.0.77";
const NOBODY_ADDED: &str = "10.201.0.78";

#[test]
fn a_backend_without_a_mac_starts_down_and_the_others_serve() {
    let mut lab = Lab::start(&LabOptions::default()).expect("lab starts");
    let config = format!(
        "{}\n[[vip.backend]]\naddress = \"{NOBODY}\"\n",
        lab.config_with_backends(2)
    );
    lab.start_foobar(&foobar(), &config)
        .expect("foobar starts although one backend has no MAC");

    let s = status(&lab);
    let nobody = backend(&s, NOBODY).expect("the unresolved backend is listed");
    assert_eq!(nobody["health"], "down", "{s}");
    assert_eq!(nobody["mac"], "none", "{s}");
    let reason = nobody["last_check"].as_str().unwrap();
    assert!(
        reason.starts_with(&format!(
            "no MAC: ARP for {NOBODY} on {LB_IFACE} got no answer"
        )),
        "{reason}"
    );
    for b in &lab.backends[..2] {
        let b = backend(&s, &b.addr.to_string()).unwrap();
        assert_eq!(b["health"], "up", "{s}");
    }
    let served: Vec<_> = (0..12).map(|_| request(&lab.client.ns)).collect();
    assert!(
        served
            .iter()
            .all(|r| matches!(r.as_deref(), Ok("be1") | Ok("be2"))),
        "{served:?}"
    );

    // `backend add` of another unreachable address answers at once (the MAC
    // is resolved in the background), and the API stays responsive.
    let t = Instant::now();
    let (ok, out, err) = cli(&lab, &["backend", "add", "web", NOBODY_ADDED, "--json"]);
    let add_took = t.elapsed();
    assert!(ok, "{err}");
    let added: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(added["mac"], "resolving", "{added}");
    let t = Instant::now();
    let s = status(&lab);
    let status_took = t.elapsed();
    eprintln!(
        "backend add of an unreachable address: {add_took:?}; status after it: {status_took:?}"
    );
    assert!(add_took < Duration::from_secs(1), "{add_took:?}");
    assert!(status_took < Duration::from_secs(1), "{status_took:?}");
    assert_eq!(backend(&s, NOBODY_ADDED).unwrap()["health"], "down", "{s}");
    let served: Vec<_> = (0..9).map(|_| request(&lab.client.ns)).collect();
    assert!(served.iter().all(|r| r.is_ok()), "{served:?}");

    // It stays down while ARP keeps failing (retried in the background).
    std::thread::sleep(Duration::from_secs(4));
    let s = status(&lab);
    for a in [NOBODY, NOBODY_ADDED] {
        assert_eq!(backend(&s, a).unwrap()["health"], "down", "{s}");
    }
    let log = lab.foobar_log();
    assert!(log.contains("backend starts down"), "{log}");
}

#[test]
fn traffic_follows_a_backend_whose_mac_changes_under_load() {
    let mut lab = Lab::start(&LabOptions::default()).expect("lab starts");
    let config = lab.config();
    lab.start_foobar(&foobar(), &config).expect("foobar runs");
    let be2 = lab.backends[1].clone();
    let be2_addr = be2.addr.to_string();
    let old_mac = status(&lab)["vips"][0]["backends"][1]["mac"]
        .as_str()
        .unwrap()
        .to_owned();
    let new_mac = "02:5e:00:00:be:02";
    assert_ne!(old_mac, new_mac);
    // The backend announces its new MAC (gratuitous ARP), as a host does on
    // failover or migration; the LB's kernel updates its entry from it.
    lab.exec(
        &be2.ns,
        &["sysctl", "-qw", "net.ipv4.conf.eth0.arp_notify=1"],
    )
    .unwrap();

    let wrk = lab.start_wrk(&format!("http://{VIP}/"), 8, 12).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let prober = {
        let (ns, stop) = (lab.client.ns.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(60) {
                let began = t0.elapsed();
                let r = request(&ns);
                seen.push((began, t0.elapsed(), r));
                std::thread::sleep(Duration::from_millis(20));
            }
            seen
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let changed_at = t0.elapsed();
    lab.exec(
        &be2.ns,
        &["ip", "link", "set", "dev", "eth0", "address", new_mac],
    )
    .unwrap();

    let followed = wait_until("the new MAC in status", Duration::from_secs(10), || {
        backend(&status(&lab), &be2_addr).is_some_and(|b| b["mac"] == new_mac)
    });
    // Traffic reaches be2 again: a request that started after the change
    // and was served by it.
    let limit = Duration::from_secs(5);
    let deadline = Instant::now() + Duration::from_secs(15);
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let seen = prober.join().unwrap();
    let wrk = lab::finish_wrk(wrk).unwrap();
    assert!(Instant::now() < deadline);
    let back = seen
        .iter()
        .find(|(began, _, r)| *began > changed_at && r.as_deref() == Ok("be2"))
        .map(|(_, ended, _)| *ended - changed_at)
        .unwrap_or_else(|| panic!("be2 never served after the change: {seen:?}"));
    eprintln!(
        "MAC change followed in status after {followed:?}; be2 served through the VIP \
         {back:?} after the change (bound {limit:?}); wrk: {} requests",
        wrk.requests
    );
    assert!(back <= limit, "be2 back after {back:?}, bound {limit:?}");
    let after: Vec<_> = seen
        .iter()
        .filter(|(began, _, _)| *began > changed_at + back)
        .collect();
    assert!(
        after.iter().all(|(_, _, r)| r.is_ok()),
        "failures after traffic followed: {after:?}"
    );
    assert!(wrk.requests > 0, "{}", wrk.text);
    let log = lab.foobar_log();
    assert!(log.contains("next-hop MAC changed"), "{log}");
}
