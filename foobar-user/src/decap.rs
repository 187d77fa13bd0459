//! The backend side of the `ipip` forwarding mode: loads foobar-ebpf's
//! `foobar-decap` object, fills its allowed-source and local-destination
//! sets, attaches it to an interface with a pinned link (so it stays after
//! the command exits) and reads its counters. It owns only its own pins,
//! `<root>/<iface>/` (default root /sys/fs/bpf/foobar-decap), and never
//! touches the load balancer's object or pins. See docs/IPIP.md.
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        HashMap, Map, MapData, PerCpuArray,
    },
    programs::{
        links::{FdLink, LinkError},
        xdp::XdpMode,
        ProgramError, TestRun as _, TestRunOptions, Xdp,
    },
    Ebpf, EbpfLoader,
};

use crate::config::AttachMode;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/foobar-decap"));

/// The program's name in the object.
const PROGRAM: &str = "foobar_decap";
/// Default root of the pins (one directory per interface below it).
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/foobar-decap";
/// Where the kernel's BPF filesystem is mounted by convention.
const BPFFS: &str = "/sys/fs/bpf";
/// Entries of each address set (the object's max_entries).
pub const MAX_ADDRS: usize = 256;
/// The maps of the object, pinned next to the link (bpftool can read them).
const MAPS: [&str; 5] = [
    "DECAP_ALLOW4",
    "DECAP_ALLOW6",
    "DECAP_LOCAL4",
    "DECAP_LOCAL6",
    "DECAP_STATS",
];

/// The program's counters, in the order of its DECAP_STATS indices
/// (foobar-ebpf/src/decap.rs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Decapsulated: the inner packet went to the stack.
    Decapsulated = 0,
    /// Encapsulated, from an outer source not allowed: passed untouched.
    RefusedSource = 1,
    /// Encapsulated from an allowed source to an outer destination not in
    /// the local set: passed untouched.
    RefusedDestination = 2,
    /// Not IP-in-IP: ordinary traffic, untouched.
    Passed = 3,
    /// Outer IPv4 options or IPv6 extension headers: passed.
    Options = 4,
    /// An outer fragment: passed (its inner packet is incomplete).
    Fragment = 5,
    /// Truncated, lengths beyond the frame, wrong inner version: passed.
    Malformed = 6,
}

impl Counter {
    pub const ALL: [Counter; 7] = [
        Counter::Decapsulated,
        Counter::RefusedSource,
        Counter::RefusedDestination,
        Counter::Passed,
        Counter::Options,
        Counter::Fragment,
        Counter::Malformed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Counter::Decapsulated => "decapsulated",
            Counter::RefusedSource => "refused_source",
            Counter::RefusedDestination => "refused_destination",
            Counter::Passed => "passed",
            Counter::Options => "options",
            Counter::Fragment => "fragment",
            Counter::Malformed => "malformed",
        }
    }
}

/// The counters summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters([u64; Counter::ALL.len()]);

impl Counters {
    pub fn get(&self, c: Counter) -> u64 {
        self.0[c as usize]
    }

    /// `{"decapsulated": N, ...}`.
    pub fn to_json(&self) -> serde_json::Value {
        Counter::ALL
            .iter()
            .map(|&c| (c.name().to_owned(), self.get(c).into()))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

/// Which encapsulated packets are decapsulated: outer source in
/// `allow_from` and outer destination in `local`.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub allow_from: Vec<Prefix>,
    pub local: Vec<IpAddr>,
}

/// An allowed outer source: one address (`10.0.0.1`, a /32 or /128) or a
/// prefix (`10.9.0.0/24`), as an LB whose `datapath.ipip_source` is a
/// prefix takes each flow's outer source from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl From<IpAddr> for Prefix {
    fn from(addr: IpAddr) -> Self {
        let len = if addr.is_ipv4() { 32 } else { 128 };
        Prefix { addr, len }
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.addr, self.len) {
            (IpAddr::V4(a), 32) => write!(f, "{a}"),
            (IpAddr::V6(a), 128) => write!(f, "{a}"),
            (a, len) => write!(f, "{a}/{len}"),
        }
    }
}

impl std::str::FromStr for Prefix {
    type Err = String;

    /// "ADDR" or "ADDR/LEN", with no host bits set.
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let (addr, len) = match text.split_once('/') {
            None => (text, None),
            Some((a, l)) => (a, Some(l)),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("\"{text}\" is not an address or ADDRESS/PREFIX"))?;
        let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("\"{text}\": the prefix length must be 0..={max}"))?,
        };
        let network = match addr {
            IpAddr::V4(a) => {
                let host = u32::MAX.checked_shr(u32::from(len)).unwrap_or(0);
                IpAddr::from(std::net::Ipv4Addr::from(u32::from(a) & !host))
            }
            IpAddr::V6(a) => {
                let host = u128::MAX.checked_shr(u32::from(len)).unwrap_or(0);
                IpAddr::from(std::net::Ipv6Addr::from(u128::from(a) & !host))
            }
        };
        if network != addr {
            return Err(format!(
                "\"{text}\" has host bits set; write the prefix as {network}/{len}"
            ));
        }
        Ok(Prefix { addr, len })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecapError {
    #[error("loading the decap object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("decap program: {0}")]
    Program(#[source] ProgramError),
    #[error("decap map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
    #[error("the decap object has no {0}")]
    Missing(&'static str),
    #[error(
        "no allowed outer source: the program would decapsulate nothing. Give the LB \
         nodes' addresses with --allow-from ADDR[,ADDR]"
    )]
    NoSource,
    #[error("{what}: {got} addresses, more than the program's {MAX_ADDRS}")]
    TooMany { what: &'static str, got: usize },
    #[error("interface {iface} does not exist (see `ip link`)")]
    UnknownInterface { iface: String },
    #[error(
        "the decap program is already attached to {iface} (pinned at {}); to replace \
         it, run `foobar decap --iface {iface} --detach`, then attach again",
        link.display()
    )]
    AlreadyAttached { iface: String, link: PathBuf },
    #[error("no decap program is attached to {iface} (nothing pinned at {})", dir.display())]
    NotAttached { iface: String, dir: PathBuf },
    #[error(
        "interface {iface} already has an XDP program attached (another program, or \
         the load balancer: see `ip link show dev {iface}`); detach it first"
    )]
    Busy { iface: String },
    #[error(
        "interface {iface} does not support XDP in native mode; try --xdp-mode skb \
         (generic XDP), which every driver supports"
    )]
    ModeUnsupported { iface: String },
    #[error("attaching to {iface}: {source}")]
    Attach { iface: String, source: ProgramError },
    #[error("pinning the link at {}: {source}", path.display())]
    Link { path: PathBuf, source: LinkError },
    #[error("{}: {source}", path.display())]
    Pin {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot mount bpffs at /sys/fs/bpf ({source}); mount it \
         (`mount -t bpf bpf /sys/fs/bpf`) or give another --pin-root on a bpffs"
    )]
    Bpffs { source: std::io::Error },
}

type Result<T, E = DecapError> = std::result::Result<T, E>;

/// The loaded decap object (not attached): what tests run frames through
/// and what `attach` pins.
pub struct Decap {
    ebpf: Ebpf,
}

impl Decap {
    /// Loads the object with its maps unpinned and fills the sets.
    pub fn load(filter: &Filter) -> Result<Self> {
        Decap::load_with(filter, None)
    }

    fn load_with(filter: &Filter, pin_dir: Option<&Path>) -> Result<Self> {
        if filter.allow_from.is_empty() {
            return Err(DecapError::NoSource);
        }
        let allow: Vec<IpAddr> = filter.allow_from.iter().map(|p| p.addr).collect();
        for (what, set) in [("--allow-from", &allow), ("local", &filter.local)] {
            for v4 in [true, false] {
                let got = set.iter().filter(|a| a.is_ipv4() == v4).count();
                if got > MAX_ADDRS {
                    return Err(DecapError::TooMany { what, got });
                }
            }
        }
        let mut loader = EbpfLoader::new();
        let paths: Vec<(&str, PathBuf)> = match pin_dir {
            Some(dir) => MAPS.iter().map(|&m| (m, dir.join(m))).collect(),
            None => Vec::new(),
        };
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT)?;
        program(&mut ebpf)?.load().map_err(DecapError::Program)?;
        let mut decap = Decap { ebpf };
        decap.allow(&filter.allow_from)?;
        decap.fill("DECAP_LOCAL4", "DECAP_LOCAL6", &filter.local)?;
        Ok(decap)
    }

    /// Fills the allowed-source tries (longest-prefix match).
    fn allow(&mut self, set: &[Prefix]) -> Result<()> {
        for p in set {
            let len = u32::from(p.len);
            match p.addr {
                IpAddr::V4(a) => {
                    let mut map: LpmTrie<_, [u8; 4], u8> = self.map("DECAP_ALLOW4")?;
                    map.insert(&Key::new(len, a.octets()), 1, 0)
                }
                IpAddr::V6(a) => {
                    let mut map: LpmTrie<_, [u8; 16], u8> = self.map("DECAP_ALLOW6")?;
                    map.insert(&Key::new(len, a.octets()), 1, 0)
                }
            }
            .map_err(|source| DecapError::Map {
                map: if p.addr.is_ipv4() {
                    "DECAP_ALLOW4"
                } else {
                    "DECAP_ALLOW6"
                },
                source,
            })?;
        }
        Ok(())
    }

    fn fill(&mut self, name4: &'static str, name6: &'static str, set: &[IpAddr]) -> Result<()> {
        for addr in set {
            match addr {
                IpAddr::V4(a) => {
                    let mut map: HashMap<_, [u8; 4], u8> = self.map(name4)?;
                    map.insert(a.octets(), 1, 0)
                }
                IpAddr::V6(a) => {
                    let mut map: HashMap<_, [u8; 16], u8> = self.map(name6)?;
                    map.insert(a.octets(), 1, 0)
                }
            }
            .map_err(|source| DecapError::Map {
                map: if addr.is_ipv4() { name4 } else { name6 },
                source,
            })?;
        }
        Ok(())
    }

    fn map<'a, T: TryFrom<&'a mut Map, Error = aya::maps::MapError>>(
        &'a mut self,
        name: &'static str,
    ) -> Result<T> {
        let map = self.ebpf.map_mut(name).ok_or(DecapError::Missing(name))?;
        T::try_from(map).map_err(|source| DecapError::Map { map: name, source })
    }

    /// Runs the program once on `frame` (BPF_PROG_TEST_RUN): its action
    /// and the output frame.
    pub fn test_run(&mut self, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
        let mut out = vec![0u8; frame.len() + 64];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        let result = program(&mut self.ebpf)?
            .test_run(opts)
            .map_err(DecapError::Program)?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }

    /// The kernel's mean time per run of `repeat` runs on `frame`
    /// (BPF_PROG_TEST_RUN). Later runs see the earlier run's output: only a
    /// frame the program leaves unchanged is measured `repeat` times.
    pub fn time_run(&mut self, frame: &[u8], repeat: u32) -> Result<std::time::Duration> {
        let mut out = vec![0u8; frame.len() + 64];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        opts.repeat = repeat;
        let result = program(&mut self.ebpf)?
            .test_run(opts)
            .map_err(DecapError::Program)?;
        Ok(result.duration)
    }

    /// The counters, summed over CPUs.
    pub fn counters(&mut self) -> Result<Counters> {
        let map: PerCpuArray<_, u64> = self.map("DECAP_STATS")?;
        read_counters(&map)
    }
}

fn read_counters<T: std::borrow::Borrow<MapData>>(map: &PerCpuArray<T, u64>) -> Result<Counters> {
    let mut out = Counters::default();
    for c in Counter::ALL {
        let values = map.get(&(c as u32), 0).map_err(|source| DecapError::Map {
            map: "DECAP_STATS",
            source,
        })?;
        out.0[c as usize] = values.iter().sum();
    }
    Ok(out)
}

fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    let prog = ebpf
        .program_mut(PROGRAM)
        .ok_or(DecapError::Missing("program foobar_decap"))?;
    prog.try_into().map_err(DecapError::Program)
}

/// `<root>/<iface>`: the link and the maps of one interface's program.
pub fn pin_dir(root: &Path, iface: &str) -> PathBuf {
    root.join(iface)
}

/// Loads the program, fills its sets and attaches it to `iface` with a
/// pinned link under `<root>/<iface>/`, so it stays attached after this
/// process exits. Refuses when one is pinned there already.
pub fn attach(root: &Path, iface: &str, mode: AttachMode, filter: &Filter) -> Result<()> {
    if filter.allow_from.is_empty() {
        return Err(DecapError::NoSource);
    }
    if nix::net::if_::if_nametoindex(iface).is_err() {
        return Err(DecapError::UnknownInterface {
            iface: iface.to_owned(),
        });
    }
    if root.starts_with(BPFFS) {
        ensure_bpffs()?;
    }
    let dir = pin_dir(root, iface);
    let link_path = dir.join("link");
    if link_path.exists() {
        return Err(DecapError::AlreadyAttached {
            iface: iface.to_owned(),
            link: link_path,
        });
    }
    // Maps left by an attach that failed half-way: start afresh.
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|source| DecapError::Pin {
            path: dir.clone(),
            source,
        })?;
    }
    std::fs::create_dir_all(&dir).map_err(|source| DecapError::Pin {
        path: dir.clone(),
        source,
    })?;
    let result = attach_in(&dir, &link_path, iface, mode, filter);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn attach_in(
    dir: &Path,
    link_path: &Path,
    iface: &str,
    mode: AttachMode,
    filter: &Filter,
) -> Result<()> {
    let mut decap = Decap::load_with(filter, Some(dir))?;
    let prog = program(&mut decap.ebpf)?;
    let flags = match mode {
        AttachMode::Native => XdpMode::Driver,
        AttachMode::Skb => XdpMode::Skb,
    };
    let id = prog
        .attach(iface, flags)
        .map_err(|source| classify_attach_error(iface, source))?;
    let link = prog.take_link(id).map_err(DecapError::Program)?;
    let link_error = |source| DecapError::Link {
        path: link_path.to_owned(),
        source,
    };
    let fd_link = FdLink::try_from(link).map_err(link_error)?;
    fd_link.pin(link_path).map_err(|e| DecapError::Pin {
        path: link_path.to_owned(),
        source: std::io::Error::other(e),
    })?;
    Ok(())
}

fn classify_attach_error(iface: &str, source: ProgramError) -> DecapError {
    let iface = iface.to_owned();
    let errno = match &source {
        ProgramError::UnknownInterface { .. } => return DecapError::UnknownInterface { iface },
        ProgramError::SyscallError(e) => e.io_error.raw_os_error(),
        _ => None,
    };
    match errno {
        Some(libc::EOPNOTSUPP) => DecapError::ModeUnsupported { iface },
        Some(libc::EBUSY) | Some(libc::EEXIST) => DecapError::Busy { iface },
        _ => DecapError::Attach { iface, source },
    }
}

/// Removes the pinned link (the program detaches once no process holds
/// it) and the maps of `iface`.
pub fn detach(root: &Path, iface: &str) -> Result<()> {
    let dir = pin_dir(root, iface);
    if !dir.exists() {
        return Err(DecapError::NotAttached {
            iface: iface.to_owned(),
            dir,
        });
    }
    let link = dir.join("link");
    match std::fs::remove_file(&link) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(DecapError::Pin { path: link, source }),
    }
    std::fs::remove_dir_all(&dir).map_err(|source| DecapError::Pin { path: dir, source })
}

/// The counters of the program pinned for `iface`.
pub fn pinned_counters(root: &Path, iface: &str) -> Result<Counters> {
    let dir = pin_dir(root, iface);
    let path = dir.join("DECAP_STATS");
    if !path.exists() {
        return Err(DecapError::NotAttached {
            iface: iface.to_owned(),
            dir,
        });
    }
    let data = MapData::from_pin(&path).map_err(|source| DecapError::Map {
        map: "DECAP_STATS",
        source,
    })?;
    let map: PerCpuArray<_, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(|source| DecapError::Map {
            map: "DECAP_STATS",
            source,
        })?;
    read_counters(&map)
}

/// This host's addresses (in this network namespace), loopback ones
/// excepted: the default set of accepted outer destinations.
pub fn local_addresses() -> std::io::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)? {
        let Some(addr) = ifa.address else { continue };
        let ip = if let Some(sin) = addr.as_sockaddr_in() {
            IpAddr::V4(sin.ip())
        } else if let Some(sin6) = addr.as_sockaddr_in6() {
            IpAddr::V6(sin6.ip())
        } else {
            continue;
        };
        if !ip.is_loopback() && !out.contains(&ip) {
            out.push(ip);
        }
    }
    Ok(out)
}

/// Mounts bpffs at /sys/fs/bpf unless it is there (as the daemon does).
fn ensure_bpffs() -> Result<()> {
    crate::datapath::mount_bpffs().map_err(|source| DecapError::Bpffs { source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_order_matches_indices() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "{}", c.name());
        }
        let json = Counters([1, 2, 3, 4, 5, 6, 7]).to_json();
        assert_eq!(json["refused_source"], 2);
        assert_eq!(json["malformed"], 7);
    }

    #[test]
    fn allowed_sources_are_addresses_or_prefixes_without_host_bits() {
        let p = |t: &str| t.parse::<Prefix>();
        assert_eq!(
            p("10.0.0.1").unwrap(),
            Prefix {
                addr: "10.0.0.1".parse().unwrap(),
                len: 32
            }
        );
        assert_eq!(p("10.9.0.0/24").unwrap().len, 24);
        assert_eq!(p("10.9.0.0/24").unwrap().to_string(), "10.9.0.0/24");
        assert_eq!(p("fd00::1").unwrap().len, 128);
        assert_eq!(p("fd00::/64").unwrap().to_string(), "fd00::/64");
        let err = p("10.9.0.1/24").unwrap_err();
        assert!(err.contains("10.9.0.0/24"), "{err}");
        assert!(p("10.9.0.0/33").is_err());
        assert!(p("fd00::/129").is_err());
        assert!(p("nope").is_err());
    }

    #[test]
    fn an_empty_source_set_is_refused() {
        let err = Decap::load(&Filter::default()).err().expect("refused");
        assert!(matches!(err, DecapError::NoSource), "{err}");
        assert!(err.to_string().contains("--allow-from"));
    }
}
