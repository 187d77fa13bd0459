//! `nat` end to end in the netns lab: plain nginx backends (no VIP on
//! loopback, no ARP sysctls), foobar on the LB node in native XDP mode with
//! a dedicated SNAT address on its interface, real curl traffic through the
//! VIP. Needs root; run under `flock -o /tmp/foobar-lab.lock`.
use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    os::fd::AsFd as _,
    time::{Duration, Instant},
};

use foobar_tests::lab::{self, Lab, LabOptions, LB_IFACE, VIP};

/// The LB's SNAT address: added to its interface as an operator would
/// (`ip addr add 10.201.0.5/24 dev eth0`), so the backends' ARP for it is
/// answered by the LB node's kernel.
const SNAT: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 5);

fn nat_lab() -> Lab {
    let mut lab = Lab::start(&LabOptions {
        plain_backends: true,
        ..LabOptions::default()
    })
    .expect("lab starts (root? `cargo xtask setup`?)");
    lab::run(&[
        "ip",
        "-n",
        &lab.lb.ns,
        "addr",
        "add",
        &format!("{SNAT}/24"),
        "dev",
        LB_IFACE,
    ])
    .unwrap();
    // Plain backends: a DSR VIP would not work here (no VIP on lo).
    let no_vip = lab.exec(&lab.backends[0].ns, &["ip", "-4", "addr", "show", "lo"]);
    assert!(!no_vip.unwrap().contains(&VIP.to_string()));
    let config = lab
        .config()
        .replace(
            "[datapath]\n",
            &format!("[datapath]\nsnat_address = \"{SNAT}\"\n"),
        )
        .replace("forwarding = \"dsr\"", "forwarding = \"nat\"");
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
fn nat_serves_plain_backends_requests_and_a_big_transfer_intact() {
    let lab = nat_lab();
    let status = lab
        .foobar_cli(&lab::foobar_bin().unwrap(), &["status"])
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("nat"), "status shows the mode: {status}");

    const N: usize = 3000;
    let url = format!("http://{VIP}/?[1-{N}]");
    let out = lab
        .output(
            &lab.client.ns,
            &[
                "curl",
                "-sS",
                "--max-time",
                "300",
                "-H",
                "Connection: close",
                "-w",
                "%{http_code}\n",
                &url,
            ],
        )
        .unwrap();
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        2 * N,
        "one body and one status line per request"
    );
    let mut served: BTreeMap<&str, usize> = BTreeMap::new();
    for pair in lines.chunks(2) {
        assert_eq!(pair[1], "200", "a request failed: {pair:?}");
        *served.entry(pair[0]).or_default() += 1;
    }
    assert_eq!(served.len(), 3, "every backend served: {served:?}");
    // Replies came back through the LB, translated (not straight from the
    // backends, which do not hold the VIP).
    assert!(reason(&lab, "forwarded_reply") >= N as u64);
    assert_eq!(reason(&lab, "drop_nat_ports_exhausted"), 0);

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
    assert_eq!(hash(&copy), hash(&original), "the download differs");
}

/// 10 000 connections from the client's one address, all open at once,
/// each answered (HTTP keep-alive holds them open on the backends).
#[test]
fn ten_thousand_concurrent_connections_from_one_client_address() {
    let lab = nat_lab();
    const N: usize = 10_000;
    let path = format!("/var/run/netns/{}", lab.client.ns);
    let deadline = Instant::now() + Duration::from_secs(120);
    let result = std::thread::spawn(move || -> Result<usize, String> {
        let file = std::fs::File::open(&path).map_err(|e| e.to_string())?;
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| e.to_string())?;
        let to = SocketAddr::from((VIP, 80));
        let mut open = Vec::with_capacity(N);
        for i in 0..N {
            if Instant::now() > deadline {
                return Err(format!("out of time after {i} connections"));
            }
            let s = TcpStream::connect_timeout(&to, Duration::from_secs(5))
                .map_err(|e| format!("connection {i}: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok();
            open.push(s);
        }
        // Every one of them, still open, gets an answer.
        let mut ok = 0;
        for (i, s) in open.iter_mut().enumerate() {
            s.write_all(b"GET / HTTP/1.1\r\nHost: lab\r\n\r\n")
                .map_err(|e| format!("request {i}: {e}"))?;
        }
        for (i, s) in open.iter_mut().enumerate() {
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).map_err(|e| format!("response {i}: {e}"))?;
            if buf[..n].starts_with(b"HTTP/1.1 200") {
                ok += 1;
            }
        }
        Ok(ok)
    })
    .join()
    .expect("client thread");
    assert_eq!(result, Ok(N), "every connection answered");
    assert_eq!(reason(&lab, "drop_nat_ports_exhausted"), 0);
}
