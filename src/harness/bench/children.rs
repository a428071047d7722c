//! The xpf children a measurement drives: `xpf gen` in the sending
//! endpoint's namespace, `xpf sink` in the outside namespace (or, endpoint
//! to endpoint, in the destination endpoint's) and `xpf run` in the host
//! namespace (this thread's). Each is the same binary as this one, reports
//! in JSON lines on its standard output, and is stopped by a signal (the
//! generator stops by itself after the run's duration). Around the
//! generator, the CPU the run costs is measured (see `cpu`).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::cpu::{self, Tasks, Window};
use super::plan::{dst_addr, Destination, Point, DST6, GEN_CPU, PORT, SRC6};
use super::run::{Bench, Measured};
use crate::sys::process;

impl Bench<'_> {
    /// Runs the sink where `p`'s traffic goes (the outside, or the
    /// destination endpoint) and the generator for `seconds`, measuring
    /// the CPU of `tasks` and the sink; returns the offered and delivered
    /// rates, the sink's summary and the CPU window.
    pub(super) fn gen_to_sink(
        &self,
        p: &Point,
        seconds: u64,
        mut tasks: Tasks,
    ) -> Result<Measured> {
        let sink_ns = match p.to {
            Destination::Outside => self.bed.outside.name().to_string(),
            Destination::Endpoint => self.dst_ns(),
        };
        let mut sink = process::spawn_piped_in(
            &sink_ns,
            &self.exe,
            [
                "sink",
                "--dev",
                "eth0",
                "--output",
                "json",
                "--interval",
                "1",
                "--duration",
                &(seconds + 3).to_string(),
            ],
        )
        .context("starting xpf sink")?;
        let lines = spawn_line_reader(sink.stdout.take().expect("piped"));
        // The idle baseline takes longer than the sink needs to bind.
        tasks.sink = Some(sink.id());
        let latest = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let gen = self.gen_measured(p, seconds, tasks, &mut || {
            while let Ok(l) = lines.try_recv() {
                if let Ok(v) = serde_json::from_str::<Value>(&l) {
                    if let Some(pps) = v["pps"].as_f64() {
                        if let Ok(mut s) = latest.lock() {
                            *s = format!("{:.3} Mpps at the sink", pps / 1e6);
                        }
                    }
                    if v.get("received").is_some() && v.get("latency_us").is_some() {
                        // The summary came early; keep it for below.
                        if let Ok(mut s) = latest.lock() {
                            *s = l.clone();
                        }
                    }
                }
            }
            latest.lock().map(|s| s.clone()).unwrap_or_default()
        });
        std::thread::sleep(Duration::from_millis(500));
        let _ = process::signal(&sink, libc::SIGINT);
        let status = sink.wait()?;
        let (gen, cpu) = gen?;
        let mut summary = None;
        for l in lines.try_iter() {
            if let Ok(v) = serde_json::from_str::<Value>(&l) {
                if v.get("received").is_some() && v.get("latency_us").is_some() {
                    summary = Some(v);
                }
            }
        }
        let summary = match summary {
            Some(s) => s,
            None => bail!("xpf sink printed no summary (exit {status})"),
        };
        let received = summary["received"].as_u64().unwrap_or(0);
        // Frames the sink's socket could not take were delivered by the
        // path but not counted: say so, it is the sink's limit, not the
        // path's.
        let notes = summary["socket_drops"]
            .as_u64()
            .filter(|d| *d > 0)
            .map(|d| format!("the sink's socket dropped {d} frames"));
        Ok(Measured {
            offered: gen.pps,
            delivered: received as f64 / gen.seconds,
            sink: Some(summary),
            cpu,
            notes,
            ..Measured::default()
        })
    }

    /// [`Bench::gen`] with the run's CPU measured around it: the idle
    /// baseline and `tasks`' runtimes just before, the generator's window
    /// and the runtimes again after.
    pub(super) fn gen_measured(
        &self,
        p: &Point,
        seconds: u64,
        tasks: Tasks,
        progress: &mut dyn FnMut() -> String,
    ) -> Result<(GenResult, Option<Window>)> {
        let before = cpu::before(tasks)?;
        let gen = self.gen(p, seconds, progress)?;
        let window = before.after(&gen);
        Ok((gen, window))
    }

    /// Runs the generator for `seconds`, printing a progress line a second
    /// from `progress`.
    pub(super) fn gen(
        &self,
        p: &Point,
        seconds: u64,
        progress: &mut dyn FnMut() -> String,
    ) -> Result<GenResult> {
        let dst = match p.to {
            Destination::Outside => {
                format!("{}-{}", dst_addr(0), dst_addr(p.ipcache.max(1) - 1))
            }
            Destination::Endpoint => DST6.to_string(),
        };
        let mut child = process::spawn_piped_in(
            &self.src_ns(),
            &self.exe,
            [
                "gen",
                "--dev",
                "eth0",
                "--dst-mac",
                "auto",
                "--output",
                "json",
                "--cpu",
                GEN_CPU,
                "--src",
                SRC6,
                "--dst",
                &dst,
                "--sport",
                "1024-65535",
                "--dport",
                &PORT.to_string(),
                "--flows",
                &p.flows.to_string(),
                "--size",
                &p.size.to_string(),
                "--rate",
                &p.rate.to_string(),
                "--duration",
                &seconds.to_string(),
            ],
        )
        .context("starting xpf gen")?;
        let t = Instant::now();
        let mut next = 1;
        loop {
            if let Some(status) = child.try_wait()? {
                let mut out = String::new();
                std::io::Read::read_to_string(&mut child.stdout.take().expect("piped"), &mut out)?;
                if !status.success() {
                    let mut err = String::new();
                    std::io::Read::read_to_string(
                        &mut child.stderr.take().expect("piped"),
                        &mut err,
                    )?;
                    bail!("xpf gen failed ({status}): {}", err.trim());
                }
                let v: Value = serde_json::from_str(out.trim().lines().last().unwrap_or("{}"))
                    .context("reading xpf gen's summary")?;
                return Ok(GenResult {
                    pps: v["pps"].as_f64().unwrap_or(0.0),
                    seconds: v["seconds"].as_f64().unwrap_or(seconds as f64).max(1e-3),
                    cpu: GenCpu::from_summary(&v),
                });
            }
            if t.elapsed() >= Duration::from_secs(next) {
                let line = progress();
                if !line.is_empty() && !line.starts_with('{') {
                    eprintln!("   t={next}s {line}");
                }
                next += 1;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// What `xpf gen` reported: the rate it sent at, over how long, and the
/// CPU spent meanwhile.
pub(super) struct GenResult {
    pub(super) pps: f64,
    pub(super) seconds: f64,
    pub(super) cpu: Option<GenCpu>,
}

/// The CPU time over the generator's sending window, from its summary.
pub(super) struct GenCpu {
    pub(super) window_ns: u64,
    /// The whole machine's busy time (`/proc/stat`).
    pub(super) busy_ns: u64,
    pub(super) busy_ns_by_cpu: Vec<u64>,
    /// The generator's own.
    pub(super) own_ns: u64,
}

impl GenCpu {
    fn from_summary(v: &Value) -> Option<Self> {
        Some(Self {
            window_ns: v["busy_window_ns"].as_u64()?,
            busy_ns: v["busy_cpu_ns"].as_u64()?,
            busy_ns_by_cpu: v["busy_cpu_ns_by_cpu"]
                .as_array()?
                .iter()
                .filter_map(Value::as_u64)
                .collect(),
            own_ns: v["own_cpu_ns"].as_u64()?,
        })
    }
}

/// A running `xpf run` child.
pub(super) struct Xpf {
    child: Child,
    pub(super) lines: crossbeam_channel::Receiver<String>,
    /// The last lines of its standard error. Read all along: it logs a
    /// line per API change, and a full pipe would stop its control loop.
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
}

/// Lines of `xpf run`'s standard error kept for an error message.
const STDERR_TAIL: usize = 20;

impl Xpf {
    /// Starts `exe` with `args` (an `xpf run` command line) and waits until
    /// it says it is ready.
    pub(super) fn start(exe: &Path, args: &[OsString]) -> Result<Self> {
        Self::start_in(None, exe, args)
    }

    /// [`Xpf::start`] inside the network namespace `netns` (`None`: this
    /// thread's).
    pub(super) fn start_in(netns: Option<&str>, exe: &Path, args: &[OsString]) -> Result<Self> {
        let child = match netns {
            Some(ns) => process::spawn_piped_in(ns, exe, args),
            None => process::spawn_piped(exe, args),
        };
        let mut child = child.context("starting xpf run")?;
        let lines = spawn_line_reader(child.stdout.take().expect("piped"));
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            match lines.recv_timeout(Duration::from_millis(200)) {
                Ok(l) if l.trim() == "xpf: ready" => break,
                Ok(_) => {}
                Err(crossbeam_channel::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                    if let Some(status) = child.try_wait()? {
                        let mut err = String::new();
                        std::io::Read::read_to_string(
                            &mut child.stderr.take().expect("piped"),
                            &mut err,
                        )?;
                        bail!("xpf run exited ({status}): {}", err.trim());
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    bail!("xpf run did not get ready");
                }
            }
        }
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let tail = stderr_tail.clone();
        let err = child.stderr.take().expect("piped");
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Ok(mut t) = tail.lock() {
                    if t.len() == STDERR_TAIL {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            }
        });
        Ok(Self {
            child,
            lines,
            stderr_tail,
        })
    }

    /// Its process id.
    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, wait, and the final counters.
    pub(super) fn stop(mut self) -> Result<Value> {
        let _ = process::signal(&self.child, libc::SIGTERM);
        let status = self.child.wait()?;
        let rest: Vec<String> = self.lines.iter().collect();
        let text = rest.join("\n");
        let start = text
            .find("\n{")
            .map(|i| i + 1)
            .or_else(|| text.starts_with('{').then_some(0));
        match start {
            Some(i) if status.success() => Ok(serde_json::from_str(&text[i..])?),
            _ => {
                let tail = self
                    .stderr_tail
                    .lock()
                    .map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n"))
                    .unwrap_or_default();
                bail!("xpf run ended with {status} and no final counters; it said:\n{tail}")
            }
        }
    }
}

fn spawn_line_reader(
    out: impl std::io::Read + Send + 'static,
) -> crossbeam_channel::Receiver<String> {
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}
