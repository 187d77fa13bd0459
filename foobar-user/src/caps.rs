//! The Linux capabilities `foobar run` needs, checked before anything is
//! touched, so that a daemon started without them (a unit whose
//! CapabilityBoundingSet= is too tight, a plain user) is refused with the
//! list of what is missing rather than with an EPERM from deep inside the
//! BPF loader. Root is not required as such: the systemd unit runs with a
//! bounding set of exactly these (examples/foobar.service).
use std::fmt;

/// A capability number (linux/capability.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap(pub u8, pub &'static str);

pub const CAP_NET_ADMIN: Cap = Cap(12, "CAP_NET_ADMIN");
pub const CAP_NET_RAW: Cap = Cap(13, "CAP_NET_RAW");
pub const CAP_SYS_ADMIN: Cap = Cap(21, "CAP_SYS_ADMIN");
pub const CAP_PERFMON: Cap = Cap(38, "CAP_PERFMON");
pub const CAP_BPF: Cap = Cap(39, "CAP_BPF");

impl fmt::Display for Cap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.1)
    }
}

/// A capability set as the kernel prints it (`CapEff:` in
/// /proc/self/status: 64 bits in hex).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapSet(pub u64);

impl CapSet {
    pub fn has(self, cap: Cap) -> bool {
        self.0 & (1 << cap.0) != 0
    }

    /// The effective set of this process.
    pub fn effective() -> std::io::Result<CapSet> {
        let status = std::fs::read_to_string("/proc/self/status")?;
        Self::parse_status(&status).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "no CapEff line in /proc/self/status",
            )
        })
    }

    /// `CapEff:` of a /proc/PID/status text.
    pub fn parse_status(status: &str) -> Option<CapSet> {
        let hex = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))?
            .trim();
        u64::from_str_radix(hex, 16).ok().map(CapSet)
    }
}

/// What `foobar run` lacks in `have`; empty when it can run.
///
/// - CAP_SYS_ADMIN: the datapath finds its maps by id after loading the
///   programs (`BPF_PROG_GET_FD_BY_ID`, `BPF_MAP_GET_FD_BY_ID`), which the
///   kernel allows only with CAP_SYS_ADMIN — CAP_BPF and CAP_PERFMON are
///   not enough (seen here: EPERM). It also covers loading the programs
///   and mounting bpffs. Holding on to the loader's own map fds would let
///   this become CAP_BPF + CAP_PERFMON;
/// - CAP_NET_ADMIN: attach XDP, read and probe the neighbour table;
/// - CAP_NET_RAW, only with VRRP instances: the raw VRRP socket and
///   gratuitous ARP.
pub fn missing_for_run(have: CapSet, vrrp: bool) -> Vec<Cap> {
    let mut missing = Vec::new();
    if !have.has(CAP_SYS_ADMIN) {
        missing.push(CAP_SYS_ADMIN);
    }
    if !have.has(CAP_NET_ADMIN) {
        missing.push(CAP_NET_ADMIN);
    }
    if vrrp && !have.has(CAP_NET_RAW) {
        missing.push(CAP_NET_RAW);
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(caps: &[Cap]) -> CapSet {
        CapSet(caps.iter().fold(0, |s, c| s | 1 << c.0))
    }

    #[test]
    fn parses_the_effective_set_of_proc_status() {
        let status = "Name:\tfoobar\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\n\
                      CapEff:\t000000c000003000\nCapBnd:\t000001ffffffffff\n";
        let s = CapSet::parse_status(status).unwrap();
        assert_eq!(s, set(&[CAP_NET_ADMIN, CAP_NET_RAW, CAP_PERFMON, CAP_BPF]));
        assert_eq!(CapSet::parse_status("Name:\tx\n"), None);
    }

    #[test]
    fn names_every_missing_capability() {
        assert_eq!(
            missing_for_run(set(&[]), true),
            vec![CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_NET_RAW]
        );
        assert_eq!(
            missing_for_run(set(&[CAP_SYS_ADMIN, CAP_NET_ADMIN]), false),
            vec![]
        );
        assert_eq!(
            missing_for_run(set(&[CAP_SYS_ADMIN, CAP_NET_ADMIN]), true),
            vec![CAP_NET_RAW]
        );
        // CAP_BPF and CAP_PERFMON alone do not let the datapath open its
        // maps by id.
        assert_eq!(
            missing_for_run(set(&[CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN]), false),
            vec![CAP_SYS_ADMIN]
        );
    }
}
