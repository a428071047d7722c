//! Part 2 of `xpf bench kvstore`: from a store event to what the packets
//! meet, with a real `xpf run` (needs root).
//!
//! A private host namespace with forwarding on and an outside behind it
//! ([`Testbed`]); `xpf run` in the host namespace with endpoint `web`,
//! joined to the bench's store, whose policy lets `web` reach `app=db` on
//! UDP 9000 only. A sender in `web`'s namespace sends a datagram to
//! [`TARGET`]:9000 in the outside every [`SEND_EVERY`], carrying the
//! current tag; a receiver there notes when each datagram arrives. For
//! each event the bench, with its own connection:
//!
//! 1. tags the datagrams with the event's number and puts an entry giving
//!    [`TARGET`] the identity of `k8s:app=db` (which [`ANCHOR`](super::store::ANCHOR) already
//!    has, so the tables know it): *put-to-allowed* is from just before
//!    the put to the first datagram of that tag arriving;
//! 2. tags them as the event's delete and deletes the entry:
//!    *delete-to-denied* is from just before the delete to the last
//!    datagram of that tag arriving (0 when none did), once nothing has
//!    arrived for [`QUIET`].
//!
//! Both sides are this process's `Instant`s; the resolution is the send
//! interval. The fake node's other entries stay in the store meanwhile,
//! so `xpf run` holds all of them.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use ipnet::IpNet;

use super::store::{ip_put, FakeNode, Plan, TARGET};
use super::LATENCY_TARGET_P99_MS;
use crate::harness::bench::children::Xpf;
use crate::harness::testbed::Testbed;
use crate::kvstore::etcd::{Etcd, Write};
use crate::kvstore::layout;
use crate::sys::netns;

/// How often the sender sends.
const SEND_EVERY: Duration = Duration::from_micros(500);
/// Nothing arriving for this long after a delete means denied again.
const QUIET: Duration = Duration::from_millis(200);
/// The longest an event may take to show before the bench gives up.
const LIMIT: Duration = Duration::from_secs(30);
const PORT: u16 = 9000;
/// The tag bit of a delete's datagrams.
const DELETED: u64 = 1 << 63;
/// The node `xpf run` joins as.
const HOST_NODE: &str = "xpf-bench-host";
const HOST_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(198, 18, 252, 3);

/// Part 2's figures, in milliseconds.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LatencyReport {
    pub events: usize,
    /// The remote entries `xpf run` held meanwhile.
    pub remote_entries: usize,
    /// From the start of `xpf run` to its `ready` (it syncs with the store
    /// first).
    pub xpf_ready_ms: f64,
    /// The sender's mean interval.
    pub send_interval_us: f64,
    pub put_to_allowed_ms: Percentiles,
    pub delete_to_denied_ms: Percentiles,
    /// The store's part: from before the put (the delete) to etcd's
    /// answer, which comes after its write is on disk.
    pub put_ack_ms: Percentiles,
    pub delete_ack_ms: Percentiles,
    /// Put-to-allowed less the put's answer, event by event: roughly
    /// xpf's part (the watch may bring the event a little before the
    /// answer comes).
    pub ack_to_allowed_ms: Percentiles,
    pub target_p99_ms: f64,
    pub met: bool,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `ms`.
    fn of(mut ms: Vec<f64>) -> Self {
        ms.sort_by(f64::total_cmp);
        let at = |p: f64| {
            let rank = ((p / 100.0) * ms.len() as f64).ceil() as usize;
            ms.get(rank.saturating_sub(1)).copied().unwrap_or(0.0)
        };
        Self {
            p50: at(50.0),
            p90: at(90.0),
            p99: at(99.0),
            max: ms.last().copied().unwrap_or(0.0),
        }
    }
}

impl std::fmt::Display for LatencyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let line = |p: &Percentiles| {
            format!(
                "p50 {:.1} p90 {:.1} p99 {:.1} max {:.1} ms",
                p.p50, p.p90, p.p99, p.max
            )
        };
        writeln!(
            f,
            "event-to-enforcement, {} events, {} remote entries held, a datagram every {:.0} µs \
             (xpf run ready in {:.0} ms):",
            self.events, self.remote_entries, self.send_interval_us, self.xpf_ready_ms
        )?;
        writeln!(
            f,
            "  put to allowed:   {} (target p99 {:.0} ms: {})",
            line(&self.put_to_allowed_ms),
            self.target_p99_ms,
            if self.met { "met" } else { "MISSED" }
        )?;
        writeln!(f, "  delete to denied: {}", line(&self.delete_to_denied_ms))?;
        writeln!(
            f,
            "  etcd's answer:    put {}, delete {}",
            line(&self.put_ack_ms),
            line(&self.delete_ack_ms)
        )?;
        writeln!(
            f,
            "  put's answer to allowed: {}",
            line(&self.ack_to_allowed_ms)
        )
    }
}

/// Runs part 2 (see the module doc) with `events` events.
pub(super) fn measure(
    etcd: &mut Etcd,
    endpoint: &str,
    plan: &Plan,
    fake: &mut FakeNode,
    events: usize,
    interrupted: &dyn Fn() -> bool,
) -> Result<LatencyReport> {
    let tag = format!("xk{}", std::process::id());
    let bed = Testbed::build(
        &tag,
        &["198.18.0.1".parse()?],
        &[IpAddr::V4(TARGET)],
        &["198.19.0.0/16".parse()?],
    )?;
    let web_ns = format!("{tag}-web");
    let _leftovers = Leftovers {
        namespaces: vec![web_ns.clone()],
        instance: bed.host.name().to_string(),
    };
    let dir = tempfile::tempdir()?;
    let config = super::write_config(dir.path(), endpoint, &web_ns, HOST_NODE, HOST_IP)?;
    eprintln!(
        "bench kvstore: starting xpf run with {} remote entries in the store...",
        plan.remote_entries()
    );
    let exe = std::env::current_exe().context("finding the xpf binary")?;
    let args: Vec<std::ffi::OsString> = vec![
        "run".into(),
        "--config".into(),
        config.into(),
        "--output".into(),
        "json".into(),
        "--api".into(),
        dir.path().join("api.sock").into(),
    ];
    let started = Instant::now();
    let xpf = Running(Some(Xpf::start_in(Some(bed.host.name()), &exe, &args)?));
    let xpf_ready_ms = started.elapsed().as_secs_f64() * 1e3;
    let target = SocketAddr::new(IpAddr::V4(TARGET), PORT);
    let traffic = Traffic::start(bed.outside.name(), &web_ns, target)?;

    // Denied before any entry names the target.
    if let Quiet::Never = quiet(&traffic.arrivals, None)? {
        bail!("{target} is reachable from web before any entry names it: nothing is enforced");
    }
    let key = layout::ip_key(IpNet::from(IpAddr::V4(TARGET)));
    let put = ip_put(IpNet::from(IpAddr::V4(TARGET)), plan.db);
    let (mut allowed, mut denied) = (Vec::new(), Vec::new());
    let (mut put_acks, mut delete_acks) = (Vec::new(), Vec::new());
    for k in 1..=events as u64 {
        if interrupted() {
            bail!("interrupted");
        }
        fake.renew(etcd)?;
        traffic.tag.store(k, Ordering::SeqCst);
        let t = Instant::now();
        etcd.write_all(std::slice::from_ref(&put), Some(fake.lease))?;
        put_acks.push(t.elapsed().as_secs_f64() * 1e3);
        let through = first_of(&traffic.arrivals, k)
            .ok_or_else(|| anyhow!("event {k}: nothing got through within {LIMIT:?} of the put"))?;
        allowed.push((through - t).as_secs_f64() * 1e3);

        traffic.tag.store(k | DELETED, Ordering::SeqCst);
        let t = Instant::now();
        etcd.write_all(&[Write::Delete(key.clone())], None)?;
        delete_acks.push(t.elapsed().as_secs_f64() * 1e3);
        let last = match quiet(&traffic.arrivals, Some(k | DELETED))? {
            Quiet::Never => {
                bail!("event {k}: datagrams still got through {LIMIT:?} after the delete")
            }
            Quiet::After(last) => last,
        };
        denied.push(last.map_or(0.0, |l| l.saturating_duration_since(t).as_secs_f64() * 1e3));
        if k % 10 == 0 || k == events as u64 {
            eprintln!(
                "bench kvstore: event {k}/{events}: put to allowed {:.1} ms, delete to denied \
                 {:.1} ms",
                allowed.last().copied().unwrap_or(0.0),
                denied.last().copied().unwrap_or(0.0)
            );
        }
    }
    let send_interval_us = traffic.stop();
    drop(xpf);
    let after_ack = allowed.iter().zip(&put_acks).map(|(a, k)| a - k).collect();
    let put_to_allowed_ms = Percentiles::of(allowed);
    Ok(LatencyReport {
        events,
        remote_entries: plan.remote_entries(),
        xpf_ready_ms,
        send_interval_us,
        met: put_to_allowed_ms.p99 <= LATENCY_TARGET_P99_MS,
        put_to_allowed_ms,
        delete_to_denied_ms: Percentiles::of(denied),
        put_ack_ms: Percentiles::of(put_acks),
        delete_ack_ms: Percentiles::of(delete_acks),
        ack_to_allowed_ms: Percentiles::of(after_ack),
        target_p99_ms: LATENCY_TARGET_P99_MS,
    })
}

/// The first arrival of a datagram tagged `tag`, within [`LIMIT`].
fn first_of(arrivals: &Receiver<(u64, Instant)>, tag: u64) -> Option<Instant> {
    let until = Instant::now() + LIMIT;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match arrivals.recv_timeout(left) {
            Ok((t, at)) if t == tag => return Some(at),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

/// How waiting for quiet ended.
enum Quiet {
    /// Datagrams kept arriving for [`LIMIT`].
    Never,
    /// Nothing arrived for [`QUIET`]; the last arrival tagged as asked,
    /// if any.
    After(Option<Instant>),
}

/// Waits until no datagram has arrived for [`QUIET`].
fn quiet(arrivals: &Receiver<(u64, Instant)>, tag: Option<u64>) -> Result<Quiet> {
    let until = Instant::now() + LIMIT;
    let mut last = None;
    let mut heard = Instant::now();
    while Instant::now() < until {
        let left = QUIET.saturating_sub(heard.elapsed());
        match arrivals.recv_timeout(left) {
            Ok((t, at)) => {
                heard = Instant::now();
                if Some(t) == tag {
                    last = Some(at);
                }
            }
            Err(RecvTimeoutError::Timeout) => return Ok(Quiet::After(last)),
            Err(RecvTimeoutError::Disconnected) => bail!("the receiver stopped"),
        }
    }
    Ok(Quiet::Never)
}

/// The sender and the receiver, on threads in their namespaces; stopped
/// when dropped.
struct Traffic {
    tag: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    arrivals: Receiver<(u64, Instant)>,
    sender: Option<JoinHandle<(u64, Duration)>>,
    receiver: Option<JoinHandle<()>>,
}

impl Traffic {
    fn start(outside: &str, from: &str, target: SocketAddr) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let tag = Arc::new(AtomicU64::new(0));
        let (tx, arrivals) = crossbeam_channel::unbounded();
        let (ready_tx, ready) = crossbeam_channel::bounded(2);
        let mut me = Self {
            tag: tag.clone(),
            stop: stop.clone(),
            arrivals,
            sender: None,
            receiver: None,
        };
        let (ns, flag, ok) = (outside.to_string(), stop.clone(), ready_tx.clone());
        me.receiver = Some(std::thread::spawn(move || {
            let bound = netns::enter(&ns)
                .map_err(|e| e.to_string())
                .and_then(|()| UdpSocket::bind(target).map_err(|e| e.to_string()));
            let sock = match bound {
                Ok(s) => s,
                Err(e) => {
                    let _ = ok.send(Err(format!("receiver in {ns}: {e}")));
                    return;
                }
            };
            let _ = sock.set_read_timeout(Some(Duration::from_millis(20)));
            let _ = ok.send(Ok(()));
            let mut buf = [0u8; 64];
            while !flag.load(Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    let at = Instant::now();
                    if let Some(b) = buf.get(..8).filter(|_| n >= 8) {
                        let t = u64::from_be_bytes(b.try_into().expect("8 bytes"));
                        if tx.send((t, at)).is_err() {
                            return;
                        }
                    }
                }
            }
        }));
        let (ns, flag) = (from.to_string(), stop);
        me.sender = Some(std::thread::spawn(move || {
            let sock = netns::enter(&ns)
                .map_err(|e| e.to_string())
                .and_then(|()| UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string()))
                .and_then(|s| s.connect(target).map(|()| s).map_err(|e| e.to_string()));
            let sock = match sock {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("sender in {ns}: {e}")));
                    return (0, Duration::ZERO);
                }
            };
            let _ = ready_tx.send(Ok(()));
            let (started, mut sent) = (Instant::now(), 0u64);
            let mut buf = [0u8; 32];
            while !flag.load(Ordering::Relaxed) {
                buf[..8].copy_from_slice(&tag.load(Ordering::SeqCst).to_be_bytes());
                // A denied datagram is dropped silently; errors are not
                // what is measured.
                let _ = sock.send(&buf);
                sent += 1;
                std::thread::sleep(SEND_EVERY);
            }
            (sent, started.elapsed())
        }));
        for _ in 0..2 {
            ready
                .recv()
                .map_err(|_| anyhow!("a traffic thread died"))?
                .map_err(|e| anyhow!(e))?;
        }
        Ok(me)
    }

    /// Stops both threads; the sender's mean interval in microseconds.
    fn stop(mut self) -> f64 {
        self.halt()
    }

    fn halt(&mut self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        let (sent, took) = self
            .sender
            .take()
            .map_or((0, Duration::ZERO), |h| h.join().unwrap_or_default());
        if let Some(h) = self.receiver.take() {
            let _ = h.join();
        }
        took.as_secs_f64() * 1e6 / sent.max(1) as f64
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.halt();
    }
}

/// A running `xpf run`, stopped (SIGTERM, then waited for) when dropped.
struct Running(Option<Xpf>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(x) = self.0.take() {
            if let Err(e) = x.stop() {
                eprintln!("bench kvstore: {e:#}");
            }
        }
    }
}

/// What `xpf run` may leave behind if it dies: its endpoints' namespaces
/// and its instance's pins and state, removed when dropped.
struct Leftovers {
    namespaces: Vec<String>,
    instance: String,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            if netns::exists(ns) {
                let _ = netns::delete(ns);
            }
        }
        for root in ["/sys/fs/bpf/xpf", "/run/xpf"] {
            let _ = std::fs::remove_dir_all(Path::new(root).join(&self.instance));
        }
    }
}
