//! The `datapath:` section of `xpf.yaml`: how `xpf run` moves frames
//! (workers and their CPUs, XDP attach mode, AF_XDP bind mode and ring
//! sizes, what workers do with frames, conntrack size). The types live
//! with the datapath that uses them; `config` hands the section here to be
//! checked, and names the field in any error.

use std::collections::HashSet;

use serde::Deserialize;

pub use super::programs::AttachMode;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDatapath {
    workers: Option<u32>,
    cpus: Option<Vec<usize>>,
    attach: Option<String>,
    bind: Option<String>,
    rx_ring: Option<u32>,
    tx_ring: Option<u32>,
    fill_ring: Option<u32>,
    comp_ring: Option<u32>,
    frame_size: Option<u32>,
    batch_size: Option<u32>,
    fail_open: Option<bool>,
    conntrack_max: Option<usize>,
    mode: Option<String>,
}

/// How AF_XDP sockets bind (`datapath.bind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindMode {
    /// Zero-copy where the driver supports it, else copy.
    Auto,
    Copy,
    ZeroCopy,
}

impl BindMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Copy => "copy",
            Self::ZeroCopy => "zerocopy",
        }
    }
}

/// What the workers do with frames (`datapath.mode`). Anything but
/// `filter` is a benchmark baseline that enforces nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Parse, anti-spoofing, conntrack, ipcache, policy: the filter.
    Filter,
    /// Parse and forward to the destination, no checks at all.
    Forward,
    /// Receive and discard.
    RxDrop,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Filter => "filter",
            Self::Forward => "forward",
            Self::RxDrop => "rxdrop",
        }
    }
}

/// The `datapath:` section: how `xpf run` moves frames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatapathConfig {
    /// CPU of each worker, in worker order.
    pub cpus: Vec<usize>,
    pub attach: AttachMode,
    pub bind: BindMode,
    pub rx_ring: u32,
    pub tx_ring: u32,
    pub fill_ring: u32,
    pub comp_ring: u32,
    pub frame_size: u32,
    pub batch_size: u32,
    /// Pass frames to the kernel unfiltered when no socket is registered
    /// (default false: drop them, fail-closed).
    pub fail_open: bool,
    pub conntrack_max: usize,
    pub mode: Mode,
}

impl Default for DatapathConfig {
    fn default() -> Self {
        Self {
            cpus: vec![0],
            attach: AttachMode::Native,
            bind: BindMode::Auto,
            rx_ring: 2048,
            tx_ring: 2048,
            fill_ring: 4096,
            comp_ring: 2048,
            frame_size: 2048,
            batch_size: 64,
            fail_open: false,
            conntrack_max: 512 * 1024,
            mode: Mode::Filter,
        }
    }
}

/// Validates the `datapath:` section; errors are (field, message).
pub(crate) fn parse(raw: RawDatapath) -> Result<DatapathConfig, (&'static str, String)> {
    let d = DatapathConfig::default();
    let cpus = match (raw.workers, raw.cpus) {
        (Some(_), Some(_)) => {
            return Err(("cpus", "give `workers` or `cpus`, not both".into()));
        }
        (Some(n), None) => {
            if !(1..=64).contains(&n) {
                return Err(("workers", format!("{n} is not between 1 and 64")));
            }
            let online = online_cpus();
            (0..n as usize).map(|i| i % online).collect()
        }
        (None, Some(cpus)) => {
            if cpus.is_empty() {
                return Err(("cpus", "needs at least one CPU".into()));
            }
            let online = online_cpus();
            if let Some(c) = cpus.iter().find(|c| **c >= online) {
                return Err((
                    "cpus",
                    format!(
                        "CPU {c} does not exist (this machine has {online}: 0-{})",
                        online - 1
                    ),
                ));
            }
            let mut seen = HashSet::new();
            if let Some(c) = cpus.iter().find(|c| !seen.insert(**c)) {
                return Err(("cpus", format!("CPU {c} is listed twice")));
            }
            cpus
        }
        (None, None) => d.cpus,
    };
    let attach = match raw.attach.as_deref() {
        None => d.attach,
        Some("native") => AttachMode::Native,
        Some("generic") => AttachMode::Generic,
        Some("offload") => AttachMode::Offload,
        Some(o) => {
            return Err((
                "attach",
                format!("`{o}` is not one of: native, generic, offload"),
            ))
        }
    };
    let bind = match raw.bind.as_deref() {
        None => d.bind,
        Some("auto") => BindMode::Auto,
        Some("copy") => BindMode::Copy,
        Some("zerocopy") => BindMode::ZeroCopy,
        Some(o) => return Err(("bind", format!("`{o}` is not one of: auto, copy, zerocopy"))),
    };
    let ring = |field: &'static str,
                v: Option<u32>,
                default: u32|
     -> Result<u32, (&'static str, String)> {
        let v = v.unwrap_or(default);
        if !v.is_power_of_two() || !(64..=32768).contains(&v) {
            return Err((
                field,
                format!("{v} must be a power of two from 64 to 32768"),
            ));
        }
        Ok(v)
    };
    let frame_size = raw.frame_size.unwrap_or(d.frame_size);
    if frame_size != 2048 && frame_size != 4096 {
        return Err(("frame_size", format!("{frame_size} must be 2048 or 4096")));
    }
    let batch_size = raw.batch_size.unwrap_or(d.batch_size);
    if !(1..=256).contains(&batch_size) {
        return Err((
            "batch_size",
            format!("{batch_size} is not between 1 and 256"),
        ));
    }
    let conntrack_max = raw.conntrack_max.unwrap_or(d.conntrack_max);
    if !(1024..=1 << 26).contains(&conntrack_max) {
        return Err((
            "conntrack_max",
            format!("{conntrack_max} is not between 1024 and 67108864"),
        ));
    }
    let mode = match raw.mode.as_deref() {
        None | Some("filter") => Mode::Filter,
        Some("forward") => Mode::Forward,
        Some("rxdrop") => Mode::RxDrop,
        Some(o) => {
            return Err((
                "mode",
                format!("`{o}` is not one of: filter, forward, rxdrop"),
            ))
        }
    };
    Ok(DatapathConfig {
        mode,
        cpus,
        attach,
        bind,
        rx_ring: ring("rx_ring", raw.rx_ring, d.rx_ring)?,
        tx_ring: ring("tx_ring", raw.tx_ring, d.tx_ring)?,
        fill_ring: ring("fill_ring", raw.fill_ring, d.fill_ring)?,
        comp_ring: ring("comp_ring", raw.comp_ring, d.comp_ring)?,
        frame_size,
        batch_size,
        fail_open: raw.fail_open.unwrap_or(d.fail_open),
        conntrack_max,
    })
}

fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
