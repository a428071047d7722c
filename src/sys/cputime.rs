//! CPU time, as the kernel accounts it: the whole machine's busy time
//! from `/proc/stat`, one task's runtime from its `schedstat`, and this
//! process's own from getrusage(2).
//!
//! `/proc/stat` counts in clock ticks (`USER_HZ`, 100 a second here): the
//! busy fields (user, nice, system, irq, softirq) are sampled at the tick,
//! idle time is measured and then rounded to ticks. Over a window of
//! seconds on a few CPUs the rounding is well under a percent. A task's
//! `schedstat` runtime is exact (nanoseconds of the scheduler's clock) and
//! includes the softirq work that ran in its context, unless the kernel
//! accounts IRQ time apart (`CONFIG_IRQ_TIME_ACCOUNTING`), in which case
//! that work is charged to no task and only `/proc/stat` sees it.

use std::io;

/// The CPU time counters of `/proc/stat`, in nanoseconds: the sum over
/// every CPU, and each CPU's own (in CPU number order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatTimes {
    pub all: CpuTimes,
    pub per_cpu: Vec<CpuTimes>,
}

/// One `cpu` line of `/proc/stat`, in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// user + nice + system + irq + softirq: time spent working, whoever
    /// for (guest time is already inside user and nice).
    pub busy_ns: u64,
    /// idle + iowait.
    pub idle_ns: u64,
    /// Time the hypervisor gave to someone else.
    pub steal_ns: u64,
}

impl CpuTimes {
    /// `self` minus an earlier reading of the same counters.
    pub fn since(&self, earlier: &CpuTimes) -> CpuTimes {
        CpuTimes {
            busy_ns: self.busy_ns.saturating_sub(earlier.busy_ns),
            idle_ns: self.idle_ns.saturating_sub(earlier.idle_ns),
            steal_ns: self.steal_ns.saturating_sub(earlier.steal_ns),
        }
    }
}

/// Reads `/proc/stat`.
pub fn stat() -> io::Result<StatTimes> {
    let text = std::fs::read_to_string("/proc/stat")?;
    parse_stat(&text, tick_ns()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "/proc/stat has no `cpu` line this parser reads",
        )
    })
}

/// Nanoseconds per `/proc/stat` clock tick (`sysconf(_SC_CLK_TCK)`).
fn tick_ns() -> u64 {
    // SAFETY: sysconf takes no pointers.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        1_000_000_000 / hz as u64
    } else {
        10_000_000
    }
}

/// The `cpu` lines of a `/proc/stat` text, ticks of `tick_ns` each.
pub fn parse_stat(text: &str, tick_ns: u64) -> Option<StatTimes> {
    let mut all = None;
    let mut per_cpu = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(name) = fields.next() else { continue };
        let Some(rest) = name.strip_prefix("cpu") else {
            continue;
        };
        // user nice system idle iowait irq softirq steal (guest, guest_nice
        // are inside user and nice).
        let v: Vec<u64> = fields.take(8).map_while(|f| f.parse().ok()).collect();
        if v.len() < 7 {
            return None;
        }
        let times = CpuTimes {
            busy_ns: (v[0] + v[1] + v[2] + v[5] + v[6]) * tick_ns,
            idle_ns: (v[3] + v[4]) * tick_ns,
            steal_ns: v.get(7).copied().unwrap_or(0) * tick_ns,
        };
        if rest.is_empty() {
            all = Some(times);
        } else {
            per_cpu.push((rest.parse::<usize>().ok()?, times));
        }
    }
    per_cpu.sort_by_key(|(n, _)| *n);
    Some(StatTimes {
        all: all?,
        per_cpu: per_cpu.into_iter().map(|(_, t)| t).collect(),
    })
}

/// Nanoseconds task `tid` of process `pid` has run (`schedstat`'s first
/// field); `None` when it is gone or unreadable.
pub fn task_runtime_ns(pid: u32, tid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Every live thread of process `pid` with its runtime in nanoseconds.
pub fn thread_runtimes_ns(pid: u32) -> Vec<(u32, u64)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let tid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        Some((tid, task_runtime_ns(pid, tid)?))
    })
    .collect()
}

/// Kernel threads whose name starts with `prefix` (e.g. `ksoftirqd/`):
/// their pids. A kernel thread is a process of its own, so its pid is its
/// task id.
pub fn kernel_threads(prefix: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out: Vec<u32> = dir
        .filter_map(|e| {
            let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            comm.trim_end().starts_with(prefix).then_some(pid)
        })
        .collect();
    out.sort_unstable();
    out
}

/// CPU time this process has used so far, user and system, in
/// nanoseconds (getrusage(2), microsecond resolution).
pub fn own_process_ns() -> u64 {
    // SAFETY: rusage is plain data; all zeroes is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a live, writable rusage; getrusage fills it and keeps
    // no pointer to it.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0;
    }
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    ns(ru.ru_utime) + ns(ru.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_add_up_to_busy_idle_and_steal() {
        let text = "cpu  100 5 30 1000 7 2 11 4 50 0\n\
                    cpu0 60 5 20 400 3 1 6 2 50 0\n\
                    cpu1 40 0 10 600 4 1 5 2 0 0\n\
                    intr 12345 0 0\nctxt 99\n";
        let s = parse_stat(text, 10_000_000).unwrap();
        assert_eq!(
            s.all,
            CpuTimes {
                busy_ns: 148 * 10_000_000,
                idle_ns: 1007 * 10_000_000,
                steal_ns: 4 * 10_000_000,
            }
        );
        assert_eq!(s.per_cpu.len(), 2);
        assert_eq!(s.per_cpu[0].busy_ns, 92 * 10_000_000);
        assert_eq!(s.per_cpu[1].busy_ns, 56 * 10_000_000);
        let later = CpuTimes {
            busy_ns: s.all.busy_ns + 5,
            ..s.all
        };
        assert_eq!(later.since(&s.all).busy_ns, 5);
        assert_eq!(s.all.since(&later).busy_ns, 0);
    }

    #[test]
    fn stat_without_a_cpu_line_is_none() {
        assert_eq!(parse_stat("intr 1\n", 1), None);
        assert_eq!(parse_stat("cpu 1 2\n", 1), None);
    }

    #[test]
    fn this_machine_reads() {
        let s = stat().unwrap();
        assert!(!s.per_cpu.is_empty());
        assert!(s.all.busy_ns + s.all.idle_ns > 0);
        let me = std::process::id();
        assert!(!thread_runtimes_ns(me).is_empty());
        assert!(own_process_ns() > 0);
    }
}
