use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    // Like other Unix tools, end quietly when the reader of our output goes
    // away (`foobar stats | head`), instead of panicking on EPIPE.
    // SAFETY: setting a signal's disposition to the default has no
    // preconditions; no other thread exists yet.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    // Exit codes and JSON errors: cli/exit.rs, docs/CLI.md.
    let cli = match foobar::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return foobar::cli::exit::usage(err),
    };
    let json = cli.wants_json();
    match foobar::cli::main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => foobar::cli::exit::report(&err, json),
    }
}
