//! The hybrid datapath's benchmark baselines, [`BenchXdp`]: the in-kernel
//! ceilings `xpf bench datapath` compares xpf with (`bpf/bench_xdp.bpf.c`),
//! loaded apart from [`Programs`](super::Programs) like
//! [`XdpDrop`](super::XdpDrop).

use std::os::fd::{AsFd, AsRawFd};

use libbpf_rs::{MapCore, MapFlags};

use super::attachment::attach_xdp_link;
use super::counters::sum_per_cpu;
use super::skel::LoadedSkel;
use super::{AttachMode, ProgramError, XdpAttachment};
use crate::datapath::bpf::bench_xdp::{BenchXdpSkel, BenchXdpSkelBuilder, OpenBenchXdpSkel};

/// Counters of `bench_counters`, in the C enum's order.
const COUNTERS: usize = 3;

/// Benchmark baselines: XDP_REDIRECT to another interface with the
/// Ethernet addresses rewritten (`xdp-redirect`), and XDP_PASS
/// (`xdp-pass`), each counted.
pub struct BenchXdp {
    skel: LoadedSkel<BenchXdpSkel<'static>>,
    /// Loaded with a target: [`BenchXdp::attach`] attaches the redirect.
    redirects: bool,
}

/// What the redirect rewrites a frame's Ethernet header to, and where it
/// sends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedirectTo {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// The interface the frame is transmitted on.
    pub ifindex: u32,
}

/// What the baselines counted, over all CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BenchCounts {
    /// Frames handed to the redirect.
    pub redirected: u64,
    /// Frames passed to the host stack.
    pub passed: u64,
    /// Frames too short for an Ethernet header, dropped.
    pub short: u64,
}

impl BenchXdp {
    /// Loads both programs; the redirect sends to `to` (`None`: only the
    /// pass program is meant to be used, and the redirect drops).
    pub fn load(to: Option<RedirectTo>) -> Result<Self, ProgramError> {
        let skel = LoadedSkel::open_load(
            "bench_xdp",
            BenchXdpSkelBuilder::default(),
            |open: &mut OpenBenchXdpSkel<'static>| {
                let Some(to) = to else { return Ok(()) };
                let rodata =
                    open.maps
                        .rodata_data
                        .as_deref_mut()
                        .ok_or(ProgramError::NoRodata {
                            program: "bench_xdp",
                        })?;
                rodata.dst_mac = to.dst_mac;
                rodata.src_mac = to.src_mac;
                Ok(())
            },
        )?;
        if let Some(to) = to {
            skel.maps
                .tx_port
                .update(
                    &0u32.to_ne_bytes(),
                    &to.ifindex.to_ne_bytes(),
                    MapFlags::ANY,
                )
                .map_err(|source| ProgramError::Map {
                    map: "tx_port",
                    action: format!("setting the target to ifindex {}", to.ifindex),
                    source,
                })?;
        }
        Ok(Self {
            skel,
            redirects: to.is_some(),
        })
    }

    /// Attaches to `ifindex` in `mode` the redirect, if the programs were
    /// loaded with a target, else the pass program.
    pub fn attach(
        &self,
        ifname: &str,
        ifindex: u32,
        mode: AttachMode,
    ) -> Result<XdpAttachment, ProgramError> {
        let progs = &self.skel.progs;
        let prog = if self.redirects {
            &progs.xpf_bench_redirect
        } else {
            &progs.xpf_bench_pass
        };
        attach_xdp_link(prog.as_fd().as_raw_fd(), ifname, ifindex, mode)
    }

    /// The counters so far, over all CPUs.
    pub fn counts(&self) -> Result<BenchCounts, ProgramError> {
        let [redirected, passed, short] =
            sum_per_cpu::<COUNTERS>(&self.skel.maps.bench_counters, "bench_counters")?;
        Ok(BenchCounts {
            redirected,
            passed,
            short,
        })
    }
}
