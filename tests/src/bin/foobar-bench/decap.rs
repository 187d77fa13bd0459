//! The `decap` section: what `foobar decap` costs a backend per packet
//! (BPF_PROG_TEST_RUN on 128-byte frames), beside the floor. The pass and
//! refused paths leave the frame unchanged, so `repeat` runs them on one
//! frame; a decapsulated frame would be plain on the next repeat, so that
//! path is the mean of single runs, next to the floor timed the same way.
//! Each path is checked against the decap program's counters.
use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr},
};

use anyhow::{ensure, Result};
use etherparse::{IpNumber, Ipv4Header};
use foobar::{
    datapath::bench::{Harness, FRAME_LEN},
    decap::{Counter, Decap, Filter},
};
use foobar_tests::frames::Spec;

const LB: [u8; 4] = [10, 0, 0, 1];
const BACKEND: [u8; 4] = [10, 0, 0, 11];
const STRANGER: [u8; 4] = [10, 0, 0, 66];

/// A client's SYN to the VIP (as the LB sent it to the backend) inside an
/// outer IPv4 header from `src` to the backend, padded to FRAME_LEN.
fn tunnelled(src: [u8; 4]) -> Vec<u8> {
    let plain = Spec::default().build();
    let inner = &plain[14..];
    let mut outer = Ipv4Header::new(inner.len() as u16, 64, IpNumber(4), src, BACKEND).unwrap();
    outer.header_checksum = outer.calc_header_checksum();
    let mut frame = plain[..14].to_vec();
    outer.write(&mut frame).unwrap();
    frame.extend_from_slice(inner);
    frame.resize(FRAME_LEN, 0);
    frame
}

pub fn decap_cost(quick: bool) -> Result<String> {
    let filter = Filter {
        allow_from: vec![IpAddr::V4(Ipv4Addr::from(LB)).into()],
        local: vec![IpAddr::V4(Ipv4Addr::from(BACKEND))],
    };
    let mut decap = Decap::load(&filter)?;
    let mut harness = Harness::load()?;
    let mut plain = Spec::default().build();
    plain.resize(FRAME_LEN, 0);
    let floor_frame: [u8; FRAME_LEN] = plain.clone().try_into().expect("FRAME_LEN bytes");
    let (good, refused) = (tunnelled(LB), tunnelled(STRANGER));
    let (repeat, singles, rounds) = if quick {
        (1_000u32, 100u32, 1)
    } else {
        (1_000_000, 20_000, 3)
    };
    let ns = |d: std::time::Duration| d.as_nanos() as f64;
    let mut rows = Vec::new();
    for _ in 0..rounds {
        let floor = harness.floor(&floor_frame, repeat)?.ns_per_packet;
        let before = decap.counters()?;
        let pass = ns(decap.time_run(&plain, repeat)?);
        let refuse = ns(decap.time_run(&refused, repeat)?);
        let (mut decap_sum, mut floor_sum) = (0.0, 0.0);
        for _ in 0..singles {
            decap_sum += ns(decap.time_run(&good, 1)?);
            floor_sum += harness.floor(&floor_frame, 1)?.ns_per_packet;
        }
        let after = decap.counters()?;
        let moved = |c: Counter| after.get(c) - before.get(c);
        ensure!(
            moved(Counter::Passed) >= u64::from(repeat)
                && moved(Counter::RefusedSource) >= u64::from(repeat)
                && moved(Counter::Decapsulated) >= u64::from(singles),
            "decap bench: a path did not take the branch it times ({:?})",
            after.to_json()
        );
        let singles = f64::from(singles);
        rows.push([
            floor,
            pass,
            refuse,
            decap_sum / singles,
            floor_sum / singles,
        ]);
    }
    let median = |i: usize| crate::common::median(rows.iter().map(|r| r[i]).collect());
    let mut out = String::new();
    writeln!(
        out,
        "## Backend decapsulation (`foobar decap`, BPF_PROG_TEST_RUN)\n"
    )?;
    writeln!(
        out,
        "128-byte frames, median of {rounds} round(s); pass and refused source: repeat {repeat}; \
         decapsulation: the mean of {singles} single runs (a decapsulated frame is plain on the \
         next repeat), beside the floor timed the same way. Each path checked against the decap \
         program's counters.\n"
    )?;
    writeln!(out, "| path | ns/packet | × floor |\n|---|---:|---:|")?;
    let (floor, single_floor) = (median(0), median(4));
    for (name, i, base) in [
        ("floor (empty XDP_TX)", 0, floor),
        ("not tunnelled (pass)", 1, floor),
        ("tunnelled from a source not allowed", 2, floor),
        ("floor, single runs", 4, single_floor),
        ("decapsulated, single runs", 3, single_floor),
    ] {
        let v = median(i);
        writeln!(out, "| {name} | {v:.0} | {:.2}× |", v / base)?;
    }
    writeln!(out)?;
    Ok(out)
}
