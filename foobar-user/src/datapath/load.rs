//! Loading the XDP object, taking its maps, attaching the load balancer to
//! an interface and detaching it. The only place that creates programs,
//! maps and links; it writes no map entry.
use aya::{
    maps::{Array, HashMap, Map, MapData, PerCpuArray},
    programs::{
        xdp::{XdpLinkId, XdpMode},
        ProgramError, Xdp,
    },
    Ebpf, EbpfLoader,
};

use super::{
    rings::RingWriter, stats::CounterMaps, Datapath, DatapathError, Maps, Result, Written,
    LB_PROGRAM, OBJECT, PASS_PROGRAM,
};

/// Where XDP runs on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// In the driver, before an skb exists (the fast path).
    Native,
    /// Generic XDP in the kernel stack: works on every interface, slower.
    Skb,
}

impl AttachMode {
    pub fn name(self) -> &'static str {
        match self {
            AttachMode::Native => "native",
            AttachMode::Skb => "skb",
        }
    }

    fn xdp_mode(self) -> XdpMode {
        match self {
            AttachMode::Native => XdpMode::Driver,
            AttachMode::Skb => XdpMode::Skb,
        }
    }
}

/// Load-time settings of the datapath.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Entries of the flow table.
    pub flow_table_size: u32,
    /// Entries of the source-affinity table (1 when no VIP uses it: a map
    /// cannot have 0).
    pub affinity_table_size: u32,
    /// Seed of the Maglev flow hash (a global of the program).
    pub hash_seed: u32,
    /// MAC of the interface the program serves: only frames addressed to it
    /// are handled, and it is the source MAC of every frame sent.
    pub lb_mac: [u8; 6],
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            flow_table_size: foobar_common::FLOW_TABLE_DEFAULT,
            affinity_table_size: 1,
            hash_seed: 0,
            lb_mac: [0; 6],
        }
    }
}

impl Datapath {
    /// Loads the object and both programs into the kernel (nothing is
    /// attached yet, nothing forwards).
    pub fn load(opts: &LoadOptions) -> Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("FLOWS", opts.flow_table_size)
            .map_max_entries("AFFINITY", opts.affinity_table_size.max(1))
            .override_global("HASH_SEED", &opts.hash_seed, true)
            .override_global("LB_MAC", &opts.lb_mac, true)
            .load(OBJECT)?;
        for name in [LB_PROGRAM, PASS_PROGRAM] {
            xdp_program(&mut ebpf, name)?
                .load()
                .map_err(|source| DatapathError::Program {
                    program: name,
                    source,
                })?;
        }
        let rings = RingWriter::open(xdp_program(&mut ebpf, LB_PROGRAM)?)?;
        let maps = take_maps(&mut ebpf)?;
        Ok(Datapath {
            ebpf,
            maps,
            rings,
            attached: None,
            flow_table_size: opts.flow_table_size,
            written: Written::default(),
        })
    }

    /// Attaches the load balancer to `iface`.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<()> {
        let link = attach_program(&mut self.ebpf, LB_PROGRAM, iface, mode)?;
        self.attached = Some((iface.to_owned(), link));
        Ok(())
    }

    /// Detaches the load balancer if attached. Dropping the `Datapath` also
    /// detaches (the link's file descriptor closes); this makes it explicit
    /// and reports errors.
    pub fn detach(&mut self) -> Result<()> {
        if let Some((_, link)) = self.attached.take() {
            xdp_program(&mut self.ebpf, LB_PROGRAM)?
                .detach(link)
                .map_err(|source| DatapathError::Program {
                    program: LB_PROGRAM,
                    source,
                })?;
        }
        Ok(())
    }
}

/// Takes the maps userspace writes or reads out of the object, typed, once
/// (the programs keep their own references to them).
fn take_maps(ebpf: &mut Ebpf) -> Result<Maps> {
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
        vip_addrs4: take::<HashMap<MapData, _, _>>(ebpf, "VIP_ADDRS4")?,
        affinity: take::<HashMap<MapData, _, _>>(ebpf, "AFFINITY")?,
        flows,
        counters: CounterMaps {
            reasons: take::<PerCpuArray<MapData, _>>(ebpf, "REASONS")?,
            events: take::<PerCpuArray<MapData, _>>(ebpf, "EVENTS")?,
            vips: take::<PerCpuArray<MapData, _>>(ebpf, "VIP_STATS")?,
            backends: take::<PerCpuArray<MapData, _>>(ebpf, "BACKEND_STATS")?,
        },
    })
}

impl Drop for Datapath {
    fn drop(&mut self) {
        if let Err(err) = self.detach() {
            tracing::error!(%err, "detaching the XDP program failed");
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
    prog.attach(iface, mode.xdp_mode())
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
    use super::io_errno_in;

    #[test]
    fn errno_is_read_from_netlink_error_text() {
        assert_eq!(
            io_errno_in("netlink error: Operation not supported (os error 95)"),
            Some(95)
        );
        assert_eq!(io_errno_in("no number here"), None);
    }
}
