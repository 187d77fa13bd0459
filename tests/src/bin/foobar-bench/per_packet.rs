//! The `per-packet` section: each path's cost with BPF_PROG_TEST_RUN
//! behind the restoring harness, as a ratio to the empty XDP_TX floor of
//! the same run, each path checked against foobar's counters.
use std::fmt::Write as _;

use anyhow::{ensure, Result};
use foobar::datapath::{
    bench::{Harness, Restore, FRAME_LEN},
    Datapath, FlowTableMode, LoadOptions,
};
use foobar_common::Reason;

use crate::{
    common::median,
    fixture::{
        frame, frame_with, load, load_with, pin_to_cpu, roomy_table, test_run, XDP_PASS, XDP_TX,
    },
    two_cpus::two_cpus,
};

pub struct Case {
    name: String,
    scheduler: &'static str,
    flow_table: FlowTableMode,
    /// Reload the datapath (an empty flow table) before every round.
    fresh: bool,
    dp: Datapath,
    frame: [u8; FRAME_LEN],
    restore: Restore,
    action: u32,
    samples: Vec<f64>,
}

/// Per-packet cost with BPF_PROG_TEST_RUN: the floor (a trivial XDP_TX
/// program), each harness variant's own cost, and foobar's pass, new-flow
/// and established paths for each scheduler, in interleaved rounds; then
/// new flows on one CPU and on two at once.
pub fn per_packet(quick: bool) -> Result<String> {
    // One CPU throughout: with per-CPU flow tables, an established flow is
    // a hit only on the CPU that made it (two_cpus pins its own threads).
    let affinity = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))?;
    pin_to_cpu(0)?;
    let out = per_packet_on_one_cpu(quick);
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &affinity)?;
    out
}

pub fn per_packet_on_one_cpu(quick: bool) -> Result<String> {
    let (rounds, repeat) = if quick { (1, 10_000) } else { (5, 1_000_000) };
    let mut harness = Harness::load()?;
    let floor_fd = harness.floor_fd()?;
    let vip = frame([192, 0, 2, 10]);
    // Established flows carry ACK segments (a SYN opens a flow: the
    // datapath sends it the new-flow way).
    let vip_ack = frame_with([192, 0, 2, 10], true);
    let other = frame([192, 0, 2, 99]);
    let mut cases = Vec::new();
    for (scheduler, flow_table) in [
        ("rr", FlowTableMode::Shared),
        ("maglev", FlowTableMode::Shared),
        ("rr", FlowTableMode::PerCpu),
        ("maglev", FlowTableMode::PerCpu),
    ] {
        let per_cpu = flow_table == FlowTableMode::PerCpu;
        for (path, frame, restore, action, fresh) in [
            ("pass (not a VIP)", other, Restore::Nothing, XDP_PASS, false),
            (
                "new flow, table with room (miss, schedule, insert)",
                vip,
                Restore::NewFlow,
                XDP_TX,
                true,
            ),
            (
                "new flow, full table (… and LRU eviction)",
                vip,
                Restore::NewFlow,
                XDP_TX,
                false,
            ),
            (
                "established (flow-table hit)",
                vip_ack,
                Restore::Macs,
                XDP_TX,
                false,
            ),
        ] {
            if path.starts_with("pass") && (scheduler != "rr" || per_cpu) {
                continue; // the pass path does not depend on the scheduler
            }
            let name = if path.starts_with("pass") {
                path.to_owned()
            } else if per_cpu {
                format!("{scheduler}, dsr, per-CPU flow tables: {path}")
            } else {
                format!("{scheduler}, dsr: {path}")
            };
            cases.push(Case {
                name,
                scheduler,
                flow_table,
                fresh,
                dp: load(scheduler, flow_table)?,
                frame,
                restore,
                action,
                samples: Vec::new(),
            });
        }
    }
    let variants = [Restore::Nothing, Restore::Macs, Restore::NewFlow];
    let mut floor = Vec::new();
    let mut with_harness: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    // The check: the pass path (which changes nothing) run directly, with
    // `repeat`, against the same path behind the harness minus its cost.
    let mut pass_direct = Vec::new();
    let forwarder_fd = harness.forwarder_fd()?;
    let mut forwarder = Vec::new();
    for _ in 0..rounds {
        floor.push(harness.floor(&vip, repeat)?.ns_per_packet);
        for (i, r) in variants.iter().enumerate() {
            with_harness[i].push(harness.run(&floor_fd, &vip, *r, repeat)?.ns_per_packet);
        }
        let s = harness.run(&forwarder_fd, &vip, Restore::Macs, repeat)?;
        ensure!(s.action == XDP_TX, "minimal forwarder: action {}", s.action);
        forwarder.push(s.ns_per_packet);
        for case in &mut cases {
            if case.fresh {
                let opts = LoadOptions {
                    flow_table_size: roomy_table(repeat),
                    flow_table: case.flow_table,
                    ..LoadOptions::default()
                };
                case.dp = load_with(case.scheduler, opts)?;
            }
            let before = case.dp.stats(1, 3)?;
            let fd = case.dp.program_fd()?;
            let s = harness.run(&fd, &case.frame, case.restore, repeat)?;
            ensure!(
                s.action == case.action,
                "{}: action {} (expected {})",
                case.name,
                s.action,
                case.action
            );
            let after = case.dp.stats(1, 3)?;
            check_path(case, &before, &after, repeat)?;
            case.samples.push(s.ns_per_packet);
            if case.restore == Restore::Nothing {
                let (action, ns) = test_run(&fd, &case.frame, repeat)?;
                ensure!(action == XDP_PASS, "pass, direct: action {action}");
                pass_direct.push(ns);
            }
        }
    }
    let floor = median(floor);
    let harness_cost: Vec<f64> = with_harness
        .into_iter()
        .map(|v| median(v) - floor)
        .collect();
    let cost_of = |r: Restore| harness_cost[variants.iter().position(|v| *v == r).unwrap_or(0)];
    let mut out = String::new();
    writeln!(out, "\n## Per-packet cost (BPF_PROG_TEST_RUN)\n")?;
    writeln!(
        out,
        "repeat {repeat}, median of {rounds} interleaved round(s); a {FRAME_LEN}-byte TCP frame (a SYN on the pass and new-flow paths, an ACK segment on the established path). \
         The harness restores only what the program changes (nothing on the pass path, the 12 \
         MAC bytes on a flow-table hit; for new flows also a source address and port never seen \
         before, on any CPU) with plain stores, then tail-calls the program. Each variant's own \
         cost is measured with the trivial program as the target and subtracted from the paths \
         that use it. Each figure's path is checked against foobar's counters.\n"
    )?;
    writeln!(
        out,
        "| path | ns/packet | × floor | target |\n|---|---:|---:|---|"
    )?;
    writeln!(
        out,
        "| floor: trivial XDP_TX program | {floor:.1} | 1.00 | |"
    )?;
    for (r, what) in [
        (Restore::Nothing, "nothing restored (pass)"),
        (Restore::Macs, "MACs restored (established)"),
        (Restore::NewFlow, "MACs and a new 5-tuple (new flows)"),
    ] {
        writeln!(
            out,
            "| harness, {what} (subtracted below) | {:.1} | | |",
            cost_of(r)
        )?;
    }
    let forwarder = median(forwarder) - cost_of(Restore::Macs);
    writeln!(
        out,
        "| minimal XDP forwarder (MAC rewrite to one backend, nothing else) | {forwarder:.1} | {:.2} | |",
        forwarder / floor
    )?;
    let mut pass_behind = 0.0;
    for case in &cases {
        let cost = median(case.samples.clone()) - cost_of(case.restore);
        if case.restore == Restore::Nothing {
            pass_behind = cost;
        }
        let target = if case.name.contains("full table") {
            "(reported)"
        } else if case.name.starts_with("pass") {
            "≤ 1.5"
        } else if case.name.contains("established") {
            "≤ 2.5"
        } else {
            "≤ 9"
        };
        writeln!(
            out,
            "| {} | {cost:.1} | {:.2} | {target} |",
            case.name,
            cost / floor
        )?;
    }
    let direct = median(pass_direct);
    writeln!(
        out,
        "\nHarness check: the pass path run directly (no harness: it changes nothing, so \
         `repeat` reruns it on the same frame) costs {direct:.1} ns/packet; behind the harness, \
         minus the harness, {pass_behind:.1} ns: they differ by {:.1} ns{}.",
        (direct - pass_behind).abs(),
        if (direct - pass_behind).abs() <= 3.0 {
            ""
        } else {
            " (more than 3 ns: the subtraction is off, or the machine was noisy)"
        }
    )?;
    out.push_str(&two_cpus(
        &mut harness,
        repeat / 2,
        cost_of(Restore::NewFlow),
        rounds,
    )?);
    Ok(out)
}

/// Did the run go down the path its name says?
pub fn check_path(
    case: &mut Case,
    before: &foobar::datapath::Stats,
    after: &foobar::datapath::Stats,
    repeat: u32,
) -> Result<()> {
    let delta = |r: Reason| after.reason(r).packets - before.reason(r).packets;
    let want = if case.action == XDP_PASS {
        Reason::NotVip
    } else {
        Reason::Forwarded
    };
    ensure!(
        delta(want) == u64::from(repeat),
        "{}: {} packets counted as {}, expected {repeat}",
        case.name,
        delta(want),
        want.name()
    );
    if case.action == XDP_TX {
        let entries = case.dp.flow_usage(0)?.entries;
        if case.restore == Restore::NewFlow {
            ensure!(
                entries > 1,
                "{}: new-flow run left {entries} flow entries",
                case.name
            );
        } else {
            ensure!(
                entries == 1,
                "{}: established run left {entries} flow entries",
                case.name
            );
        }
    }
    Ok(())
}
