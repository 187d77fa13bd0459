//! Datapaths for the BPF_PROG_TEST_RUN tests: a config text planned with
//! backend MACs 02:be:00:00:00:<last byte>, loaded with the frame
//! fixtures' LB MAC and programmed. One copy here instead of one per test
//! file (nat, nat_icmp and dnat had the same three functions).
use std::net::Ipv4Addr;

use foobar::{
    config,
    datapath::{Datapath, LoadOptions},
    plan::Plan,
    state::{self, State},
};

use crate::frames::Spec;

/// The MAC the fixtures give backend 10.0.0.`last`.
pub fn backend_mac(last: u8) -> [u8; 6] {
    [0x02, 0xbe, 0, 0, 0, last]
}

/// The LB's MAC: where the frame fixtures (`Spec`) are addressed.
pub fn lb_mac() -> [u8; 6] {
    Spec::default().dst_mac
}

/// The plan of config `text`, with a MAC (`backend_mac`) for backends
/// 10.0.0.`n`, `n` in `known` (any other backend has none: down).
pub fn plan_of(text: &str, known: &[u8]) -> Plan {
    let config = config::parse(text).expect("test config is valid");
    let macs = known
        .iter()
        .map(|&n| (Ipv4Addr::new(10, 0, 0, n).into(), backend_mac(n)))
        .collect();
    State::build(&state::saved_from_config(&config), &macs)
        .expect("MACs given")
        .plan()
}

/// The XDP program loaded with `opts` and the LB's MAC, its maps
/// programmed with `plan`.
pub fn load(plan: &Plan, opts: LoadOptions) -> Datapath {
    let mut dp = Datapath::load(&LoadOptions {
        lb_mac: lb_mac(),
        ..opts
    })
    .expect("loading the XDP program (are you root?)");
    dp.apply(plan).expect("programming the maps");
    dp
}
