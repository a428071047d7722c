//! What a running datapath has counted: per worker, per endpoint (by drop
//! reason), the parser's refusals, the sockets', programs' and conntrack's
//! counters; as text for people and JSON for tools.

use std::sync::atomic::Ordering;

use super::xsk;
use super::{Datapath, Takeover};
use crate::filter::{DropReason, FilterStats, Passed};

impl Datapath {
    /// Current counters.
    pub fn snapshot(&self) -> Snapshot {
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let workers = self
            .counters
            .iter()
            .map(|c| WorkerSnapshot {
                rx: load(&c.rx),
                allowed: load(&c.allowed),
                allowed_bytes: load(&c.allowed_bytes),
                denied: load(&c.denied),
                tx: load(&c.tx),
                handed_off: load(&c.handed_off),
            })
            .collect();
        let served = match &self.cache {
            Some(_) => self
                .programs
                .cache_served(self.shared.endpoints.len())
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let endpoints = self
            .shared
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let sum = |f: &dyn Fn(&FilterStats) -> u64| {
                    self.filter_stats.iter().map(|s| f(s)).sum::<u64>()
                };
                EndpointSnapshot {
                    name: e.name.clone(),
                    rx: sum(&|s| load(&s.rx[i])),
                    passed_policy: sum(&|s| s.passed_count(i, Passed::Policy)),
                    passed_reply: sum(&|s| s.passed_count(i, Passed::Reply)),
                    passed_related: sum(&|s| s.passed_count(i, Passed::Related)),
                    passed_fragment: sum(&|s| s.passed_count(i, Passed::Fragment)),
                    passed_cached: served.get(i).map_or(0, |s| s.0),
                    passed_cached_bytes: served.get(i).map_or(0, |s| s.1),
                    drops: DropReason::ALL
                        .iter()
                        .map(|r| {
                            let io = self.counters.iter().map(|c| c.io_drops(i, *r));
                            (*r, sum(&|s| s.drop_count(i, *r)) + io.sum::<u64>())
                        })
                        .collect(),
                    conntrack_entries: self.shared.conntrack.held_by(i as u16) as u64,
                    fragments_held: sum(&|s| load(&s.fragments_held[i])),
                }
            })
            .collect();
        let malformed = crate::wire::ParseError::ALL
            .iter()
            .map(|e| {
                (
                    *e,
                    self.filter_stats
                        .iter()
                        .map(|s| load(&s.malformed[e.code() as usize]))
                        .sum(),
                )
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        let ct = self.shared.conntrack.counters();
        let mut sockets = xsk::SocketStats::default();
        for fd in &self.socket_fds {
            if let Some(st) = xsk::statistics(*fd) {
                sockets.add(&st);
            }
        }
        Snapshot {
            sockets,
            workers,
            endpoints,
            malformed,
            xdp: self.programs.xdp_counter_list().unwrap_or_default(),
            tc: self.programs.tc_counter_list().unwrap_or_default(),
            conntrack_entries: self.shared.conntrack.len() as u64,
            conntrack_created: ct.created,
            conntrack_evicted: ct.evicted,
            conntrack_early_dropped: ct.early_dropped,
            conntrack_refused: ct.refused,
            conntrack_share: self.shared.conntrack.share().unwrap_or(0) as u64,
            conntrack_journal_failed: self.journal.failed.load(Ordering::Relaxed),
            cache: self.cache.as_ref().map(|c| CacheSnapshot {
                inserted: load(&c.stats.inserted),
                insert_failed: load(&c.stats.insert_failed),
                withdrawn: load(&c.stats.withdrawn),
                invalidations: load(&c.stats.invalidations),
                invalidate_failed: load(&c.stats.invalidate_failed),
            }),
            instance: self.instance_name().to_string(),
            takeover: self.takeover.clone(),
            gap_dropped_total: self.state.gap_dropped,
        }
    }
}

/// What the verdict cache's owner did (hybrid mode).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CacheSnapshot {
    /// Entries written by the workers.
    pub inserted: u64,
    pub insert_failed: u64,
    /// Entries withdrawn for conntrack (flow closing, expired, evicted).
    pub withdrawn: u64,
    /// Generation changes (policy, ipcache, identity updates).
    pub invalidations: u64,
    pub invalidate_failed: u64,
}

/// Counters of one worker.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct WorkerSnapshot {
    pub rx: u64,
    pub allowed: u64,
    /// Bytes of the allowed frames (Ethernet header included).
    pub allowed_bytes: u64,
    pub denied: u64,
    pub tx: u64,
    /// Frames copied to another worker's queue (their destination's socket
    /// is served there).
    pub handed_off: u64,
}

/// Counters of one endpoint, over all workers.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct EndpointSnapshot {
    pub name: String,
    pub rx: u64,
    pub passed_policy: u64,
    pub passed_reply: u64,
    pub passed_related: u64,
    pub passed_fragment: u64,
    /// Frames the XDP program served from the verdict cache (hybrid mode):
    /// they never reached a worker, so `rx` does not count them.
    pub passed_cached: u64,
    /// Their bytes (Ethernet header included).
    pub passed_cached_bytes: u64,
    #[serde(serialize_with = "ser_drops")]
    pub drops: Vec<(DropReason, u64)>,
    /// Conntrack entries charged to this endpoint (its share is
    /// `conntrack_share`).
    pub conntrack_entries: u64,
    /// First-fragment verdicts it holds, over all workers' tables.
    pub fragments_held: u64,
}

impl EndpointSnapshot {
    pub fn drop_count(&self, reason: DropReason) -> u64 {
        self.drops
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }
}

fn ser_drops<S: serde::Serializer>(d: &[(DropReason, u64)], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(None)?;
    for (r, n) in d.iter().filter(|(_, n)| *n > 0) {
        m.serialize_entry(r.as_str(), n)?;
    }
    m.end()
}

/// Every counter at one moment.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Snapshot {
    pub workers: Vec<WorkerSnapshot>,
    pub endpoints: Vec<EndpointSnapshot>,
    #[serde(serialize_with = "ser_malformed")]
    pub malformed: Vec<(crate::wire::ParseError, u64)>,
    pub xdp: Vec<(&'static str, u64)>,
    pub tc: Vec<(&'static str, u64)>,
    /// The kernel's AF_XDP counters, summed over sockets.
    pub sockets: xsk::SocketStats,
    pub conntrack_entries: u64,
    pub conntrack_created: u64,
    pub conntrack_evicted: u64,
    /// Unanswered entries endpoints at their share gave up for new flows.
    pub conntrack_early_dropped: u64,
    /// New flows refused: their endpoint's share held only answered ones.
    pub conntrack_refused: u64,
    /// Entries each endpoint may hold.
    pub conntrack_share: u64,
    /// Conntrack changes the journal could not record.
    pub conntrack_journal_failed: u64,
    /// The verdict cache (hybrid mode only).
    pub cache: Option<CacheSnapshot>,
    /// The instance (named after the network namespace xpf runs in).
    pub instance: String,
    /// Set when this run took over from a dead instance.
    pub takeover: Option<Takeover>,
    /// Frames that met no xpf (no socket: dropped, or passed under
    /// `fail_open`) over every takeover of this instance.
    pub gap_dropped_total: u64,
}

fn ser_malformed<S: serde::Serializer>(
    d: &[(crate::wire::ParseError, u64)],
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(None)?;
    for (r, n) in d {
        m.serialize_entry(r.as_str(), n)?;
    }
    m.end()
}

impl Snapshot {
    pub fn endpoint(&self, name: &str) -> Option<&EndpointSnapshot> {
        self.endpoints.iter().find(|e| e.name == name)
    }

    pub fn total(&self) -> WorkerSnapshot {
        self.workers
            .iter()
            .fold(WorkerSnapshot::default(), |a, w| WorkerSnapshot {
                rx: a.rx + w.rx,
                allowed: a.allowed + w.allowed,
                allowed_bytes: a.allowed_bytes + w.allowed_bytes,
                denied: a.denied + w.denied,
                tx: a.tx + w.tx,
                handed_off: a.handed_off + w.handed_off,
            })
    }

    /// Human-readable final counters.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let t = self.total();
        let _ = writeln!(
            out,
            "totals: rx {} allowed {} denied {} tx {}",
            t.rx, t.allowed, t.denied, t.tx
        );
        for (i, w) in self.workers.iter().enumerate() {
            let _ = writeln!(
                out,
                "  worker {i}: rx {} allowed {} denied {} tx {} handed off {}",
                w.rx, w.allowed, w.denied, w.tx, w.handed_off
            );
        }
        for e in &self.endpoints {
            let _ = write!(
                out,
                "endpoint {}: rx {} passed {} (policy {}, reply {}, related {}, fragment {}); \
                 served from the verdict cache {}",
                e.name,
                e.rx,
                e.passed_policy + e.passed_reply + e.passed_related + e.passed_fragment,
                e.passed_policy,
                e.passed_reply,
                e.passed_related,
                e.passed_fragment,
                e.passed_cached
            );
            let drops: Vec<String> = e
                .drops
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(r, n)| format!("{} {n}", r.as_str()))
                .collect();
            if drops.is_empty() {
                let _ = writeln!(out, "; no drops");
            } else {
                let _ = writeln!(out, "; dropped: {}", drops.join(", "));
            }
        }
        if !self.malformed.is_empty() {
            let m: Vec<String> = self
                .malformed
                .iter()
                .map(|(e, n)| format!("{} {n}", e.as_str()))
                .collect();
            let _ = writeln!(out, "malformed by reason: {}", m.join(", "));
        }
        let fmt = |v: &[(&str, u64)]| {
            v.iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(out, "xdp: {}", fmt(&self.xdp));
        if let Some(c) = &self.cache {
            let _ = writeln!(
                out,
                "verdict cache: inserted {}, insert failed {}, withdrawn {}, invalidations {}, \
                 invalidation failed {}",
                c.inserted, c.insert_failed, c.withdrawn, c.invalidations, c.invalidate_failed
            );
        }
        let k = &self.sockets;
        let _ = writeln!(
            out,
            "af_xdp sockets: rx_dropped {}, rx_ring_full {}, fill_ring_empty {}, invalid descs rx {} tx {}",
            k.rx_dropped, k.rx_ring_full, k.rx_fill_ring_empty, k.rx_invalid_descs, k.tx_invalid_descs
        );
        let _ = writeln!(out, "tc inbound reports: {}", fmt(&self.tc));
        let _ = writeln!(
            out,
            "conntrack: {} entries ({} per endpoint at most), {} created, {} evicted, \
             {} given up early, {} refused",
            self.conntrack_entries,
            self.conntrack_share,
            self.conntrack_created,
            self.conntrack_evicted,
            self.conntrack_early_dropped,
            self.conntrack_refused
        );
        if let Some(t) = &self.takeover {
            let _ = writeln!(
                out,
                "takeover: from PID {}: {} frames met no xpf in the gap, {} flows restored",
                t.from_pid, t.gap_dropped, t.restored_flows
            );
        }
        if self.gap_dropped_total > 0 {
            let _ = writeln!(
                out,
                "instance {}: {} frames met no xpf over all takeovers",
                self.instance, self.gap_dropped_total
            );
        }
        out
    }
}
