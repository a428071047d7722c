//! `xpf stop` and `xpf cleanup` (also behind `xpf endpoint delete`): ending
//! an instance on purpose, and removing what a dead one left.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::datapath::endpoint_specs;
use crate::datapath::instance::{Instance, LiveInstance};
use crate::endpoint::{self, Attach};

pub(super) fn stop(keep_datapath: bool, timeout: Duration) -> Result<()> {
    let Some(live) = LiveInstance::find().context("looking for a running xpf")? else {
        bail!(
            "no xpf is running in this network namespace (instance `{}`)",
            Instance::current_name().unwrap_or_else(|_| "?".into())
        );
    };
    let (signal, what) = if keep_datapath {
        (libc::SIGUSR2, "handed over (datapath left enforcing)")
    } else {
        (libc::SIGTERM, "stopped (everything removed)")
    };
    // SAFETY: kill(2) with a PID read from the lock its holder keeps.
    if unsafe { libc::kill(live.pid as i32, signal) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("signalling xpf (PID {})", live.pid));
    }
    let deadline = Instant::now() + timeout;
    while !live.gone() {
        if Instant::now() >= deadline {
            bail!(
                "xpf (PID {}) has not exited after {} s",
                live.pid,
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("xpf (PID {}, instance `{}`): {what}", live.pid, live.name);
    Ok(())
}

/// Removes what a dead instance recorded, then (with a config) the config's
/// created endpoints, then the pins and state. Refuses against a live one.
pub(super) fn cleanup(config: Option<&Path>) -> Result<()> {
    // Read the config first: a bad one removes nothing.
    let specs = match config {
        Some(path) => endpoint_specs(&super::load_config(path)?.world),
        None => Vec::new(),
    };
    let (instance, leftover) = Instance::claim()?;
    let records = leftover.map(|l| l.state.endpoints).unwrap_or_default();
    if !records.is_empty() {
        println!(
            "instance `{}`: removing what a stopped xpf left",
            instance.name
        );
    }
    for line in endpoint::remove_leftovers(&records)? {
        println!("{line}");
    }
    for spec in specs {
        if records.iter().any(|r| r.name == spec.name) {
            continue;
        }
        let deleted = endpoint::delete(&spec)?;
        let what = match (spec.attach, deleted) {
            (Attach::Existing, _) => "attach: existing, left alone",
            (_, true) => "deleted",
            (_, false) => "not present",
        };
        println!("endpoint `{}`: {what}", spec.name);
    }
    let pinned = instance.has_pins();
    let name = instance.name.clone();
    instance.remove()?;
    if pinned {
        println!("instance `{name}`: pinned programs and maps removed");
    }
    Ok(())
}
