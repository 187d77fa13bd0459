//! `foobar backend-check --vip ADDR --backend ADDR`, run on the LB node:
//! is each backend ready for direct server return? Two probes on the wire,
//! through a packet socket on the interface facing the backends:
//!
//! 1. ARP: "who has VIP?" sent to the backend's MAC must get no answer from
//!    it (one that answers would take the VIP's traffic from the LB);
//! 2. traffic: a TCP SYN to VIP:port in a frame to the backend's MAC — as
//!    the LB forwards it — must get a SYN-ACK (a service listens) or an
//!    RST (the host took the packet as its own); silence means the VIP is
//!    not on the backend (or a firewall drops it).
//!
//! Needs CAP_NET_RAW. The backend's MAC is asked for by ARP first, as the
//! daemon would find it.
mod frames;

use std::{
    net::{Ipv4Addr, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use serde::Serialize;

use frames::{Answer, Syn};

#[derive(Debug, clap::Args)]
pub struct BackendCheckArgs {
    /// The VIP the backends serve. Example: --vip 192.0.2.10
    #[arg(long, value_name = "ADDR")]
    pub vip: Ipv4Addr,
    /// A backend to check (repeat for several). Example: --backend 10.0.0.11
    #[arg(long, required = true, value_name = "ADDR")]
    pub backend: Vec<Ipv4Addr>,
    /// TCP port of the service on the VIP.
    #[arg(long, default_value_t = 80)]
    pub port: u16,
    /// Interface facing the backends (default: the one the kernel routes
    /// the first backend through).
    #[arg(long, value_name = "IF")]
    pub iface: Option<String>,
    /// How long to wait for each answer (and for the ARP silence), in ms.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub timeout_ms: u64,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

/// One backend's verdict.
#[derive(Debug, Serialize)]
pub struct Report {
    pub backend: Ipv4Addr,
    pub mac: Option<String>,
    /// "silent", or what answered.
    pub arp_for_vip: String,
    /// "syn-ack", "rst" or "none".
    pub tcp: String,
    pub ok: bool,
    /// What is wrong and what to do, when not ok.
    pub problems: Vec<String>,
}

pub fn backend_check(args: BackendCheckArgs) -> anyhow::Result<()> {
    let link = Link::find(args.iface.as_deref(), args.backend[0])?;
    let sock = PacketSocket::open(link.index).with_context(|| {
        format!(
            "opening a packet socket on {} (needs root or CAP_NET_RAW)",
            link.name
        )
    })?;
    let timeout = Duration::from_millis(args.timeout_ms.max(100));
    let reports: Vec<Report> = args
        .backend
        .iter()
        .map(|b| check_one(&sock, &link, *b, args.vip, args.port, timeout))
        .collect::<anyhow::Result<_>>()?;
    let failed = reports.iter().filter(|r| !r.ok).count();
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "vip": args.vip, "port": args.port, "iface": link.name,
                                "backends": reports })
        );
    } else {
        for r in &reports {
            let mac = r.mac.as_deref().unwrap_or("-");
            println!(
                "{:<15} {:<17} arp-for-vip: {:<8} tcp {}:{}: {:<7} {}",
                r.backend,
                mac,
                r.arp_for_vip,
                args.vip,
                args.port,
                r.tcp,
                if r.ok { "OK" } else { "FAIL" }
            );
            for p in &r.problems {
                println!("  {p}");
            }
        }
    }
    if failed > 0 {
        bail!(
            "{failed} of {} backends are not ready for DSR with VIP {}",
            reports.len(),
            args.vip
        );
    }
    Ok(())
}

fn check_one(
    sock: &PacketSocket,
    link: &Link,
    backend: Ipv4Addr,
    vip: Ipv4Addr,
    port: u16,
    timeout: Duration,
) -> anyhow::Result<Report> {
    let mut report = Report {
        backend,
        mac: None,
        arp_for_vip: "not checked".into(),
        tcp: "not checked".into(),
        ok: false,
        problems: Vec::new(),
    };
    // The backend's MAC, as the daemon would learn it.
    let request = frames::arp_request([0xff; 6], link.mac, link.addr, backend);
    let found = sock.ask(&request, 3, timeout, |f| {
        frames::arp_reply(f).filter(|(_, ip)| *ip == backend)
    })?;
    let Some((mac, _)) = found else {
        report.problems.push(format!(
            "{backend} does not answer ARP on {}: DSR needs every backend on the LB's L2 \
             segment (is it up, and on this segment? `ip neigh show {backend}`)",
            link.name
        ));
        return Ok(report);
    };
    report.mac = Some(mac_text(mac));

    // 1. Silence for the VIP.
    let request = frames::arp_request(mac, link.mac, link.addr, vip);
    let answer = sock.ask(&request, 2, timeout, |f| {
        frames::arp_reply(f).filter(|(from, ip)| *ip == vip && *from == mac)
    })?;
    report.arp_for_vip = if answer.is_some() {
        report.problems.push(format!(
            "{backend} answers ARP for the VIP {vip}: it would take the VIP's traffic from the \
             LB. On the backend: `foobar backend-setup --mode dsr --vip {vip} --apply` \
             (net.ipv4.conf.all.arp_ignore = 1, arp_announce = 2)"
        ));
        "answers".into()
    } else {
        "silent".into()
    };

    // 2. A SYN to the VIP, as the LB forwards it.
    let syn = Syn {
        src_mac: link.mac,
        dst_mac: mac,
        src: link.addr,
        dst: vip,
        sport: 40000 + (std::process::id() % 20000) as u16,
        dport: port,
        seq: std::process::id(),
    };
    let answer = sock.ask(&syn.frame(), 2, timeout, |f| syn.answer(f))?;
    report.tcp = match answer {
        Some(Answer::SynAck) => "syn-ack".into(),
        Some(Answer::Rst) => "rst".into(),
        None => {
            report.problems.push(format!(
                "{backend} does not accept traffic for {vip}:{port}: no SYN-ACK or RST. Is the \
                 VIP on its loopback (`ip addr show dev lo` on the backend)? \
                 `foobar backend-setup --mode dsr --vip {vip} --apply` there; or a firewall on \
                 the backend drops it"
            ));
            "none".into()
        }
    };
    report.ok = report.problems.is_empty();
    Ok(report)
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The LB's interface toward the backends: name, index, MAC, IPv4.
struct Link {
    name: String,
    index: u32,
    mac: [u8; 6],
    addr: Ipv4Addr,
}

impl Link {
    /// `iface`, or the interface whose address the kernel picks to reach
    /// `toward` (a connected UDP socket sends nothing).
    fn find(iface: Option<&str>, toward: Ipv4Addr) -> anyhow::Result<Link> {
        let local = match iface {
            Some(_) => None,
            None => {
                let s = UdpSocket::bind("0.0.0.0:0").context("opening a UDP socket")?;
                s.connect((toward, 9))
                    .with_context(|| format!("no route to {toward}"))?;
                match s.local_addr()?.ip() {
                    std::net::IpAddr::V4(a) => Some(a),
                    other => bail!("{toward} is reached from {other}, not IPv4"),
                }
            }
        };
        let addrs = nix::ifaddrs::getifaddrs().context("listing interfaces (getifaddrs)")?;
        let (mut name, mut mac, mut addr) = (iface.map(str::to_owned), None, None);
        let all: Vec<_> = addrs.collect();
        for ifa in &all {
            let v4 = ifa
                .address
                .as_ref()
                .and_then(|a| a.as_sockaddr_in())
                .map(|s| s.ip());
            match (&name, v4, local) {
                (None, Some(a), Some(l)) if a == l => {
                    name = Some(ifa.interface_name.clone());
                    addr = Some(a);
                }
                (Some(n), Some(a), _) if *n == ifa.interface_name && addr.is_none() => {
                    addr = Some(a);
                }
                _ => {}
            }
        }
        let name = name.context("no interface holds the address that reaches the backend")?;
        for ifa in &all {
            if ifa.interface_name == name {
                if let Some(m) = ifa
                    .address
                    .as_ref()
                    .and_then(|a| a.as_link_addr())
                    .and_then(|l| l.addr())
                {
                    mac = Some(m);
                }
            }
        }
        let index = nix::net::if_::if_nametoindex(name.as_str())
            .map_err(|_| anyhow::anyhow!("interface {name} does not exist (see `ip link`)"))?;
        Ok(Link {
            mac: mac.with_context(|| format!("{name} has no Ethernet MAC address"))?,
            addr: addr.with_context(|| format!("{name} has no IPv4 address"))?,
            index,
            name,
        })
    }
}

/// An AF_PACKET socket bound to one interface, seeing every frame.
struct PacketSocket {
    fd: OwnedFd,
    index: u32,
}

impl PacketSocket {
    fn open(index: u32) -> std::io::Result<PacketSocket> {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain syscall; the fd is owned from here on.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(proto),
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let sock = PacketSocket { fd, index };
        let addr = sock.sockaddr(proto, [0; 6]);
        // SAFETY: addr outlives the call; the length is its size.
        let rc = unsafe {
            libc::bind(
                sock.fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(sock)
    }

    fn sockaddr(&self, proto_be: u16, mac: [u8; 6]) -> libc::sockaddr_ll {
        // SAFETY: an all-zero sockaddr_ll is valid; the fields follow.
        let mut a: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        a.sll_family = libc::AF_PACKET as u16;
        a.sll_protocol = proto_be;
        a.sll_ifindex = self.index as i32;
        a.sll_halen = 6;
        a.sll_addr[..6].copy_from_slice(&mac);
        a
    }

    fn send(&self, frame: &[u8]) -> std::io::Result<()> {
        let dst: [u8; 6] = frame[..6].try_into().expect("an Ethernet frame");
        let to = self.sockaddr(u16::from_be_bytes([frame[12], frame[13]]).to_be(), dst);
        // SAFETY: frame and `to` outlive the call; lengths are theirs.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&to as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sends `frame` up to `tries` times, `timeout / tries` apart, and
    /// returns the first received frame `matches` accepts (None: silence
    /// for the whole `timeout`).
    fn ask<T>(
        &self,
        frame: &[u8],
        tries: u32,
        timeout: Duration,
        matches: impl Fn(&[u8]) -> Option<T>,
    ) -> anyhow::Result<Option<T>> {
        let start = Instant::now();
        let step = timeout / tries;
        let mut sent = 0;
        let mut buf = vec![0u8; 2048];
        while start.elapsed() < timeout {
            if sent < tries && start.elapsed() >= step * sent {
                self.send(frame).context("sending a probe frame")?;
                sent += 1;
            }
            let until_next = (step * sent)
                .min(timeout)
                .saturating_sub(start.elapsed())
                .max(Duration::from_millis(1));
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, until_next.as_millis() as i32) };
            if rc <= 0 {
                continue;
            }
            // SAFETY: buf is writable for its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                if let Some(found) = matches(&buf[..n as usize]) {
                    return Ok(Some(found));
                }
            }
        }
        Ok(None)
    }
}
