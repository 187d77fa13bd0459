use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    // Like other Unix tools, end quietly when the reader of our output goes
    // away (`foobar stats | head`), instead of panicking on EPIPE.
    // SAFETY: setting a signal's disposition to the default has no
    // preconditions; no other thread exists yet.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = foobar::cli::Cli::parse();
    match foobar::cli::main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` prints the whole context chain on one line.
            eprintln!("foobar: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
