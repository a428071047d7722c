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
pub mod cache;
pub mod ct_journal;
pub mod instance;
pub mod links;
pub mod monitor;
pub mod programs;
pub mod settings;
mod snapshot;
mod start;
pub mod worker;
pub mod xsk;

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crate::endpoint::{self, Topology};
use crate::engine::{Engine, EngineError, Update};
use crate::filter::{DropReason, FilterStats, Shared};
use crate::world::World;
use ct_journal::CtJournal;
use instance::{Instance, InstanceState};
use programs::{Programs, TcAttachment, XdpAttachment};
use settings::DatapathConfig;
use worker::WorkerCounters;
use xsk::WorkerXsk;

pub use snapshot::{EndpointSnapshot, Snapshot, WorkerSnapshot};
pub use start::endpoint_specs;

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
    #[error(
        "the endpoints changed (running: {running}; wanted: {wanted}): adding, removing or \
         moving an endpoint is not live yet, so nothing was changed; restart xpf to apply it"
    )]
    EndpointsChanged { running: String, wanted: String },
    #[error("taking over: {0}")]
    Takeover(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
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

/// How a [`Datapath::restart`] ended.
pub enum Restart {
    /// Running the new world.
    Done(Box<Datapath>),
    /// The new world failed (why), and the old one runs again.
    Restored(DatapathError, Box<Datapath>),
    /// Neither started: what is pinned stays, dropping, for the next run.
    Lost(DatapathError),
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
    /// The workers' monitor queues.
    monitor: monitor::MonitorQueues,
    filter_stats: Vec<Arc<FilterStats>>,
    shared: Arc<Shared>,
    epoch: Instant,
    journal: Arc<CtJournal>,
    /// The verdict cache (hybrid mode).
    cache: Option<Arc<cache::HybridCache>>,
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

impl Datapath {
    /// Drops expired conntrack entries; call every few seconds.
    pub fn gc(&self) -> usize {
        self.shared.conntrack.gc(self.epoch.elapsed().as_secs())
    }

    /// Records the current drop baseline in the state file, so a successor
    /// counts only the frames that arrive after this point as unserved.
    /// Call every few seconds.
    pub fn checkpoint(&mut self) -> Result<(), DatapathError> {
        self.state.unserved_seen = start::unserved(&self.programs);
        match &self.instance {
            Some(i) => i.save(&self.state).map_err(Into::into),
            None => Ok(()),
        }
    }

    /// The name of this instance (the network namespace it runs in).
    pub fn instance_name(&self) -> &str {
        self.instance.as_ref().map_or("?", |i| i.name.as_str())
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

    /// Moves the datapath to `world`, which must have the endpoints it
    /// runs (same names, namespaces, interfaces and addresses, in the same
    /// order; their labels may change): compiles it aside and publishes the
    /// ipcache and the verdicts in one swap. Returns once every worker
    /// decides with the new state; on error nothing changed.
    pub fn update(&mut self, world: &World) -> Result<Update, DatapathError> {
        let running = &self.engine.world.endpoints;
        let same = |a: &crate::world::Endpoint, b: &crate::world::Endpoint| {
            (
                &a.name,
                &a.netns,
                &a.host_ifname,
                a.ipv4,
                a.ipv6,
                a.existing,
            ) == (
                &b.name,
                &b.netns,
                &b.host_ifname,
                b.ipv4,
                b.ipv6,
                b.existing,
            )
        };
        if running.len() != world.endpoints.len()
            || running
                .iter()
                .zip(&world.endpoints)
                .any(|(a, b)| !same(a, b))
        {
            let names = |eps: &[crate::world::Endpoint]| {
                eps.iter().map(|e| e.name.clone()).collect::<Vec<_>>()
            };
            return Err(DatapathError::EndpointsChanged {
                running: names(running).join(", "),
                wanted: names(&world.endpoints).join(", "),
            });
        }
        Ok(self.engine.update(world)?)
    }

    /// The workers' monitor events: switch them on while someone listens.
    pub fn monitor(&self) -> &monitor::MonitorQueues {
        &self.monitor
    }

    /// Monitor events the workers lost to full queues, so far.
    pub fn monitor_lost(&self) -> u64 {
        self.counters
            .iter()
            .map(|c| c.monitor_lost.load(Ordering::Relaxed))
            .sum()
    }

    /// Moves to `world` when its endpoints differ from the running ones:
    /// hands the datapath over (programs stay attached and pinned, and drop
    /// what endpoints send meanwhile: fail-closed, counted as the gap) and
    /// takes it over again with the new world, as a restart does: kept
    /// endpoints keep their veths and their established flows (conntrack
    /// goes through its journal), new ones are set up, vanished ones
    /// removed. If that start fails, the old world is taken over again and
    /// returned beside the error; `None` then means not even that worked,
    /// and the pinned datapath is left dropping for the next `xpf run`.
    pub fn restart(mut self, world: &World, settings: DatapathConfig) -> Restart {
        let old = self.engine.world.clone();
        let revision = self.engine.revision();
        let alloc = self.engine.take_allocator();
        let old_alloc = alloc.clone();
        self.hand_over();
        let back = |settings| {
            Engine::succeeding(&old, old_alloc.clone(), revision)
                .ok()
                .and_then(|engine| Self::start(engine, settings).ok())
        };
        let failed = |e: DatapathError, settings| match back(settings) {
            Some(dp) => Restart::Restored(e, Box::new(dp)),
            None => Restart::Lost(e),
        };
        let engine = match Engine::succeeding(world, alloc, revision) {
            Ok(e) => e,
            Err(e) => return failed(e.into(), settings),
        };
        match Self::start(engine, settings.clone()) {
            Ok(dp) => Restart::Done(Box::new(dp)),
            Err(e) => failed(e, settings),
        }
    }

    /// When this datapath started.
    pub fn started(&self) -> Instant {
        self.epoch
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
