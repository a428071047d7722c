//! The metrics' exposition, checked against OpenMetrics' rules.

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
        kvstore: Some(super::KvstoreStats {
            up: true,
            remote_entries: 6,
            conflicts: 1,
            unknown: 0,
            relists: 2,
            reconnects: 1,
            updates: 9,
        }),
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
    assert!(
        text.contains("xpf_drop_count_total{reason=\"policy_denied\",direction=\"EGRESS\"} 0\n")
    );
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
        "xpf_kvstore_up 1",
        "xpf_kvstore_remote_entries 6",
        "xpf_kvstore_conflicts 1",
        "xpf_kvstore_relists_total 2",
        "xpf_kvstore_reconnects_total 1",
    ] {
        assert!(
            text.contains(&format!("{line}\n")),
            "no {line:?} in\n{text}"
        );
    }
    // Single-host: no kvstore series at all.
    let single = Metrics::new();
    let mut c = control();
    c.kvstore = None;
    single.set(&snapshot(), &c);
    assert!(!single.render().contains("kvstore"));

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
