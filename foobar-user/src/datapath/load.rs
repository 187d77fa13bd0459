//! Loading the XDP object (its maps pinned and reused, or not), taking its
//! maps, attaching the load balancer to an interface — or taking over the
//! pinned link of an earlier run — and detaching it. The only place that
//! creates programs, maps and links; it writes no map entry.
use aya::{
    maps::{Array, DevMapHash, HashMap, Map, MapData, PerCpuArray},
    programs::{
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId, XdpMode},
        ProgramError, Xdp,
    },
    Ebpf, EbpfLoader,
};

use super::{
    flow_tables::{self, PER_CPU_MAP},
    pin::{PinDir, PINNED_MAPS},
    rings::RingWriter,
    stats::CounterMaps,
    Attached, Datapath, DatapathError, Maps, Result, Written, LB_PROGRAM, OBJECT, PASS_PROGRAM,
};

pub use crate::config::{AttachMode, FlowTableMode};

/// The aya attach flag of an attach mode.
fn xdp_mode(mode: AttachMode) -> XdpMode {
    match mode {
        AttachMode::Native => XdpMode::Driver,
        AttachMode::Skb => XdpMode::Skb,
    }
}

/// Load-time settings of the datapath.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Entries of the flow table: of each CPU's with `FlowTableMode::PerCpu`.
    pub flow_table_size: u32,
    /// One flow table for all CPUs, or one per CPU (`datapath.flow_table`).
    pub flow_table: FlowTableMode,
    /// Entries of the source-affinity table (1 when no VIP uses it: a map
    /// cannot have 0).
    pub affinity_table_size: u32,
    /// Seed of the Maglev flow hash (a global of the program).
    pub hash_seed: u32,
    /// MAC of the interface the program serves: only frames addressed to it
    /// are handled, and it is the source MAC of every frame sent.
    pub lb_mac: [u8; 6],
    /// The `ipip` outer source (`datapath.ipip_source`): address and prefix
    /// length; the host bits of a prefix come from the flow. None: no
    /// `ipip` VIP may be served (the outer source would be 0.0.0.0).
    pub ipip_source: Option<(std::net::Ipv4Addr, u8)>,
    /// The IPv6 `ipip` outer source (`datapath.ipip_source6`), as
    /// `ipip_source`.
    pub ipip_source6: Option<(std::net::Ipv6Addr, u8)>,
    /// The interface's MTU: `ipip` packets that would exceed it once
    /// encapsulated get ICMP frag-needed (DF) or are dropped.
    pub mtu: u32,
    /// VRIDs whose VRRP virtual MAC (00:00:5e:00:01:VRID, `use_vmac`) is
    /// served as well as `lb_mac`.
    pub vmac_vrids: Vec<u8>,
    /// Whether the program looks for `dnat` replies (the `DNAT_REPLIES`
    /// global): true when a dnat VIP is configured at start. Off, the pass
    /// path skips the check and `apply` refuses a plan with a dnat VIP.
    pub dnat_replies: bool,
    /// Index of the (client-side) interface the program serves; needed
    /// two-arm only (replies are redirected to it).
    pub lb_ifindex: u32,
    /// Two-arm (docs/TOPOLOGY.md): the backend-side interface. None:
    /// one-arm, every frame leaves with XDP_TX.
    pub arm: Option<Arm>,
}

/// The backend-side interface of a two-arm node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arm {
    pub ifindex: u32,
    pub mac: [u8; 6],
}

/// The `VMAC_VRIDS` global: bit `vrid % 64` of word `vrid / 64`.
pub fn vmac_bitmap(vrids: &[u8]) -> [u64; 4] {
    let mut words = [0u64; 4];
    for &v in vrids {
        words[usize::from(v >> 6)] |= 1 << (v & 63);
    }
    words
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            flow_table_size: foobar_common::FLOW_TABLE_DEFAULT,
            flow_table: FlowTableMode::Shared,
            affinity_table_size: 1,
            hash_seed: 0,
            lb_mac: [0; 6],
            ipip_source: None,
            ipip_source6: None,
            mtu: 1500,
            vmac_vrids: Vec::new(),
            dnat_replies: false,
            lb_ifindex: 0,
            arm: None,
        }
    }
}

/// The `ipip` outer source as the program's globals: the network part and
/// the host-bit mask, both as the packet holds them (network order).
pub fn ipip_source_globals(source: Option<(std::net::Ipv4Addr, u8)>) -> (u32, u32) {
    let Some((addr, len)) = source else {
        return (0, 0);
    };
    let host = u32::MAX.checked_shr(u32::from(len)).unwrap_or(0);
    ((u32::from(addr) & !host).to_be(), host.to_be())
}

/// The IPv6 `ipip` outer source as the program's globals: the network
/// part (four words as the packet holds them) and the host-bit mask of its
/// last word (the flow hash fills at most 32 host bits; docs/IPV6.md).
pub fn ipip_source6_globals(source: Option<(std::net::Ipv6Addr, u8)>) -> ([u32; 4], u32) {
    let Some((addr, len)) = source else {
        return ([0; 4], 0);
    };
    let host = u128::MAX.checked_shr(u32::from(len)).unwrap_or(0);
    let net = (u128::from(addr) & !host).to_be_bytes();
    let words = std::array::from_fn(|i| {
        u32::from_ne_bytes(net[4 * i..4 * i + 4].try_into().expect("4 bytes"))
    });
    (words, (host as u32).to_be())
}

impl Datapath {
    /// Loads the object and both programs into the kernel (nothing is
    /// attached yet, nothing forwards). Nothing is pinned: dropping the
    /// datapath detaches it.
    pub fn load(opts: &LoadOptions) -> Result<Self> {
        Datapath::load_with(opts, None)
    }

    /// As `load`, with every map pinned under `pins` (see the `pin`
    /// module): maps pinned there already, by an earlier run on the same
    /// interface, are reused with their entries — flows, affinity,
    /// counters, VIPs, backends and rings — and `adopted` says so. The
    /// flow and affinity tables keep their pinned sizes.
    pub fn load_pinned(opts: &LoadOptions, pins: PinDir) -> Result<Self> {
        Datapath::load_with(opts, Some(pins))
    }

    fn load_with(opts: &LoadOptions, pins: Option<PinDir>) -> Result<Self> {
        let (adopted, pin_lock) = match &pins {
            Some(p) => {
                let (adopted, lock) = p.prepare()?;
                (adopted, Some(lock))
            }
            None => (false, None),
        };
        let (ipip_src_be, ipip_host_mask_be) = ipip_source_globals(opts.ipip_source);
        let (ipip6_src_be, ipip6_host_mask_be) = ipip_source6_globals(opts.ipip_source6);
        let vmac_vrids = vmac_bitmap(&opts.vmac_vrids);
        let dnat_replies = u8::from(opts.dnat_replies);
        let arm = opts.arm.unwrap_or(Arm {
            ifindex: 0,
            mac: [0; 6],
        });
        let flow_table = flow_table_mode(opts.flow_table, pins.as_ref().filter(|_| adopted));
        let per_cpu = flow_table == FlowTableMode::PerCpu;
        let per_cpu_global = u8::from(per_cpu);
        // The table of the other mode is made as small as a map can be.
        let (shared_size, cpus) = match flow_table {
            FlowTableMode::Shared => (opts.flow_table_size, 1),
            FlowTableMode::PerCpu => (1, flow_tables::possible_cpus()?),
        };
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries("FLOWS", shared_size)
            .map_max_entries("FLOWS6", opts.flow_table_size)
            .map_max_entries(PER_CPU_MAP, cpus)
            .override_global("FLOW_TABLE_PER_CPU", &per_cpu_global, true)
            .map_max_entries("AFFINITY", opts.affinity_table_size.max(1))
            .map_max_entries("NAT_FLOWS", opts.flow_table_size)
            .map_max_entries("NAT_REVERSE", opts.flow_table_size)
            .override_global("HASH_SEED", &opts.hash_seed, true)
            .override_global("LB_MAC", &opts.lb_mac, true)
            .override_global("IPIP_SRC_BE", &ipip_src_be, true)
            .override_global("IPIP_SRC_HOST_MASK_BE", &ipip_host_mask_be, true)
            .override_global("IPIP6_SRC_BE", &ipip6_src_be, true)
            .override_global("IPIP6_SRC_HOST_MASK_BE", &ipip6_host_mask_be, true)
            .override_global("IFACE_MTU", &opts.mtu, true)
            .override_global("VMAC_VRIDS", &vmac_vrids, true)
            .override_global("DNAT_REPLIES", &dnat_replies, true)
            .override_global("ARM_IFINDEX", &arm.ifindex, true)
            .override_global("ARM_MAC", &arm.mac, true);
        let paths: Vec<(&'static str, std::path::PathBuf)> = match &pins {
            Some(p) => PINNED_MAPS
                .iter()
                .chain([&PER_CPU_MAP])
                .map(|&n| (n, p.map(n)))
                .collect(),
            None => Vec::new(),
        };
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT)?;
        for name in [LB_PROGRAM, PASS_PROGRAM] {
            xdp_program(&mut ebpf, name)?
                .load()
                .map_err(|source| DatapathError::Program {
                    program: name,
                    source,
                })?;
        }
        super::v6::load_program(&mut ebpf)?;
        let rings = RingWriter::open(xdp_program(&mut ebpf, LB_PROGRAM)?)?;
        if let Some(arm) = opts.arm {
            fill_egress(&mut ebpf, &[opts.lb_ifindex, arm.ifindex])?;
        }
        // Reused flow and affinity tables keep the sizes they were made with.
        let mut flow_table_size = opts.flow_table_size;
        for (name, configured) in [
            ("FLOWS", shared_size),
            ("AFFINITY", opts.affinity_table_size.max(1)),
        ] {
            let size = match ebpf.map(name) {
                Some(Map::LruHashMap(d) | Map::HashMap(d)) => {
                    d.info().map_or(configured, |i| i.max_entries())
                }
                _ => configured,
            };
            if size != configured {
                tracing::warn!(
                    map = name,
                    pinned = size,
                    configured,
                    "an adopted table keeps its size; the configured one takes effect after \
                     `foobar detach` and a start"
                );
            }
            if name == "FLOWS" {
                flow_table_size = size;
            }
        }
        let mut maps = take_maps(&mut ebpf, opts.dnat_replies)?;
        if per_cpu {
            let outer = ebpf.take_map(PER_CPU_MAP).ok_or(DatapathError::Missing {
                what: "array of maps",
                name: PER_CPU_MAP,
            })?;
            let Map::ArrayOfMaps(outer) = outer else {
                return Err(DatapathError::Missing {
                    what: "array of maps",
                    name: PER_CPU_MAP,
                });
            };
            maps.flows = flow_tables::per_cpu_tables(outer, opts.flow_table_size)?;
            // Adopted tables keep their size (CPU 0's says it for all).
            flow_table_size = maps.flows[0]
                .info()
                .map_or(opts.flow_table_size, |i| i.max_entries());
            if flow_table_size != opts.flow_table_size {
                tracing::warn!(
                    map = PER_CPU_MAP,
                    pinned = flow_table_size,
                    configured = opts.flow_table_size,
                    "adopted per-CPU flow tables keep their size; the configured one takes \
                     effect after `foobar detach` and a start"
                );
            }
        }
        let maps6 = super::v6::take(&mut ebpf)?;
        // Adopted maps: generations the earlier run handed out are never
        // handed out again, even by an `apply` without a `resync` first.
        let mut next_vip_gen = 1;
        for id in 0..foobar_common::MAX_VIPS {
            let gen = maps.vip_gens.get(&id, 0).map_or(0, |g| g.gen);
            next_vip_gen = next_vip_gen.max(gen.saturating_add(1));
        }
        Ok(Datapath {
            ebpf,
            maps,
            rings,
            attached: None,
            arm_attached: None,
            pins,
            adopted,
            _pin_lock: pin_lock,
            flow_table_size,
            flow_table,
            written: Written {
                next_vip_gen,
                ..Written::default()
            },
            nat_written: Default::default(),
            maps6,
            written6: Default::default(),
        })
    }

    /// Whether the maps were pinned by an earlier run and reused.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// Attaches the load balancer to `iface`. With pins: a pinned link
    /// there already gets this program in place of the old one, atomically
    /// (BPF_LINK_UPDATE: no packet meets no program); otherwise the new
    /// link is pinned. Returns whether an existing link was taken over.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<bool> {
        let path = self.pins.as_ref().map(PinDir::link);
        let (attached, took_over) = self.attach_at(iface, mode, path)?;
        self.attached = Some(attached);
        Ok(took_over)
    }

    /// Two-arm: attaches the load balancer to the backend-side interface
    /// too (loaded with `LoadOptions::arm` for it), as `attach` does,
    /// with its own pinned link.
    pub fn attach_arm(&mut self, iface: &str, mode: AttachMode) -> Result<bool> {
        let path = self.pins.as_ref().map(PinDir::arm_link);
        let (attached, took_over) = self.attach_at(iface, mode, path)?;
        self.arm_attached = Some(attached);
        Ok(took_over)
    }

    /// Attaches to `iface`, with its link pinned at `path` (taken over if
    /// pinned there already) or owned by this process (no path).
    fn attach_at(
        &mut self,
        iface: &str,
        mode: AttachMode,
        path: Option<std::path::PathBuf>,
    ) -> Result<(Attached, bool)> {
        let Some(path) = path else {
            let link = attach_program(&mut self.ebpf, LB_PROGRAM, iface, mode)?;
            return Ok((Attached::Owned(link), false));
        };
        let link_error = |source| DatapathError::Link {
            path: path.clone(),
            source,
        };
        let prog = xdp_program(&mut self.ebpf, LB_PROGRAM)?;
        let program_error = |source| DatapathError::Program {
            program: LB_PROGRAM,
            source,
        };
        let mut took_over = None;
        if path.exists() {
            let fd_link: FdLink = PinnedLink::from_pin(&path).map_err(link_error)?.into();
            let link = XdpLink::try_from(fd_link).map_err(link_error)?;
            match prog.attach_to_link(link) {
                Ok(id) => took_over = Some(id),
                // A link whose interface went away cannot be updated.
                Err(err) => {
                    tracing::warn!(link = %path.display(), %err, "the pinned link cannot be taken over; attaching anew");
                    std::fs::remove_file(&path).map_err(|source| DatapathError::Pin {
                        path: path.clone(),
                        source,
                    })?;
                }
            }
        }
        let adopted_link = took_over.is_some();
        let id = match took_over {
            Some(id) => id,
            None => prog
                .attach(iface, xdp_mode(mode))
                .map_err(|source| classify_attach_error(iface, mode, source))?,
        };
        let link = prog.take_link(id).map_err(program_error)?;
        let fd_link = FdLink::try_from(link).map_err(link_error)?;
        let fd_link = if adopted_link {
            fd_link
        } else {
            fd_link
                .pin(&path)
                .map_err(|e| DatapathError::Pin {
                    path: path.clone(),
                    source: std::io::Error::other(e),
                })?
                .into()
        };
        Ok((Attached::Pinned(fd_link), adopted_link))
    }

    /// Detaches the load balancer and removes its pins, if any: forwarding
    /// stops. Dropping a pinned `Datapath` keeps it forwarding (that is
    /// the point of the pins); dropping an unpinned one detaches it too.
    pub fn detach(&mut self) -> Result<()> {
        if let Some(Attached::Owned(link)) = self.arm_attached.take() {
            xdp_program(&mut self.ebpf, LB_PROGRAM)?
                .detach(link)
                .map_err(|source| DatapathError::Program {
                    program: LB_PROGRAM,
                    source,
                })?;
        }
        match self.attached.take() {
            Some(Attached::Owned(link)) => {
                xdp_program(&mut self.ebpf, LB_PROGRAM)?
                    .detach(link)
                    .map_err(|source| DatapathError::Program {
                        program: LB_PROGRAM,
                        source,
                    })?;
            }
            // Closing the last descriptor of an unpinned link detaches it.
            Some(Attached::Pinned(link)) => {
                if let Some(pins) = &self.pins {
                    pins.remove()?;
                }
                drop(link);
            }
            None => {
                if let Some(pins) = &self.pins {
                    pins.remove()?;
                }
            }
        }
        Ok(())
    }
}

/// Puts the interfaces `ifindexes` in the EGRESS devmap (key: interface
/// index), so the program can redirect frames to them. Not pinned: every
/// start writes the interfaces it serves.
fn fill_egress(ebpf: &mut Ebpf, ifindexes: &[u32]) -> Result<()> {
    const NAME: &str = "EGRESS";
    let map = ebpf.map_mut(NAME).ok_or(DatapathError::Missing {
        what: "map",
        name: NAME,
    })?;
    let mut egress =
        DevMapHash::try_from(map).map_err(|source| DatapathError::Map { map: NAME, source })?;
    for &ifindex in ifindexes {
        egress
            .insert(ifindex, ifindex, None, 0)
            .map_err(|source| DatapathError::Egress { ifindex, source })?;
    }
    Ok(())
}

/// The flow table mode this run uses: the pinned one when adopting (the
/// flows stay where they are), else the configured one.
fn flow_table_mode(configured: FlowTableMode, adopting: Option<&PinDir>) -> FlowTableMode {
    let Some(pinned) = adopting.and_then(flow_tables::pinned_mode) else {
        return configured;
    };
    if pinned != configured {
        tracing::warn!(
            pinned = pinned.name(),
            configured = configured.name(),
            "the adopted flow table keeps its mode (datapath.flow_table) and its flows; the \
             configured one takes effect after `foobar detach` and a start"
        );
    }
    pinned
}

/// Takes the maps userspace writes or reads out of the object, typed, once
/// (the programs keep their own references to them).
fn take_maps(ebpf: &mut Ebpf, dnat_replies: bool) -> Result<Maps> {
    fn take<T: TryFrom<Map, Error = aya::maps::MapError>>(
        ebpf: &mut Ebpf,
        name: &'static str,
    ) -> Result<T> {
        let map = ebpf
            .take_map(name)
            .ok_or(DatapathError::Missing { what: "map", name })?;
        T::try_from(map).map_err(|source| DatapathError::Map { map: name, source })
    }
    let flows = match ebpf.take_map("FLOWS") {
        Some(Map::LruHashMap(data) | Map::HashMap(data)) => data,
        _ => {
            return Err(DatapathError::Missing {
                what: "hash map",
                name: "FLOWS",
            })
        }
    };
    Ok(Maps {
        backends: take::<Array<MapData, _>>(ebpf, "BACKENDS")?,
        vips: take::<HashMap<MapData, _, _>>(ebpf, "VIPS")?,
        vip_gens: take::<Array<MapData, _>>(ebpf, "VIP_GEN")?,
        vip_addrs4: take::<HashMap<MapData, _, _>>(ebpf, "VIP_ADDRS4")?,
        vip_addr_bits: take::<Array<MapData, _>>(ebpf, "VIP_ADDR_BITS")?,
        affinity: take::<HashMap<MapData, _, _>>(ebpf, "AFFINITY")?,
        flows: vec![flows],
        counters: CounterMaps {
            reasons: take::<PerCpuArray<MapData, _>>(ebpf, "REASONS")?,
            events: take::<PerCpuArray<MapData, _>>(ebpf, "EVENTS")?,
            vips: take::<PerCpuArray<MapData, _>>(ebpf, "VIP_STATS")?,
            backends: take::<PerCpuArray<MapData, _>>(ebpf, "BACKEND_STATS")?,
            new_flows: take::<PerCpuArray<MapData, _>>(ebpf, "BACKEND_NEW_FLOWS")?,
        },
        nat: super::nat::take(ebpf)?,
        dnat: super::dnat::take(ebpf, dnat_replies)?,
    })
}

impl Drop for Datapath {
    fn drop(&mut self) {
        // A pinned link stays attached: only an unpinned one goes.
        if matches!(self.attached, Some(Attached::Owned(_)))
            || matches!(self.arm_attached, Some(Attached::Owned(_)))
        {
            if let Err(err) = self.detach() {
                tracing::error!(%err, "detaching the XDP program failed");
            }
        }
    }
}

/// The `foobar_pass` program of a loaded object, attached on its own: the
/// lab puts it on the peer of the LB's veth. Dropping it detaches it.
pub struct PassProgram {
    _ebpf: Ebpf,
}

impl PassProgram {
    pub fn attach(iface: &str, mode: AttachMode) -> Result<Self> {
        let mut ebpf = EbpfLoader::new()
            // The pass program uses no map; keep the big tables tiny.
            .map_max_entries("FLOWS", 1)
            .map_max_entries("AFFINITY", 1)
            .load(OBJECT)?;
        xdp_program(&mut ebpf, PASS_PROGRAM)?
            .load()
            .map_err(|source| DatapathError::Program {
                program: PASS_PROGRAM,
                source,
            })?;
        attach_program(&mut ebpf, PASS_PROGRAM, iface, mode)?;
        Ok(PassProgram { _ebpf: ebpf })
    }
}

pub(super) fn xdp_program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp> {
    let prog = ebpf.program_mut(name).ok_or(DatapathError::Missing {
        what: "program",
        name,
    })?;
    prog.try_into().map_err(|source| DatapathError::Program {
        program: name,
        source,
    })
}

fn attach_program(
    ebpf: &mut Ebpf,
    name: &'static str,
    iface: &str,
    mode: AttachMode,
) -> Result<XdpLinkId> {
    let prog = xdp_program(ebpf, name)?;
    prog.attach(iface, xdp_mode(mode))
        .map_err(|source| classify_attach_error(iface, mode, source))
}

fn classify_attach_error(iface: &str, mode: AttachMode, source: ProgramError) -> DatapathError {
    let errno = match &source {
        ProgramError::UnknownInterface { .. } => {
            return DatapathError::UnknownInterface {
                iface: iface.to_owned(),
            }
        }
        ProgramError::SyscallError(e) => e.io_error.raw_os_error(),
        other => io_errno_in(&other.to_string()),
    };
    match errno {
        Some(libc::EOPNOTSUPP) => DatapathError::ModeUnsupported {
            iface: iface.to_owned(),
            mode: mode.name(),
        },
        Some(libc::EBUSY) | Some(libc::EEXIST) => DatapathError::Busy {
            iface: iface.to_owned(),
        },
        _ => DatapathError::Attach {
            iface: iface.to_owned(),
            mode: mode.name(),
            source,
        },
    }
}

/// The netlink fallback reports errors as text ("... (os error 95)").
fn io_errno_in(text: &str) -> Option<i32> {
    let start = text.rfind("os error ")? + "os error ".len();
    text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::{io_errno_in, vmac_bitmap};

    #[test]
    fn vmac_bitmap_sets_one_bit_per_vrid() {
        assert_eq!(vmac_bitmap(&[]), [0; 4]);
        assert_eq!(
            vmac_bitmap(&[1, 63, 64, 200, 255, 1]),
            [(1 << 1) | (1 << 63), 1, 0, (1 << (200 - 192)) | (1 << 63)]
        );
    }

    #[test]
    fn errno_is_read_from_netlink_error_text() {
        assert_eq!(
            io_errno_in("netlink error: Operation not supported (os error 95)"),
            Some(95)
        );
        assert_eq!(io_errno_in("no number here"), None);
    }
}
