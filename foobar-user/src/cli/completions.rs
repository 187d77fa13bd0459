//! `foobar completions SHELL`: a completion script on stdout, e.g.
//! `foobar completions bash > /etc/bash_completion.d/foobar`.
use clap::CommandFactory as _;

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    pub shell: clap_complete::Shell,
}

pub fn completions(args: CompletionsArgs) -> anyhow::Result<()> {
    let mut cmd = super::Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "foobar", &mut std::io::stdout());
    Ok(())
}
