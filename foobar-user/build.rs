//! Builds the XDP programs (foobar-ebpf, bpfel-unknown-none, nightly +
//! rust-src, bpf-linker) into OUT_DIR, where `datapath.rs` embeds them.
//! `cargo xtask setup` installs what this needs. Also records the git
//! revision the binary is built from (FOOBAR_GIT_REVISION) for `--version`,
//! the start log line and the `foobar_build_info` metric.
use std::{path::Path, process::Command};

use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    git_revision();
    let meta = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = meta
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "foobar-ebpf")
        .ok_or_else(|| anyhow!("foobar-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("foobar-ebpf manifest has no parent directory"))?
        .as_str()
        .to_owned();
    aya_build::build_ebpf(
        [Package {
            name: "foobar-ebpf",
            root_dir: &root_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
    .context(
        "building the XDP programs failed; `cargo xtask setup` installs what they need \
         (nightly rust-src, bpf-linker)",
    )
}

/// Sets FOOBAR_GIT_REVISION: `$FOOBAR_GIT_REVISION` if the builder gives it
/// (a packager building from a tarball), else the short commit of the
/// checkout with `-dirty` when tracked files changed, else "unknown" (no
/// git, or not a checkout). Reruns when HEAD moves.
fn git_revision() {
    println!("cargo:rerun-if-env-changed=FOOBAR_GIT_REVISION");
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let dir = Path::new(&manifest_dir);
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .args(args)
            .current_dir(dir)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let revision = match std::env::var("FOOBAR_GIT_REVISION") {
        Ok(r) if !r.is_empty() => r,
        _ => match git(&["rev-parse", "--short=12", "HEAD"]) {
            Some(rev) if !rev.is_empty() => {
                // HEAD, the branch it points at and the packed refs decide
                // the commit; the index changes with every commit and add.
                for path in ["HEAD", "index", "packed-refs"] {
                    if let Some(p) = git(&["rev-parse", "--git-path", path]) {
                        println!("cargo:rerun-if-changed={}", dir.join(p).display());
                    }
                }
                if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
                    if let Some(p) = git(&["rev-parse", "--git-path", &branch]) {
                        println!("cargo:rerun-if-changed={}", dir.join(p).display());
                    }
                }
                let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                    .is_some_and(|s| !s.is_empty());
                if dirty {
                    format!("{rev}-dirty")
                } else {
                    rev
                }
            }
            _ => "unknown".to_owned(),
        },
    };
    println!("cargo:rustc-env=FOOBAR_GIT_REVISION={revision}");
}
