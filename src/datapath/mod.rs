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
//! Order of start: claim the namespace's instance (a lock under /run/xpf),
//! the topology (namespaces, veths, the internal pair; or a dead
//! predecessor's, taken over), the programs with their maps pinned, XDP and
//! TC attachments (pinned links; or the predecessor's, with the new programs
//! swapped in), the sockets (registered in the XSKMAP), conntrack restored
//! from its journal, then the workers. Until a socket is registered the XDP
//! program drops (fail-closed). See [`instance`] for what outlives the
//! process and why.
//!
//! [`Datapath::stop`] removes everything; [`Datapath::hand_over`] and a
//! plain drop (a panic unwinding) leave it all pinned and dropping, as a
//! crash does, for the next start to take over.

mod attach;
pub mod bpf;
pub mod ct_journal;
pub mod instance;
pub mod links;
pub mod programs;
pub mod settings;
pub mod worker;
pub mod xsk;

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::bounded;

use crate::conntrack::{self, Conntrack};
use crate::endpoint::{self, Attach, EndpointSpec, Topology};
use crate::engine::{Engine, EngineError};
use crate::filter::{
    conntrack_owner, DropReason, EndpointInfo, Filter, FilterStats, Passed, Shared,
};
use crate::sys::eventfd::EventFd;
use crate::world::World;
use attach::{attach_all, bind_sockets, forget_stale_links};
use ct_journal::CtJournal;
use instance::{Instance, InstanceState};
use programs::{Programs, TcAttachment, XdpAttachment};
use settings::DatapathConfig;
use worker::{InboundSource, Macs, Routes, Worker, WorkerCounters, XskRings, HANDOFF_SLOTS};
use xsk::WorkerXsk;

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
    assert!(DropReason::FragmentConflict as u32 == R::XPF_DROP_FRAG_CONFLICT.0);
    assert!(DropReason::FragmentTableFull as u32 == R::XPF_DROP_FRAG_TABLE_FULL.0);
    assert!(DropReason::ConntrackFull as u32 == R::XPF_DROP_CT_FULL.0);
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
    #[error(transparent)]
    Instance(#[from] instance::InstanceError),
    #[error(transparent)]
    Journal(#[from] ct_journal::JournalError),
    #[error("taking over: {0}")]
    Takeover(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

/// The endpoints of `world` as the endpoint module wants them.
pub fn endpoint_specs(world: &World) -> Vec<EndpointSpec> {
    world
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

/// What a takeover found and did, for the report.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Takeover {
    /// PID of the instance that died (or handed over).
    pub from_pid: u32,
    /// Frames the XDP program dropped (or passed, with `fail_open`) for
    /// want of a socket between the predecessor's last save and this
    /// start: the frames that met no xpf.
    pub gap_dropped: u64,
    /// Flows restored from the conntrack journal.
    pub restored_flows: usize,
    /// Endpoints removed or set up anew because the config changed.
    pub notes: Vec<String>,
}

/// How a stopped datapath leaves the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leave {
    /// Everything stays pinned and attached: with no socket the XDP
    /// program drops what endpoints send, until a successor takes over.
    /// What a crash, a panic or a failed takeover leaves too.
    Enforcing,
    /// Everything this instance made is removed.
    Nothing,
}

/// The kernel objects of an instance; how they are dropped depends on
/// `leave`.
struct Parts {
    tc: Vec<TcAttachment>,
    xdp: Vec<XdpAttachment>,
    topology: Option<Topology>,
    leave: Leave,
}

impl Parts {
    fn new(topology: Topology, leave: Leave) -> Self {
        Self {
            tc: Vec::new(),
            xdp: Vec::new(),
            topology: Some(topology),
            leave,
        }
    }
}

impl Parts {
    /// Lets go of everything as `leave` says; a second call finds nothing.
    fn let_go(&mut self) {
        match self.leave {
            Leave::Enforcing => {
                self.tc.drain(..).for_each(TcAttachment::keep);
                self.xdp.drain(..).for_each(XdpAttachment::keep);
                if let Some(t) = self.topology.take() {
                    t.release();
                }
            }
            Leave::Nothing => {
                // Links first (detached and unpinned), then the
                // namespaces and veths.
                self.tc.clear();
                self.xdp.clear();
                self.topology.take();
            }
        }
    }
}

impl Drop for Parts {
    fn drop(&mut self) {
        self.let_go();
    }
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
    journal: Arc<CtJournal>,
    // Dropped in this order after the workers stop: the attachments and
    // topology (as `parts.leave` says), the programs, then the claim.
    parts: Parts,
    programs: Arc<Programs>,
    state: InstanceState,
    instance: Option<Instance>,
    /// Set when this start took over from a dead instance.
    pub takeover: Option<Takeover>,
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

/// A failed takeover leaves the predecessor's datapath dropping: say so,
/// and how to get out.
fn takeover_failed(e: DatapathError) -> DatapathError {
    DatapathError::Takeover(format!(
        "{e}; the previous datapath stays attached and keeps dropping what endpoints send: \
         fix the cause and run again, or remove it all with `xpf cleanup`"
    ))
}

/// Frames the XDP program met with no socket (dropped, or passed under
/// `fail_open`), since its counters were made.
fn unserved(programs: &Programs) -> u64 {
    programs.xdp_counters().map_or(0, |c| {
        c[programs::XdpCounter::XPF_XDP_NO_SOCKET.0 as usize]
            + c[programs::XdpCounter::XPF_XDP_FAIL_OPEN.0 as usize]
    })
}

impl Datapath {
    /// Claims this network namespace's instance, builds the topology of
    /// the engine's world (or takes over the one a dead instance left), attaches and
    /// pins the programs (or swaps them into the pinned links), binds the
    /// sockets and starts the workers.
    ///
    /// On error: a fresh start leaves nothing behind; a takeover leaves the
    /// predecessor's datapath as it was, pinned and dropping (fail-closed).
    pub fn start(engine: Engine, dp: DatapathConfig) -> Result<Self, DatapathError> {
        let (instance, leftover) = Instance::claim()?;
        let specs = endpoint_specs(&engine.world);
        let workers_n = dp.cpus.len() as u32;
        let prev = leftover.map(|l| l.state);
        // The predecessor's counters carry over: its drop baseline is what
        // the gap is counted from.
        let state = InstanceState {
            pid: std::process::id(),
            attach: dp.attach.to_string(),
            ..prev.clone().unwrap_or_default()
        };
        let Some(prev) = prev else {
            // Pins without a state file (removed by hand): nothing
            // describes them, so they go.
            if instance.has_pins() {
                let _ = std::fs::remove_dir_all(&instance.pin_dir);
            }
            let topology = match Topology::build(specs, workers_n) {
                Ok(t) => t,
                Err(e) => {
                    let _ = instance.remove();
                    return Err(e.into());
                }
            };
            let parts = Parts::new(topology, Leave::Nothing);
            let mut claim = Some(instance);
            let started = Self::finish(engine, dp, &mut claim, parts, state, None);
            if let (Err(_), Some(instance)) = (&started, claim) {
                let _ = instance.remove();
            }
            return started;
        };
        eprintln!(
            "xpf: instance `{}`: the xpf that ran here (PID {}) is gone; taking over its \
             datapath, which has been dropping what endpoints send meanwhile",
            instance.name, prev.pid
        );
        if prev.attach != state.attach {
            return Err(DatapathError::Takeover(format!(
                "the running datapath is attached in {} mode and the config asks for {}; a link \
                 cannot change mode in place: stop it with `xpf cleanup` (which removes it) and \
                 start again",
                prev.attach, state.attach
            )));
        }
        let (topology, notes) = Topology::reclaim(specs, workers_n, &prev.endpoints)
            .map_err(|e| takeover_failed(e.into()))?;
        let parts = Parts::new(topology, Leave::Enforcing);
        let takeover = Takeover {
            from_pid: prev.pid,
            notes,
            ..Default::default()
        };
        Self::finish(
            engine,
            dp,
            &mut Some(instance),
            parts,
            state,
            Some(takeover),
        )
        .map_err(takeover_failed)
    }

    /// Everything after the topology: programs, links, sockets, workers.
    /// Takes the claim out of `claim` only on success; on error `parts` is
    /// dropped as its `leave` says.
    fn finish(
        engine: Engine,
        dp: settings::DatapathConfig,
        claim: &mut Option<Instance>,
        mut parts: Parts,
        mut state: InstanceState,
        mut takeover: Option<Takeover>,
    ) -> Result<Self, DatapathError> {
        let instance = claim.as_ref().expect("claimed");
        let workers_n = dp.cpus.len();
        {
            let t = parts.topology.as_ref().expect("topology until drop");
            let (internal, endpoints) = t.records();
            state.internal = Some(internal);
            state.endpoints = endpoints;
        }
        instance.save(&state)?;
        instance.prepare_pins()?;
        let pins = instance.pin_dir.clone();
        let programs = Arc::new(Programs::load_pinned(dp.fail_open, &pins)?);
        let journal = Arc::new(CtJournal::open_or_create(
            &programs::map_pin_path(&pins, "conntrack"),
            u32::try_from(dp.conntrack_max).unwrap_or(u32::MAX),
        )?);

        let slots = attach_all(&programs, &pins, dp.attach, &mut parts)?;
        let topology = parts.topology.as_ref().expect("topology until drop");
        forget_stale_links(&pins, topology);

        let (xsks, owner) = bind_sockets(&programs, topology, &slots, &dp)?;
        let unserved_now = unserved(&programs);
        if let Some(t) = &mut takeover {
            t.gap_dropped = unserved_now.saturating_sub(state.unserved_seen);
            state.gap_dropped += t.gap_dropped;
        }
        state.unserved_seen = unserved_now;
        instance.save(&state)?;

        let endpoints = EndpointInfo::all_of(&engine);
        let ct = Conntrack::new(conntrack::Config {
            capacity: dp.conntrack_max,
            owners: endpoints.len(),
            ..Default::default()
        });
        let restored = journal.restore_into(
            &ct,
            |t, opened_by_first| conntrack_owner(&endpoints, t, opened_by_first),
            0,
        );
        if let Some(t) = &mut takeover {
            t.restored_flows = restored;
        }
        let ct = ct.with_journal(journal.clone());
        let shared = Arc::new(Shared::new(endpoints, &engine.compiled, ct));
        let internal = &topology.internal;
        let macs = Arc::new(Macs {
            endpoints: topology
                .endpoints
                .iter()
                .map(|e| (e.peer_mac, e.host_mac))
                .collect(),
            reinject: (internal.host_mac, internal.net_mac),
        });
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

        let mut me = Self {
            stop: Arc::new(AtomicBool::new(false)),
            workers: Vec::new(),
            parked: Vec::new(),
            socket_fds,
            counters: Vec::new(),
            filter_stats: Vec::new(),
            shared,
            epoch: Instant::now(),
            journal,
            parts,
            programs,
            state,
            instance: None,
            takeover,
            engine,
            layout,
        };
        // On error `me` is dropped with `parts.leave` as the start set it:
        // nothing stays of a fresh start, the predecessor's of a takeover.
        me.spawn_workers(xsks, owner, macs, &dp, workers_n)?;
        // Running: from now on whatever ends the process without `stop`
        // (a panic unwinding included) leaves the datapath enforcing.
        me.parts.leave = Leave::Enforcing;
        me.instance = claim.take();
        Ok(me)
    }

    fn spawn_workers(
        &mut self,
        xsks: Vec<WorkerXsk>,
        owner: attach::PortOwners,
        macs: Arc<Macs>,
        dp: &settings::DatapathConfig,
        workers_n: usize,
    ) -> Result<(), DatapathError> {
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..workers_n).map(|_| bounded(HANDOFF_SLOTS)).unzip();
        let senders = Arc::new(senders);
        let wakers = Arc::new(
            (0..workers_n)
                .map(|_| EventFd::new())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|source| DatapathError::Io {
                    what: "eventfd".into(),
                    source,
                })?,
        );
        let inbound: Arc<dyn InboundSource> = Arc::new(Reports(self.programs.clone()));
        let (ready_tx, ready_rx) = bounded::<()>(workers_n);
        for (id, (xsk, handoff_rx)) in xsks.into_iter().zip(receivers).enumerate() {
            let filter = Filter::new(self.shared.clone());
            self.filter_stats.push(filter.stats.clone());
            let c = Arc::new(WorkerCounters::new(self.shared.endpoints.len()));
            self.counters.push(c.clone());
            let w = Worker {
                rings: XskRings::new(xsk, dp.batch_size as usize),
                filter,
                ipcache: self.engine.ipcache.reader(),
                routes: Routes {
                    id,
                    macs: macs.clone(),
                    owner: owner.clone(),
                    handoff_tx: senders.clone(),
                    wakers: wakers.clone(),
                },
                handoff_rx,
                inbound: inbound.clone(),
                counters: c,
                stop: self.stop.clone(),
                batch: dp.batch_size as usize,
                epoch: self.epoch,
                mode: dp.mode,
            };
            let cpu = dp.cpus[id];
            let ready = ready_tx.clone();
            let h = std::thread::Builder::new()
                .name(format!("xpf-worker-{id}"))
                .spawn(move || {
                    core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
                    let _ = ready.send(());
                    w.run().into_xsk()
                })
                .map_err(|source| DatapathError::Io {
                    what: "spawning a worker".into(),
                    source,
                })?;
            self.workers.push(h);
        }
        for _ in 0..workers_n {
            let _ = ready_rx.recv();
        }
        Ok(())
    }

    /// Drops expired conntrack entries; call every few seconds.
    pub fn gc(&self) -> usize {
        self.shared.conntrack.gc(self.epoch.elapsed().as_secs())
    }

    /// Records the current drop baseline in the state file, so a successor
    /// counts only the frames that arrive after this point as unserved.
    /// Call every few seconds.
    pub fn checkpoint(&mut self) -> Result<(), DatapathError> {
        self.state.unserved_seen = unserved(&self.programs);
        match &self.instance {
            Some(i) => i.save(&self.state).map_err(Into::into),
            None => Ok(()),
        }
    }

    /// The name of this instance (the network namespace it runs in).
    pub fn instance_name(&self) -> &str {
        self.instance.as_ref().map_or("?", |i| i.name.as_str())
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
            instance: self.instance_name().to_string(),
            takeover: self.takeover.clone(),
            gap_dropped_total: self.state.gap_dropped,
        }
    }

    /// Stops the workers, detaches everything and removes what was
    /// created (namespaces, veths, the internal pair, pins and the state
    /// folder); returns the final counters.
    pub fn stop(mut self) -> Snapshot {
        self.halt();
        let snap = self.snapshot();
        self.parts.leave = Leave::Nothing;
        drop(self);
        snap
    }

    /// Stops the workers and leaves the datapath enforcing for the next
    /// `xpf run` to take over: programs stay attached and pinned, and with
    /// the sockets closed the XDP program drops everything endpoints send
    /// (fail-closed), counted. Conntrack stays in its journal. Returns the
    /// final counters.
    pub fn hand_over(mut self) -> Snapshot {
        self.halt();
        let snap = self.snapshot();
        self.parts.leave = Leave::Enforcing;
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
        self.parts
            .topology
            .as_ref()
            .expect("topology lives until drop")
    }
}

/// Unless [`Datapath::stop`] said otherwise, a dropped datapath (a panic
/// unwinding, say) leaves everything enforcing, as a crash would.
impl Drop for Datapath {
    fn drop(&mut self) {
        self.halt();
        let leave = self.parts.leave;
        if leave == Leave::Enforcing {
            // While the sockets are still open, so the successor counts
            // from here.
            if let Err(e) = self.checkpoint() {
                eprintln!("xpf: {e}");
            }
        }
        self.parked.clear();
        self.parts.let_go();
        if leave == Leave::Nothing {
            // Unpins the maps too; they go with the last fd.
            if let Some(i) = self.instance.take() {
                if let Err(e) = i.remove() {
                    eprintln!("xpf: {e}");
                }
            }
        }
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
    /// Unanswered entries endpoints at their share gave up for new flows.
    pub conntrack_early_dropped: u64,
    /// New flows refused: their endpoint's share held only answered ones.
    pub conntrack_refused: u64,
    /// Entries each endpoint may hold.
    pub conntrack_share: u64,
    /// Conntrack changes the journal could not record.
    pub conntrack_journal_failed: u64,
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
