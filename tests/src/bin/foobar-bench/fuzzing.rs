//! The `fuzz` section: the XDP program against its reference model, and
//! the fuzzer's rate.
use std::fmt::Write as _;

use anyhow::{ensure, Context as _, Result};
use foobar::datapath::FlowTableMode;
use foobar_tests::fuzz::{self, FuzzOptions};

/// The XDP program against its reference model (`foobar_tests::fuzz`):
/// frames, differences (any fails the run) and the rate.
pub fn fuzz_run(quick: bool, seed: Option<u64>) -> Result<String> {
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
