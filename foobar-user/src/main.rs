use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
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
