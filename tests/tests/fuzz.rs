//! The datapath against its reference model (`foobar_tests::model`): 20 000
//! seeded random and mutated frames through BPF_PROG_TEST_RUN, to VIPs of
//! every forwarding mode (dsr, ipip, nat) and from NAT backends back, and
//! the model must agree on action, reason and output frame byte for byte,
//! and the per-VIP and per-backend counters and the NAT tables must agree
//! at the end, with VIPs removed, re-added, moved to other ids, shadowed
//! and changed (modes included) and NAT states aged out between the frames. Needs root (`cargo xtask
//! test`); `cargo xtask fuzz --frames N --seed S` runs longer or other seeds.
use foobar::datapath::FlowTableMode;
use foobar_tests::fuzz::{self, FuzzOptions};

#[test]
fn datapath_and_model_agree_on_20000_fuzzed_frames() {
    agree_on_20000_frames(FlowTableMode::Shared);
}

/// The same with per-CPU flow tables (the run is pinned to one CPU: its
/// table must behave as the model's one table).
#[test]
fn datapath_with_per_cpu_flow_tables_and_model_agree_on_20000_fuzzed_frames() {
    agree_on_20000_frames(FlowTableMode::PerCpu);
}

fn agree_on_20000_frames(flow_table: FlowTableMode) {
    let seed = 20_000;
    let report = fuzz::run(&FuzzOptions {
        frames: 20_000,
        seed,
        max_differences: 5,
        flow_table,
    })
    .expect("running the fuzzer (are you root? run `cargo xtask test`)");
    println!("{}", report.summary());
    assert!(
        report.differences.is_empty(),
        "{} difference(s) between the datapath and the model:\n{}",
        report.differences.len(),
        report.differences.join("\n")
    );
    assert_eq!(report.frames, 20_000);
    // VIPs removed, re-added, shadowed and changed between frames of the
    // same flows: where a flow entry trusted past a change would show.
    assert!(
        report.vip_changes >= 100,
        "only {} VIP changes in the run\n{}",
        report.vip_changes,
        report.summary()
    );
    // dnat both ways (a broken reply path or source bitmap would make the
    // replies pass on both sides, agreeing, and prove nothing).
    assert!(
        report.dnat_forwarded >= 100 && report.dnat_replies >= 50,
        "dnat: {} forwarded, {} replies in the run\n{}",
        report.dnat_forwarded,
        report.dnat_replies,
        report.summary()
    );
    assert!(
        report.nat_expired >= 100,
        "only {} NAT states aged out in the run\n{}",
        report.nat_expired,
        report.summary()
    );
    // The run must reach every kind of decision, or it proves little.
    for reason in foobar_tests::model::Reason::ALL {
        assert!(
            report.reasons.get(&reason).copied().unwrap_or(0) > 0,
            "no fuzzed frame was decided as {}: the generator misses a case\n{}",
            reason.name(),
            report.summary()
        );
    }
}
