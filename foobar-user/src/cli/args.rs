//! Value parsers of the CLI's arguments: a bad value is refused by clap
//! (usage error, exit code 2) before any request is sent, with the message
//! the config file would give.
use std::net::{IpAddr, Ipv4Addr};

use clap::Args;

use crate::config::{self, Check, Forwarding, HealthSpec, Protocol, Scheduler, MAX_WEIGHT};

pub fn ipv4(text: &str) -> Result<Ipv4Addr, String> {
    text.parse()
        .map_err(|_| format!("\"{text}\" is not an IPv4 address (for example 10.0.0.11)"))
}

/// A VIP or backend address: IPv4 or IPv6.
pub fn ip(text: &str) -> Result<IpAddr, String> {
    text.parse().map_err(|_| {
        format!("\"{text}\" is not an IPv4 or IPv6 address (for example 10.0.0.11 or 2001:db8::11)")
    })
}

pub fn weight(text: &str) -> Result<u32, String> {
    let n: u32 = text
        .parse()
        .map_err(|_| format!("\"{text}\" is not a weight: a whole number 0..={MAX_WEIGHT}"))?;
    if n > MAX_WEIGHT {
        return Err(format!(
            "weight {n} is out of range 0..={MAX_WEIGHT} (0 takes no new flows)"
        ));
    }
    Ok(n)
}

pub fn protocol(text: &str) -> Result<Protocol, String> {
    Protocol::parse(text)
}

pub fn scheduler(text: &str) -> Result<Scheduler, String> {
    Scheduler::parse(text)
}

pub fn forwarding(text: &str) -> Result<Forwarding, String> {
    Forwarding::parse(text)
}

/// "300s", "5m", "1h" or seconds; at least 1 s.
pub fn duration_s(text: &str) -> Result<u32, String> {
    match config::parse_duration_s(text)? {
        0 => Err("a duration of 0: give at least 1s".into()),
        n => Ok(n),
    }
}

/// A prime Maglev table size the datapath can hold.
pub fn maglev_table_size(text: &str) -> Result<u32, String> {
    let n: u32 = text
        .parse()
        .map_err(|_| format!("\"{text}\" is not a table size (a prime such as 65537)"))?;
    crate::api::validate_maglev_table_size(n)?;
    Ok(n)
}

/// "LOW-HIGH", e.g. "200-399".
pub fn status_range(text: &str) -> Result<(u16, u16), String> {
    let bad = || format!("\"{text}\" is not LOW-HIGH within 100-599 (for example 200-399)");
    let (lo, hi) = text.split_once('-').ok_or_else(bad)?;
    let (lo, hi): (u16, u16) = (
        lo.parse().map_err(|_| bad())?,
        hi.parse().map_err(|_| bad())?,
    );
    if !(100 <= lo && lo <= hi && hi <= 599) {
        return Err(bad());
    }
    Ok((lo, hi))
}

/// The health-check options of `vip add`: the `[vip.health]` keys of the
/// config file.
#[derive(Debug, Default, Args)]
pub struct HealthArgs {
    /// Health check of the VIP's backends: tcp (connect), http (GET) or
    /// none (always up). Default tcp. Example: --check http
    #[arg(long, value_parser = ["tcp", "http", "none"], help_heading = "Health check")]
    pub check: Option<String>,
    /// Port to check (default: the VIP's port; 80 for a port-0 VIP).
    /// Example: --check-port 8080
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..), help_heading = "Health check")]
    pub check_port: Option<u16>,
    /// Milliseconds between checks, 100..=3600000 (default 2000).
    #[arg(long, value_parser = clap::value_parser!(u64).range(100..=3_600_000), help_heading = "Health check")]
    pub interval_ms: Option<u64>,
    /// Milliseconds a check may take, 10..=3600000, at most the interval
    /// (default 1000 or the interval if shorter).
    #[arg(long, value_parser = clap::value_parser!(u64).range(10..=3_600_000), help_heading = "Health check")]
    pub timeout_ms: Option<u64>,
    /// Passed checks in a row that bring a down backend up, 1..=100
    /// (default 2).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100), help_heading = "Health check")]
    pub rise: Option<u32>,
    /// Failed checks in a row that take an up backend down, 1..=100
    /// (default 3).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100), help_heading = "Health check")]
    pub fall: Option<u32>,
    /// Path of the HTTP check (default /). Example: --http-path /healthz
    #[arg(long, help_heading = "Health check")]
    pub http_path: Option<String>,
    /// Host header of the HTTP check (default: the backend's address).
    #[arg(long, help_heading = "Health check")]
    pub http_host: Option<String>,
    /// Statuses that pass the HTTP check, LOW-HIGH (default 200-399).
    #[arg(long, value_parser = status_range, help_heading = "Health check")]
    pub http_status: Option<(u16, u16)>,
}

impl HealthArgs {
    /// The check these options describe (None: no option given, the
    /// daemon's default), checked against the config's rules.
    pub fn spec(&self) -> Result<Option<HealthSpec>, String> {
        let http_keys =
            self.http_path.is_some() || self.http_host.is_some() || self.http_status.is_some();
        let any = self.check.is_some()
            || self.check_port.is_some()
            || self.interval_ms.is_some()
            || self.timeout_ms.is_some()
            || self.rise.is_some()
            || self.fall.is_some()
            || http_keys;
        if !any {
            return Ok(None);
        }
        let d = HealthSpec::default();
        let check = match self.check.as_deref() {
            Some("http") => {
                let (status_min, status_max) = self.http_status.unwrap_or((200, 399));
                Check::Http {
                    path: self.http_path.clone().unwrap_or_else(|| "/".into()),
                    host: self.http_host.clone(),
                    status_min,
                    status_max,
                }
            }
            _ if http_keys => {
                return Err("--http-path, --http-host and --http-status need --check http".into())
            }
            Some("none") => Check::None,
            _ => Check::Tcp,
        };
        let interval_ms = self.interval_ms.unwrap_or(d.interval_ms);
        let spec = HealthSpec {
            check,
            port: self.check_port,
            interval_ms,
            timeout_ms: self.timeout_ms.unwrap_or(d.timeout_ms.min(interval_ms)),
            rise: self.rise.unwrap_or(d.rise),
            fall: self.fall.unwrap_or(d.fall),
        };
        crate::api::validate_health(&spec)?;
        Ok(Some(spec))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct T {
        #[command(flatten)]
        health: HealthArgs,
    }

    fn health(args: &[&str]) -> Result<Option<HealthSpec>, String> {
        let t = T::try_parse_from(std::iter::once("t").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        t.health.spec()
    }

    #[test]
    fn values_are_refused_with_the_config_files_words() {
        assert!(ipv4("10.0.0.300")
            .unwrap_err()
            .contains("is not an IPv4 address"));
        assert_eq!(ipv4("10.0.0.3").unwrap(), Ipv4Addr::new(10, 0, 0, 3));
        assert!(weight("300")
            .unwrap_err()
            .contains("weight 300 is out of range 0..=256"));
        assert_eq!(weight("0").unwrap(), 0);
        assert!(scheduler("lc")
            .unwrap_err()
            .contains("\"rr\", \"maglev\" or \"wlc\""));
        assert!(maglev_table_size("65536").is_err(), "not prime");
        assert_eq!(maglev_table_size("65537").unwrap(), 65537);
        assert_eq!(duration_s("5m").unwrap(), 300);
        assert!(duration_s("0s").is_err());
        assert_eq!(status_range("200-299").unwrap(), (200, 299));
        assert!(status_range("300-200").is_err());
    }

    #[test]
    fn health_options_build_the_configs_check() {
        assert_eq!(health(&[]).unwrap(), None);
        let h = health(&[
            "--check",
            "http",
            "--http-path",
            "/hz",
            "--interval-ms",
            "500",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(h.interval_ms, 500);
        assert_eq!(h.timeout_ms, 500, "the timeout never exceeds the interval");
        assert!(matches!(h.check, Check::Http { ref path, .. } if path == "/hz"));
        assert!(health(&["--http-path", "/hz"])
            .unwrap_err()
            .contains("need --check http"));
        assert!(health(&["--interval-ms", "50"]).is_err());
        assert!(health(&["--interval-ms", "200", "--timeout-ms", "300"])
            .unwrap_err()
            .contains("longer than interval_ms"));
        assert!(health(&["--check", "icmp"]).is_err());
    }
}
