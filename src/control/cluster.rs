//! Cluster mode in the control loop: the [`Agent`] thread's news turned
//! into updates of the enforced world, through the same atomic update
//! path as the API's changes, and this host's endpoints handed to the
//! agent to publish whenever they change.
//!
//! A change of the other hosts' addresses whose labels the tables know is
//! applied without recompiling ([`Engine::try_upsert_entries`] and
//! [`Engine::try_remove_entries`]); anything else (new label sets, new
//! numbers for label sets this host enforces) updates the whole world.
//! When the store is lost nothing is flushed: the last addresses stay
//! enforced until the store answers again.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ipnet::IpNet;
use serde_json::{json, Value};

use super::enforced::{enforced_world, RemoteShare, Runtime};
use super::metrics::KvstoreStats;
use super::plane::ControlPlane;
use crate::config::Config;
use crate::datapath::Datapath;
use crate::identity::LocalAllocator;
use crate::kvstore::agent::{Agent, AgentStats, News, Pins, Remotes, StoreState};
use crate::kvstore::etcd::Etcd;
use crate::kvstore::node::ClusterView;
use crate::kvstore::settings::KvstoreSettings;
use crate::world::{Endpoint, World, WorldError};

/// This host's part in the cluster, as the control loop keeps it.
pub struct Cluster {
    pub agent: Agent,
    pub node_name: String,
    pub node_ip: IpAddr,
    pub state: StoreState,
    pub stats: AgentStats,
    pub pins: Arc<Pins>,
    pub remotes: Arc<Remotes>,
    /// What of `remotes` the enforced world has, and what it left out.
    pub(super) share: RemoteShare,
    /// The store's addresses `share` was made of (a store event changes
    /// it by what differs from them).
    pub(super) share_of: Arc<Remotes>,
    /// Store entries whose identity has no labels here.
    pub unknown: Vec<IpNet>,
    /// The endpoints last handed to the agent.
    published: Vec<Endpoint>,
}

impl Cluster {
    /// The cluster part of a host whose agent was started with
    /// `endpoints`, with the news it sent so far.
    pub fn new(
        agent: Agent,
        settings: &KvstoreSettings,
        endpoints: Vec<Endpoint>,
        news: Vec<News>,
    ) -> Self {
        let mut c = Self {
            agent,
            node_name: settings.node_name.clone(),
            node_ip: settings.node_ip,
            state: StoreState::Connecting,
            stats: AgentStats::default(),
            pins: Arc::default(),
            remotes: Arc::default(),
            share: RemoteShare::default(),
            share_of: Arc::default(),
            unknown: Vec::new(),
            published: endpoints,
        };
        for n in news {
            c.absorb(n);
        }
        c
    }

    /// Takes in news; whether the numbers and the addresses changed.
    pub fn absorb(&mut self, news: News) -> (bool, bool) {
        self.state = news.state;
        self.stats = news.stats;
        let pins = news.pins.map(|p| self.pins = p).is_some();
        let remotes = news
            .remotes
            .map(|r| {
                self.remotes = r;
                self.unknown = news.unknown;
            })
            .is_some();
        (pins, remotes)
    }

    /// Waits up to `wait` for the agent to reach the store, taking in
    /// what it says meanwhile.
    pub fn wait_sync(&mut self, wait: Duration) {
        for n in self.agent.first_sync(wait) {
            self.absorb(n);
        }
    }

    /// Hands `endpoints` to the agent when they are not what it last got.
    pub fn publish(&mut self, endpoints: &[Endpoint]) {
        let key = |e: &Endpoint| (e.name.clone(), e.labels.clone(), e.ipv4, e.ipv6);
        let same = self.published.len() == endpoints.len()
            && self
                .published
                .iter()
                .zip(endpoints)
                .all(|(a, b)| key(a) == key(b));
        if !same {
            self.published = endpoints.to_vec();
            self.agent.publish(endpoints.to_vec());
        }
    }

    /// The host and node of a remote address, for monitor events.
    pub fn host_of(&self, addr: IpAddr) -> Option<(IpAddr, Option<&str>)> {
        let exact = self.remotes.get(&IpNet::from(addr));
        let r = exact.or_else(|| {
            self.remotes
                .iter()
                .filter(|(p, _)| p.contains(&addr))
                .max_by_key(|(p, _)| p.prefix_len())
                .map(|(_, r)| r)
        })?;
        Some((r.host?, r.node.as_deref()))
    }

    /// What `xpf status` says of the cluster.
    pub fn status(&self) -> Value {
        let (state, endpoint, since, error) = match &self.state {
            StoreState::Connecting => ("connecting", None, None, None),
            StoreState::Synced { endpoint } => ("synced", Some(endpoint.clone()), None, None),
            StoreState::Lost { since, error } => (
                "lost",
                None,
                Some(
                    since
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs(),
                ),
                Some(error.clone()),
            ),
        };
        let prefixes = |v: &[IpNet]| v.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        json!({
            "state": state,
            "endpoint": endpoint,
            "lost_since_unix": since,
            "error": error,
            "enforcing": if self.state.is_synced() {
                "the store's current state"
            } else {
                "the last state seen (nothing was flushed)"
            },
            "node": { "name": self.node_name, "ip": self.node_ip },
            "revision": self.stats.revision,
            "remote_entries": self.share.entries.len(),
            "identities": self.pins.len(),
            "conflicts": prefixes(&self.share.conflicts),
            "refused": prefixes(&self.share.refused),
            "unknown_identity": prefixes(&self.unknown),
            "relists": self.stats.relists,
            "reconnects": self.stats.reconnects,
            "republished": self.stats.republished,
        })
    }

    /// The figures the metrics export.
    pub fn metrics(&self) -> KvstoreStats {
        KvstoreStats {
            up: self.state.is_synced(),
            remote_entries: self.share.entries.len() as u64,
            conflicts: (self.share.conflicts.len() + self.share.refused.len()) as u64,
            unknown: self.unknown.len() as u64,
            relists: self.stats.relists,
            reconnects: self.stats.reconnects,
            updates: self.stats.updates,
        }
    }
}

/// Starts the agent for the config's `kvstore:` section and waits up to
/// `wait` for its first view of the store.
pub fn join(
    settings: &KvstoreSettings,
    config: &Config,
    wait: Duration,
) -> std::io::Result<Cluster> {
    let endpoints = config.world.endpoints.clone();
    let agent = Agent::start(settings.clone(), endpoints.clone())?;
    let news = agent.first_sync(wait);
    Ok(Cluster::new(agent, settings, endpoints, news))
}

/// The world `xpf run` starts with (the config's, and in cluster mode the
/// store's share), and the allocator that numbers it as the cluster does.
pub fn first_world(
    config: &Config,
    cluster: Option<&mut Cluster>,
) -> Result<(World, LocalAllocator), WorldError> {
    let Some(c) = cluster else {
        return Ok((config.world.clone(), LocalAllocator::new()));
    };
    let (world, alloc, share) = world_beside(config, &c.remotes, c.pins.clone())?;
    c.share = share;
    c.share_of = c.remotes.clone();
    Ok((world, alloc))
}

/// What an inspecting command (`policy check`, `identity list`,
/// `ipcache list`) sees in cluster mode: the config's world with the
/// store's share, read once, numbered as the cluster numbers, and the
/// other hosts' addresses (for their hosts).
pub fn read_world(
    config: &Config,
    settings: &KvstoreSettings,
) -> Result<(World, LocalAllocator, Remotes), String> {
    let mut etcd = Etcd::connect_any(&settings.endpoints, crate::kvstore::agent::CONNECT_TIMEOUT)
        .map_err(|e| format!("kvstore: {e}"))?;
    let mut view = ClusterView::default();
    view.sync(&mut etcd, Duration::ZERO)
        .map_err(|e| format!("kvstore: {e}"))?;
    let (remotes, _) = view.remote_entries(&settings.node_name, settings.node_ip);
    let (world, alloc, _) =
        world_beside(config, &remotes, Arc::new(view.pins())).map_err(|e| e.to_string())?;
    Ok((world, alloc, remotes))
}

/// The config's world with the store's share of `remotes`, and an
/// allocator numbering label sets as `pins` does.
fn world_beside(
    config: &Config,
    remotes: &Remotes,
    pins: Arc<Pins>,
) -> Result<(World, LocalAllocator, RemoteShare), WorldError> {
    let share = RemoteShare::of(remotes, &config.world, &Runtime::default());
    let world = enforced_world(&config.world, &Runtime::default(), &share)?;
    let mut alloc = LocalAllocator::new();
    alloc.pin(pins);
    Ok((world, alloc, share))
}

impl ControlPlane {
    /// Applies the agent's news: the other hosts' addresses and the
    /// cluster's numbers, atomically; logs changes of the store's state.
    pub fn cluster_news(&mut self, slot: &mut Option<Datapath>, news: News) {
        let started = Instant::now();
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let was = c.state.clone();
        let (pins, remotes) = c.absorb(news);
        log_state(&was, c);
        let Some(dp) = slot.as_mut() else {
            return;
        };
        let renumber = pins && dp.engine.pin_identities(c.pins.clone());
        if !renumber && !remotes {
            return;
        }
        if !renumber {
            // Only what differs from the addresses the share was made of:
            // with many remote entries, remaking the share and comparing
            // it whole was most of an event's time.
            let (world, runtime) = (&self.config.world, &self.runtime);
            let change = c.share.change(&c.share_of, &c.remotes, world, runtime);
            let removed = change.removed(&c.share);
            let upserts = change.upserts(&c.share);
            let fast = (removed.is_empty() || dp.engine.try_remove_entries(&removed).is_some())
                && (upserts.is_empty() || dp.engine.try_upsert_entries(upserts).is_some());
            if fast {
                c.share.apply(change);
                c.share_of = c.remotes.clone();
                debug_assert_eq!(
                    c.share.entries,
                    RemoteShare::of(&c.remotes, world, runtime).entries
                );
                self.stats.policy_changes += 1;
                if let Some(m) = &self.metrics {
                    m.observe_update(started.elapsed().as_secs_f64());
                }
                return;
            }
        }
        let what = if renumber {
            "kvstore: new cluster identities"
        } else {
            "kvstore: new label sets"
        };
        let reply = self.apply(slot, self.config.clone(), self.runtime.clone());
        if reply.status != 200 {
            super::plane::log_change(what, &reply);
        }
    }
}

/// One log line when the store's state changes.
fn log_state(was: &StoreState, c: &Cluster) {
    match (&was, &c.state) {
        (StoreState::Synced { .. }, StoreState::Synced { .. })
        | (StoreState::Lost { .. }, StoreState::Lost { .. }) => {}
        (_, StoreState::Synced { endpoint }) => eprintln!(
            "xpf: kvstore: synced with {endpoint} at revision {}: {} remote entries, {} cluster \
             identities",
            c.stats.revision,
            c.remotes.len(),
            c.pins.len()
        ),
        (_, StoreState::Lost { error, .. }) => eprintln!(
            "xpf: kvstore: lost ({error}); enforcing the last known cluster state ({} remote \
             entries) and reconnecting",
            c.share.entries.len()
        ),
        (_, StoreState::Connecting) => {}
    }
}
