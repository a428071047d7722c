//! Kernel-facing side of xpf: endpoints' veths, BPF programs, AF_XDP
//! sockets and the worker threads, put together by [`Datapath::start`] and
//! taken apart by [`Datapath::stop`] (or by dropping it, also half-way
//! through a failed start).
//!
//! ```text
//!  endpoint netns          host netns (where xpf runs)
//!  ┌────────┐ veth  ┌───────────┐ XDP: redirect ┌──────────┐
//!  │  eth0  ├──────►│ xpf-<ep>  ├──────────────►│ AF_XDP   │  worker: parse,
//!  └────────┘       └───────────┘  to XSKMAP    │ socket   │  spoof check,
//!       ▲            tcx egress: report          └────┬─────┘  conntrack,
//!       │            inbound flows (ring buf)         │        ipcache, policy
//!       │                                             ├── to endpoint: TX on its veth's socket
//!       └─────────────── kernel routes ◄── xpf_host ◄─┴── to host/world: TX on xpf_net
//! ```
//!
//! Order of start: the topology (namespaces, veths, the internal pair),
//! the programs, XDP and TC attachments, the sockets (registered in the
//! XSKMAP), then the workers. Until a socket is registered the XDP program
//! drops (fail-closed). Teardown runs the other way round; everything is
//! held by owning values, so an error at any step undoes the steps before.

pub mod bpf;
pub mod programs;
pub mod worker;
pub mod xsk;

use std::net::IpAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::bounded;

use crate::config::Config;
use crate::conntrack::{self, Conntrack};
use crate::endpoint::{self, Attach, EndpointSpec, Topology};
use crate::engine::{Engine, EngineError};
use crate::filter::{DropReason, EndpointInfo, Filter, FilterStats, Passed, Shared};
use programs::{Programs, TcAttachment, XdpAttachment};
use worker::{InboundSource, Macs, Worker, WorkerCounters, HANDOFF_SLOTS};
use xsk::{PortKind, PortSpec, WorkerXsk};

// The workers' drop reasons are `enum xpf_drop_reason` of the ABI header:
// the build fails if the two tables ever disagree.
const _: () = {
    use bpf::xsk_redirect::types::xpf_drop_reason as R;
    assert!(DropReason::PolicyDenied as u32 == R::XPF_DROP_POLICY_DENIED.0);
    assert!(DropReason::PolicyDefault as u32 == R::XPF_DROP_POLICY_DEFAULT.0);
    assert!(DropReason::SpoofedSource as u32 == R::XPF_DROP_SPOOFED_SOURCE.0);
    assert!(DropReason::VlanTagged as u32 == R::XPF_DROP_VLAN_TAGGED.0);
    assert!(DropReason::NotIp as u32 == R::XPF_DROP_NOT_IP.0);
    assert!(DropReason::Malformed as u32 == R::XPF_DROP_MALFORMED.0);
    assert!(DropReason::FragmentNoFirst as u32 == R::XPF_DROP_FRAG_NO_FIRST.0);
    assert!(DropReason::FragmentDenied as u32 == R::XPF_DROP_FRAG_DENIED.0);
    assert!(DropReason::TxFull as u32 == R::XPF_DROP_TX_FULL.0);
    assert!(DropReason::HandoffFull as u32 == R::XPF_DROP_HANDOFF_FULL.0);
    assert!(DropReason::COUNT as u32 == R::XPF_DROP_REASON_MAX.0);
};

/// Why the datapath did not start.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Endpoint(#[from] endpoint::EndpointError),
    #[error(transparent)]
    Program(#[from] programs::ProgramError),
    #[error(transparent)]
    Xsk(#[from] xsk::XskError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

/// The endpoints of `config` as the endpoint module wants them.
pub fn endpoint_specs(config: &Config) -> Vec<EndpointSpec> {
    config
        .endpoints
        .iter()
        .map(|e| EndpointSpec {
            name: e.name.clone(),
            netns: e.netns.clone(),
            host_ifname: e.host_ifname.clone(),
            ipv4: e.ipv4,
            ipv6: e.ipv6,
            attach: if e.existing {
                Attach::Existing
            } else {
                Attach::Create
            },
            queues: 1,
        })
        .collect()
}

/// A running filter.
pub struct Datapath {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<WorkerXsk>>,
    /// Sockets of stopped workers, kept open until drop.
    parked: Vec<WorkerXsk>,
    /// Every socket's fd, for its kernel counters.
    socket_fds: Vec<RawFd>,
    counters: Vec<Arc<WorkerCounters>>,
    filter_stats: Vec<Arc<FilterStats>>,
    shared: Arc<Shared>,
    epoch: Instant,
    // Dropped in this order after the workers stop: links, programs, then
    // the namespaces and veths.
    _tc: Vec<TcAttachment>,
    _xdp: Vec<XdpAttachment>,
    programs: Arc<Programs>,
    topology: Option<Topology>,
    pub engine: Engine,
    /// Per worker: the CPU it is pinned to and the ports it serves.
    pub layout: Vec<(usize, Vec<String>)>,
}

/// Reports the TC program's inbound flows to the workers.
struct Reports(Arc<Programs>);

impl InboundSource for Reports {
    fn drain(&self, f: &mut dyn FnMut(conntrack::Tuple, u8)) {
        self.0.drain_inbound(|ev| {
            f(
                conntrack::Tuple {
                    src: ev.src,
                    dst: ev.dst,
                    sport: ev.sport,
                    dport: ev.dport,
                    proto: ev.proto,
                },
                ev.tcp_flags,
            )
        });
    }
}

impl Datapath {
    /// Builds the topology of `config`, attaches the programs, binds the
    /// sockets and starts the workers. On error nothing stays behind.
    pub fn start(config: Config) -> Result<Self, DatapathError> {
        let dp = config.datapath.clone();
        let workers_n = dp.cpus.len();
        let engine = Engine::new(config)?;

        let specs = endpoint_specs(&engine.config);
        let topology = Topology::build(specs, workers_n as u32)?;

        let programs = Arc::new(Programs::load(dp.fail_open)?);
        let mut xdp = Vec::new();
        let mut tc = Vec::new();
        let mut slot_base = 0u32;
        let mut slots = Vec::new();
        for ep in &topology.endpoints {
            programs.set_interface_slots(ep.host_ifindex, slot_base)?;
            slots.push(slot_base);
            slot_base += ep.rx_queues;
            xdp.push(programs.attach_xdp(&ep.spec.host_ifname, ep.host_ifindex, dp.attach)?);
            tc.push(programs.attach_inbound(&ep.spec.host_ifname, ep.host_ifindex)?);
        }

        // Ports: every endpoint queue, round-robin over the workers, and one
        // xpf_net queue per worker.
        let mut port_specs: Vec<Vec<(PortSpec, Option<u32>)>> =
            (0..workers_n).map(|_| Vec::new()).collect();
        let mut owner = vec![(usize::MAX, 0usize); topology.endpoints.len()];
        let mut next = 0usize;
        for (i, ep) in topology.endpoints.iter().enumerate() {
            for q in 0..ep.rx_queues {
                let w = next % workers_n;
                next += 1;
                if q == 0 {
                    owner[i] = (w, port_specs[w].len());
                }
                port_specs[w].push((
                    PortSpec {
                        kind: PortKind::Endpoint(i as u16),
                        ifname: ep.spec.host_ifname.clone(),
                        queue: q,
                    },
                    Some(slots[i] + q),
                ));
            }
        }
        let internal = &topology.internal;
        for (w, specs) in port_specs.iter_mut().enumerate() {
            specs.push((
                PortSpec {
                    kind: PortKind::Reinject,
                    ifname: internal.net_ifname.clone(),
                    queue: w as u32,
                },
                None,
            ));
        }
        let mut xsks = Vec::with_capacity(workers_n);
        for specs in &port_specs {
            let plain: Vec<PortSpec> = specs
                .iter()
                .map(|(s, _)| PortSpec {
                    kind: s.kind,
                    ifname: s.ifname.clone(),
                    queue: s.queue,
                })
                .collect();
            let x = WorkerXsk::new(&plain, &dp)?;
            for (port, (_, slot)) in x.ports.iter().zip(specs) {
                if let Some(slot) = slot {
                    programs.register_xsk(*slot, port.fd())?;
                }
            }
            xsks.push(x);
        }

        let endpoints: Vec<EndpointInfo> = engine
            .config
            .endpoints
            .iter()
            .zip(&engine.inventory.endpoint_identities)
            .map(|(e, id)| EndpointInfo {
                name: e.name.clone(),
                identity: *id,
                ipv4: e.ipv4.map(IpAddr::V4),
                ipv6: e.ipv6.map(IpAddr::V6),
            })
            .collect();
        let ct = Conntrack::new(conntrack::Config {
            capacity: dp.conntrack_max,
            ..Default::default()
        });
        let shared = Arc::new(Shared::new(endpoints, &engine.compiled, ct));
        let macs = Arc::new(Macs {
            endpoints: topology
                .endpoints
                .iter()
                .map(|e| (e.peer_mac, e.host_mac))
                .collect(),
            reinject: (internal.host_mac, internal.net_mac),
        });
        let owner = Arc::new(owner);
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..workers_n).map(|_| bounded(HANDOFF_SLOTS)).unzip();
        let senders = Arc::new(senders);
        let wakers = Arc::new(
            (0..workers_n)
                .map(|_| worker::eventfd())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|source| DatapathError::Io {
                    what: "eventfd".into(),
                    source,
                })?,
        );
        let inbound: Arc<dyn InboundSource> = Arc::new(Reports(programs.clone()));
        let stop = Arc::new(AtomicBool::new(false));
        let epoch = Instant::now();
        let layout = dp
            .cpus
            .iter()
            .zip(&xsks)
            .map(|(cpu, x)| {
                let ports = x
                    .ports
                    .iter()
                    .map(|p| {
                        format!(
                            "{}:{}{}",
                            p.ifname,
                            p.queue,
                            if p.zerocopy { " (zero-copy)" } else { "" }
                        )
                    })
                    .collect();
                (*cpu, ports)
            })
            .collect();

        let socket_fds = xsks
            .iter()
            .flat_map(|x| x.ports.iter().map(|p| p.fd()))
            .collect();
        let mut handles = Vec::new();
        let mut counters = Vec::new();
        let mut filter_stats = Vec::new();
        let (ready_tx, ready_rx) = bounded::<()>(workers_n);
        for (id, (xsk, handoff_rx)) in xsks.into_iter().zip(receivers).enumerate() {
            let filter = Filter::new(shared.clone());
            filter_stats.push(filter.stats.clone());
            let c = Arc::new(WorkerCounters::default());
            counters.push(c.clone());
            let w = Worker {
                id,
                xsk,
                filter,
                ipcache: engine.ipcache.reader(),
                macs: macs.clone(),
                owner: owner.clone(),
                handoff_tx: senders.clone(),
                handoff_rx,
                wakers: wakers.clone(),
                inbound: inbound.clone(),
                counters: c,
                stop: stop.clone(),
                batch: dp.batch_size as usize,
                epoch,
                mode: dp.mode,
            };
            let cpu = dp.cpus[id];
            let ready = ready_tx.clone();
            let h = std::thread::Builder::new()
                .name(format!("xpf-worker-{id}"))
                .spawn(move || {
                    core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
                    let _ = ready.send(());
                    w.run()
                })
                .map_err(|source| DatapathError::Io {
                    what: "spawning a worker".into(),
                    source,
                })?;
            handles.push(h);
        }
        for _ in 0..workers_n {
            let _ = ready_rx.recv();
        }

        Ok(Self {
            stop,
            workers: handles,
            parked: Vec::new(),
            socket_fds,
            counters,
            filter_stats,
            shared,
            epoch,
            _tc: tc,
            _xdp: xdp,
            programs,
            topology: Some(topology),
            engine,
            layout,
        })
    }

    /// Drops expired conntrack entries; call every few seconds.
    pub fn gc(&self) -> usize {
        self.shared.conntrack.gc(self.epoch.elapsed().as_secs())
    }

    /// Current counters.
    pub fn snapshot(&self) -> Snapshot {
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let workers = self
            .counters
            .iter()
            .map(|c| WorkerSnapshot {
                rx: load(&c.rx),
                allowed: load(&c.allowed),
                denied: load(&c.denied),
                tx: load(&c.tx),
                handed_off: load(&c.handed_off),
            })
            .collect();
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
                    drops: DropReason::ALL
                        .iter()
                        .map(|r| (*r, sum(&|s| s.drop_count(i, *r))))
                        .collect(),
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
        }
    }

    /// Stops the workers, detaches everything and removes what was
    /// created; returns the final counters.
    pub fn stop(mut self) -> Snapshot {
        self.halt();
        let snap = self.snapshot();
        drop(self);
        snap
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.workers.drain(..) {
            if let Ok(x) = h.join() {
                self.parked.push(x);
            }
        }
    }

    /// The endpoints as created (names, interfaces, MACs).
    pub fn topology(&self) -> &Topology {
        self.topology.as_ref().expect("topology lives until drop")
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        self.halt();
        self.parked.clear();
        self._tc.clear();
        self._xdp.clear();
        self.topology.take();
    }
}

/// Counters of one worker.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct WorkerSnapshot {
    pub rx: u64,
    pub allowed: u64,
    pub denied: u64,
    pub tx: u64,
    /// Frames copied to another worker's queue (their destination's socket
    /// is served there).
    pub handed_off: u64,
}

/// Counters of one endpoint, over all workers.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EndpointSnapshot {
    pub name: String,
    pub rx: u64,
    pub passed_policy: u64,
    pub passed_reply: u64,
    pub passed_related: u64,
    pub passed_fragment: u64,
    #[serde(serialize_with = "ser_drops")]
    pub drops: Vec<(DropReason, u64)>,
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
#[derive(Clone, Debug, serde::Serialize)]
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
                "endpoint {}: rx {} passed {} (policy {}, reply {}, related {}, fragment {})",
                e.name,
                e.rx,
                e.passed_policy + e.passed_reply + e.passed_related + e.passed_fragment,
                e.passed_policy,
                e.passed_reply,
                e.passed_related,
                e.passed_fragment
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
        let k = &self.sockets;
        let _ = writeln!(
            out,
            "af_xdp sockets: rx_dropped {}, rx_ring_full {}, fill_ring_empty {}, invalid descs rx {} tx {}",
            k.rx_dropped, k.rx_ring_full, k.rx_fill_ring_empty, k.rx_invalid_descs, k.tx_invalid_descs
        );
        let _ = writeln!(out, "tc inbound reports: {}", fmt(&self.tc));
        let _ = writeln!(
            out,
            "conntrack: {} entries, {} created, {} evicted",
            self.conntrack_entries, self.conntrack_created, self.conntrack_evicted
        );
        out
    }
}
