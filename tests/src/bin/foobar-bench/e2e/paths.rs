//! The load-balancing paths the `e2e` section compares: how each starts
//! and stops in the lab, and where the client sends its traffic.
use anyhow::{ensure, Context as _, Result};
use aya::programs::ProgramFd;
use foobar::datapath::bench::Harness;
use foobar_tests::{
    lab::{self, Lab, VIP},
    peers,
};

use super::modes;
use crate::common::mac_text;

/// The load-balancing paths compared end to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Client straight to be1.
    Direct,
    /// Client straight to the three backends, round-robin on the client
    /// (each of the WRK_PROCESSES wrk processes to one backend): the same
    /// work as a balancer's spread. HTTP only: iperf3 goes to be1 on every
    /// path, so its figures are Direct's.
    DirectSpread,
    /// The minimal XDP forwarder (foobar-bench object's `forwarder`: both
    /// MACs rewritten to fixed values, XDP_TX, nothing else) on the LB's
    /// eth0, every frame to be1: the ceiling for any XDP balancer here.
    Forwarder,
    /// foobar with be1 alone behind the web VIP: the forwarder's work.
    /// HTTP only: iperf3's VIPs are the same as Foobar's.
    FoobarOne,
    /// foobar, native XDP, DSR, round-robin over the three backends.
    Foobar,
    /// foobar, `nat` (the default mode): backends unmodified, replies
    /// translated back by the LB (SNAT address: the LB's own).
    FoobarNat,
    /// foobar, `ipip`: `foobar decap` on every backend while it runs.
    FoobarIpip,
    /// HAProxy in TCP mode, `balance roundrobin`.
    Haproxy,
    /// nftables DNAT with `numgen inc`, masquerade.
    Nft,
}

pub const PATHS: [Path; 9] = [
    Path::Direct,
    Path::DirectSpread,
    Path::Forwarder,
    Path::FoobarOne,
    Path::Foobar,
    Path::FoobarNat,
    Path::FoobarIpip,
    Path::Haproxy,
    Path::Nft,
];

/// The destination MAC the bench object's `forwarder` writes
/// (foobar-ebpf/src/bench.rs `BACKEND_MAC`): be1's eth0 gets it.
pub const FORWARDER_BACKEND_MAC: &str = "02:00:00:00:00:0b";

/// What the forwarder path holds: the bench object (its programs live as
/// long as it does) and, while attached, the XDP link on the LB's eth0
/// (closing it detaches).
pub struct ForwarderPath {
    pub harness: Harness,
    pub link: Option<std::os::fd::OwnedFd>,
}

impl Path {
    pub fn name(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::DirectSpread => "direct ×3",
            Path::Forwarder => "forwarder",
            Path::FoobarOne => "foobar ×1",
            Path::Foobar => "foobar dsr",
            Path::FoobarNat => "foobar nat",
            Path::FoobarIpip => "foobar ipip",
            Path::Haproxy => "HAProxy",
            Path::Nft => "nftables",
        }
    }

    /// The hosts the client's wrk spreads over (round-robin), iperf3's
    /// first.
    pub fn hosts(self, lab: &Lab) -> Vec<String> {
        match self {
            Path::Direct => vec![lab.backends[0].addr.to_string()],
            Path::DirectSpread => lab.backends.iter().map(|b| b.addr.to_string()).collect(),
            Path::Forwarder
            | Path::FoobarOne
            | Path::Foobar
            | Path::FoobarNat
            | Path::FoobarIpip => vec![VIP.to_string()],
            Path::Haproxy => vec![peers::HAPROXY_ADDR.to_string()],
            Path::Nft => vec![peers::NFT_ADDR.to_string()],
        }
    }

    /// Whether foobar (or the forwarder) is attached to the LB's eth0.
    pub fn attaches_xdp(self) -> bool {
        matches!(
            self,
            Path::Forwarder | Path::FoobarOne | Path::Foobar | Path::FoobarNat | Path::FoobarIpip
        )
    }

    /// After the workloads, before `stop`: foobar's (and the backends'
    /// decap's) counters show the path went the way its mode says.
    pub fn check_counters(self, lab: &Lab) -> Result<()> {
        match self {
            Path::Foobar | Path::FoobarOne => modes::check_counters(lab, "dsr"),
            Path::FoobarNat => modes::check_counters(lab, "nat"),
            Path::FoobarIpip => modes::check_counters(lab, "ipip"),
            _ => Ok(()),
        }
    }

    /// Whether the path runs iperf3 itself (the ×3 and ×1 paths would
    /// repeat direct's and foobar's runs exactly).
    pub fn runs_iperf(self) -> bool {
        !matches!(self, Path::DirectSpread | Path::FoobarOne)
    }

    /// Whose figures stand in where this path does not measure.
    pub fn stand_in(self) -> Option<Path> {
        match self {
            Path::DirectSpread => Some(Path::Direct),
            Path::FoobarOne => Some(Path::Foobar),
            _ => None,
        }
    }

    pub fn start(self, lab: &mut Lab, forwarder: &mut ForwarderPath) -> Result<()> {
        match self {
            Path::Direct | Path::DirectSpread => Ok(()),
            Path::Forwarder => {
                // The forwarder sends ARP on to be1 too, which never answers
                // for the VIP: the client keeps the LB's MAC for the VIP
                // meanwhile.
                let lb_mac = mac_text(lab.mac(&lab.lb, lab::LB_IFACE)?);
                let vip = VIP.to_string();
                lab.exec(
                    &lab.client.ns,
                    &[
                        "ip",
                        "neigh",
                        "replace",
                        &vip,
                        "lladdr",
                        &lb_mac,
                        "dev",
                        "eth0",
                        "nud",
                        "permanent",
                    ],
                )?;
                let prog = forwarder.harness.forwarder_fd()?;
                forwarder.link = Some(attach_xdp(&lab.lb.ns, lab::LB_IFACE, &prog)?);
                // The path goes where it says: be1 answers the VIP.
                let body = lab.curl(&format!("http://{VIP}/"))?;
                ensure!(
                    body.trim() == lab.backends[0].name,
                    "through the forwarder, {VIP} answered {body:?}, not {}",
                    lab.backends[0].name
                );
                Ok(())
            }
            Path::FoobarOne => {
                let config = peers::foobar_config(lab).replacen(
                    &lab.config(),
                    &lab.config_with_backends(1),
                    1,
                );
                ensure!(
                    config != peers::foobar_config(lab),
                    "foobar ×1: could not drop be2 and be3 from the bench config"
                );
                lab.start_foobar(&lab::foobar_bin()?, &config)
            }
            Path::Foobar => {
                let config = peers::foobar_config(lab);
                lab.start_foobar(&lab::foobar_bin()?, &config)
            }
            Path::FoobarNat => {
                let config = modes::nat_config(lab)?;
                lab.start_foobar(&lab::foobar_bin()?, &config)
            }
            Path::FoobarIpip => {
                modes::attach_decap(lab)?;
                let config = modes::ipip_config(lab)?;
                lab.start_foobar(&lab::foobar_bin()?, &config)
            }
            Path::Haproxy => peers::start_haproxy(lab),
            Path::Nft => peers::start_nft(lab),
        }
    }

    pub fn stop(self, lab: &mut Lab, forwarder: &mut ForwarderPath) -> Result<()> {
        match self {
            Path::Direct | Path::DirectSpread => Ok(()),
            Path::Forwarder => {
                forwarder.link = None;
                lab.exec(
                    &lab.client.ns,
                    &["ip", "neigh", "del", &VIP.to_string(), "dev", "eth0"],
                )
                .map(|_| ())
            }
            Path::FoobarOne | Path::Foobar | Path::FoobarNat => {
                lab.stop_and_detach_foobar().map(|_| ())
            }
            Path::FoobarIpip => {
                let stopped = lab.stop_and_detach_foobar().map(|_| ());
                modes::detach_decap(lab).and(stopped)
            }
            Path::Haproxy => peers::stop_haproxy(lab),
            Path::Nft => peers::stop_nft(lab),
        }
    }
}

/// Attaches `prog` in native mode to `iface` in namespace `ns` with a BPF
/// link (BPF_LINK_CREATE; the link lives as long as the returned fd). The
/// interface index is the namespace's, so the call runs on a thread that
/// entered it.
pub fn attach_xdp(ns: &str, iface: &str, prog: &ProgramFd) -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _};
    let path = format!("/var/run/netns/{ns}");
    let iface = iface.to_owned();
    let prog_fd = prog.as_fd().as_raw_fd();
    std::thread::scope(|scope| {
        scope
            .spawn(move || -> Result<std::os::fd::OwnedFd> {
                let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("entering {path}"))?;
                let ifindex = nix::net::if_::if_nametoindex(iface.as_str())
                    .with_context(|| format!("no interface {iface} in {ns}"))?;
                /// The BPF_LINK_CREATE part of `union bpf_attr` (linux/bpf.h),
                /// zero-padded.
                #[repr(C)]
                #[derive(Default)]
                struct LinkCreate {
                    prog_fd: u32,
                    target_ifindex: u32,
                    attach_type: u32,
                    flags: u32,
                    _rest: [u64; 6],
                }
                const BPF_LINK_CREATE: libc::c_long = 28;
                const BPF_XDP: u32 = 37;
                const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
                let attr = LinkCreate {
                    prog_fd: prog_fd as u32,
                    target_ifindex: ifindex,
                    attach_type: BPF_XDP,
                    flags: XDP_FLAGS_DRV_MODE,
                    ..LinkCreate::default()
                };
                // SAFETY: attr is a valid, zero-padded bpf_attr prefix.
                let rc = unsafe {
                    libc::syscall(
                        libc::SYS_bpf,
                        BPF_LINK_CREATE,
                        &attr as *const LinkCreate,
                        std::mem::size_of::<LinkCreate>(),
                    )
                };
                ensure!(
                    rc >= 0,
                    "attaching the forwarder to {iface} in {ns} (BPF_LINK_CREATE): {}; is \
                     another XDP program still attached there?",
                    std::io::Error::last_os_error()
                );
                // SAFETY: a new fd the kernel just gave us; nothing else owns it.
                Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(rc as i32) })
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the thread attaching the forwarder panicked"))?
    })
}
