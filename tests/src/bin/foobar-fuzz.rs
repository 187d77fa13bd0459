//! `cargo xtask fuzz`: the datapath against its reference model on seeded
//! random and mutated frames (see `foobar_tests::fuzz`). Needs root.
use anyhow::{bail, ensure, Result};
use clap::Parser;
use foobar_tests::fuzz::{self, FuzzOptions};

#[derive(Parser)]
#[command(
    name = "foobar-fuzz",
    about = "differential fuzzing of the XDP datapath"
)]
struct Args {
    /// Fuzzed frames to run (after the pre-fill).
    #[arg(long, default_value_t = 100_000)]
    frames: u64,
    /// PRNG seed; a failing run prints the seed that replays it.
    #[arg(long)]
    seed: Option<u64>,
    /// Keep going after a difference and report up to this many (later
    /// differences may follow from the first).
    #[arg(long, default_value_t = 1)]
    max_differences: usize,
    /// How many of the differences to print in full.
    #[arg(long, default_value_t = 20)]
    show: usize,
    /// The flow table: "shared" or "per-cpu" (datapath.flow_table).
    #[arg(long, default_value = "shared", value_parser = ["shared", "per-cpu"])]
    flow_table: String,
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        nix::unistd::geteuid().is_root(),
        "the fuzzer loads the XDP program: run as root (cargo xtask fuzz)"
    );
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    println!("foobar-fuzz: seed {seed}, {} frames", args.frames);
    let report = fuzz::run(&FuzzOptions {
        frames: args.frames,
        seed,
        max_differences: args.max_differences,
        flow_table: if args.flow_table == "per-cpu" {
            foobar::datapath::FlowTableMode::PerCpu
        } else {
            foobar::datapath::FlowTableMode::Shared
        },
    })?;
    print!("{}", report.summary());
    if !report.differences.is_empty() {
        for d in report.differences.iter().take(args.show) {
            eprintln!("DIFFERENCE {d}");
        }
        bail!(
            "{} difference(s) between the datapath and the model (seed {seed})",
            report.differences.len()
        );
    }
    println!("no difference (seed {seed})");
    Ok(())
}
