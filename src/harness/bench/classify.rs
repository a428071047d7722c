//! The classify benchmark behind `xpf bench classify`: the per-packet step
//! (parse, ipcache, verdict) on a synthetic world, frame by frame and
//! batched, in alternating rounds on one pinned core. No traffic, no root.

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;

use crate::classify::{classify, classify_batch, Classified, BATCH};
use crate::harness::synth;
use crate::policy::compile::EgressTable;
use crate::wire::ParseError;

/// The synthetic world to classify against and how long to measure.
#[derive(Clone, Copy, Debug)]
pub struct ClassifyOptions {
    pub ipcache_entries: usize,
    pub rules: usize,
    /// Distinct destination identities; at least 1.
    pub identities: usize,
    pub seconds: f64,
}

/// What a classify benchmark measured. The headline is the plain loop,
/// frame by frame; the batched one wins once the ipcache no longer fits in
/// cache (see README, Benchmarks).
#[derive(Clone, Debug)]
pub struct ClassifyReport {
    /// Frame by frame.
    pub ns_per_packet: f64,
    /// In batches of [`BATCH`] with prefetch.
    pub batched_ns_per_packet: f64,
    pub distinct_frames: usize,
    /// Packets classified by each of the two loops.
    pub packets: u64,
    pub allowed: u64,
    pub denied: u64,
    pub parse_errors: u64,
    /// Entries the world's ipcache ended up with.
    pub ipcache_entries: usize,
    pub rules: usize,
    pub identities: usize,
    /// The core the measuring thread was pinned to, if pinning worked.
    pub pinned_core: Option<usize>,
    /// Building the world and its frames.
    pub setup: Duration,
}

/// Measures classification on the calling thread (pinned to the first
/// core) for `opts.seconds`.
pub fn measure(opts: &ClassifyOptions) -> Result<ClassifyReport> {
    let ClassifyOptions {
        ipcache_entries,
        rules,
        identities,
        seconds,
    } = *opts;
    let pin = core_affinity::get_core_ids().and_then(|ids| ids.into_iter().next());
    if let Some(core) = pin {
        core_affinity::set_for_current(core);
    }
    let t = Instant::now();
    let world = synth::world(synth::Shape {
        ipcache_entries,
        identities,
        rules,
        endpoints: 1,
    })
    .context("building the synthetic world")?;
    let setup = t.elapsed();
    let frames = synth::frames(&world, 1 << 14, 42);
    let table = world
        .engine
        .compiled
        .table(world.engine.inventory.endpoint_identities[0]);
    let reader = world.engine.ipcache.reader();
    let view = reader.enter().context("ipcache closed")?;

    // Batched with prefetch (what a worker does with a batch of frames) and
    // frame by frame, in alternating rounds of the same run so that both
    // see the same machine: this VM is shared and its speed drifts.
    let budget = Duration::from_secs_f64(seconds);
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    let mut tally = Tally::default();
    let mut single = Tally::default();
    let mut out = [Err(ParseError::TruncatedEthernet); BATCH];
    let (mut batched_ns, mut single_ns, mut rounds) = (0u128, 0u128, 0u64);
    let start = Instant::now();
    while start.elapsed() < budget {
        let t = Instant::now();
        for batch in refs.chunks(BATCH) {
            classify_batch(batch, table, &view, &mut out);
            for r in &out[..batch.len()] {
                tally.add(table, r);
            }
        }
        batched_ns += t.elapsed().as_nanos();
        let t = Instant::now();
        for f in &refs {
            single.add(table, &classify(f, table, &view));
        }
        single_ns += t.elapsed().as_nanos();
        rounds += 1;
    }
    let per_mode = rounds * refs.len() as u64;
    debug_assert_eq!(
        (tally.allowed, tally.denied, tally.dropped),
        (single.allowed, single.denied, single.dropped)
    );
    Ok(ClassifyReport {
        ns_per_packet: single_ns as f64 / per_mode as f64,
        batched_ns_per_packet: batched_ns as f64 / per_mode as f64,
        distinct_frames: refs.len(),
        packets: per_mode,
        allowed: single.allowed,
        denied: single.denied,
        parse_errors: single.dropped,
        ipcache_entries: world.engine.ipcache.len(),
        rules,
        identities,
        pinned_core: pin.map(|c| c.id),
        setup,
    })
}

impl ClassifyReport {
    /// The report as `--output json` prints it.
    pub fn json(&self) -> serde_json::Value {
        let (ns, batched_ns) = (self.ns_per_packet, self.batched_ns_per_packet);
        json!({
            "ns_per_packet": ns,
            "mpps": 1e3 / ns,
            "batched_ns_per_packet": batched_ns,
            "batched_mpps": 1e3 / batched_ns,
            "batch": BATCH,
            "distinct_frames": self.distinct_frames,
            "packets": self.packets,
            "allowed": self.allowed,
            "denied": self.denied,
            "parse_errors": self.parse_errors,
            "ipcache_entries": self.ipcache_entries,
            "rules": self.rules,
            "identities": self.identities,
            "pinned_core": self.pinned_core,
            "setup_seconds": self.setup.as_secs_f64(),
        })
    }
}

/// The report for people, three lines (the last without a newline).
impl fmt::Display for ClassifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.ns_per_packet;
        let mpps = 1e3 / ns;
        let batched_ns = self.batched_ns_per_packet;
        let (packets, allowed, denied, dropped) =
            (self.packets, self.allowed, self.denied, self.parse_errors);
        let (ipcache_len, rules, identities) = (self.ipcache_entries, self.rules, self.identities);
        writeln!(
            f,
            "classify: {ns:.1} ns/packet, {mpps:.2} Mpps on one core, frame by frame \
             ({packets} packets: {allowed} allowed, {denied} denied, {dropped} unparsable)"
        )?;
        writeln!(
            f,
            "          {batched_ns:.1} ns/packet, {:.2} Mpps in batches of {} with prefetch",
            1e3 / batched_ns,
            BATCH
        )?;
        write!(
            f,
            "  ipcache {ipcache_len} entries, {rules} rules over {identities} identities \
             (setup {:.2} s)",
            self.setup.as_secs_f64()
        )
    }
}

/// Verdict counts of a benchmark loop.
#[derive(Default)]
struct Tally {
    allowed: u64,
    denied: u64,
    dropped: u64,
}

impl Tally {
    fn add(&mut self, table: &EgressTable, r: &Result<Classified, ParseError>) {
        match r {
            Ok(c) if c.code.allows(table) => self.allowed += 1,
            Ok(_) => self.denied += 1,
            Err(_) => self.dropped += 1,
        }
    }
}
