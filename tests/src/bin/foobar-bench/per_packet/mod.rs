//! The `per-packet` section: each path's cost with BPF_PROG_TEST_RUN
//! behind the restoring harness, as a ratio to the empty XDP_TX floor of
//! the same run, each path checked against foobar's counters.
use std::fmt::Write as _;

use anyhow::{ensure, Result};
use foobar::datapath::bench::{Harness, Restore, FRAME_LEN};

mod cases;

use crate::{
    common::median,
    fixture::{frame, pin_to_cpu, test_run, XDP_PASS, XDP_TX},
    two_cpus::two_cpus,
};

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
    let mut cases = cases::all(repeat)?;
    let variants = [
        Restore::Nothing,
        Restore::Macs,
        Restore::NewFlow,
        Restore::Headers,
        Restore::HeadersNewFlow,
        Restore::Decap,
        Restore::DecapNewFlow,
    ];
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
                case.reload()?;
            }
            let before = case.dp.stats(1, 3)?;
            let fd = case.dp.program_fd()?;
            let s = harness.run(&fd, &case.frame, case.restore, case.repeat)?;
            ensure!(
                s.action == case.action,
                "{}: action {} (expected {})",
                case.name,
                s.action,
                case.action
            );
            let after = case.dp.stats(1, 3)?;
            case.check(&before, &after)?;
            case.samples.push(s.ns_per_packet);
            // The harness check: the plain pass row, timed again without
            // the harness.
            if case.restore == Restore::Nothing && case.forwarding == "dsr" {
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
        "repeat {repeat} (nat new flows: fewer, as the row says: one run's new flows must fit \
         the SNAT port range), median of {rounds} interleaved round(s); a {FRAME_LEN}-byte TCP \
         frame (a SYN on the pass and new-flow paths, an ACK segment on the established and \
         reply paths). The harness restores only what the program changes (nothing on the pass \
         path; the 12 MAC bytes after a dsr forward; the Ethernet, IPv4 and TCP headers after a \
         nat or dnat rewrite; after an ipip encapsulation, the outer header stripped with \
         bpf_xdp_adjust_head, called on every iteration, and the Ethernet header; for new flows \
         also a source address and port never seen before, on any CPU) with plain stores, then \
         tail-calls the program. Each variant's own cost is measured with the trivial program \
         as the target and subtracted from the paths that use it. Each figure's path is checked \
         against foobar's counters (`not_vip`, `forwarded`, or `forwarded_reply` for the nat and dnat \
         reply rows: a backend's reply to a flow opened beforehand, translated back to the \
         client) and the flow table (one entry on a hit, many after new flows). The modes' rows \
         use rr and the shared flow table; dsr has both schedulers and table kinds.\n"
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
        (Restore::Macs, "MACs restored (dsr established)"),
        (Restore::NewFlow, "MACs and a new 5-tuple (dsr new flows)"),
        (
            Restore::Headers,
            "headers restored (nat/dnat established, reply)",
        ),
        (
            Restore::HeadersNewFlow,
            "headers and a new 5-tuple (nat/dnat new flows)",
        ),
        (
            Restore::Decap,
            "outer header stripped, Ethernet restored (ipip established)",
        ),
        (
            Restore::DecapNewFlow,
            "outer header stripped, Ethernet and a new 5-tuple (ipip new flows)",
        ),
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
        if case.restore == Restore::Nothing && case.forwarding == "dsr" {
            pass_behind = cost;
        }
        let target = if case.name.contains("full table") || case.name.contains("reply") {
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
