//! `nat` end to end in the netns lab: plain nginx backends (no VIP on
//! loopback, no ARP sysctls), foobar on the LB node in native XDP mode with
//! a dedicated SNAT address on its interface, real curl traffic through the
//! VIP. Needs root; run under `flock -o /tmp/foobar-lab.lock`.
use std::{
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
    nat_lab_with("")
}

/// `nat_lab()` with more `[datapath]` keys (`extra`: TOML lines).
fn nat_lab_with(extra: &str) -> Lab {
    nat_lab_of(LabOptions::default(), extra)
}

/// A `nat` lab of `opts` (plain backends added) with more `[datapath]`
/// keys.
fn nat_lab_of(opts: LabOptions, extra: &str) -> Lab {
    let mut lab = Lab::start(&LabOptions {
        plain_backends: true,
        ..opts
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
            &format!("[datapath]\nsnat_address = \"{SNAT}\"\n{extra}"),
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
    let served = lab.requests_all_ok(&format!("http://{VIP}/"), N);
    assert_eq!(served.len(), 3, "every backend served: {served:?}");
    // Replies came back through the LB, translated (not straight from the
    // backends, which do not hold the VIP).
    assert!(reason(&lab, "forwarded_reply") >= N as u64);
    assert_eq!(reason(&lab, "drop_nat_ports_exhausted"), 0);

    lab.download_intact(&format!("http://{VIP}/"), 100 * 1024 * 1024);
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

/// Entries of a map the daemon pinned (the test reads the live datapath's
/// NAT tables through the pins, as `bpftool map dump pinned` would).
fn pinned_entries<V: aya::Pod>(lab: &Lab, map: &str) -> usize {
    let path = lab
        .pin_root
        .join(LB_IFACE)
        .join(foobar::datapath::pin::layout_name())
        .join(map);
    let data =
        aya::maps::MapData::from_pin(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let table =
        aya::maps::HashMap::<_, foobar_common::FlowKey, V>::try_from(aya::maps::Map::HashMap(data))
            .expect("a hash map");
    table.keys().take(100_000).filter(|k| k.is_ok()).count()
}

/// The value of a metric sample line `name` (labels included) served on
/// the LB node.
fn metric(lab: &Lab, name: &str) -> u64 {
    let text = lab
        .exec(
            &lab.lb.ns,
            &[
                "curl",
                "-sS",
                "--max-time",
                "5",
                "http://127.0.0.1:9183/metrics",
            ],
        )
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the metrics:\n{text}"))
}

/// Ended NAT state is removed by the daemon's garbage collection: the
/// datapath only treats an ended state as absent, so the states of closed
/// connections (1 s linger) and of an idle open one (3 s TCP idle) stay in
/// NAT_FLOWS until the daemon, every 5 s, deletes them and their reverse
/// entries, and counts them in `foobar_nat_gc_removed_total`.
#[test]
fn the_daemon_removes_ended_nat_state() {
    let lab = nat_lab_with("nat_linger = \"1s\"\nnat_tcp_idle = \"3s\"\n");
    use foobar_common::{NatFlow, NatReverse};
    // One connection held open (idle after one request), then 20 closed.
    let path = format!("/var/run/netns/{}", lab.client.ns);
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::from((VIP, 80)), Duration::from_secs(5))
                .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: lab\r\n\r\n").unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap();
        held_tx.send(buf[..n].starts_with(b"HTTP/1.1 200")).unwrap();
        // Kept open (idle) until the test is done with it.
        let _ = release_rx.recv_timeout(Duration::from_secs(60));
    });
    assert_eq!(held_rx.recv_timeout(Duration::from_secs(10)), Ok(true));
    const N: usize = 20;
    let out = lab
        .output(
            &lab.client.ns,
            &[
                "curl",
                "-sS",
                "--max-time",
                "30",
                "-H",
                "Connection: close",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}\n",
                &format!("http://{VIP}/?[1-{N}]"),
            ],
        )
        .unwrap();
    let codes = String::from_utf8_lossy(&out.stdout);
    assert_eq!(codes.lines().filter(|l| *l == "200").count(), N, "{codes}");
    // Right after the requests every state is still there: the linger has
    // not passed, and the datapath deletes no state of its own.
    let states = pinned_entries::<NatFlow>(&lab, "NAT_FLOWS");
    assert_eq!(states, N + 1, "one state per connection");
    assert_eq!(pinned_entries::<NatReverse>(&lab, "NAT_REVERSE"), N + 1);

    // Within the linger, the idle timeout, the clock slack (1 s) and two
    // collection periods (5 s), with scheduling slack: every state is gone.
    lab::wait_for("the NAT tables are empty", Duration::from_secs(25), || {
        Ok(pinned_entries::<NatFlow>(&lab, "NAT_FLOWS") == 0
            && pinned_entries::<NatReverse>(&lab, "NAT_REVERSE") == 0)
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.foobar_log()));
    let removed = "foobar_nat_gc_removed_total{table=\"state\"}";
    lab::wait_for(
        "the daemon counts what it removed",
        Duration::from_secs(10),
        || Ok(metric(&lab, removed) > N as u64 && metric(&lab, "foobar_nat_states") == 0),
    )
    .unwrap();
    assert_eq!(metric(&lab, removed), N as u64 + 1);
    // Closing the held connection now (its state gone) is the client's
    // business: the datapath makes new state for its FIN, or passes it.
    let _ = release_tx.send(());
    holder.join().unwrap();
}

/// Downloads `/big.bin` through the VIP into `copy` within `limit_s`:
/// whether curl succeeded.
fn download(lab: &Lab, copy: &std::path::Path, limit_s: u64) -> bool {
    let _ = std::fs::remove_file(copy);
    lab.output(
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
    .unwrap()
    .status
    .success()
}

/// Path-MTU discovery through `nat` (docs/NAT.md, "ICMP"): the client sits
/// behind a router whose path toward it has MTU 1400 while every interface
/// keeps 1500, so the backend's full-sized replies, translated by the LB
/// (VIP -> client, DF), make the router send "fragmentation needed" to the
/// VIP. foobar must translate it to the backend (from the SNAT address,
/// quoting the backend's own reply B:80 -> SNAT:port) for the backend to
/// lower its segments; dropped, the download stalls (the control).
#[test]
fn path_mtu_discovery_of_nat_replies_works_through_the_lb() {
    const PATH_MTU: u16 = 1400;
    const SIZE: usize = 4 * 1024 * 1024;
    let lab = nat_lab_of(
        LabOptions {
            backends: 1,
            client_path_mtu: Some(PATH_MTU),
            ..LabOptions::default()
        },
        "",
    );
    let be1 = lab.backends[0].clone();
    let original = lab.make_file("big.bin", SIZE).unwrap();
    let copy = lab.dir.join("downloaded.bin");
    let learnt = || {
        lab.exec(&be1.ns, &["ip", "route", "get", &SNAT.to_string()])
            .unwrap()
            .contains(&format!("mtu {PATH_MTU}"))
    };
    assert!(
        !learnt(),
        "the backend knows the path MTU before any traffic"
    );

    // Control: with the backend dropping incoming "destination
    // unreachable", the download stalls: the path needs the ICMP.
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
    assert!(
        !download(&lab, &copy, 5),
        "the download completed although the backend dropped ICMP: the path MTU is not in the way"
    );
    assert!(
        !learnt(),
        "the backend learnt the path MTU although it dropped ICMP"
    );
    lab.exec(&be1.ns, &["nft", "delete table ip icmptest"])
        .unwrap();

    // The translated ICMP reaches the backend: the download completes.
    let before = reason(&lab, "forwarded_icmp");
    let started = Instant::now();
    assert!(
        download(&lab, &copy, 20),
        "the download through the nat VIP failed after {:.1} s; foobar log:\n{}",
        started.elapsed().as_secs_f64(),
        lab.foobar_log()
    );
    let took = started.elapsed().as_secs_f64();
    let hash = |p: &std::path::Path| {
        lab::run(&["sha256sum", p.to_str().unwrap()]).unwrap()[..64].to_owned()
    };
    assert_eq!(hash(&copy), hash(&original), "the download differs");
    let after = reason(&lab, "forwarded_icmp");
    assert!(
        after > before,
        "no ICMP error was translated to the backend"
    );
    assert_eq!(reason(&lab, "drop_nat_icmp"), 0);
    assert!(
        learnt(),
        "the backend's route to the SNAT address has no learnt path MTU"
    );
    println!(
        "nat PMTU: 4 MiB in {took:.2} s, {} frag-needed translated to the backend",
        after - before
    );
}
