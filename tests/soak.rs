//! The soak: `xpf run` for many minutes with endpoints under mixed allowed
//! and denied traffic while one endpoint floods. Run by `scripts/soak.sh
//! [--minutes N]` (ignored by `cargo test`: it takes as long as it is told).
//!
//! - frontend (never flooding) keeps opening TCP connections to backend and
//!   to the world (IPv4 and IPv6), sends small UDP from new ports to both
//!   and fragmented UDP to the world, and talks on one long-lived
//!   connection to backend: every exchange must complete. (Fragmented
//!   answers from backend would not: the flooder's own replies need room
//!   in its own full share of the fragment table.)
//! - backend floods db with SYNs (allowed, so they reach conntrack) and
//!   first fragments from ever new ports and ids.
//! - db sends the hostile-frame corpus and tries backend (denied): nothing
//!   of it may get through.
//!
//! Once a minute it prints xpf's resident memory, conntrack and fragment
//! table sizes and every endpoint's drop counters. It fails if an allowed
//! exchange of frontend fails, a denied one completes, the tables pass
//! their bounds, or memory keeps growing after the first half.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::lab::*;
use common::raw::send_raw;
use xpf::harness::probe::{round_trip, Transport};
use xpf::hostile::{self, corpus};
use xpf::sys::netns;
use xpf::wire::tcp_flags::SYN;

const CONNTRACK_MAX: u64 = 30_000;
/// Each worker's fragment table (filter.rs).
const FRAGMENT_TABLE: u64 = 16 * 1024;
const TIMEOUT: Duration = Duration::from_secs(5);

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// Echo servers inside `ns` on TCP and UDP 8080 at `addrs`. UDP binds
/// each address: an answer from a wildcard socket leaves from whatever
/// address the route picks, which the client would not take as the answer.
fn serve(ns: &str, addrs: &[&str], stop: Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<()>> {
    let tcp = netns::run_in(ns, || TcpListener::bind("[::]:8080"))
        .unwrap()
        .unwrap();
    tcp.set_nonblocking(true).unwrap();
    let s1 = stop.clone();
    let mut threads = vec![std::thread::spawn(move || {
        while !s1.load(Ordering::Relaxed) {
            match tcp.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 4096];
                        while let Ok(n) = s.read(&mut buf) {
                            if n == 0 || s.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    })];
    for a in addrs {
        let udp = netns::run_in(ns, || UdpSocket::bind(sa(a, 8080)))
            .unwrap()
            .unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(&buf[..n], from);
                }
            }
        }));
    }
    threads
}

/// A UDP exchange of `len` bytes (fragmented above the MTU), resent until
/// it comes back or `TIMEOUT` passes.
fn udp_exchange(ns: &str, dst: SocketAddr, len: usize) -> bool {
    netns::run_in(ns, || -> std::io::Result<bool> {
        let s = UdpSocket::bind(if dst.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
        s.connect(dst)?;
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        let msg: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let mut buf = vec![0u8; 65536];
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            s.send(&msg)?;
            if let Ok(n) = s.recv(&mut buf) {
                return Ok(buf[..n] == msg[..]);
            }
        }
        Ok(false)
    })
    .unwrap()
    .unwrap_or(false)
}

fn tcp_exchange(ns: &str, dst: SocketAddr) -> bool {
    netns::run_in(ns, || -> std::io::Result<bool> {
        let mut s = TcpStream::connect_timeout(&dst, TIMEOUT)?;
        s.set_read_timeout(Some(TIMEOUT))?;
        s.write_all(&[7u8; 100])?;
        let mut buf = [0u8; 100];
        s.read_exact(&mut buf)?;
        Ok(buf == [7u8; 100])
    })
    .unwrap()
    .unwrap_or(false)
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
}

impl Tally {
    fn note(&self, ok: bool, what: &str) {
        if ok {
            self.ok.fetch_add(1, Ordering::Relaxed);
        } else {
            eprintln!("soak: {what} failed");
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// frontend's allowed traffic, until `stop`.
fn allowed(lab_fe: String, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let be4 = sa(hostile::BACKEND4, 8080);
    let be6 = sa(hostile::BACKEND6, 8080);
    let world4 = sa(hostile::WORLD4, 8080);
    let world6 = sa(hostile::WORLD6, 8080);
    let mut long = netns::run_in(&lab_fe, || TcpStream::connect_timeout(&be4, TIMEOUT))
        .unwrap()
        .expect("long-lived connection");
    long.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let (be, world) = if round % 2 == 0 {
            (be4, world4)
        } else {
            (be6, world6)
        };
        for dst in [be, world] {
            tally.note(
                tcp_exchange(&lab_fe, dst),
                &format!("frontend new TCP connection to {dst}"),
            );
            tally.note(
                round_trip(Some(&lab_fe), Transport::Udp, dst, TIMEOUT),
                &format!("frontend UDP from a new port to {dst}"),
            );
        }
        if round % 5 == 0 {
            tally.note(
                udp_exchange(&lab_fe, world, 3000),
                &format!("frontend fragmented UDP to {world}"),
            );
        }
        let mut buf = [0u8; 64];
        let ok = long.write_all(&[round as u8; 64]).is_ok()
            && long.read_exact(&mut buf).is_ok()
            && buf == [round as u8; 64];
        tally.note(ok, "frontend long-lived connection");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// backend's floods and db's hostile frames and denied tries, until `stop`.
fn hostile_traffic(lab: &Lab, stop: Arc<AtomicBool>, breaches: Arc<AtomicU64>) {
    let (be, db) = (lab.ns("backend"), lab.ns("db"));
    let (own, gateway) = lab.macs("db");
    let db_cases: Vec<Vec<u8>> = corpus(own, gateway)
        .into_iter()
        .filter(|c| c.sender == hostile::DB)
        .flat_map(|c| c.frames)
        .collect();
    let (first, _) = hostile::fragmented_tcp(hostile::BACKEND4, hostile::DB4, 5432);
    let mut port = 0u16;
    let mut id = 0u16;
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..20 {
            let syns: Vec<Vec<u8>> = (0..250)
                .map(|_| {
                    port = port.wrapping_add(1).max(1);
                    hostile::tcp_frame(hostile::BACKEND4, hostile::DB4, port, 5432, SYN, 0)
                })
                .collect();
            send_raw(&be, &syns);
            let frags: Vec<Vec<u8>> = (0..250)
                .map(|_| {
                    id = id.wrapping_add(1);
                    hostile::with_fragment_id(&first, id)
                })
                .collect();
            send_raw(&be, &frags);
            std::thread::sleep(Duration::from_millis(5));
        }
        send_raw(&db, &db_cases);
        if round_trip(
            Some(&db),
            Transport::Tcp,
            sa(hostile::BACKEND4, 8080),
            Duration::from_millis(500),
        ) {
            eprintln!("soak: db reached backend");
            breaches.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// One minute's line: sizes and every endpoint's non-zero drops.
fn report(minute: u64, rss: u64, c: &serde_json::Value, tally: &Tally) -> String {
    let mut parts = vec![
        format!("minute {minute}"),
        format!("rss {:.1} MiB", rss as f64 / 1024.0),
        format!("conntrack {}", c["conntrack_entries"]),
    ];
    for e in c["endpoints"].as_array().unwrap() {
        let drops: Vec<String> = e["drops"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, n)| n.as_u64() != Some(0))
            .map(|(r, n)| format!("{r} {n}"))
            .collect();
        parts.push(format!(
            "{}: ct {} frags {} drops [{}]",
            e["name"].as_str().unwrap(),
            e["conntrack_entries"],
            e["fragments_held"],
            drops.join(", ")
        ));
    }
    parts.push(format!(
        "frontend exchanges ok {} failed {}",
        tally.ok.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed)
    ));
    format!("soak: {}", parts.join(" | "))
}

#[test]
#[ignore = "long: run by scripts/soak.sh"]
fn soak() {
    assert!(is_root(), "the soak needs root");
    let minutes: u64 = std::env::var("XPF_SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(30);
    assert!(minutes >= 2, "a soak of fewer than 2 minutes says nothing");
    let lab = Lab::new(&format!("datapath:\n  conntrack_max: {CONNTRACK_MAX}"));
    let mut xpf = lab.run_with(&["--stats-interval", "60"]);
    let pid = xpf.child.as_ref().unwrap().id();
    let stop = Arc::new(AtomicBool::new(false));
    // Servers stop after the clients, so no exchange meets a closed port.
    let servers_stop = Arc::new(AtomicBool::new(false));
    let mut servers = serve(
        &lab.ns("backend"),
        &[hostile::BACKEND4, hostile::BACKEND6],
        servers_stop.clone(),
    );
    servers.extend(serve(
        lab.bed.outside.name(),
        &[hostile::WORLD4, hostile::WORLD6],
        servers_stop.clone(),
    ));
    let tally = Arc::new(Tally::default());
    let breaches = Arc::new(AtomicU64::new(0));

    let mut rss = Vec::new();
    let mut bounds = Vec::new();
    std::thread::scope(|s| {
        let (st, ta) = (stop.clone(), tally.clone());
        let fe = lab.ns("frontend");
        s.spawn(move || allowed(fe, st, ta));
        let (st, br) = (stop.clone(), breaches.clone());
        let lab = &lab;
        s.spawn(move || hostile_traffic(lab, st, br));

        for minute in 1..=minutes {
            let line = xpf.next_line("xpf: counters ");
            let c: serde_json::Value =
                serde_json::from_str(line.trim_start_matches("xpf: counters ")).unwrap();
            let r = rss_kib(pid);
            rss.push(r);
            println!("{}", report(minute, r, &c, &tally));
            let workers = c["workers"].as_array().unwrap().len() as u64;
            let frags: u64 = c["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["fragments_held"].as_u64().unwrap())
                .sum();
            let entries = c["conntrack_entries"].as_u64().unwrap();
            if entries > CONNTRACK_MAX + 64 || frags > workers * FRAGMENT_TABLE {
                bounds.push(format!(
                    "minute {minute}: conntrack {entries}, fragments {frags}"
                ));
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    servers_stop.store(true, Ordering::Relaxed);
    for t in servers {
        t.join().unwrap();
    }
    let (status, c) = xpf.stop();
    assert!(status.success());
    println!("soak: final counters {c:#}");

    let failed = tally.failed.load(Ordering::Relaxed);
    assert_eq!(failed, 0, "frontend exchanges failed");
    assert_eq!(breaches.load(Ordering::Relaxed), 0, "db reached backend");
    assert!(bounds.is_empty(), "tables past their bounds: {bounds:?}");
    // Memory: the second half may not climb above what the first half
    // reached (plus a margin for allocator noise).
    let half = rss.len() / 2;
    let first_peak = *rss[..half.max(1)].iter().max().unwrap();
    let last = *rss.last().unwrap();
    assert!(
        last <= first_peak + first_peak / 10 + 8 * 1024,
        "RSS grew from {first_peak} KiB (first half's peak) to {last} KiB"
    );
    for reason in ["conntrack_full", "fragment_table_full"] {
        assert_eq!(counter(&c, "frontend", reason), 0, "{c:#}");
    }
    assert!(counter(&c, "backend", "fragment_table_full") > 0, "{c:#}");
}
