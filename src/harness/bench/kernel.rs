//! The in-kernel kinds: `xdp-drop` (XDP_DROP, counted), and the ceilings
//! the hybrid datapath is held to, `xdp-redirect` (endpoint to endpoint:
//! the Ethernet header rewritten as xpf's worker does, then a DEVMAP
//! redirect into the destination's host-side veth) and `xdp-pass` (to the
//! outside: XDP_PASS into the host stack, which forwards). Each runs on
//! bare endpoints (xpf not running), made for the run and removed after.
//!
//! Also the threaded NAPI that `xdp-redirect`, `xdp-pass` and `xpf-hybrid`
//! run with ([`Kind::threaded_napi`](super::plan::Kind::threaded_napi)):
//! the sending endpoint's host-side veth (where the XDP program runs) is
//! polled by a NAPI thread pinned to the datapath CPU, the CPU xpf's
//! worker is pinned to. Endpoint to endpoint, the destination's `eth0`
//! gets GRO (so that a redirect into its peer is delivered); its NAPI runs
//! in softirq, raised by that thread and so on the same CPU, where it
//! drains what the thread redirects before the thread polls again. (A
//! second NAPI thread for it, on the same CPU, let the sender's thread
//! outrun it and lost most frames at its ring.) The setting goes with the
//! interfaces.

use anyhow::{bail, Context, Result};

use super::cpu::Tasks;
use super::plan::{Destination, Point, DATAPATH_CPU};
use super::run::{Bench, Measured};
use crate::config::Config;
use crate::datapath::endpoint_specs;
use crate::datapath::programs::{AttachMode, BenchXdp, RedirectTo, XdpDrop};
use crate::endpoint::{self, Endpoint, PEER_IFNAME};
use crate::sys::{ethtool, napi, netns};

impl Bench<'_> {
    /// The endpoints of `p` on their own (xpf not running): `src`, and
    /// endpoint to endpoint `dst` after it.
    pub(super) fn bare_endpoints(&self, p: &Point) -> Result<Vec<Endpoint>> {
        let cfg = Config::load(&self.config(p, "userspace", false)?)?;
        let mut made: Vec<Endpoint> = Vec::new();
        for spec in endpoint_specs(&cfg.world) {
            match endpoint::create(spec) {
                Ok(ep) => made.push(ep),
                Err(e) => {
                    teardown(made);
                    return Err(e.into());
                }
            }
        }
        Ok(made)
    }

    /// Threaded NAPI for a run of `p` on the sending endpoint's host-side
    /// veth `src_host` (which must have NAPI already: an XDP program),
    /// pinned to [`DATAPATH_CPU`], and endpoint to endpoint GRO on the
    /// destination's `eth0`. Returns the NAPI threads.
    pub(super) fn threaded_napi(&self, p: &Point, src_host: &str) -> Result<Vec<u32>> {
        let places = vec![(self.bed.host.name().to_string(), src_host.to_string())];
        if p.to == Destination::Endpoint {
            let ns = self.dst_ns();
            let on = netns::run_in(&ns, || ethtool::set_gro(PEER_IFNAME, true))?
                .with_context(|| format!("turning GRO on for {PEER_IFNAME} in {ns}"))?;
            if !on {
                bail!("{PEER_IFNAME} in {ns} refused GRO: a redirect into it would be lost");
            }
        }
        let mut threads = Vec::new();
        for (ns, ifname) in places {
            let made = napi::set_threaded(&ns, &ifname)?;
            if made.is_empty() {
                bail!("threaded NAPI on {ifname} in {ns}: no NAPI thread appeared");
            }
            for pid in &made {
                napi::pin(*pid, DATAPATH_CPU)
                    .with_context(|| format!("pinning NAPI thread {pid} of {ifname}"))?;
            }
            threads.extend(made);
        }
        Ok(threads)
    }

    pub(super) fn xdp_drop(&self, p: &Point) -> Result<Measured> {
        let eps = self.bare_endpoints(p)?;
        let result = (|| {
            let ep = &eps[0];
            let prog = XdpDrop::load()?;
            let _link = prog.attach(&ep.spec.host_ifname, ep.host_ifindex, AttachMode::Native)?;
            let before = prog.dropped()?;
            let t = std::time::Instant::now();
            let (gen, cpu) = self.gen_measured(p, self.seconds, Tasks::default(), &mut || {
                let n = prog.dropped().unwrap_or(0) - before;
                format!(
                    "{:.3} Mpps dropped",
                    n as f64 / t.elapsed().as_secs_f64() / 1e6
                )
            })?;
            let dropped = prog.dropped()? - before;
            Ok(Measured {
                offered: gen.pps,
                delivered: dropped as f64 / gen.seconds,
                cpu,
                ..Measured::default()
            })
        })();
        teardown(eps);
        result
    }

    /// `xdp-redirect`: endpoint to endpoint only.
    pub(super) fn xdp_redirect(&self, p: &Point) -> Result<Measured> {
        if p.to != Destination::Endpoint {
            bail!("xdp-redirect runs endpoint to endpoint only");
        }
        let eps = self.bare_endpoints(p)?;
        let result = (|| {
            let (src, dst) = (&eps[0], &eps[1]);
            let prog = BenchXdp::load(Some(RedirectTo {
                dst_mac: dst.peer_mac,
                src_mac: dst.host_mac,
                ifindex: dst.host_ifindex,
            }))?;
            let _link = prog.attach(&src.spec.host_ifname, src.host_ifindex, AttachMode::Native)?;
            let napi = self.threaded_napi(p, &src.spec.host_ifname)?;
            let before = prog.counts()?;
            let mut m = self.gen_to_sink(
                p,
                self.seconds,
                Tasks {
                    napi,
                    ..Tasks::default()
                },
            )?;
            let after = prog.counts()?;
            let redirected = format!(
                "XDP redirected {} frames",
                after.redirected - before.redirected
            );
            m.notes = Some(match m.notes.take() {
                Some(n) => format!("{redirected}; {n}"),
                None => redirected,
            });
            Ok(m)
        })();
        teardown(eps);
        result
    }

    /// `xdp-pass`: to the outside only.
    pub(super) fn xdp_pass(&self, p: &Point) -> Result<Measured> {
        if p.to != Destination::Outside {
            bail!("xdp-pass runs to the outside only");
        }
        let eps = self.bare_endpoints(p)?;
        let result = (|| {
            let src = &eps[0];
            let prog = BenchXdp::load(None)?;
            let _link = prog.attach(&src.spec.host_ifname, src.host_ifindex, AttachMode::Native)?;
            let napi = self.threaded_napi(p, &src.spec.host_ifname)?;
            self.gen_to_sink(
                p,
                self.seconds,
                Tasks {
                    napi,
                    ..Tasks::default()
                },
            )
        })();
        teardown(eps);
        result
    }
}

/// Removes bare endpoints, saying (not failing) when one will not go: the
/// testbed's namespaces are removed at the end anyway.
pub(super) fn teardown(eps: Vec<Endpoint>) {
    for ep in eps {
        if let Err(e) = ep.teardown() {
            eprintln!("xpf bench: {e}");
        }
    }
}
