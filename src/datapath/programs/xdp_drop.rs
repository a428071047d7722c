//! The benchmark baseline, [`XdpDrop`]: a program of its own, loaded
//! apart from [`Programs`](super::Programs).

use std::os::fd::{AsFd, AsRawFd};

use super::attachment::attach_xdp_link;
use super::counters::sum_per_cpu;
use super::skel::LoadedSkel;
use super::{AttachMode, ProgramError, XdpAttachment};
use crate::datapath::bpf::xdp_drop::{XdpDropSkel, XdpDropSkelBuilder};

/// Benchmark baseline: XDP_DROP on an interface, counted (`bpf/xdp_drop.bpf.c`).
pub struct XdpDrop {
    skel: LoadedSkel<XdpDropSkel<'static>>,
}

impl XdpDrop {
    pub fn load() -> Result<Self, ProgramError> {
        Ok(Self {
            skel: LoadedSkel::open_load("xdp_drop", XdpDropSkelBuilder::default(), |_| Ok(()))?,
        })
    }

    /// Attaches the dropper to `ifindex` in `mode`; see [`Programs::attach_xdp`](super::Programs::attach_xdp).
    pub fn attach(
        &self,
        ifname: &str,
        ifindex: u32,
        mode: AttachMode,
    ) -> Result<XdpAttachment, ProgramError> {
        attach_xdp_link(
            self.skel.progs.xpf_xdp_drop.as_fd().as_raw_fd(),
            ifname,
            ifindex,
            mode,
        )
    }

    /// Frames dropped so far, over all CPUs.
    pub fn dropped(&self) -> Result<u64, ProgramError> {
        let [n] = sum_per_cpu::<1>(&self.skel.maps.dropped, "dropped")?;
        Ok(n)
    }
}
