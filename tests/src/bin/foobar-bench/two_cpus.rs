//! New flows on one CPU and on two at once (part of the `per-packet`
//! section): how flow-table inserts scale across CPUs.
use std::{fmt::Write as _, sync::Arc, time::Instant};

use anyhow::{ensure, Result};
use foobar::datapath::{
    bench::{Harness, Restore},
    FlowTableMode, LoadOptions,
};
use foobar_common::Reason;

use crate::{
    common::median,
    fixture::{frame, load_with, pin_to_cpu, roomy_table, test_run, XDP_TX},
};

/// New flows on one CPU, then on two CPUs at once (each CPU its own
/// 5-tuples: the harness puts the CPU's number in the source address), into
/// a fresh table with room: how inserts scale across CPUs.
pub fn two_cpus(
    harness: &mut Harness,
    repeat: u32,
    harness_cost: f64,
    rounds: usize,
) -> Result<String> {
    // Online CPUs, not this thread's affinity (per_packet pins it to one).
    let cpus = nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN)
        .ok()
        .flatten()
        .unwrap_or(1);
    let mut out = String::new();
    writeln!(out, "\n### New flows on two CPUs at once\n")?;
    if cpus < 2 {
        writeln!(out, "Skipped: this machine has {cpus} CPU.")?;
        return Ok(out);
    }
    let vip = frame([192, 0, 2, 10]);
    // Rates by run: 1 and 2 CPUs with the shared table, the same with
    // per-CPU tables, and 2 CPUs each with a datapath of its own (the
    // ceiling of any flow table).
    let (mut one, mut two, mut overlap) = (Vec::new(), Vec::new(), Vec::new());
    let (mut one_per_cpu, mut two_per_cpu) = (Vec::new(), Vec::new());
    let mut two_own = Vec::new();
    // (CPUs, the flow table mode, whether each CPU has a datapath of its
    // own), interleaved in every round.
    for _ in 0..rounds {
        for (n_cpus, flow_table, own_tables) in [
            (1usize, FlowTableMode::Shared, false),
            (1, FlowTableMode::PerCpu, false),
            (2, FlowTableMode::Shared, false),
            (2, FlowTableMode::PerCpu, false),
            (2, FlowTableMode::Shared, true),
        ] {
            let per_cpu = flow_table == FlowTableMode::PerCpu;
            let tables = if own_tables { n_cpus } else { 1 };
            let mut dps = Vec::new();
            let mut harnesses = Vec::new();
            for t in 0..tables {
                let mut dp = load_with(
                    "rr",
                    LoadOptions {
                        flow_table_size: roomy_table(repeat),
                        flow_table,
                        ..LoadOptions::default()
                    },
                )?;
                let fd = dp.program_fd()?;
                if t > 0 {
                    let mut h = Harness::load()?;
                    h.prepare(&fd, &vip, Restore::NewFlow)?;
                    harnesses.push(h);
                } else {
                    harness.prepare(&fd, &vip, Restore::NewFlow)?;
                }
                dps.push(dp);
            }
            let before: Vec<_> = dps
                .iter()
                .map(|dp| dp.stats(1, 3))
                .collect::<Result<_, _>>()?;
            let barrier = Arc::new(std::sync::Barrier::new(n_cpus));
            let threads: Vec<_> = (0..n_cpus)
                .map(|cpu| {
                    let prog = if own_tables && cpu > 0 {
                        harnesses[cpu - 1].harness_fd()
                    } else {
                        harness.harness_fd()
                    };
                    let barrier = barrier.clone();
                    std::thread::spawn(move || -> Result<(f64, Instant, Instant)> {
                        let prog = prog?;
                        pin_to_cpu(cpu)?;
                        barrier.wait();
                        let start = Instant::now();
                        let (action, ns) = test_run(&prog, &vip, repeat)?;
                        let end = Instant::now();
                        ensure!(action == XDP_TX, "new flows on CPU {cpu}: action {action}");
                        Ok((ns, start, end))
                    })
                })
                .collect();
            let mut runs = Vec::new();
            for t in threads {
                runs.push(
                    t.join()
                        .map_err(|_| anyhow::anyhow!("a bench thread panicked"))??,
                );
            }
            let per_table = (n_cpus / tables) as u64 * u64::from(repeat);
            for (dp, before) in dps.iter().zip(&before) {
                let after = dp.stats(1, 3)?;
                let forwarded = after.reason(Reason::Forwarded).packets
                    - before.reason(Reason::Forwarded).packets;
                ensure!(
                    forwarded == per_table,
                    "new flows on {n_cpus} CPU(s): {forwarded} forwarded by one datapath, \
                     expected {per_table}"
                );
                let entries = dp.flow_usage(0)?.entries as u64;
                ensure!(
                    entries == forwarded,
                    "new flows on {n_cpus} CPU(s): {entries} flow entries for {forwarded} new \
                     flows (an eviction, or CPUs sharing 5-tuples)"
                );
            }
            // Packets per second of each CPU from the kernel's own timing,
            // harness subtracted; summed over the CPUs.
            let rate: f64 = runs.iter().map(|r| 1e9 / (r.0 - harness_cost)).sum();
            if n_cpus == 1 {
                if per_cpu { &mut one_per_cpu } else { &mut one }.push(rate);
            } else {
                if own_tables {
                    two_own.push(rate);
                    continue;
                }
                if per_cpu {
                    two_per_cpu.push(rate);
                    continue;
                }
                two.push(rate);
                let first_end = runs.iter().map(|r| r.2).min().unwrap_or_else(Instant::now);
                let last_start = runs.iter().map(|r| r.1).max().unwrap_or_else(Instant::now);
                let longest = runs
                    .iter()
                    .map(|r| (r.2 - r.1).as_secs_f64())
                    .fold(0.0, f64::max);
                overlap.push(
                    first_end
                        .saturating_duration_since(last_start)
                        .as_secs_f64()
                        / longest,
                );
            }
        }
    }
    let (one, two) = (median(one), median(two));
    writeln!(
        out,
        "rr, dsr, a fresh table with room; {repeat} new flows per CPU per run, median of \
         {rounds} round(s); each CPU's rate from the kernel's timing of its own run, harness \
         subtracted. The two runs overlapped for {:.0} % of the longer one (median).\n",
        median(overlap) * 100.0
    )?;
    writeln!(
        out,
        "| CPUs | new flows/s (all CPUs) | × one CPU (shared table) | target |\n|---:|---:|---:|---|"
    )?;
    writeln!(out, "| 1, shared table | {:.0} | 1.00 | |", one)?;
    writeln!(
        out,
        "| 2, shared table | {:.0} | {:.2} | ≥ 1.8 |",
        two,
        two / one
    )?;
    let (one_per_cpu, two_per_cpu) = (median(one_per_cpu), median(two_per_cpu));
    writeln!(
        out,
        "| 1, per-CPU tables (`flow_table = \"per-cpu\"`) | {one_per_cpu:.0} | {:.2} | |",
        one_per_cpu / one
    )?;
    writeln!(
        out,
        "| 2, per-CPU tables (`flow_table = \"per-cpu\"`; × its own one-CPU rate: {:.2}) | \
         {two_per_cpu:.0} | {:.2} | ≥ 1.8 |",
        two_per_cpu / one_per_cpu,
        two_per_cpu / one
    )?;
    let two_own = median(two_own);
    writeln!(
        out,
        "| 2, each CPU a datapath of its own (the ceiling of any flow table) | {:.0} | {:.2} | |",
        two_own,
        two_own / one
    )?;
    Ok(out)
}
