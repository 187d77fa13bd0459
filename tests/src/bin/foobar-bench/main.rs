//! `cargo xtask bench`: what foobar costs, measured side by side in one run
//! and reported as ratios (these machines are shared and noisy: absolute
//! figures drift, ratios of interleaved runs much less). Prints a report and
//! writes it to docs/BENCHMARKS.md. `--quick` runs every measurement once,
//! briefly, and checks that each produced numbers — the CI smoke test.
//! Timings are reported, never asserted; what is asserted is correctness
//! (each path's counters, the flow gauge within capacity, no fuzzer
//! difference).
mod decap;

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _, Result};
use aya::programs::ProgramFd;
use clap::Parser;
use foobar::{
    config,
    datapath::{
        bench::{Harness, Restore, FRAME_LEN},
        Datapath, FlowTableMode, LoadOptions,
    },
    maglev,
    state::{self, State},
};
use foobar_common::{Flow, FlowKey, Reason, AF_INET, FLOW_CLOSED};
use foobar_tests::{
    frames::Spec,
    fuzz::{self, FuzzOptions},
    lab::{self, Lab, LabOptions, Node, VIP},
    peers,
};

#[derive(Parser)]
struct Args {
    /// One short run of everything (CI).
    #[arg(long)]
    quick: bool,
    /// Where to write the report (markdown).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The command line to print as "how to reproduce".
    #[arg(long, default_value = "cargo xtask bench")]
    command: String,
    /// Which sections to run (comma-separated): per-packet, decap, control,
    /// flow-walk, fuzz, e2e, restart, failover.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "per-packet,decap,control,flow-walk,fuzz,e2e,restart,failover"
    )]
    sections: Vec<String>,
    /// The fuzzer's PRNG seed (default: from the clock; the report prints it).
    #[arg(long)]
    fuzz_seed: Option<u64>,
}

const SECTIONS: [&str; 8] = [
    "per-packet",
    "decap",
    "control",
    "flow-walk",
    "fuzz",
    "e2e",
    "restart",
    "failover",
];

/// In the --out file, everything from this line on is written by hand and
/// kept when the report is regenerated.
const HAND_WRITTEN: &str = "<!-- written by hand from here on; cargo xtask bench keeps it -->";

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        nix::unistd::geteuid().is_root(),
        "the benchmarks load XDP programs: run as root"
    );
    let mut report = String::new();
    writeln!(report, "# foobar benchmarks\n")?;
    writeln!(
        report,
        "Produced by `{}`{}.\n",
        args.command,
        if args.quick { " (quick)" } else { "" }
    )?;
    writeln!(report, "{}", machine())?;
    if let Some(unknown) = args
        .sections
        .iter()
        .find(|s| !SECTIONS.contains(&s.as_str()))
    {
        anyhow::bail!(
            "--sections: no section {unknown:?}; the sections are {}",
            SECTIONS.join(", ")
        );
    }
    let wants = |name: &str| args.sections.iter().any(|s| s == name);
    if wants("per-packet") {
        report.push_str(&per_packet(args.quick)?);
    }
    if wants("decap") {
        report.push_str(&decap::decap_cost(args.quick)?);
    }
    if wants("control") {
        report.push_str(&control_plane(args.quick)?);
    }
    if wants("flow-walk") {
        report.push_str(&flow_walk(args.quick)?);
    }
    if wants("fuzz") {
        report.push_str(&fuzz_run(args.quick, args.fuzz_seed)?);
    }
    if wants("e2e") {
        report.push_str(&end_to_end(args.quick)?);
    }
    if wants("restart") {
        report.push_str(&restart(args.quick)?);
    }
    if wants("failover") {
        report.push_str(&failover(args.quick)?);
    }
    print!("{report}");
    if let Some(out) = &args.out {
        // The analysis written by hand below the marker survives a rerun.
        if let Ok(old) = std::fs::read_to_string(out) {
            if let Some(at) = old.find(HAND_WRITTEN) {
                report.push('\n');
                report.push_str(&old[at..]);
            }
        }
        std::fs::write(out, &report).with_context(|| format!("writing {}", out.display()))?;
        println!("\nwritten to {}", out.display());
    }
    Ok(())
}

/// CPU, kernel, cores and load: the context every figure needs.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "Machine: {cpu}, {} cores, kernel {}; load average at start: {}\n",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        kernel.trim(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn frame(dst: [u8; 4]) -> [u8; FRAME_LEN] {
    frame_with(dst, false)
}

/// A FRAME_LEN TCP frame to `dst`: a SYN (what opens a new flow), or with
/// `ack` a segment of an established flow.
fn frame_with(dst: [u8; 4], ack: bool) -> [u8; FRAME_LEN] {
    let header = 14 + 20 + 20;
    let f = Spec {
        dst,
        ack,
        payload: vec![b'x'; FRAME_LEN - header],
        ..Spec::default()
    }
    .build();
    f.try_into().expect("a FRAME_LEN frame")
}

fn load(scheduler: &str, flow_table: FlowTableMode) -> Result<Datapath> {
    load_with(
        scheduler,
        LoadOptions {
            flow_table,
            ..LoadOptions::default()
        },
    )
}

fn load_with(scheduler: &str, opts: LoadOptions) -> Result<Datapath> {
    // The bench's frames are addressed to the fixtures' LB MAC.
    let opts = LoadOptions {
        lb_mac: Spec::default().dst_mac,
        ..opts
    };
    // With the dnat reply path loaded, the VIP is a dnat one (the program
    // refuses a dnat VIP without it, and the pass path is what differs).
    let mode = if opts.dnat_replies { "dnat" } else { "dsr" };
    let text = format!(
        "[[vip]]\nname = \"web\"\naddress = \"192.0.2.10\"\nport = 80\nforwarding = \"{mode}\"\nscheduler = \"{scheduler}\"\n\
         [[vip.backend]]\naddress = \"10.0.0.11\"\n[[vip.backend]]\naddress = \"10.0.0.12\"\n\
         [[vip.backend]]\naddress = \"10.0.0.13\"\n"
    );
    let config = config::parse(&text).map_err(|p| anyhow::anyhow!("{p:?}"))?;
    let saved = state::saved_from_config(&config);
    let macs = saved[0]
        .backends
        .iter()
        .map(|b| (b.address, [2, 0, 0, 0, 0, b.address.octets()[3]]))
        .collect();
    let st = State::build(&saved, &macs)?;
    let mut dp = Datapath::load(&opts)?;
    dp.apply(&st.plan())?;
    Ok(dp)
}

/// Flow-table size of the "table with room" cases: more than one run's
/// new flows on every CPU, so no insert evicts (the table is reloaded every
/// round; with per-CPU LRU lists each CPU has its share of the entries).
const ROOMY_TABLE: u32 = 1 << 21;

fn roomy_table(inserts_per_cpu: u32) -> u32 {
    let cpus = nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_CONF)
        .ok()
        .flatten()
        .unwrap_or(2) as u32;
    ROOMY_TABLE.max((inserts_per_cpu + 1).saturating_mul(cpus.max(1)))
}

struct Case {
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

/// BPF_PROG_TEST_RUN on `prog` (any XDP program fd), `repeat` times, on the
/// calling thread's CPU: the action of the last run and the kernel's mean
/// ns per run. Raw, so that threads pinned to different CPUs can run it at
/// the same time.
fn test_run(prog: &ProgramFd, frame: &[u8; FRAME_LEN], repeat: u32) -> Result<(u32, f64)> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    /// The BPF_PROG_TEST_RUN part of `union bpf_attr` (linux/bpf.h).
    #[repr(C)]
    #[derive(Default)]
    struct TestAttr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        _pad: u32,
    }
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    let mut out = [0u8; FRAME_LEN + 256];
    let mut attr = TestAttr {
        prog_fd: prog.as_fd().as_raw_fd() as u32,
        data_size_in: FRAME_LEN as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        ..TestAttr::default()
    };
    // SAFETY: attr is a valid, fully initialised bpf_attr prefix whose
    // pointers outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestAttr,
            std::mem::size_of::<TestAttr>(),
        )
    };
    ensure!(
        rc == 0,
        "BPF_PROG_TEST_RUN: {}",
        std::io::Error::last_os_error()
    );
    Ok((attr.retval, f64::from(attr.duration)))
}

fn pin_to_cpu(cpu: usize) -> Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .with_context(|| format!("pinning the bench thread to CPU {cpu}"))
}

/// Per-packet cost with BPF_PROG_TEST_RUN: the floor (a trivial XDP_TX
/// program), each harness variant's own cost, and foobar's pass, new-flow
/// and established paths for each scheduler, in interleaved rounds; then
/// new flows on one CPU and on two at once.
fn per_packet(quick: bool) -> Result<String> {
    // One CPU throughout: with per-CPU flow tables, an established flow is
    // a hit only on the CPU that made it (two_cpus pins its own threads).
    let affinity = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))?;
    pin_to_cpu(0)?;
    let out = per_packet_on_one_cpu(quick);
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &affinity)?;
    out
}

/// The pass-path case with the dnat reply check loaded.
const PASS_DNAT: &str = "pass (not a VIP), dnat reply check loaded (a dnat VIP at start)";

fn per_packet_on_one_cpu(quick: bool) -> Result<String> {
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
    // The pass path with the dnat reply check loaded (a dnat VIP at
    // start): one more bitmap lookup, on the packet's source.
    cases.push(Case {
        name: PASS_DNAT.to_owned(),
        scheduler: "rr",
        flow_table: FlowTableMode::Shared,
        fresh: false,
        dp: load_with(
            "rr",
            LoadOptions {
                dnat_replies: true,
                ..LoadOptions::default()
            },
        )?,
        frame: other,
        restore: Restore::Nothing,
        action: XDP_PASS,
        samples: Vec::new(),
    });
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
            if case.restore == Restore::Nothing && case.name != PASS_DNAT {
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
        if case.restore == Restore::Nothing && case.name != PASS_DNAT {
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

/// New flows on one CPU, then on two CPUs at once (each CPU its own
/// 5-tuples: the harness puts the CPU's number in the source address), into
/// a fresh table with room: how inserts scale across CPUs.
fn two_cpus(
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

/// Did the run go down the path its name says?
fn check_path(
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

/// Control-plane costs: Maglev table builds and ring updates.
fn control_plane(quick: bool) -> Result<String> {
    let rounds = if quick { 1 } else { 5 };
    let mut out = String::new();
    writeln!(out, "\n## Control plane\n")?;
    writeln!(out, "| what | median | target |\n|---|---:|---|")?;
    for n in [10u32, 100, 1000] {
        let members: Vec<maglev::Member> = (0..n)
            .map(|i| maglev::Member {
                id: i,
                weight: 1,
                address: Ipv4Addr::from(0x0a00_0000 + i + 1),
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
            address: Ipv4Addr::from(0x0a00_0000 + i + 1),
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

/// A flow of the walk's table: client `i` to the bench's VIP.
fn walk_key(i: u32) -> FlowKey {
    FlowKey {
        src_be: u32::from(Ipv4Addr::from(0x0a80_0000u32.wrapping_add(i))).to_be(),
        dst_be: u32::from_be_bytes([192, 0, 2, 10]).to_be(),
        sport_be: (1024 + (i % 60000) as u16).to_be(),
        dport_be: 80u16.to_be(),
        proto: 6,
        family: AF_INET,
        _pad: [0; 2],
    }
}

fn walk_flow(i: u32, now_ns: u64) -> Flow {
    Flow {
        backend_id: i % 3,
        vip_id: 0,
        last_seen_ns: now_ns,
        // A quarter of the flows closed by the client, as a busy table has.
        flags: if i.is_multiple_of(4) { FLOW_CLOSED } else { 0 },
        backend_gen: 0,
        vip_gen: 0,
    }
}

/// Counter reads (what `foobar status` and a scrape do on the owner's loop)
/// every `every` until `done` says stop, at least one: their latencies in ms.
fn read_latencies(dp: &Datapath, every: Duration, done: impl Fn() -> bool) -> Result<Vec<f64>> {
    let mut took = Vec::new();
    loop {
        let t = Instant::now();
        dp.stats(1, 3)?;
        took.push(t.elapsed().as_secs_f64() * 1e3);
        if done() {
            return Ok(took);
        }
        std::thread::sleep(every);
    }
}

/// What walks on their own thread took (ms, entries counted), and the
/// owner's counter reads meanwhile.
struct Walks {
    walks: Vec<(f64, usize)>,
    reads: Vec<f64>,
}

fn walk_while_reading(dp: &Datapath, times: usize) -> Result<Walks> {
    let walker = dp.flow_walker()?;
    let thread = std::thread::spawn(move || -> Result<Vec<(f64, usize)>> {
        (0..times)
            .map(|_| {
                let t = Instant::now();
                let usage = walker.usage(0)?;
                Ok((t.elapsed().as_secs_f64() * 1e3, usage.entries))
            })
            .collect()
    });
    let reads = read_latencies(dp, Duration::from_millis(5), || thread.is_finished());
    let walks = thread
        .join()
        .map_err(|_| anyhow::anyhow!("the walking thread panicked"))??;
    Ok(Walks {
        walks,
        reads: reads?,
    })
}

/// The flow-table walk the daemon runs every few seconds (wlc weights,
/// freeing removed backends, the occupancy gauge), on a table filled
/// through the datapath's map handle: how long one walk takes, what it
/// counts against the capacity, and how long the owner's own map reads
/// wait meanwhile — on a quiet table and while a writer churns it.
fn flow_walk(quick: bool) -> Result<String> {
    let (capacity, filled, walks) = if quick {
        (1u32 << 17, 100_000u32, 1)
    } else {
        (1u32 << 22, 4_000_000u32, 3)
    };
    let dp = load_with(
        "rr",
        LoadOptions {
            flow_table_size: capacity,
            ..LoadOptions::default()
        },
    )?;
    let mut table = dp.flow_table()?;
    let now = foobar::daemon::monotonic_ns();
    let t = Instant::now();
    for i in 0..filled {
        table
            .insert(walk_key(i), walk_flow(i, now), 0)
            .with_context(|| format!("filling the flow table: entry {i} of {filled}"))?;
    }
    let fill_s = t.elapsed().as_secs_f64();

    // The owner's reads with no walk, for comparison.
    let idle_reads = if quick { 20 } else { 200 };
    let count = std::cell::Cell::new(0);
    let idle = read_latencies(&dp, Duration::from_millis(5), || {
        count.set(count.get() + 1);
        count.get() >= idle_reads
    })?;

    let quiet = walk_while_reading(&dp, walks)?;
    for &(_, entries) in &quiet.walks {
        ensure!(
            entries <= capacity as usize,
            "the walk counted {entries} entries in a table of {capacity}"
        );
    }

    // Churn: a writer inserts new flows as fast as it can, so the full
    // table evicts under the walks.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let mut table = dp.flow_table()?;
        std::thread::spawn(move || {
            let mut i = filled;
            while !stop.load(Ordering::Relaxed) && i < u32::MAX {
                let _ = table.insert(walk_key(i), walk_flow(i, now), 0);
                i += 1;
            }
            i - filled
        })
    };
    // Let the table fill up first: the walks should see it evicting.
    std::thread::sleep(Duration::from_millis(if quick { 50 } else { 500 }));
    let churned = walk_while_reading(&dp, walks);
    stop.store(true, Ordering::Relaxed);
    let inserted = writer
        .join()
        .map_err(|_| anyhow::anyhow!("the writing thread panicked"))?;
    let churned = churned?;
    for &(_, entries) in &churned.walks {
        ensure!(
            entries <= capacity as usize,
            "under churn the walk counted {entries} entries in a table of {capacity}"
        );
    }

    let ms = |w: &[(f64, usize)]| median(w.iter().map(|&(ms, _)| ms).collect());
    let counted = |w: &[(f64, usize)]| {
        let min = w.iter().map(|&(_, n)| n).min().unwrap_or(0);
        let max = w.iter().map(|&(_, n)| n).max().unwrap_or(0);
        if min == max {
            format!("{min}")
        } else {
            format!("{min}–{max}")
        }
    };
    let slowest = |r: &[f64]| r.iter().copied().fold(0.0, f64::max);
    let mut out = String::new();
    writeln!(out, "\n## Flow-table walk\n")?;
    writeln!(
        out,
        "A flow table of {capacity} entries filled with {filled} flows through the datapath's \
         map handle (one insert per system call: {fill_s:.1} s, {:.0} inserts/s), then walked \
         as the daemon walks it (`FlowWalker::usage`: BPF_MAP_LOOKUP_BATCH on a handle of its \
         own, on its own thread), {walks} time(s) per case; walk time is the median. Meanwhile \
         the main thread reads the counters every 5 ms (`Datapath::stats`, what `foobar \
         status` and a scrape read on the daemon's loop); its slowest read is shown next to \
         the slowest of {idle_reads} reads with no walk ({:.2} ms). Under churn a writer \
         thread inserts new flows into the full table as fast as it can ({inserted} inserts \
         in that case), so the table evicts under the walk. Reported, not asserted; the \
         count is checked never to exceed the capacity.\n",
        f64::from(filled) / fill_s.max(1e-9),
        slowest(&idle),
    )?;
    writeln!(
        out,
        "| case | walk | ns/entry | entries counted / capacity | counter reads during the walks | slowest read | × slowest idle read |\n\
         |---|---:|---:|---:|---:|---:|---:|"
    )?;
    for (name, w) in [("quiet table", &quiet), ("under churn", &churned)] {
        let walk_ms = ms(&w.walks);
        let entries = median(w.walks.iter().map(|&(_, n)| n as f64).collect());
        writeln!(
            out,
            "| {name} | {walk_ms:.0} ms | {:.0} | {} / {capacity} | {} | {:.2} ms | {:.1} |",
            walk_ms * 1e6 / entries.max(1.0),
            counted(&w.walks),
            w.reads.len(),
            slowest(&w.reads),
            slowest(&w.reads) / slowest(&idle).max(1e-6),
        )?;
    }
    Ok(out)
}

/// The XDP program against its reference model (`foobar_tests::fuzz`):
/// frames, differences (any fails the run) and the rate.
fn fuzz_run(quick: bool, seed: Option<u64>) -> Result<String> {
    let frames = if quick { 20_000 } else { 1_000_000 };
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    // The fuzzer pins its thread to one CPU: give it a thread of its own,
    // so the bench's later sections (and the programs they start) are not
    // pinned.
    let opts = FuzzOptions {
        frames,
        seed,
        max_differences: 1,
        flow_table: FlowTableMode::Shared,
    };
    let report = std::thread::spawn(move || fuzz::run(&opts))
        .join()
        .map_err(|_| anyhow::anyhow!("the fuzzing thread panicked"))?
        .context("running the fuzzer")?;
    if !report.differences.is_empty() {
        anyhow::bail!(
            "the fuzzer found {} difference(s) between the datapath and the model (seed \
             {seed}; replay: cargo xtask fuzz --frames {frames} --seed {seed}):\n{}\n{}",
            report.differences.len(),
            report.differences.join("\n"),
            report.summary()
        );
    }
    ensure!(
        report.frames == frames,
        "the fuzzer ran {} frames of {frames} (seed {seed})",
        report.frames
    );
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let mut out = String::new();
    writeln!(out, "\n## Reference-model fuzzer\n")?;
    writeln!(
        out,
        "`foobar_tests::fuzz::run` ({build} build): seeded random and mutated frames through \
         BPF_PROG_TEST_RUN, one at a time, each compared with the reference model \
         (tests/src/model.rs) on action, reason and output bytes, then the counters compared \
         at the end; the thread is pinned to one CPU. Run time counts the fuzzed frames, not \
         the pre-fill. Replay with `cargo xtask fuzz --frames {frames} --seed {seed}`.\n"
    )?;
    writeln!(
        out,
        "| frames | differences | seed | run time | frames/s |\n|---:|---:|---:|---:|---:|"
    )?;
    writeln!(
        out,
        "| {} | {} | {seed} | {:.1} s | {:.0} |",
        report.frames,
        report.differences.len(),
        report.seconds,
        report.frames_per_second()
    )?;
    Ok(out)
}

/// The load-balancing paths compared end to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// Client straight to be1.
    Direct,
    /// Client straight to the three backends, round-robin on the client
    /// (each of the WRK_PROCESSES wrk processes to one backend): the same
    /// work as a balancer's spread. HTTP only: iperf3 goes to be1 on every
    /// path, so its figures are Direct's.
    DirectSpread,
    /// The minimal XDP forwarder (foobar-bench object's `forwarder`: both
    /// MACs rewritten to fixed values, XDP_TX, nothing else) on the LB's
    /// eth0, every frame to be1: the ceiling for any XDP balancer here.
    Forwarder,
    /// foobar with be1 alone behind the web VIP: the forwarder's work.
    /// HTTP only: iperf3's VIPs are the same as Foobar's.
    FoobarOne,
    /// foobar, native XDP, DSR, round-robin over the three backends.
    Foobar,
    /// HAProxy in TCP mode, `balance roundrobin`.
    Haproxy,
    /// nftables DNAT with `numgen inc`, masquerade.
    Nft,
}

const PATHS: [Path; 7] = [
    Path::Direct,
    Path::DirectSpread,
    Path::Forwarder,
    Path::FoobarOne,
    Path::Foobar,
    Path::Haproxy,
    Path::Nft,
];

/// The destination MAC the bench object's `forwarder` writes
/// (foobar-ebpf/src/bench.rs `BACKEND_MAC`): be1's eth0 gets it.
const FORWARDER_BACKEND_MAC: &str = "02:00:00:00:00:0b";

/// What the forwarder path holds: the bench object (its programs live as
/// long as it does) and, while attached, the XDP link on the LB's eth0
/// (closing it detaches).
struct ForwarderPath {
    harness: Harness,
    link: Option<std::os::fd::OwnedFd>,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::DirectSpread => "direct ×3",
            Path::Forwarder => "forwarder",
            Path::FoobarOne => "foobar ×1",
            Path::Foobar => "foobar",
            Path::Haproxy => "HAProxy",
            Path::Nft => "nftables",
        }
    }

    /// The hosts the client's wrk spreads over (round-robin), iperf3's
    /// first.
    fn hosts(self, lab: &Lab) -> Vec<String> {
        match self {
            Path::Direct => vec![lab.backends[0].addr.to_string()],
            Path::DirectSpread => lab.backends.iter().map(|b| b.addr.to_string()).collect(),
            Path::Forwarder | Path::FoobarOne | Path::Foobar => vec![VIP.to_string()],
            Path::Haproxy => vec![peers::HAPROXY_ADDR.to_string()],
            Path::Nft => vec![peers::NFT_ADDR.to_string()],
        }
    }

    /// Whether the path runs iperf3 itself (the ×3 and ×1 paths would
    /// repeat direct's and foobar's runs exactly).
    fn runs_iperf(self) -> bool {
        !matches!(self, Path::DirectSpread | Path::FoobarOne)
    }

    /// Whose figures stand in where this path does not measure.
    fn stand_in(self) -> Option<Path> {
        match self {
            Path::DirectSpread => Some(Path::Direct),
            Path::FoobarOne => Some(Path::Foobar),
            _ => None,
        }
    }

    fn start(self, lab: &mut Lab, forwarder: &mut ForwarderPath) -> Result<()> {
        match self {
            Path::Direct | Path::DirectSpread => Ok(()),
            Path::Forwarder => {
                // The forwarder sends ARP on to be1 too, which never answers
                // for the VIP: the client keeps the LB's MAC for the VIP
                // meanwhile.
                let lb_mac = mac_text(lab.mac(&lab.lb, lab::LB_IFACE)?);
                let vip = VIP.to_string();
                lab.exec(
                    &lab.client.ns,
                    &[
                        "ip",
                        "neigh",
                        "replace",
                        &vip,
                        "lladdr",
                        &lb_mac,
                        "dev",
                        "eth0",
                        "nud",
                        "permanent",
                    ],
                )?;
                let prog = forwarder.harness.forwarder_fd()?;
                forwarder.link = Some(attach_xdp(&lab.lb.ns, lab::LB_IFACE, &prog)?);
                // The path goes where it says: be1 answers the VIP.
                let body = lab.curl(&format!("http://{VIP}/"))?;
                ensure!(
                    body.trim() == lab.backends[0].name,
                    "through the forwarder, {VIP} answered {body:?}, not {}",
                    lab.backends[0].name
                );
                Ok(())
            }
            Path::FoobarOne => {
                let config = peers::foobar_config(lab).replacen(
                    &lab.config(),
                    &lab.config_with_backends(1),
                    1,
                );
                ensure!(
                    config != peers::foobar_config(lab),
                    "foobar ×1: could not drop be2 and be3 from the bench config"
                );
                lab.start_foobar(&lab::foobar_bin()?, &config)
            }
            Path::Foobar => {
                let config = peers::foobar_config(lab);
                lab.start_foobar(&lab::foobar_bin()?, &config)
            }
            Path::Haproxy => peers::start_haproxy(lab),
            Path::Nft => peers::start_nft(lab),
        }
    }

    fn stop(self, lab: &mut Lab, forwarder: &mut ForwarderPath) -> Result<()> {
        match self {
            Path::Direct | Path::DirectSpread => Ok(()),
            Path::Forwarder => {
                forwarder.link = None;
                lab.exec(
                    &lab.client.ns,
                    &["ip", "neigh", "del", &VIP.to_string(), "dev", "eth0"],
                )
                .map(|_| ())
            }
            Path::FoobarOne | Path::Foobar => lab.stop_and_detach_foobar().map(|_| ()),
            Path::Haproxy => peers::stop_haproxy(lab),
            Path::Nft => peers::stop_nft(lab),
        }
    }
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Attaches `prog` in native mode to `iface` in namespace `ns` with a BPF
/// link (BPF_LINK_CREATE; the link lives as long as the returned fd). The
/// interface index is the namespace's, so the call runs on a thread that
/// entered it.
fn attach_xdp(ns: &str, iface: &str, prog: &ProgramFd) -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _};
    let path = format!("/var/run/netns/{ns}");
    let iface = iface.to_owned();
    let prog_fd = prog.as_fd().as_raw_fd();
    std::thread::scope(|scope| {
        scope
            .spawn(move || -> Result<std::os::fd::OwnedFd> {
                let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("entering {path}"))?;
                let ifindex = nix::net::if_::if_nametoindex(iface.as_str())
                    .with_context(|| format!("no interface {iface} in {ns}"))?;
                /// The BPF_LINK_CREATE part of `union bpf_attr` (linux/bpf.h),
                /// zero-padded.
                #[repr(C)]
                #[derive(Default)]
                struct LinkCreate {
                    prog_fd: u32,
                    target_ifindex: u32,
                    attach_type: u32,
                    flags: u32,
                    _rest: [u64; 6],
                }
                const BPF_LINK_CREATE: libc::c_long = 28;
                const BPF_XDP: u32 = 37;
                const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
                let attr = LinkCreate {
                    prog_fd: prog_fd as u32,
                    target_ifindex: ifindex,
                    attach_type: BPF_XDP,
                    flags: XDP_FLAGS_DRV_MODE,
                    ..LinkCreate::default()
                };
                // SAFETY: attr is a valid, zero-padded bpf_attr prefix.
                let rc = unsafe {
                    libc::syscall(
                        libc::SYS_bpf,
                        BPF_LINK_CREATE,
                        &attr as *const LinkCreate,
                        std::mem::size_of::<LinkCreate>(),
                    )
                };
                ensure!(
                    rc >= 0,
                    "attaching the forwarder to {iface} in {ns} (BPF_LINK_CREATE): {}; is \
                     another XDP program still attached there?",
                    std::io::Error::last_os_error()
                );
                // SAFETY: a new fd the kernel just gave us; nothing else owns it.
                Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(rc as i32) })
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the thread attaching the forwarder panicked"))?
    })
}

/// `kernel.bpf_stats_enabled` on for the end-to-end rounds (programs'
/// run_time_ns and run_cnt), set back to what it was when dropped.
struct BpfStats {
    old: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> Result<BpfStats> {
        let old =
            std::fs::read_to_string(BPF_STATS).with_context(|| format!("reading {BPF_STATS}"))?;
        std::fs::write(BPF_STATS, "1").with_context(|| format!("writing 1 to {BPF_STATS}"))?;
        Ok(BpfStats {
            old: old.trim().to_owned(),
        })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(BPF_STATS, &self.old) {
            eprintln!("could not set {BPF_STATS} back to {}: {e}", self.old);
        }
    }
}

/// The id of the XDP program attached to the LB's eth0, if any.
fn lb_xdp_prog_id(lab: &Lab) -> Result<Option<u64>> {
    let text = lab.exec(
        &lab.lb.ns,
        &["ip", "-j", "link", "show", "dev", lab::LB_IFACE],
    )?;
    let json: serde_json::Value =
        serde_json::from_str(&text).context("parsing `ip -j link show`")?;
    let xdp = &json[0]["xdp"];
    Ok(xdp["prog"]["id"]
        .as_u64()
        .or_else(|| xdp["attached"][0]["prog"]["id"].as_u64()))
}

/// A program's cumulative (run_time_ns, run_cnt) as the kernel counts them
/// while `kernel.bpf_stats_enabled` is 1 (tail calls included in the
/// entry program's time).
fn prog_stats(id: u64) -> Result<(u64, u64)> {
    let text = lab::run(&["bpftool", "-j", "prog", "show", "id", &id.to_string()])?;
    let json: serde_json::Value =
        serde_json::from_str(&text).context("parsing `bpftool -j prog show`")?;
    Ok((
        json["run_time_ns"].as_u64().unwrap_or(0),
        json["run_cnt"].as_u64().unwrap_or(0),
    ))
}

/// The workloads, each a figure where more is better (except CPU and XDP
/// time).
const WORKLOADS: [&str; 8] = [
    "HTTP small responses (wrk, requests/s)",
    "HTTP 1 MB responses (wrk, MB/s)",
    "TCP stream (iperf3, Gbit/s)",
    "UDP 64-byte datagrams (iperf3, received packets/s)",
    "CPU, whole machine, per small HTTP request (µs, less is better)",
    "LB node's XDP program, per small HTTP request (ns, less is better)",
    "LB node's XDP program, per packet, small HTTP (ns, less is better)",
    "LB node's XDP program, per packet, 64-byte UDP (ns, less is better)",
];
/// The workloads measured with the same tool on every path (throughput and
/// the whole machine's CPU); the rest are the LB's XDP time.
const RATED: usize = 5;

/// system + irq + softirq jiffies of the whole machine.
fn kernel_jiffies() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq
    f.get(2).copied().unwrap_or(0) + f.get(5).copied().unwrap_or(0) + f.get(6).copied().unwrap_or(0)
}

fn run_in(lab: &Lab, args: &[&str]) -> Result<String> {
    let out = lab.output(&lab.client.ns, args)?;
    ensure!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn iperf3(lab: &Lab, host: &str, secs: u64, udp: bool) -> Result<f64> {
    let t = secs.to_string();
    let port = peers::IPERF_PORT.to_string();
    let mut args = vec!["iperf3", "-c", host, "-p", &port, "-t", &t, "-J"];
    if udp {
        args.extend(["-u", "-l", "64", "-b", "0"]);
    }
    let json: serde_json::Value = serde_json::from_str(&run_in(lab, &args)?)?;
    let end = &json["end"];
    if udp {
        let sum = &end["sum"];
        let received =
            sum["packets"].as_f64().unwrap_or(0.0) - sum["lost_packets"].as_f64().unwrap_or(0.0);
        Ok(received / sum["seconds"].as_f64().unwrap_or(1.0).max(1e-3))
    } else {
        Ok(end["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0)
            / 1e9)
    }
}

/// Client processes on every path: one wrk of one thread each, run at
/// once, a third of the connections each, so every path has the same
/// client and direct ×3 can go round-robin over the three backends.
const WRK_PROCESSES: u32 = 3;

/// wrk from the client: `connections` in all over WRK_PROCESSES wrk
/// processes of one thread, process `i` to `hosts[i % hosts.len()]` (one
/// host: all to it); the summed result.
fn wrk(
    lab: &Lab,
    path: Path,
    hosts: &[String],
    url_path: &str,
    connections: u32,
    d: &str,
) -> Result<lab::WrkResult> {
    let results = {
        let n = WRK_PROCESSES;
        let children = (0..n)
            .map(|i| {
                let host = &hosts[i as usize % hosts.len()];
                let c = connections / n + u32::from(i < connections % n);
                std::process::Command::new("ip")
                    .args(["netns", "exec", &lab.client.ns, "wrk", "-t1", "-c"])
                    .args([&c.to_string(), "-d", d])
                    .arg(format!("http://{host}{url_path}"))
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .context("starting wrk")
            })
            .collect::<Vec<_>>();
        let mut results = Vec::new();
        for child in children {
            results.push(lab::finish_wrk(child?)?);
        }
        results
    };
    let mut sum = lab::WrkResult::default();
    for r in results {
        ensure!(
            r.socket_errors == 0 && r.non_2xx_3xx == 0,
            "{}: wrk errors\n{}",
            path.name(),
            r.text
        );
        sum.requests += r.requests;
        sum.requests_per_s += r.requests_per_s;
        sum.transfer_per_s += r.transfer_per_s;
    }
    Ok(sum)
}

/// One path, every workload; None where the path does not measure it.
/// `xdp`: the LB's XDP program, whose run time is read around the small
/// HTTP and UDP workloads.
fn measure(lab: &Lab, path: Path, secs: u64, xdp: Option<u64>) -> Result<Vec<Option<f64>>> {
    let hosts = path.hosts(lab);
    let d = format!("{secs}s");
    let stats = |id: Option<u64>| id.map(prog_stats).transpose();
    let xdp_before = stats(xdp)?;
    let jiffies = kernel_jiffies();
    let small = wrk(lab, path, &hosts, "/", 32, &d)?;
    let cpu_us = (kernel_jiffies() - jiffies) as f64 * 10_000.0 / small.requests.max(1) as f64;
    let xdp_small = stats(xdp)?;
    let big = wrk(lab, path, &hosts, "/1m.bin", 8, &d)?;
    let (tcp, udp, xdp_udp) = if path.runs_iperf() {
        let tcp = iperf3(lab, &hosts[0], secs, false)?;
        let before = stats(xdp)?;
        let udp = (path != Path::Haproxy)
            .then(|| iperf3(lab, &hosts[0], secs, true))
            .transpose()?;
        (Some(tcp), udp, before.zip(stats(xdp)?))
    } else {
        (None, None, None)
    };
    let delta = |(t0, c0): (u64, u64), (t1, c1): (u64, u64)| {
        (t1.saturating_sub(t0) as f64, c1.saturating_sub(c0) as f64)
    };
    let small_xdp = xdp_before.zip(xdp_small).map(|(a, b)| delta(a, b));
    let udp_xdp = xdp_udp.map(|(a, b)| delta(a, b));
    let per = |(t, n): (f64, f64)| (n > 0.0).then(|| t / n);
    Ok(vec![
        Some(small.requests_per_s),
        Some(big.transfer_per_s / (1024.0 * 1024.0)),
        tcp,
        udp,
        Some(cpu_us),
        small_xdp.and_then(|(t, _)| per((t, small.requests as f64))),
        small_xdp.and_then(per),
        udp_xdp.and_then(per),
    ])
}

/// End to end in the netns lab, the paths interleaved in rounds.
fn end_to_end(quick: bool) -> Result<String> {
    let (rounds, secs) = if quick { (1, 1) } else { (3, 5) };
    let mut lab = Lab::start(&LabOptions {
        wire_like_everywhere: true,
        ..LabOptions::default()
    })?;
    lab.make_file("1m.bin", 1024 * 1024)?;
    peers::prepare(&mut lab)?;
    // be1 takes the MAC the forwarder writes; every host forgets be1's old
    // one.
    let be1 = lab.backends[0].clone();
    lab.exec(
        &be1.ns,
        &[
            "ip",
            "link",
            "set",
            "eth0",
            "address",
            FORWARDER_BACKEND_MAC,
        ],
    )?;
    let mut namespaces = vec![lab.client.ns.clone(), lab.lb.ns.clone()];
    namespaces.extend(lab.backends.iter().map(|b| b.ns.clone()));
    for ns in &namespaces {
        lab.exec(ns, &["ip", "neigh", "flush", "all"])?;
    }
    let mut forwarder = ForwarderPath {
        harness: Harness::load()?,
        link: None,
    };
    let bpf_stats = BpfStats::enable()?;
    // results[path][workload] = one value per round
    let mut results = vec![vec![Vec::new(); WORKLOADS.len()]; PATHS.len()];
    let mut loads = Vec::new();
    for _ in 0..rounds {
        loads.push(std::fs::read_to_string("/proc/loadavg").unwrap_or_default());
        for (p, path) in PATHS.iter().enumerate() {
            path.start(&mut lab, &mut forwarder)
                .with_context(|| format!("starting {}", path.name()))?;
            let values = lb_xdp_prog_id(&lab).and_then(|xdp| {
                ensure!(
                    xdp.is_some()
                        == matches!(path, Path::Forwarder | Path::FoobarOne | Path::Foobar),
                    "{}: an XDP program is {}attached to the LB's {}",
                    path.name(),
                    if xdp.is_some() { "" } else { "not " },
                    lab::LB_IFACE
                );
                measure(&lab, *path, secs, xdp)
            });
            path.stop(&mut lab, &mut forwarder)?;
            for (w, v) in values?.into_iter().enumerate() {
                if let Some(v) = v {
                    ensure!(
                        v > 0.0,
                        "{} gave no figure for {}",
                        path.name(),
                        WORKLOADS[w]
                    );
                    results[p][w].push(v);
                }
            }
        }
    }
    drop(bpf_stats);
    let detection = health_detection(&mut lab, if quick { 1 } else { 3 })?;
    let mut out = String::new();
    writeln!(out, "\n## End to end (netns lab)\n")?;
    writeln!(
        out,
        "Client, LB node and 3 nginx backends in network namespaces on one bridge; every veth \
         with wire-like offloads (tx checksum, TSO, GSO off), as XDP on veth needs. {rounds} \
         round(s) of {secs} s per workload, paths interleaved in each round ({}); medians, and \
         ratios as the median of per-round ratios. Paths: direct is the client straight to be1; \
         direct ×3 straight to the three backends, round-robin on the client; on every path \
         the client is three wrk processes of one thread, a third of the connections each \
         (32 in all for small responses, 8 for 1 MB), each to one backend on direct ×3; forwarder is the minimal \
         XDP forwarder (both MACs rewritten to be1's and a fixed source, XDP_TX, nothing else) \
         attached natively on the LB's eth0 in foobar's place, the ceiling for any XDP \
         balancer on these veths; foobar ×1 is foobar with be1 alone behind the web VIP (the \
         forwarder's work); foobar is native XDP, DSR, round-robin over the three; HAProxy TCP \
         mode, roundrobin; nftables DNAT numgen inc + masquerade. iperf3 goes to be1 on every \
         path, so direct ×3 and foobar ×1 do not rerun it: their iperf3 ratios use direct's \
         and foobar's figures of the same round. The CPU row counts system+irq+softirq time of \
         the whole machine (client, LB and backends share it) per request; the XDP rows are \
         the LB node's own work: the kernel's run_time_ns of the program attached to its eth0 \
         (`kernel.bpf_stats_enabled` = 1 during the rounds, set back after), per small HTTP \
         request and per packet it ran on. Load average per round: {}.\n",
        PATHS.map(Path::name).join(", "),
        loads
            .iter()
            .map(|l| l.split_whitespace().next().unwrap_or("?").to_owned())
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    let fmt = |v: &[f64]| {
        if v.is_empty() {
            "n/a".to_owned()
        } else {
            format!("{:.2}", median(v.to_vec()))
        }
    };
    writeln!(
        out,
        "| workload | {} |\n|---|{}",
        PATHS.map(Path::name).join(" | "),
        "---:|".repeat(PATHS.len())
    )?;
    for (w, name) in WORKLOADS.iter().enumerate() {
        let cells: Vec<String> = (0..PATHS.len())
            .map(|p| fmt(results[p][w].as_slice()))
            .collect();
        writeln!(out, "| {name} | {} |", cells.join(" | "))?;
    }
    // A path's figures for workload w, or its stand-in's.
    let figures = |path: Path, w: usize| -> &[f64] {
        let p = PATHS.iter().position(|&q| q == path).unwrap_or(0);
        match (results[p][w].is_empty(), path.stand_in()) {
            (true, Some(other)) => {
                let o = PATHS.iter().position(|&q| q == other).unwrap_or(0);
                results[o][w].as_slice()
            }
            _ => results[p][w].as_slice(),
        }
    };
    let ratio = |a: &[f64], b: &[f64]| {
        if a.is_empty() || b.is_empty() {
            "n/a".to_owned()
        } else {
            format!(
                "{:.2}",
                median(a.iter().zip(b).map(|(x, y)| x / y).collect())
            )
        }
    };
    let comparisons: [(Path, Path, &str); 5] = [
        (Path::FoobarOne, Path::Forwarder, "≥ 0.95"),
        (Path::Foobar, Path::DirectSpread, "≥ 0.95"),
        (Path::Forwarder, Path::Direct, ""),
        (Path::Foobar, Path::Haproxy, "≥ 2"),
        (Path::Foobar, Path::Nft, "≥ 1.3"),
    ];
    writeln!(
        out,
        "\nRatios (targets on requests/s, throughput and packet rate; reported, not \
         asserted; the CPU row is less-is-better, so below 1 is better there):\n"
    )?;
    writeln!(
        out,
        "| workload | {} |\n|---|{}",
        comparisons
            .iter()
            .map(|(a, b, target)| {
                let t = if target.is_empty() {
                    String::new()
                } else {
                    format!(" (target {target})")
                };
                format!("{} / {}{t}", a.name(), b.name())
            })
            .collect::<Vec<_>>()
            .join(" | "),
        "---:|".repeat(comparisons.len())
    )?;
    for (w, name) in WORKLOADS.iter().enumerate().take(RATED) {
        let cells: Vec<String> = comparisons
            .iter()
            .map(|&(a, b, _)| ratio(figures(a, w), figures(b, w)))
            .collect();
        writeln!(out, "| {name} | {} |", cells.join(" | "))?;
    }
    writeln!(
        out,
        "\nHealth-check detection (HTTP check every {} ms, fall 2; bound interval × fall + one \
         interval = {} ms): a SIGKILLed backend marked down after {:.0} ms (median of {}).",
        lab::HEALTH_INTERVAL_MS,
        lab::HEALTH_INTERVAL_MS * 3,
        median(detection.clone()),
        detection.len()
    )?;
    Ok(out)
}

/// Kills be2's nginx under foobar and times until `foobar status` shows it
/// down; restarts it and waits until it is up again.
fn health_detection(lab: &mut Lab, times: usize) -> Result<Vec<f64>> {
    let foobar = lab::foobar_bin()?;
    let config = peers::foobar_config(lab);
    lab.start_foobar(&foobar, &config)?;
    let be2 = lab.backends[1].addr.to_string();
    let health = |lab: &Lab| -> Result<String> {
        let out = lab.foobar_cli(&foobar, &["status", "--json"])?;
        let s: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        Ok(s["vips"][0]["backends"]
            .as_array()
            .and_then(|bs| bs.iter().find(|b| b["address"] == be2.as_str()))
            .map(|b| b["health"].as_str().unwrap_or("").to_owned())
            .unwrap_or_default())
    };
    let mut samples = Vec::new();
    for _ in 0..times {
        lab.kill_backend("be2")?;
        let t = Instant::now();
        lab::wait_for("be2 down", std::time::Duration::from_secs(10), || {
            Ok(health(lab)? == "down")
        })?;
        samples.push(t.elapsed().as_secs_f64() * 1e3);
        lab.start_backend("be2")?;
        lab::wait_for("be2 up", std::time::Duration::from_secs(10), || {
            Ok(health(lab)? == "up")
        })?;
    }
    lab.stop_and_detach_foobar()?;
    Ok(samples)
}

/// One probe of the restart section: when it started (since the stream
/// began) and whether a backend answered it.
struct Probe {
    at: Duration,
    ok: bool,
}

/// A new TCP connection to the VIP every 10 ms from the client's
/// namespace, each a `GET /` that a backend must answer (the LB node's own
/// nginx answering "lb" counts as lost: that is the fail-open a detached
/// program shows). Runs until `stop`; bounded to 10 minutes.
fn probe_stream(client_ns: &str, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<Probe>> {
    use std::io::{Read as _, Write as _};
    let path = format!("/var/run/netns/{client_ns}");
    std::thread::spawn(move || {
        let mut probes = Vec::new();
        let Ok(file) = std::fs::File::open(&path) else {
            return probes;
        };
        if nix::sched::setns(
            std::os::fd::AsFd::as_fd(&file),
            nix::sched::CloneFlags::CLONE_NEWNET,
        )
        .is_err()
        {
            return probes;
        }
        let to = std::net::SocketAddr::from((VIP, 80));
        let start = Instant::now();
        while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(600) {
            let at = start.elapsed();
            let ok = (|| -> std::io::Result<bool> {
                let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_millis(200))?;
                s.set_read_timeout(Some(Duration::from_millis(500)))?;
                s.write_all(b"GET / HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n")?;
                let mut answer = Vec::new();
                s.read_to_end(&mut answer)?;
                Ok(answer.windows(6).any(|w| w == b"\r\n\r\nbe"))
            })()
            .unwrap_or(false);
            probes.push(Probe { at, ok });
            if let Some(rest) = Duration::from_millis(10).checked_sub(start.elapsed() - at) {
                std::thread::sleep(rest);
            }
        }
        probes
    })
}

/// The daemon's own start-to-forwarding figure: `elapsed_ms` on the last
/// "attached; forwarding" line of its log.
fn logged_elapsed_ms(log: &str) -> Option<f64> {
    log.lines()
        .rfind(|l| l.contains("attached; forwarding"))?
        .split("elapsed_ms=")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Restarts under a probe stream: start to "adopted and serving" (the
/// daemon's `elapsed_ms`, and as the lab sees it: spawn until attached and
/// logged), and the probes lost from each stop to 0.5 s after the next
/// start, for kill -9 and SIGTERM. Forwarding that stops entirely (no
/// probe answered in a restart window) is an error; anything less is a
/// figure.
fn restart(quick: bool) -> Result<String> {
    let (times, without_daemon) = if quick {
        (1, Duration::from_millis(500))
    } else {
        (3, Duration::from_secs(2))
    };
    let mut lab = Lab::start(&LabOptions::default())?;
    let foobar = lab::foobar_bin()?;
    let config = lab.config();
    let fresh = Instant::now();
    lab.start_foobar(&foobar, &config)?;
    let fresh_wall = fresh.elapsed().as_secs_f64() * 1e3;
    let fresh_logged = logged_elapsed_ms(&lab.foobar_log());
    let stop = Arc::new(AtomicBool::new(false));
    let stream = probe_stream(&lab.client.ns, stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    // (kind, stop instant, serving instant, daemon's ms, lab's ms)
    let mut windows: Vec<(&str, Instant, Instant, Option<f64>, f64)> = Vec::new();
    let t0 = Instant::now();
    let mut run = || -> Result<()> {
        for _ in 0..times {
            for kind in ["kill -9", "SIGTERM"] {
                let stopped = Instant::now();
                if kind == "kill -9" {
                    lab.kill_foobar()?;
                } else {
                    lab.stop_foobar()?;
                }
                std::thread::sleep(without_daemon);
                let started = Instant::now();
                lab.start_foobar(&foobar, &config)?;
                let serving = Instant::now();
                let log = lab.foobar_log();
                ensure!(
                    log.lines()
                        .rfind(|l| l.contains("attached; forwarding"))
                        .is_some_and(|l| l.contains("adopted (program replaced in place)")),
                    "the restart did not adopt the pinned link:\n{log}"
                );
                windows.push((
                    kind,
                    stopped,
                    serving,
                    logged_elapsed_ms(&log),
                    (serving - started).as_secs_f64() * 1e3,
                ));
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        Ok(())
    };
    let ran = run();
    stop.store(true, Ordering::Relaxed);
    let probes = stream
        .join()
        .map_err(|_| anyhow::anyhow!("the probe thread panicked"))?;
    let _ = lab.stop_and_detach_foobar();
    ran?;
    ensure!(!probes.is_empty(), "the probe stream sent nothing");

    let mut out = String::new();
    writeln!(out, "\n## Restart (netns lab)\n")?;
    writeln!(
        out,
        "foobar (native XDP, rr, 3 backends) restarted {times} time(s) each way, {} ms without \
         a daemon each time, under a stream of new connections to the VIP (one `GET /` every \
         10 ms from the client; a probe is lost when no backend answers it within 0.7 s). \
         Window: from the stop to 0.5 s after the new daemon logged \"attached; forwarding\". \
         Start to serving: the daemon's own `elapsed_ms`, and the lab's view (spawn until the \
         program is attached and the line logged, polled every 100 ms). A fresh start (nothing \
         pinned) took {} ms (lab: {fresh_wall:.0} ms).\n",
        without_daemon.as_millis(),
        fresh_logged.map_or("?".to_owned(), |v| format!("{v:.0}")),
    )?;
    writeln!(
        out,
        "| restart | start to serving, daemon (ms) | lab (ms) | probes in window | lost | longest gap (ms) |\n\
         |---|---:|---:|---:|---:|---:|"
    )?;
    let mut total_lost = 0;
    for (kind, stopped, serving, logged, wall) in &windows {
        let (from, to) = (
            stopped.duration_since(t0),
            serving.duration_since(t0) + Duration::from_millis(500),
        );
        let window: Vec<&Probe> = probes
            .iter()
            .filter(|p| p.at + Duration::from_millis(700) >= from && p.at <= to)
            .collect();
        let lost = window.iter().filter(|p| !p.ok).count();
        ensure!(
            window.iter().any(|p| p.ok),
            "{kind}: no probe answered from the stop to after the restart: forwarding stopped"
        );
        // The longest run of lost probes, from its first to the next answer.
        let (mut gap, mut first_lost) = (Duration::ZERO, None);
        for p in &window {
            match (p.ok, first_lost) {
                (false, None) => first_lost = Some(p.at),
                (true, Some(f)) => {
                    gap = gap.max(p.at - f);
                    first_lost = None;
                }
                _ => {}
            }
        }
        total_lost += lost;
        writeln!(
            out,
            "| {kind} | {} | {wall:.0} | {} | {lost} | {:.0} |",
            logged.map_or("?".to_owned(), |v| format!("{v:.0}")),
            window.len(),
            gap.as_secs_f64() * 1e3
        )?;
    }
    writeln!(
        out,
        "\n{} probes in all, {} lost ({total_lost} in the restart windows).",
        probes.len(),
        probes.iter().filter(|p| !p.ok).count()
    )?;
    Ok(out)
}

/// Who moves the VIP between the two LB nodes of the failover section.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Vrrpd {
    /// The daemons' own `[[vrrp]]` instances.
    Foobar,
    /// keepalived in both LB namespaces; the daemons only forward.
    Keepalived,
}

impl Vrrpd {
    fn name(self) -> &'static str {
        match self {
            Vrrpd::Foobar => "foobar ↔ foobar",
            Vrrpd::Keepalived => "keepalived ↔ keepalived",
        }
    }
}

/// What takes the master away in a failover round.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Loss {
    /// The master's link goes down (`ip link set eth0 down` in its
    /// namespace): no adverts, no forwarding, as a dead node or cable.
    Node,
    /// SIGTERM to the master's VRRP speaker: priority 0, VIP removed.
    Graceful,
}

const FAILOVER_MASTER: u8 = 200;
const FAILOVER_BACKUP: u8 = 100;

/// Starts the pair with lb master: `[[vrrp]]` in both daemons' configs,
/// or keepalived beside daemons without one.
fn failover_pair_start(lab: &mut Lab, vrrpd: Vrrpd, advert_ms: u64) -> Result<()> {
    use foobar_tests::failover::{self as fo, Vrrp};
    let foobar = lab::foobar_bin()?;
    let vrrp = |priority| {
        (vrrpd == Vrrpd::Foobar).then_some(Vrrp {
            priority,
            advert_ms,
            preempt: true,
        })
    };
    let conf = fo::config(lab, Node::Lb1, "maglev", vrrp(FAILOVER_MASTER));
    lab.start_foobar_on(Node::Lb1, &foobar, &conf)?;
    if vrrpd == Vrrpd::Keepalived {
        fo::start_keepalived(lab, Node::Lb1, FAILOVER_MASTER, advert_ms)?;
    }
    let alone = fo::master_down(FAILOVER_MASTER, advert_ms) * 2 + Duration::from_secs(3);
    fo::time_until(alone, || fo::holds_vip(lab, &lab.lb.ns))
        .context("lb did not become master alone")?;
    let conf = fo::config(lab, Node::Lb2, "maglev", vrrp(FAILOVER_BACKUP));
    lab.start_foobar_on(Node::Lb2, &foobar, &conf)?;
    if vrrpd == Vrrpd::Keepalived {
        fo::start_keepalived(lab, Node::Lb2, FAILOVER_BACKUP, advert_ms)?;
    }
    failover_settle(lab, advert_ms)
}

/// Stops both nodes' VRRP speakers and daemons (detached: the next pair
/// starts clean) and removes the VIP wherever it was left.
fn failover_pair_stop(lab: &mut Lab, vrrpd: Vrrpd) -> Result<()> {
    use foobar_tests::failover as fo;
    for node in [Node::Lb1, Node::Lb2] {
        if vrrpd == Vrrpd::Keepalived {
            fo::stop_keepalived(lab, node)?;
        }
        if lab.foobar_pid_on(node).is_some() {
            lab.stop_and_detach_foobar_on(node)?;
        }
        let ns = lab.node(node)?.ns.clone();
        let _ = lab.exec(
            &ns,
            &["ip", "addr", "del", &format!("{VIP}/32"), "dev", "eth0"],
        );
    }
    Ok(())
}

/// Waits until lb alone holds the VIP for 3 advert intervals, then points
/// the client's neighbour entry at it afresh (after a round the entry may
/// still name lb2, whose XDP program forwards whether or not it holds the
/// VIP) and checks that it does.
fn failover_settle(lab: &mut Lab, advert_ms: u64) -> Result<()> {
    use foobar_tests::failover as fo;
    let limit = Duration::from_secs(15);
    let start = Instant::now();
    let mut since: Option<Instant> = None;
    while since.is_none_or(|s| s.elapsed() < Duration::from_millis(3 * advert_ms)) {
        ensure!(
            start.elapsed() < limit,
            "lb did not settle as the only master: {:?}",
            fo::holders(lab)?
        );
        if fo::holders(lab)? == (true, false) {
            since.get_or_insert_with(Instant::now);
        } else {
            since = None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let vip = VIP.to_string();
    let lb_mac = mac_text(lab.mac(&lab.lb, "eth0")?);
    let mut tries = Vec::new();
    for _ in 0..10 {
        lab.exec(&lab.client.ns, &["ip", "neigh", "flush", "to", &vip])?;
        lab.curl(&format!("http://{VIP}/"))?;
        let neigh = lab.exec(&lab.client.ns, &["ip", "neigh", "show", &vip])?;
        if neigh.contains(&lb_mac) {
            return Ok(());
        }
        tries.push(format!("{} {neigh}", start.elapsed().as_millis()));
        std::thread::sleep(Duration::from_millis(200));
    }
    let lb2 = lab.node(Node::Lb2)?.ns.clone();
    anyhow::bail!(
        "the client's entry for the VIP is not lb's ({lb_mac}): {tries:#?}\nholders {:?}\nlb2: {}",
        fo::holders(lab)?,
        lab.exec(&lb2, &["ip", "-o", "addr"])?
    )
}

/// One failover round under a probe stream: (takeover, client gap, probes
/// lost), in ms; lb is master again afterwards.
fn failover_round(
    lab: &mut Lab,
    vrrpd: Vrrpd,
    loss: Loss,
    advert_ms: u64,
    spurious: &mut usize,
) -> Result<(f64, Option<f64>, usize)> {
    use foobar_tests::failover::{self as fo, ProbeStream};
    let (old, new) = (
        lab.mac(&lab.lb, "eth0")?,
        lab.mac(lab.node(Node::Lb2)?, "eth0")?,
    );
    let lb2 = lab.node(Node::Lb2)?.ns.clone();
    let probes = ProbeStream::start(lab, Duration::from_millis(10), Duration::from_millis(50));
    std::thread::sleep(Duration::from_millis(300));
    // A master stalled for Master_Down_Interval (0.36 s at 100 ms adverts
    // on a loaded machine) loses the VIP for a moment: counted, and the
    // round waits for the pair to settle again.
    if fo::holders(lab)? != (true, false) {
        *spurious += 1;
        failover_settle(lab, advert_ms)?;
    }
    let watch = fo::watch_vip(&lb2, true, Duration::from_secs(10));
    let at = probes.started.elapsed();
    let lost_at = Instant::now();
    match (loss, vrrpd) {
        (Loss::Node, _) => {
            lab.exec(&lab.lb.ns, &["ip", "link", "set", "eth0", "down"])?;
        }
        (Loss::Graceful, Vrrpd::Foobar) => {
            let pid = lab.foobar_pid_on(Node::Lb1).context("foobar runs on lb")?;
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            )?;
        }
        (Loss::Graceful, Vrrpd::Keepalived) => fo::signal_keepalived(lab, Node::Lb1)?,
    }
    let took = fo::watched(watch, lost_at).context("lb2 never took the VIP")?;
    std::thread::sleep(Duration::from_millis(500));
    let probes = probes.stop()?;
    let gap = fo::gap(&probes, at, old, new);
    // lb back as master.
    match (loss, vrrpd) {
        (Loss::Node, _) => {
            lab.exec(&lab.lb.ns, &["ip", "link", "set", "eth0", "up"])?;
        }
        (Loss::Graceful, Vrrpd::Foobar) => {
            lab.stop_foobar_on(Node::Lb1)?;
            let conf = fo::config(
                lab,
                Node::Lb1,
                "maglev",
                Some(fo::Vrrp {
                    priority: FAILOVER_MASTER,
                    advert_ms,
                    preempt: true,
                }),
            );
            lab.start_foobar_on(Node::Lb1, &lab::foobar_bin()?, &conf)?;
        }
        (Loss::Graceful, Vrrpd::Keepalived) => {
            fo::stop_keepalived(lab, Node::Lb1)?;
            fo::start_keepalived(lab, Node::Lb1, FAILOVER_MASTER, advert_ms)?;
        }
    }
    failover_settle(lab, advert_ms)?;
    Ok((
        took.as_secs_f64() * 1e3,
        gap.gap.map(|g| g.as_secs_f64() * 1e3),
        gap.lost,
    ))
}

/// Failover between two LB nodes (native XDP, maglev, DSR, same seed):
/// the takeover (until the new master holds the VIP, watched every 2 ms)
/// and the client's gap (last answer through the old node to the first
/// through the new one) for a node loss and a graceful stop, with foobar's
/// VRRP on both nodes and with keepalived on both, at 1 s and 100 ms
/// adverts, in one run.
fn failover(quick: bool) -> Result<String> {
    use foobar_tests::failover as fo;
    let (rounds, adverts): (usize, &[u64]) = if quick {
        (1, &[100])
    } else {
        (3, &[1000, 100])
    };
    let mut lab = Lab::start(&LabOptions {
        second_lb: true,
        ..LabOptions::default()
    })?;
    let mut rows = Vec::new();
    let mut spurious = 0;
    for &advert_ms in adverts {
        for vrrpd in [Vrrpd::Foobar, Vrrpd::Keepalived] {
            failover_pair_start(&mut lab, vrrpd, advert_ms).with_context(|| {
                format!(
                    "starting {} at {advert_ms} ms\n{}\n{}",
                    vrrpd.name(),
                    fo::keepalived_log(&lab, Node::Lb1),
                    fo::keepalived_log(&lab, Node::Lb2)
                )
            })?;
            for loss in [Loss::Node, Loss::Graceful] {
                let mut samples = Vec::new();
                for _ in 0..rounds {
                    samples.push(
                        failover_round(&mut lab, vrrpd, loss, advert_ms, &mut spurious)
                            .with_context(|| {
                                format!("{} {loss:?} at {advert_ms} ms", vrrpd.name())
                            })?,
                    );
                }
                rows.push((vrrpd, advert_ms, loss, samples));
            }
            failover_pair_stop(&mut lab, vrrpd)?;
        }
    }

    let mut out = String::new();
    writeln!(out, "\n## Failover (netns lab, two LB nodes)\n")?;
    writeln!(
        out,
        "Two LB nodes running foobar (native XDP, maglev, DSR, the same `hash_seed`, 3 nginx \
         backends); lb (priority {FAILOVER_MASTER}) is master, lb2 ({FAILOVER_BACKUP}) backup. \
         The VIP is moved either by foobar's own `[[vrrp]]` on both nodes or by keepalived \
         2.2.7 in both namespaces (`vrrp_version 3`, the daemons then only forward). Node loss: \
         the master's link goes down (no adverts, no forwarding). Graceful: SIGTERM to the \
         master's VRRP speaker (priority 0). Takeover: from the loss until lb2 holds the VIP \
         (watched every 2 ms). Client gap: from the last answer through lb to the first \
         through lb2 in a stream of new connections from the client (one `GET /` every 10 ms, \
         50 ms connect limit). Median of {rounds} round(s); lost: probes unanswered in all \
         rounds. RFC 5798 bounds for the backup: Master_Down_Interval (3 × advert + Skew_Time) \
         after a node loss, Skew_Time after a resignation.\n"
    )?;
    writeln!(
        out,
        "| VRRP | advert | loss | takeover (ms) | client gap (ms) | probes lost | RFC bound (ms) |\n\
         |---|---:|---|---:|---:|---:|---:|"
    )?;
    for (vrrpd, advert_ms, loss, samples) in rows {
        let took = median(samples.iter().map(|s| s.0).collect());
        let gaps: Vec<f64> = samples.iter().filter_map(|s| s.1).collect();
        ensure!(
            !gaps.is_empty(),
            "{} {loss:?} at {advert_ms} ms: the client never got an answer through lb2",
            vrrpd.name()
        );
        let lost: usize = samples.iter().map(|s| s.2).sum();
        let bound = match loss {
            Loss::Node => fo::master_down(FAILOVER_BACKUP, advert_ms),
            Loss::Graceful => fo::skew(FAILOVER_BACKUP, advert_ms),
        };
        writeln!(
            out,
            "| {} | {advert_ms} ms | {} | {took:.0} | {:.0} | {lost} | {:.0} |",
            vrrpd.name(),
            match loss {
                Loss::Node => "node loss",
                Loss::Graceful => "graceful stop",
            },
            median(gaps),
            bound.as_secs_f64() * 1e3
        )?;
    }
    writeln!(
        out,
        "\nRounds that found lb2 holding the VIP at their start (a master stalled past \
         Master_Down_Interval while the pair settled; the round waited for it to settle \
         again): {spurious}."
    )?;
    Ok(out)
}
