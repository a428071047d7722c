//! The BPF programs xpf runs, loaded once and attached per interface.
//!
//! [`Programs::load`] is the one place where the open → configure rodata →
//! load sequence happens, for both skeletons: the XDP redirect
//! (`bpf/xsk_redirect.bpf.c`) and the inbound flow reporter
//! (`bpf/inbound.bpf.c`). Attaching returns an owned value
//! ([`XdpAttachment`], [`TcAttachment`]) holding a BPF link (see
//! [`super::links`]): dropping it detaches the program, unless it was
//! pinned and kept.
//!
//! With a pin folder ([`Programs::load_pinned`]) every named map is pinned
//! there by name, and a later load reuses the pinned maps instead of making
//! new ones: socket slots, counters, the inbound flow ring and its rate
//! limiter carry over from one process to the next, and a program swapped
//! into a pinned link ([`Programs::take_over_xdp`]) finds the same state.
//!
//! libbpf-rs skeletons borrow the storage they were opened into;
//! `skel::LoadedSkel` keeps it alive exactly as long as the skeleton.
//! Invariant: the `'static` borrows inside a skeleton never leave this
//! module and its children (callers get `&self`-bounded access through
//! methods).
//!
//! [`Programs`] is loaded here; each other job has its own file, most
//! adding an `impl Programs` of their own: `attachment` (BPF links, fresh or
//! taken over), `slots` (which AF_XDP socket takes an interface's frames),
//! `counters` (the per-CPU counters), `reports` (inbound flow reports),
//! `mode` ([`AttachMode`]), `pins` (the pin folder's layout), `error`
//! ([`ProgramError`]), `skel` (skeleton storage), and `xdp_drop` and `bench_xdp` (the
//! benchmark baselines).

use std::fmt;
use std::path::Path;
use std::time::Duration;

use super::bpf::inbound::{InboundSkel, InboundSkelBuilder, OpenInboundSkel};
use super::bpf::xsk_redirect::{OpenXskRedirectSkel, XskRedirectSkel, XskRedirectSkelBuilder};
use skel::LoadedSkel;

mod attachment;
mod bench_xdp;
mod counters;
mod error;
mod flow_cache;
mod mode;
mod pins;
mod reports;
mod skel;
mod slots;
mod xdp_drop;

pub use attachment::{Attachment, TcAttachment, XdpAttachment};
pub use bench_xdp::{BenchCounts, BenchXdp, RedirectTo};
pub use counters::{
    TcCounter, XdpCounter, TC_COUNTERS, TC_COUNTER_NAMES, XDP_COUNTERS, XDP_COUNTER_NAMES,
};
pub use error::ProgramError;
pub use flow_cache::{CacheAction, FlowCacheMaps, FlowKey, FlowVerdict, FLOW_CACHE_MAX};
pub use mode::{AttachMode, UnknownAttachMode};
pub use pins::{map_pin_path, tc_link_path, xdp_link_path};
pub use reports::{FlowEvent, InboundReports, INBOUND_DRAIN_MAX};
pub use slots::{MAX_INTERFACES, MAX_XSK_SLOTS};
pub use xdp_drop::XdpDrop;

/// How long the inbound program stays quiet about a connectionless flow it
/// has just reported, unless configured otherwise.
pub const DEFAULT_INBOUND_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Load-time settings baked into the programs' rodata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgramConfig {
    /// Pass frames without an AF_XDP socket to the kernel instead of
    /// dropping them.
    pub fail_open: bool,
    /// How long a connectionless inbound flow stays unreported after a
    /// report. Zero reports every packet.
    pub inbound_report_interval: Duration,
    /// Serve established flows from the verdict cache (the hybrid
    /// datapath) before handing frames to the sockets.
    pub cache: bool,
}

impl Default for ProgramConfig {
    fn default() -> Self {
        Self {
            fail_open: false,
            inbound_report_interval: DEFAULT_INBOUND_REPORT_INTERVAL,
            cache: false,
        }
    }
}

/// Both programs, loaded once, shared by every interface and worker
/// (`Send + Sync`; put it in an `Arc`).
pub struct Programs {
    // Field order is drop order: the ring buffer reader goes before the
    // skeleton whose map it reads.
    inbound_reports: InboundReports,
    xdp: LoadedSkel<XskRedirectSkel<'static>>,
    inbound: LoadedSkel<InboundSkel<'static>>,
}

impl fmt::Debug for Programs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Programs").finish_non_exhaustive()
    }
}

impl Programs {
    /// Loads both programs with the default inbound report interval.
    pub fn load(fail_open: bool) -> Result<Self, ProgramError> {
        Self::load_with(
            ProgramConfig {
                fail_open,
                ..ProgramConfig::default()
            },
            None,
        )
    }

    /// Loads both programs with their maps pinned in `pins` (bpffs): maps
    /// already pinned there are reused, missing ones are made and pinned.
    pub fn load_pinned(config: ProgramConfig, pins: &Path) -> Result<Self, ProgramError> {
        Self::load_with(config, Some(pins))
    }

    /// Opens, configures and loads both programs, with their named maps
    /// pinned in `pins` when given.
    pub fn load_with(config: ProgramConfig, pins: Option<&Path>) -> Result<Self, ProgramError> {
        let pin = |map: &mut libbpf_rs::OpenMapMut<'static>,
                   name: &'static str|
         -> Result<(), ProgramError> {
            let Some(dir) = pins else { return Ok(()) };
            let path = map_pin_path(dir, name);
            map.set_pin_path(&path)
                .map_err(|source| ProgramError::MapPin {
                    map: name,
                    path,
                    source,
                })
        };
        let xdp = LoadedSkel::open_load(
            "xsk_redirect",
            XskRedirectSkelBuilder::default(),
            |open: &mut OpenXskRedirectSkel<'static>| {
                pin(&mut open.maps.xsks, "xsks")?;
                pin(&mut open.maps.if_slots, "if_slots")?;
                pin(&mut open.maps.xdp_counters, "xdp_counters")?;
                pin(&mut open.maps.flow_cache, "flow_cache")?;
                pin(&mut open.maps.cache_generation, "cache_generation")?;
                pin(&mut open.maps.cache_served, "cache_served")?;
                let rodata =
                    open.maps
                        .rodata_data
                        .as_deref_mut()
                        .ok_or(ProgramError::NoRodata {
                            program: "xsk_redirect",
                        })?;
                rodata.fail_open = u8::from(config.fail_open);
                rodata.cache_enabled = u8::from(config.cache);
                Ok(())
            },
        )?;
        let inbound = LoadedSkel::open_load(
            "inbound",
            InboundSkelBuilder::default(),
            |open: &mut OpenInboundSkel<'static>| {
                pin(&mut open.maps.inbound_flows, "inbound_flows")?;
                pin(&mut open.maps.inbound_seen, "inbound_seen")?;
                pin(&mut open.maps.tc_counters, "tc_counters")?;
                let rodata = open
                    .maps
                    .rodata_data
                    .as_deref_mut()
                    .ok_or(ProgramError::NoRodata { program: "inbound" })?;
                rodata.report_interval_ns =
                    u64::try_from(config.inbound_report_interval.as_nanos()).unwrap_or(u64::MAX);
                Ok(())
            },
        )?;
        let inbound_reports = InboundReports::new(&inbound.maps.inbound_flows)?;
        Ok(Self {
            inbound_reports,
            xdp,
            inbound,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_shareable_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Programs>();
        assert_send_sync::<XdpAttachment>();
        assert_send_sync::<TcAttachment>();
    }
}
