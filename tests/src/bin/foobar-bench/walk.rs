//! The `flow-walk` section: how long userspace takes to walk the flow
//! table while the datapath keeps reading it.
use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _, Result};
use foobar::datapath::{Datapath, LoadOptions};
use foobar_common::{Flow, FlowKey, AF_INET, FLOW_CLOSED};

use crate::{common::median, fixture::load_with};

/// A flow of the walk's table: client `i` to the bench's VIP.
pub fn walk_key(i: u32) -> FlowKey {
    FlowKey {
        src_be: u32::from(Ipv4Addr::from(0x0a80_0000u32.wrapping_add(i))).to_be(),
        dst_be: u32::from_be_bytes([192, 0, 2, 10]).to_be(),
        sport_be: (1024 + (i % 60000) as u16).to_be(),
        dport_be: 80u16.to_be(),
        proto: 6,
        family: AF_INET,
        _pad: [0; 2],
    }
}

pub fn walk_flow(i: u32, now_ns: u64) -> Flow {
    Flow {
        backend_id: i % 3,
        vip_id: 0,
        last_seen_ns: now_ns,
        // A quarter of the flows closed by the client, as a busy table has.
        flags: if i.is_multiple_of(4) { FLOW_CLOSED } else { 0 },
        backend_gen: 0,
        vip_gen: 0,
    }
}

/// Counter reads (what `foobar status` and a scrape do on the owner's loop)
/// every `every` until `done` says stop, at least one: their latencies in ms.
pub fn read_latencies(dp: &Datapath, every: Duration, done: impl Fn() -> bool) -> Result<Vec<f64>> {
    let mut took = Vec::new();
    loop {
        let t = Instant::now();
        dp.stats(1, 3)?;
        took.push(t.elapsed().as_secs_f64() * 1e3);
        if done() {
            return Ok(took);
        }
        std::thread::sleep(every);
    }
}

/// What walks on their own thread took (ms, entries counted), and the
/// owner's counter reads meanwhile.
pub struct Walks {
    walks: Vec<(f64, usize)>,
    reads: Vec<f64>,
}

pub fn walk_while_reading(dp: &Datapath, times: usize) -> Result<Walks> {
    let walker = dp.flow_walker()?;
    let thread = std::thread::spawn(move || -> Result<Vec<(f64, usize)>> {
        (0..times)
            .map(|_| {
                let t = Instant::now();
                let usage = walker.usage(0)?;
                Ok((t.elapsed().as_secs_f64() * 1e3, usage.entries))
            })
            .collect()
    });
    let reads = read_latencies(dp, Duration::from_millis(5), || thread.is_finished());
    let walks = thread
        .join()
        .map_err(|_| anyhow::anyhow!("the walking thread panicked"))??;
    Ok(Walks {
        walks,
        reads: reads?,
    })
}

/// The flow-table walk the daemon runs every few seconds (wlc weights,
/// freeing removed backends, the occupancy gauge), on a table filled
/// through the datapath's map handle: how long one walk takes, what it
/// counts against the capacity, and how long the owner's own map reads
/// wait meanwhile — on a quiet table and while a writer churns it.
pub fn flow_walk(quick: bool) -> Result<String> {
    let (capacity, filled, walks) = if quick {
        (1u32 << 17, 100_000u32, 1)
    } else {
        (1u32 << 22, 4_000_000u32, 3)
    };
    let dp = load_with(
        "rr",
        LoadOptions {
            flow_table_size: capacity,
            ..LoadOptions::default()
        },
    )?;
    let mut table = dp.flow_table()?;
    let now = foobar::daemon::monotonic_ns();
    let t = Instant::now();
    for i in 0..filled {
        table
            .insert(walk_key(i), walk_flow(i, now), 0)
            .with_context(|| format!("filling the flow table: entry {i} of {filled}"))?;
    }
    let fill_s = t.elapsed().as_secs_f64();

    // The owner's reads with no walk, for comparison.
    let idle_reads = if quick { 20 } else { 200 };
    let count = std::cell::Cell::new(0);
    let idle = read_latencies(&dp, Duration::from_millis(5), || {
        count.set(count.get() + 1);
        count.get() >= idle_reads
    })?;

    let quiet = walk_while_reading(&dp, walks)?;
    for &(_, entries) in &quiet.walks {
        ensure!(
            entries <= capacity as usize,
            "the walk counted {entries} entries in a table of {capacity}"
        );
    }

    // Churn: a writer inserts new flows as fast as it can, so the full
    // table evicts under the walks.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let mut table = dp.flow_table()?;
        std::thread::spawn(move || {
            let mut i = filled;
            while !stop.load(Ordering::Relaxed) && i < u32::MAX {
                let _ = table.insert(walk_key(i), walk_flow(i, now), 0);
                i += 1;
            }
            i - filled
        })
    };
    // Let the table fill up first: the walks should see it evicting.
    std::thread::sleep(Duration::from_millis(if quick { 50 } else { 500 }));
    let churned = walk_while_reading(&dp, walks);
    stop.store(true, Ordering::Relaxed);
    let inserted = writer
        .join()
        .map_err(|_| anyhow::anyhow!("the writing thread panicked"))?;
    let churned = churned?;
    for &(_, entries) in &churned.walks {
        ensure!(
            entries <= capacity as usize,
            "under churn the walk counted {entries} entries in a table of {capacity}"
        );
    }

    let ms = |w: &[(f64, usize)]| median(w.iter().map(|&(ms, _)| ms).collect());
    let counted = |w: &[(f64, usize)]| {
        let min = w.iter().map(|&(_, n)| n).min().unwrap_or(0);
        let max = w.iter().map(|&(_, n)| n).max().unwrap_or(0);
        if min == max {
            format!("{min}")
        } else {
            format!("{min}–{max}")
        }
    };
    let slowest = |r: &[f64]| r.iter().copied().fold(0.0, f64::max);
    let mut out = String::new();
    writeln!(out, "\n## Flow-table walk\n")?;
    writeln!(
        out,
        "A flow table of {capacity} entries filled with {filled} flows through the datapath's \
         map handle (one insert per system call: {fill_s:.1} s, {:.0} inserts/s), then walked \
         as the daemon walks it (`FlowWalker::usage`: BPF_MAP_LOOKUP_BATCH on a handle of its \
         own, on its own thread), {walks} time(s) per case; walk time is the median. Meanwhile \
         the main thread reads the counters every 5 ms (`Datapath::stats`, what `foobar \
         status` and a scrape read on the daemon's loop); its slowest read is shown next to \
         the slowest of {idle_reads} reads with no walk ({:.2} ms). Under churn a writer \
         thread inserts new flows into the full table as fast as it can ({inserted} inserts \
         in that case), so the table evicts under the walk. Reported, not asserted; the \
         count is checked never to exceed the capacity.\n",
        f64::from(filled) / fill_s.max(1e-9),
        slowest(&idle),
    )?;
    writeln!(
        out,
        "| case | walk | ns/entry | entries counted / capacity | counter reads during the walks | slowest read | × slowest idle read |\n\
         |---|---:|---:|---:|---:|---:|---:|"
    )?;
    for (name, w) in [("quiet table", &quiet), ("under churn", &churned)] {
        let walk_ms = ms(&w.walks);
        let entries = median(w.walks.iter().map(|&(_, n)| n as f64).collect());
        writeln!(
            out,
            "| {name} | {walk_ms:.0} ms | {:.0} | {} / {capacity} | {} | {:.2} ms | {:.1} |",
            walk_ms * 1e6 / entries.max(1.0),
            counted(&w.walks),
            w.reads.len(),
            slowest(&w.reads),
            slowest(&w.reads) / slowest(&idle).max(1e-6),
        )?;
    }
    Ok(out)
}
