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
            "Frames allowed and forwarded.",
            [([("direction", EGRESS)], total.allowed)],
        )?;
        let mut bytes = enc.encode_descriptor(
            "forward",
            "Bytes of the frames allowed and forwarded (Ethernet header included).",
            Some(&Unit::Bytes),
            MetricType::Counter,
        )?;
        ConstCounter::new(total.allowed_bytes)
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
        Ok(())
    }
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
mod tests {
    use super::*;
    use crate::datapath::{EndpointSnapshot, WorkerSnapshot};
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    fn endpoint(name: &str, drops: &[(DropReason, u64)]) -> EndpointSnapshot {
        EndpointSnapshot {
            name: name.into(),
            drops: DropReason::ALL
                .iter()
                .map(|r| (*r, drops.iter().find(|(d, _)| d == r).map_or(0, |d| d.1)))
                .collect(),
            ..Default::default()
        }
    }

    fn snapshot() -> Snapshot {
        let worker = |rx, allowed, allowed_bytes, tx| WorkerSnapshot {
            rx,
            allowed,
            allowed_bytes,
            tx,
            ..Default::default()
        };
        Snapshot {
            workers: vec![worker(10, 6, 600, 6), worker(5, 2, 180, 2)],
            endpoints: vec![
                endpoint("frontend", &[(DropReason::PolicyDenied, 3)]),
                endpoint(
                    "backend",
                    &[(DropReason::PolicyDenied, 4), (DropReason::Malformed, 1)],
                ),
            ],
            malformed: vec![(crate::wire::ParseError::TruncatedTcp, 1)],
            conntrack_entries: 7,
            conntrack_created: 9,
            ..Default::default()
        }
    }

    fn control() -> ControlStats {
        ControlStats {
            revision: 3,
            policy_changes: 2,
            identities: 5,
            ipcache_entries: 8,
            monitor_lost: 1,
        }
    }

    /// Checks the OpenMetrics text rules a scraper relies on: every sample
    /// belongs to the family declared just before it, with a suffix its
    /// type allows; families are declared once; values are numbers; the
    /// exposition ends with `# EOF`.
    fn check_openmetrics(text: &str) {
        let body = text.strip_suffix("# EOF\n").expect("ends with # EOF");
        let mut declared = std::collections::HashSet::new();
        let mut family: Option<(&str, &str)> = None;
        for line in body.lines() {
            if let Some(meta) = line.strip_prefix("# ") {
                let mut words = meta.splitn(3, ' ');
                let (kind, name) = (words.next().unwrap(), words.next().unwrap());
                let rest = words.next().unwrap_or_default();
                match kind {
                    "HELP" => {}
                    "TYPE" => {
                        assert!(declared.insert(name), "{name} declared twice");
                        family = Some((name, rest));
                    }
                    "UNIT" => assert!(name.ends_with(&format!("_{rest}")), "{line}"),
                    _ => panic!("unknown metadata line {line:?}"),
                }
                continue;
            }
            let (name, kind) = family.unwrap_or_else(|| panic!("sample before TYPE: {line}"));
            let end = line.find(['{', ' ']).expect("a sample has a value");
            let suffix = line[..end]
                .strip_prefix(name)
                .unwrap_or_else(|| panic!("{line:?} outside family {name}"));
            let allowed: &[&str] = match kind {
                "counter" => &["_total", "_created"],
                "gauge" => &[""],
                "histogram" => &["_bucket", "_count", "_sum", "_created"],
                _ => panic!("unexpected type {kind}"),
            };
            assert!(allowed.contains(&suffix), "{line:?} in a {kind}");
            let value = match line[end..].strip_prefix('{') {
                Some(rest) => rest.split_once("} ").expect("closed label set").1,
                None => &line[end + 1..],
            };
            value
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("value of {line:?}"));
        }
    }

    #[test]
    fn renders_before_any_set() {
        let text = Metrics::new().render();
        check_openmetrics(&text);
        assert!(text
            .contains("xpf_drop_count_total{reason=\"policy_denied\",direction=\"EGRESS\"} 0\n"));
        assert!(text.contains("xpf_conntrack_entries 0\n"));
        assert!(!text.contains("xpf_worker_rx_packets_total{"));
        assert!(text.contains("xpf_policy_implementation_delay_seconds_count 0\n"));
    }

    #[test]
    fn renders_the_latest_snapshot() {
        let m = Metrics::new();
        m.set(&snapshot(), &control());
        let text = m.render();
        check_openmetrics(&text);
        for line in [
            "xpf_drop_count_total{reason=\"policy_denied\",direction=\"EGRESS\"} 7",
            "xpf_drop_count_total{reason=\"malformed\",direction=\"EGRESS\"} 1",
            "xpf_drop_count_total{reason=\"conntrack_full\",direction=\"EGRESS\"} 0",
            "xpf_parse_error_total{error=\"truncated_tcp\"} 1",
            "xpf_forward_count_total{direction=\"EGRESS\"} 8",
            "xpf_forward_bytes_total{direction=\"EGRESS\"} 780",
            "xpf_worker_rx_packets_total{worker=\"1\"} 5",
            "xpf_worker_tx_packets_total{worker=\"0\"} 6",
            "xpf_endpoint_drop_count_total{endpoint=\"backend\",reason=\"policy_denied\"} 4",
            "xpf_conntrack_entries 7",
            "xpf_conntrack_created_total 9",
            "xpf_identities 5",
            "xpf_ipcache_entries 8",
            "xpf_policy_revision 3",
            "xpf_policy_change_total 2",
            "xpf_monitor_lost_events_total 1",
        ] {
            assert!(
                text.contains(&format!("{line}\n")),
                "no {line:?} in\n{text}"
            );
        }
        // Reasons an endpoint never hit are left out of its series.
        assert!(!text.contains("endpoint=\"frontend\",reason=\"malformed\""));

        // A later set replaces, never adds.
        m.set(&snapshot(), &control());
        assert!(m.render().contains("xpf_conntrack_created_total 9\n"));
    }

    #[test]
    fn histogram_counts_update_delays() {
        let m = Metrics::new();
        m.observe_update(0.002);
        m.observe_update(0.3);
        let text = m.render();
        check_openmetrics(&text);
        assert!(text.contains("# TYPE xpf_policy_implementation_delay_seconds histogram\n"));
        assert!(text.contains("# UNIT xpf_policy_implementation_delay_seconds seconds\n"));
        assert!(text.contains("xpf_policy_implementation_delay_seconds_count 2\n"));
        assert!(text.contains("xpf_policy_implementation_delay_seconds_bucket{le=\"0.001\"} 0\n"));
        assert!(text.contains("xpf_policy_implementation_delay_seconds_bucket{le=\"0.0025\"} 1\n"));
        assert!(text.contains("xpf_policy_implementation_delay_seconds_bucket{le=\"+Inf\"} 2\n"));
    }

    /// Sends one HTTP/1.0 request and returns the whole response.
    fn get(addr: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(addr).expect("connect to the metrics server");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("a response");
        response
    }

    #[test]
    fn serves_metrics_over_http() {
        let metrics = Arc::new(Metrics::new());
        metrics.set(&snapshot(), &control());
        let server = serve("127.0.0.1:0", Arc::clone(&metrics)).expect("serve on a free port");
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);

        let ok = get(addr, "GET /metrics HTTP/1.0\r\nHost: xpf\r\n\r\n");
        let (head, body) = ok.split_once("\r\n\r\n").expect("headers and body");
        assert!(
            head.starts_with("HTTP/1.") && head[..12].ends_with(" 200"),
            "{head}"
        );
        let types: Vec<&str> = head
            .lines()
            .filter(|l| l.to_ascii_lowercase().starts_with("content-type:"))
            .collect();
        assert_eq!(types, [format!("Content-Type: {CONTENT_TYPE}")], "{head}");
        assert!(body.contains("xpf_forward_bytes_total{direction=\"EGRESS\"} 780\n"));
        check_openmetrics(body);

        let missing = get(addr, "GET /other HTTP/1.0\r\n\r\n");
        assert!(missing[..12].ends_with(" 404"), "{missing}");
        let post = get(addr, "POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n");
        assert!(post[..12].ends_with(" 405"), "{post}");

        drop(server);
        // The listener closes once the server is gone (tiny_http's accept
        // thread notices on its own schedule, hence the retries).
        let closed = (0..50).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            TcpStream::connect(addr).is_err()
        });
        assert!(closed, "{addr} still accepts after the server was dropped");
    }

    #[test]
    fn a_bad_address_is_named() {
        let err = serve("no-port-here", Arc::new(Metrics::new()))
            .err()
            .expect("an address without a port fails");
        assert!(err.to_string().contains("no-port-here"), "{err}");
    }
}
