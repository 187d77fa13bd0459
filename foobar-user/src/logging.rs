//! The daemon's log: tracing to stderr, as text or JSON lines, at the level
//! `FOOBAR_LOG` or the config's `[log] level` sets. Under systemd (stderr
//! is the journal's stream, `JOURNAL_STREAM`) each text line starts with
//! its syslog priority (`<4>` for WARN...), so `journalctl -p warning`
//! finds backend-down lines, and without a timestamp (the journal adds
//! one). It never decides what is logged, only how.
use std::{fmt, os::unix::fs::MetadataExt as _};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::{
    fmt::{format::Writer, FmtContext, FormatEvent, FormatFields},
    registry::LookupSpan,
    EnvFilter,
};

/// How log lines are written (`--log-format`, `[log] format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event, fields as key=value.
    #[default]
    Text,
    /// One JSON object per event (timestamp, level, fields, target).
    Json,
}

/// The syslog priority of a level (sd-daemon(3) prefixes).
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// Whether stderr is the journal's stream: `JOURNAL_STREAM` is
/// "DEVICE:INODE" of the stream systemd connected, and it must be ours
/// (not inherited by a child whose stderr was redirected).
pub fn stderr_is_journal() -> bool {
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.split_once(':') else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// Prefixes each line of the wrapped format with its syslog priority.
struct JournalPriority<F>(F);

impl<S, N, F> FormatEvent<S, N> for JournalPriority<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// The filter: `FOOBAR_LOG` if set, else `level` (the config's), else
/// "info". A bad `FOOBAR_LOG` falls back to the config's with a warning.
pub fn filter(level: Option<&str>) -> (EnvFilter, Option<String>) {
    let configured =
        || EnvFilter::try_new(level.unwrap_or("info")).unwrap_or_else(|_| EnvFilter::new("info"));
    match std::env::var("FOOBAR_LOG") {
        Ok(text) => match EnvFilter::try_new(&text) {
            Ok(f) => (f, None),
            Err(e) => (
                configured(),
                Some(format!(
                    "FOOBAR_LOG={text:?} is not a log filter ({e}); using the config's level"
                )),
            ),
        },
        Err(_) => (configured(), None),
    }
}

/// Installs the daemon's subscriber (once; later calls do nothing).
pub fn init(format: LogFormat, level: Option<&str>) {
    let (filter, problem) = filter(level);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match (format, stderr_is_journal()) {
        (LogFormat::Json, _) => builder.json().flatten_event(true).try_init(),
        (LogFormat::Text, true) => builder
            .with_ansi(false)
            .event_format(JournalPriority(
                tracing_subscriber::fmt::format()
                    .without_time()
                    .with_ansi(false),
            ))
            .try_init(),
        (LogFormat::Text, false) => builder.with_ansi(ansi).try_init(),
    };
    if installed.is_ok() {
        if let Some(problem) = problem {
            tracing::warn!("{problem}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(priority(&Level::ERROR), 3);
        assert_eq!(priority(&Level::WARN), 4);
        assert_eq!(priority(&Level::INFO), 6);
        assert_eq!(priority(&Level::DEBUG), 7);
    }

    #[test]
    fn a_journal_stream_that_is_not_our_stderr_is_ignored() {
        // Not set, or set to another stream: plain lines.
        std::env::remove_var("JOURNAL_STREAM");
        assert!(!stderr_is_journal());
        std::env::set_var("JOURNAL_STREAM", "1:1");
        assert!(!stderr_is_journal());
        let meta = std::fs::metadata("/proc/self/fd/2").unwrap();
        std::env::set_var("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
        assert!(stderr_is_journal());
        std::env::remove_var("JOURNAL_STREAM");
    }

    #[test]
    fn the_config_sets_level_and_format_and_refuses_bad_ones_at_their_key() {
        let c = crate::config::parse("[log]\nlevel = \"foobar=debug,info\"\nformat = \"json\"\n")
            .unwrap();
        assert_eq!(c.log.level.as_deref(), Some("foobar=debug,info"));
        assert_eq!(c.log.format, Some(LogFormat::Json));
        assert_eq!(crate::config::parse("").unwrap().log, Default::default());
        let problems =
            crate::config::parse("[log]\nlevel = \"loud[\"\nformat = \"xml\"\n").unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["log.level", "log.format"], "{problems:?}");
        assert!(problems[1].message.contains("\"text\" or \"json\""));
    }

    /// The prefix is written before the line the wrapped format writes.
    #[test]
    fn journal_lines_start_with_their_priority() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || out.clone())
            .with_ansi(false)
            .event_format(JournalPriority(
                tracing_subscriber::fmt::format()
                    .without_time()
                    .with_ansi(false),
            ))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(backend = "10.0.0.11", "health changed");
            tracing::info!(backend = "10.0.0.11", "health changed");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("<4> WARN"), "{text}");
        assert!(lines[1].starts_with("<6> INFO"), "{text}");
        assert!(lines[0].contains("backend=\"10.0.0.11\""), "{text}");
    }
}
