//! The network-namespace lab: a client, one LB node and N nginx backends on
//! one bridge (in a "switch" namespace), with private addresses that exist
//! only inside the lab. Used by the integration tests, `cargo xtask demo`
//! and the benchmarks.
//!
//! It never touches the root namespace. Names are unique per process and
//! lab (`foobarlab-<pid>-<n>-<role>`), every namespace is registered before
//! it is created, and cleanup runs on drop (so also on panic), from
//! [`cleanup_all`] (the demo's Ctrl-C handler), and for labs of dead
//! processes at the next start ([`sweep_stale`]).
//!
//! foobar pins its datapath in bpffs, which lives in the host's mount
//! namespace, not in the lab's network namespaces: each lab gives its
//! daemon a pin root of its own (`/sys/fs/bpf/foobarlab-<pid>-<n>`), starts
//! it with `nsenter --net` (so it sees that bpffs; `ip netns exec` would
//! remount /sys, see docs/LAB.md), and removes the pin root with the lab.
//!
//! What makes a veth lab forward at all (docs/LAB.md, "veth"): the
//! client's veth sends wire-like frames (checksum offload, TSO, GSO off), and
//! the LB's bridge-side peer runs an XDP_PASS program so XDP_TX frames are
//! delivered.
//!
//! A VLAN lab (`LabOptions::vlan_backends`) adds VLAN 100 on the same
//! bridge: `eth0.100` on the client, the LB node and the first backends,
//! with addresses on a second lab subnet (10.201.100.0/24). The LB's
//! bridge-side peer sends with tx VLAN offload off, so the tag is in the
//! frame the XDP program sees (veth fact 4).
//!
//! A jumbo lab (`LabOptions::jumbo_mtu`) gives every link, both veth
//! ends, one MTU (9000) before any XDP program is attached: the programs
//! are frags-aware, so the kernel accepts them there (veth fact 3).
//!
//! A two-arm lab (`LabOptions::two_arm`, module `two_arm`) puts the
//! backends on a bridge and subnet of their own, the LB node on both
//! bridges (`eth0` client side, `eth1` backend side), and a gateway
//! between the subnets.
//!
//! An IPv6 lab (`LabOptions::ipv6`) gives every host an address on a second,
//! IPv6 lab subnet (fd00:201::/64, added `nodad` so it is usable at once),
//! puts VIP6 on the LB node's eth0 and on the backends' loopback (as the
//! IPv4 VIP), and has nginx listen on [::] too.
//!
//! A two-LB lab (`LabOptions::second_lb`) adds a second LB node, `lb2`, on
//! the same bridge, for VRRP failover: neither LB node holds the VIP at
//! start (the daemons' `[[vrrp]]` instances decide who does), each runs its
//! own daemon ([`Node`]) with its own pin root, control socket and log, and
//! its bridge-side peer runs an XDP_PASS program too. The client keeps the
//! kernel's default `arp_accept = 0`: a gratuitous ARP updates the entry it
//! already has for the VIP (the kernel overrides an existing entry for a
//! gratuitous ARP whatever `arp_accept` says), which is how a router in
//! front of a real LB pair follows the VIP; docs/HA.md says more.
use std::{
    fs,
    io::Read as _,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use foobar::datapath::{AttachMode, PassProgram};

mod http;
mod two_arm;
pub use two_arm::{LB_BACKEND_ADDR, LB_BACKEND_IFACE};

const PREFIX: &str = "foobarlab-";
/// Where labs' pin roots go (each lab's daemon pins below its own).
const BPFFS: &str = "/sys/fs/bpf";
/// The lab's subnet: only inside the lab's namespaces.
const NET: [u8; 3] = [10, 201, 0];
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 100);
/// The IPv6 lab subnet (/64; host N is NET6::N), in an IPv6 lab.
const NET6: [u16; 4] = [0xfd00, 0x201, 0, 0];
/// The IPv6 VIP of an IPv6 lab.
pub const VIP6: Ipv6Addr = Ipv6Addr::new(NET6[0], NET6[1], NET6[2], NET6[3], 0, 0, 0, 0x100);
/// The client's own subnet when it sits behind the router
/// (`LabOptions::client_path_mtu`): also only inside the lab.
const CLIENT_NET: [u8; 3] = [10, 201, 1];
/// The VLAN of a VLAN lab, its subnet (only inside the lab), and the VIP
/// served on it (held by the LB node on its VLAN interface).
pub const VLAN_ID: u16 = 100;
const VLAN_NET: [u8; 3] = [10, 201, 100];
pub const VLAN_VIP: Ipv4Addr = Ipv4Addr::new(10, 201, 100, 100);
/// Every VLAN host's interface on VLAN_ID (its parent is `eth0`).
pub const VLAN_IFACE: &str = "eth0.100";
/// The LB node's NIC inside its namespace.
pub const LB_IFACE: &str = "eth0";
/// The second LB node's address in a two-LB lab (the first's is .2).
pub const LB2_ADDR: Ipv4Addr = Ipv4Addr::new(NET[0], NET[1], NET[2], 4);
/// What every nginx of the lab sends `/slow/NAME` (`www/NAME`) at, per
/// response: downloads that stay in flight for seconds.
pub const SLOW_PATH_RATE: &str = "256k";
/// Health-check interval of the lab's config.
pub const HEALTH_INTERVAL_MS: u64 = 300;

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);
/// Namespaces of live labs in this process, for the signal handler.
static REGISTRY: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// One host of the lab: a namespace with one veth `eth0` on the bridge.
#[derive(Clone, Debug)]
pub struct Host {
    pub name: String,
    pub ns: String,
    pub addr: Ipv4Addr,
    /// Its address on VLAN_ID (on `eth0.100`), in a VLAN lab.
    pub vlan_addr: Option<Ipv4Addr>,
    /// Its IPv6 address (on eth0), in an IPv6 lab.
    pub addr6: Option<Ipv6Addr>,
}

#[derive(Clone, Debug)]
pub struct LabOptions {
    pub backends: usize,
    /// Backends (by name, e.g. "be1") whose responses are sent at 32 KB/s:
    /// a slow server, for schedulers that should notice.
    pub slow: Vec<String>,
    /// Wire-like offload settings (checksum offload, TSO, GSO off) on every
    /// host's veth, not only the client's: benchmarks compare paths with
    /// the same settings.
    pub wire_like_everywhere: bool,
    /// Some(mtu): the client is not on the bridge but behind a router
    /// namespace, on its own subnet (client —veth— router —bridge— LB and
    /// backends, which route the client's subnet via the router). The
    /// router forwards toward the client with this path MTU (`mtu lock` on
    /// its route to the client) while every interface, the client's
    /// included, keeps MTU 1500: the client advertises MSS 1460, so larger
    /// DF packets toward it make the router send ICMP "fragmentation
    /// needed" to their source.
    pub client_path_mtu: Option<u16>,
    /// The LB's bridge-side peer sends 802.1Q tags inside the frame (tx
    /// VLAN offload off), so the XDP program sees them: needed for any
    /// tagged traffic to the LB.
    pub vlan_tags: bool,
    /// The first `vlan_backends` backends, the client and the LB node also
    /// get an interface on VLAN_ID (0: no VLAN; more implies `vlan_tags`).
    /// Needs a kernel with 802.1Q support (CONFIG_VLAN_8021Q).
    pub vlan_backends: usize,
    /// A second LB node (`lb2`, at LB2_ADDR) on the bridge, and no VIP on
    /// either LB node at start: VRRP decides which one holds it. Not with
    /// `client_path_mtu`, `vlan_tags` or `vlan_backends` (lb2 gets neither
    /// the route to the client nor the VLAN).
    pub second_lb: bool,
    /// Some(mtu): the LB node's and the backends' links (both veth ends)
    /// get this MTU while the client's keep 1500 — the room the `ipip`
    /// mode's outer header needs (1520) on the LB-to-backend path.
    pub tunnel_mtu: Option<u16>,
    /// Some(mtu): every lab link (both veth ends: the client's, the LB
    /// nodes', the backends') gets this MTU, e.g. 9000 for jumbo frames;
    /// `tunnel_mtu`, when given too, then raises the LB nodes' and the
    /// backends' links above it. Not with `client_path_mtu` (the router's
    /// links keep 1500). The XDP programs are frags-aware, so the kernel
    /// lets a veth with one attached, and its peer, take it.
    pub jumbo_mtu: Option<u16>,
    /// Plain backends, as `nat` wants them: no VIP on loopback, no ARP
    /// sysctls. They reply to whoever sent the request (the LB's SNAT
    /// address, on the same segment). Implies wire-like offloads on every
    /// host (`wire_like_everywhere`): the LB rewrites the backends' replies
    /// and sends them on with XDP_TX, which drops a partial checksum's
    /// metadata (veth fact 2).
    pub plain_backends: bool,
    /// A two-arm LB node (module `two_arm`): the backends on a bridge and
    /// subnet of their own (10.201.2.0/24), the LB node on both bridges
    /// (`eth1` at LB_BACKEND_ADDR on the backends' side), a gateway
    /// routing between the subnets, and `config()` naming `eth1` as the
    /// datapath's `backend_interface`. Not with `second_lb`,
    /// `client_path_mtu`, VLANs, `tunnel_mtu` or `jumbo_mtu`.
    pub two_arm: bool,
    /// IPv6 beside IPv4 (see the module's doc): one bridge, no router, no
    /// VLAN, one LB node.
    pub ipv6: bool,
}

/// An LB node of the lab: `Lb1` is `Lab::lb` (every lab has it), `Lb2` is
/// `Lab::lb2` (a two-LB lab only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Node {
    Lb1,
    Lb2,
}

impl Node {
    fn index(self) -> usize {
        match self {
            Node::Lb1 => 0,
            Node::Lb2 => 1,
        }
    }

    /// How the node's files are named in the lab directory: `foobar.log`,
    /// `foobar-lb2.log`.
    fn stem(self) -> &'static str {
        match self {
            Node::Lb1 => "foobar",
            Node::Lb2 => "foobar-lb2",
        }
    }
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            backends: 3,
            slow: Vec::new(),
            wire_like_everywhere: false,
            client_path_mtu: None,
            vlan_tags: false,
            vlan_backends: 0,
            second_lb: false,
            tunnel_mtu: None,
            jumbo_mtu: None,
            plain_backends: false,
            two_arm: false,
            ipv6: false,
        }
    }
}

pub struct Lab {
    pub id: String,
    pub dir: PathBuf,
    /// The daemon's `--pin-root` (its pins are in `<pin_root>/eth0`).
    pub pin_root: PathBuf,
    pub client: Host,
    pub lb: Host,
    /// The second LB node of a two-LB lab (`LabOptions::second_lb`).
    pub lb2: Option<Host>,
    pub backends: Vec<Host>,
    /// The router in front of the client (`LabOptions::client_path_mtu`);
    /// `addr` is its address on the bridge.
    pub router: Option<Host>,
    /// The router's path MTU toward the client.
    client_path_mtu: Option<u16>,
    switch_ns: String,
    namespaces: Vec<String>,
    slow: Vec<String>,
    wire_like_everywhere: bool,
    vlan_tags: bool,
    tunnel_mtu: Option<u16>,
    jumbo_mtu: Option<u16>,
    plain_backends: bool,
    two_arm: bool,
    /// nginx masters by host name.
    servers: Vec<(String, Child)>,
    /// The daemons, by `Node::index`.
    foobar: [Option<Child>; 2],
    /// The XDP_PASS programs on the LB nodes' bridge-side peers.
    pass: Vec<PassProgram>,
}

impl Lab {
    /// Builds the lab and starts nginx on every backend and on the LB node
    /// (the LB's own web server answers on its address and on port 8080 of
    /// the VIP: traffic foobar must leave alone).
    pub fn start(opts: &LabOptions) -> Result<Lab> {
        if opts.second_lb
            && (opts.client_path_mtu.is_some() || opts.vlan_tags || opts.vlan_backends > 0)
        {
            bail!("a two-LB lab has no router in front of the client and no VLAN");
        }
        if opts.ipv6
            && (opts.second_lb
                || opts.client_path_mtu.is_some()
                || opts.vlan_tags
                || opts.vlan_backends > 0)
        {
            bail!("an IPv6 lab has one LB node, no router and no VLAN");
        }
        if opts.jumbo_mtu.is_some() && opts.client_path_mtu.is_some() {
            bail!("a jumbo-MTU lab has no router in front of the client");
        }
        if opts.two_arm
            && (opts.second_lb
                || opts.client_path_mtu.is_some()
                || opts.vlan_tags
                || opts.vlan_backends > 0
                || opts.tunnel_mtu.is_some()
                || opts.jumbo_mtu.is_some())
        {
            bail!("a two-arm lab has one LB node, no router, no VLAN and the default MTU");
        }
        sweep_stale();
        let id = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            NEXT_LAB.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(&id);
        fs::create_dir_all(dir.join("www"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let vlan = opts.vlan_backends > 0;
        let host = |name: &str, last: u8, on_vlan: bool| Host {
            name: name.to_owned(),
            ns: format!("{id}-{name}"),
            addr: Ipv4Addr::new(NET[0], NET[1], NET[2], last),
            vlan_addr: on_vlan.then(|| Ipv4Addr::new(VLAN_NET[0], VLAN_NET[1], VLAN_NET[2], last)),
            addr6: opts.ipv6.then(|| {
                Ipv6Addr::new(NET6[0], NET6[1], NET6[2], NET6[3], 0, 0, 0, u16::from(last))
            }),
        };
        let client = match opts.client_path_mtu {
            None => host("client", 10, vlan),
            Some(_) => Host {
                addr: Ipv4Addr::new(CLIENT_NET[0], CLIENT_NET[1], CLIENT_NET[2], 10),
                ..host("client", 10, vlan)
            },
        };
        let mut lab = Lab {
            switch_ns: format!("{id}-sw"),
            router: opts.client_path_mtu.map(|_| host("router", 3, false)),
            client_path_mtu: opts.client_path_mtu,
            client,
            lb: host("lb", 2, vlan),
            lb2: opts
                .second_lb
                .then(|| host("lb2", LB2_ADDR.octets()[3], false)),
            backends: (1..=opts.backends)
                .map(|i| host(&format!("be{i}"), 10 + i as u8, i <= opts.vlan_backends))
                .map(|h| match opts.two_arm {
                    false => h,
                    true => Host {
                        addr: Ipv4Addr::new(
                            two_arm::BACKEND_NET[0],
                            two_arm::BACKEND_NET[1],
                            two_arm::BACKEND_NET[2],
                            h.addr.octets()[3],
                        ),
                        ..h
                    },
                })
                .collect(),
            namespaces: Vec::new(),
            slow: opts.slow.clone(),
            wire_like_everywhere: opts.wire_like_everywhere || opts.plain_backends,
            vlan_tags: opts.vlan_tags || vlan,
            tunnel_mtu: opts.tunnel_mtu,
            jumbo_mtu: opts.jumbo_mtu,
            plain_backends: opts.plain_backends,
            two_arm: opts.two_arm,
            servers: Vec::new(),
            foobar: [None, None],
            pass: Vec::new(),
            pin_root: Path::new(BPFFS).join(&id),
            id,
            dir,
        };
        lab.build()
            .with_context(|| format!("building lab {}", lab.id))?;
        Ok(lab)
    }

    fn hosts(&self) -> Vec<Host> {
        let mut all = vec![self.client.clone(), self.lb.clone()];
        all.extend(self.lb2.clone());
        all.extend(self.backends.iter().cloned());
        all
    }

    /// The hosts with a port on the bridge: the router takes the client's
    /// place when there is one.
    fn bridge_hosts(&self) -> Vec<Host> {
        let mut all = self.hosts();
        if let Some(router) = &self.router {
            all[0] = router.clone();
        }
        all
    }

    fn add_namespace(&mut self, ns: &str) -> Result<()> {
        // Registered first, so a failure half-way still gets cleaned up.
        REGISTRY.lock().unwrap().push(ns.to_owned());
        self.namespaces.push(ns.to_owned());
        run(&["ip", "netns", "add", ns])?;
        run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    fn build(&mut self) -> Result<()> {
        let sw = self.switch_ns.clone();
        self.add_namespace(&sw)?;
        run(&["ip", "-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        run(&["ip", "-n", &sw, "link", "set", "br0", "up"])?;
        if self.two_arm {
            self.build_backend_bridge()?;
        }
        for h in self.bridge_hosts() {
            self.add_namespace(&h.ns)?;
            let port = format!("p-{}", h.name);
            run(&[
                "ip", "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &h.ns,
            ])?;
            let br = two_arm::bridge_of(self, &h);
            run(&["ip", "-n", &sw, "link", "set", &port, "master", br, "up"])?;
            run(&[
                "ip",
                "-n",
                &h.ns,
                "addr",
                "add",
                &format!("{}/24", h.addr),
                "dev",
                "eth0",
            ])?;
            if let Some(a6) = h.addr6 {
                // nodad: usable at once, not "tentative" for a second.
                run(&[
                    "ip",
                    "-n",
                    &h.ns,
                    "-6",
                    "addr",
                    "add",
                    &format!("{a6}/64"),
                    "dev",
                    "eth0",
                    "nodad",
                ])?;
            }
            run(&["ip", "-n", &h.ns, "link", "set", "eth0", "up"])?;
        }
        // Before any XDP program is attached: the LB's peer gets the pass
        // program below, the LB's own link foobar's.
        if let Some(mtu) = self.jumbo_mtu {
            let mtu = mtu.to_string();
            for h in self.bridge_hosts() {
                let port = format!("p-{}", h.name);
                run(&["ip", "-n", &sw, "link", "set", &port, "mtu", &mtu])?;
                run(&["ip", "-n", &h.ns, "link", "set", "eth0", "mtu", &mtu])?;
            }
        }
        if let Some(mtu) = self.tunnel_mtu {
            let mtu = mtu.to_string();
            let nodes = [Some(self.lb.clone()), self.lb2.clone()];
            for h in nodes.into_iter().flatten().chain(self.backends.clone()) {
                let port = format!("p-{}", h.name);
                run(&["ip", "-n", &sw, "link", "set", &port, "mtu", &mtu])?;
                run(&["ip", "-n", &h.ns, "link", "set", "eth0", "mtu", &mtu])?;
            }
        }
        if let Some(router) = self.router.clone() {
            self.build_client_path(&router)?;
        }
        if self.two_arm {
            self.build_two_arm()?;
        }
        // Wire-like frames from the client (from every host when asked): full
        // checksums, at most MTU-sized. A router forwards what it receives,
        // so it is wire-like too.
        let mut wire_like = if self.wire_like_everywhere {
            self.hosts()
        } else {
            vec![self.client.clone()]
        };
        wire_like.extend(self.router.clone());
        for h in wire_like {
            self.exec(
                &h.ns,
                &[
                    "ethtool", "-K", "eth0", "tx", "off", "tso", "off", "gso", "off",
                ],
            )?;
        }
        // The LB node holds the VIP (as a VRRP master would) and answers
        // ARP; with two LB nodes, VRRP decides which one does.
        if self.lb2.is_none() {
            run(&[
                "ip",
                "-n",
                &self.lb.ns,
                "addr",
                "add",
                &format!("{VIP}/32"),
                "dev",
                LB_IFACE,
            ])?;
            if self.lb.addr6.is_some() {
                run(&[
                    "ip",
                    "-n",
                    &self.lb.ns,
                    "-6",
                    "addr",
                    "add",
                    &format!("{VIP6}/128"),
                    "dev",
                    LB_IFACE,
                    "nodad",
                    // Deprecated at once: never the source of the node's
                    // own traffic (health checks), which IPv6 source
                    // selection would otherwise take from the VIP, whose
                    // replies the backends (VIP on lo) keep to themselves.
                    "preferred_lft",
                    "0",
                ])?;
            }
        }
        let dsr_backends = if self.plain_backends {
            Vec::new()
        } else {
            self.backends.clone()
        };
        for b in dsr_backends {
            // DSR backends: the VIP on loopback, never answered for in ARP.
            run(&[
                "ip",
                "-n",
                &b.ns,
                "addr",
                "add",
                &format!("{VIP}/32"),
                "dev",
                "lo",
            ])?;
            // An address on lo is not advertised out of eth0 (no NA for
            // it there): IPv6 needs no arp_ignore.
            if b.addr6.is_some() {
                run(&[
                    "ip",
                    "-n",
                    &b.ns,
                    "-6",
                    "addr",
                    "add",
                    &format!("{VIP6}/128"),
                    "dev",
                    "lo",
                    "nodad",
                ])?;
            }
            for key in ["all", "eth0"] {
                self.exec(
                    &b.ns,
                    &[
                        "sysctl",
                        "-qw",
                        &format!("net.ipv4.conf.{key}.arp_ignore=1"),
                    ],
                )?;
                self.exec(
                    &b.ns,
                    &[
                        "sysctl",
                        "-qw",
                        &format!("net.ipv4.conf.{key}.arp_announce=2"),
                    ],
                )?;
            }
        }
        for lb in [Some(self.lb.clone()), self.lb2.clone()]
            .into_iter()
            .flatten()
        {
            let pass = attach_pass_in(&sw, &format!("p-{}", lb.name))?;
            self.pass.push(pass);
        }
        if self.vlan_tags {
            let port = format!("p-{}", self.lb.name);
            self.exec(&sw, &["ethtool", "-K", &port, "txvlan", "off"])?;
        }
        if self.lb.vlan_addr.is_some() {
            self.build_vlan()?;
        }

        for b in self.backends.clone() {
            self.start_nginx(&b, &[80])?;
        }
        let lb = self.lb.clone();
        self.start_nginx(&lb, &[80, 8080])?;
        for h in self.backends.clone().iter().chain([&lb]) {
            let url = format!("http://{}/", h.addr);
            wait_for(
                &format!("nginx on {}", h.name),
                Duration::from_secs(10),
                || Ok(self.curl(&url)?.trim() == h.name),
            )?;
            // ... and over the VLAN, from the client's VLAN interface.
            if let Some(a6) = h.addr6 {
                let url = format!("http://[{a6}]/");
                wait_for(
                    &format!("nginx on {} over IPv6", h.name),
                    Duration::from_secs(10),
                    || Ok(self.curl(&url)?.trim() == h.name),
                )?;
            }
            if let Some(a) = h.vlan_addr {
                let url = format!("http://{a}/");
                wait_for(
                    &format!("nginx on {} over VLAN {VLAN_ID}", h.name),
                    Duration::from_secs(10),
                    || Ok(self.curl(&url)?.trim() == h.name),
                )?;
            }
        }
        Ok(())
    }

    /// The client behind `router`: a veth pair on the client's subnet,
    /// forwarding on, the lowered path MTU toward the client, and routes to
    /// the client's subnet via the router on the LB node and the backends.
    fn build_client_path(&mut self, router: &Host) -> Result<()> {
        let mtu = self
            .client_path_mtu
            .context("a router without a client path MTU")?;
        let client = self.client.clone();
        self.add_namespace(&client.ns)?;
        let router_side = Ipv4Addr::new(CLIENT_NET[0], CLIENT_NET[1], CLIENT_NET[2], 1);
        let subnet = format!("{}.{}.{}.0/24", CLIENT_NET[0], CLIENT_NET[1], CLIENT_NET[2]);
        run(&[
            "ip", "-n", &router.ns, "link", "add", "eth1", "type", "veth", "peer", "name", "eth0",
            "netns", &client.ns,
        ])?;
        run(&[
            "ip",
            "-n",
            &router.ns,
            "addr",
            "add",
            &format!("{router_side}/24"),
            "dev",
            "eth1",
        ])?;
        run(&["ip", "-n", &router.ns, "link", "set", "eth1", "up"])?;
        run(&[
            "ip",
            "-n",
            &client.ns,
            "addr",
            "add",
            &format!("{}/24", client.addr),
            "dev",
            "eth0",
        ])?;
        run(&["ip", "-n", &client.ns, "link", "set", "eth0", "up"])?;
        run(&[
            "ip",
            "-n",
            &client.ns,
            "route",
            "add",
            "default",
            "via",
            &router_side.to_string(),
        ])?;
        self.exec(&router.ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        // Forwarded packets obey the route's MTU; `lock` keeps it fixed.
        run(&[
            "ip",
            "-n",
            &router.ns,
            "route",
            "replace",
            &format!("{}/32", client.addr),
            "dev",
            "eth1",
            "mtu",
            "lock",
            &mtu.to_string(),
        ])?;
        // GRO would merge the client's segments into frames larger than
        // the MTU, which the LB's XDP program cannot take.
        self.exec(&router.ns, &["ethtool", "-K", "eth1", "gro", "off"])?;
        let mut routed = vec![self.lb.clone()];
        routed.extend(self.backends.iter().cloned());
        for h in routed {
            run(&[
                "ip",
                "-n",
                &h.ns,
                "route",
                "add",
                &subnet,
                "via",
                &router.addr.to_string(),
            ])?;
        }
        Ok(())
    }

    /// VLAN_ID on the same bridge: a VLAN interface on the client, the LB
    /// node (holding VLAN_VIP, so it answers ARP for it there) and the VLAN
    /// backends (VLAN_VIP on loopback, as the untagged VIP). The LB's
    /// bridge-side peer sends tags in the frame, where XDP sees them.
    fn build_vlan(&mut self) -> Result<()> {
        let on_vlan: Vec<Host> = self
            .hosts()
            .into_iter()
            .filter(|h| h.vlan_addr.is_some())
            .collect();
        for h in &on_vlan {
            self.add_vlan_interface(h)?;
        }
        // The client's frames on the VLAN are wire-like too.
        self.exec(&self.client.ns, &["ethtool", "-K", "eth0", "txvlan", "off"])?;
        self.exec(
            &self.client.ns,
            &[
                "ethtool", "-K", VLAN_IFACE, "tx", "off", "tso", "off", "gso", "off",
            ],
        )?;
        for b in on_vlan.iter().filter(|h| h.name.starts_with("be")) {
            run(&[
                "ip",
                "-n",
                &b.ns,
                "addr",
                "add",
                &format!("{VLAN_VIP}/32"),
                "dev",
                "lo",
            ])?;
        }
        Ok(())
    }

    /// Creates `host`'s interface on VLAN_ID (`eth0.100`, with its VLAN
    /// address; on the LB node also VLAN_VIP) and sets it up.
    pub fn add_vlan_interface(&self, host: &Host) -> Result<()> {
        let addr = host
            .vlan_addr
            .with_context(|| format!("{} has no VLAN address in lab {}", host.name, self.id))?;
        run(&[
            "ip",
            "-n",
            &host.ns,
            "link",
            "add",
            "link",
            "eth0",
            "name",
            VLAN_IFACE,
            "type",
            "vlan",
            "id",
            &VLAN_ID.to_string(),
        ])?;
        run(&[
            "ip",
            "-n",
            &host.ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            VLAN_IFACE,
        ])?;
        if host.name == self.lb.name {
            run(&[
                "ip",
                "-n",
                &host.ns,
                "addr",
                "add",
                &format!("{VLAN_VIP}/32"),
                "dev",
                VLAN_IFACE,
            ])?;
        }
        run(&["ip", "-n", &host.ns, "link", "set", VLAN_IFACE, "up"])?;
        Ok(())
    }

    /// The MAC address of `iface` on `host`.
    pub fn mac(&self, host: &Host, iface: &str) -> Result<[u8; 6]> {
        let path = format!("/sys/class/net/{iface}/address");
        let text = self.exec(&host.ns, &["cat", &path])?;
        let bytes: Vec<u8> = text
            .trim()
            .split(':')
            .map(|b| u8::from_str_radix(b, 16))
            .collect::<Result<_, _>>()
            .with_context(|| format!("{path} in {}: \"{}\"", host.ns, text.trim()))?;
        bytes
            .try_into()
            .map_err(|_| anyhow!("{path} in {}: \"{}\" is not a MAC", host.ns, text.trim()))
    }

    /// Sends `frame`, exactly as given (tags included), out of `host`'s
    /// `eth0` with a packet socket.
    pub fn send_frame(&self, host: &Host, frame: &[u8]) -> Result<()> {
        let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
        self.exec(
            &host.ns,
            &[
                "python3",
                "-c",
                "import socket, sys\n\
                 s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n\
                 s.bind(('eth0', 0))\n\
                 s.send(bytes.fromhex(sys.argv[1]))\n",
                &hex,
            ],
        )?;
        Ok(())
    }

    /// `host`'s bridge-side veth peer: the switch namespace and the port's
    /// name there (its XDP_PASS program, its MTU).
    pub fn bridge_port(&self, host: &Host) -> (String, String) {
        (self.switch_ns.clone(), format!("p-{}", host.name))
    }

    /// Deletes `host`'s interface on VLAN_ID.
    pub fn remove_vlan_interface(&self, host: &Host) -> Result<()> {
        run(&["ip", "-n", &host.ns, "link", "del", VLAN_IFACE])?;
        Ok(())
    }

    /// Packets `host` has received on its VLAN interface (from the kernel's
    /// link statistics): frames that arrived with the VLAN's tag.
    pub fn vlan_rx_packets(&self, host: &Host) -> Result<u64> {
        let path = format!("/sys/class/net/{VLAN_IFACE}/statistics/rx_packets");
        let text = self.exec(&host.ns, &["cat", &path])?;
        text.trim()
            .parse()
            .with_context(|| format!("{path} in {}: \"{}\" is not a count", host.ns, text.trim()))
    }

    fn start_nginx(&mut self, host: &Host, ports: &[u16]) -> Result<()> {
        let d = self.dir.display();
        let n = &host.name;
        let listens: String = ports
            .iter()
            .map(|p| {
                // [::] with ipv6only (nginx's default) beside the IPv4 one.
                let v6 = if host.addr6.is_some() {
                    format!("listen [::]:{p} reuseport; ")
                } else {
                    String::new()
                };
                format!("listen {p} reuseport; {v6}")
            })
            .collect();
        let rate = if self.slow.contains(n) {
            "limit_rate 32k;"
        } else {
            ""
        };
        let conf = format!(
            "worker_processes 1;\n\
             daemon off;\n\
             master_process on;\n\
             user root;\n\
             pid {d}/{n}.pid;\n\
             error_log {d}/{n}.error.log warn;\n\
             worker_rlimit_nofile 16384;\n\
             events {{ worker_connections 8192; }}\n\
             http {{\n\
               access_log off;\n\
               client_body_temp_path {d}/{n}.tmp/body;\n\
               proxy_temp_path {d}/{n}.tmp/proxy;\n\
               fastcgi_temp_path {d}/{n}.tmp/fastcgi;\n\
               uwsgi_temp_path {d}/{n}.tmp/uwsgi;\n\
               scgi_temp_path {d}/{n}.tmp/scgi;\n\
               default_type application/octet-stream;\n\
               sendfile on;\n\
               keepalive_requests 100000;\n\
               server {{\n\
                 {listens}\n\
                 root {d}/www;\n\
                 add_header X-Backend {n} always;\n\
                 {rate}\n\
                 location = / {{ return 200 \"{n}\\n\"; }}\n\
                 location = /peer {{ return 200 \"{n} $remote_addr\\n\"; }}\n\
                 location /slow/ {{ alias {d}/www/; limit_rate {SLOW_PATH_RATE}; }}\n\
               }}\n\
             }}\n"
        );
        fs::create_dir_all(self.dir.join(format!("{n}.tmp")))?;
        let path = self.dir.join(format!("{n}.nginx.conf"));
        fs::write(&path, conf)?;
        let path = path.to_str().context("lab path is UTF-8")?;
        let child = Command::new("ip")
            .args(["netns", "exec", &host.ns, "nginx", "-c", path])
            .args(["-e", &format!("{d}/{n}.error.log")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx (is it installed? `cargo xtask setup`)")?;
        self.servers.push((host.name.clone(), child));
        Ok(())
    }

    fn backend(&self, name: &str) -> Result<Host> {
        self.backends
            .iter()
            .find(|b| b.name == name)
            .cloned()
            .with_context(|| format!("no backend {name} in lab {}", self.id))
    }

    /// Kills backend `name`'s nginx with SIGKILL (master and workers), as a
    /// crash would, and reaps it.
    pub fn kill_backend(&mut self, name: &str) -> Result<()> {
        let host = self.backend(name)?;
        let pids = run(&["ip", "netns", "pids", &host.ns])?;
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if let Some(i) = self.servers.iter().position(|(n, _)| n == name) {
            let (_, mut child) = self.servers.remove(i);
            child.wait()?;
        }
        Ok(())
    }

    /// Starts backend `name`'s nginx again and waits until it answers.
    pub fn start_backend(&mut self, name: &str) -> Result<()> {
        let host = self.backend(name)?;
        self.start_nginx(&host, &[80])?;
        let url = format!("http://{}/", host.addr);
        wait_for(&format!("nginx on {name}"), Duration::from_secs(10), || {
            Ok(self.curl(&url)?.trim() == name)
        })
    }

    /// Starts a long-running server in `ns`; the lab stops it on cleanup.
    pub fn start_server(&mut self, ns: &str, name: &str, args: &[&str]) -> Result<()> {
        let log = fs::File::create(self.dir.join(format!("{name}.log")))?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {args:?}"))?;
        self.servers.push((name.to_owned(), child));
        Ok(())
    }

    /// Stops a server started with `start_server` (SIGTERM, then SIGKILL).
    pub fn stop_server(&mut self, name: &str) -> Result<()> {
        if let Some(i) = self.servers.iter().position(|(n, _)| n == name) {
            let (_, mut child) = self.servers.remove(i);
            terminate(&mut child, Duration::from_secs(5))?;
        }
        Ok(())
    }

    /// Runs the `foobar` CLI on the LB node against this lab's daemon.
    pub fn foobar_cli(&self, foobar: &Path, args: &[&str]) -> Result<Output> {
        self.foobar_cli_on(Node::Lb1, foobar, args)
    }

    /// Runs the `foobar` CLI on LB node `node` against its daemon.
    pub fn foobar_cli_on(&self, node: Node, foobar: &Path, args: &[&str]) -> Result<Output> {
        let socket = self.socket_of(node);
        let mut full = vec![
            foobar.to_str().context("foobar path is UTF-8")?,
            "--socket",
            socket.to_str().context("lab path is UTF-8")?,
        ];
        full.extend_from_slice(args);
        self.output(&self.node(node)?.ns, &full)
    }

    /// LB node `node`'s host (an error for `Lb2` in a one-LB lab).
    pub fn node(&self, node: Node) -> Result<&Host> {
        match node {
            Node::Lb1 => Ok(&self.lb),
            Node::Lb2 => self
                .lb2
                .as_ref()
                .with_context(|| format!("lab {} has no second LB node", self.id)),
        }
    }

    /// LB node `node`'s `--pin-root` (`pin_root` for the first).
    pub fn pin_root_of(&self, node: Node) -> PathBuf {
        match node {
            Node::Lb1 => self.pin_root.clone(),
            Node::Lb2 => self.pin_root.with_file_name(format!("{}-lb2", self.id)),
        }
    }

    /// Starts wrk on the client against `url` in the background.
    pub fn start_wrk(&self, url: &str, connections: u32, seconds: u32) -> Result<Child> {
        Command::new("ip")
            .args(["netns", "exec", &self.client.ns, "wrk", "-t", "2"])
            .args([
                "-c",
                &connections.to_string(),
                "-d",
                &format!("{seconds}s"),
                url,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting wrk (is it installed? `cargo xtask setup`)")
    }

    /// Runs a command in a namespace; fails with its stderr if it fails.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Result<String> {
        let mut full = vec!["ip", "netns", "exec", ns];
        full.extend_from_slice(args);
        run(&full)
    }

    /// Runs a command in a namespace and returns its whole output, whatever
    /// its exit status.
    pub fn output(&self, ns: &str, args: &[&str]) -> Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {args:?} in {ns}"))
    }

    /// GET `url` from the client (2 s limit); the body.
    pub fn curl(&self, url: &str) -> Result<String> {
        self.exec(&self.client.ns, &["curl", "-sS", "--max-time", "2", url])
    }

    /// A TCP connection from the client's namespace to `to` (2 s connect
    /// limit), for tests that hold one open and decide when it talks. The
    /// socket stays in the client's namespace wherever it is used.
    pub fn connect_from_client(&self, to: SocketAddr) -> Result<TcpStream> {
        let path = format!("/var/run/netns/{}", self.client.ns);
        std::thread::spawn(move || -> Result<TcpStream> {
            let file = fs::File::open(&path).with_context(|| format!("opening {path}"))?;
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("entering {path}"))?;
            TcpStream::connect_timeout(&to, Duration::from_secs(2))
                .with_context(|| format!("connecting to {to} from the client"))
        })
        .join()
        .map_err(|_| anyhow!("the thread connecting from the client panicked"))?
    }

    /// The control socket of this lab's foobar.
    pub fn socket(&self) -> PathBuf {
        self.socket_of(Node::Lb1)
    }

    /// The control socket of LB node `node`'s foobar.
    pub fn socket_of(&self, node: Node) -> PathBuf {
        self.dir.join(format!("{}.sock", node.stem()))
    }

    /// A config for this lab: one VIP on port 80 over every backend, HTTP
    /// health checks every 300 ms (fall 2, rise 2), the control socket in
    /// the lab directory and metrics on the LB node's 127.0.0.1:9183.
    pub fn config(&self) -> String {
        self.config_on(Node::Lb1)
    }

    /// `config()` for LB node `node` (its own control socket).
    pub fn config_on(&self, node: Node) -> String {
        let arm = if self.two_arm {
            format!("backend_interface = \"{LB_BACKEND_IFACE}\"\n")
        } else {
            String::new()
        };
        let mut text = format!(
            "[datapath]\ninterface = \"{LB_IFACE}\"\n{arm}xdp_mode = \"native\"\n\n\
             [api]\nsocket = \"{}\"\n\n[metrics]\nlisten = \"127.0.0.1:9183\"\n\n\
             [[vip]]\nname = \"web\"\naddress = \"{VIP}\"\nport = 80\nprotocol = \"tcp\"\n\
             scheduler = \"rr\"\nforwarding = \"dsr\"\n\
             [vip.health]\ncheck = \"http\"\nhttp_path = \"/\"\ninterval_ms = {HEALTH_INTERVAL_MS}\n\
             timeout_ms = 250\nrise = 2\nfall = 2\n",
            self.socket_of(node).display()
        );
        for b in &self.backends {
            text.push_str(&format!("\n[[vip.backend]]\naddress = \"{}\"\n", b.addr));
        }
        text
    }

    /// `config()` with only the first `n` backends configured.
    pub fn config_with_backends(&self, n: usize) -> String {
        let mut text = self.config();
        for b in self.backends.iter().skip(n) {
            text = text.replace(
                &format!("\n[[vip.backend]]\naddress = \"{}\"\n", b.addr),
                "",
            );
        }
        text
    }

    /// Starts `foobar run` on the LB node with `config` and waits until its
    /// program is attached. Its stdout and log go to the lab directory (the
    /// log is appended to: a restarted daemon's follows the earlier one's).
    pub fn start_foobar(&mut self, foobar: &Path, config: &str) -> Result<()> {
        self.start_foobar_on(Node::Lb1, foobar, config)
    }

    /// `start_foobar` on LB node `node` (files `foobar-lb2.*` for `Lb2`,
    /// pins under `pin_root_of(node)`).
    pub fn start_foobar_on(&mut self, node: Node, foobar: &Path, config: &str) -> Result<()> {
        if self.foobar[node.index()].is_some() {
            bail!("foobar is already running on {node:?} in lab {}", self.id);
        }
        let ns = self.node(node)?.ns.clone();
        let stem = node.stem();
        let conf = self.dir.join(format!("{stem}.toml"));
        fs::write(&conf, config)?;
        let out = fs::File::create(self.dir.join(format!("{stem}.out")))?;
        let log_path = self.dir.join(format!("{stem}.log"));
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let log_start = fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0) as usize;
        // nsenter --net: the lab's network, the host's mount namespace (and
        // so the host's bpffs, where the pins must outlive the daemon).
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{ns}"))
            .arg(foobar)
            .args(["run", "--config"])
            .arg(&conf)
            .env("FOOBAR_PIN_ROOT", self.pin_root_of(node))
            // Per-node state files: foobar.state.json, foobar-lb2.state.json.
            .env("FOOBAR_STATE_DIR", &self.dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", foobar.display()))?;
        let mut child = child;
        let mut exited = None;
        let mut started = wait_for("foobar run", Duration::from_secs(20), || {
            exited = child.try_wait()?;
            // An exited foobar ends the wait at once; it is reported below.
            Ok(exited.is_some()
                || (self.xdp_attached_on(node)?
                    && self
                        .foobar_log_of(node)
                        .get(log_start..)
                        .is_some_and(|l| l.contains("attached; forwarding"))))
        });
        if let Some(status) = exited {
            started = Err(anyhow!("foobar exited with {status}"));
        }
        match started {
            Ok(()) => {
                self.foobar[node.index()] = Some(child);
                Ok(())
            }
            Err(e) => {
                let _ = terminate(&mut child, Duration::from_secs(10));
                Err(e.context(format!("foobar log:\n{}", self.foobar_log_of(node))))
            }
        }
    }

    /// Sends SIGTERM to foobar and waits for it (10 s, then SIGKILL).
    /// Returns whether it exited successfully and what it printed. The
    /// datapath stays attached and pinned (see `detach_foobar`).
    pub fn stop_foobar(&mut self) -> Result<(bool, String)> {
        self.stop_foobar_on(Node::Lb1)
    }

    /// `stop_foobar` on LB node `node`.
    pub fn stop_foobar_on(&mut self, node: Node) -> Result<(bool, String)> {
        let mut child = self.foobar[node.index()]
            .take()
            .with_context(|| format!("foobar is not running on {node:?}"))?;
        let ok = terminate(&mut child, Duration::from_secs(10))?;
        let out =
            fs::read_to_string(self.dir.join(format!("{}.out", node.stem()))).unwrap_or_default();
        Ok((ok, out))
    }

    /// The running daemon's pid (`nsenter` execs it), to signal it.
    pub fn foobar_pid(&self) -> Option<u32> {
        self.foobar_pid_on(Node::Lb1)
    }

    /// The pid of LB node `node`'s running daemon.
    pub fn foobar_pid_on(&self, node: Node) -> Option<u32> {
        self.foobar[node.index()].as_ref().map(Child::id)
    }

    /// SIGTERM, then `foobar detach`: the LB node is back to no XDP program
    /// (what a benchmark needs before measuring another path).
    pub fn stop_and_detach_foobar(&mut self) -> Result<(bool, String)> {
        self.stop_and_detach_foobar_on(Node::Lb1)
    }

    /// `stop_and_detach_foobar` on LB node `node`.
    pub fn stop_and_detach_foobar_on(&mut self, node: Node) -> Result<(bool, String)> {
        let (ok, out) = self.stop_foobar_on(node)?;
        let (detached, text) = self.detach_foobar_on(node, &foobar_bin()?)?;
        if !detached {
            bail!("foobar detach failed on {node:?}: {text}");
        }
        Ok((ok, out))
    }

    /// SIGKILLs foobar (a crash) and reaps it; the datapath stays pinned.
    pub fn kill_foobar(&mut self) -> Result<()> {
        self.kill_foobar_on(Node::Lb1)
    }

    /// `kill_foobar` on LB node `node`.
    pub fn kill_foobar_on(&mut self, node: Node) -> Result<()> {
        let mut child = self.foobar[node.index()]
            .take()
            .with_context(|| format!("foobar is not running on {node:?}"))?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// `foobar detach` for this lab's interface and pin root, run in the
    /// host's mount namespace (where the pins are): (success, output).
    pub fn detach_foobar(&self, foobar: &Path) -> Result<(bool, String)> {
        self.detach_foobar_on(Node::Lb1, foobar)
    }

    /// `detach_foobar` for LB node `node` (its pin root).
    pub fn detach_foobar_on(&self, node: Node, foobar: &Path) -> Result<(bool, String)> {
        let out = Command::new(foobar)
            .arg("--socket")
            .arg(self.socket_of(node))
            .args(["detach", "--iface", LB_IFACE, "--pin-root"])
            .arg(self.pin_root_of(node))
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {} detach", foobar.display()))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.success(), text))
    }

    /// Whether anything is pinned under this lab's pin root.
    pub fn pins_left(&self) -> bool {
        fs::read_dir(&self.pin_root).is_ok_and(|mut d| d.next().is_some())
    }

    pub fn foobar_log(&self) -> String {
        self.foobar_log_of(Node::Lb1)
    }

    /// LB node `node`'s daemon log (every run of it, appended).
    pub fn foobar_log_of(&self, node: Node) -> String {
        let mut s = String::new();
        if let Ok(mut f) = fs::File::open(self.dir.join(format!("{}.log", node.stem()))) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Is any XDP program attached to the LB node's NIC?
    pub fn xdp_attached(&self) -> Result<bool> {
        self.xdp_attached_on(Node::Lb1)
    }

    /// Is any XDP program attached to LB node `node`'s NIC?
    pub fn xdp_attached_on(&self, node: Node) -> Result<bool> {
        let link = run(&[
            "ip",
            "-n",
            &self.node(node)?.ns,
            "-d",
            "link",
            "show",
            "dev",
            LB_IFACE,
        ])?;
        Ok(link.contains("prog/xdp") || link.contains(" xdp"))
    }

    /// Writes `size` pseudo-random bytes to `www/NAME` (served by every
    /// backend) and returns its path.
    pub fn make_file(&self, name: &str, size: usize) -> Result<PathBuf> {
        let path = self.dir.join("www").join(name);
        let mut data = vec![0u8; size];
        // xorshift64*: fast, and incompressible enough for a transfer test.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ size as u64;
        for chunk in data.chunks_mut(8) {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let v = x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        fs::write(&path, data)?;
        Ok(path)
    }

    fn cleanup(&mut self) {
        for child in &mut self.foobar {
            if let Some(mut child) = child.take() {
                let _ = terminate(&mut child, Duration::from_secs(10));
            }
        }
        // The daemon leaves its datapath pinned: removing the pins detaches
        // it (the namespace's deletion would too) and frees the maps.
        remove_pins(&self.pin_root);
        remove_pins(&self.pin_root_of(Node::Lb2));
        // nginx masters stop their workers and reap them on SIGTERM.
        for (_, child) in &mut self.servers {
            let _ = terminate(child, Duration::from_secs(3));
        }
        self.servers.clear();
        self.pass.clear();
        for ns in self.namespaces.drain(..).rev() {
            remove_namespace(&ns);
            REGISTRY.lock().unwrap().retain(|n| n != &ns);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Removes every namespace of every lab of this process (for a signal
/// handler: the labs' own drops will not run).
pub fn cleanup_all() {
    let names: Vec<String> = REGISTRY.lock().map(|r| r.clone()).unwrap_or_default();
    for ns in names.iter().rev() {
        remove_namespace(ns);
    }
    let mine = format!("{PREFIX}{}-", std::process::id());
    for dir in [std::env::temp_dir(), PathBuf::from(BPFFS)] {
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&mine) {
                    remove_pins(&e.path());
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
    }
}

/// Removes a lab's pin root, link pins first (so forwarding stops before
/// the maps go).
fn remove_pins(root: &Path) {
    if let Ok(ifaces) = fs::read_dir(root) {
        for iface in ifaces.flatten() {
            let _ = fs::remove_file(iface.path().join("link"));
        }
    }
    let _ = fs::remove_dir_all(root);
}

/// Removes labs left behind by processes that no longer exist (a test run
/// killed with SIGKILL cannot clean up after itself).
pub fn sweep_stale() {
    let Ok(list) = run(&["ip", "netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let ns = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = ns.strip_prefix(PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if !process_alive(pid) {
                remove_namespace(ns);
                // The lab's directory is the namespace name without `-<role>`.
                if let Some((lab, _role)) = ns.rsplit_once('-') {
                    let _ = fs::remove_dir_all(std::env::temp_dir().join(lab));
                }
            }
        }
    }
    // Pin roots of dead processes' labs (their namespaces may be gone).
    if let Ok(entries) = fs::read_dir(BPFFS) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix(PREFIX)
                .and_then(|rest| rest.split('-').next())
                .and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|pid| !process_alive(pid)) {
                remove_pins(&e.path());
            }
        }
    }
}

/// Whether `pid` runs; a zombie does not (an unreaped killed test run
/// stays one when the container's init does not reap).
fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// Kills what still runs in a namespace, then deletes it.
fn remove_namespace(ns: &str) {
    if let Ok(pids) = run(&["ip", "netns", "pids", ns]) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let _ = Command::new("ip")
        .args(["netns", "del", ns])
        .stderr(Stdio::null())
        .status();
}

/// SIGTERM, wait up to `grace`, then SIGKILL; always reaps the child.
fn terminate(child: &mut Child, grace: Duration) -> Result<bool> {
    if let Some(status) = child.try_wait()? {
        return Ok(status.success());
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    // `ip netns exec` execs the command, so the child is the program itself.
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let start = Instant::now();
    while start.elapsed() < grace {
        if let Some(status) = child.try_wait()? {
            return Ok(status.success());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    child.wait()?;
    Ok(false)
}

/// Attaches `foobar_pass` to `iface` inside namespace `ns`, from a thread
/// that enters the namespace (the rest of the process stays where it is).
fn attach_pass_in(ns: &str, iface: &str) -> Result<PassProgram> {
    let path = format!("/var/run/netns/{ns}");
    let iface = iface.to_owned();
    std::thread::spawn(move || -> Result<PassProgram> {
        let file = fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("entering {path}"))?;
        PassProgram::attach(&iface, AttachMode::Native)
            .with_context(|| format!("attaching the XDP_PASS program to {iface}"))
    })
    .join()
    .map_err(|_| anyhow!("the thread attaching the XDP_PASS program panicked"))?
}

/// Polls `ready` every 100 ms until it says true or `limit` passes.
pub fn wait_for(
    what: &str,
    limit: Duration,
    mut ready: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < limit {
        match ready() {
            Ok(true) => return Ok(()),
            Ok(false) => last = None,
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    match last {
        Some(e) => Err(e.context(format!("{what}: not ready after {limit:?}"))),
        None => bail!("{what}: not ready after {limit:?}"),
    }
}

/// What wrk reported.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WrkResult {
    pub requests: u64,
    pub requests_per_s: f64,
    /// Bytes read per second.
    pub transfer_per_s: f64,
    /// connect + read + write + timeout errors.
    pub socket_errors: u64,
    pub non_2xx_3xx: u64,
    pub text: String,
}

/// Waits for a wrk started with `Lab::start_wrk` and parses its summary.
pub fn finish_wrk(child: Child) -> Result<WrkResult> {
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "wrk failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(parse_wrk(&text))
}

/// Parses wrk's text summary.
pub fn parse_wrk(text: &str) -> WrkResult {
    let mut r = WrkResult {
        text: text.to_owned(),
        ..Default::default()
    };
    for line in text.lines().map(str::trim) {
        if line.contains("requests in") {
            r.requests = line
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            r.socket_errors = rest
                .split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum();
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            r.non_2xx_3xx = rest.trim().parse().unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("Requests/sec:") {
            r.requests_per_s = rest.trim().parse().unwrap_or(0.0);
        } else if let Some(rest) = line.strip_prefix("Transfer/sec:") {
            r.transfer_per_s = parse_size(rest.trim());
        }
    }
    r
}

/// wrk's sizes: "123.45MB", "980.12KB", "12B" (binary units).
fn parse_size(text: &str) -> f64 {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (n, unit) = text.split_at(split);
    let scale = match unit {
        "KB" => 1024.0,
        "MB" => 1024.0 * 1024.0,
        "GB" => 1024.0 * 1024.0 * 1024.0,
        _ => 1.0,
    };
    n.parse::<f64>().unwrap_or(0.0) * scale
}

/// Runs a command; its stdout, or an error with its stderr.
pub fn run(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The `foobar` binary to test: $FOOBAR_BIN, or `foobar` next to the
/// running executable's target directory (`cargo xtask test` builds it).
pub fn foobar_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("FOOBAR_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join("foobar");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("no foobar binary found: build it (`cargo build -p foobar-user`) or set FOOBAR_BIN")
}

/// A TCP sink in namespace `ns` on 0.0.0.0:`port`: accepts one connection
/// and returns what it read until EOF (30 s limits).
pub fn sink_in(ns: &str, port: u16) -> std::thread::JoinHandle<anyhow::Result<Vec<u8>>> {
    let path = format!("/var/run/netns/{ns}");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || -> anyhow::Result<Vec<u8>> {
        let file = std::fs::File::open(&path)?;
        nix::sched::setns(
            std::os::fd::AsFd::as_fd(&file),
            nix::sched::CloneFlags::CLONE_NEWNET,
        )?;
        let listener = std::net::TcpListener::bind(("0.0.0.0", port))?;
        listener.set_nonblocking(true)?;
        let _ = ready_tx.send(());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    anyhow::ensure!(
                        std::time::Instant::now() < deadline,
                        "no connection in 30 s"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(e.into()),
            }
        };
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut stream, &mut out)?;
        Ok(out)
    });
    ready_rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("the sink listens");
    handle
}

#[cfg(test)]
mod tests {
    use super::parse_wrk;

    #[test]
    fn wrk_summary_is_parsed() {
        let text = "Running 5s test @ http://10.201.0.100/\n  2 threads and 16 connections\n\
                    \x20 12345 requests in 5.00s, 2.00MB read\n\
                    \x20 Socket errors: connect 1, read 2, write 0, timeout 3\n\
                    \x20 Non-2xx or 3xx responses: 7\nRequests/sec:   2469.00\nTransfer/sec:      1.50MB\n";
        let r = parse_wrk(text);
        assert_eq!((r.requests, r.socket_errors, r.non_2xx_3xx), (12345, 6, 7));
        assert_eq!(r.requests_per_s, 2469.0);
        assert_eq!(r.transfer_per_s, 1.5 * 1024.0 * 1024.0);
        let clean = parse_wrk("  99 requests in 1.00s, 1KB read\n");
        assert_eq!(
            (clean.requests, clean.socket_errors, clean.non_2xx_3xx),
            (99, 0, 0)
        );
    }
}
