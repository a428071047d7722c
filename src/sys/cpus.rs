//! Waiting for every CPU to pass a point where it runs nothing in a
//! non-preemptible section: the grace period XDP programs need, had far
//! more cheaply than the kernel's `synchronize_rcu` (8-16 ms measured here
//! through a map-in-map update, against tens of microseconds for this).
//!
//! An XDP program runs with preemption disabled (in softirq, or in a
//! threaded NAPI poll with bottom halves disabled) on a non-PREEMPT_RT
//! kernel. A thread that is made to run on a CPU can only get there
//! through a context switch on that CPU, which cannot happen while such a
//! section is running there. So once a thread started after some point has
//! run on every CPU, every program that was running at that point has
//! returned. On PREEMPT_RT bottom halves are preemptible and this does not
//! hold: [`pass_every_cpu`] refuses, and the caller uses the kernel's wait.

use std::io;

/// Whether the kernel is PREEMPT_RT.
fn realtime() -> bool {
    std::fs::read_to_string("/sys/kernel/realtime").is_ok_and(|s| s.trim() == "1")
}

/// The CPUs this process may run on.
fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain bits; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: `c` is below CPU_SETSIZE, the size of `set`.
        .filter(|c| unsafe { libc::CPU_ISSET(*c, &set) })
        .collect())
}

/// The online CPUs, from `/sys/devices/system/cpu/online` ("0-3,5").
fn online_cpus() -> io::Result<Vec<usize>> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online")?;
    let bad = || {
        io::Error::other(format!(
            "cannot read the online CPUs from `{}`",
            text.trim()
        ))
    };
    let mut cpus = Vec::new();
    for range in text.trim().split(',').filter(|r| !r.is_empty()) {
        let (a, b) = range.split_once('-').unwrap_or((range, range));
        let (a, b): (usize, usize) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
        cpus.extend(a..=b);
    }
    Ok(cpus)
}

/// Runs a fresh thread on every online CPU, one after the other, and
/// returns once each has run there (see the module doc). An error when
/// the kernel is PREEMPT_RT, when this process may not run on every
/// online CPU (a cpuset: XDP may run where it cannot go), or when a CPU
/// cannot be reached.
pub fn pass_every_cpu() -> io::Result<()> {
    if realtime() {
        return Err(io::Error::other(
            "PREEMPT_RT: bottom halves are preemptible",
        ));
    }
    let allowed = allowed_cpus()?;
    let online = online_cpus()?;
    if online.iter().any(|c| !allowed.contains(c)) {
        return Err(io::Error::other(
            "this process may not run on every online CPU",
        ));
    }
    for cpu in online {
        let ran = std::thread::spawn(move || {
            // Real-time priority, where allowed, so a CPU busy with
            // ordinary threads (a worker, a NAPI thread) switches to this
            // one at once rather than at its next time slice; the thread
            // does nothing but arrive and exit.
            let param = libc::sched_param { sched_priority: 1 };
            // SAFETY: `param` is a valid sched_param; 0 is this thread. A
            // refusal (no CAP_SYS_NICE) leaves the normal policy.
            unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
            // SAFETY: cpu_set_t is plain bits; all-zero is the empty set.
            let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
            // SAFETY: `cpu` came from CPU_ISSET over the same set size.
            unsafe { libc::CPU_SET(cpu, &mut set) };
            // SAFETY: `set` is a valid cpu_set_t; 0 is this thread. The
            // kernel moves the thread before the call returns.
            let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
            // SAFETY: no arguments.
            rc == 0 && unsafe { libc::sched_getcpu() } == cpu as i32
        })
        .join()
        .unwrap_or(false);
        if !ran {
            return Err(io::Error::other(format!("could not run on CPU {cpu}")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_pass_reaches_every_allowed_cpu() {
        super::pass_every_cpu().unwrap();
    }
}
