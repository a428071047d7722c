//! End to end: `xpf run` as a process, filtering real TCP and UDP between
//! real namespaces. Root only (skipped with a note otherwise).
//!
//! Each test builds a private "host" namespace (xpf runs inside it, so the
//! machine's own namespace is never touched), an "outside" namespace behind
//! it standing for the world, and lets xpf create the endpoints. Names carry
//! the process id and a counter, so tests and parallel runs never collide;
//! guards remove everything even when an assertion fails.

mod common;

use std::time::Duration;

use common::lab::*;
use common::raw::send_raw;
use xpf::harness::probe::{round_trip, EchoServer, Transport};
use xpf::hostile::tcp_frame;
use xpf::wire::tcp_flags::SYN;

/// How long an exchange that should complete may take (it returns as soon
/// as it does), and how long one that should be dropped is waited for.
const ALLOWED_TIMEOUT: Duration = Duration::from_secs(5);
const DENIED_TIMEOUT: Duration = Duration::from_millis(1500);

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root (network namespaces, XDP)");
            return;
        }
    };
}

#[test]
fn filters_real_traffic_between_namespaces() {
    require_root!();
    let lab = Lab::new("");
    let xpf = lab.run();
    let (fe, be, db, out) = (
        lab.ns("frontend"),
        lab.ns("backend"),
        lab.ns("db"),
        lab.bed.outside.name().to_string(),
    );

    let _servers: Vec<EchoServer> = [
        (Some(be.as_str()), "198.18.10.3", 8080),
        (Some(be.as_str()), "2001:db8:10::3", 8080),
        (Some(db.as_str()), "198.18.10.4", 5432),
        (Some(db.as_str()), "2001:db8:10::4", 5432),
        (Some(fe.as_str()), "198.18.10.2", 8080),
        (Some(fe.as_str()), "2001:db8:10::2", 8080),
        (Some(out.as_str()), WORLD4, 443),
        (Some(out.as_str()), WORLD6, 443),
    ]
    .into_iter()
    .flat_map(|(ns, a, p)| {
        [Transport::Tcp, Transport::Udp]
            .map(|t| EchoServer::start(ns, t, sa(a, p)).expect("echo server"))
    })
    .collect();

    use Transport::{Tcp, Udp};
    // (namespace, destination, transport, port, expected to complete, what)
    let mut plan: Vec<(&str, &str, Transport, u16, bool, &str)> = Vec::new();
    // Allowed: connections complete with a data round trip, both families.
    for a in ["198.18.10.3", "2001:db8:10::3"] {
        plan.push((&fe, a, Tcp, 8080, true, "frontend -> backend"));
        plan.push((&fe, a, Udp, 8080, true, "frontend -> backend"));
    }
    for a in ["198.18.10.4", "2001:db8:10::4"] {
        plan.push((&be, a, Tcp, 5432, true, "backend -> db"));
    }
    for a in [WORLD4, WORLD6] {
        plan.push((&fe, a, Tcp, 443, true, "frontend -> outside by CIDR"));
        plan.push((&fe, a, Udp, 443, true, "frontend -> outside by CIDR"));
    }
    // Inbound: the world opens connections to backend; backend's answers
    // are replies although backend may not send to the world.
    plan.push((&out, "198.18.10.3", Tcp, 8080, true, "outside -> backend"));
    plan.push((
        &out,
        "2001:db8:10::3",
        Udp,
        8080,
        true,
        "outside -> backend",
    ));
    // Denied.
    plan.extend([
        (
            fe.as_str(),
            "198.18.10.4",
            Tcp,
            5432,
            false,
            "frontend -> db",
        ),
        (&fe, "2001:db8:10::4", Udp, 5432, false, "frontend -> db"),
        (&be, "198.18.10.2", Tcp, 8080, false, "backend -> frontend"),
        (
            &be,
            "198.18.10.4",
            Udp,
            5432,
            false,
            "backend -> db (rule is TCP only)",
        ),
        (&be, WORLD4, Tcp, 443, false, "backend -> outside"),
        (&db, "198.18.10.3", Tcp, 8080, false, "db -> backend"),
        (&db, "2001:db8:10::2", Tcp, 8080, false, "db -> frontend"),
        (&db, WORLD6, Udp, 443, false, "db -> outside"),
    ]);
    // All at once: a dropped exchange costs its whole timeout.
    let mut wrong: Vec<String> = std::thread::scope(|s| {
        let runs: Vec<_> = plan
            .iter()
            .map(|(ns, a, t, p, expected, what)| {
                s.spawn(move || {
                    let timeout = if *expected {
                        ALLOWED_TIMEOUT
                    } else {
                        DENIED_TIMEOUT
                    };
                    let done = round_trip(Some(ns), *t, sa(a, *p), timeout);
                    let verdict = if *expected { "allowed" } else { "dropped" };
                    (done != *expected).then(|| format!("{what} {a} {t:?}/{p} should be {verdict}"))
                })
            })
            .collect();
        runs.into_iter().filter_map(|h| h.join().unwrap()).collect()
    });

    // Frames the filter must refuse, each with its own reason: a spoofed
    // source, a later fragment with no first, a truncated header and an
    // 802.1Q tag. Sent 3 times each from frontend.
    let spoofed = tcp_frame("198.18.10.9", "198.18.10.3", 40000, 8080, SYN, 0);
    let mut fragment = tcp_frame("198.18.10.2", "198.18.10.3", 40000, 8080, SYN, 0);
    fragment[20..22].copy_from_slice(&0x0010u16.to_be_bytes());
    let mut truncated = tcp_frame("198.18.10.2", "198.18.10.3", 40000, 8080, SYN, 0);
    truncated[14] = 0x44; // IHL 4: shorter than an IPv4 header can be
    let mut vlan = tcp_frame("198.18.10.2", "198.18.10.3", 40000, 8080, SYN, 0);
    vlan[12..14].copy_from_slice(&[0x81, 0x00]);
    let raw: Vec<Vec<u8>> = [spoofed, fragment, truncated, vlan]
        .iter()
        .flat_map(|f| std::iter::repeat_n(f.clone(), 3))
        .collect();
    send_raw(&fe, &raw);
    // The frames are in flight until xpf's worker reads them; a TCP round
    // trip from the same endpoint, queued behind them, proves they were.
    if !round_trip(Some(&fe), Tcp, sa("198.18.10.3", 8080), ALLOWED_TIMEOUT) {
        wrong.push("frontend -> backend after the raw frames".into());
    }

    let (status, c) = xpf.stop();
    assert!(wrong.is_empty(), "{wrong:#?}\nfinal counters: {c:#}");
    assert!(status.success(), "xpf run exits 0 on SIGTERM: {status}");
    assert_eq!(counter(&c, "frontend", "spoofed_source"), 3, "{c:#}");
    assert_eq!(
        counter(&c, "frontend", "fragment_without_first"),
        3,
        "{c:#}"
    );
    assert_eq!(counter(&c, "frontend", "malformed"), 3, "{c:#}");
    assert_eq!(counter(&c, "frontend", "vlan_tagged"), 3, "{c:#}");
    assert_eq!(c["malformed"]["ipv4_ihl_too_small"], 3, "{c:#}");
    // Denied probes were retried by TCP, so at least one drop each.
    assert!(counter(&c, "frontend", "policy_default_deny") >= 2, "{c:#}");
    assert!(counter(&c, "backend", "policy_default_deny") >= 3, "{c:#}");
    assert!(counter(&c, "db", "policy_default_deny") >= 3, "{c:#}");
    // Replies: backend and db answered through conntrack, and backend's
    // answers to the outside came from the TC program's inbound reports.
    assert!(counter(&c, "backend", "passed_reply") >= 6, "{c:#}");
    assert!(counter(&c, "db", "passed_reply") >= 2, "{c:#}");
    assert!(counter(&c, "frontend", "passed_policy") >= 8, "{c:#}");

    let left = lab.leftovers();
    assert!(
        left.is_empty(),
        "left behind after xpf run stopped: {left:?}"
    );
}

#[test]
fn zerocopy_on_veth_and_an_unsupported_attach_mode_fail_clearly_and_leave_nothing() {
    require_root!();
    for (datapath, says) in [
        ("datapath: {bind: zerocopy}", "zero-copy"),
        ("datapath: {attach: offload}", "offload"),
    ] {
        let lab = Lab::new(datapath);
        let out = lab.xpf(&["run"]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{datapath}: {err}");
        assert!(err.contains(says), "{datapath}: {err}");
        assert!(
            err.contains("xpf-frontend"),
            "{datapath}: names the interface: {err}"
        );
        assert!(
            lab.leftovers().is_empty(),
            "{datapath}: {:?}",
            lab.leftovers()
        );
    }
}

#[test]
fn two_workers_in_generic_mode_hand_frames_across_and_report_rates() {
    require_root!();
    let lab = Lab::new("datapath: {workers: 2, attach: generic}");
    let mut xpf = lab.run_with(&["--stats-interval", "1"]);
    let (fe, be, db) = (lab.ns("frontend"), lab.ns("backend"), lab.ns("db"));
    // Generic (skb) XDP this time. Endpoints are spread round-robin:
    // frontend and db on worker 0, backend on worker 1, so every exchange
    // below crosses workers.
    let _servers: Vec<EchoServer> = [
        (be.as_str(), "198.18.10.3", 8080),
        (be.as_str(), "2001:db8:10::3", 8080),
        (db.as_str(), "198.18.10.4", 5432),
    ]
    .into_iter()
    .map(|(ns, a, p)| EchoServer::start(Some(ns), Transport::Tcp, sa(a, p)).expect("echo server"))
    .collect();
    for (ns, a, p) in [
        (&fe, "198.18.10.3", 8080),
        (&fe, "2001:db8:10::3", 8080),
        (&be, "198.18.10.4", 5432),
    ] {
        assert!(
            round_trip(Some(ns), Transport::Tcp, sa(a, p), ALLOWED_TIMEOUT),
            "{ns} -> {a}:{p} across workers"
        );
    }
    assert!(
        !round_trip(
            Some(&db),
            Transport::Tcp,
            sa("198.18.10.3", 8080),
            DENIED_TIMEOUT
        ),
        "db -> backend stays denied"
    );
    let rates = xpf.next_line("xpf: pps:");
    assert!(
        rates.contains("w0 rx") && rates.contains("w1 rx") && rates.contains("total rx"),
        "{rates}"
    );
    let (status, c) = xpf.stop();
    assert!(status.success(), "{status}");
    let handed: u64 = c["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["handed_off"].as_u64().unwrap())
        .sum();
    // Three connections, each with at least a SYN, the data and a FIN each
    // way, crossed workers.
    assert!(handed >= 12, "{c:#}");
    assert!(counter(&c, "db", "policy_default_deny") >= 1, "{c:#}");
    assert!(lab.leftovers().is_empty(), "{:?}", lab.leftovers());
}

#[test]
fn endpoint_commands_create_list_and_delete() {
    require_root!();
    let lab = Lab::new("");
    let list = || {
        let out = lab
            .xpf(&["endpoint", "list", "--output", "json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let exists = |v: &serde_json::Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["netns_exists"].as_bool().unwrap(),
                    e["host_if_exists"].as_bool().unwrap(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(exists(&list()), vec![(false, false); 3]);

    let out = lab.xpf(&["endpoint", "create"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = list();
    assert_eq!(exists(&listed), vec![(true, true); 3], "{listed:#}");
    let fe = &listed[0];
    assert_eq!(
        fe["addresses"],
        serde_json::json!(["198.18.10.2", "2001:db8:10::2"]),
        "{fe:#}"
    );
    assert_eq!(fe["tx_checksum_offload"], false, "{fe:#}");

    // A second create refuses (the namespaces exist) and undoes nothing of
    // the first.
    let again = lab.xpf(&["endpoint", "create"]).output().unwrap();
    assert_eq!(again.status.code(), Some(2));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains(&lab.ns("frontend")), "{err}");
    assert_eq!(exists(&list()), vec![(true, true); 3]);

    // Processes started inside before the filter keep running; `xpf run`
    // adopts the endpoints and leaves them in place at exit.
    let be = lab.ns("backend");
    let server = EchoServer::start(Some(&be), Transport::Tcp, sa("198.18.10.3", 8080)).unwrap();
    lab.adopt_endpoints();
    let xpf = lab.run();
    let fe_ns = lab.ns("frontend");
    let probe = |a: &str, p, t| round_trip(Some(&fe_ns), Transport::Tcp, sa(a, p), t);
    assert!(
        probe("198.18.10.3", 8080, ALLOWED_TIMEOUT),
        "allowed through adopted endpoints"
    );
    assert!(
        !probe("198.18.10.4", 5432, DENIED_TIMEOUT),
        "denied through adopted endpoints"
    );
    let (status, c) = xpf.stop();
    assert!(status.success());
    assert!(counter(&c, "frontend", "policy_default_deny") >= 1, "{c:#}");
    drop(server);
    assert_eq!(
        exists(&list()),
        vec![(true, true); 3],
        "adopted endpoints stay"
    );

    lab.own_endpoints();
    let out = lab.xpf(&["endpoint", "delete"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(exists(&list()), vec![(false, false); 3]);
    assert!(lab.leftovers().is_empty(), "{:?}", lab.leftovers());
}
