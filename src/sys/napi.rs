//! Threaded NAPI: an interface's NAPI instances polled by kernel threads of
//! their own (`napi/<ifname>-<napi id>`) instead of in softirq on whichever
//! CPU raised them, so they can be pinned to a CPU like a worker.
//!
//! The switch is `/sys/class/net/<ifname>/threaded`. Sysfs shows the
//! network namespace of whoever mounted it, not the reader's, so
//! [`set_threaded`] works on a thread of its own that takes a private
//! mount namespace (its mounts never reach the rest of the machine: the
//! tree is made a slave first, as `ip netns exec` does), joins the target
//! network namespace and mounts a sysfs of it over `/sys`. The thread, its
//! mount namespace and that sysfs end when it returns.
//!
//! The kernel refuses the switch on an interface without NAPI (a veth has
//! NAPI only with an XDP program attached or GRO on), and makes the threads
//! when it is set. They go with the interface; nothing is left to undo.

use std::ffi::CStr;
use std::io;

use crate::sys::cputime::kernel_threads;

/// Task names are cut to 15 bytes (TASK_COMM_LEN less its NUL).
const COMM_LEN: usize = 15;

/// Turns threaded NAPI on for `ifname` in the network namespace `netns`
/// (an `ip netns` name); returns the pids of the NAPI threads it made.
pub fn set_threaded(netns: &str, ifname: &str) -> io::Result<Vec<u32>> {
    if ifname.is_empty() || ifname.contains(['/', '\0']) || ifname.len() >= 16 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{ifname}` is not an interface name"),
        ));
    }
    let prefix = thread_prefix(ifname);
    let before = kernel_threads(&prefix);
    std::thread::scope(|s| {
        s.spawn(|| write_in_private_sysfs(netns, ifname))
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
    .map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("threaded NAPI on `{ifname}` in network namespace `{netns}`: {e}"),
        )
    })?;
    Ok(kernel_threads(&prefix)
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect())
}

/// The start of the names of `ifname`'s NAPI threads, as the kernel cuts
/// them.
fn thread_prefix(ifname: &str) -> String {
    let mut p = format!("napi/{ifname}-");
    p.truncate(COMM_LEN);
    p
}

/// On the calling thread (which must be one of its own: its mount
/// namespace changes): private mounts, the network namespace `netns`, a
/// sysfs of it on `/sys`, and `1` into the interface's `threaded`.
fn write_in_private_sysfs(netns: &str, ifname: &str) -> io::Result<()> {
    // SAFETY: unshare takes no pointers; CLONE_NEWNS (with the CLONE_FS it
    // implies) affects the calling thread only.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(io::Error::last_os_error());
    }
    mount(None, c"/", None, libc::MS_REC | libc::MS_SLAVE)?;
    crate::sys::netns::enter(netns).map_err(io::Error::other)?;
    mount(Some(c"sysfs"), c"/sys", Some(c"sysfs"), 0)?;
    std::fs::write(format!("/sys/class/net/{ifname}/threaded"), "1")
}

fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
) -> io::Result<()> {
    let ptr = |s: Option<&CStr>| s.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: every pointer is null or a NUL-terminated string that
    // outlives the call; no data argument.
    let rc = unsafe {
        libc::mount(
            ptr(source),
            target.as_ptr(),
            ptr(fstype),
            flags,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Pins task `pid` (a NAPI thread, for one) to CPU `cpu`.
pub fn pin(pid: u32, cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("no CPU {cpu}"),
        ));
    }
    // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE (checked above).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: `set` is a live cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(pid, std::mem::size_of_val(&set), &set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_names_are_cut_as_the_kernel_cuts_them() {
        assert_eq!(thread_prefix("eth0"), "napi/eth0-");
        assert_eq!(thread_prefix("xpf-src"), "napi/xpf-src-");
        assert_eq!(thread_prefix("xpf-0123456789"), "napi/xpf-012345");
    }

    #[test]
    fn threads_appear_for_a_veth_with_napi_and_the_mount_stays_private() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root (network namespaces)");
            return;
        }
        let ns = crate::sys::netns::OwnedNetns::create(&format!("xpf-napi{}", std::process::id()))
            .unwrap();
        let ip = |args: &[&str]| crate::sys::ip::run(args).unwrap();
        ip(&[
            "-n",
            ns.name(),
            "link",
            "add",
            "xnapi0",
            "type",
            "veth",
            "peer",
            "xnapi1",
        ]);
        ip(&["-n", ns.name(), "link", "set", "xnapi0", "up"]);
        ip(&["-n", ns.name(), "link", "set", "xnapi1", "up"]);
        // No NAPI yet (GRO off): the kernel refuses.
        assert!(set_threaded(ns.name(), "xnapi0").is_err());
        let gro =
            crate::sys::netns::run_in(ns.name(), || crate::sys::ethtool::set_gro("xnapi0", true))
                .unwrap()
                .unwrap();
        assert!(gro);
        let threads = set_threaded(ns.name(), "xnapi0").unwrap();
        assert_eq!(threads.len(), 1, "{threads:?}");
        pin(threads[0], 0).unwrap();
        // The sysfs of the namespace was mounted where only that thread saw it.
        assert!(!std::path::Path::new("/sys/class/net/xnapi0").exists());
    }

    #[test]
    fn names_no_interface_can_have_are_refused() {
        for bad in ["", "a/b", "0123456789abcdef"] {
            let e = set_threaded("xpf-no-such-netns", bad).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad}");
        }
    }
}
