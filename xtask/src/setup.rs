//! `cargo xtask setup`: brings a machine to what foobar needs, checking
//! each piece first so a second run is quick and changes nothing:
//! the nightly toolchain's rust-src, a bpf-linker that really links a BPF
//! object, cargo-deb (`cargo xtask package`), and the Debian packages the
//! lab and tests use.
use std::{
    ffi::OsString,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

/// Debian packages and the command each must provide ("" for a library).
const PACKAGES: &[(&str, &str)] = &[
    ("nginx", "nginx"),
    ("curl", "curl"),
    ("wrk", "wrk"),
    ("iperf3", "iperf3"),
    ("bpftool", "bpftool"),
    ("ethtool", "ethtool"),
    ("iproute2", "ip"),
    ("iputils-ping", "ping"),
    ("procps", "sysctl"),
    ("util-linux", "setpriv"),
    // The VRRP peer of the interoperability tests.
    ("keepalived", "keepalived"),
    // Crafted frames sent from a lab namespace (tests/src/lab.rs send_frame).
    ("python3", "python3"),
    // The benchmark's peers: an HAProxy and an nftables load balancer.
    ("haproxy", "haproxy"),
    ("nftables", "nft"),
    // The strict OpenMetrics parser the metrics tests feed the exposition to.
    ("python3-prometheus-client", ""),
];

const BPF_LINKER_VERSION: &str = "0.13.0";

/// cargo-deb for `cargo xtask package`: 3.8 needs rustc 1.85.
const CARGO_DEB_VERSION: &str = "3.8.0";

pub fn run() -> Result<()> {
    rust_src()?;
    bpf_linker()?;
    cargo_deb()?;
    debian_packages()?;
    println!("xtask setup: everything is in place");
    Ok(())
}

fn rust_src() -> Result<()> {
    let toolchains = output("rustup", &["toolchain", "list"])
        .context("rustup is needed to find the nightly toolchain")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        bail!(
            "no nightly Rust toolchain: the XDP programs build with nightly.\n\
             Install it: rustup toolchain install nightly --component rust-src"
        );
    }
    let installed = output(
        "rustup",
        &["component", "list", "--installed", "--toolchain", "nightly"],
    )?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    println!("xtask setup: adding rust-src to the nightly toolchain");
    status(
        "rustup",
        &["component", "add", "rust-src", "--toolchain", "nightly"],
    )
}

/// The LLVM major version inside the nightly toolchain (bpf-linker must be
/// built against the same one).
fn nightly_llvm_major() -> Result<String> {
    let vv = output("rustc", &["+nightly", "-vV"])?;
    let version = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("`rustc +nightly -vV` names no LLVM version")?;
    Ok(version.split('.').next().unwrap_or(version).to_owned())
}

fn bpf_linker() -> Result<()> {
    match probe_bpf_linker() {
        Ok(()) => return Ok(()),
        Err(why) => println!("xtask setup: bpf-linker: {why:#}; building it (takes a few minutes)"),
    }
    let sysroot = output("rustc", &["+nightly", "--print", "sysroot"])?;
    let libdir = PathBuf::from(sysroot.trim()).join("lib");
    let libllvm = std::fs::read_dir(&libdir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM-") && n.contains("-rust-") && n.ends_with(".so"))
        .with_context(|| format!("no libLLVM-*-rust-*.so in {}", libdir.display()))?;
    let lib = libllvm.trim_start_matches("lib").trim_end_matches(".so");
    let llvm = nightly_llvm_major()?;
    let dir = libdir.display();
    let rustflags = format!("-L {dir} -l dylib={lib} -C link-arg=-Wl,-rpath,{dir}");
    let features = format!("llvm-{llvm},no-llvm-linking");
    let ok = Command::new("cargo")
        .args([
            "+nightly",
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args([
            "--locked",
            "--force",
            "-j2",
            "--no-default-features",
            "--features",
            &features,
        ])
        .env("RUSTFLAGS", rustflags)
        .env("PATH", path_with_cargo_bin())
        .status()
        .context("running cargo install bpf-linker")?
        .success();
    if !ok {
        bail!(
            "building bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM {llvm} failed \
             (see above); `bpf_linker()` in xtask/src/setup.rs has the recipe"
        );
    }
    probe_bpf_linker().context("bpf-linker was built but still does not link a BPF object")
}

/// Links a tiny `no_core` XDP function for bpfel-unknown-none with
/// bpf-linker and checks the result is a BPF ELF object.
fn probe_bpf_linker() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("foobar-xtask-probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let src = dir.join("probe.rs");
    let obj = dir.join("probe.o");
    std::fs::write(
        &src,
        "#![feature(no_core, lang_items)]\n#![allow(internal_features)]\n#![no_core]\n#![no_main]\n\
         #[lang = \"pointee_sized\"] pub trait PointeeSized {}\n\
         #[lang = \"meta_sized\"] pub trait MetaSized: PointeeSized {}\n\
         #[lang = \"sized\"] pub trait Sized: MetaSized {}\n\
         #[unsafe(no_mangle)] #[unsafe(link_section = \"xdp\")]\n\
         pub extern \"C\" fn probe() -> u32 { 2 }\n",
    )?;
    let out = Command::new("rustc")
        .args([
            "+nightly",
            "--edition",
            "2024",
            "--target",
            "bpfel-unknown-none",
        ])
        .args([
            "-C",
            "panic=abort",
            "-C",
            "opt-level=2",
            "--crate-type",
            "cdylib",
        ])
        .args(["-C", "linker=bpf-linker", "-o"])
        .arg(&obj)
        .arg(&src)
        .env("PATH", path_with_cargo_bin())
        .output()
        .context("running rustc +nightly")?;
    let elf = std::fs::read(&obj).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        if stderr.contains("linker `bpf-linker` not found")
            || stderr.contains("linking with `bpf-linker`")
        {
            bail!("does not link: {}", stderr.lines().next().unwrap_or(""));
        }
        // The probe itself did not compile (a nightly that wants other lang
        // items): fall back to asking bpf-linker for its version.
        output("bpf-linker", &["--version"]).context("not found on PATH")?;
        return Ok(());
    }
    // ELF magic, and e_machine 247 (EM_BPF) at offset 18.
    if elf.len() < 20 || &elf[..4] != b"\x7fELF" || u16::from_le_bytes([elf[18], elf[19]]) != 247 {
        bail!("linked something that is not a BPF ELF object");
    }
    Ok(())
}

/// Installs cargo-deb CARGO_DEB_VERSION unless `cargo deb --version`
/// already reports it.
pub fn cargo_deb() -> Result<()> {
    let have = Command::new("cargo")
        .args(["deb", "--version"])
        .env("PATH", path_with_cargo_bin())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if have.split_whitespace().any(|w| w == CARGO_DEB_VERSION) {
        return Ok(());
    }
    println!("xtask setup: installing cargo-deb {CARGO_DEB_VERSION}");
    let ok = Command::new("cargo")
        .args([
            "install",
            "cargo-deb",
            "--locked",
            "--version",
            CARGO_DEB_VERSION,
        ])
        .env("PATH", path_with_cargo_bin())
        .status()
        .context("running cargo install cargo-deb")?
        .success();
    if !ok {
        bail!("cargo install cargo-deb --version {CARGO_DEB_VERSION} failed (see above)");
    }
    Ok(())
}

fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(pkg, cmd)| !installed(pkg) || (!cmd.is_empty() && !on_path(cmd)))
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "missing Debian packages: {}. Install them as root: \
             sudo apt-get install {0}, or run `sudo -E cargo xtask setup`",
            missing.join(" ")
        );
    }
    println!("xtask setup: installing {}", missing.join(" "));
    status("apt-get", &["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(&missing);
    let ok = Command::new("apt-get")
        .args(&args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?
        .success();
    if !ok {
        bail!("apt-get install {} failed (see above)", missing.join(" "));
    }
    Ok(())
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn on_path(cmd: &str) -> bool {
    std::env::split_paths(&path_with_cargo_bin())
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .any(|d| d.join(cmd).is_file())
}

/// PATH with cargo's bin directory (where bpf-linker is installed) in it.
pub fn path_with_cargo_bin() -> OsString {
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|p| p.join("bin"));
    let mut paths: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(bin) = cargo_bin {
        if !paths.contains(&bin) {
            paths.push(bin);
        }
    }
    std::env::join_paths(paths).unwrap_or_default()
}

fn output(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .env("PATH", path_with_cargo_bin())
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn status(program: &str, args: &[&str]) -> Result<()> {
    let ok = Command::new(program)
        .args(args)
        .status()
        .with_context(|| format!("running {program}"))?
        .success();
    if !ok {
        bail!("`{program} {}` failed (see above)", args.join(" "));
    }
    Ok(())
}
