//! What `xpf bench kvstore` writes into the store, and taking it out again.
//!
//! [`Plan`] says what the fake remote node publishes: master keys of
//! `identities` label sets `k8s:app=svc-N;` (plus `k8s:app=db;` for the
//! latency part), its per-node keys, its node record and `entries`
//! IPIdentityPairs, half /32 from 198.19.16.0 on and half /128 in
//! 2001:db8:ff::/64 (only benchmarking and documentation addresses), the
//! identity of entry `n` being that of `svc-(n mod identities)`. [`fill`]
//! writes it in transactions of [`TXN_OPS`] puts from [`WRITERS`]
//! connections at once. Everything but the master keys lives under the
//! fake node's lease, as Cilium's entries live under their agent's.
//!
//! [`Sweep`] is the guard that takes it out: when dropped (also on an
//! error or a panic) it revokes the leases it was given and deletes every
//! key under the bench's prefixes, and the master keys holding one of the
//! bench's label strings, whoever allocated them. [`refuse_used_store`]
//! comes first: a store that already holds any of that is not the bench's
//! to fill and empty.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ipnet::IpNet;

use crate::identity::NumericIdentity;
use crate::kvstore::etcd::{Etcd, Write};
use crate::kvstore::identities::{FIRST, LAST};
use crate::kvstore::layout::{self, IpIdentityPair, NodeRecord, IDENTITIES, IPCACHE, NODES};
use crate::labels::LabelSet;

/// Operations in one transaction: etcd's default `--max-txn-ops`.
pub(super) const TXN_OPS: usize = 128;
/// Connections writing at once while filling the store.
pub(super) const WRITERS: usize = 4;
/// How long one call to the store may take.
pub(super) const TIMEOUT: Duration = Duration::from_secs(10);
/// The fake remote node's lease: long enough for a whole run between
/// renewals, short enough that a killed bench's keys go soon after.
const FAKE_LEASE_TTL: i64 = 300;

/// The node that publishes the entries, and the address it is at.
pub(super) const REMOTE_NODE: &str = "xpf-bench-remote";
pub(super) const REMOTE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 252, 1);
/// Every node the bench names starts so (the sweep deletes them all).
const NODE_PREFIX: &str = "xpf-bench-";
/// The local endpoint of the bench's configs.
pub(super) const WEB_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 30, 2);
/// Where the entries' IPv4 addresses start: 198.19.0.0/20 is left for
/// the latency part.
const V4_FIRST: u32 = u32::from_be_bytes([198, 19, 16, 0]);
const V4_ROOM: usize = 65536 - 4096;
const V6_FIRST: u128 = 0x2001_0db8_00ff_0000_0000_0000_0000_0001;
/// The latency part's destination, and another address of its identity
/// (so the label set is one the tables already know, as for a new pod of
/// an existing service).
pub(super) const TARGET: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 1);
pub(super) const ANCHOR: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 2);

/// What the fake remote node publishes.
pub(super) struct Plan {
    pub entries: usize,
    /// The ids of `svc-0`, `svc-1`, ...
    pub ids: Vec<NumericIdentity>,
    /// The id of `k8s:app=db`.
    pub db: NumericIdentity,
}

/// The label set of the `n`th service.
pub(super) fn svc_labels(n: usize) -> LabelSet {
    k8s_app(&format!("svc-{n}"))
}

pub(super) fn db_labels() -> LabelSet {
    k8s_app("db")
}

/// `k8s:app=<app>`.
pub(super) fn k8s_app(app: &str) -> LabelSet {
    LabelSet::from_pairs([("k8s:app", app)]).expect("a valid label")
}

impl Plan {
    /// `entries` entries over `identities` label sets, numbered with the
    /// lowest ids the store has free.
    pub fn new(etcd: &mut Etcd, entries: usize, identities: usize) -> Result<Self> {
        let taken: BTreeSet<u32> = etcd
            .list(&format!("{IDENTITIES}id/"))?
            .pairs
            .iter()
            .filter_map(|(k, _)| layout::parse_id_key(k).ok())
            .map(|id| id.0)
            .collect();
        let mut free = (FIRST..=LAST)
            .filter(|id| !taken.contains(id))
            .map(NumericIdentity);
        let ids: Vec<NumericIdentity> = free.by_ref().take(identities).collect();
        let db = free.next();
        match db {
            Some(db) if ids.len() == identities => Ok(Self { entries, ids, db }),
            _ => bail!(
                "the store has fewer than {} free identities",
                identities + 1
            ),
        }
    }

    /// The prefix of entry `n`.
    pub fn prefix(&self, n: usize) -> IpNet {
        let v4 = (self.entries - self.entries / 2).min(V4_ROOM);
        if n < v4 {
            IpNet::from(IpAddr::V4(Ipv4Addr::from(V4_FIRST + n as u32)))
        } else {
            IpNet::from(IpAddr::V6(Ipv6Addr::from(V6_FIRST + (n - v4) as u128)))
        }
    }

    /// The entries the other hosts should see: the fake node's (with the
    /// anchor) and its node address.
    pub fn remote_entries(&self) -> usize {
        self.entries + 2
    }

    /// Entry `n`'s key and value.
    fn entry(&self, n: usize) -> Write {
        let id = self.ids[n % self.ids.len()];
        ip_put(self.prefix(n), id)
    }
}

/// The fake node's IPIdentityPair for `prefix`.
pub(super) fn ip_put(prefix: IpNet, id: NumericIdentity) -> Write {
    let pair = IpIdentityPair::new(
        prefix,
        id,
        IpAddr::V4(REMOTE_IP),
        format!("xpf-bench:{REMOTE_NODE}"),
    );
    Write::Put(
        layout::ip_key(prefix),
        serde_json::to_vec(&pair).expect("a pair serialises"),
    )
}

/// The fake node's lease, renewed when due.
pub(super) struct FakeNode {
    pub lease: i64,
    renewed: Instant,
}

impl FakeNode {
    pub fn join(etcd: &mut Etcd, sweep: &mut Sweep) -> Result<Self> {
        let lease = etcd.grant(FAKE_LEASE_TTL)?;
        sweep.leases.push(lease);
        Ok(Self {
            lease,
            renewed: Instant::now(),
        })
    }

    /// Renews the lease when a third of it has passed.
    pub fn renew(&mut self, etcd: &mut Etcd) -> Result<()> {
        if self.renewed.elapsed() >= Duration::from_secs(FAKE_LEASE_TTL as u64 / 3) {
            etcd.keep_alive(self.lease)?;
            self.renewed = Instant::now();
        }
        Ok(())
    }
}

/// What filling the store took.
#[derive(Clone, Debug, serde::Serialize)]
pub struct WriteReport {
    pub keys: usize,
    pub transactions: usize,
    pub writers: usize,
    pub seconds: f64,
    pub keys_per_sec: f64,
}

/// Writes `plan` as the fake node under its lease: master keys, per-node
/// keys and the node record first, then the entries.
pub(super) fn fill(endpoint: &str, plan: &Plan, node: &FakeNode) -> Result<WriteReport> {
    let remote = IpAddr::V4(REMOTE_IP);
    let mut labelled: Vec<(NumericIdentity, LabelSet)> = plan
        .ids
        .iter()
        .enumerate()
        .map(|(n, id)| (*id, svc_labels(n)))
        .collect();
    labelled.push((plan.db, db_labels()));
    let masters: Vec<Write> = labelled
        .iter()
        .map(|(id, l)| Write::Put(layout::id_key(*id), layout::label_string(l).into_bytes()))
        .collect();
    let mut leased: Vec<Write> = labelled
        .iter()
        .map(|(id, l)| Write::Put(layout::value_key(l, remote), id.0.to_string().into_bytes()))
        .collect();
    let record = NodeRecord::new(REMOTE_NODE, remote);
    leased.push(Write::Put(
        layout::node_key(REMOTE_NODE),
        serde_json::to_vec(&record).expect("a node serialises"),
    ));
    leased.push(ip_put(IpNet::from(IpAddr::V4(ANCHOR)), plan.db));
    let started = Instant::now();
    let mut transactions = write_parallel(endpoint, &masters, None)?;
    transactions += write_parallel(endpoint, &leased, Some(node.lease))?;
    let entries: Vec<Write> = (0..plan.entries).map(|n| plan.entry(n)).collect();
    transactions += write_parallel(endpoint, &entries, Some(node.lease))?;
    let seconds = started.elapsed().as_secs_f64();
    let keys = masters.len() + leased.len() + entries.len();
    Ok(WriteReport {
        keys,
        transactions,
        writers: WRITERS,
        seconds,
        keys_per_sec: keys as f64 / seconds.max(1e-9),
    })
}

/// Writes `writes` in transactions of [`TXN_OPS`] from [`WRITERS`]
/// connections; how many transactions.
fn write_parallel(endpoint: &str, writes: &[Write], lease: Option<i64>) -> Result<usize> {
    let chunks: Vec<&[Write]> = writes.chunks(TXN_OPS).collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..WRITERS.min(chunks.len()))
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    let mut etcd = Etcd::connect(endpoint, TIMEOUT)?;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(chunk) = chunks.get(i) else {
                            return Ok(());
                        };
                        etcd.write_all(chunk, lease)?;
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("a writer panicked"))
    })?;
    Ok(chunks.len())
}

/// The prefixes every key the bench writes is under, but master keys:
/// the entries, the local endpoint's entry, the bench's node records.
fn bench_prefixes() -> Vec<String> {
    vec![
        format!("{IPCACHE}198.19."),
        format!("{IPCACHE}2001:db8:ff:"),
        layout::ip_key(IpNet::from(IpAddr::V4(WEB_IP))),
        format!("{NODES}{}/{NODE_PREFIX}", layout::CLUSTER),
    ]
}

/// Fails when the store holds anything the bench would write, or a
/// master key of one of `labels`.
pub(super) fn refuse_used_store(etcd: &mut Etcd, labels: &[LabelSet]) -> Result<()> {
    for prefix in bench_prefixes() {
        let found = etcd.list(&prefix)?.pairs;
        if let Some((key, _)) = found.first() {
            bail!(
                "the store already holds {key} ({} keys under {prefix}): the bench fills and \
                 empties a store of its own; point --etcd at one (scripts/bench-kvstore.sh \
                 starts one)",
                found.len()
            );
        }
    }
    let texts: BTreeSet<String> = labels.iter().map(layout::label_string).collect();
    let ids = etcd.list(&format!("{IDENTITIES}id/"))?.pairs;
    if let Some((key, v)) = ids
        .iter()
        .find(|(_, v)| texts.contains(&*String::from_utf8_lossy(v)))
    {
        bail!(
            "the store already holds {key} = {}: the bench fills and empties a store of its own",
            String::from_utf8_lossy(v)
        );
    }
    Ok(())
}

/// The guard that takes out what the bench wrote (see the module doc).
pub(super) struct Sweep {
    endpoint: String,
    /// Leases whose keys go with them.
    pub leases: Vec<i64>,
    /// Label sets whose master keys, per-node keys and locks go.
    labels: Vec<LabelSet>,
}

impl Sweep {
    pub fn new(endpoint: &str, labels: Vec<LabelSet>) -> Self {
        Self {
            endpoint: endpoint.to_string(),
            leases: Vec::new(),
            labels,
        }
    }

    /// Takes everything out.
    fn clean(&mut self) -> Result<()> {
        let mut etcd = Etcd::connect(&self.endpoint, TIMEOUT).context("reconnecting to sweep")?;
        for lease in self.leases.drain(..) {
            // Gone already when it expired: nothing to do then.
            let _ = etcd.revoke(lease);
        }
        let mut ranges: Vec<Write> = bench_prefixes()
            .into_iter()
            .map(Write::DeletePrefix)
            .collect();
        for l in &self.labels {
            ranges.push(Write::DeletePrefix(layout::value_prefix(l)));
            ranges.push(Write::DeletePrefix(format!("{}/", layout::lock_key(l))));
        }
        for chunk in ranges.chunks(TXN_OPS) {
            etcd.write_all(chunk, None)?;
        }
        let texts: BTreeSet<String> = self.labels.iter().map(layout::label_string).collect();
        let masters: Vec<Write> = etcd
            .list(&format!("{IDENTITIES}id/"))?
            .pairs
            .into_iter()
            .filter(|(_, v)| texts.contains(&*String::from_utf8_lossy(v)))
            .map(|(k, _)| Write::Delete(k))
            .collect();
        for chunk in masters.chunks(TXN_OPS) {
            etcd.write_all(chunk, None)?;
        }
        Ok(())
    }
}

impl Drop for Sweep {
    fn drop(&mut self) {
        match self.clean() {
            Ok(()) => eprintln!("bench kvstore: took what it wrote out of the store"),
            Err(e) => eprintln!(
                "bench kvstore: could not take everything out of {}: {e:#}",
                self.endpoint
            ),
        }
    }
}
