//! Cluster mode as root, with real traffic: two xpf hosts, each in its own
//! namespace with its endpoints, joined by a veth underlay and sharing one
//! etcd (see `common/cluster.rs`). Label policy across hosts both ways,
//! identities agreed on, an endpoint added on one host enforced on the
//! other, a killed host turning into `world` after its lease, the store
//! lost and found again, a compaction forcing a relist, and entries
//! written with etcdctl in Cilium's format. Waits are bounds on
//! convergence; nothing measures speed.

mod common;

use std::time::Duration;

use common::cluster::{until, TwoHosts, NODE_B, TTL};
use common::lab::{is_root, sa, WORLD4};
use xpf::harness::probe::{EchoServer, Transport};

const ALLOWED: Duration = Duration::from_secs(3);
const DENIED: Duration = Duration::from_millis(700);
/// How long the hosts may take to agree with the store.
const CONVERGE: Duration = Duration::from_secs(20);

/// Echo servers for the flows the tests try: TCP and UDP 5432 on db (both
/// families), TCP 5432 on cache, TCP and UDP 8080 and TCP 8081 on web,
/// TCP 7000 and 7001 on host B's node address.
fn servers(h: &TwoHosts) -> Vec<EchoServer> {
    let mut s = Vec::new();
    let mut add = |ns: &str, t: Transport, addr: &str, port: u16| {
        s.push(EchoServer::start(Some(ns), t, sa(addr, port)).expect("echo server"));
    };
    for t in [Transport::Tcp, Transport::Udp] {
        add(&h.b.ns("db"), t, "198.18.31.2", 5432);
        add(&h.b.ns("db"), t, "2001:db8:31::2", 5432);
        add(&h.a.ns("web"), t, "198.18.30.2", 8080);
        add(&h.a.ns("web"), t, "2001:db8:30::2", 8080);
    }
    add(&h.b.ns("cache"), Transport::Tcp, "198.18.31.3", 5432);
    add(&h.b.ns("cache"), Transport::Tcp, "2001:db8:31::3", 5432);
    add(&h.a.ns("web"), Transport::Tcp, "198.18.30.2", 8081);
    add(h.b.host_ns(), Transport::Tcp, NODE_B.0, 7000);
    add(h.b.host_ns(), Transport::Tcp, NODE_B.0, 7001);
    s
}

/// Waits until both hosts follow the store and each sees at least `n`
/// of the other's addresses.
fn synced(h: &TwoHosts, n_on_a: u64, n_on_b: u64) {
    until("both hosts synced with the store", CONVERGE, || {
        [(&h.a, n_on_a), (&h.b, n_on_b)].iter().all(|(host, n)| {
            let k = &host.status()["kvstore"];
            k["state"] == "synced" && k["remote_entries"].as_u64().unwrap_or(0) >= *n
        })
    });
}

/// B's addresses as A sees them: db (2), cache (2), shared (1), B's node.
const B_ON_A: u64 = 6;
/// A's addresses as B sees them: web (2), shared (1), A's node.
const A_ON_B: u64 = 4;

#[test]
fn two_hosts_agree_on_identities_and_enforce_labels_across_the_underlay() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let h = TwoHosts::new();
    // Both start at once: the shared label set is allocated by both at
    // the same moment.
    let (ra, rb) = h.run_both();
    synced(&h, B_ON_A, A_ON_B);
    let shared = h.a.identity_of("shared");
    assert_eq!(shared, h.b.identity_of("shared"), "one label set, one id");
    assert!(
        (256..=65535).contains(&shared),
        "cluster-local range: {shared}"
    );
    let master = h.etcd.etcdctl(&[
        "get",
        &format!("cilium/state/identities/v1/id/{shared}"),
        "--print-value-only",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&master.stdout).trim(),
        "unspec:app=shared;"
    );

    let _servers = servers(&h);
    let (a, b) = (&h.a, &h.b);
    for (t, dst) in [
        (Transport::Tcp, "198.18.31.2"),
        (Transport::Udp, "198.18.31.2"),
        (Transport::Tcp, "2001:db8:31::2"),
        (Transport::Udp, "2001:db8:31::2"),
    ] {
        assert!(
            a.probe("web", t, dst, 5432, ALLOWED),
            "A web -> B db {dst} {t:?}"
        );
    }
    for dst in ["198.18.31.3", "2001:db8:31::3"] {
        assert!(
            !a.probe("web", Transport::Tcp, dst, 5432, DENIED),
            "A web -> B cache {dst}"
        );
    }
    for (t, dst) in [
        (Transport::Tcp, "198.18.30.2"),
        (Transport::Udp, "198.18.30.2"),
        (Transport::Tcp, "2001:db8:30::2"),
        (Transport::Udp, "2001:db8:30::2"),
    ] {
        assert!(
            b.probe("db", t, dst, 8080, ALLOWED),
            "B db -> A web {dst} {t:?}"
        );
    }
    assert!(
        !b.probe("db", Transport::Tcp, "198.18.30.2", 8081, DENIED),
        "B db -> A web 8081"
    );
    // The monitor on A names the remote destination's labels and node.
    let event = a.monitor_until(
        &["--type", "drop", "--endpoint", "web"],
        || {
            a.probe(
                "web",
                Transport::Tcp,
                "198.18.31.3",
                5432,
                Duration::from_millis(300),
            );
        },
        |v| v["flow"]["IP"]["destination"] == "198.18.31.3",
    );
    let dst = &event["flow"]["destination"];
    assert!(dst["labels"].to_string().contains("app=cache"), "{event}");
    assert_eq!(
        dst["identity"].as_u64(),
        Some(b.identity_of("cache")),
        "{event}"
    );
    assert_eq!(event["xpf"]["destination_node"], b.name.as_str(), "{event}");
    assert_eq!(event["xpf"]["destination_host"], NODE_B.0, "{event}");
    // toEntities: [remote-node] opens B's node address on 7000 only.
    assert!(
        a.probe("web", Transport::Tcp, NODE_B.0, 7000, ALLOWED),
        "web -> remote-node 7000"
    );
    assert!(
        !a.probe("web", Transport::Tcp, NODE_B.0, 7001, DENIED),
        "web -> remote-node 7001"
    );

    // `policy check` on each host says what the traffic showed, with the
    // other host's labels and numbers.
    let (verdict, labels) = a.check("web", "198.18.31.2", "tcp", 5432);
    assert_eq!(verdict, "allowed");
    assert!(labels.contains("app=db"), "{labels}");
    assert_eq!(a.check("web", "2001:db8:31::3", "tcp", 5432).0, "denied");
    assert_eq!(a.check("web", NODE_B.0, "tcp", 7000).0, "allowed");
    assert_eq!(b.check("db", "2001:db8:30::2", "udp", 8080).0, "allowed");
    assert_eq!(b.check("db", "198.18.30.2", "tcp", 8081).0, "denied");
    let ipcache = String::from_utf8(a.xpf(&["ipcache", "list"]).output().unwrap().stdout).unwrap();
    let db_line = ipcache
        .lines()
        .find(|l| l.starts_with("198.18.31.2/32"))
        .unwrap_or_else(|| panic!("no B db entry in:\n{ipcache}"));
    assert!(
        db_line.contains(&format!("{} ({})", b.name, NODE_B.0)),
        "{db_line}"
    );
    assert!(
        db_line.contains(&format!(" {} ", b.identity_of("db"))),
        "{db_line}"
    );

    // An endpoint added on B is enforced by its labels on A.
    let name = format!("{}x", b.tag);
    assert_eq!(a.check("web", "198.18.31.7", "tcp", 5432).0, "denied");
    b.client(&[
        "endpoint",
        "add",
        "--name",
        &name,
        "--labels",
        "app=db",
        "--ipv4",
        "198.18.31.7",
    ]);
    let _added = b.adopt_namespace(&name);
    let _api = EchoServer::start(Some(&name), Transport::Tcp, sa("198.18.31.7", 5432)).unwrap();
    let took = until("A lets web reach B's new db endpoint", CONVERGE, || {
        a.probe(
            "web",
            Transport::Tcp,
            "198.18.31.7",
            5432,
            Duration::from_millis(300),
        )
    });
    eprintln!("new endpoint on B enforced on A after {took:?} (probes every 50 ms + 300 ms)");

    // Entries written as Cilium writes them: a master key and an
    // IPIdentityPair for A's world address, on a node xpf does not know.
    let world = EchoServer::start(Some(a.bed.outside.name()), Transport::Tcp, sa(WORLD4, 5432));
    let _world = world.expect("echo server");
    assert!(
        !a.probe("web", Transport::Tcp, WORLD4, 5432, DENIED),
        "world is not db"
    );
    h.etcd.etcdctl(&[
        "put",
        "cilium/state/identities/v1/id/61000",
        "k8s:app=db;k8s:io.kubernetes.pod.namespace=default;",
    ]);
    h.etcd.etcdctl(&[
        "put",
        &format!("cilium/state/ip/v1/default/{WORLD4}"),
        &format!(
            r#"{{"IP":"{WORLD4}","Mask":null,"HostIP":"198.18.250.9","ID":61000,"Key":0,"Metadata":"cilium-global:default:node9:7","K8sNamespace":"default","K8sPodName":"db-7"}}"#
        ),
    ]);
    until("A honours the Cilium entry", CONVERGE, || {
        a.probe(
            "web",
            Transport::Tcp,
            WORLD4,
            5432,
            Duration::from_millis(300),
        )
    });
    let (verdict, labels) = a.check("web", WORLD4, "tcp", 5432);
    assert_eq!(verdict, "allowed");
    assert!(labels.contains("k8s:app=db"), "{labels}");
    h.etcd
        .etcdctl(&["del", &format!("cilium/state/ip/v1/default/{WORLD4}")]);
    until("A forgets the deleted Cilium entry", CONVERGE, || {
        !a.probe(
            "web",
            Transport::Tcp,
            WORLD4,
            5432,
            Duration::from_millis(300),
        )
    });

    let (sa_, _) = ra.stop();
    let (sb, _) = rb.stop();
    assert!(sa_.success() && sb.success(), "{sa_} {sb}");
}

#[test]
fn a_killed_host_turns_into_world_after_its_lease_and_waits_for_the_store_to_publish_again() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let mut h = TwoHosts::new();
    let (ra, rb) = h.run_both();
    synced(&h, B_ON_A, A_ON_B);
    let _servers = servers(&h);
    assert!(h
        .a
        .probe("web", Transport::Tcp, "198.18.31.2", 5432, ALLOWED));

    let pid = rb.child.as_ref().unwrap().id() as i32;
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let mut rb = rb;
    let _ = rb.child.as_mut().unwrap().wait();
    // Until the lease ends A still knows B's addresses; then they go.
    let took = until("A drops B's addresses", CONVERGE, || {
        h.a.status()["kvstore"]["remote_entries"] == 0
    });
    eprintln!("B's addresses left A {took:?} after the kill (lease {TTL} s)");
    assert_eq!(h.a.check("web", "198.18.31.2", "tcp", 5432).0, "denied");
    let denied = |a: &common::cluster::Host| {
        a.counter("web", "policy_default_deny") + a.counter("web", "policy_denied")
    };
    let before = denied(&h.a);
    assert!(!h
        .a
        .probe("web", Transport::Tcp, "198.18.31.2", 5432, DENIED));
    assert!(
        denied(&h.a) > before,
        "A's web now sends to world: denied, counted"
    );

    // B comes back while the store is down: it waits for the store
    // before enforcing anything, and its pinned datapath keeps dropping
    // what its endpoints send meanwhile (fail-closed).
    drop(rb);
    h.etcd.stop();
    let rb = h.b.spawn();
    until("B says it waits for the store", CONVERGE, || {
        rb.stderr().contains("kvstore: waiting for")
    });
    assert!(
        !h.b.probe("db", Transport::Tcp, "198.18.30.2", 8080, DENIED),
        "B's endpoints send nothing before B enforces"
    );
    // The store is back: B takes over its datapath and publishes again.
    h.etcd.start_again();
    let rb = rb.ready();
    assert!(rb.stderr().contains("took over"), "{}", rb.stderr());
    synced(&h, B_ON_A, A_ON_B);
    until("A lets web reach db again", CONVERGE, || {
        h.a.probe(
            "web",
            Transport::Tcp,
            "198.18.31.2",
            5432,
            Duration::from_millis(500),
        )
    });
    assert!(
        !h.a.probe("web", Transport::Tcp, "198.18.31.3", 5432, DENIED),
        "cache stays denied"
    );
    drop((ra, rb));
}

#[test]
fn a_lost_store_changes_no_verdict_and_a_compaction_relists_without_a_wrong_one() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let mut h = TwoHosts::new();
    let (ra, rb) = h.run_both();
    synced(&h, B_ON_A, A_ON_B);
    let _servers = servers(&h);
    let world = EchoServer::start(
        Some(h.a.bed.outside.name()),
        Transport::Tcp,
        sa(WORLD4, 5432),
    );
    let _world = world.expect("echo server");
    // A Cilium entry for A's world address, which only etcdctl changes.
    h.etcd
        .etcdctl(&["put", "cilium/state/identities/v1/id/61001", "k8s:app=db;"]);
    let entry = format!("cilium/state/ip/v1/default/{WORLD4}");
    h.etcd.etcdctl(&[
        "put",
        &entry,
        &format!(r#"{{"IP":"{WORLD4}","Mask":null,"HostIP":"198.18.250.9","ID":61001,"Key":0,"Metadata":""}}"#),
    ]);
    until("A honours the Cilium entry", CONVERGE, || {
        h.a.probe(
            "web",
            Transport::Tcp,
            WORLD4,
            5432,
            Duration::from_millis(300),
        )
    });
    let verdicts = |h: &TwoHosts, world_allowed: bool| {
        let (a, b) = (&h.a, &h.b);
        assert!(
            a.probe("web", Transport::Tcp, "198.18.31.2", 5432, ALLOWED),
            "web -> db"
        );
        assert!(
            a.probe("web", Transport::Udp, "2001:db8:31::2", 5432, ALLOWED),
            "web -> db v6"
        );
        assert!(
            !a.probe("web", Transport::Tcp, "198.18.31.3", 5432, DENIED),
            "web -> cache"
        );
        assert!(
            b.probe("db", Transport::Tcp, "2001:db8:30::2", 8080, ALLOWED),
            "db -> web"
        );
        assert!(
            !b.probe("db", Transport::Tcp, "198.18.30.2", 8081, DENIED),
            "db -> web 8081"
        );
        let w = a.probe(
            "web",
            Transport::Tcp,
            WORLD4,
            5432,
            if world_allowed { ALLOWED } else { DENIED },
        );
        assert_eq!(w, world_allowed, "web -> the Cilium entry's address");
    };

    // The store goes away: both hosts say so and keep every verdict.
    h.etcd.stop();
    until("both hosts see the store lost", CONVERGE, || {
        h.a.status()["kvstore"]["state"] == "lost" && h.b.status()["kvstore"]["state"] == "lost"
    });
    verdicts(&h, true);
    let metrics_note = h.a.status()["kvstore"]["enforcing"].clone();
    assert!(
        metrics_note.to_string().contains("last state"),
        "{metrics_note}"
    );

    // Back: both resync, and nothing changed.
    h.etcd.start_again();
    synced(&h, B_ON_A, A_ON_B);
    assert!(h.a.status()["kvstore"]["reconnects"].as_u64().unwrap() >= 1);
    verdicts(&h, true);

    // The store comes back where the hosts cannot see it; meanwhile the
    // Cilium entry goes and the history is compacted past it, so the
    // hosts' watches cannot resume: they must list again.
    let relists_before = h.a.status()["kvstore"]["relists"].as_u64().unwrap();
    let (hidden, endpoint) = h.etcd.start_hidden();
    until("A sees the store lost", CONVERGE, || {
        h.a.status()["kvstore"]["state"] == "lost"
    });
    common::etcd::TestEtcd::etcdctl_at(&endpoint, &["del", &entry]);
    let status =
        common::etcd::TestEtcd::etcdctl_at(&endpoint, &["endpoint", "status", "-w", "json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let revision = status[0]["Status"]["header"]["revision"]
        .as_u64()
        .unwrap()
        .to_string();
    common::etcd::TestEtcd::etcdctl_at(&endpoint, &["compact", &revision]);
    h.etcd.move_home(hidden.path());
    synced(&h, B_ON_A, A_ON_B);
    until("A lists again", CONVERGE, || {
        let k = h.a.status()["kvstore"].clone();
        k["relists"].as_u64().unwrap() > relists_before
    });
    verdicts(&h, false);

    // A compaction under running watches changes nothing they see: the
    // entry written again after it is honoured.
    let status = h.etcd.etcdctl(&["endpoint", "status", "-w", "json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let revision = status[0]["Status"]["header"]["revision"]
        .as_u64()
        .unwrap()
        .to_string();
    h.etcd.etcdctl(&["compact", &revision]);
    h.etcd.etcdctl(&[
        "put",
        &entry,
        &format!(r#"{{"IP":"{WORLD4}","Mask":null,"HostIP":"198.18.250.9","ID":61001,"Key":0,"Metadata":""}}"#),
    ]);
    until(
        "A honours the entry written after the compaction",
        CONVERGE,
        || {
            h.a.probe(
                "web",
                Transport::Tcp,
                WORLD4,
                5432,
                Duration::from_millis(300),
            )
        },
    );
    verdicts(&h, true);
    drop((ra, rb));
}
