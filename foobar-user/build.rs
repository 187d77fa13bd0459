//! Builds the XDP programs (foobar-ebpf, bpfel-unknown-none, nightly +
//! rust-src, bpf-linker) into OUT_DIR, where `datapath.rs` embeds them.
//! `cargo xtask setup` installs what this needs.
use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
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
