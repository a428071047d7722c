//! `xpf bench kvstore`: what cluster mode costs, against a real etcd
//! (issue 12). Three measurements, each reported with how it was made:
//!
//! 1. **Initial sync.** A fake remote node publishes `entries`
//!    IPIdentityPairs over `identities` label sets ([`store`]); then, in
//!    this process, what `xpf run` does at start in cluster mode is timed
//!    phase by phase: [`Agent::start`] to its first synced [`News`] (join,
//!    publish, list every prefix, build the remote map), then
//!    [`cluster::first_world`], then [`Engine::succeeding`]. Median of
//!    [`ROUNDS`] rounds, each with a fresh agent on the same store. Aside,
//!    on a connection of their own, the raw list of the ipcache, a fresh
//!    [`ClusterView`] sync and its `remote_entries` are timed too, to say
//!    where the agent's time goes.
//! 2. **Event-to-enforcement** ([`latency`], needs root): a real `xpf run`
//!    in a private host namespace, a datagram every half millisecond from
//!    its endpoint to an outside address, and for each event an entry
//!    giving that address an allowed identity put, then deleted: from
//!    just before the put to the first datagram through, and from just
//!    before the delete to the last one through.
//! 3. **Identity allocation.** One host allocating `allocations` fresh
//!    label sets alone, then two hosts (own connections and leases)
//!    allocating the same other `allocations` at the same moment: rates,
//!    and whether both got the same id for every label set (an error if
//!    not).
//!
//! Every time is an [`Instant`] difference in this process. The store
//! must hold none of what the bench writes; a [`Sweep`] takes all of it
//! out at the end, also on an error.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::config::Config;
use crate::control::cluster::{self, Cluster};
use crate::engine::Engine;
use crate::identity::NumericIdentity;
use crate::kvstore::agent::{Agent, News};
use crate::kvstore::etcd::Etcd;
use crate::kvstore::identities::allocate;
use crate::kvstore::layout::IPCACHE;
use crate::kvstore::node::ClusterView;
use crate::labels::LabelSet;
use store::{db_labels, k8s_app, svc_labels, FakeNode, Plan, Sweep, WriteReport, TIMEOUT};

mod latency;
mod store;

pub use latency::LatencyReport;

/// Rounds of the sync measurement; the median is reported.
pub const ROUNDS: usize = 3;
/// The targets of issue 12.
pub const SYNC_TARGET_SECONDS: f64 = 10.0;
pub const LATENCY_TARGET_P99_MS: f64 = 500.0;
/// How long the agent may take to sync before the bench gives up.
const SYNC_LIMIT: Duration = Duration::from_secs(300);
/// The node the in-process agent joins as.
const LOCAL_NODE: &str = "xpf-bench-local";
const LOCAL_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 252, 2);
/// Allocating hosts' addresses: alone, then the two racing.
const ALONE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 252, 10);
const RACE_IPS: [Ipv4Addr; 2] = [
    Ipv4Addr::new(198, 18, 252, 11),
    Ipv4Addr::new(198, 18, 252, 12),
];
/// Leases of the allocating hosts.
const ALLOC_LEASE_TTL: i64 = 120;
/// Services the policy allows `web` to reach (besides `db`).
const ALLOWED_SERVICES: usize = 10;

/// What `xpf bench kvstore` was asked for.
#[derive(Clone, Debug)]
pub struct KvstoreOptions {
    /// `unix:///ABS/PATH` or `http://HOST:PORT`.
    pub etcd: String,
    pub entries: usize,
    pub identities: usize,
    /// Events of the latency part; `None` skips it (no root needed).
    pub events: Option<usize>,
    /// Label sets each allocating host allocates.
    pub allocations: usize,
}

/// The whole report (its JSON is what `scripts/bench-kvstore.sh` keeps).
#[derive(Clone, Debug, serde::Serialize)]
pub struct KvstoreReport {
    pub machine: Machine,
    pub etcd: String,
    pub write: WriteReport,
    pub sync: SyncReport,
    /// `None` when skipped.
    pub latency: Option<LatencyReport>,
    pub allocation: AllocationReport,
}

/// Where it ran.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub kernel: String,
    /// /proc/loadavg when the bench started: the machine may be shared.
    pub load_average: String,
}

/// The initial sync (part 1).
#[derive(Clone, Debug, serde::Serialize)]
pub struct SyncReport {
    pub entries: usize,
    pub identities: usize,
    pub rounds: Vec<SyncRound>,
    /// Each phase's median over the rounds (so they need not add up to
    /// the median total).
    pub median: SyncRound,
    /// Timed aside, medians: where the agent's time goes.
    pub breakdown: Breakdown,
    pub target_seconds: f64,
    pub met: bool,
}

/// One round of part 1, in milliseconds.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SyncRound {
    /// [`Agent::start`] to the first synced news.
    pub agent_ms: f64,
    pub first_world_ms: f64,
    pub engine_ms: f64,
    pub total_ms: f64,
    /// The other hosts' addresses the news carried.
    pub remote_entries: usize,
    /// The compiled engine's ipcache entries.
    pub engine_entries: usize,
}

/// Parts of the agent's work, timed on their own, in milliseconds.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Breakdown {
    /// `Etcd::list` of the whole ipcache prefix.
    pub list_ipcache_ms: f64,
    /// A fresh `ClusterView::sync`: lists identities, ipcache and nodes,
    /// and reads every key.
    pub view_sync_ms: f64,
    /// `ClusterView::remote_entries`: the labelled remote map.
    pub remote_entries_ms: f64,
}

/// Part 3.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AllocationReport {
    pub label_sets: usize,
    pub alone: Rate,
    pub race: Race,
    /// A racing host's rate over the rate alone.
    pub race_vs_alone: f64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Rate {
    pub seconds: f64,
    pub per_sec: f64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Race {
    pub hosts: Vec<Rate>,
    /// Both hosts' allocations over the time from the start to the last
    /// one done.
    pub total_per_sec: f64,
    /// Whether both hosts got the same id for every label set (the bench
    /// fails when they did not).
    pub agreed: bool,
    pub distinct_ids: usize,
}

/// Runs the three parts (see the module doc). `interrupted` is checked
/// between steps; a stop unwinds, cleaning up.
pub fn run(opts: &KvstoreOptions, interrupted: &dyn Fn() -> bool) -> Result<KvstoreReport> {
    let machine = machine();
    let mut etcd = Etcd::connect(&opts.etcd, TIMEOUT).context("connecting to the store")?;
    let alone: Vec<LabelSet> = (0..opts.allocations)
        .map(|i| k8s_app(&format!("alone-{i}")))
        .collect();
    let race: Vec<LabelSet> = (0..opts.allocations)
        .map(|i| k8s_app(&format!("race-{i}")))
        .collect();
    let mut labels: Vec<LabelSet> = (0..opts.identities).map(svc_labels).collect();
    labels.extend([db_labels(), web_labels()]);
    labels.extend(alone.iter().chain(&race).cloned());
    store::refuse_used_store(&mut etcd, &labels)?;
    let mut sweep = Sweep::new(&opts.etcd, labels);

    let plan = Plan::new(&mut etcd, opts.entries, opts.identities)?;
    let mut fake = FakeNode::join(&mut etcd, &mut sweep)?;
    eprintln!(
        "bench kvstore: writing {} entries over {} identities...",
        opts.entries, opts.identities
    );
    let write = store::fill(&opts.etcd, &plan, &fake)?;
    eprintln!(
        "bench kvstore: wrote {} keys in {:.2} s ({:.0} keys/s)",
        write.keys, write.seconds, write.keys_per_sec
    );

    let dir = tempfile::tempdir()?;
    let config = bench_config(dir.path(), &opts.etcd)?;
    let mut rounds = Vec::new();
    let mut asides = Vec::new();
    for r in 0..ROUNDS {
        if interrupted() {
            bail!("interrupted");
        }
        fake.renew(&mut etcd)?;
        let round = sync_round(&config, &plan)?;
        eprintln!(
            "bench kvstore: sync round {}: agent {:.0} ms, first_world {:.0} ms, engine {:.0} \
             ms, total {:.0} ms",
            r + 1,
            round.agent_ms,
            round.first_world_ms,
            round.engine_ms,
            round.total_ms
        );
        rounds.push(round);
        asides.push(breakdown(&opts.etcd)?);
    }
    let sync = SyncReport {
        entries: opts.entries,
        identities: opts.identities,
        median: median_round(&rounds),
        breakdown: Breakdown {
            list_ipcache_ms: median(asides.iter().map(|b| b.list_ipcache_ms)),
            view_sync_ms: median(asides.iter().map(|b| b.view_sync_ms)),
            remote_entries_ms: median(asides.iter().map(|b| b.remote_entries_ms)),
        },
        target_seconds: SYNC_TARGET_SECONDS,
        met: false,
        rounds,
    };
    let sync = SyncReport {
        met: sync.median.total_ms <= SYNC_TARGET_SECONDS * 1e3,
        ..sync
    };

    let latency = match opts.events {
        Some(events) => Some(latency::measure(
            &mut etcd,
            &opts.etcd,
            &plan,
            &mut fake,
            events,
            interrupted,
        )?),
        None => None,
    };
    if interrupted() {
        bail!("interrupted");
    }
    fake.renew(&mut etcd)?;
    let allocation = allocation(&opts.etcd, &alone, &race, &mut sweep)?;
    drop(sweep);
    Ok(KvstoreReport {
        machine,
        etcd: opts.etcd.clone(),
        write,
        sync,
        latency,
        allocation,
    })
}

fn web_labels() -> LabelSet {
    LabelSet::from_pairs([("app", "web")]).expect("a valid label")
}

/// The policies both configs use: `web` may reach `db` on UDP 9000 (the
/// latency part) and the first services on TCP 80.
fn policies() -> String {
    let services: Vec<String> = (0..ALLOWED_SERVICES)
        .map(|n| format!("{{matchLabels: {{app: svc-{n}}}}}"))
        .collect();
    format!(
        r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: web}}
spec:
  endpointSelector: {{matchLabels: {{app: web}}}}
  egress:
    - toEndpoints: [{{matchLabels: {{app: db}}}}]
      toPorts: [{{ports: [{{port: "9000", protocol: UDP}}]}}]
    - toEndpoints: [{}]
      toPorts: [{{ports: [{{port: "80", protocol: TCP}}]}}]
"#,
        services.join(", ")
    )
}

/// A config with endpoint `web` (in `netns`), the policies beside it and
/// a `kvstore:` section for node `node` at `ip`, written into `dir`.
fn write_config(
    dir: &std::path::Path,
    etcd: &str,
    netns: &str,
    node: &str,
    ip: Ipv4Addr,
) -> Result<std::path::PathBuf> {
    let path = dir.join("xpf.yaml");
    std::fs::write(dir.join("policies.yaml"), policies())?;
    std::fs::write(
        &path,
        format!(
            "endpoints:\n  - {{name: web, netns: {netns}, labels: {{app: web}}, ipv4: {}}}\n\
             host_addresses: [198.18.0.1]\npolicies: [policies.yaml]\n\
             kvstore:\n  endpoints: [\"{etcd}\"]\n  node: {{name: {node}, ip: {ip}}}\n  \
             lease_ttl: 10\n",
            store::WEB_IP
        ),
    )?;
    Ok(path)
}

fn bench_config(dir: &std::path::Path, etcd: &str) -> Result<Config> {
    let path = write_config(dir, etcd, "xpf-bench-web", LOCAL_NODE, LOCAL_IP)?;
    Ok(Config::load(&path)?)
}

/// One round of part 1 (see the module doc); the agent leaves the store
/// at the end, whatever happened.
fn sync_round(config: &Config, plan: &Plan) -> Result<SyncRound> {
    let settings = config.kvstore.clone().expect("the bench's config has one");
    let endpoints = config.world.endpoints.clone();
    let started = Instant::now();
    let agent = Agent::start(settings.clone(), endpoints.clone())?;
    let news: Vec<News> = agent.first_sync(SYNC_LIMIT);
    let synced_at = Instant::now();
    let synced = news
        .last()
        .is_some_and(|n| n.state.is_synced() && n.remotes.is_some());
    let mut cluster = Cluster::new(agent, &settings, endpoints, news);
    let round = if synced {
        build(config, &mut cluster, started, synced_at)
    } else {
        Err(anyhow::anyhow!(
            "the agent did not sync within {SYNC_LIMIT:?}: {}",
            cluster.state.describe()
        ))
    };
    cluster.agent.stop(true);
    let round = round?;
    if round.remote_entries != plan.remote_entries() || !cluster.unknown.is_empty() {
        bail!(
            "the agent saw {} remote entries ({} with an unknown identity), not the {} written",
            round.remote_entries,
            cluster.unknown.len(),
            plan.remote_entries()
        );
    }
    if round.engine_entries < plan.remote_entries() {
        bail!(
            "the engine holds {} entries, fewer than the {} of the store",
            round.engine_entries,
            plan.remote_entries()
        );
    }
    Ok(round)
}

/// The first world and the engine, timed.
fn build(
    config: &Config,
    cluster: &mut Cluster,
    started: Instant,
    synced_at: Instant,
) -> Result<SyncRound> {
    let (world, alloc) = cluster::first_world(config, Some(&mut *cluster))?;
    let world_at = Instant::now();
    let engine = Engine::succeeding(&world, alloc, 0)?;
    let done = Instant::now();
    let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
    Ok(SyncRound {
        agent_ms: ms(started, synced_at),
        first_world_ms: ms(synced_at, world_at),
        engine_ms: ms(world_at, done),
        total_ms: ms(started, done),
        remote_entries: cluster.remotes.len(),
        engine_entries: engine.inventory.entries.len(),
    })
}

/// The agent's parts, timed on a connection of their own.
fn breakdown(endpoint: &str) -> Result<Breakdown> {
    let mut etcd = Etcd::connect(endpoint, TIMEOUT)?;
    let t = Instant::now();
    let listed = etcd.list(IPCACHE)?;
    let list_ipcache_ms = t.elapsed().as_secs_f64() * 1e3;
    drop(listed);
    let mut view = ClusterView::default();
    let t = Instant::now();
    view.sync(&mut etcd, Duration::ZERO)?;
    let view_sync_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let remotes = view.remote_entries(LOCAL_NODE, IpAddr::V4(LOCAL_IP));
    let remote_entries_ms = t.elapsed().as_secs_f64() * 1e3;
    drop(remotes);
    Ok(Breakdown {
        list_ipcache_ms,
        view_sync_ms,
        remote_entries_ms,
    })
}

/// Part 3: `alone` by one host, then `race` by two at once.
fn allocation(
    endpoint: &str,
    alone: &[LabelSet],
    race: &[LabelSet],
    sweep: &mut Sweep,
) -> Result<AllocationReport> {
    let mut host = |ip: Ipv4Addr| -> Result<(Etcd, i64, IpAddr)> {
        let mut etcd = Etcd::connect(endpoint, TIMEOUT)?;
        let lease = etcd.grant(ALLOC_LEASE_TTL)?;
        sweep.leases.push(lease);
        Ok((etcd, lease, IpAddr::V4(ip)))
    };
    let (mut etcd, lease, ip) = host(ALONE_IP)?;
    eprintln!(
        "bench kvstore: allocating {} label sets alone...",
        alone.len()
    );
    let t = Instant::now();
    for l in alone {
        allocate(&mut etcd, l, ip, lease)?;
    }
    let alone_rate = rate(alone.len(), t.elapsed());
    let hosts = [host(RACE_IPS[0])?, host(RACE_IPS[1])?];
    eprintln!(
        "bench kvstore: two hosts allocating the same {} label sets at once...",
        race.len()
    );
    let barrier = Barrier::new(hosts.len());
    type Raced = (Vec<NumericIdentity>, Instant, Instant);
    let results: Vec<Result<Raced>> = std::thread::scope(|s| {
        let threads: Vec<_> = hosts
            .into_iter()
            .map(|(mut etcd, lease, ip)| {
                let barrier = &barrier;
                s.spawn(move || -> Result<Raced> {
                    barrier.wait();
                    let start = Instant::now();
                    let ids = race
                        .iter()
                        .map(|l| allocate(&mut etcd, l, ip, lease))
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok((ids, start, Instant::now()))
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("an allocating host panicked"))
            .collect()
    });
    let results = results.into_iter().collect::<Result<Vec<_>>>()?;
    let (a, b) = (&results[0].0, &results[1].0);
    if let Some(i) = (0..race.len()).find(|&i| a[i] != b[i]) {
        bail!(
            "the racing hosts disagree: {} got {} on one and {} on the other",
            crate::kvstore::layout::label_string(&race[i]),
            a[i].0,
            b[i].0
        );
    }
    let distinct_ids = a.iter().collect::<std::collections::BTreeSet<_>>().len();
    if distinct_ids != race.len() {
        bail!(
            "{} label sets got only {distinct_ids} distinct ids",
            race.len()
        );
    }
    let first = results.iter().map(|r| r.1).min().expect("two hosts");
    let last = results.iter().map(|r| r.2).max().expect("two hosts");
    let hosts: Vec<Rate> = results
        .iter()
        .map(|(ids, s, e)| rate(ids.len(), *e - *s))
        .collect();
    let slowest = hosts.iter().map(|h| h.per_sec).fold(f64::MAX, f64::min);
    Ok(AllocationReport {
        label_sets: race.len(),
        race_vs_alone: slowest / alone_rate.per_sec.max(1e-9),
        alone: alone_rate,
        race: Race {
            total_per_sec: (2 * race.len()) as f64 / (last - first).as_secs_f64().max(1e-9),
            hosts,
            agreed: true,
            distinct_ids,
        },
    })
}

fn rate(n: usize, took: Duration) -> Rate {
    let seconds = took.as_secs_f64();
    Rate {
        seconds,
        per_sec: n as f64 / seconds.max(1e-9),
    }
}

/// The median of `xs` (the upper one of an even count).
fn median(xs: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = xs.collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn median_round(rounds: &[SyncRound]) -> SyncRound {
    let m = |f: fn(&SyncRound) -> f64| median(rounds.iter().map(f));
    SyncRound {
        agent_ms: m(|r| r.agent_ms),
        first_world_ms: m(|r| r.first_world_ms),
        engine_ms: m(|r| r.engine_ms),
        total_ms: m(|r| r.total_ms),
        remote_entries: rounds.first().map_or(0, |r| r.remote_entries),
        engine_entries: rounds.first().map_or(0, |r| r.engine_entries),
    }
}

fn machine() -> Machine {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    Machine {
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel: read("/proc/sys/kernel/osrelease"),
        load_average: read("/proc/loadavg"),
    }
}

impl std::fmt::Display for KvstoreReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = &self.machine;
        writeln!(
            f,
            "xpf bench kvstore against {} ({} CPUs, kernel {}, load {})",
            self.etcd, m.cpus, m.kernel, m.load_average
        )?;
        let w = &self.write;
        writeln!(
            f,
            "write: {} keys in {} transactions from {} connections: {:.2} s ({:.0} keys/s)",
            w.keys, w.transactions, w.writers, w.seconds, w.keys_per_sec
        )?;
        let s = &self.sync;
        let verdict = |met: bool| if met { "met" } else { "MISSED" };
        writeln!(
            f,
            "initial sync of {} entries over {} identities (median of {}): total {:.0} ms \
             (target {:.0} s: {})",
            s.entries,
            s.identities,
            s.rounds.len(),
            s.median.total_ms,
            s.target_seconds,
            verdict(s.met)
        )?;
        writeln!(
            f,
            "  agent to first synced news {:.0} ms, first_world {:.0} ms, Engine::succeeding \
             {:.0} ms",
            s.median.agent_ms, s.median.first_world_ms, s.median.engine_ms
        )?;
        writeln!(
            f,
            "  aside: list of the ipcache {:.0} ms, fresh ClusterView sync {:.0} ms, \
             remote_entries {:.0} ms",
            s.breakdown.list_ipcache_ms, s.breakdown.view_sync_ms, s.breakdown.remote_entries_ms
        )?;
        match &self.latency {
            Some(l) => write!(f, "{l}")?,
            None => writeln!(f, "event-to-enforcement: skipped (--skip-latency)")?,
        }
        let a = &self.allocation;
        writeln!(
            f,
            "identity allocation of {} label sets: alone {:.0}/s; two hosts racing {}/s each, \
             {:.0}/s together ({:.2}x a host alone each), agreed on every id: {}",
            a.label_sets,
            a.alone.per_sec,
            a.race
                .hosts
                .iter()
                .map(|h| format!("{:.0}", h.per_sec))
                .collect::<Vec<_>>()
                .join(" and "),
            a.race.total_per_sec,
            a.race_vs_alone,
            a.race.agreed
        )
    }
}
