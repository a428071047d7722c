//! CPU per packet: what a run cost the whole machine, per delivered packet.
//!
//! The figure is system-wide busy time from `/proc/stat` (user, nice,
//! system, irq and softirq, summed over every CPU) over exactly the
//! generator's sending window: `xpf gen` reads `/proc/stat` just before its
//! first frame and after its ring has drained, and reports the difference.
//! That catches everything the run sets in motion wherever it lands: the
//! generator, the sink, xpf's threads, NAPI threads, ksoftirqd, and softirq
//! work done in the context of whatever task it interrupted, which
//! per-thread runtimes would miss on a kernel that accounts IRQ time apart
//! (this project's 6.18 VM does not, so there it lands in the interrupted
//! task). From it the idle baseline is taken off: the machine's busy time
//! per second over [`IDLE_WINDOW`] just before the generator starts, with
//! everything of the run set up (xpf ready, sink listening) and no traffic,
//! times the window. What is left is divided by the packets delivered.
//!
//! The baseline takes out what the run does not cause (other tenants, the
//! benchmark's own polling) as long as it holds steady over a few seconds;
//! on a busy shared machine it does not, so compare CPU figures of one
//! quiet invocation. `/proc/stat` counts in 10 ms ticks: well under a
//! percent of a window of seconds on two CPUs.
//!
//! Beside it, a breakdown by group of tasks (`gen`, `sink`, `xpf`, `napi`,
//! `ksoftirqd`): each task's scheduler runtime (`schedstat`, which includes
//! the softirq work that ran in its context), over the generator's life
//! as the benchmark sees it (spawn to exit; the generator's own figure is
//! over its window), per delivered packet, without the baseline.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::children::GenResult;
use crate::harness::report::CpuUse;
use crate::sys::cputime;

/// How long the idle baseline is measured for, just before the generator.
pub(super) const IDLE_WINDOW: Duration = Duration::from_millis(500);

/// The tasks of a run whose runtime the breakdown reports (besides the
/// generator, which reports its own, and ksoftirqd, found by name).
#[derive(Clone, Debug, Default)]
pub(super) struct Tasks {
    /// `xpf run`'s pid.
    pub(super) xpf: Option<u32>,
    /// `xpf sink`'s pid.
    pub(super) sink: Option<u32>,
    /// NAPI threads (their pids).
    pub(super) napi: Vec<u32>,
}

/// (group, pid, tid) → runtime in nanoseconds.
type Runtimes = BTreeMap<(&'static str, u32, u32), u64>;

impl Tasks {
    fn runtimes(&self) -> Runtimes {
        let mut out = Runtimes::new();
        for (group, pid) in [("xpf", self.xpf), ("sink", self.sink)] {
            if let Some(pid) = pid {
                for (tid, ns) in cputime::thread_runtimes_ns(pid) {
                    out.insert((group, pid, tid), ns);
                }
            }
        }
        let kernel = self.napi.iter().map(|p| ("napi", *p)).chain(
            cputime::kernel_threads("ksoftirqd/")
                .into_iter()
                .map(|p| ("ksoftirqd", p)),
        );
        for (group, pid) in kernel {
            if let Some(ns) = cputime::task_runtime_ns(pid, pid) {
                out.insert((group, pid, pid), ns);
            }
        }
        out
    }
}

/// The state just before the generator starts.
pub(super) struct Before {
    idle_busy_cpus: f64,
    runtimes: Runtimes,
    tasks: Tasks,
}

/// Measures the idle baseline (sleeping [`IDLE_WINDOW`]), then notes the
/// tasks' runtimes: call just before starting the generator.
pub(super) fn before(tasks: Tasks) -> Result<Before> {
    let a = cputime::stat().context("reading /proc/stat")?;
    let t = Instant::now();
    std::thread::sleep(IDLE_WINDOW);
    let b = cputime::stat().context("reading /proc/stat")?;
    let idle_busy_cpus = b.all.since(&a.all).busy_ns as f64 / t.elapsed().as_nanos().max(1) as f64;
    Ok(Before {
        idle_busy_cpus,
        runtimes: tasks.runtimes(),
        tasks,
    })
}

/// What a run's CPU cost, before dividing by what it delivered.
pub(super) struct Window {
    window_ns: u64,
    busy_ns: u64,
    busy_ns_by_cpu: Vec<u64>,
    idle_busy_cpus: f64,
    /// Runtime by group over the window, nanoseconds.
    groups: BTreeMap<String, u64>,
}

impl Before {
    /// Call just after the generator exits; `None` when the generator did
    /// not report its CPU window.
    pub(super) fn after(self, gen: &GenResult) -> Option<Window> {
        let cpu = gen.cpu.as_ref()?;
        let now = self.tasks.runtimes();
        let mut groups: BTreeMap<String, u64> = BTreeMap::new();
        for (key, ns) in &now {
            if let Some(was) = self.runtimes.get(key) {
                *groups.entry(key.0.to_string()).or_default() += ns.saturating_sub(*was);
            }
        }
        groups.insert("gen".into(), cpu.own_ns);
        Some(Window {
            window_ns: cpu.window_ns,
            busy_ns: cpu.busy_ns,
            busy_ns_by_cpu: cpu.busy_ns_by_cpu.clone(),
            idle_busy_cpus: self.idle_busy_cpus,
            groups,
        })
    }
}

impl Window {
    /// The window's length in seconds.
    pub(super) fn secs(&self) -> f64 {
        self.window_ns as f64 / 1e9
    }

    /// The run's CPU per delivered packet (`None` when none was delivered)
    /// and how it was arrived at, for `packets` delivered.
    pub(super) fn per_packet(&self, packets: f64) -> (Option<f64>, CpuUse) {
        let secs = |ns: u64| ns as f64 / 1e9;
        let net_ns = (self.busy_ns as f64 - self.idle_busy_cpus * self.window_ns as f64).max(0.0);
        let per = |ns: f64| (packets >= 1.0).then(|| ns / packets);
        let use_ = CpuUse {
            window_secs: secs(self.window_ns),
            busy_secs: secs(self.busy_ns),
            busy_secs_by_cpu: self.busy_ns_by_cpu.iter().map(|n| secs(*n)).collect(),
            idle_busy_cpus: self.idle_busy_cpus,
            tasks_ns_per_packet: self
                .groups
                .iter()
                .filter_map(|(g, ns)| Some((g.clone(), per(*ns as f64)?)))
                .collect(),
        };
        (per(net_ns), use_)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_idle_baseline_comes_off_before_dividing() {
        let w = Window {
            window_ns: 2_000_000_000,
            busy_ns: 1_500_000_000,
            busy_ns_by_cpu: vec![1_000_000_000, 500_000_000],
            idle_busy_cpus: 0.25,
            groups: [("gen".to_string(), 400_000_000), ("xpf".to_string(), 0)]
                .into_iter()
                .collect(),
        };
        let (ns, cpu) = w.per_packet(1_000_000.0);
        // (1.5 s - 0.25 × 2 s) / 1M packets = 1000 ns.
        assert_eq!(ns, Some(1000.0));
        assert_eq!(cpu.window_secs, 2.0);
        assert_eq!(cpu.busy_secs_by_cpu, [1.0, 0.5]);
        assert_eq!(cpu.tasks_ns_per_packet["gen"], 400.0);
        assert_eq!(cpu.tasks_ns_per_packet["xpf"], 0.0);
        assert_eq!(w.per_packet(0.0).0, None);

        // A baseline above the window's busy time gives 0, not less.
        let noisy = Window {
            idle_busy_cpus: 1.0,
            ..w
        };
        assert_eq!(noisy.per_packet(10.0).0, Some(0.0));
    }
}
