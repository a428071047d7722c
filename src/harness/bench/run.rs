//! One measurement: a run kind at a point of the parameter space. Sets up
//! what the kind needs on the endpoint's host-side veth (an XDP program of
//! `kernel`, an nftables ruleset, or `xpf run` in one of its modes), drives
//! the generator (and the sink, where frames get through) with, for the
//! control-plane kinds, a client of xpf's API on other threads meanwhile,
//! measures the CPU it all costs (`cpu`), and prints the run's row of the
//! results table.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Result};
use serde_json::Value;

use super::children::Xpf;
use super::control;
use super::cpu::{Tasks, Window};
use super::plan::{short, Destination, Kind, Point};
use crate::harness::report::{Latency, MonitorLoad, Params, Run, UpdateLoad};
use crate::harness::testbed::Testbed;

/// The benchmark's testbed, its private directory of configs, and how it
/// runs each measurement.
pub(super) struct Bench<'a> {
    pub(super) tag: String,
    pub(super) bed: Testbed,
    /// The xpf binary, run as `xpf run`, `xpf gen` and `xpf sink`.
    pub(super) exe: PathBuf,
    pub(super) dir: tempfile::TempDir,
    pub(super) seconds: u64,
    /// Whether a stop (Ctrl-C) has been asked for.
    pub(super) interrupted: &'a dyn Fn() -> bool,
}

impl Bench<'_> {
    pub(super) fn measure(&self, kind: Kind, p: Point) -> Result<Run> {
        if (self.interrupted)() {
            bail!("interrupted: stopping and removing the testbed");
        }
        let label = label(kind, &p);
        eprintln!("== {label}");
        let m = match kind {
            Kind::XdpDrop => self.xdp_drop(&p)?,
            Kind::XdpRedirect => self.xdp_redirect(&p)?,
            Kind::XdpPass => self.xdp_pass(&p)?,
            Kind::Nft => self.nft(&p)?,
            Kind::RxDrop => self.with_xpf(kind, &p, "rxdrop", false, Side::None)?,
            Kind::Fwd => self.with_xpf(kind, &p, "forward", true, Side::None)?,
            Kind::Xpf => self.with_xpf(kind, &p, "userspace", true, Side::None)?,
            Kind::XpfHybrid => self.with_xpf(kind, &p, "hybrid", true, Side::None)?,
            Kind::XpfUpdates => self.with_xpf(kind, &p, "userspace", true, Side::Updates)?,
            Kind::XpfMonitor => self.with_xpf(kind, &p, "userspace", true, Side::Monitor)?,
        };
        let (offered, delivered, sink) = (m.offered, m.delivered, m.sink);
        let (cpu_ns_per_packet, cpu) = match &m.cpu {
            Some(w) => {
                let (ns, used) = w.per_packet(delivered * w.secs());
                (ns, Some(used))
            }
            None => (None, None),
        };
        let mut notes = m.notes;
        if let Some(c) = cpu.as_ref().filter(|c| c.idle_busy_cpus > BUSY_BEFORE) {
            let warning = format!(
                "CPU figure unreliable: {:.2} CPUs were busy before the run started",
                c.idle_busy_cpus
            );
            eprintln!("   {warning}");
            notes = Some(match notes {
                Some(n) => format!("{n}; {warning}"),
                None => warning,
            });
        }
        let latency_us = sink.as_ref().and_then(|s| {
            let l = &s["latency_us"];
            Some(Latency {
                p50: l["p50"].as_f64()?,
                p99: l["p99"].as_f64()?,
                p999: l["p999"].as_f64()?,
            })
        });
        let latency_curve = sink
            .as_ref()
            .and_then(|s| s["latency_curve"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|pt| Some((pt.get(0)?.as_f64()?, pt.get(1)?.as_f64()?)))
            .collect();
        let run = Run {
            name: kind.name().into(),
            label,
            delivered_pps: delivered,
            offered_pps: offered,
            loss: if offered > 0.0 {
                (1.0 - delivered / offered).max(0.0)
            } else {
                0.0
            },
            latency_us,
            latency_curve,
            params: Params {
                ipcache_entries: p.ipcache,
                rules: p.rules,
                flows: p.flows,
                frame_size: p.size,
                workers: p.workers,
                rate_pps: p.rate,
                ipcache_updates_per_sec: p.churn,
                to: p.to,
            },
            cpu_ns_per_packet,
            notes,
            cpu,
            updates: m.updates,
            monitor: m.monitor,
        };
        let lat = |f: fn(&Latency) -> f64| {
            run.latency_us
                .as_ref()
                .map_or("-".into(), |l| format!("{:.1}", f(l)))
        };
        println!(
            "{:<52} {:>9.3} {:>10.3} {:>6.1}% {:>8} {:>8} {:>8} {:>8}",
            run.label,
            run.offered_pps / 1e6,
            run.delivered_pps / 1e6,
            run.loss * 100.0,
            lat(|l| l.p50),
            lat(|l| l.p99),
            lat(|l| l.p999),
            run.cpu_ns_per_packet
                .map_or("-".into(), |ns| format!("{ns:.0}"))
        );
        if let (Some(notes), true) = (&run.notes, run.updates.is_some() || run.monitor.is_some()) {
            // What the API client reached, beside the rate it cost.
            println!("    {notes}");
        }
        std::io::stdout().flush().ok();
        Ok(run)
    }

    fn with_xpf(
        &self,
        kind: Kind,
        p: &Point,
        mode: &str,
        to_sink: bool,
        side: Side,
    ) -> Result<Measured> {
        let cfg = self.config(p, mode, side == Side::Updates)?;
        let mut args: Vec<OsString> = [
            "run",
            "--output",
            "json",
            "--stats-interval",
            "1",
            "--config",
        ]
        .map(OsString::from)
        .into();
        args.push(cfg.into());
        if p.churn > 0 {
            args.extend(["--ipcache-churn".into(), p.churn.to_string().into()]);
        }
        let socket = self.api_socket();
        if side != Side::None {
            args.extend(["--api".into(), socket.clone().into()]);
        }
        let policy = self.reload_policy_path();
        let xpf = Xpf::start(&self.exe, &args)?;
        let mut tasks = Tasks {
            xpf: Some(xpf.pid()),
            ..Tasks::default()
        };
        if kind.threaded_napi() {
            match self.threaded_napi(p, &crate::world::default_ifname("src")) {
                Ok(napi) => tasks.napi = napi,
                Err(e) => {
                    let _ = xpf.stop();
                    return Err(e);
                }
            }
        }
        let stop = AtomicBool::new(false);
        let (mut m, fin) = std::thread::scope(|s| {
            let updates = (side == Side::Updates)
                .then(|| s.spawn(|| control::apply_updates(&socket, &policy, &stop)));
            let monitor = (side == Side::Monitor).then(|| s.spawn(|| control::monitor(&socket)));
            let result = if to_sink {
                self.gen_to_sink(p, self.seconds, tasks)
            } else {
                // Progress from xpf's own per-second rate lines.
                let mut last = String::new();
                self.gen_measured(p, self.seconds, tasks, &mut || {
                    for l in xpf.lines.try_iter() {
                        if let Some(rates) = l.strip_prefix("xpf: pps: ") {
                            last = rates.rsplit(" | ").next().unwrap_or(rates).to_string();
                        }
                    }
                    last.clone()
                })
                .map(|(g, cpu)| Measured {
                    offered: g.pps,
                    cpu,
                    ..Measured::default()
                })
            };
            stop.store(true, Ordering::Relaxed);
            let updates = updates.map(|h| h.join());
            // The monitor reads until xpf goes.
            let fin = xpf.stop();
            let monitor = monitor.map(|h| h.join());
            let mut m = result?;
            match updates {
                Some(Ok((load, first_error))) => {
                    m.notes = Some(format!(
                        "API updates: {:.1} reloads/s, {:.0} upserts/s, {:.0} deletes/s \
                         (asked {:.0} reloads/s, {:.0} upserts/s), {} errors{}",
                        load.reloads_per_sec,
                        load.upserts_per_sec,
                        load.deletes_per_sec,
                        load.reloads_asked_per_sec,
                        load.upserts_asked_per_sec,
                        load.errors,
                        first_error.map_or(String::new(), |e| format!(" (first: {e})"))
                    ));
                    m.updates = Some(load);
                }
                Some(Err(_)) => bail!("the update client panicked"),
                None => {}
            }
            match monitor {
                Some(Ok(Ok(load))) => {
                    m.notes = Some(format!(
                        "monitor attached: read {} lines, {} events lost",
                        load.lines, load.lost_events
                    ));
                    m.monitor = Some(load);
                }
                Some(Ok(Err(e))) => bail!("{e}"),
                Some(Err(_)) => bail!("the monitor client panicked"),
                None => {}
            }
            Ok::<_, anyhow::Error>((m, fin?))
        })?;
        if !to_sink {
            let rx: u64 = fin["workers"]
                .as_array()
                .map_or(0, |w| w.iter().filter_map(|w| w["rx"].as_u64()).sum());
            m.delivered = rx as f64 / self.seconds as f64;
        }
        Ok(m)
    }

    /// Where `xpf run` serves its API when a measurement talks to it.
    pub(super) fn api_socket(&self) -> PathBuf {
        self.dir.path().join("api.sock")
    }
}

/// Busy CPUs at idle (just before a run's traffic) above which its CPU
/// figure is flagged: something else was using the machine, and what it
/// does during the window cannot be told from the run's own work.
const BUSY_BEFORE: f64 = 0.2;

/// What a client does through xpf's API during a measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Side {
    None,
    Updates,
    Monitor,
}

/// What one measurement found.
#[derive(Default)]
pub(super) struct Measured {
    pub(super) offered: f64,
    pub(super) delivered: f64,
    /// The sink's summary, where frames got through to one.
    pub(super) sink: Option<Value>,
    /// The CPU it cost, before dividing by what was delivered.
    pub(super) cpu: Option<Window>,
    pub(super) notes: Option<String>,
    pub(super) updates: Option<UpdateLoad>,
    pub(super) monitor: Option<MonitorLoad>,
}

/// A run's label: its kind and point, e.g. "xpf ipcache=100k rules=1k
/// flows=1k 86B w1", with " e2e" for endpoint to endpoint.
pub(super) fn label(kind: Kind, p: &Point) -> String {
    format!(
        "{} ipcache={} rules={} flows={} {}B w{}{}{}{}",
        kind.name(),
        short(p.ipcache),
        short(p.rules),
        short(p.flows),
        p.size,
        p.workers,
        if p.rate > 0 {
            format!(" @{}pps", short(p.rate / 1000 * 1000))
        } else {
            String::new()
        },
        if p.churn > 0 {
            format!(" churn={}/s", short(p.churn))
        } else {
            String::new()
        },
        match p.to {
            Destination::Outside => "",
            Destination::Endpoint => " e2e",
        },
    )
}
