//! The benchmarks behind `xpf bench`: [`datapath`], the packet-rate
//! benchmark, [`classify`], the per-packet policy step on one core, and
//! [`kvstore`], what cluster mode costs against a real etcd.
//!
//! The datapath benchmark: one invocation, one topology, one generator and
//! frame mix for every run kind, so every ratio it prints compares runs
//! measured minutes apart on the same machine.
//!
//! Topology (inside a private testbed, see `crate::harness::testbed`): endpoint
//! `src` sends with `xpf gen` (AF_XDP, copy mode) from its `eth0`; its
//! host-side veth is where each run kind does its work. To the outside
//! (the default), allowed frames go into the host stack and on to the
//! outside namespace, where `xpf sink` counts them on its `eth0`
//! (AF_PACKET) and a blackhole route discards them; traffic is IPv6 UDP
//! from 2001:db8:10::2 to /128 ipcache entries in 2001:db8:1000::/36 (the
//! 1M-entry point needs more addresses than the IPv4 benchmarking range
//! has). Endpoint to endpoint (runs labelled `e2e`), a second endpoint
//! `dst` (2001:db8:20::2) receives instead, its sink on its `eth0`; the
//! flows differ by source port, and the ipcache entries stay in the world
//! (see `config`). The smallest frame that carries the generator's
//! sequence number and timestamp over IPv6 is 86 bytes.
//!
//! Run kinds: `xdp-drop` (XDP_DROP on the veth: the ceiling for getting
//! frames off it), `afxdp-rxdrop` (xpf with `mode: rxdrop`), `afxdp-fwd`
//! (`mode: forward`: AF_XDP in, reinject out, no policy work), `kernel-nft`
//! (no XDP; the kernel forwards, with an nftables ruleset equivalent to the
//! policy), `xpf` (the filter, `mode: userspace`), and for the hybrid
//! datapath `xpf-hybrid` (`mode: hybrid`) with its in-kernel ceilings
//! `xdp-redirect` (endpoint to endpoint: the Ethernet header rewritten as
//! xpf's worker does, DEVMAP redirect into dst's veth) and `xdp-pass` (to
//! the outside: XDP_PASS into the host stack). These three run threaded
//! NAPI pinned to the worker's CPU (see `kernel`); the others leave NAPI in
//! softirq. Delivered rates come from the sink, or for the two drop kinds
//! from the dropping program's counter.
//!
//! Every run also reports its CPU per delivered packet: the whole
//! machine's busy time (`/proc/stat`) over the generator's sending window,
//! less an idle baseline measured just before, divided by the packets
//! delivered, with a breakdown by task (see `cpu`). The hybrid datapath is
//! compared with its ceilings at saturation and at a fixed 40 kpps
//! (`plan::MODERATE_PPS`), where nothing is lost and CPU per packet is the
//! measure.
//!
//! The control plane's kinds run `xpf` with a client of its API in this
//! process: `xpf-updates` (10 policy reloads and 10k ipcache upserts a
//! second asked for, the rates reached reported) and `xpf-monitor` (a
//! monitor of every event attached); they are interleaved with the `xpf`
//! baseline they are compared to. The update latency is timed call by
//! call at the middle point with traffic flowing.
//!
//! Here: the order of the runs and the report. The kinds and points are in
//! `plan`, one measurement in `run`, the in-kernel kinds and threaded NAPI
//! in `kernel`, the CPU measurement in `cpu`, the files `xpf run` is given
//! in `config`, the nftables baseline in `nft`, the xpf children in
//! `children`, the API clients in `control`, the ratios in `ratios`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::harness::report::{self, Report, Run};
use crate::harness::testbed::Testbed;
use crate::sys::netns;
use plan::{Kind, Point, DST_ROUTE, MID, MID_E2E, MODERATE_PPS};
use ratios::ratios;
use run::Bench;

mod children;
pub mod classify;
mod config;
mod control;
mod cpu;
mod kernel;
pub mod kvstore;
mod nft;
mod plan;
mod ratios;
mod run;

/// What `xpf bench datapath` was asked for.
#[derive(Clone, Debug)]
pub struct DatapathOptions {
    /// One middle point of each dimension instead of the sweeps.
    pub quick: bool,
    /// Seconds each measurement sends for (`None`: 5, or 3 when quick).
    pub seconds: Option<u64>,
    /// Where the report's files are written.
    pub out: PathBuf,
}

/// Runs the datapath benchmark: builds the testbed, measures every run of
/// the plan, prints a row per run and the ratios, writes the report into
/// `opts.out`. Needs root. `interrupted` says whether a stop has been asked
/// for; it is checked before each measurement (the caller blocks SIGINT and
/// SIGTERM so that a stop unwinds here, removing the testbed).
pub fn datapath(opts: &DatapathOptions, interrupted: &dyn Fn() -> bool) -> Result<()> {
    let started = Instant::now();
    let started_at = crate::control::clock::rfc3339_utc(std::time::SystemTime::now());
    let tag = format!("xb{}", std::process::id());
    let bed = Testbed::build(
        &tag,
        &["198.18.0.1".parse()?, "2001:db8::1".parse()?],
        &[],
        &[DST_ROUTE.parse()?],
    )?;
    // The outside discards what it receives, quietly (no ICMP errors back).
    run_ip(&[
        "-n",
        bed.outside.name(),
        "-6",
        "route",
        "add",
        "blackhole",
        DST_ROUTE,
    ])?;
    netns::enter(bed.host.name())?;
    let b = Bench {
        tag,
        bed,
        exe: std::env::current_exe().context("finding the xpf binary")?,
        dir: tempfile::tempdir()?,
        seconds: opts
            .seconds
            .unwrap_or(if opts.quick { 3 } else { 5 })
            .max(1),
        interrupted,
    };

    let mut runs = Vec::new();
    println!(
        "{:<52} {:>9} {:>10} {:>7} {:>8} {:>8} {:>8} {:>8}",
        "run", "offered", "delivered", "loss", "p50 µs", "p99 µs", "p99.9 µs", "CPU ns/p"
    );
    for kind in [Kind::XdpDrop, Kind::RxDrop] {
        runs.push(b.measure(kind, MID)?);
    }
    // The runs the main targets compare, interleaved and repeated: on a
    // shared machine one sample each is not a ratio worth quoting.
    let best_of = |kinds: &[Kind], by: fn(&Run) -> f64, what: &str, p: Point| -> Result<Vec<Run>> {
        let mut rounds: Vec<Vec<Run>> = kinds.iter().map(|_| Vec::new()).collect();
        for _ in 0..ROUNDS {
            for (k, r) in kinds.iter().zip(rounds.iter_mut()) {
                r.push(b.measure(*k, p)?);
            }
        }
        Ok(rounds.into_iter().map(|r| median(r, by, what)).collect())
    };
    // xpf (index 2) against its baselines and under control-plane load,
    // and the hybrid datapath against its in-kernel ceiling, to the
    // outside; then endpoint to endpoint.
    let max_rate = best_of(
        &[
            Kind::Fwd,
            Kind::Nft,
            Kind::Xpf,
            Kind::XpfUpdates,
            Kind::XpfMonitor,
            Kind::XdpPass,
            Kind::XpfHybrid,
        ],
        |r| r.delivered_pps / 1e6,
        "delivered Mpps",
        MID,
    )?;
    let half = (max_rate[2].delivered_pps / 2.0).max(1000.0) as u64;
    runs.extend(max_rate);
    runs.extend(best_of(
        &[Kind::XdpRedirect, Kind::Xpf, Kind::XpfHybrid],
        |r| r.delivered_pps / 1e6,
        "delivered Mpps",
        MID_E2E,
    )?);
    runs.extend(best_of(
        &[Kind::Fwd, Kind::Xpf],
        |r| r.latency_us.as_ref().map_or(f64::MAX, |l| l.p99),
        "p99 µs",
        Point { rate: half, ..MID },
    )?);
    if !opts.quick {
        // CPU per packet where nothing is lost, on both paths.
        let cpu: fn(&Run) -> f64 = |r| r.cpu_ns_per_packet.unwrap_or(f64::MAX);
        for (ceiling, p) in [(Kind::XdpRedirect, MID_E2E), (Kind::XdpPass, MID)] {
            runs.extend(best_of(
                &[ceiling, Kind::Xpf, Kind::XpfHybrid],
                cpu,
                "CPU ns per packet",
                Point {
                    rate: MODERATE_PPS,
                    ..p
                },
            )?);
        }
    }
    runs.push(b.measure(
        Kind::Xpf,
        Point {
            churn: 10_000,
            ..MID
        },
    )?);
    let update_latency = b.update_latency(
        &MID,
        if opts.quick {
            LATENCY_SECONDS_QUICK
        } else {
            LATENCY_SECONDS
        },
        LATENCY_SAMPLES,
    )?;

    // One step down each axis even in --quick, so every plot has two
    // points; the full run adds the far ends, frame sizes and 2 workers.
    let (ipcaches, rules_, flows_): (&[u64], &[u64], &[u64]) = if opts.quick {
        (&[1_000], &[10], &[1])
    } else {
        (&[1_000, 1_000_000], &[10, 10_000], &[1, 100_000])
    };
    for &ipcache in ipcaches {
        for kind in [Kind::Nft, Kind::Xpf] {
            runs.push(b.measure(kind, Point { ipcache, ..MID })?);
        }
    }
    for &rules in rules_ {
        for kind in [Kind::Nft, Kind::Xpf] {
            runs.push(b.measure(kind, Point { rules, ..MID })?);
        }
    }
    for &flows in flows_ {
        for kind in [Kind::Fwd, Kind::Xpf] {
            runs.push(b.measure(kind, Point { flows, ..MID })?);
        }
    }
    if !opts.quick {
        for size in [512, 1500] {
            for kind in [Kind::Fwd, Kind::Xpf] {
                runs.push(b.measure(kind, Point { size, ..MID })?);
            }
        }
        runs.push(b.measure(Kind::Xpf, Point { workers: 2, ..MID })?);
    }

    let ratios = ratios(&runs);
    println!();
    for r in &ratios {
        println!(
            "{:<52} {:>6.2}  {}",
            r.name,
            r.value,
            match (&r.target, r.met) {
                (Some(t), Some(true)) => format!("target {t}: met"),
                (Some(t), Some(false)) => format!("target {t}: MISSED"),
                _ => String::new(),
            }
        );
    }
    for u in &update_latency {
        println!(
            "{:<52} {:.2} / {:.2} ms ({} calls; applied {:.2} / {:.2} ms)  {}",
            format!("update latency p50/p99 ({})", u.update),
            u.call_ms.p50,
            u.call_ms.p99,
            u.samples,
            u.applied_ms.p50,
            u.applied_ms.p99,
            match (&u.target, u.met) {
                (Some(t), Some(true)) => format!("target {t}: met"),
                (Some(t), Some(false)) => format!("target {t}: MISSED"),
                _ => String::new(),
            }
        );
    }
    let report = Report {
        machine: report::machine(),
        quick: opts.quick,
        started_at,
        duration_secs: started.elapsed().as_secs_f64(),
        runs,
        ratios,
        update_latency,
    };
    let written = report::write(&opts.out, &report)?;
    println!();
    println!("wrote {}", written.describe());
    drop(b);
    Ok(())
}

/// Rounds of the interleaved afxdp-fwd / xpf comparison.
const ROUNDS: usize = 3;
/// Seconds of traffic the update latency is timed over (as many reloads
/// as fit), in a full run and with `--quick`.
const LATENCY_SECONDS: u64 = 60;
const LATENCY_SECONDS_QUICK: u64 = 20;
/// Updates of each kind timed one at a time, at most.
const LATENCY_SAMPLES: u64 = 200;

/// The run with the median `by`, noting every round's figure.
fn median(mut runs: Vec<Run>, by: fn(&Run) -> f64, what: &str) -> Run {
    runs.sort_by(|a, b| by(a).total_cmp(&by(b)));
    let all: Vec<String> = runs.iter().map(|r| format!("{:.3}", by(r))).collect();
    let mut m = runs.swap_remove(runs.len() / 2);
    let median = format!(
        "median {what} of {} interleaved rounds: {}",
        all.len(),
        all.join(", ")
    );
    // The run's own notes (the control-plane load it ran under) stay.
    m.notes = Some(match m.notes.take() {
        Some(own) => format!("{median}; this round's {own}"),
        None => median,
    });
    m
}

fn run_ip(args: &[&str]) -> Result<()> {
    crate::sys::ip::run(args)?;
    Ok(())
}
