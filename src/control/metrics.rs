//! Prometheus/OpenMetrics metrics for `xpf run`, and the small HTTP server
//! that exposes them.
//!
//! The datapath's counters are absolute totals read from atomics, so they
//! are not mirrored into `prometheus_client` counters: the control loop
//! stores its latest [`Snapshot`] with [`Metrics::set`], and a
//! [`Collector`] encodes that snapshot at scrape time. Only the policy
//! update delay, which is observed one update at a time, is a registered
//! [`Histogram`]. Nothing here is on the packet path: workers never see
//! this module, and the lock it holds is shared only by the control loop
//! (about once a second) and scrapes.
//!
//! Names follow Cilium's where one exists (`drop_count_total`,
//! `forward_count_total`, `policy_implementation_delay`). Labels stay
//! bounded: drop reasons, parser errors, worker indices and the endpoints
//! of the config, never anything per flow.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::datapath::Snapshot;
use crate::filter::DropReason;

/// What the control plane knows beyond the datapath's counters.
#[derive(Clone, Debug, Default)]
pub struct ControlStats {
    /// Policy revision currently enforced (starts at 1).
    pub revision: u64,
    /// Updates applied since start.
    pub policy_changes: u64,
    /// Identities known (inventory size).
    pub identities: usize,
    /// Entries in the ipcache.
    pub ipcache_entries: usize,
    /// Monitor events lost (slow readers).
    pub monitor_lost: u64,
    /// Cluster mode: the store as this host sees it.
    pub kvstore: Option<KvstoreStats>,
}

/// The cluster figures of [`ControlStats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvstoreStats {
    /// The store answers and the view follows it.
    pub up: bool,
    /// Other hosts' addresses enforced.
    pub remote_entries: u64,
    /// Store entries left out: claimed locally, or unreadable as labels.
    pub conflicts: u64,
    /// Store entries whose identity has no labels here.
    pub unknown: u64,
    pub relists: u64,
    pub reconnects: u64,
    /// Views of the store the control loop received.
    pub updates: u64,
}

/// xpf judges what endpoints send: every verdict is on egress.
const EGRESS: &str = "EGRESS";

/// Upper bounds of the update delay histogram, in seconds: 100 µs to 10 s,
/// 1-2.5-5 per decade.
const DELAY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The media type of OpenMetrics text 1.0.0.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The metrics of one `xpf run`.
pub struct Metrics {
    registry: Registry,
    latest: Arc<Mutex<Latest>>,
    update_delay: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("xpf");
        let update_delay = Histogram::new(DELAY_BUCKETS);
        registry.register_with_unit(
            "policy_implementation_delay",
            "Time from a policy update's call to its enforcement by every worker",
            Unit::Seconds,
            update_delay.clone(),
        );
        let latest = Arc::new(Mutex::new(Latest::default()));
        registry.register_collector(Box::new(LatestCollector(Arc::clone(&latest))));
        Self {
            registry,
            latest,
            update_delay,
        }
    }

    /// The latest counters; the control loop calls this about once a second.
    pub fn set(&self, snapshot: &Snapshot, control: &ControlStats) {
        let mut latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        latest.snapshot.clone_from(snapshot);
        latest.control.clone_from(control);
    }

    /// One update's delay from the call to enforcement (seconds).
    pub fn observe_update(&self, seconds: f64) {
        self.update_delay.observe(seconds);
    }

    /// OpenMetrics text exposition (what GET /metrics returns).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail, and every collector here
        // only writes.
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding metrics into a String");
        out
    }
}

/// What the last [`Metrics::set`] stored (all zeros before the first).
#[derive(Debug, Default)]
struct Latest {
    snapshot: Snapshot,
    control: ControlStats,
}

/// Encodes [`Latest`] at scrape time.
#[derive(Debug)]
struct LatestCollector(Arc<Mutex<Latest>>);

impl Collector for LatestCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let latest = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let s = &latest.snapshot;
        let c = &latest.control;
        let total = s.total();
        // Frames the XDP program served from the verdict cache were
        // forwarded too, without a worker seeing them.
        let cached: u64 = s.endpoints.iter().map(|e| e.passed_cached).sum();
        let cached_bytes: u64 = s.endpoints.iter().map(|e| e.passed_cached_bytes).sum();

        // Malformed frames are already in the endpoints' drops (as
        // `malformed`, `vlan_tagged` or `not_ip`): `parse_error` below
        // only breaks them down, so nothing is added here.
        counters(
            &mut enc,
            "drop_count",
            "Frames dropped, by reason, over all endpoints.",
            DropReason::ALL.iter().map(|r| {
                let n = s.endpoints.iter().map(|e| e.drop_count(*r)).sum();
                ([("reason", r.as_str()), ("direction", EGRESS)], n)
            }),
        )?;
        counters(
            &mut enc,
            "forward_count",
            "Frames allowed and forwarded (by a worker or from the verdict cache).",
            [([("direction", EGRESS)], total.allowed + cached)],
        )?;
        let mut bytes = enc.encode_descriptor(
            "forward",
            "Bytes of the frames allowed and forwarded (Ethernet header included).",
            Some(&Unit::Bytes),
            MetricType::Counter,
        )?;
        ConstCounter::new(total.allowed_bytes + cached_bytes)
            .encode(bytes.encode_family(&[("direction", EGRESS)])?)?;

        let workers = || s.workers.iter().enumerate();
        counters(
            &mut enc,
            "worker_rx_packets",
            "Frames a worker took from its sockets.",
            workers().map(|(i, w)| ([("worker", i)], w.rx)),
        )?;
        counters(
            &mut enc,
            "worker_tx_packets",
            "Frames a worker transmitted.",
            workers().map(|(i, w)| ([("worker", i)], w.tx)),
        )?;
        counters(
            &mut enc,
            "worker_handed_off_packets",
            "Frames a worker copied to another worker's queue.",
            workers().map(|(i, w)| ([("worker", i)], w.handed_off)),
        )?;
        counters(
            &mut enc,
            "endpoint_cached_packets",
            "Frames an endpoint sent that the XDP program served from the verdict cache.",
            s.endpoints
                .iter()
                .map(|e| ([("endpoint", e.name.as_str())], e.passed_cached)),
        )?;
        counters(
            &mut enc,
            "endpoint_drop_count",
            "Frames an endpoint sent that were dropped, by reason (reasons seen only).",
            s.endpoints.iter().flat_map(|e| {
                e.drops
                    .iter()
                    .filter(|(_, n)| *n > 0)
                    .map(|(r, n)| ([("endpoint", e.name.as_str()), ("reason", r.as_str())], *n))
            }),
        )?;
        counters(
            &mut enc,
            "parse_error",
            "Frames the parser refused, by error (a breakdown of drop_count's \
             malformed, vlan_tagged and not_ip).",
            s.malformed
                .iter()
                .map(|(e, n)| ([("error", e.as_str())], *n)),
        )?;
        let k = &s.sockets;
        counters(
            &mut enc,
            "afxdp_socket_events",
            "The kernel's AF_XDP socket statistics, summed over sockets.",
            [
                ("rx_dropped", k.rx_dropped),
                ("rx_ring_full", k.rx_ring_full),
                ("rx_fill_ring_empty", k.rx_fill_ring_empty),
                ("rx_invalid_descs", k.rx_invalid_descs),
                ("tx_invalid_descs", k.tx_invalid_descs),
                ("tx_ring_empty", k.tx_ring_empty),
            ]
            .map(|(event, n)| ([("event", event)], n)),
        )?;
        counters(
            &mut enc,
            "xdp_packets",
            "Frames the XDP program handled, by outcome.",
            s.xdp.iter().map(|(o, n)| ([("outcome", *o)], *n)),
        )?;
        counters(
            &mut enc,
            "tc_inbound_reports",
            "The inbound TC program's reports, by outcome.",
            s.tc.iter().map(|(o, n)| ([("outcome", *o)], *n)),
        )?;

        let gauges = [
            (
                "conntrack_entries",
                "Conntrack entries.",
                s.conntrack_entries,
            ),
            ("identities", "Identities known.", c.identities as u64),
            (
                "ipcache_entries",
                "Entries in the ipcache.",
                c.ipcache_entries as u64,
            ),
            (
                "policy_revision",
                "Policy revision currently enforced.",
                c.revision,
            ),
        ];
        for (name, help, n) in gauges {
            let g = ConstGauge::new(n);
            g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        let totals = [
            (
                "conntrack_created",
                "Conntrack entries created.",
                s.conntrack_created,
            ),
            (
                "conntrack_evicted",
                "Conntrack entries evicted.",
                s.conntrack_evicted,
            ),
            (
                "conntrack_early_dropped",
                "Unanswered conntrack entries given up for new flows at an endpoint's share.",
                s.conntrack_early_dropped,
            ),
            (
                "conntrack_refused",
                "New flows refused: their endpoint's share held only answered entries.",
                s.conntrack_refused,
            ),
            (
                "policy_change",
                "Policy updates applied since start.",
                c.policy_changes,
            ),
            (
                "monitor_lost_events",
                "Monitor events lost to slow readers.",
                c.monitor_lost,
            ),
        ];
        for (name, help, n) in totals {
            let t = ConstCounter::new(n);
            t.encode(enc.encode_descriptor(name, help, None, t.metric_type())?)?;
        }
        if let Some(k) = &c.kvstore {
            encode_kvstore(&mut enc, k)?;
        }
        Ok(())
    }
}

/// Cluster mode's figures.
fn encode_kvstore(enc: &mut DescriptorEncoder, k: &KvstoreStats) -> fmt::Result {
    let gauges = [
        (
            "kvstore_up",
            "1 while the store answers and the view follows it; 0 while the last known \
             state is enforced without it.",
            u64::from(k.up),
        ),
        (
            "kvstore_remote_entries",
            "Other hosts' addresses from the store, enforced.",
            k.remote_entries,
        ),
        (
            "kvstore_conflicts",
            "Store entries left out: the address is claimed locally, or labelled with what \
             only xpf assigns.",
            k.conflicts,
        ),
        (
            "kvstore_unknown_identity_entries",
            "Store entries left out because their identity has no master key.",
            k.unknown,
        ),
    ];
    for (name, help, n) in gauges {
        let g = ConstGauge::new(n);
        g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)?;
    }
    let totals = [
        (
            "kvstore_relists",
            "Times a lost watch (compaction, error) made this host list a prefix again.",
            k.relists,
        ),
        (
            "kvstore_reconnects",
            "Connections to the store made again after losing it.",
            k.reconnects,
        ),
        (
            "kvstore_updates",
            "Views of the store the control loop received.",
            k.updates,
        ),
    ];
    for (name, help, n) in totals {
        let t = ConstCounter::new(n);
        t.encode(enc.encode_descriptor(name, help, None, t.metric_type())?)?;
    }
    Ok(())
}

/// One counter family (`name` without `_total`), one sample per label set.
fn counters<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, n) in series {
        ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Serves `GET /metrics` on its own thread until dropped.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

/// Serves GET /metrics (and 404 elsewhere) on `addr` (host:port) with
/// tiny_http on its own thread; stops when the returned server is dropped.
/// Scrapes are answered one at a time: each renders the latest stored
/// counters, so none waits on the datapath.
pub fn serve(addr: &str, metrics: Arc<Metrics>) -> io::Result<MetricsServer> {
    let named = |kind: io::ErrorKind, e: &dyn fmt::Display| {
        io::Error::new(kind, format!("metrics server on {addr}: {e}"))
    };
    let server = tiny_http::Server::http(addr).map_err(|e| {
        let kind = e
            .downcast_ref::<io::Error>()
            .map_or(io::ErrorKind::InvalidInput, io::Error::kind);
        named(kind, &e)
    })?;
    let local = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| named(io::ErrorKind::InvalidInput, &"not an IP address"))?;
    let server = Arc::new(server);
    let stop = Arc::new(AtomicBool::new(false));
    let thread = std::thread::Builder::new()
        .name("xpf-metrics".into())
        .spawn({
            let (server, stop) = (Arc::clone(&server), Arc::clone(&stop));
            move || answer(&server, &stop, &metrics)
        })
        .map_err(|e| named(e.kind(), &e))?;
    Ok(MetricsServer {
        server,
        stop,
        thread: Some(thread),
        addr: local,
    })
}

impl MetricsServer {
    /// Where it listens (the bound port when `serve` was given port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // The listener closes when the last `Arc<Server>` (this one) goes.
    }
}

fn answer(server: &tiny_http::Server, stop: &AtomicBool, metrics: &Metrics) {
    use tiny_http::{Header, Method, Response};
    let header = |value: &str| {
        Header::from_bytes("Content-Type", value).expect("a valid Content-Type header")
    };
    while !stop.load(Ordering::Relaxed) {
        // An error is either our own `unblock` (then `stop` is set) or a
        // failed accept, which the next round retries.
        let Ok(request) = server.recv() else { continue };
        let path = request.url().split('?').next().unwrap_or_default();
        let response = match (path, request.method()) {
            ("/metrics", Method::Get | Method::Head) => {
                Response::from_string(metrics.render()).with_header(header(CONTENT_TYPE))
            }
            ("/metrics", _) => Response::from_string("only GET and HEAD\n")
                .with_status_code(405)
                .with_header(Header::from_bytes("Allow", "GET, HEAD").expect("a valid header"))
                .with_header(header("text/plain; charset=utf-8")),
            _ => Response::from_string("not found; metrics are at /metrics\n")
                .with_status_code(404)
                .with_header(header("text/plain; charset=utf-8")),
        };
        // A client that left before its answer is its own problem.
        let _ = request.respond(response);
    }
}

#[cfg(test)]
mod tests;
