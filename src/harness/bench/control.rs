//! The control-plane side of a measurement: what clients of `xpf run`'s
//! API do while the traffic flows. Each is a function run on its own
//! thread of the benchmark process, and stops when told or when the
//! daemon goes:
//!
//! - [`apply_updates`] (kind `xpf-updates`): [`RELOADS_PER_SEC`] reloads
//!   (the reload policy flipped before each, so each recompiles) and
//!   [`UPSERTS_PER_SEC`] ipcache upserts, each paced by the clock from the
//!   start: a call that is late goes at once, so a client that cannot keep
//!   up runs flat out and the rate it reached is what is reported. The
//!   upserts go in calls of [`BATCH`] entries (each call one publish) and
//!   are /128s under [`RUNTIME_BASE`](super::plan::RUNTIME_BASE)
//!   with the labels of an existing identity (so they change the ipcache
//!   only), and past [`RUNTIME_WINDOW`] each one deletes the oldest,
//!   keeping the table's size flat.
//! - [`monitor`] (kind `xpf-monitor`): `GET /v1/monitor?type=all`, every
//!   line read and counted, lost events added up.
//! - [`probe_latency`]: single upserts, deletes and reloads one after the
//!   other, each timed. An update is answered once every worker enforces
//!   it, so a call's duration is its latency to enforcement.

use std::ffi::OsString;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use serde_json::{json, Value};

use super::children::Xpf;
use super::config::write_reload_policy;
use super::plan::{runtime_prefix, Kind, Point, RELOADS_PER_SEC, RUNTIME_WINDOW, UPSERTS_PER_SEC};
use super::run::{label, Bench};
use crate::control::client;
use crate::harness::report::{MonitorLoad, Spread, UpdateLatency, UpdateLoad};

/// Threads that send the upserts (and their deletes).
const UPSERT_THREADS: u64 = 2;
/// Entries per upsert call: 10k a second is 100 calls of 100, each
/// applied in one publish (an integration batches what it learns).
const BATCH: u64 = 100;
/// The labels of the runtime entries: those of the first rule's
/// destinations, an identity every point has.
const LABELS: (&str, &str) = ("svc", "s0");

/// A call that was answered 200: how long it took, and the daemon's
/// `applied_in_us`.
struct Answered {
    call: Duration,
    applied_us: f64,
}

/// Calls `method path` and times it; anything but a 200 is an error
/// saying what was asked and what came back.
fn timed(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Answered, String> {
    let t = Instant::now();
    match client::call(socket, method, path, body) {
        Ok((200, v)) => Ok(Answered {
            call: t.elapsed(),
            applied_us: v["applied_in_us"].as_f64().unwrap_or(f64::NAN),
        }),
        Ok((status, v)) => Err(format!(
            "{method} {path}: {status} {}",
            v["error"].as_str().unwrap_or("")
        )),
        Err(e) => Err(format!("{method} {path}: {e}")),
    }
}

fn upsert(socket: &Path, i: u64) -> Result<Answered, String> {
    let body = json!({ "prefix": runtime_prefix(i), "labels": { LABELS.0: LABELS.1 } });
    timed(socket, "PUT", "/v1/ipcache", Some(&body))
}

fn delete(socket: &Path, i: u64) -> Result<Answered, String> {
    let body = json!({ "prefix": runtime_prefix(i) });
    timed(socket, "DELETE", "/v1/ipcache", Some(&body))
}

/// Upserts entries `first..first + BATCH` in one call.
fn upsert_batch(socket: &Path, first: u64) -> Result<Answered, String> {
    let entries: Vec<Value> = (first..first + BATCH)
        .map(|i| json!({ "prefix": runtime_prefix(i), "labels": { LABELS.0: LABELS.1 } }))
        .collect();
    timed(
        socket,
        "PUT",
        "/v1/ipcache",
        Some(&json!({ "entries": entries })),
    )
}

/// Deletes entries `first..first + BATCH` in one call.
fn delete_batch(socket: &Path, first: u64) -> Result<Answered, String> {
    let prefixes: Vec<String> = (first..first + BATCH).map(runtime_prefix).collect();
    timed(
        socket,
        "DELETE",
        "/v1/ipcache",
        Some(&json!({ "prefixes": prefixes })),
    )
}

/// Flips the reload policy to `version` and reloads.
fn reload(socket: &Path, policy: &Path, version: u64) -> Result<Answered, String> {
    write_reload_policy(policy, version)
        .map_err(|e| format!("writing {}: {e}", policy.display()))?;
    timed(socket, "POST", "/v1/reload", None)
}

/// Sleeps until `due`; false if `stop` came first.
fn sleep_until(due: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= due {
            return true;
        }
        std::thread::sleep((due - now).min(Duration::from_millis(20)));
    }
}

/// What the update threads did.
#[derive(Default)]
struct Tally {
    reloads: u64,
    upserts: u64,
    deletes: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn count(&mut self, r: Result<Answered, String>, ok: fn(&mut Tally)) {
        match r {
            Ok(_) => ok(self),
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }

    fn add(&mut self, o: Tally) {
        self.reloads += o.reloads;
        self.upserts += o.upserts;
        self.deletes += o.deletes;
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }
}

/// Applies reloads and upserts at the asked rates through the API at
/// `socket` until `stop`; returns the rates reached and the first error,
/// if any. `policy` is the reload policy's file.
pub(super) fn apply_updates(
    socket: &Path,
    policy: &Path,
    stop: &AtomicBool,
) -> (UpdateLoad, Option<String>) {
    let start = Instant::now();
    let next = AtomicU64::new(0);
    let mut tally = Tally::default();
    std::thread::scope(|s| {
        let reloads = s.spawn(|| {
            let mut t = Tally::default();
            let every = Duration::from_secs(1) / RELOADS_PER_SEC as u32;
            for k in 1.. {
                if !sleep_until(start + every * (k - 1), stop) {
                    break;
                }
                t.count(reload(socket, policy, u64::from(k)), |t| t.reloads += 1);
            }
            t
        });
        let upserts: Vec<_> = (0..UPSERT_THREADS)
            .map(|_| {
                s.spawn(|| {
                    let mut t = Tally::default();
                    // The window in whole batches, so a delete names
                    // exactly the entries of an earlier upsert.
                    let window = RUNTIME_WINDOW.div_ceil(BATCH) * BATCH;
                    loop {
                        let first = next.fetch_add(1, Ordering::Relaxed) * BATCH;
                        let due =
                            start + Duration::from_secs_f64(first as f64 / UPSERTS_PER_SEC as f64);
                        if !sleep_until(due, stop) {
                            break;
                        }
                        t.count(upsert_batch(socket, first), |t| t.upserts += BATCH);
                        if first >= window {
                            t.count(delete_batch(socket, first - window), |t| t.deletes += BATCH);
                        }
                    }
                    t
                })
            })
            .collect();
        for h in std::iter::once(reloads).chain(upserts) {
            match h.join() {
                Ok(t) => tally.add(t),
                Err(_) => tally.add(Tally {
                    errors: 1,
                    first_error: Some("an update thread panicked".into()),
                    ..Tally::default()
                }),
            }
        }
    });
    let seconds = start.elapsed().as_secs_f64().max(1e-3);
    let load = UpdateLoad {
        seconds,
        reloads_asked_per_sec: RELOADS_PER_SEC as f64,
        reloads_per_sec: tally.reloads as f64 / seconds,
        upserts_asked_per_sec: UPSERTS_PER_SEC as f64,
        upserts_per_sec: tally.upserts as f64 / seconds,
        deletes_per_sec: tally.deletes as f64 / seconds,
        errors: tally.errors,
    };
    (load, tally.first_error)
}

/// Reads every monitor line from the API at `socket` until the daemon
/// goes; counts them and the events it says were lost.
pub(super) fn monitor(socket: &Path) -> Result<MonitorLoad, String> {
    let (mut lines, mut lost) = (0, 0);
    let read = client::stream(socket, "/v1/monitor?type=all", |line| {
        lines += 1;
        if line.contains("lost_events") {
            if let Ok(v) = serde_json::from_str::<Value>(line) {
                lost += v["lost_events"]["num_events_lost"].as_u64().unwrap_or(0);
            }
        }
        true
    });
    match read {
        Ok(Ok(())) => Ok(MonitorLoad {
            lines,
            lost_events: lost,
        }),
        Ok(Err((status, v))) => Err(format!("monitor refused: {status} {v}")),
        Err(e) => Err(format!("monitor: {e}")),
    }
}

/// The timed calls of [`probe_latency`], by kind of update.
#[derive(Default)]
pub(super) struct Probe {
    pub(super) upsert: Vec<(f64, f64)>,
    pub(super) delete: Vec<(f64, f64)>,
    pub(super) reload: Vec<(f64, f64)>,
    pub(super) errors: u64,
    pub(super) first_error: Option<String>,
}

impl Probe {
    /// Keeps a call's (call ms, applied ms), or counts its error; false
    /// on an error.
    fn keep(
        &mut self,
        r: Result<Answered, String>,
        into: fn(&mut Probe) -> &mut Vec<(f64, f64)>,
    ) -> bool {
        match r {
            Ok(a) => {
                into(self).push((a.call.as_secs_f64() * 1e3, a.applied_us / 1e3));
                true
            }
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
                false
            }
        }
    }
}

/// After `warmup` (the traffic's flows established), times `samples`
/// upserts, then their deletes, then up to `samples` reloads, one call at
/// a time with a short pause between, until `deadline` or `stop`.
pub(super) fn probe_latency(
    socket: &Path,
    policy: &Path,
    samples: u64,
    warmup: Duration,
    deadline: Instant,
    stop: &AtomicBool,
) -> Probe {
    let mut probe = Probe::default();
    let going = |pause: Duration| {
        std::thread::sleep(pause);
        !stop.load(Ordering::Relaxed) && Instant::now() < deadline
    };
    if !sleep_until(Instant::now() + warmup, stop) {
        return probe;
    }
    eprintln!("   timing {samples} upserts, deletes and reloads (one at a time)");
    let mut upserted = 0;
    while upserted < samples && going(Duration::from_millis(5)) {
        if probe.keep(upsert(socket, upserted), |p| &mut p.upsert) {
            upserted += 1;
        } else {
            break;
        }
    }
    for i in 0..upserted {
        if !going(Duration::from_millis(5)) {
            break;
        }
        probe.keep(delete(socket, i), |p| &mut p.delete);
    }
    for k in 1..=samples {
        if !going(Duration::from_millis(20)) {
            break;
        }
        probe.keep(reload(socket, policy, k), |p| &mut p.reload);
    }
    eprintln!(
        "   timed {} upserts, {} deletes, {} reloads; {} errors{}",
        probe.upsert.len(),
        probe.delete.len(),
        probe.reload.len(),
        probe.errors,
        probe
            .first_error
            .as_deref()
            .map_or(String::new(), |e| format!(" (first: {e})"))
    );
    probe
}

/// The update-latency target on a call's p99, in milliseconds.
const TARGET_MS: f64 = 50.0;

impl Bench<'_> {
    /// Times single updates at `p` (see [`probe_latency`]) on an `xpf run`
    /// with traffic flowing for `seconds`: up to `samples` of each kind,
    /// as many reloads as fit.
    pub(super) fn update_latency(
        &self,
        p: &Point,
        seconds: u64,
        samples: u64,
    ) -> Result<Vec<UpdateLatency>> {
        if (self.interrupted)() {
            bail!("interrupted: stopping and removing the testbed");
        }
        let label = label(Kind::Xpf, p);
        eprintln!("== update latency, {label}");
        let socket = self.api_socket();
        let policy = self.reload_policy_path();
        let mut args: Vec<OsString> = ["run", "--output", "json", "--config"]
            .map(OsString::from)
            .into();
        args.push(self.config(p, "hybrid", true)?.into());
        args.extend(["--api".into(), socket.clone().into()]);
        let xpf = Xpf::start(&self.exe, &args)?;
        let stop = AtomicBool::new(false);
        // The calls stop a little before the generator does, so every one
        // of them meets traffic.
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let (result, probe) = std::thread::scope(|s| {
            let probe = s.spawn(|| {
                let warmup = Duration::from_millis(1500);
                probe_latency(&socket, &policy, samples, warmup, deadline, &stop)
            });
            let result = self.gen_to_sink(p, seconds, super::cpu::Tasks::default());
            stop.store(true, Ordering::Relaxed);
            (result, probe.join())
        });
        let fin = xpf.stop();
        let delivered = result?.delivered;
        fin?;
        let probe = probe.map_err(|_| anyhow!("the latency probe panicked"))?;
        let mut during = format!("{label}, {:.3} Mpps delivered", delivered / 1e6);
        if let Some(e) = &probe.first_error {
            during.push_str(&format!("; {} calls failed, first: {e}", probe.errors));
        }
        let rows = [
            ("upsert", &probe.upsert),
            ("delete", &probe.delete),
            ("reload", &probe.reload),
        ];
        Ok(rows
            .into_iter()
            .filter_map(|(update, timed)| {
                let calls: Vec<f64> = timed.iter().map(|t| t.0).collect();
                let applied: Vec<f64> = timed.iter().map(|t| t.1).collect();
                let call_ms = Spread::of(&calls)?;
                Some(UpdateLatency {
                    update: update.into(),
                    during: during.clone(),
                    samples: calls.len() as u64,
                    call_ms,
                    // Every 200 answer says applied_in_us; were it missing,
                    // the call's own time would bound it.
                    applied_ms: Spread::of(&applied).unwrap_or(call_ms),
                    target: Some(format!("p99 ≤ {TARGET_MS:.0} ms")),
                    met: Some(call_ms.p99 <= TARGET_MS),
                })
            })
            .collect())
    }
}
