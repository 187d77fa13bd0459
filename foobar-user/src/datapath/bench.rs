//! The per-packet benchmark harness (foobar-ebpf's `foobar-bench` object):
//! BPF_PROG_TEST_RUN with `repeat` on `harness`, which restores what the
//! program under test changed in the frame (`Restore`; new flows: also a
//! 5-tuple never seen before) and tail-calls it. Used by `cargo xtask bench`
//! only.
use aya::{
    maps::{Array, MapData, ProgramArray},
    programs::{ProgramFd, TestRun as _, TestRunOptions, Xdp},
    Ebpf, EbpfLoader,
};

use super::{DatapathError, Result};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/foobar-bench"));

/// Every benchmark frame is this long.
pub const FRAME_LEN: usize = 128;

/// What the harness restores before each iteration (its MODE values): only
/// what the program under test changes, so its own cost stays small.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restore {
    /// Nothing: the program leaves the frame as it was (the pass path).
    Nothing = 0,
    /// The 12 MAC bytes a DSR forward rewrites.
    Macs = 1,
    /// The MACs, and a source address and port never seen before (the
    /// CPU's number is part of the address, so CPUs never share a 5-tuple).
    NewFlow = 2,
    /// The Ethernet, IPv4 and TCP headers: everything a NAT rewrite
    /// changes (addresses, ports, both checksums, MACs).
    Headers = 3,
    /// The headers, and a new 5-tuple as with `NewFlow`.
    HeadersNewFlow = 4,
    /// Strip what an `ipip` encapsulation added in front of the frame
    /// (bpf_xdp_adjust_head, called even when nothing was added, so the
    /// variant's measured cost is what it adds), then the Ethernet header.
    Decap = 5,
    /// `Decap`, and a new 5-tuple as with `NewFlow`.
    DecapNewFlow = 6,
}

pub struct Harness {
    ebpf: Ebpf,
}

/// One measurement: the XDP action of the last iteration and the mean cost
/// of one iteration as the kernel timed it.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub action: u32,
    pub ns_per_packet: f64,
}

impl Harness {
    pub fn load() -> Result<Self> {
        let mut ebpf = EbpfLoader::new().load(OBJECT)?;
        for name in ["harness", "xdp_tx", "forwarder"] {
            program(&mut ebpf, name)?
                .load()
                .map_err(|source| DatapathError::Program {
                    program: "bench",
                    source,
                })?;
        }
        Ok(Harness { ebpf })
    }

    /// The trivial XDP_TX program's fd: the target that measures the
    /// harness's own cost.
    pub fn floor_fd(&mut self) -> Result<ProgramFd> {
        let fd =
            program(&mut self.ebpf, "xdp_tx")?
                .fd()
                .map_err(|source| DatapathError::Program {
                    program: "xdp_tx",
                    source,
                })?;
        fd.try_clone().map_err(|e| DatapathError::Program {
            program: "xdp_tx",
            source: e.into(),
        })
    }

    /// The minimal forwarder's fd (a MAC rewrite to one fixed backend,
    /// nothing else): the ceiling for any XDP balancer's forward.
    pub fn forwarder_fd(&mut self) -> Result<ProgramFd> {
        let fd = program(&mut self.ebpf, "forwarder")?
            .fd()
            .map_err(|source| DatapathError::Program {
                program: "forwarder",
                source,
            })?;
        fd.try_clone().map_err(|e| DatapathError::Program {
            program: "forwarder",
            source: e.into(),
        })
    }

    /// The floor: `xdp_tx` alone, `repeat` times on `frame`.
    pub fn floor(&mut self, frame: &[u8; FRAME_LEN], repeat: u32) -> Result<Sample> {
        run(program(&mut self.ebpf, "xdp_tx")?, frame, repeat)
    }

    /// Points the harness at `target` with `frame` and `restore`, without
    /// running it (for callers that run `harness_fd` themselves, e.g. on
    /// several CPUs at once).
    pub fn prepare(
        &mut self,
        target: &ProgramFd,
        frame: &[u8; FRAME_LEN],
        restore: Restore,
    ) -> Result<()> {
        let map_err = |map: &'static str| move |source| DatapathError::Map { map, source };
        let mut targets: ProgramArray<&mut MapData> = self
            .ebpf
            .map_mut("TARGET")
            .ok_or(DatapathError::Missing {
                what: "map",
                name: "TARGET",
            })?
            .try_into()
            .map_err(map_err("TARGET"))?;
        targets.set(0, target, 0).map_err(map_err("TARGET"))?;
        let mut template: Array<&mut MapData, [u8; FRAME_LEN]> = self
            .ebpf
            .map_mut("TEMPLATE")
            .ok_or(DatapathError::Missing {
                what: "map",
                name: "TEMPLATE",
            })?
            .try_into()
            .map_err(map_err("TEMPLATE"))?;
        template.set(0, frame, 0).map_err(map_err("TEMPLATE"))?;
        let mut mode: Array<&mut MapData, u32> = self
            .ebpf
            .map_mut("MODE")
            .ok_or(DatapathError::Missing {
                what: "map",
                name: "MODE",
            })?
            .try_into()
            .map_err(map_err("MODE"))?;
        mode.set(0, restore as u32, 0).map_err(map_err("MODE"))?;
        Ok(())
    }

    /// `target` behind the harness, `repeat` times, restoring `restore`.
    pub fn run(
        &mut self,
        target: &ProgramFd,
        frame: &[u8; FRAME_LEN],
        restore: Restore,
        repeat: u32,
    ) -> Result<Sample> {
        self.prepare(target, frame, restore)?;
        run(program(&mut self.ebpf, "harness")?, frame, repeat)
    }

    /// The harness program's fd.
    pub fn harness_fd(&mut self) -> Result<ProgramFd> {
        let fd =
            program(&mut self.ebpf, "harness")?
                .fd()
                .map_err(|source| DatapathError::Program {
                    program: "harness",
                    source,
                })?;
        fd.try_clone().map_err(|e| DatapathError::Program {
            program: "harness",
            source: e.into(),
        })
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp> {
    ebpf.program_mut(name)
        .ok_or(DatapathError::Missing {
            what: "program",
            name,
        })?
        .try_into()
        .map_err(|source| DatapathError::Program {
            program: name,
            source,
        })
}

fn run(prog: &mut Xdp, frame: &[u8; FRAME_LEN], repeat: u32) -> Result<Sample> {
    let mut out = vec![0u8; FRAME_LEN + 256];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.data_out = Some(&mut out);
    opts.repeat = repeat;
    let r = prog
        .test_run(opts)
        .map_err(|source| DatapathError::Program {
            program: "bench",
            source,
        })?;
    Ok(Sample {
        action: r.return_value,
        ns_per_packet: r.duration.as_nanos() as f64,
    })
}
