//! The live control plane, as root with real traffic in the lab: reloads
//! that change policy under established flows, runtime ipcache entries, a
//! refused reload that changes nothing, a hundred reloads under steady
//! streams, and the metrics. Timeouts bound how long a denied exchange is
//! waited for; nothing measures speed.

mod common;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::lab::{counter, is_root, sa, Lab, Running, DENY_FRONTEND_TO_BACKEND, POLICIES, WORLD4};
use xpf::harness::probe::{connect_in, echoes, round_trip, EchoServer, HoldingEcho, Transport};
use xpf::sys::netns;

const ALLOWED: Duration = Duration::from_secs(3);
const DENIED: Duration = Duration::from_millis(700);

/// A policy no stream below is subject to (it selects nobody).
const UNRELATED: &str = r#"
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: unrelated}
spec:
  endpointSelector: {matchLabels: {app: nobody}}
  egress: [{toEntities: [world]}]
"#;

struct Daemon {
    lab: Lab,
    run: Option<Running>,
    api: PathBuf,
}

impl Daemon {
    fn start() -> Self {
        let lab = Lab::new("");
        let api = lab.dir.path().join("api.sock");
        let api_arg = api.display().to_string();
        let run = lab.run_with(&["--api", &api_arg, "--metrics", "127.0.0.1:0"]);
        Self {
            lab,
            run: Some(run),
            api,
        }
    }

    /// `xpf ARGS --api <socket>` in the host namespace.
    fn client(&self, args: &[&str]) -> Output {
        self.lab
            .xpf_bare(args)
            .arg("--api")
            .arg(&self.api)
            .output()
            .expect("run an xpf client")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.client(args);
        assert!(
            out.status.success(),
            "xpf {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["status", "--output", "json"])).expect("status is JSON")
    }

    fn write_policies(&self, extra: &str) {
        std::fs::write(
            self.lab.dir.path().join("policies.yaml"),
            format!("{POLICIES}{extra}"),
        )
        .unwrap();
    }

    fn ns(&self, ep: &str) -> String {
        self.lab.ns(ep)
    }

    fn probe(&self, from: &str, t: Transport, addr: &str, port: u16, wait: Duration) -> bool {
        round_trip(Some(&self.ns(from)), t, sa(addr, port), wait)
    }

    fn stop(mut self) -> serde_json::Value {
        let (status, counters) = self.run.take().unwrap().stop();
        assert!(status.success(), "xpf run exit status {status}");
        counters
    }
}

/// A TCP connection opened from inside `ns`.
fn connect(ns: &str, addr: &str, port: u16) -> TcpStream {
    connect_in(ns, sa(addr, port), ALLOWED).expect("connect from the endpoint")
}

#[test]
fn a_reload_that_adds_a_deny_cuts_an_established_flow_and_new_ones() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let d = Daemon::start();
    // Keeps the connection open: only the policy can end it.
    let _server =
        HoldingEcho::start(&d.ns("backend"), sa("198.18.10.3", 8080)).expect("echo server");
    let _db = EchoServer::start(Some(&d.ns("db")), Transport::Tcp, sa("198.18.10.4", 5432))
        .expect("echo server");
    let mut conn = connect(&d.ns("frontend"), "198.18.10.3", 8080);
    assert!(
        echoes(&mut conn, b"before", ALLOWED),
        "the established flow works"
    );
    assert!(echoes(&mut conn, b"again", ALLOWED), "and stays open");
    assert_eq!(d.status()["revision"], 1);

    d.write_policies(DENY_FRONTEND_TO_BACKEND);
    let said = d.ok(&["reload"]);
    assert!(said.contains("revision 2"), "{said}");
    assert_eq!(d.status()["revision"], 2);

    assert!(
        !echoes(&mut conn, b"after", DENIED),
        "the established flow is cut"
    );
    assert!(
        !d.probe("frontend", Transport::Tcp, "198.18.10.3", 8080, DENIED),
        "a new flow is refused"
    );
    assert!(
        d.probe("backend", Transport::Tcp, "198.18.10.4", 5432, ALLOWED),
        "other endpoints are untouched"
    );
    drop(conn);
    let counters = d.stop();
    assert!(
        counter(&counters, "frontend", "policy_denied") > 0,
        "the cut frames counted as policy_denied: {counters}"
    );
}

#[test]
fn runtime_ipcache_entries_give_a_world_address_labels_and_take_them_back() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let d = Daemon::start();
    // The outside namespace stands for the world; backend may reach app=db
    // on 5432 and nothing else.
    let _server = EchoServer::start(
        Some(d.lab.bed.outside.name()),
        Transport::Tcp,
        sa(WORLD4, 5432),
    )
    .expect("echo server");
    assert!(
        !d.probe("backend", Transport::Tcp, WORLD4, 5432, DENIED),
        "world: denied"
    );

    let said = d.ok(&[
        "ipcache",
        "upsert",
        "198.19.1.1/32",
        "--labels",
        "app=db,env=remote",
    ]);
    assert!(said.contains("revision 2"), "{said}");
    assert!(
        d.probe("backend", Transport::Tcp, WORLD4, 5432, ALLOWED),
        "labelled app=db, the label rule applies"
    );
    let s = d.status();
    assert_eq!(s["runtime_ipcache_entries"][0]["prefix"], "198.19.1.1/32");

    d.ok(&["ipcache", "delete", "198.19.1.1/32"]);
    assert!(
        !d.probe("backend", Transport::Tcp, WORLD4, 5432, DENIED),
        "world again"
    );

    // The db endpoint's own labels: an identity the tables know already,
    // so the change is an ipcache update alone, with the same effect.
    d.ok(&["ipcache", "upsert", "198.19.1.1", "--labels", "app=db"]);
    assert!(d.probe("backend", Transport::Tcp, WORLD4, 5432, ALLOWED));
    d.ok(&["ipcache", "delete", "198.19.1.1"]);
    assert!(!d.probe("backend", Transport::Tcp, WORLD4, 5432, DENIED));

    let gone = d.client(&["ipcache", "delete", "198.19.1.1/32"]);
    assert_eq!(gone.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&gone.stderr).contains("no runtime ipcache entry"));
    d.stop();
}

#[test]
fn an_invalid_reload_names_the_file_and_field_and_changes_nothing() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let d = Daemon::start();
    let _server = EchoServer::start(
        Some(&d.ns("backend")),
        Transport::Tcp,
        sa("198.18.10.3", 8080),
    )
    .expect("echo server");
    // A valid deny, and a broken document beside it: all or nothing.
    d.write_policies(&format!(
        "{DENY_FRONTEND_TO_BACKEND}---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n\
         metadata: {{name: broken}}\nspec:\n  endpointSelector: {{matchLabels: {{app: db}}}}\n  \
         egress: [{{toPortz: []}}]\n"
    ));
    let out = d.client(&["reload"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("policies.yaml"), "names the file: {err}");
    assert!(err.contains("toPortz"), "names the field: {err}");
    assert!(err.contains("nothing was changed"), "{err}");

    assert_eq!(d.status()["revision"], 1, "still the first state");
    assert!(
        d.probe("frontend", Transport::Tcp, "198.18.10.3", 8080, ALLOWED),
        "the old policy keeps enforcing: allowed stays allowed"
    );
    assert!(
        !d.probe("db", Transport::Tcp, "198.18.10.3", 8080, DENIED),
        "and denied stays denied"
    );
    d.stop();
}

#[test]
fn a_hundred_reloads_lose_no_allowed_datagram_and_let_no_denied_one_through() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let d = Daemon::start();
    let _echo = EchoServer::start(
        Some(&d.ns("backend")),
        Transport::Udp,
        sa("198.18.10.3", 8080),
    )
    .expect("echo server");
    // A sink for the denied stream (frontend -> backend UDP 9999), counting
    // what arrives.
    let arrived = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sink = {
        let (arrived, stop, ns) = (arrived.clone(), stop.clone(), d.ns("backend"));
        std::thread::spawn(move || {
            netns::enter(&ns).unwrap();
            let s = UdpSocket::bind("198.18.10.3:9999").unwrap();
            s.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                if s.recv(&mut buf).is_ok() {
                    arrived.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    // Allowed UDP exchanges from frontend, one at a time, and denied
    // datagrams beside them, while `reloading` says so.
    let stream = |reloads: &dyn Fn()| -> (u64, u64) {
        let (lost, sent) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let done = Arc::new(AtomicBool::new(false));
        let worker = {
            let (lost, sent, done, ns) =
                (lost.clone(), sent.clone(), done.clone(), d.ns("frontend"));
            std::thread::spawn(move || {
                netns::enter(&ns).unwrap();
                let s = UdpSocket::bind("198.18.10.2:0").unwrap();
                s.set_read_timeout(Some(ALLOWED)).unwrap();
                let denied = UdpSocket::bind("198.18.10.2:0").unwrap();
                let mut buf = [0u8; 64];
                let mut n = 0u64;
                while !done.load(Ordering::Relaxed) || n < 50 {
                    let msg = n.to_be_bytes();
                    s.send_to(&msg, "198.18.10.3:8080").unwrap();
                    let _ = denied.send_to(&msg, "198.18.10.3:9999");
                    // An answer to an earlier datagram does not count for
                    // this one.
                    let ok = loop {
                        match s.recv(&mut buf) {
                            Ok(8) if buf[..8] == msg => break true,
                            Ok(_) => continue,
                            Err(_) => break false,
                        }
                    };
                    if !ok {
                        lost.fetch_add(1, Ordering::Relaxed);
                    }
                    n += 1;
                    sent.store(n, Ordering::Relaxed);
                }
            })
        };
        reloads();
        done.store(true, Ordering::Relaxed);
        worker.join().unwrap();
        (lost.load(Ordering::Relaxed), sent.load(Ordering::Relaxed))
    };

    let (baseline_lost, baseline_sent) = stream(&|| std::thread::sleep(Duration::from_secs(1)));
    let (lost, sent) = stream(&|| {
        for i in 0..100 {
            d.write_policies(if i % 2 == 0 { UNRELATED } else { "" });
            d.ok(&["reload"]);
        }
    });
    stop.store(true, Ordering::Relaxed);
    sink.join().unwrap();

    assert_eq!(d.status()["revision"], 101, "every reload applied");
    assert!(sent > 0 && baseline_sent > 0);
    assert!(
        lost <= baseline_lost,
        "reloads lost {lost} of {sent} allowed exchanges; the baseline lost {baseline_lost} of {baseline_sent}"
    );
    assert_eq!(
        arrived.load(Ordering::Relaxed),
        0,
        "no denied datagram got through"
    );
    let counters = d.stop();
    assert!(
        counter(&counters, "frontend", "policy_default_deny") > 0,
        "{counters}"
    );
}

#[test]
fn metrics_count_a_denied_flow_by_reason_and_direction() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let d = Daemon::start();
    let run = d.run.as_ref().unwrap();
    let addr = run
        .stderr()
        .lines()
        .find_map(|l| l.strip_prefix("xpf: metrics on http://"))
        .and_then(|l| l.strip_suffix("/metrics"))
        .map(str::to_string)
        .expect("xpf says where the metrics are");
    assert!(!d.probe("db", Transport::Tcp, "198.18.10.3", 8080, DENIED));

    let scrape = || -> String {
        netns::run_in(d.lab.bed.host.name(), || {
            let mut s = TcpStream::connect(&addr).unwrap();
            write!(s, "GET /metrics HTTP/1.0\r\nHost: xpf\r\n\r\n").unwrap();
            let mut text = String::new();
            s.read_to_string(&mut text).unwrap();
            text
        })
        .unwrap()
    };
    let line = "xpf_drop_count_total{reason=\"policy_default_deny\",direction=\"EGRESS\"}";
    // The control loop refreshes the metrics once a second.
    let mut text = String::new();
    for _ in 0..50 {
        text = scrape();
        let n: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix(line))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if n > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.0 200"),
        "{text}"
    );
    let n: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix(line))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(n > 0, "no denied drops in:\n{text}");
    assert!(text.contains("xpf_policy_revision 1"), "{text}");
    d.stop();
}

#[test]
fn monitor_shows_a_drop_with_both_identities_labels_and_the_reason() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let d = Daemon::start();
    let mut monitor = d.lab.xpf_bare(&[
        "monitor",
        "--type",
        "drop",
        "--output",
        "json",
        "--endpoint",
        "db",
    ]);
    monitor.arg("--api").arg(&d.api);
    // Denied attempts until one is seen.
    let v = common::lab::monitor_until(
        monitor,
        || {
            assert!(!d.probe(
                "db",
                Transport::Tcp,
                "198.18.10.3",
                8080,
                Duration::from_millis(300)
            ))
        },
        |v| v["flow"]["l4"]["TCP"]["destination_port"] == 8080,
    );
    let f = &v["flow"];
    assert_eq!(f["verdict"], "DROPPED", "{v}");
    assert_eq!(f["drop_reason_desc"], "POLICY_DENIED", "{v}");
    assert_eq!(v["xpf"]["reason"], "policy_default_deny", "{v}");
    // No rule decided: the event names the default and whose it was.
    assert_eq!(v["xpf"]["cause"], "default deny", "{v}");
    let by = v["xpf"]["selected_by"].as_array().expect("selected_by");
    assert!(
        !by.is_empty() && by.iter().all(|p| p.as_str().unwrap().contains("Policy ")),
        "{v}"
    );
    assert_eq!(f["IP"]["source"], "198.18.10.4", "{v}");
    assert_eq!(f["IP"]["destination"], "198.18.10.3", "{v}");
    assert_eq!(f["traffic_direction"], "EGRESS", "{v}");
    assert_eq!(f["source"]["pod_name"], "db", "{v}");
    let has = |side: &str, label: &str| {
        f[side]["labels"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().ends_with(label))
    };
    assert!(has("source", "app=db"), "{v}");
    assert!(has("destination", "app=backend"), "{v}");
    assert!(f["source"]["identity"].as_u64().unwrap() >= 256, "{v}");
    assert_ne!(f["source"]["identity"], f["destination"]["identity"], "{v}");
    d.stop();
}

/// Removes an extra endpoint's namespace if a test leaves it.
struct NsGuard(String);

impl Drop for NsGuard {
    fn drop(&mut self) {
        if netns::exists(&self.0) {
            let _ = netns::delete(&self.0);
        }
    }
}

#[test]
fn a_reload_adds_and_removes_an_endpoint_and_established_flows_survive_it() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let d = Daemon::start();
    let cache_ns = format!("{}-ca", d.lab.tag);
    let _guard = NsGuard(cache_ns.clone());
    let _backend =
        HoldingEcho::start(&d.ns("backend"), sa("198.18.10.3", 8080)).expect("echo server");
    let mut conn = connect(&d.ns("frontend"), "198.18.10.3", 8080);
    assert!(echoes(&mut conn, b"before", ALLOWED));

    // A second app=backend endpoint: frontend may reach it on 8080, db not.
    let config = d.lab.dir.path().join("xpf.yaml");
    let original = std::fs::read_to_string(&config).unwrap();
    let cache = format!(
        "endpoints:\n  - {{name: cache, netns: {cache_ns}, labels: {{app: backend}}, ipv4: 198.18.10.5}}\n"
    );
    std::fs::write(&config, original.replacen("endpoints:\n", &cache, 1)).unwrap();
    let out = d.ok(&["reload", "--output", "json"]);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["restarted"], true, "{r}");
    assert!(
        netns::exists(&cache_ns),
        "the new endpoint's namespace is made"
    );
    let names: Vec<String> = d.status()["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    assert!(names.contains(&"cache".to_string()), "{names:?}");

    let _cache = EchoServer::start(Some(&cache_ns), Transport::Tcp, sa("198.18.10.5", 8080))
        .expect("echo server in the new endpoint");
    assert!(
        d.probe("frontend", Transport::Tcp, "198.18.10.5", 8080, ALLOWED),
        "reachable as its labels say"
    );
    assert!(
        !d.probe("db", Transport::Tcp, "198.18.10.5", 8080, DENIED),
        "and refused as the policies say"
    );
    assert!(
        echoes(&mut conn, b"after", ALLOWED),
        "the established flow survives the restart (conntrack went through its journal)"
    );

    std::fs::write(&config, &original).unwrap();
    let out = d.ok(&["reload", "--output", "json"]);
    assert!(out.contains("\"restarted\": true"), "{out}");
    assert!(
        !netns::exists(&cache_ns),
        "the removed endpoint's namespace is gone"
    );
    assert!(d.probe("frontend", Transport::Tcp, "198.18.10.3", 8080, ALLOWED));
    d.stop();
}

#[test]
fn endpoint_add_and_remove_at_run_time() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let d = Daemon::start();
    let name = format!("{}w", d.lab.tag);
    let _guard = NsGuard(name.clone());
    let _backend = EchoServer::start(
        Some(&d.ns("backend")),
        Transport::Tcp,
        sa("198.18.10.3", 8080),
    )
    .expect("echo server");
    let said = d.ok(&[
        "endpoint",
        "add",
        "--name",
        &name,
        "--labels",
        "app=backend",
        "--ipv4",
        "198.18.10.6",
    ]);
    assert!(said.contains("restarted"), "{said}");
    assert!(netns::exists(&name), "its namespace is made");
    let s = d.status();
    assert_eq!(s["runtime_endpoints"][0], name.as_str(), "{s}");
    let _server = EchoServer::start(Some(&name), Transport::Tcp, sa("198.18.10.6", 8080))
        .expect("echo server in the new endpoint");
    assert!(d.probe("frontend", Transport::Tcp, "198.18.10.6", 8080, ALLOWED));
    assert!(!d.probe("db", Transport::Tcp, "198.18.10.6", 8080, DENIED));

    let taken = d.client(&[
        "endpoint",
        "add",
        "--name",
        "db",
        "--labels",
        "a=b",
        "--ipv4",
        "198.18.10.7",
    ]);
    assert_eq!(taken.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&taken.stderr).contains("endpoint of the config"));
    let clash = d.client(&[
        "endpoint",
        "add",
        "--name",
        "other",
        "--labels",
        "a=b",
        "--ipv4",
        "198.18.10.6",
    ]);
    assert_eq!(clash.status.code(), Some(2));
    let why = String::from_utf8_lossy(&clash.stderr);
    assert!(
        why.contains("runtime endpoint `other`") && why.contains("used twice"),
        "{why}"
    );

    d.ok(&["endpoint", "remove", &name]);
    assert!(!netns::exists(&name), "its namespace is gone");
    let gone = d.client(&["endpoint", "remove", &name]);
    assert_eq!(gone.status.code(), Some(2));
    assert!(d.probe("frontend", Transport::Tcp, "198.18.10.3", 8080, ALLOWED));
    d.stop();
}

#[test]
fn sighup_reloads_the_config() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let d = Daemon::start();
    d.write_policies(UNRELATED);
    let pid = d.run.as_ref().unwrap().child.as_ref().unwrap().id();
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    // The reload is applied by the daemon's loop, not by this call: wait
    // for it (bounded), then check what it did.
    let mut revision = 1;
    for _ in 0..50 {
        revision = d.status()["revision"].as_u64().unwrap();
        if revision > 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(revision, 2, "SIGHUP applied the edited config");
    assert_eq!(d.status()["policies"], 4, "the unrelated policy is in");
    let log = d.run.as_ref().unwrap().stderr();
    assert!(log.contains("xpf: reload: revision 2"), "{log}");
    d.stop();
}
