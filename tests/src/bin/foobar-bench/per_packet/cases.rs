//! The rows of the per-packet table: which datapath, frame and harness
//! variant each path runs with, what foobar's counters must show after it
//! (`check`), and the forwarding modes the table covers (`MODES`). Nothing
//! here times anything.
use anyhow::{ensure, Context as _, Result};
use foobar::datapath::{
    bench::{Restore, FRAME_LEN},
    Datapath, FlowTableMode, LoadOptions, Stats,
};
use foobar_common::Reason;
use foobar_tests::frames::Spec;

use crate::fixture::{frame, frame_with, load_mode, roomy_table, XDP_PASS, XDP_TX};

/// A forwarding mode's rows: its config value and the harness variants
/// that undo what its forward changes in the frame.
pub struct Mode {
    /// The VIP's `forwarding` value.
    pub forwarding: &'static str,
    /// What a flow-table hit's forward changes (the harness restores it).
    pub established: Restore,
    /// The same for a new flow, plus a new 5-tuple per packet.
    pub new_flow: Restore,
    /// The LB translates the backends' replies back (a reply row, timed
    /// on a backend's reply to a flow set up beforehand).
    pub reply: bool,
    /// The most new flows one run may open, when the mode bounds them.
    pub new_flows_max: Option<u32>,
    /// Every scheduler and flow-table kind, and the full-table case; the
    /// other modes run rr with the shared table (the mode changes only the
    /// forward step, which the dsr rows' variations do not touch).
    pub all_variations: bool,
}

/// The most new NAT flows of one run: a few per cent of the SNAT ports
/// (fixture::SNAT_PORTS, per backend, 3 backends), so that port probes
/// stay rare and no flow finds its NAT_PORT_PROBES candidates all taken.
const NAT_NEW_FLOWS_MAX: u32 = 50_000;

/// The forwarding modes of the per-packet table, in the table's order.
/// Another mode is one more entry here: its forwarding value, what its
/// forward rewrites (`Restore`: Macs for a MAC rewrite, Headers for an
/// address/port rewrite, Decap for an encapsulation) and whether the LB
/// translates its replies (the reply frame is the forwarded frame turned
/// around, so a mode needs no code of its own for it).
pub const MODES: [Mode; 4] = [
    Mode {
        forwarding: "dsr",
        established: Restore::Macs,
        new_flow: Restore::NewFlow,
        reply: false,
        new_flows_max: None,
        all_variations: true,
    },
    Mode {
        forwarding: "nat",
        established: Restore::Headers,
        new_flow: Restore::HeadersNewFlow,
        reply: true,
        new_flows_max: Some(NAT_NEW_FLOWS_MAX),
        all_variations: false,
    },
    Mode {
        forwarding: "ipip",
        established: Restore::Decap,
        new_flow: Restore::DecapNewFlow,
        reply: false,
        new_flows_max: None,
        all_variations: false,
    },
    // dnat keeps the client's address and port: no port range bounds its
    // new flows (each run's 5-tuples are new, so no reply collides).
    Mode {
        forwarding: "dnat",
        established: Restore::Headers,
        new_flow: Restore::HeadersNewFlow,
        reply: true,
        new_flows_max: None,
        all_variations: false,
    },
];

/// How many flow entries a path leaves behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entries {
    /// Not checked (the pass path).
    Any,
    /// Exactly the one flow the path keeps hitting.
    One,
    /// More than one: every packet a new flow.
    Many,
}

/// One row: a datapath, the frame the harness restores before each
/// iteration, and what the run must show.
pub struct Case {
    pub name: String,
    pub scheduler: &'static str,
    pub forwarding: &'static str,
    pub flow_table: FlowTableMode,
    /// Reload the datapath (an empty flow table) before every round.
    pub fresh: bool,
    pub dp: Datapath,
    pub frame: [u8; FRAME_LEN],
    pub restore: Restore,
    pub action: u32,
    /// The reason counter every iteration must add to.
    pub reason: Reason,
    pub entries: Entries,
    /// Iterations per run (the section's, or fewer where the mode bounds
    /// new flows).
    pub repeat: u32,
    pub samples: Vec<f64>,
}

impl Case {
    /// The datapath a fresh round starts from: a table with room for the
    /// run's new flows.
    pub fn reload(&mut self) -> Result<()> {
        let opts = LoadOptions {
            flow_table_size: roomy_table(self.repeat),
            flow_table: self.flow_table,
            ..LoadOptions::default()
        };
        self.dp = load_mode(self.scheduler, self.forwarding, opts)?;
        Ok(())
    }

    /// Did the run go down the path its name says?
    pub fn check(&self, before: &Stats, after: &Stats) -> Result<()> {
        let delta = |r: Reason| after.reason(r).packets - before.reason(r).packets;
        ensure!(
            delta(self.reason) == u64::from(self.repeat),
            "{}: {} packets counted as {}, expected {}",
            self.name,
            delta(self.reason),
            self.reason.name(),
            self.repeat
        );
        let entries = self.dp.flow_usage(0)?.entries;
        match self.entries {
            Entries::Any => {}
            Entries::One => ensure!(
                entries == 1,
                "{}: a run on one flow left {entries} flow entries",
                self.name
            ),
            Entries::Many => ensure!(
                entries > 1,
                "{}: a new-flow run left {entries} flow entries",
                self.name
            ),
        }
        Ok(())
    }
}

/// Every row: the pass path, then each mode's paths.
pub fn all(repeat: u32) -> Result<Vec<Case>> {
    let vip = frame([192, 0, 2, 10]);
    // Established flows carry ACK segments (a SYN opens a flow: the
    // datapath sends it the new-flow way).
    let vip_ack = frame_with([192, 0, 2, 10], true);
    let other = frame([192, 0, 2, 99]);
    let mut cases = vec![Case {
        name: "pass (not a VIP)".into(),
        scheduler: "rr",
        forwarding: "dsr",
        flow_table: FlowTableMode::Shared,
        fresh: false,
        dp: load_mode("rr", "dsr", LoadOptions::default())?,
        frame: other,
        restore: Restore::Nothing,
        action: XDP_PASS,
        reason: Reason::NotVip,
        entries: Entries::Any,
        repeat,
        samples: Vec::new(),
    }];
    // The pass path of a program loaded with the dnat reply check (a dnat
    // VIP at start): one more bitmap lookup, on the packet's source.
    cases.push(Case {
        name: "pass (not a VIP), dnat reply check loaded (a dnat VIP at start)".into(),
        scheduler: "rr",
        forwarding: "dnat",
        flow_table: FlowTableMode::Shared,
        fresh: false,
        dp: load_mode("rr", "dnat", LoadOptions::default())?,
        frame: other,
        restore: Restore::Nothing,
        action: XDP_PASS,
        reason: Reason::NotVip,
        entries: Entries::Any,
        repeat,
        samples: Vec::new(),
    });
    for mode in &MODES {
        let variations: &[(&str, FlowTableMode)] = if mode.all_variations {
            &[
                ("rr", FlowTableMode::Shared),
                ("maglev", FlowTableMode::Shared),
                ("rr", FlowTableMode::PerCpu),
                ("maglev", FlowTableMode::PerCpu),
            ]
        } else {
            &[("rr", FlowTableMode::Shared)]
        };
        for &(scheduler, flow_table) in variations {
            let new_flows = mode.new_flows_max.map_or(repeat, |max| repeat.min(max));
            let bounded = if new_flows < repeat {
                format!(", {new_flows} per run")
            } else {
                String::new()
            };
            let mut paths = vec![(
                format!("new flow, table with room (miss, schedule, insert{bounded})"),
                vip,
                mode.new_flow,
                true,
                Entries::Many,
                new_flows,
                Reason::Forwarded,
            )];
            if mode.all_variations {
                paths.push((
                    "new flow, full table (… and LRU eviction)".into(),
                    vip,
                    mode.new_flow,
                    false,
                    Entries::Many,
                    repeat,
                    Reason::Forwarded,
                ));
            }
            paths.push((
                "established (flow-table hit)".into(),
                vip_ack,
                mode.established,
                false,
                Entries::One,
                repeat,
                Reason::Forwarded,
            ));
            let table = if flow_table == FlowTableMode::PerCpu {
                ", per-CPU flow tables"
            } else {
                ""
            };
            for (path, frame, restore, fresh, entries, repeat, reason) in paths {
                cases.push(Case {
                    name: format!("{scheduler}, {}{table}: {path}", mode.forwarding),
                    scheduler,
                    forwarding: mode.forwarding,
                    flow_table,
                    fresh,
                    dp: load_mode(
                        scheduler,
                        mode.forwarding,
                        LoadOptions {
                            flow_table,
                            ..LoadOptions::default()
                        },
                    )?,
                    frame,
                    restore,
                    action: XDP_TX,
                    reason,
                    entries,
                    repeat,
                    samples: Vec::new(),
                });
            }
            if mode.reply && flow_table == FlowTableMode::Shared {
                cases.push(reply_case(scheduler, mode, repeat)?);
            }
        }
    }
    Ok(cases)
}

/// A backend's reply to a flow the client opened (its SYN sent once
/// beforehand): the forwarded SYN turned around, from the backend's MAC
/// and address to where the SYN went out from, an ACK segment.
fn reply_case(scheduler: &'static str, mode: &Mode, repeat: u32) -> Result<Case> {
    let mut dp = load_mode(scheduler, mode.forwarding, LoadOptions::default())?;
    let (action, out) = dp
        .test_run(&frame([192, 0, 2, 10]))
        .context("the reply row's opening SYN")?;
    ensure!(
        action == XDP_TX && out.len() >= 14 + 20 + 4,
        "{}: the reply row's opening SYN: action {action}, {} bytes",
        mode.forwarding,
        out.len()
    );
    let at = |i: usize| -> [u8; 4] { out[i..i + 4].try_into().unwrap_or_default() };
    let port = |i: usize| u16::from_be_bytes([out[i], out[i + 1]]);
    let header = 14 + 20 + 20;
    let reply = Spec {
        src_mac: out[0..6].try_into().unwrap_or_default(),
        dst_mac: out[6..12].try_into().unwrap_or_default(),
        src: at(14 + 16),
        dst: at(14 + 12),
        sport: port(14 + 20 + 2),
        dport: port(14 + 20),
        ack: true,
        payload: vec![b'x'; FRAME_LEN - header],
        ..Spec::default()
    }
    .build();
    Ok(Case {
        name: format!(
            "{scheduler}, {}: reply translated back (reverse-entry hit)",
            mode.forwarding
        ),
        scheduler,
        forwarding: mode.forwarding,
        flow_table: FlowTableMode::Shared,
        fresh: false,
        dp,
        frame: reply
            .try_into()
            .map_err(|_| anyhow::anyhow!("a reply frame of {FRAME_LEN} bytes"))?,
        restore: mode.established,
        action: XDP_TX,
        reason: Reason::ForwardedReply,
        entries: Entries::One,
        repeat,
        samples: Vec::new(),
    })
}
