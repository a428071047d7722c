//! The hybrid datapath's verdict cache, as the workers and the control
//! plane use it: [`HybridCache`] turns a worker's decision into an entry of
//! the BPF cache (`bpf/include/flow_cache.h`), withdraws entries for
//! conntrack (it is conntrack's [`Projection`]), and moves the generation
//! on after every change of what decisions rest on.
//!
//! Coherence, step by step. A worker reads the generation *before* it
//! enters the ipcache for a batch and stamps its entries with it. The
//! ipcache's publish hook ([`HybridCache::invalidate`]) runs after readers
//! can see a new state: it moves the generation on (here, then in the BPF
//! map) and, if any entry may carry the old one, waits for an RCU grace
//! period, so no XDP program is still serving under the old generation
//! when the update returns. An entry decided against the old state carries
//! the old generation (its worker read it before the change became
//! visible), whenever it is written, and is never served: the program
//! only serves entries of the current generation. A worker that read the
//! new generation entered the ipcache after the swap and decided against
//! the new state.
//!
//! Entries are written only through [`Conntrack::project`], under the
//! flow's conntrack lock, so a flow that closes or goes (and is withdrawn
//! under that lock) is never written back afterwards.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rustc_hash::FxHashMap;

use super::programs::{CacheAction, FlowCacheMaps, FlowKey, FlowVerdict, ProgramError};
use crate::conntrack::{Conntrack, Projection, Tuple};
use crate::endpoint::{Attach, Topology};
use crate::filter::{Action, Cacheable};
use crate::sys::{ethtool, netns, sysctl};
use crate::wire::L4Proto;

/// A local endpoint as the cache sees it.
#[derive(Clone, Copy, Debug)]
pub struct CachePort {
    /// Its host-side veth.
    pub ifindex: u32,
    /// What a frame redirected to it carries: its `eth0`, its host-side veth.
    pub macs: ([u8; 6], [u8; 6]),
    /// Its `eth0` has NAPI (GRO on), so frames redirected into its veth
    /// are delivered: without it they would vanish, so none are cached.
    pub redirect_ok: bool,
    /// The host forwards IPv4 / IPv6 that arrives on its host-side veth as
    /// it forwards what arrives on `xpf_host`, so its frames to the host
    /// stack may be passed there directly.
    pub pass_v4: bool,
    pub pass_v6: bool,
}

/// Sets the endpoints of `topology` up for the cache and says what each
/// may be served: on the endpoints xpf created (whose settings go with
/// them), GRO on `eth0` and forwarding on the host-side veth; an adopted
/// endpoint is left as its owner set it and served as far as that allows.
pub fn prepare_ports(topology: &Topology) -> Vec<(CachePort, Vec<IpAddr>)> {
    topology
        .endpoints
        .iter()
        .map(|e| {
            let (ns, eth0, host) = (&e.spec.netns, &e.peer_ifname, &e.spec.host_ifname);
            if e.spec.attach == Attach::Create {
                let _ = netns::run_in(ns, || ethtool::set_gro(eth0, true));
                let _ = sysctl::write(&format!("net/ipv4/conf/{host}/forwarding"), "1");
                let force = format!("net/ipv6/conf/{host}/force_forwarding");
                if sysctl::path(&force).exists() {
                    let _ = sysctl::write(&force, "1");
                }
            }
            let on = |name: &str| sysctl::read(name).as_deref() == Some("1");
            let port = CachePort {
                ifindex: e.host_ifindex,
                macs: (e.peer_mac, e.host_mac),
                redirect_ok: matches!(netns::run_in(ns, || ethtool::gro(eth0)), Ok(Ok(true))),
                pass_v4: on(&format!("net/ipv4/conf/{host}/forwarding")),
                pass_v6: on("net/ipv6/conf/all/forwarding")
                    || on(&format!("net/ipv6/conf/{host}/force_forwarding")),
            };
            (port, e.spec.addresses().collect())
        })
        .collect()
}

/// What the cache did, for the counters.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Entries written.
    pub inserted: AtomicU64,
    /// Writes the kernel refused.
    pub insert_failed: AtomicU64,
    /// Flows withdrawn (closing, expired, evicted).
    pub withdrawn: AtomicU64,
    /// Generations moved on (every change of policy, ipcache, identities).
    pub invalidations: AtomicU64,
    /// Generation changes that could not reach the BPF map: while this
    /// is non-zero the program may still serve older entries.
    pub invalidate_failed: AtomicU64,
}

/// See the module doc.
pub struct HybridCache {
    maps: FlowCacheMaps,
    /// What workers stamp; the BPF map follows it.
    generation: AtomicU64,
    /// Whether an entry may carry the current generation, so moving on
    /// must wait for running programs.
    dirty: AtomicBool,
    /// Per endpoint index.
    ports: Vec<CachePort>,
    /// Local endpoint addresses: the host-side veth their frames arrive on.
    senders: FxHashMap<IpAddr, u32>,
    /// CLOCK_MONOTONIC (what bpf_ktime_get_ns reads) at conntrack's second 0.
    epoch_ns: u64,
    pub stats: CacheStats,
}

impl HybridCache {
    /// The cache over `maps` for endpoints `ports` (with their addresses)
    /// and a conntrack whose second 0 was CLOCK_MONOTONIC `epoch_ns`. Moves
    /// the generation past whatever the maps hold, so no entry written
    /// before (by a predecessor, say) is served again: its flows are
    /// decided afresh against the policy loaded now.
    pub fn new(
        maps: FlowCacheMaps,
        ports: Vec<(CachePort, Vec<IpAddr>)>,
        epoch_ns: u64,
    ) -> Result<Self, ProgramError> {
        let generation = maps.generation()? + 1;
        let me = Self {
            generation: AtomicU64::new(generation),
            dirty: AtomicBool::new(true),
            senders: ports
                .iter()
                .flat_map(|(p, addrs)| addrs.iter().map(|a| (*a, p.ifindex)))
                .collect(),
            ports: ports.into_iter().map(|(p, _)| p).collect(),
            maps,
            epoch_ns,
            stats: CacheStats::default(),
        };
        me.maps.set_generation(generation)?;
        me.maps.wait_for_programs()?;
        Ok(me)
    }

    /// The generation a worker stamps its next entries with: read it
    /// before entering the ipcache.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Drops every entry from serving: moves the generation on and waits
    /// until no program serves under the old one. The ipcache runs it
    /// after each publish.
    pub fn invalidate(&self) {
        let next = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.stats.invalidations.fetch_add(1, Ordering::Relaxed);
        let moved = self.maps.set_generation(next).and_then(|()| {
            if self.dirty.swap(false, Ordering::SeqCst) {
                self.maps.wait_for_programs()
            } else {
                Ok(())
            }
        });
        if let Err(e) = moved {
            self.stats.invalidate_failed.fetch_add(1, Ordering::Relaxed);
            eprintln!("xpf: verdict cache: {e}");
        }
    }

    /// Writes the entry for a frame endpoint `src` sent and the filter
    /// passed as `action`, decided under `generation`; through conntrack,
    /// which refuses a flow that is closing or gone.
    pub fn offer(
        &self,
        conntrack: &Conntrack,
        src: usize,
        c: &Cacheable,
        action: Action,
        generation: u64,
        now: u64,
    ) {
        let Some(port) = self.ports.get(src) else {
            return;
        };
        let mut v = FlowVerdict {
            generation,
            endpoint: src as u16,
            ..FlowVerdict::default()
        };
        match action {
            Action::ToEndpoint(dst) => {
                let Some(to) = self.ports.get(usize::from(dst)).filter(|p| p.redirect_ok) else {
                    return;
                };
                v.action = CacheAction::XPF_CACHE_REDIRECT.0 as u8;
                v.out_ifindex = to.ifindex;
                (v.dst_mac, v.src_mac) = to.macs;
            }
            Action::ToHost => {
                let passes = match c.tuple.src {
                    IpAddr::V4(_) => port.pass_v4,
                    IpAddr::V6(_) => port.pass_v6,
                };
                if !passes {
                    return;
                }
                v.action = CacheAction::XPF_CACHE_PASS.0 as u8;
            }
            Action::Drop(_) => return,
        }
        let key = flow_key(port.ifindex, &c.tuple, c.ports);
        // Before the write: an invalidation from here on waits for
        // programs that may serve it.
        self.dirty.store(true, Ordering::SeqCst);
        let written = conntrack.project(&c.tuple, now, || match self.maps.insert(&key, &v) {
            Ok(()) => true,
            Err(_) => {
                self.stats.insert_failed.fetch_add(1, Ordering::Relaxed);
                false
            }
        });
        if written {
            self.stats.inserted.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every key the flow of canonical `key` may have entries under: each
    /// direction whose sender is a local endpoint, and for ICMP echo both
    /// types.
    fn keys_of(&self, key: &Tuple) -> impl Iterator<Item = FlowKey> + '_ {
        let echo = match (L4Proto(key.proto), key.src) {
            (L4Proto::ICMP, IpAddr::V4(_)) => Some([8, 0]),
            (L4Proto::ICMPV6, IpAddr::V6(_)) => Some([128, 129]),
            _ => None,
        };
        [*key, key.reversed()].into_iter().flat_map(move |t| {
            let ports = match echo {
                Some([a, b]) => [Some((t.sport, a)), Some((t.sport, b))],
                None => [Some((t.sport, t.dport)), None],
            };
            let ifindex = self.senders.get(&t.src).copied();
            ports
                .into_iter()
                .flatten()
                .filter_map(move |p| Some(flow_key(ifindex?, &t, p)))
        })
    }
}

impl Projection for HybridCache {
    fn withdraw(&self, key: &Tuple) {
        for k in self.keys_of(key) {
            if let Ok(true) = self.maps.delete(&k) {
                self.stats.withdrawn.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn last_seen(&self, key: &Tuple) -> Option<u64> {
        self.keys_of(key)
            .filter_map(|k| self.maps.get(&k).ok().flatten())
            .map(|v| v.last_seen_ns)
            .filter(|ns| *ns > self.epoch_ns)
            .map(|ns| (ns - self.epoch_ns) / 1_000_000_000)
            .max()
    }
}

/// The cache key of tuple `t` sent on `ifindex` with key ports `ports`.
fn flow_key(ifindex: u32, t: &Tuple, ports: (u16, u16)) -> FlowKey {
    let mut k = FlowKey {
        ifindex,
        proto: t.proto,
        sport: ports.0,
        dport: ports.1,
        ..FlowKey::default()
    };
    let put = |a: IpAddr, out: &mut [u8; 16]| match a {
        IpAddr::V4(v) => {
            out[..4].copy_from_slice(&v.octets());
            4
        }
        IpAddr::V6(v) => {
            *out = v.octets();
            6
        }
    };
    k.family = put(t.src, &mut k.saddr);
    put(t.dst, &mut k.daddr);
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_addresses_in_network_order_and_ports_as_given() {
        let t = Tuple {
            src: "198.18.0.2".parse().unwrap(),
            dst: "198.18.0.3".parse().unwrap(),
            sport: 40000,
            dport: 80,
            proto: 6,
        };
        let k = flow_key(7, &t, (t.sport, t.dport));
        assert_eq!((k.ifindex, k.family, k.proto), (7, 4, 6));
        assert_eq!(&k.saddr[..4], &[198, 18, 0, 2]);
        assert_eq!(k.saddr[4..], [0; 12]);
        assert_eq!((k.sport, k.dport), (40000, 80));
    }
}
