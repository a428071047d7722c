//! What happens when `xpf run` dies, is restarted or hands over: the
//! datapath keeps dropping what it has no verdict for, a successor takes
//! over without a manual step, established connections carry on, and a
//! graceful stop leaves nothing (not in bpffs either). Root only; every
//! test runs in its own private host namespace with IPv4 and IPv6
//! forwarding on, where a detached filter would show as a bypass.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use common::lab::*;
use xpf::harness::probe::{round_trip, EchoServer, Transport};
use xpf::sys::netns;

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root (network namespaces, XDP)");
            return;
        }
    };
}

/// How long a denied attempt waits for an answer that must not come.
const DENIED_WAIT: Duration = Duration::from_millis(300);
/// How long a long-lived connection may take to recover after a gap: TCP
/// retransmits with exponential backoff, so the first retransmit after the
/// new xpf is up can come several seconds later.
const RECOVERY: Duration = Duration::from_secs(30);

/// An echo server that keeps each connection open and echoes every read,
/// bound inside `ns` (the socket stays in that namespace).
struct LongEcho {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl LongEcho {
    fn start(ns: &str, addr: SocketAddr) -> Self {
        let listener = netns::run_in(ns, || TcpListener::bind(addr))
            .unwrap()
            .unwrap_or_else(|e| panic!("binding {addr} in {ns}: {e}"));
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        let flag = flag.clone();
                        std::thread::spawn(move || {
                            s.set_read_timeout(Some(Duration::from_millis(200)))
                                .unwrap();
                            let mut buf = [0u8; 256];
                            while !flag.load(Ordering::Relaxed) {
                                match s.read(&mut buf) {
                                    Ok(0) => return,
                                    Ok(n) => {
                                        if s.write_all(&buf[..n]).is_err() {
                                            return;
                                        }
                                    }
                                    Err(e)
                                        if e.kind() == std::io::ErrorKind::WouldBlock
                                            || e.kind() == std::io::ErrorKind::TimedOut => {}
                                    Err(_) => return,
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Self {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for LongEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A TCP connection opened from inside `ns` and kept.
struct Conn {
    stream: TcpStream,
    what: &'static str,
}

impl Conn {
    fn open(ns: &str, to: SocketAddr, what: &'static str) -> Self {
        let stream = netns::run_in(ns, || {
            TcpStream::connect_timeout(&to, Duration::from_secs(5))
        })
        .unwrap()
        .unwrap_or_else(|e| panic!("{what}: connecting to {to}: {e}"));
        Self { stream, what }
    }

    /// Sends `msg` and waits up to `wait` for its echo. Reconnecting is
    /// never tried: the same connection must carry it.
    fn echo(&mut self, msg: &str, wait: Duration) {
        self.stream.set_read_timeout(Some(wait)).unwrap();
        self.stream
            .write_all(msg.as_bytes())
            .unwrap_or_else(|e| panic!("{}: sending `{msg}`: {e}", self.what));
        let mut got = vec![0u8; msg.len()];
        self.stream
            .read_exact(&mut got)
            .unwrap_or_else(|e| panic!("{}: echo of `{msg}`: {e} (connection broken)", self.what));
        assert_eq!(got, msg.as_bytes(), "{}", self.what);
    }
}

/// Denied exchanges tried over and over from the background, TCP and UDP,
/// IPv4 and IPv6; counts every one that completes (none may).
struct Denied {
    stop: Arc<AtomicBool>,
    tries: Arc<AtomicU64>,
    handle: Option<JoinHandle<Vec<String>>>,
}

impl Denied {
    fn start(flows: Vec<(String, Transport, SocketAddr)>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tries = Arc::new(AtomicU64::new(0));
        let (flag, t) = (stop.clone(), tries.clone());
        let handle = std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                for (ns, transport, to) in &flows {
                    t.fetch_add(1, Ordering::Relaxed);
                    if round_trip(Some(ns), *transport, *to, DENIED_WAIT) {
                        seen.push(format!("{ns} -> {to} {}", transport.as_str()));
                    }
                }
            }
            seen
        });
        Self {
            stop,
            tries,
            handle: Some(handle),
        }
    }

    /// Stops and returns (attempts, what got through).
    fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let seen = self.handle.take().unwrap().join().unwrap();
        (self.tries.load(Ordering::Relaxed), seen)
    }
}

impl Drop for Denied {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Waits until the denied loop has made `n` more attempts.
fn wait_attempts(d: &Denied, n: u64) {
    let start = d.tries.load(Ordering::Relaxed);
    while d.tries.load(Ordering::Relaxed) < start + n {
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_killed_xpf_fails_closed_and_a_new_one_takes_over_without_breaking_connections() {
    require_root!();
    let lab = Lab::new("");
    let (fe, be, db) = (lab.ns("frontend"), lab.ns("backend"), lab.ns("db"));

    let mut xpf = lab.run();
    // Servers: backend answers on 8080 (TCP, UDP; v4 and v6), db on 5432.
    let _long_be = LongEcho::start(&be, sa("198.18.10.3", 8080));
    let _long_be6 = LongEcho::start(&be, sa("2001:db8:10::3", 8080));
    let _udp_be = EchoServer::start(Some(&be), Transport::Udp, sa("198.18.10.3", 8080)).unwrap();
    let _udp_be6 =
        EchoServer::start(Some(&be), Transport::Udp, sa("2001:db8:10::3", 8080)).unwrap();
    let _long_db = LongEcho::start(&db, sa("198.18.10.4", 5432));
    let _udp_db6 =
        EchoServer::start(Some(&db), Transport::Udp, sa("2001:db8:10::4", 5432)).unwrap();

    // Two long-lived connections: endpoint to endpoint (allowed by
    // frontend's policy), and from the outside to db, whose egress is
    // default-deny: its answers pass only as conntrack replies.
    let mut fe_be = Conn::open(&fe, sa("198.18.10.3", 8080), "frontend -> backend");
    let mut out_db = Conn::open(
        lab.bed.outside.name(),
        sa("198.18.10.4", 5432),
        "outside -> db",
    );
    fe_be.echo("before", RECOVERY);
    out_db.echo("before", RECOVERY);

    // Denied flows to listening servers, tried from now until the end: db
    // may send nothing (default deny), frontend may not reach db at all.
    let denied = Denied::start(vec![
        (db.clone(), Transport::Tcp, sa("198.18.10.3", 8080)),
        (db.clone(), Transport::Udp, sa("198.18.10.3", 8080)),
        (db.clone(), Transport::Tcp, sa("2001:db8:10::3", 8080)),
        (db.clone(), Transport::Udp, sa("2001:db8:10::3", 8080)),
        (fe.clone(), Transport::Tcp, sa("198.18.10.4", 5432)),
        (fe.clone(), Transport::Udp, sa("2001:db8:10::4", 5432)),
    ]);
    wait_attempts(&denied, 6);

    // A second xpf against the live one refuses, naming its PID, and the
    // live one keeps filtering.
    let pid = xpf.child.as_ref().unwrap().id();
    let second = lab.xpf(&["run"]).output().unwrap();
    assert_eq!(second.status.code(), Some(2));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains(&format!("PID {pid}")), "{err}");
    fe_be.echo("while a second xpf was refused", RECOVERY);

    // SIGKILL: nothing runs the teardown. The denied loop goes on through
    // the gap; with forwarding on in the host, only the pinned XDP program
    // stands between the endpoints and the kernel's routing.
    let mut child = xpf.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    drop(xpf);
    wait_attempts(&denied, 12);
    assert!(
        lab.instance_left().len() == 2,
        "pins and state outlive the process"
    );

    // A new `xpf run` with the same config: no manual step.
    let mut xpf = lab.run_with(&["--stats-interval", "1"]);
    let said = xpf.stderr();
    assert!(
        said.contains(&format!("(PID {pid}) is gone; taking over")),
        "{said}"
    );
    let rate = xpf.next_line("xpf: pps:");
    assert!(rate.contains("gap dropped"), "{rate}");
    fe_be.echo("after the takeover", RECOVERY);
    out_db.echo("after the takeover", RECOVERY);
    // New flows are judged as before.
    assert!(round_trip(
        Some(&fe),
        Transport::Tcp,
        sa("2001:db8:10::3", 8080),
        RECOVERY
    ));
    wait_attempts(&denied, 6);

    // A planned hand-over: `xpf stop --keep-datapath`, a gap, a new run.
    let out = lab
        .xpf_bare(&["stop", "--keep-datapath"])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("handed over"), "{stdout}");
    let (status, handed) = xpf.stop_exited();
    assert!(status.success());
    assert!(
        handed["takeover"]["gap_dropped"].as_u64().unwrap_or(0) >= 1,
        "the first gap's denied tries were dropped and counted: {handed:#}"
    );
    wait_attempts(&denied, 12);
    let xpf = lab.run();
    fe_be.echo("after the hand-over", RECOVERY);
    out_db.echo("after the hand-over", RECOVERY);
    wait_attempts(&denied, 6);

    let (tries, through) = denied.finish();
    assert!(
        through.is_empty(),
        "denied flows got through ({} of {tries}): {through:?}",
        through.len()
    );

    // A graceful stop (`xpf stop`: SIGTERM, then waits) removes
    // everything, bpffs included.
    let out = lab.xpf_bare(&["stop"]).output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("everything removed"), "{stdout}");
    let (status, fin) = xpf.stop_exited();
    assert!(status.success());
    assert!(
        fin["takeover"]["gap_dropped"].as_u64().unwrap_or(0) >= 1,
        "{fin:#}"
    );
    assert!(fin["gap_dropped_total"].as_u64().unwrap() >= 2, "{fin:#}");
    assert!(lab.leftovers().is_empty(), "{:?}", lab.leftovers());
    assert!(lab.instance_left().is_empty(), "{:?}", lab.instance_left());
}

#[test]
fn cleanup_removes_every_trace_of_a_dead_instance_and_refuses_a_live_one() {
    require_root!();
    let lab = Lab::new("");
    let xpf = lab.run();

    // Against a live instance: refused, nothing touched.
    let out = lab.xpf(&["endpoint", "delete"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("PID"), "{err}");
    assert!(netns::exists(&lab.ns("db")));
    let fe = lab.ns("frontend");
    let _be = EchoServer::start(
        Some(&lab.ns("backend")),
        Transport::Tcp,
        sa("198.18.10.3", 8080),
    )
    .unwrap();
    assert!(round_trip(
        Some(&fe),
        Transport::Tcp,
        sa("198.18.10.3", 8080),
        RECOVERY
    ));

    // Killed: `xpf cleanup` removes namespaces, veths, the internal pair,
    // pins and state.
    let mut xpf = xpf;
    let mut child = xpf.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    drop(xpf);
    assert!(!lab.leftovers().is_empty());

    // A takeover that cannot happen in place (another XDP attach mode) is
    // refused and leaves the dead instance's datapath dropping: even an
    // allowed exchange gets no answer.
    let config = lab.dir.path().join("xpf.yaml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}\ndatapath: {{attach: generic}}\n")).unwrap();
    let out = lab.xpf(&["run"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot change mode in place"), "{err}");
    assert_eq!(lab.instance_left().len(), 2, "pins and state stay");
    assert!(!round_trip(
        Some(&fe),
        Transport::Tcp,
        sa("198.18.10.3", 8080),
        Duration::from_millis(1500)
    ));

    let out = lab.xpf_bare(&["cleanup"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("xpf_net deleted"), "{said}");
    assert!(lab.leftovers().is_empty(), "{:?}", lab.leftovers());
    assert!(lab.instance_left().is_empty(), "{:?}", lab.instance_left());
}
