//! Path-MTU discovery for DSR replies, end to end in the netns lab: the
//! client sits behind a router whose path toward it has a smaller MTU than
//! every interface (1400 against 1500). The backend's full-sized replies
//! (source: the VIP) make the router send ICMP "fragmentation needed" to
//! the VIP; the LB node receives it, and foobar must send it on to the
//! backend that owns the flow, or the download stalls for ever.
//! Needs root; `cargo xtask test` runs it so.
use std::{path::Path, time::Instant};

use foobar_tests::lab::{self, Lab, LabOptions, VIP};
use serde_json::Value;

const PATH_MTU: u16 = 1400;
const SIZE: usize = 4 * 1024 * 1024;
/// The whole download, PMTU discovery included, must finish within this
/// (it takes well under a second once the backend knows the path MTU).
const DOWNLOAD_LIMIT_S: u64 = 20;
/// How long the control download (ICMP kept from the backend) may try.
const STALLED_LIMIT_S: u64 = 5;

fn forwarded_icmp(lab: &Lab) -> u64 {
    let out = lab
        .foobar_cli(&lab::foobar_bin().unwrap(), &["stats", "--json"])
        .unwrap();
    assert!(
        out.status.success(),
        "foobar stats: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: Value = serde_json::from_slice(&out.stdout).unwrap();
    stats["reasons"]["forwarded_icmp"]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no forwarded_icmp counter in {stats}"))
}

/// Downloads `/big.bin` through the VIP into `copy` with curl's time limit:
/// whether curl succeeded, and how long it took.
fn download(lab: &Lab, copy: &Path, limit_s: u64) -> (bool, f64) {
    let _ = std::fs::remove_file(copy);
    let started = Instant::now();
    let out = lab
        .output(
            &lab.client.ns,
            &[
                "curl",
                "-sS",
                "--max-time",
                &limit_s.to_string(),
                "-o",
                copy.to_str().unwrap(),
                &format!("http://{VIP}/big.bin"),
            ],
        )
        .unwrap();
    (out.status.success(), started.elapsed().as_secs_f64())
}

fn sha256(path: &Path) -> String {
    lab::run(&["sha256sum", path.to_str().unwrap()]).unwrap()[..64].to_owned()
}

#[test]
fn path_mtu_discovery_of_dsr_replies_works_through_the_lb() {
    let mut lab = Lab::start(&LabOptions {
        backends: 1,
        client_path_mtu: Some(PATH_MTU),
        ..LabOptions::default()
    })
    .expect("lab starts (root? `cargo xtask setup`?)");
    let config = lab.config();
    lab.start_foobar(&lab::foobar_bin().unwrap(), &config)
        .expect("foobar run attaches");
    let be1 = lab.backends[0].clone();
    let client = lab.client.addr.to_string();
    let original = lab.make_file("big.bin", SIZE).unwrap();
    let copy = lab.dir.join("downloaded.bin");

    // Every interface keeps MTU 1500, so the client advertises MSS 1460 and
    // the backend sends 1500-byte DF packets: only the router's path is
    // narrower.
    let link = lab
        .exec(&lab.client.ns, &["ip", "link", "show", "dev", "eth0"])
        .unwrap();
    assert!(link.contains("mtu 1500"), "client's eth0: {link}");
    let route = lab
        .exec(
            &be1.ns,
            &["ip", "route", "get", &client, "from", &VIP.to_string()],
        )
        .unwrap();
    assert!(
        !route.contains(&format!("mtu {PATH_MTU}")),
        "the backend knows the path MTU before any traffic: {route}"
    );

    // Control: the same download while the backend drops incoming ICMP
    // "destination unreachable" stalls, i.e. the path really needs the
    // ICMP to reach the backend (the LB's own stack learning it is useless).
    lab.exec(
        &be1.ns,
        &[
            "nft",
            "add table ip icmptest; \
             add chain ip icmptest input { type filter hook input priority 0; }; \
             add rule ip icmptest input icmp type destination-unreachable drop",
        ],
    )
    .unwrap();
    let (ok, took) = download(&lab, &copy, STALLED_LIMIT_S);
    let got = std::fs::metadata(&copy).map(|m| m.len()).unwrap_or(0);
    assert!(
        !ok && got < SIZE as u64,
        "without ICMP at the backend the download should stall, but it got {got} of {SIZE} \
         bytes in {took:.1} s (ok: {ok}): the path MTU is not in the way"
    );
    let route = lab
        .exec(
            &be1.ns,
            &["ip", "route", "get", &client, "from", &VIP.to_string()],
        )
        .unwrap();
    assert!(
        !route.contains(&format!("mtu {PATH_MTU}")),
        "the backend learnt the path MTU although it dropped ICMP: {route}"
    );
    lab.exec(&be1.ns, &["nft", "delete table ip icmptest"])
        .unwrap();

    // With the ICMP reaching the backend through foobar, it completes.
    let icmp_before = forwarded_icmp(&lab);
    let (ok, took) = download(&lab, &copy, DOWNLOAD_LIMIT_S);
    assert!(
        ok,
        "the download through the VIP failed after {took:.1} s (limit {DOWNLOAD_LIMIT_S} s); \
         foobar log:\n{}",
        lab.foobar_log()
    );
    assert_eq!(std::fs::metadata(&copy).unwrap().len(), SIZE as u64);
    assert_eq!(
        sha256(&copy),
        sha256(&original),
        "the download differs from the file"
    );
    let icmp_after = forwarded_icmp(&lab);
    assert!(
        icmp_after > icmp_before,
        "no ICMP error was forwarded during the download ({icmp_before} before, {icmp_after} after)"
    );
    // The backend learnt the path MTU from the forwarded ICMP, for replies
    // from the VIP to the client.
    let route = lab
        .exec(
            &be1.ns,
            &["ip", "route", "get", &client, "from", &VIP.to_string()],
        )
        .unwrap();
    assert!(
        route.contains(&format!("mtu {PATH_MTU}")),
        "the backend's route to the client has no learnt path MTU: {route}"
    );
}
