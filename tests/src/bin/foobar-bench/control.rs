//! The `control` section: what the control plane's table builds and ring
//! updates cost.
use std::{fmt::Write as _, net::Ipv4Addr, time::Instant};

use anyhow::Result;
use foobar::{datapath::FlowTableMode, maglev};

use crate::{common::median, fixture::load};

/// Control-plane costs: Maglev table builds and ring updates.
pub fn control_plane(quick: bool) -> Result<String> {
    let rounds = if quick { 1 } else { 5 };
    let mut out = String::new();
    writeln!(out, "\n## Control plane\n")?;
    writeln!(out, "| what | median | target |\n|---|---:|---|")?;
    for n in [10u32, 100, 1000] {
        let members: Vec<maglev::Member> = (0..n)
            .map(|i| maglev::Member {
                id: i,
                weight: 1,
                address: Ipv4Addr::from(0x0a00_0000 + i + 1).into(),
            })
            .collect();
        let times: Vec<f64> = (0..rounds)
            .map(|_| {
                let t = Instant::now();
                let table = maglev::table(&members, maglev::DEFAULT_TABLE_SIZE);
                let elapsed = t.elapsed();
                assert_eq!(table.len(), maglev::DEFAULT_TABLE_SIZE as usize);
                elapsed.as_secs_f64() * 1e3
            })
            .collect();
        let target = if n == 1000 { "< 5 ms" } else { "" };
        writeln!(
            out,
            "| Maglev table build, 65537 slots × {n} backends | {:.2} ms | {target} |",
            median(times)
        )?;
    }
    // Ring updates: a whole Maglev table, then one with one backend fewer
    // (only the slots that differ from the half being written are written).
    let mut dp = load("maglev", FlowTableMode::Shared)?;
    let members: Vec<maglev::Member> = (0..100)
        .map(|i| maglev::Member {
            id: i % 3,
            weight: 1,
            address: Ipv4Addr::from(0x0a00_0000 + i + 1).into(),
        })
        .collect();
    let full = maglev::table(&members, maglev::DEFAULT_TABLE_SIZE);
    let fewer = maglev::table(&members[1..], maglev::DEFAULT_TABLE_SIZE);
    let mut first = Vec::new();
    let mut changed = Vec::new();
    for _ in 0..rounds {
        let mut writer = dp.ring_writer()?;
        let t = Instant::now();
        writer.set(0, &full)?;
        first.push(t.elapsed().as_secs_f64() * 1e3);
        writer.set(0, &fewer)?;
        writer.set(0, &full)?;
        let t = Instant::now();
        writer.set(0, &fewer)?;
        changed.push(t.elapsed().as_secs_f64() * 1e3);
    }
    writeln!(
        out,
        "| ring update, whole 65537-slot table | {:.1} ms | |",
        median(first)
    )?;
    writeln!(
        out,
        "| ring update, one of 100 backends removed | {:.2} ms | |",
        median(changed)
    )?;
    Ok(out)
}
