//! `cargo xtask`: the project's own commands. `setup` installs what the
//! build, the demo and the tests need, idempotently; the others run it first.
mod package;
mod setup;

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "foobar's development commands")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need (nightly rust-src, bpf-linker,
    /// Debian packages); a second run changes nothing.
    Setup,
    /// Setup, then build everything.
    Build,
    /// Setup, then run every test: unit, datapath (BPF_PROG_TEST_RUN) and
    /// netns integration tests, then `bench --quick` as a smoke test (with
    /// no test-name filter given). Needs root.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Setup, build, and fuzz the XDP program against its reference model
    /// (tests/src/model.rs): seeded random and mutated frames through
    /// BPF_PROG_TEST_RUN and the model must agree. Needs root.
    Fuzz {
        /// Fuzzed frames to run.
        #[arg(long, default_value_t = 100_000)]
        frames: u64,
        /// PRNG seed (default: from the clock, printed); a failing run
        /// prints the seed that replays it.
        #[arg(long)]
        seed: Option<u64>,
        /// Report up to this many differences instead of stopping at the
        /// first.
        #[arg(long, default_value_t = 1)]
        max_differences: usize,
        /// Use the release build (faster frames, slower first build).
        #[arg(long)]
        release: bool,
        /// The datapath's flow table: "shared" or "per-cpu"
        /// (datapath.flow_table).
        #[arg(long, default_value = "shared", value_parser = ["shared", "per-cpu"])]
        flow_table: String,
    },
    /// Setup, build, and run foobar in the netns lab: HTTP requests through
    /// the VIP, who served them, foobar's counters. Needs root.
    Demo {
        #[arg(long, default_value_t = 300)]
        requests: usize,
    },
    /// Setup, build, and keep a lab with foobar running until Ctrl-C.
    Lab,
    /// Build the Debian package (cargo-deb, installed if missing): binary,
    /// systemd unit, /etc/foobar/foobar.toml, completions, man pages,
    /// /var/lib/foobar. Prints the .deb's path.
    Package {
        /// Cargo profile of the binary ("dev" makes a quick test package).
        #[arg(long, default_value = "release")]
        profile: String,
        /// Directory (or file name) for the .deb; default target/debian.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Package the binary already built for the profile.
        #[arg(long)]
        no_build: bool,
    },
    /// Setup, build (release), and measure: per-packet cost next to a
    /// trivial XDP program, control-plane costs, the flow-table walk over
    /// 4 M entries (quiet and under churn), 1 000 000 fuzzed frames against
    /// the reference model (a difference fails the run), and the paths end
    /// to end in the netns lab. Writes docs/BENCHMARKS.md. Needs root.
    Bench {
        /// One short run of everything (100 000 flows, 20 000 fuzzed
        /// frames, debug build), checking only that each produced numbers
        /// and that the fuzzer found no difference (CI).
        #[arg(long)]
        quick: bool,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Setup => setup::run(),
        Cmd::Build => {
            setup::run()?;
            cargo(&[
                "build",
                "--workspace",
                "--exclude",
                "foobar-ebpf",
                "--bins",
                "--tests",
            ])
        }
        Cmd::Test { args } => test(&args),
        Cmd::Demo { requests } => lab(&["demo", "--requests", &requests.to_string()]),
        Cmd::Lab => lab(&["up"]),
        Cmd::Package {
            profile,
            out,
            no_build,
        } => package::run(&package::Options {
            profile,
            out,
            no_build,
        })
        .map(|_| ()),
        Cmd::Bench { quick } => bench(quick),
        Cmd::Fuzz {
            frames,
            seed,
            max_differences,
            release,
            flow_table,
        } => fuzz(&FuzzRun {
            frames,
            seed,
            max_differences,
            release,
            flow_table,
        }),
    }
}

/// What `cargo xtask fuzz` passes on to foobar-fuzz.
struct FuzzRun {
    frames: u64,
    seed: Option<u64>,
    max_differences: usize,
    release: bool,
    flow_table: String,
}

fn fuzz(run: &FuzzRun) -> Result<()> {
    let FuzzRun {
        frames,
        seed,
        max_differences,
        release,
        ref flow_table,
    } = *run;
    setup::run()?;
    require_root("cargo xtask fuzz")?;
    let mut args = vec!["build", "-p", "foobar-tests", "--bin", "foobar-fuzz"];
    if release {
        args.push("--release");
    }
    cargo(&args)?;
    let bin = target_dir()
        .join(if release { "release" } else { "debug" })
        .join("foobar-fuzz");
    let mut cmd = Command::new(bin);
    cmd.args(["--frames", &frames.to_string()])
        .args(["--max-differences", &max_differences.to_string()])
        .args(["--flow-table", flow_table]);
    if let Some(seed) = seed {
        cmd.args(["--seed", &seed.to_string()]);
    }
    let status = cmd.status().context("running foobar-fuzz")?;
    if !status.success() {
        bail!("foobar-fuzz found differences or failed ({status})");
    }
    Ok(())
}

fn bench(quick: bool) -> Result<()> {
    setup::run()?;
    require_root("cargo xtask bench")?;
    // The figures need a release build; the smoke run only checks that
    // every measurement runs, and shares the tests' debug build.
    let profile = if quick { "debug" } else { "release" };
    build_with_foobar("foobar-bench", !quick)?;
    let bin = target_dir().join(profile);
    let mut cmd = Command::new(bin.join("foobar-bench"));
    if quick {
        // The smoke run leaves the published figures alone.
        cmd.args(["--quick", "--command", "cargo xtask bench --quick"]);
    } else {
        cmd.arg("--out")
            .arg(workspace_root().join("docs").join("BENCHMARKS.md"));
    }
    let status = cmd
        .env("FOOBAR_BIN", bin.join("foobar"))
        .status()
        .context("running foobar-bench")?;
    if !status.success() {
        bail!("foobar-bench failed ({status})");
    }
    Ok(())
}

fn test(extra: &[String]) -> Result<()> {
    setup::run()?;
    require_root("cargo xtask test")?;
    cargo(&["build", "-p", "foobar-user", "--bin", "foobar"])?;
    // No doc tests: the crates have none, and their empty result blocks
    // would be the last lines a reader sees.
    let mut args = vec![
        "test",
        "--workspace",
        "--exclude",
        "foobar-ebpf",
        "--lib",
        "--bins",
        "--tests",
    ];
    args.extend(extra.iter().map(String::as_str));
    // Each lab test runs its own namespaces and nginx; two at a time suits
    // these 2-core machines.
    args.extend(["--", "--test-threads=2"]);
    let (mut passed, mut failed, ok) = cargo_test(&args)?;
    // The benchmark harness's smoke run: every measurement must produce
    // numbers (not any particular ones), so the bench cannot rot.
    if extra.is_empty() {
        match bench(true) {
            Ok(()) => passed += 1,
            Err(e) => {
                eprintln!("cargo xtask bench --quick failed: {e:#}");
                failed += 1;
            }
        }
    }
    // One closing line for the whole run, whatever order cargo ran in.
    println!("\nall tests: {passed} passed, {failed} failed");
    if !ok || failed > 0 {
        bail!("tests failed");
    }
    if passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

/// Runs `cargo test`, echoing its output, and adds up its
/// `test result: ... N passed; M failed` lines.
fn cargo_test(args: &[&str]) -> Result<(u64, u64, bool)> {
    use std::io::BufRead as _;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut child = Command::new(cargo)
        .args(args)
        .current_dir(workspace_root())
        .env("PATH", setup::path_with_cargo_bin())
        .env("FOOBAR_BIN", target_dir().join("debug").join("foobar"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let (mut passed, mut failed) = (0, 0);
    let stdout = child.stdout.take().context("cargo test's stdout")?;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            passed += count_before(rest, " passed");
            failed += count_before(rest, " failed");
        }
    }
    Ok((passed, failed, child.wait()?.success()))
}

/// In "ok. 5 passed; 0 failed; ...", the number before `word`.
fn count_before(text: &str, word: &str) -> u64 {
    text.find(word)
        .and_then(|end| text[..end].rsplit([' ', '.']).next()?.parse().ok())
        .unwrap_or(0)
}

fn lab(args: &[&str]) -> Result<()> {
    setup::run()?;
    require_root("the lab")?;
    build_with_foobar("foobar-lab", false)?;
    let bin = target_dir().join("debug");
    // exec: the lab program owns Ctrl-C (it removes the lab on the way out).
    let err = Command::new(bin.join("foobar-lab"))
        .arg("--foobar")
        .arg(bin.join("foobar"))
        .args(args)
        .exec();
    Err(err).context("starting foobar-lab")
}

/// Builds the `foobar` binary and foobar-tests' binary `tool` together.
fn build_with_foobar(tool: &str, release: bool) -> Result<()> {
    let mut args = vec![
        "build",
        "-p",
        "foobar-user",
        "--bin",
        "foobar",
        "-p",
        "foobar-tests",
        "--bin",
        tool,
    ];
    if release {
        args.push("--release");
    }
    cargo(&args)
}

fn require_root(what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "{what} needs root: it loads XDP programs and creates network namespaces.\n\
             Run: sudo -E env \"PATH=$PATH\" cargo xtask ..."
        );
    }
    Ok(())
}

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Runs cargo in the workspace root with cargo's bin directory on PATH (so
/// the eBPF build finds bpf-linker), failing if it fails.
fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(args)
        .current_dir(workspace_root())
        .env("PATH", setup::path_with_cargo_bin())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::count_before;

    #[test]
    fn test_result_lines_are_added_up() {
        let line =
            "ok. 16 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s";
        assert_eq!(count_before(line, " passed"), 16);
        assert_eq!(count_before(line, " failed"), 2);
        assert_eq!(count_before("FAILED. 0 passed; 1 failed;", " failed"), 1);
        assert_eq!(count_before("no numbers", " passed"), 0);
    }
}
