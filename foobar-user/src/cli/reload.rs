//! `foobar reload`: the daemon re-reads its config file and applies what
//! changed (as SIGHUP does; the systemd unit's ExecReload). A config with
//! any problem is refused whole and nothing changes.
use std::path::Path;

use crate::api::{self, Request};

#[derive(Debug, clap::Args)]
pub struct ReloadArgs {
    /// Print the daemon's answer as JSON (docs/JSON.md).
    #[arg(long)]
    pub json: bool,
}

pub fn reload(socket: &Path, args: ReloadArgs) -> anyhow::Result<()> {
    let result = api::call(socket, &Request::Reload)?;
    if args.json {
        super::output::print_json(result);
        return Ok(());
    }
    let list = |key: &str| -> Vec<String> {
        result[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let applied = list("applied");
    println!(
        "reloaded {}: {} change{}",
        result["config"].as_str().unwrap_or("the config"),
        applied.len(),
        if applied.len() == 1 { "" } else { "s" }
    );
    for op in applied {
        println!("  applied: {op}");
    }
    for k in list("kept_runtime_changes") {
        println!("  kept: {k}");
    }
    for r in list("at_next_restart") {
        println!("  at the next restart: {r}");
    }
    super::print_warning(&result);
    Ok(())
}
