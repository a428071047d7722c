//! What `xpf run`'s control loop does with a command: read the config
//! again, add or remove runtime ipcache entries, report status. Every
//! change goes through [`Datapath::update`], all or nothing: a refused
//! change leaves the running state exactly as it was.
//!
//! The enforced world is the config's world plus the runtime ipcache
//! entries (from `xpf ipcache upsert`), which live until deleted or until
//! the daemon stops; a reload re-reads the file and keeps them.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use ipnet::IpNet;
use serde_json::{json, Value};

use std::sync::atomic::AtomicBool;

use crossbeam_channel::{bounded, Sender, TrySendError};

use super::api::{Command, Kind, Lines, Reply, Request};
use super::cluster::Cluster;
use super::enforced::{enforced_world, RemoteShare, Runtime};
use super::flows;
use super::metrics::{ControlStats, Metrics};
use crate::config::{Config, PolicyEdit, Reloaded};
use crate::datapath::monitor::MonitorEvent;
use crate::datapath::{Datapath, DatapathError, Restart};
use crate::engine::Update;
use crate::policy::model::Policy;
use crate::world::{self, Endpoint, StaticEntry, World};

/// The control loop's state beside the datapath.
pub struct ControlPlane {
    config_path: PathBuf,
    pub(super) config: Config,
    /// The config's own ipcache prefixes, which runtime entries may not
    /// replace.
    config_prefixes: HashSet<IpNet>,
    /// What the API added beside the config.
    pub(super) runtime: Runtime,
    pub(super) stats: ControlStats,
    pub(super) metrics: Option<Arc<Metrics>>,
    /// Cluster mode: the store's side of the enforced world.
    pub(super) cluster: Option<Cluster>,
    /// Monitors listening, and the workers' lost events already reported.
    subscribers: Vec<Subscriber>,
    workers_lost_seen: u64,
    node: String,
}

/// One `xpf monitor`.
struct Subscriber {
    lines: Sender<String>,
    /// False once the API thread has stopped reading.
    alive: Arc<AtomicBool>,
    kind: Kind,
    endpoint: Option<u16>,
    /// Lines lost to this monitor's full queue, not yet reported to it.
    lost: u64,
}

/// Lines a monitor's queue holds before it loses some.
const SUBSCRIBER_QUEUE: usize = 8192;

impl ControlPlane {
    /// The control plane of a datapath started from `config` (read from
    /// `config_path`), beside `cluster` in cluster mode (whose share of
    /// the world the datapath was started with).
    pub fn new(
        config_path: &Path,
        config: Config,
        metrics: Option<Arc<Metrics>>,
        cluster: Option<Cluster>,
    ) -> Self {
        Self {
            cluster,
            config_path: config_path.to_path_buf(),
            config_prefixes: config.world.ipcache.iter().map(|e| e.prefix).collect(),
            config,
            runtime: Runtime::default(),
            stats: ControlStats::default(),
            metrics,
            subscribers: Vec::new(),
            workers_lost_seen: 0,
            node: hostname(),
        }
    }

    /// Answers one API request: a monitor gets its stream, anything else
    /// its reply (a change is logged on stderr). `slot` holds the running
    /// datapath; a change of endpoints restarts it in place, and leaves
    /// `slot` empty only if neither the new nor the old world could be
    /// started.
    pub fn serve(&mut self, slot: &mut Option<Datapath>, req: Request) {
        if let Command::Monitor { kind, endpoint } = &req.command {
            let Some(dp) = slot.as_ref() else {
                return req.answer(Reply::error(503, "the datapath is gone"));
            };
            return match self.subscribe(dp, *kind, endpoint.as_deref()) {
                Ok(lines) => req.stream(lines),
                Err(refusal) => req.answer(refusal),
            };
        }
        let mut req = req;
        let what = change_name(&req.command);
        let reply = self.handle(slot, std::mem::replace(&mut req.command, Command::Status));
        if let Some(what) = what {
            log_change(&what, &reply);
        }
        req.answer(reply);
    }

    fn handle(&mut self, slot: &mut Option<Datapath>, command: Command) -> Reply {
        let Some(dp) = slot.as_mut() else {
            return Reply::error(503, "the datapath is gone");
        };
        match command {
            Command::Status => Reply::ok(self.status(dp)),
            Command::Reload => self.apply_reload(slot),
            Command::IpcacheUpsert { entries } => self.upsert(slot, entries),
            Command::IpcacheDelete { prefixes } => self.delete(slot, prefixes),
            Command::EndpointAdd {
                name,
                labels,
                ipv4,
                ipv6,
            } => self.endpoint_add(slot, name, &labels, ipv4, ipv6),
            Command::EndpointRemove { name } => self.endpoint_remove(slot, &name),
            Command::Monitor { .. } => unreachable!("served as a stream"),
        }
    }

    /// Re-reads the config file and applies the difference (SIGHUP);
    /// logs what happened.
    pub fn reload(&mut self, slot: &mut Option<Datapath>) {
        let reply = self.apply_reload(slot);
        log_change("reload", &reply);
    }

    fn apply_reload(&mut self, slot: &mut Option<Datapath>) -> Reply {
        let config = match self.config.reload() {
            Ok(Reloaded::Whole(c)) => *c,
            Ok(Reloaded::Policies(files, policies)) => {
                return self.apply_policies(slot, files, policies)
            }
            Err(e) => return Reply::error(400, format!("{e}; nothing was changed")),
        };
        if config.datapath != self.config.datapath {
            return Reply::error(
                409,
                format!(
                    "{}: the datapath: section changed; it applies only when xpf starts, so \
                     nothing was changed (restart xpf to apply it)",
                    self.config_path.display()
                ),
            );
        }
        if config.kvstore != self.config.kvstore {
            return Reply::error(
                409,
                format!(
                    "{}: the kvstore: section changed; it applies only when xpf starts, so \
                     nothing was changed",
                    self.config_path.display()
                ),
            );
        }
        if let Some(p) = config
            .world
            .ipcache
            .iter()
            .find(|e| self.runtime.ipcache.contains_key(&e.prefix))
        {
            return Reply::error(
                409,
                format!(
                    "{}: ipcache prefix {} is now in the config and also a runtime entry; \
                     delete the runtime one (xpf ipcache delete {}) and reload, nothing was changed",
                    self.config_path.display(),
                    p.prefix,
                    p.prefix
                ),
            );
        }
        let runtime = self.runtime.clone();
        self.apply(slot, config, runtime)
    }

    /// A reload that found only the policy files changed: the tables are
    /// recompiled with the ipcache left as it is, unless the policies name
    /// other CIDRs (their identities change the ipcache: the whole world
    /// is updated then).
    fn apply_policies(
        &mut self,
        slot: &mut Option<Datapath>,
        files: PolicyEdit,
        policies: Vec<Policy>,
    ) -> Reply {
        let started = Instant::now();
        let Some(dp) = slot.as_mut() else {
            return Reply::error(503, "the datapath is gone");
        };
        match dp.engine.update_policies(policies) {
            Ok(u) => {
                self.config
                    .set_policies(files, dp.engine.world.policies.clone());
                self.applied(&u, started)
            }
            Err(policies) => {
                let mut config = self.config.clone();
                config.set_policies(files, policies);
                let runtime = self.runtime.clone();
                self.apply(slot, config, runtime)
            }
        }
    }

    fn upsert(
        &mut self,
        slot: &mut Option<Datapath>,
        entries: Vec<(IpNet, BTreeMap<String, String>)>,
    ) -> Reply {
        let mut checked = Vec::with_capacity(entries.len());
        for (prefix, labels) in entries {
            if self.config_prefixes.contains(&prefix) {
                return Reply::error(
                    409,
                    format!(
                        "{prefix} is an ipcache entry of the config ({}); change it there and \
                         reload (nothing was changed)",
                        self.config_path.display()
                    ),
                );
            }
            let labels = match world::user_labels(&labels) {
                Ok(l) if !l.is_empty() => l,
                Ok(_) => {
                    return Reply::error(
                        400,
                        format!(
                            "{prefix}: labels: an ipcache entry needs at least one label \
                             (unlabelled addresses are world)"
                        ),
                    )
                }
                Err(m) => return Reply::error(400, format!("{prefix}: labels: {m}")),
            };
            checked.push(StaticEntry { prefix, labels });
        }
        // Labels that already have an identity: a table change only
        // (unless a store entry is involved, which this one may displace).
        let started = Instant::now();
        let shared = self.touches_cluster(checked.iter().map(|e| &e.prefix));
        let fast = slot
            .as_mut()
            .filter(|_| !shared)
            .and_then(|dp| dp.engine.try_upsert_entries(checked.clone()));
        if let Some(u) = fast {
            for e in checked {
                self.runtime.ipcache.insert(e.prefix, e.labels);
            }
            return self.applied(&u, started);
        }
        let mut runtime = self.runtime.clone();
        for e in checked {
            runtime.ipcache.insert(e.prefix, e.labels);
        }
        self.apply(slot, self.config.clone(), runtime)
    }

    fn delete(&mut self, slot: &mut Option<Datapath>, prefixes: Vec<IpNet>) -> Reply {
        if let Some(prefix) = prefixes
            .iter()
            .find(|p| !self.runtime.ipcache.contains_key(p))
        {
            let why = if self.config_prefixes.contains(prefix) {
                format!(
                    "{prefix} is an ipcache entry of the config ({}), not a runtime one; \
                     remove it there and reload",
                    self.config_path.display()
                )
            } else {
                format!("no runtime ipcache entry for {prefix}")
            };
            return Reply::error(404, format!("{why} (nothing was changed)"));
        }
        let started = Instant::now();
        let shared = self.touches_cluster(prefixes.iter());
        let fast = slot
            .as_mut()
            .filter(|_| !shared)
            .and_then(|dp| dp.engine.try_remove_entries(&prefixes));
        if let Some(u) = fast {
            for p in &prefixes {
                self.runtime.ipcache.remove(p);
            }
            return self.applied(&u, started);
        }
        let mut runtime = self.runtime.clone();
        for p in &prefixes {
            runtime.ipcache.remove(p);
        }
        self.apply(slot, self.config.clone(), runtime)
    }

    fn endpoint_add(
        &mut self,
        slot: &mut Option<Datapath>,
        name: String,
        labels: &BTreeMap<String, String>,
        ipv4: Option<std::net::Ipv4Addr>,
        ipv6: Option<std::net::Ipv6Addr>,
    ) -> Reply {
        if self.config.world.endpoint(&name).is_some() {
            return Reply::error(
                409,
                format!(
                    "`{name}` is an endpoint of the config ({}); change it there and reload",
                    self.config_path.display()
                ),
            );
        }
        if self.runtime.endpoints.iter().any(|e| e.name == name) {
            return Reply::error(
                409,
                format!("endpoint `{name}` was added already; remove it first"),
            );
        }
        let labels = match world::user_labels(labels) {
            Ok(l) => l,
            Err(m) => return Reply::error(400, format!("labels: {m}")),
        };
        let mut runtime = self.runtime.clone();
        runtime
            .endpoints
            .push(Endpoint::new(&name, labels, ipv4, ipv6));
        self.apply(slot, self.config.clone(), runtime)
    }

    fn endpoint_remove(&mut self, slot: &mut Option<Datapath>, name: &str) -> Reply {
        let Some(at) = self.runtime.endpoints.iter().position(|e| e.name == name) else {
            let why = if self.config.world.endpoint(name).is_some() {
                format!(
                    "`{name}` is an endpoint of the config ({}), not a runtime one; remove it \
                     there and reload",
                    self.config_path.display()
                )
            } else {
                format!("no runtime endpoint `{name}`")
            };
            return Reply::error(404, why);
        };
        let mut runtime = self.runtime.clone();
        runtime.endpoints.remove(at);
        self.apply(slot, self.config.clone(), runtime)
    }

    /// Enforces `config` plus `runtime`, or changes nothing.
    pub(super) fn apply(
        &mut self,
        slot: &mut Option<Datapath>,
        config: Config,
        runtime: Runtime,
    ) -> Reply {
        let started = Instant::now();
        let share = match &self.cluster {
            Some(c) => RemoteShare::of(&c.remotes, &config.world, &runtime),
            None => RemoteShare::default(),
        };
        let world = match enforced_world(&config.world, &runtime, &share) {
            Ok(w) => w,
            Err(e) => return Reply::error(400, format!("{e}; nothing was changed")),
        };
        let Some(dp) = slot.as_mut() else {
            return Reply::error(503, "the datapath is gone");
        };
        match dp.update(&world) {
            Ok(u) => {
                self.set_config(config);
                self.runtime = runtime;
                self.shared(share, &world);
                self.applied(&u, started)
            }
            Err(DatapathError::EndpointsChanged { .. }) => {
                let reply = self.restart(slot, &world, config, runtime, started);
                if reply.status == 200 {
                    self.shared(share, &world);
                }
                reply
            }
            Err(e) => Reply::error(500, format!("{e}; nothing was changed")),
        }
    }

    /// Records what the store gave the world now enforced, and hands its
    /// endpoints to the agent to publish.
    fn shared(&mut self, share: RemoteShare, world: &World) {
        if let Some(c) = &mut self.cluster {
            c.share = share;
            c.share_of = c.remotes.clone();
            c.publish(&world.endpoints);
        }
    }

    /// Whether any of `prefixes` is a store entry's, enforced or left out.
    fn touches_cluster<'a>(&self, mut prefixes: impl Iterator<Item = &'a IpNet>) -> bool {
        self.cluster.as_ref().is_some_and(|c| {
            prefixes.any(|p| c.share.entries.contains_key(p) || c.share.conflicts.contains(p))
        })
    }

    /// Applies a world with other endpoints by restarting the datapath
    /// through its takeover path (see [`Datapath::restart`]).
    fn restart(
        &mut self,
        slot: &mut Option<Datapath>,
        world: &World,
        config: Config,
        runtime: Runtime,
        started: Instant,
    ) -> Reply {
        let dp = slot.take().expect("a running datapath");
        let gap_before = dp.snapshot().gap_dropped_total;
        let (e, back) = match dp.restart(world, config.datapath.clone()) {
            Restart::Done(dp) => {
                let u = Update {
                    revision: dp.engine.revision(),
                    ipcache_inserted: dp.engine.inventory.entries.len(),
                    ipcache_removed: 0,
                    identities: dp.engine.inventory.identities.len(),
                };
                let gap = dp.snapshot().gap_dropped_total.saturating_sub(gap_before);
                self.resume_monitors(&dp);
                *slot = Some(*dp);
                self.set_config(config);
                self.runtime = runtime;
                let mut reply = self.applied(&u, started);
                reply.body["restarted"] = json!(true);
                reply.body["gap_dropped"] = json!(gap);
                return reply;
            }
            Restart::Restored(e, dp) => (e, Some(*dp)),
            Restart::Lost(e) => (e, None),
        };
        match back {
            Some(dp) => {
                self.resume_monitors(&dp);
                *slot = Some(dp);
                Reply::error(
                    409,
                    format!("{e}; the previous endpoints and policy were restored"),
                )
            }
            None => Reply::error(
                500,
                format!(
                    "{e}; the previous state could not be started again either: the datapath \
                     stays pinned and dropping until the next `xpf run`"
                ),
            ),
        }
    }

    /// Turns a new datapath's monitor taps on if monitors listen.
    fn resume_monitors(&mut self, dp: &Datapath) {
        if !self.subscribers.is_empty() {
            self.workers_lost_seen = 0;
            dp.monitor().set_active(true);
        }
    }

    /// A new monitor of `kind` events (of `endpoint` only, if named): the
    /// lines to stream to it. Workers describe frames from now on.
    pub fn subscribe(
        &mut self,
        dp: &Datapath,
        kind: Kind,
        endpoint: Option<&str>,
    ) -> Result<Lines, Reply> {
        let endpoint = match endpoint {
            None => None,
            Some(name) => Some(
                dp.engine
                    .endpoint(name)
                    .map_err(|e| Reply::error(404, format!("endpoint: {e}")))?
                    .0 as u16,
            ),
        };
        let (lines, rx) = bounded(SUBSCRIBER_QUEUE);
        let (rx, alive) = Lines::new(rx);
        self.subscribers.push(Subscriber {
            lines,
            alive,
            kind,
            endpoint,
            lost: 0,
        });
        if !dp.monitor().is_active() {
            self.workers_lost_seen = dp.monitor_lost();
            dp.monitor().set_active(true);
        }
        Ok(rx)
    }

    /// The cluster part, to stop its thread.
    pub fn take_cluster(&mut self) -> Option<Cluster> {
        self.cluster.take()
    }

    /// Whether any monitor listens.
    pub fn monitoring(&self) -> bool {
        !self.subscribers.is_empty()
    }

    /// Moves the workers' events to the monitors that want them, as flow
    /// JSON; reports lost events; forgets monitors that hung up, and stops
    /// the workers describing frames when none is left.
    pub fn pump_monitor(&mut self, dp: &Datapath, events: &mut Vec<MonitorEvent>) {
        if self.subscribers.is_empty() {
            return;
        }
        events.clear();
        dp.monitor().drain(events);
        let lost_now = dp.monitor_lost();
        let workers_lost = lost_now - self.workers_lost_seen;
        self.workers_lost_seen = lost_now;
        if workers_lost > 0 {
            let line = flows::lost_json("WORKER_QUEUE", workers_lost).to_string();
            for s in &mut self.subscribers {
                offer(s, line.clone());
            }
        }
        for e in events.iter() {
            let mut line = None;
            for s in &mut self.subscribers {
                if !s.kind.wants(e) || s.endpoint.is_some_and(|ep| ep != e.endpoint) {
                    continue;
                }
                let text = line.get_or_insert_with(|| {
                    let mut flow = flows::flow_json(&dp.engine, e, &self.node);
                    let host = (self.cluster.as_ref())
                        .zip(e.flow.as_ref())
                        .and_then(|(c, f)| c.host_of(f.dst));
                    if let Some((ip, node)) = host {
                        flow["xpf"]["destination_host"] = json!(ip);
                        flow["xpf"]["destination_node"] = json!(node);
                    }
                    flow.to_string()
                });
                offer(s, text.clone());
            }
        }
        self.subscribers
            .retain(|s| s.alive.load(std::sync::atomic::Ordering::Relaxed));
        if self.subscribers.is_empty() {
            dp.monitor().set_active(false);
        }
        let subscriber_lost: u64 = self.subscribers.iter().map(|s| s.lost).sum();
        self.stats.monitor_lost = lost_now + subscriber_lost;
    }

    fn set_config(&mut self, config: Config) {
        self.config_prefixes = config.world.ipcache.iter().map(|e| e.prefix).collect();
        self.config = config;
    }

    /// Counts an applied change and says what it did.
    fn applied(&mut self, u: &Update, started: Instant) -> Reply {
        let took = started.elapsed();
        self.stats.policy_changes += 1;
        if let Some(m) = &self.metrics {
            m.observe_update(took.as_secs_f64());
        }
        Reply::ok(json!({
            "revision": u.revision,
            "ipcache_inserted": u.ipcache_inserted,
            "ipcache_removed": u.ipcache_removed,
            "identities": u.identities,
            "applied_in_us": took.as_micros() as u64,
        }))
    }

    /// What `xpf status` shows.
    pub fn status(&self, dp: &Datapath) -> Value {
        let engine = &dp.engine;
        let endpoints: Vec<Value> = engine
            .world
            .endpoints
            .iter()
            .zip(&engine.inventory.endpoint_identities)
            .map(|(e, id)| {
                json!({
                    "name": e.name,
                    "identity": id.0,
                    "labels": e.labels.iter().map(|l| l.to_string()).collect::<Vec<_>>(),
                    "ipv4": e.ipv4,
                    "ipv6": e.ipv6,
                    "netns": e.netns,
                })
            })
            .collect();
        let workers: Vec<Value> = dp
            .layout
            .iter()
            .map(|(cpu, ports)| json!({ "cpu": cpu, "ports": ports }))
            .collect();
        json!({
            "instance": dp.instance_name(),
            "pid": std::process::id(),
            "config": self.config_path,
            "uptime_seconds": dp.started().elapsed().as_secs(),
            "revision": engine.revision(),
            "policy_changes": self.stats.policy_changes,
            "policies": engine.world.policies.len(),
            "identities": engine.inventory.identities.len(),
            "ipcache_entries": engine.inventory.entries.len(),
            "runtime_endpoints": self.runtime.endpoints.iter().map(|e| e.name.clone()).collect::<Vec<_>>(),
            "runtime_ipcache_entries": self.runtime.ipcache.iter().map(|(p, l)| json!({
                "prefix": p.to_string(),
                "labels": l.iter().map(|l| l.to_string()).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "endpoints": endpoints,
            "workers": workers,
            "kvstore": self.cluster.as_ref().map(Cluster::status),
            "counters": dp.snapshot(),
        })
    }

    /// Hands the latest counters to the metrics, if they are served.
    pub fn refresh_metrics(&mut self, dp: &Datapath) {
        if let Some(m) = &self.metrics {
            self.stats.revision = dp.engine.revision();
            self.stats.identities = dp.engine.inventory.identities.len();
            self.stats.ipcache_entries = dp.engine.inventory.entries.len();
            self.stats.kvstore = self.cluster.as_ref().map(Cluster::metrics);
            m.set(&dp.snapshot(), &self.stats);
        }
    }
}

/// What a change is called in the log; `None` for what changes nothing.
fn change_name(command: &Command) -> Option<String> {
    Some(match command {
        Command::Status | Command::Monitor { .. } => return None,
        Command::Reload => "reload".to_string(),
        Command::IpcacheUpsert { entries } => match entries.as_slice() {
            [(prefix, _)] => format!("ipcache upsert {prefix}"),
            many => format!("ipcache upsert of {} entries", many.len()),
        },
        Command::IpcacheDelete { prefixes } => match prefixes.as_slice() {
            [prefix] => format!("ipcache delete {prefix}"),
            many => format!("ipcache delete of {} entries", many.len()),
        },
        Command::EndpointAdd { name, .. } => format!("endpoint add {name}"),
        Command::EndpointRemove { name } => format!("endpoint remove {name}"),
    })
}

/// One log line per change the control loop applied or refused.
pub(super) fn log_change(what: &str, reply: &Reply) {
    if reply.status == 200 {
        eprintln!(
            "xpf: {what}: revision {} in {} us",
            reply.body["revision"], reply.body["applied_in_us"]
        );
    } else {
        eprintln!(
            "xpf: {what} refused: {}",
            reply.body["error"].as_str().unwrap_or("?")
        );
    }
}

/// Queues `line` for `s`; a full queue loses it (counted, and reported
/// to the monitor once there is room again).
fn offer(s: &mut Subscriber, line: String) {
    if s.lost > 0 {
        let note = flows::lost_json("MONITOR_QUEUE", s.lost).to_string();
        if s.lines.try_send(note).is_ok() {
            s.lost = 0;
        }
    }
    if let Err(TrySendError::Full(_)) = s.lines.try_send(line) {
        s.lost += 1;
    }
}

/// This host's name, for the flows' `node_name`.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}
