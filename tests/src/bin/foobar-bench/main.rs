//! `cargo xtask bench`: what foobar costs, measured side by side in one run
//! and reported as ratios (these machines are shared and noisy: absolute
//! figures drift, ratios of interleaved runs much less). Prints a report and
//! writes it to docs/BENCHMARKS.md. `--quick` runs every measurement once,
//! briefly, and checks that each produced numbers — the CI smoke test.
//! Timings are reported, never asserted; what is asserted is correctness
//! (each path's counters, the flow gauge within capacity, no fuzzer
//! difference).
mod common;
mod control;
mod decap;
mod e2e;
mod failover;
mod fixture;
mod fuzzing;
mod per_packet;
mod restart;
mod two_cpus;
mod walk;

use std::{fmt::Write as _, path::PathBuf};

use anyhow::{ensure, Context as _, Result};
use clap::Parser;

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
    writeln!(report, "{}", common::machine())?;
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
        report.push_str(&per_packet::per_packet(args.quick)?);
    }
    if wants("decap") {
        report.push_str(&decap::decap_cost(args.quick)?);
    }
    if wants("control") {
        report.push_str(&control::control_plane(args.quick)?);
    }
    if wants("flow-walk") {
        report.push_str(&walk::flow_walk(args.quick)?);
    }
    if wants("fuzz") {
        report.push_str(&fuzzing::fuzz_run(args.quick, args.fuzz_seed)?);
    }
    if wants("e2e") {
        report.push_str(&e2e::end_to_end(args.quick)?);
    }
    if wants("restart") {
        report.push_str(&restart::restart(args.quick)?);
    }
    if wants("failover") {
        report.push_str(&failover::failover(args.quick)?);
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
