//! The per-packet benchmark harness (foobar-ebpf's `foobar-bench` object):
//! BPF_PROG_TEST_RUN with `repeat` on `harness`, which restores a template
//! frame each iteration (new-flow mode: with a 5-tuple never seen before)
//! and tail-calls the program under test. Used by `cargo xtask bench` only.
use aya::{
    maps::{Array, MapData, ProgramArray},
    programs::{ProgramFd, TestRun as _, TestRunOptions, Xdp},
    Ebpf, EbpfLoader,
};

use super::{DatapathError, Result};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/foobar-bench"));

/// Every benchmark frame is this long (the harness restores exactly this).
pub const FRAME_LEN: usize = 128;

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
        for name in ["harness", "xdp_tx"] {
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

    /// The floor: `xdp_tx` alone, `repeat` times on `frame`.
    pub fn floor(&mut self, frame: &[u8; FRAME_LEN], repeat: u32) -> Result<Sample> {
        run(program(&mut self.ebpf, "xdp_tx")?, frame, repeat)
    }

    /// `target` behind the harness, `repeat` times; `new_flows` gives every
    /// iteration a new source address and port.
    pub fn run(
        &mut self,
        target: &ProgramFd,
        frame: &[u8; FRAME_LEN],
        new_flows: bool,
        repeat: u32,
    ) -> Result<Sample> {
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
        mode.set(0, u32::from(new_flows), 0)
            .map_err(map_err("MODE"))?;
        run(program(&mut self.ebpf, "harness")?, frame, repeat)
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
