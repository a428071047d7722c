//! Starting a datapath: claim the instance, build (or take over) the
//! topology, load and attach the programs, bind the sockets, restore
//! conntrack and spawn the workers, in that order (see the parent module
//! for why). A failed fresh start removes what it made; a failed takeover
//! leaves the predecessor's datapath dropping.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::bounded;

use super::attach::{self, attach_all, bind_sockets, forget_stale_links};
use super::cache::{self, HybridCache};
use super::ct_journal::CtJournal;
use super::instance::{Instance, InstanceState};
use super::monitor::{self, MonitorTap};
use super::programs::{self, Programs};
use super::settings::{self, DatapathConfig, Mode};
use super::worker::{InboundSource, Macs, Routes, Worker, WorkerCounters, XskRings, HANDOFF_SLOTS};
use super::xsk::WorkerXsk;
use super::{Datapath, DatapathError, Leave, Parts, Takeover};
use crate::conntrack::{self, Conntrack};
use crate::endpoint::{Attach, EndpointSpec, Topology};
use crate::engine::Engine;
use crate::filter::{conntrack_owner, EndpointInfo, Filter, Shared};
use crate::sys::eventfd::EventFd;
use crate::world::World;

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

/// The state every worker shares: the endpoints, the compiled policy and
/// conntrack, restored from the journal (with the number of flows
/// restored).
fn shared_state(
    engine: &Engine,
    dp: &DatapathConfig,
    journal: &Arc<CtJournal>,
    cache: Option<&Arc<HybridCache>>,
) -> (Arc<Shared>, usize) {
    let endpoints = EndpointInfo::all_of(engine);
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
    let mut ct = ct.with_journal(journal.clone());
    if let Some(c) = cache {
        ct = ct.with_projection(c.clone());
    }
    (Arc::new(Shared::new(endpoints, ct)), restored)
}

/// The link addresses the workers write, from the topology.
fn macs_of(topology: &Topology) -> Macs {
    let internal = &topology.internal;
    Macs {
        endpoints: topology
            .endpoints
            .iter()
            .map(|e| (e.peer_mac, e.host_mac))
            .collect(),
        reinject: (internal.host_mac, internal.net_mac),
    }
}

/// Per worker: its CPU and its ports as `ifname:queue`, for the log.
fn layout_of(dp: &DatapathConfig, xsks: &[WorkerXsk]) -> Vec<(usize, Vec<String>)> {
    dp.cpus
        .iter()
        .zip(xsks)
        .map(|(cpu, x)| {
            let ports = x
                .ports
                .iter()
                .map(|p| {
                    let zc = if p.zerocopy { " (zero-copy)" } else { "" };
                    format!("{}:{}{zc}", p.ifname, p.queue)
                })
                .collect();
            (*cpu, ports)
        })
        .collect()
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
pub(super) fn unserved(programs: &Programs) -> u64 {
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
        if prev.pid == std::process::id() {
            // Datapath::restart: this process handed over to itself.
            eprintln!(
                "xpf: instance `{}`: restarting the datapath with other endpoints; what \
                 endpoints send meanwhile is dropped",
                instance.name
            );
        } else {
            eprintln!(
                "xpf: instance `{}`: the xpf that ran here (PID {}) is gone; taking over its \
                 datapath, which has been dropping what endpoints send meanwhile",
                instance.name, prev.pid
            );
        }
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
        let hybrid = dp.mode == Mode::Hybrid;
        let programs = Arc::new(Programs::load_pinned(
            programs::ProgramConfig {
                fail_open: dp.fail_open,
                cache: hybrid,
                ..Default::default()
            },
            &pins,
        )?);
        if hybrid {
            // Before the program is attached or swapped in: it finds
            // every port it may redirect to from its first frame.
            let t = parts.topology.as_ref().expect("topology until drop");
            for e in &t.endpoints {
                programs.set_cache_port(e.host_ifindex)?;
            }
        }
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

        let (epoch, epoch_ns) = (Instant::now(), crate::sys::clock::monotonic_ns());
        let cache = if hybrid {
            let ports = cache::prepare_ports(topology);
            Some(Arc::new(HybridCache::new(
                programs.flow_cache_maps()?,
                ports,
                epoch_ns,
            )?))
        } else {
            None
        };
        let (shared, restored) = shared_state(&engine, &dp, &journal, cache.as_ref());
        if let Some(t) = &mut takeover {
            t.restored_flows = restored;
        }
        let macs = Arc::new(macs_of(topology));
        let layout = layout_of(&dp, &xsks);
        let socket_fds = xsks
            .iter()
            .flat_map(|x| x.ports.iter().map(|p| p.fd()))
            .collect();

        let (taps, monitor) = monitor::queues(workers_n);
        let mut engine = engine;
        engine.ipcache.set_on_publish(cache.clone().map(|c| {
            let hook: crate::ipcache::PublishHook = Arc::new(move || c.invalidate());
            hook
        }));
        let mut me = Self {
            stop: Arc::new(AtomicBool::new(false)),
            workers: Vec::new(),
            parked: Vec::new(),
            socket_fds,
            counters: Vec::new(),
            monitor,
            filter_stats: Vec::new(),
            shared,
            epoch,
            journal,
            cache,
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
        me.spawn_workers(xsks, owner, macs, &dp, taps)?;
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
        taps: Vec<MonitorTap>,
    ) -> Result<(), DatapathError> {
        let workers_n = taps.len();
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
        let workers = xsks.into_iter().zip(receivers).zip(taps);
        for (id, ((xsk, handoff_rx), tap)) in workers.enumerate() {
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
                monitor: tap,
                counters: c,
                stop: self.stop.clone(),
                batch: dp.batch_size as usize,
                epoch: self.epoch,
                mode: dp.mode,
                cache: self.cache.clone(),
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
}
