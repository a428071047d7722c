//! `xpf run`: start the datapath, serve the control API (and the metrics),
//! apply changes, report, and stop on SIGINT or SIGTERM (or hand over on
//! SIGUSR2); SIGHUP reloads the config.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use crossbeam_channel::unbounded;

use super::signals::StopSignals;
use crate::control::api::ApiServer;
use crate::control::cluster;
use crate::control::metrics::{self, Metrics, MetricsServer};
use crate::control::plane::ControlPlane;
use crate::datapath::instance::{Instance, STATE_ROOT};
use crate::datapath::{Datapath, Snapshot};
use crate::engine::Engine;

/// How often `xpf run` says it still waits for the store.
const FIRST_SYNC: Duration = Duration::from_secs(5);
/// Seconds between conntrack garbage collections.
const GC_EVERY: Duration = Duration::from_secs(10);
/// How often the drop baseline a successor counts from is saved.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(2);
/// How often monitor events are passed on while a monitor listens.
const MONITOR_EVERY: Duration = Duration::from_millis(50);
/// How often the metrics get the latest counters.
const METRICS_EVERY: Duration = Duration::from_secs(1);

pub(super) fn run(
    config_path: &Path,
    stats_interval: Option<u64>,
    json: bool,
    ipcache_churn: u64,
    api: Option<PathBuf>,
    metrics_addr: Option<String>,
) -> Result<()> {
    let config = super::load_config(config_path)?;
    let signals =
        StopSignals::for_daemon().context("blocking SIGINT, SIGTERM, SIGUSR2 and SIGHUP")?;
    // Cluster mode: join the store first, so the datapath starts with the
    // other hosts' addresses and the cluster's numbers.
    let mut cluster = match &config.kvstore {
        Some(kv) => {
            let mut c =
                cluster::join(kv, &config, FIRST_SYNC).context("starting the kvstore thread")?;
            // Without the store this host cannot tell the other hosts'
            // addresses from the world: it waits (a datapath it takes over
            // keeps dropping meanwhile) rather than start open.
            while !c.state.is_synced() {
                eprintln!(
                    "xpf: kvstore: waiting for {} ({}); nothing is enforced from this run until \
                     it answers",
                    kv.endpoints.join(", "),
                    c.state.describe()
                );
                if let Some(sig) = signals.next(Duration::ZERO) {
                    if sig != libc::SIGHUP {
                        c.agent.stop(false);
                        bail!("stopped while waiting for the kvstore");
                    }
                }
                c.wait_sync(FIRST_SYNC);
            }
            Some(c)
        }
        None => None,
    };
    let (world, alloc) = cluster::first_world(&config, cluster.as_mut())?;
    let engine = Engine::succeeding(&world, alloc, 0)?;
    let dp = Datapath::start(engine, config.datapath.clone()).context("starting the datapath")?;
    // After the start, which claimed this namespace's instance (so a
    // second xpf is refused before it touches the live one's socket). If
    // they fail, nothing of the fresh start stays.
    let (requests_tx, requests) = unbounded();
    let metrics = Arc::new(Metrics::new());
    let servers = api
        .map_or_else(default_api_path, Ok)
        .and_then(|path| Ok(ApiServer::start(&path, requests_tx)?))
        .and_then(|api| {
            let m = match &metrics_addr {
                Some(addr) => Some(serve_metrics(addr, metrics.clone())?),
                None => None,
            };
            Ok((api, m))
        });
    let (api_server, metrics_server) = match servers {
        Ok(s) => s,
        Err(e) => {
            // A fresh start is undone; a taken-over datapath stays
            // enforcing for the next try, as it was found.
            if dp.takeover.is_some() {
                dp.hand_over();
            } else {
                dp.stop();
            }
            if let Some(c) = cluster {
                c.agent.stop(false);
            }
            return Err(e);
        }
    };
    let news = cluster
        .as_ref()
        .map_or_else(crossbeam_channel::never, |c| c.agent.news.clone());
    let mut plane = ControlPlane::new(
        config_path,
        config,
        metrics_server.as_ref().map(|_| metrics.clone()),
        cluster,
    );
    plane.refresh_metrics(&dp);
    for (w, (cpu, ports)) in dp.layout.iter().enumerate() {
        eprintln!("xpf: worker {w} on CPU {cpu}: {}", ports.join(", "));
    }
    if let Some(t) = &dp.takeover {
        for note in &t.notes {
            eprintln!("xpf: takeover: {note}");
        }
        eprintln!(
            "xpf: took over from PID {}: {} frames met no xpf in the gap (dropped, or passed \
             if fail_open), {} flows restored from the conntrack journal",
            t.from_pid, t.gap_dropped, t.restored_flows
        );
    }
    eprintln!("xpf: API on {}", api_server.path().display());
    if let Some(m) = &metrics_server {
        eprintln!("xpf: metrics on http://{}/metrics", m.local_addr());
    }
    println!("xpf: ready");
    std::io::stdout().flush().ok();

    // Signals arrive through their own thread, so the loop below wakes for
    // a signal or an API request alike.
    let (signal_tx, signal_rx) = unbounded();
    std::thread::Builder::new()
        .name("xpf-signals".into())
        .spawn(move || loop {
            if let Some(sig) = signals.next(Duration::from_secs(1)) {
                if signal_tx.send(sig).is_err() || sig != libc::SIGHUP {
                    return;
                }
            }
        })
        .context("starting the signal thread")?;

    let interval = stats_interval.map(Duration::from_secs);
    let mut churn = (ipcache_churn > 0).then(|| Churn::new(ipcache_churn));
    let tick = if churn.is_some() {
        Churn::TICK
    } else {
        interval
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1))
    };
    let mut last = dp.snapshot();
    let mut last_at = Instant::now();
    let mut last_gc = Instant::now();
    let mut last_checkpoint = Instant::now();
    let mut last_metrics = Instant::now();
    let mut events = Vec::new();
    // The datapath lives in a slot: a change of endpoints restarts it in
    // place (see `Datapath::restart`).
    let mut slot = Some(dp);
    let handover = loop {
        crossbeam_channel::select! {
            recv(requests) -> req => {
                if let Ok(req) = req {
                    plane.serve(&mut slot, req);
                }
            }
            recv(news) -> n => {
                if let Ok(n) = n {
                    plane.cluster_news(&mut slot, n);
                }
            }
            recv(signal_rx) -> sig => match sig {
                Ok(libc::SIGHUP) => {
                    plane.reload(&mut slot);
                }
                Ok(sig) => break sig == libc::SIGUSR2,
                Err(_) => break false,
            },
            default(if plane.monitoring() { tick.min(MONITOR_EVERY) } else { tick }) => {}
        }
        let Some(dp) = slot.as_mut() else {
            bail!(
                "the datapath could not be restarted with the new endpoints nor with the old \
                 ones; it stays pinned and dropping what endpoints send (fail-closed) until the \
                 next `xpf run`"
            );
        };
        plane.pump_monitor(dp, &mut events);
        if last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
            if let Err(e) = dp.checkpoint() {
                eprintln!("xpf: {e}");
            }
            last_checkpoint = Instant::now();
        }
        if let Some(c) = &mut churn {
            c.step(&mut dp.engine.ipcache);
        }
        if last_gc.elapsed() >= GC_EVERY {
            dp.gc();
            last_gc = Instant::now();
        }
        if last_metrics.elapsed() >= METRICS_EVERY {
            plane.refresh_metrics(dp);
            last_metrics = Instant::now();
        }
        if let Some(every) = interval {
            if last_at.elapsed() >= every {
                let now = dp.snapshot();
                println!("{}", rate_line(&last, &now, last_at.elapsed()));
                if json {
                    // Every counter so far, on one line, for scripts.
                    println!("xpf: counters {}", serde_json::to_string(&now)?);
                }
                std::io::stdout().flush().ok();
                last = now;
                last_at = Instant::now();
            }
        }
    };
    drop(api_server);
    drop(metrics_server);
    if handover {
        eprintln!(
            "xpf: handing over: the programs stay attached and pinned, and drop what endpoints \
             send (fail-closed) until the next `xpf run` takes over"
        );
    } else {
        eprintln!("xpf: stopping");
    }
    if let Some(c) = &churn {
        eprintln!(
            "xpf: ipcache churn: {} updates in {:.1} s ({:.0}/s)",
            c.updates,
            c.started.elapsed().as_secs_f64(),
            c.updates as f64 / c.started.elapsed().as_secs_f64()
        );
    }
    let dp = slot.expect("checked every round");
    let fin = if handover { dp.hand_over() } else { dp.stop() };
    // Stopped, the endpoints are gone: so are their entries in the store.
    // Handed over, they live on for the successor.
    if let Some(c) = plane.take_cluster() {
        c.agent.stop(!handover);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&fin)?);
    } else {
        print!("{}", fin.render());
    }
    Ok(())
}

/// Where the API listens unless `--api` says otherwise: beside the
/// instance's state, `/run/xpf/<instance>/api.sock`.
pub(super) fn default_api_path() -> Result<PathBuf> {
    let name = Instance::current_name().context("naming this network namespace's instance")?;
    Ok(Path::new(STATE_ROOT).join(name).join("api.sock"))
}

fn serve_metrics(addr: &str, metrics: Arc<Metrics>) -> Result<MetricsServer> {
    Ok(metrics::serve(addr, metrics)?)
}

/// One line of per-worker and total packet rates between two snapshots.
pub(super) fn rate_line(a: &Snapshot, b: &Snapshot, dt: Duration) -> String {
    let secs = dt.as_secs_f64().max(1e-9);
    let rate = |x: u64, y: u64| ((y.saturating_sub(x)) as f64 / secs).round() as u64;
    let mut parts = Vec::new();
    for (i, (x, y)) in a.workers.iter().zip(&b.workers).enumerate() {
        parts.push(format!(
            "w{i} rx {} allowed {} denied {} tx {}",
            rate(x.rx, y.rx),
            rate(x.allowed, y.allowed),
            rate(x.denied, y.denied),
            rate(x.tx, y.tx)
        ));
    }
    let (x, y) = (a.total(), b.total());
    let gap = match &b.takeover {
        Some(t) => format!(" | gap dropped {}", t.gap_dropped),
        None => String::new(),
    };
    let fragments: u64 = b.endpoints.iter().map(|e| e.fragments_held).sum();
    format!(
        "xpf: pps: {} | total rx {} allowed {} denied {} tx {} \
         | conntrack {} fragments {}{gap}",
        parts.join(" | "),
        rate(x.rx, y.rx),
        rate(x.allowed, y.allowed),
        rate(x.denied, y.denied),
        rate(x.tx, y.tx),
        b.conntrack_entries,
        fragments
    )
}

/// Synthetic ipcache updates at a steady rate (benchmarking the filter
/// under control-plane churn): a window of /128 entries slides through
/// 2001:db8:ffff:ffff::/64, one insert and one removal per step.
struct Churn {
    per_sec: u64,
    started: Instant,
    updates: u64,
    next: u64,
}

impl Churn {
    const TICK: Duration = Duration::from_millis(1);
    /// Entries kept present at any time.
    const WINDOW: u64 = 1024;

    fn new(per_sec: u64) -> Self {
        Self {
            per_sec,
            started: Instant::now(),
            updates: 0,
            next: 0,
        }
    }

    fn prefix(n: u64) -> ipnet::IpNet {
        let base = u128::from(std::net::Ipv6Addr::new(
            0x2001, 0xdb8, 0xffff, 0xffff, 0, 0, 0, 0,
        ));
        ipnet::IpNet::from(std::net::IpAddr::V6((base | u128::from(n)).into()))
    }

    /// Applies the updates due by now and publishes them together.
    fn step<A: Clone>(&mut self, ipcache: &mut crate::ipcache::IpCache<A>) {
        let due = (self.started.elapsed().as_secs_f64() * self.per_sec as f64) as u64;
        if due <= self.updates {
            return;
        }
        while self.updates < due {
            if self.updates % 2 == 0 {
                ipcache.insert(
                    Self::prefix(self.next),
                    crate::identity::WORLD,
                    crate::ipcache::Origin::Cidr,
                );
                self.next += 1;
            } else if self.next > Self::WINDOW {
                ipcache.remove(Self::prefix(self.next - Self::WINDOW - 1));
            }
            self.updates += 1;
        }
        ipcache.publish();
    }
}
