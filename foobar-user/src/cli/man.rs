//! `foobar man --out-dir DIR`: the manual pages, generated from the CLI's
//! own definition (clap_mangen) so they never drift from `--help`:
//! foobar.1 and one foobar-SUBCOMMAND.1 page per subcommand (the Debian
//! package ships them; `cargo xtask package` runs this).
use std::path::PathBuf;

use anyhow::Context as _;
use clap::CommandFactory as _;

#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Directory to write the pages into (created if missing).
    /// Example: --out-dir target/man
    #[arg(long, value_name = "DIR")]
    pub out_dir: PathBuf,
}

pub fn man(args: ManArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("creating {}", args.out_dir.display()))?;
    let cmd = super::Cli::command();
    clap_mangen::generate_to(cmd, &args.out_dir)
        .with_context(|| format!("writing man pages into {}", args.out_dir.display()))?;
    let mut pages: Vec<String> = std::fs::read_dir(&args.out_dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".1"))
        .collect();
    pages.sort();
    for page in pages {
        println!("{}", args.out_dir.join(page).display());
    }
    Ok(())
}
