//! The cluster side of `xpf run`: one thread that holds this host's
//! membership ([`Node`]) and the cluster as it sees it ([`ClusterView`]),
//! and tells the control loop what changed. The etcd client and its tokio
//! runtime live on this thread only; the control loop and the workers
//! never wait on the store.
//!
//! The thread publishes the endpoints the control loop hands it, renews
//! the lease, follows the store, and sends [`News`]: the store's state,
//! and when they changed, the numbers the cluster gives label sets and
//! the other hosts' addresses. When the store stops answering it says so
//! and reconnects with backoff; the control loop keeps enforcing the last
//! addresses it got (it never flushes them), and on reconnection the view
//! watches again from where it was, or lists again if that revision is
//! gone.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use ipnet::IpNet;

use super::etcd::KvError;
use super::gc::{Gc, GC_EVERY};
use super::node::{ClusterView, Node, Remote};
use super::settings::KvstoreSettings;
use crate::identity::NumericIdentity;
use crate::labels::LabelSet;
use crate::world::Endpoint;

/// How long one attempt to reach an endpoint may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a sync waits on each prefix for news when nothing is new.
const WAIT: Duration = Duration::from_millis(20);
/// News gathered for at most this long before it is sent, so a burst of
/// store events makes one update.
const GATHER: Duration = Duration::from_millis(50);
/// How long a gathering sync waits on each prefix for more: a burst's
/// events come within this of each other. Not [`WAIT`]: a quiet round of
/// that would hold every update back by three of them.
const GATHER_WAIT: Duration = Duration::from_millis(2);
/// Backoff between reconnection attempts: from the first to the last.
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_LAST: Duration = Duration::from_secs(8);

/// The store as this host last reached it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreState {
    /// Not reached yet.
    Connecting,
    /// Connected, and the view follows the store.
    Synced { endpoint: String },
    /// Unreachable since `since`; the last view is kept.
    Lost { since: SystemTime, error: String },
}

impl StoreState {
    pub fn is_synced(&self) -> bool {
        matches!(self, Self::Synced { .. })
    }

    /// A few words for logs.
    pub fn describe(&self) -> String {
        match self {
            Self::Connecting => "not reached yet".to_string(),
            Self::Synced { endpoint } => format!("synced with {endpoint}"),
            Self::Lost { error, .. } => error.clone(),
        }
    }
}

/// Counters of the cluster thread.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct AgentStats {
    /// Times the view listed a prefix again after losing its watch.
    pub relists: u64,
    /// Connections made after the first.
    pub reconnects: u64,
    /// Views sent to the control loop.
    pub updates: u64,
    /// Times this node wrote its entries again because the store had lost
    /// or changed one.
    pub republished: u64,
    /// The store revision the view is at.
    pub revision: i64,
}

/// The other hosts' addresses, by prefix.
pub type Remotes = BTreeMap<IpNet, Remote>;
/// The cluster's numbers for label sets.
pub type Pins = BTreeMap<LabelSet, NumericIdentity>;

/// What the cluster thread tells the control loop.
#[derive(Clone, Debug)]
pub struct News {
    pub state: StoreState,
    pub stats: AgentStats,
    /// Set when the numbers changed.
    pub pins: Option<Arc<Pins>>,
    /// Set when the other hosts' addresses changed.
    pub remotes: Option<Arc<Remotes>>,
    /// Entries of the store left out: their identity has no labels here.
    pub unknown: Vec<IpNet>,
}

enum Order {
    /// Publish these endpoints (all of this host's), withdrawing others.
    Publish(Vec<Endpoint>),
    /// Stop; `leave` revokes the lease so this host's keys go at once.
    Stop { leave: bool },
}

/// The running cluster thread.
pub struct Agent {
    orders: Sender<Order>,
    pub news: Receiver<News>,
    thread: Option<JoinHandle<()>>,
}

impl Agent {
    /// Starts the thread, which joins the store and publishes `endpoints`.
    pub fn start(settings: KvstoreSettings, endpoints: Vec<Endpoint>) -> std::io::Result<Self> {
        let (orders, orders_rx) = unbounded();
        let (news_tx, news) = unbounded();
        let thread = std::thread::Builder::new()
            .name("xpf-kvstore".into())
            .spawn(move || Worker::new(settings, endpoints, news_tx).run(orders_rx))?;
        Ok(Self {
            orders,
            news,
            thread: Some(thread),
        })
    }

    /// Publishes `endpoints` as this host's (all of them).
    pub fn publish(&self, endpoints: Vec<Endpoint>) {
        let _ = self.orders.send(Order::Publish(endpoints));
    }

    /// Waits up to `wait` for the first view of a reachable store; the
    /// news that came meanwhile, in order (empty if none).
    pub fn first_sync(&self, wait: Duration) -> Vec<News> {
        let until = Instant::now() + wait;
        let mut got = Vec::new();
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match self.news.recv_timeout(left) {
                Ok(n) => {
                    let synced = n.state.is_synced() && n.remotes.is_some();
                    got.push(n);
                    if synced {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        got
    }

    /// Stops the thread; `leave` withdraws this host from the store at
    /// once (its lease is revoked), otherwise its keys live out the lease
    /// (a successor takes them over).
    pub fn stop(mut self, leave: bool) {
        let _ = self.orders.send(Order::Stop { leave });
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.orders.send(Order::Stop { leave: false });
            let _ = t.join();
        }
    }
}

/// The thread's state.
struct Worker {
    settings: KvstoreSettings,
    endpoints: Vec<Endpoint>,
    news: Sender<News>,
    node: Option<Node>,
    view: ClusterView,
    state: StoreState,
    stats: AgentStats,
    /// The endpoints need publishing (new, or a new lease).
    publish: bool,
    /// The numbers this node's own publication got.
    own: Pins,
    sent_pins: Option<Arc<Pins>>,
    sent_remotes: Option<Arc<Remotes>>,
    sent_stats: AgentStats,
    last_keepalive: Instant,
    gc: Gc,
    last_gc: Instant,
    backoff: Duration,
    joined_once: bool,
}

impl Worker {
    fn new(settings: KvstoreSettings, endpoints: Vec<Endpoint>, news: Sender<News>) -> Self {
        Self {
            settings,
            endpoints,
            news,
            node: None,
            view: ClusterView::default(),
            state: StoreState::Connecting,
            stats: AgentStats::default(),
            publish: true,
            own: Pins::new(),
            sent_pins: None,
            sent_remotes: None,
            sent_stats: AgentStats::default(),
            last_keepalive: Instant::now(),
            gc: Gc::new(),
            last_gc: Instant::now(),
            backoff: BACKOFF_FIRST,
            joined_once: false,
        }
    }

    fn run(mut self, orders: Receiver<Order>) {
        loop {
            // Orders first; while disconnected, wait out the backoff on
            // them so a stop is never held up.
            let wait = if self.node.is_some() {
                Duration::ZERO
            } else if self.joined_once || self.state != StoreState::Connecting {
                self.backoff
            } else {
                Duration::ZERO
            };
            match orders.recv_timeout(wait) {
                Ok(Order::Publish(eps)) => {
                    self.endpoints = eps;
                    self.publish = true;
                }
                Ok(Order::Stop { leave }) => {
                    if let (true, Some(node)) = (leave, self.node.take()) {
                        let _ = node.leave();
                    }
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if let Err(e) = self.step() {
                self.lost(e);
            }
        }
    }

    /// One round: connect if needed, publish if asked, renew the lease
    /// when due, follow the store, and send what changed.
    fn step(&mut self) -> Result<(), String> {
        if self.node.is_none() {
            let node = Node::join(&self.settings, CONNECT_TIMEOUT).map_err(|e| e.to_string())?;
            if self.joined_once {
                self.stats.reconnects += 1;
            }
            self.joined_once = true;
            self.node = Some(node);
            self.view.reconnected();
            self.publish = true;
            self.last_keepalive = Instant::now();
        }
        let node = self.node.as_mut().expect("joined above");
        if self.publish {
            let ids = node.publish(&self.endpoints).map_err(|e| e.to_string())?;
            self.own = self
                .endpoints
                .iter()
                .zip(ids)
                .map(|(e, id)| (e.labels.clone(), id))
                .collect();
            self.publish = false;
        }
        let every = Duration::from_secs((self.settings.lease_ttl / 3).max(1));
        if self.last_keepalive.elapsed() >= every {
            node.keep_alive().map_err(|e| e.to_string())?;
            self.last_keepalive = Instant::now();
        }
        if self.last_gc.elapsed() >= GC_EVERY {
            // Identities no node uses any more, collected Cilium's way
            // (two rounds, under the lock); every host takes part.
            self.last_gc = Instant::now();
            let round = self.gc.round(&mut node.etcd).map_err(|e| e.to_string())?;
            if !round.deleted.is_empty() {
                eprintln!(
                    "xpf: kvstore: collected {} unused identities: {:?}",
                    round.deleted.len(),
                    round.deleted
                );
            }
        }
        let gather_until = Instant::now() + GATHER;
        let changed = sync(&mut self.view, node, WAIT)?;
        while changed && Instant::now() < gather_until {
            if !sync(&mut self.view, node, GATHER_WAIT)? {
                break;
            }
        }
        if !node.published_intact(&self.view) && self.view.revision() > 0 {
            // Someone deleted or changed this node's entry: write it again.
            node.forget_published();
            self.publish = true;
            self.stats.republished += 1;
        }
        let became_synced = !self.state.is_synced();
        if became_synced {
            self.state = StoreState::Synced {
                endpoint: node.etcd.endpoint().to_string(),
            };
            self.backoff = BACKOFF_FIRST;
        }
        if changed || became_synced || self.sent_remotes.is_none() {
            self.send(became_synced);
        }
        Ok(())
    }

    /// Sends the state, and the numbers and addresses where they changed
    /// (`always`: the state even when nothing else changed).
    fn send(&mut self, always: bool) {
        let node = self.node.as_ref().expect("connected");
        let (ip, name) = (node.ip, node.name().to_string());
        let mut pins = self.view.pins();
        pins.extend(self.own.iter().map(|(l, id)| (l.clone(), *id)));
        let (remotes, unknown) = self.view.remote_entries(&name, ip);
        let pins = (self.sent_pins.as_deref() != Some(&pins)).then(|| Arc::new(pins));
        let remotes = (self.sent_remotes.as_deref() != Some(&remotes)).then(|| Arc::new(remotes));
        self.stats.relists = self.view.relists();
        self.stats.revision = self.view.revision();
        if pins.is_none() && remotes.is_none() && !always && self.sent_stats == self.stats {
            return;
        }
        self.sent_stats = self.stats.clone();
        if let Some(p) = &pins {
            self.sent_pins = Some(p.clone());
        }
        if let Some(r) = &remotes {
            self.sent_remotes = Some(r.clone());
        }
        self.stats.updates += 1;
        let _ = self.news.send(News {
            state: self.state.clone(),
            stats: self.stats.clone(),
            pins,
            remotes,
            unknown,
        });
    }

    /// The store stopped answering: drop the connection, say so once,
    /// and back off.
    fn lost(&mut self, error: String) {
        self.node = None;
        if let StoreState::Lost { error: e, .. } = &mut self.state {
            *e = error;
        } else {
            self.state = StoreState::Lost {
                since: SystemTime::now(),
                error,
            };
            self.stats.relists = self.view.relists();
            let _ = self.news.send(News {
                state: self.state.clone(),
                stats: self.stats.clone(),
                pins: None,
                remotes: None,
                unknown: Vec::new(),
            });
        }
        self.backoff = (self.backoff * 2).min(BACKOFF_LAST);
    }
}

/// One sync of the view, waiting up to `wait` on each prefix; whether it
/// changed.
fn sync(view: &mut ClusterView, node: &mut Node, wait: Duration) -> Result<bool, String> {
    view.sync(&mut node.etcd, wait)
        .map_err(|e: KvError| e.to_string())
}
