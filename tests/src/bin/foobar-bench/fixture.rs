//! The datapath and frames the BPF_PROG_TEST_RUN sections measure: a
//! loaded foobar with one VIP and three backends, FRAME_LEN TCP frames,
//! and a raw BPF_PROG_TEST_RUN that runs on the calling thread's CPU.
//! Nothing here reports.
use anyhow::{ensure, Context as _, Result};
use aya::programs::ProgramFd;
use foobar::{
    config,
    datapath::{bench::FRAME_LEN, Datapath, FlowTableMode, LoadOptions},
    state::{self, State},
};
use foobar_tests::frames::Spec;

pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

pub fn frame(dst: [u8; 4]) -> [u8; FRAME_LEN] {
    frame_with(dst, false)
}

/// A FRAME_LEN TCP frame to `dst`: a SYN (what opens a new flow), or with
/// `ack` a segment of an established flow.
pub fn frame_with(dst: [u8; 4], ack: bool) -> [u8; FRAME_LEN] {
    let header = 14 + 20 + 20;
    let f = Spec {
        dst,
        ack,
        payload: vec![b'x'; FRAME_LEN - header],
        ..Spec::default()
    }
    .build();
    f.try_into().expect("a FRAME_LEN frame")
}

pub fn load(scheduler: &str, flow_table: FlowTableMode) -> Result<Datapath> {
    load_with(
        scheduler,
        LoadOptions {
            flow_table,
            ..LoadOptions::default()
        },
    )
}

pub fn load_with(scheduler: &str, opts: LoadOptions) -> Result<Datapath> {
    load_mode(scheduler, "dsr", opts)
}

/// The bench's SNAT address (`nat`) and `ipip` outer source: the LB's.
pub const LB_ADDR: [u8; 4] = [10, 0, 0, 1];
/// The widest SNAT port range: the most new NAT flows one run can open.
pub const SNAT_PORTS: (u16, u16) = (1024, 65535);

/// The bench VIP (192.0.2.10:80, three backends 10.0.0.11-13 whose MAC
/// ends in the address's last byte) with `scheduler` and `forwarding`
/// (a `forwarding` config value: "dsr", "nat", "ipip", "dnat").
pub fn load_mode(scheduler: &str, forwarding: &str, opts: LoadOptions) -> Result<Datapath> {
    let [a, b, c, d] = LB_ADDR;
    // The bench's frames are addressed to the fixtures' LB MAC.
    let opts = LoadOptions {
        lb_mac: Spec::default().dst_mac,
        ipip_source: Some((std::net::Ipv4Addr::new(a, b, c, d), 32)),
        // A dnat VIP needs the reply check loaded (the program refuses it
        // otherwise), as a daemon started with one loads it.
        dnat_replies: opts.dnat_replies || forwarding == "dnat",
        ..opts
    };
    // A mode's settings only where a VIP uses them: the dsr rows' datapath
    // stays what it was before the other modes' rows existed.
    let nat = match forwarding {
        "nat" => format!(
            "[datapath]\nsnat_address = \"{a}.{b}.{c}.{d}\"\nsnat_ports = \"{}-{}\"\n",
            SNAT_PORTS.0, SNAT_PORTS.1
        ),
        "ipip" => format!("[datapath]\nipip_source = \"{a}.{b}.{c}.{d}/32\"\n"),
        _ => String::new(),
    };
    let text = format!(
        "{nat}[[vip]]\nname = \"web\"\naddress = \"192.0.2.10\"\nport = 80\nforwarding = \"{forwarding}\"\nscheduler = \"{scheduler}\"\n\
         [[vip.backend]]\naddress = \"10.0.0.11\"\n[[vip.backend]]\naddress = \"10.0.0.12\"\n\
         [[vip.backend]]\naddress = \"10.0.0.13\"\n"
    );
    let config = config::parse(&text).map_err(|p| anyhow::anyhow!("{p:?}"))?;
    let saved = state::saved_from_config(&config);
    let macs = saved[0]
        .backends
        .iter()
        .map(|b| {
            let last = match b.address {
                std::net::IpAddr::V4(a) => a.octets()[3],
                std::net::IpAddr::V6(a) => a.octets()[15],
            };
            (b.address, [2, 0, 0, 0, 0, last])
        })
        .collect();
    let st = State::build(&saved, &macs)?;
    let mut dp = Datapath::load(&opts)?;
    dp.apply(&st.plan())?;
    Ok(dp)
}

/// Flow-table size of the "table with room" cases: more than one run's
/// new flows on every CPU, so no insert evicts (the table is reloaded every
/// round; with per-CPU LRU lists each CPU has its share of the entries).
pub const ROOMY_TABLE: u32 = 1 << 21;

pub fn roomy_table(inserts_per_cpu: u32) -> u32 {
    let cpus = nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_CONF)
        .ok()
        .flatten()
        .unwrap_or(2) as u32;
    ROOMY_TABLE.max((inserts_per_cpu + 1).saturating_mul(cpus.max(1)))
}

/// BPF_PROG_TEST_RUN on `prog` (any XDP program fd), `repeat` times, on the
/// calling thread's CPU: the action of the last run and the kernel's mean
/// ns per run. Raw, so that threads pinned to different CPUs can run it at
/// the same time.
pub fn test_run(prog: &ProgramFd, frame: &[u8; FRAME_LEN], repeat: u32) -> Result<(u32, f64)> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    /// The BPF_PROG_TEST_RUN part of `union bpf_attr` (linux/bpf.h).
    #[repr(C)]
    #[derive(Default)]
    struct TestAttr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        _pad: u32,
    }
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    let mut out = [0u8; FRAME_LEN + 256];
    let mut attr = TestAttr {
        prog_fd: prog.as_fd().as_raw_fd() as u32,
        data_size_in: FRAME_LEN as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        ..TestAttr::default()
    };
    // SAFETY: attr is a valid, fully initialised bpf_attr prefix whose
    // pointers outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestAttr,
            std::mem::size_of::<TestAttr>(),
        )
    };
    ensure!(
        rc == 0,
        "BPF_PROG_TEST_RUN: {}",
        std::io::Error::last_os_error()
    );
    Ok((attr.retval, f64::from(attr.duration)))
}

pub fn pin_to_cpu(cpu: usize) -> Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .with_context(|| format!("pinning the bench thread to CPU {cpu}"))
}
