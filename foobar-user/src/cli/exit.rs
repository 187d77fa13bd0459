//! Exit codes and how errors are printed (docs/CLI.md is the reference):
//! each kind of failure has its own code, so scripts can tell "the daemon
//! said no" from "there is no daemon"; with `--json` the error is a JSON
//! document on stdout too.
use std::process::ExitCode;

use crate::{api::ClientError, config::ConfigError};

/// Success.
pub const OK: u8 = 0;
/// Any other failure (I/O, an answer not understood, another protocol
/// version, an internal error).
pub const FAILURE: u8 = 1;
/// Bad command line: unknown command or option, a value out of range.
pub const USAGE: u8 = 2;
/// The daemon cannot be reached or used: not running, wrong socket,
/// permission denied, not root.
pub const UNREACHABLE: u8 = 3;
/// The daemon refused the request (no such VIP, duplicate, last backend,
/// ...); nothing changed.
pub const REFUSED: u8 = 4;
/// A config file has problems (`check`, `run`, `reload`).
pub const CONFIG_INVALID: u8 = 5;

/// A bad command line found after clap's parse (options that need each
/// other): exit code 2, as clap's own errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The error's kind and exit code.
pub fn classify(err: &anyhow::Error) -> (&'static str, u8) {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<ClientError>() {
            let kind = e.kind();
            let code = match kind {
                "unreachable" | "denied" => UNREACHABLE,
                "refused" => REFUSED,
                "config_invalid" => CONFIG_INVALID,
                _ => FAILURE,
            };
            return (kind, code);
        }
        if cause.downcast_ref::<ConfigError>().is_some() {
            return ("config_invalid", CONFIG_INVALID);
        }
        if cause.downcast_ref::<UsageError>().is_some() {
            return ("usage", USAGE);
        }
    }
    ("failure", FAILURE)
}

/// Prints `err` (one line on stderr; with `json`, a document on stdout)
/// and returns the exit code.
pub fn report(err: &anyhow::Error, json: bool) -> ExitCode {
    let (kind, code) = classify(err);
    let message = format!("{err:#}");
    if json {
        println!("{}", error_document(kind, code, &message));
    }
    // `{:#}` prints the whole context chain on one line.
    eprintln!("foobar: error: {}", message.replace('\n', " "));
    ExitCode::from(code)
}

/// The error document of `--json` (docs/JSON.md).
pub fn error_document(kind: &str, code: u8, message: &str) -> serde_json::Value {
    serde_json::json!({
        "schema_version": super::output::SCHEMA_VERSION,
        "ok": false,
        "error": { "kind": kind, "exit_code": code, "message": message },
    })
}

/// A command line clap refused: help and version print as usual (exit 0);
/// an error exits 2, as a JSON document too if `--json` is among the
/// arguments.
pub fn usage(err: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        err.exit();
    }
    if std::env::args().any(|a| a == "--json") {
        let text = err.to_string();
        let first = text.lines().next().unwrap_or("usage error");
        let message = first.strip_prefix("error: ").unwrap_or(first);
        println!("{}", error_document("usage", USAGE, message));
    }
    let _ = err.print();
    ExitCode::from(USAGE)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::api::ErrorKind;

    #[test]
    fn each_kind_of_failure_has_its_own_exit_code() {
        let e = |c: ClientError| classify(&anyhow::Error::new(c).context("foobar status"));
        assert_eq!(
            e(ClientError::NotRunning(PathBuf::from("/x"))),
            ("unreachable", 3)
        );
        assert_eq!(e(ClientError::Denied(PathBuf::from("/x"))), ("denied", 3));
        let refused = |kind| ClientError::Refused {
            kind,
            message: "no".into(),
        };
        assert_eq!(e(refused(ErrorKind::Refused)), ("refused", 4));
        assert_eq!(e(refused(ErrorKind::ConfigInvalid)), ("config_invalid", 5));
        assert_eq!(e(ClientError::Protocol("?".into())), ("protocol", 1));
        let usage = anyhow::Error::new(UsageError("--http-path needs --check http".into()));
        assert_eq!(classify(&usage), ("usage", 2));
        assert_eq!(classify(&anyhow::anyhow!("disk on fire")), ("failure", 1));
        let codes = [OK, FAILURE, USAGE, UNREACHABLE, REFUSED, CONFIG_INVALID];
        let distinct: std::collections::HashSet<_> = codes.iter().collect();
        assert_eq!(distinct.len(), codes.len());
    }

    #[test]
    fn the_json_error_document_names_kind_code_and_message() {
        let d = error_document("refused", REFUSED, "no VIP named \"x\"");
        assert_eq!(d["ok"], false);
        assert_eq!(d["schema_version"], super::super::output::SCHEMA_VERSION);
        assert_eq!(d["error"]["kind"], "refused");
        assert_eq!(d["error"]["exit_code"], 4);
        assert_eq!(d["error"]["message"], "no VIP named \"x\"");
    }
}
