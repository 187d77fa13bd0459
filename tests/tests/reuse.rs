//! A removed backend's id, freed and taken by another backend, never
//! brings the old backend's flows to the new one — end to end in the netns
//! lab, with `datapath.retire_idle` shortened to 2 s so the id is freed
//! within seconds. Needs root; `cargo xtask test` runs it so.
use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use foobar_tests::lab::{self, Lab, LabOptions, VIP};
use foobar_tests::ops::foobar;
use serde_json::Value;

const RETIRE_IDLE: &str = "2s";
/// retire_idle, plus the daemon's 5 s walk period, plus slack for two busy
/// cores.
const FREED_WITHIN: Duration = Duration::from_secs(20);

/// `foobar ARGS --json` against the lab's daemon.
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

/// The web VIP's backend with `address` in `foobar status --json`.
fn backend(lab: &Lab, address: &str) -> Option<Value> {
    cli_json(lab, &["status"])["vips"][0]["backends"]
        .as_array()?
        .iter()
        .find(|b| b["address"] == address)
        .cloned()
}

/// Packets the datapath forwarded to backend `address` (`foobar stats`).
fn forwarded_to(lab: &Lab, address: &str) -> u64 {
    let stats = cli_json(lab, &["stats"]);
    stats["vips"][0]["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|b| b["address"] == address)
        .and_then(|b| b["packets"].as_u64())
        .unwrap_or_else(|| panic!("no counter for backend {address} in {stats}"))
}

/// One keep-alive `GET /` on `stream`: the answering backend's name (the
/// body), or the error the client saw.
fn get(stream: &mut TcpStream) -> std::io::Result<String> {
    stream.write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // Bounded: the read timeout ends each read, and nginx's answer is small.
    for _ in 0..16 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|n| n.trim().parse::<usize>().ok())
                .ok_or_else(|| std::io::Error::other(format!("no Content-Length in {head}")))?;
            if body.len() >= length {
                return Ok(body.trim().to_owned());
            }
        }
    }
    Err(std::io::Error::other("the answer never completed"))
}

#[test]
fn a_reused_backend_id_never_receives_the_old_backends_flows() {
    let mut lab = Lab::start(&LabOptions::default()).expect("lab starts");
    let [be1, be2, be3] = [0, 1, 2].map(|i| lab.backends[i].addr.to_string());
    let config = lab.config_with_backends(2).replace(
        "xdp_mode = \"native\"\n",
        &format!("xdp_mode = \"native\"\nretire_idle = \"{RETIRE_IDLE}\"\n"),
    );
    assert!(config.contains("retire_idle"), "{config}");
    lab.start_foobar(&foobar(), &config)
        .expect("foobar run attaches");
    let old_id = backend(&lab, &be1).expect("be1 is configured")["id"].clone();

    // A keep-alive connection that round-robin put on be1 (bounded tries;
    // the others close when dropped).
    let vip: SocketAddr = (VIP, 80).into();
    let mut held = None;
    for _ in 0..8 {
        let mut stream = lab.connect_from_client(vip).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        if get(&mut stream).unwrap() == "be1" {
            held = Some(stream);
            break;
        }
    }
    let mut stream = held.expect("round-robin never chose be1 in 8 connections");

    // be1 is removed: retired, its established flow continues on it.
    cli_json(&lab, &["backend", "remove", "web", &be1]);
    assert_eq!(
        get(&mut stream).unwrap(),
        "be1",
        "a removed backend's flow moved"
    );

    // The connection idles past retire_idle: be1's entry and id are freed.
    lab::wait_for("be1's entry freed", FREED_WITHIN, || {
        Ok(lab.foobar_log().contains("entry freed")
            && cli_json(&lab, &["status"])["removed_backends"]
                .as_array()
                .is_some_and(|r| r.is_empty()))
    })
    .unwrap_or_else(|e| panic!("{e:#}\nfoobar log:\n{}", lab.foobar_log()));

    // be3 takes be1's id. Drained, it takes no new flows, so whatever
    // reaches it can only come from a stale reference to the id: the old
    // connection, rescheduled as any flow whose backend is gone, may only go
    // to be2. (Not drained, round-robin could rightly send it to be3.) It
    // must be up, or a stale hit would be dropped and prove nothing.
    cli_json(&lab, &["backend", "add", "web", &be3]);
    cli_json(&lab, &["backend", "drain", "web", &be3]);
    let added = backend(&lab, &be3).expect("be3 was added");
    assert_eq!(added["id"], old_id, "be3 did not take be1's id: {added}");
    lab::wait_for("be3 up and drained", Duration::from_secs(10), || {
        Ok(backend(&lab, &be3).is_some_and(|b| b["health"] == "up" && b["admin"] == "drained"))
    })
    .unwrap_or_else(|e| panic!("{e:#}: {:?}", backend(&lab, &be3)));

    let (be2_before, be3_before) = (forwarded_to(&lab, &be2), forwarded_to(&lab, &be3));
    let answer = get(&mut stream);
    let (be2_after, be3_after) = (forwarded_to(&lab, &be2), forwarded_to(&lab, &be3));
    assert_eq!(
        be3_after, be3_before,
        "the old connection's packets reached be3, which took be1's id ({answer:?})"
    );
    assert!(
        be2_after > be2_before,
        "the old connection was not rescheduled to be2 ({be2_before} -> {be2_after}, \
         answer {answer:?})"
    );
    // be2 has no such connection: the client sees a reset, never an answer.
    match answer {
        Err(e) => assert!(
            matches!(
                e.kind(),
                ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof
            ),
            "the old connection ended with {e}, not a reset"
        ),
        Ok(body) => panic!("the old connection got an answer from {body}"),
    }
}
