//! sysctls of the calling thread's network namespace, through /proc/sys:
//! /proc/sys/net resolves against the opening thread, unlike
//! /sys/class/net.

use std::io;
use std::path::PathBuf;

/// The /proc/sys file of sysctl `name` (slashes, not dots).
pub fn path(name: &str) -> PathBuf {
    std::path::Path::new("/proc/sys").join(name)
}

/// Sets sysctl `name` to `value`.
pub fn write(name: &str, value: &str) -> io::Result<()> {
    std::fs::write(path(name), value)
}

/// The value of sysctl `name`, trimmed; `None` if it cannot be read.
pub fn read(name: &str) -> Option<String> {
    std::fs::read_to_string(path(name))
        .ok()
        .map(|s| s.trim().to_string())
}
