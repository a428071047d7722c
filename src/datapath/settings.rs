//! The `datapath:` section of `xpf.yaml`: how `xpf run` moves frames
//! (workers and their CPUs, XDP attach mode, AF_XDP bind mode and ring
//! sizes, what workers do with frames, conntrack size). Each setting's
//! type lives with its owner (the attach mode with the programs, the
//! socket settings with `xsk`, the mode here); a named setting parses from
//! the same table it prints with ([`Named`]). `config` hands the section
//! here to be checked, and names the field in any error.

use std::collections::HashSet;

use serde::Deserialize;

use super::programs::AttachMode;
use super::xsk::{BindMode, XskSettings};

/// A setting written as one of a few names.
pub trait Named: Copy + PartialEq + 'static {
    /// Every value, in the order the names are listed in errors.
    const ALL: &'static [Self];
    fn as_str(self) -> &'static str;
}

/// `value` as a `T`, or `default` when absent; an unknown name is refused
/// with the names there are.
pub fn named<T: Named>(
    field: &'static str,
    value: Option<&str>,
    default: T,
) -> Result<T, (&'static str, String)> {
    let Some(v) = value else {
        return Ok(default);
    };
    T::ALL
        .iter()
        .copied()
        .find(|t| t.as_str() == v)
        .ok_or_else(|| {
            let names: Vec<&str> = T::ALL.iter().map(|t| t.as_str()).collect();
            (field, format!("`{v}` is not one of: {}", names.join(", ")))
        })
}

impl Named for AttachMode {
    const ALL: &'static [Self] = &AttachMode::ALL;
    fn as_str(self) -> &'static str {
        AttachMode::as_str(self)
    }
}

impl Named for BindMode {
    const ALL: &'static [Self] = &[Self::Auto, Self::Copy, Self::ZeroCopy];
    fn as_str(self) -> &'static str {
        BindMode::as_str(self)
    }
}

impl Named for Mode {
    const ALL: &'static [Self] = &[Self::Hybrid, Self::Userspace, Self::Forward, Self::RxDrop];
    fn as_str(self) -> &'static str {
        Mode::as_str(self)
    }
}

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

/// How frames are decided (`datapath.mode`). `hybrid` and `userspace`
/// enforce the same policy; anything else is a benchmark baseline that
/// enforces nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The filter, with established flows served by the XDP program from
    /// a verdict cache the workers fill; everything else as `userspace`.
    Hybrid,
    /// Every frame through AF_XDP to a worker: parse, anti-spoofing,
    /// conntrack, ipcache, policy.
    Userspace,
    /// Parse and forward to the destination, no checks at all.
    Forward,
    /// Receive and discard.
    RxDrop,
}

impl Mode {
    /// Whether frames are checked against the policy (not a baseline).
    pub fn enforces(self) -> bool {
        matches!(self, Self::Hybrid | Self::Userspace)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hybrid => "hybrid",
            Self::Userspace => "userspace",
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
    /// How the AF_XDP sockets are bound and sized.
    pub xsk: XskSettings,
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
            xsk: XskSettings::default(),
            batch_size: 64,
            fail_open: false,
            conntrack_max: 512 * 1024,
            mode: Mode::Hybrid,
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
    let attach = named("attach", raw.attach.as_deref(), d.attach)?;
    let xsk = XskSettings::checked(
        named("bind", raw.bind.as_deref(), d.xsk.bind)?,
        [
            ("rx_ring", raw.rx_ring),
            ("tx_ring", raw.tx_ring),
            ("fill_ring", raw.fill_ring),
            ("comp_ring", raw.comp_ring),
        ],
        raw.frame_size,
    )?;
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
    let mode = named("mode", raw.mode.as_deref(), d.mode)?;
    Ok(DatapathConfig {
        mode,
        cpus,
        attach,
        xsk,
        batch_size,
        fail_open: raw.fail_open.unwrap_or(d.fail_open),
        conntrack_max,
    })
}

fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_setting_parses_from_the_names_it_prints() {
        for m in AttachMode::ALL {
            assert_eq!(named("attach", Some(m.as_str()), AttachMode::Native), Ok(m));
        }
        for b in BindMode::ALL {
            assert_eq!(named("bind", Some(b.as_str()), BindMode::Auto), Ok(*b));
        }
        assert_eq!(named("mode", None, Mode::Forward), Ok(Mode::Forward));
        assert_eq!(
            named("mode", Some("fast"), Mode::Userspace),
            Err((
                "mode",
                "`fast` is not one of: hybrid, userspace, forward, rxdrop".to_string()
            ))
        );
    }

    #[test]
    fn socket_settings_name_the_bad_field() {
        let rings = |rx| {
            [
                ("rx_ring", rx),
                ("tx_ring", None),
                ("fill_ring", None),
                ("comp_ring", None),
            ]
        };
        let ok = XskSettings::checked(BindMode::Copy, rings(Some(512)), None).unwrap();
        assert_eq!(
            (ok.rx_ring, ok.fill_ring, ok.bind),
            (512, 4096, BindMode::Copy)
        );
        let err = XskSettings::checked(BindMode::Auto, rings(Some(1000)), None).unwrap_err();
        assert_eq!(err.0, "rx_ring");
        let err = XskSettings::checked(BindMode::Auto, rings(None), Some(3000)).unwrap_err();
        assert_eq!(err.0, "frame_size");
    }
}
