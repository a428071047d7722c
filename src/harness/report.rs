//! Benchmark results: the model, and the files a benchmark run leaves behind.
//!
//! A [`Report`] is everything one benchmark invocation measured: the machine
//! it ran on, one [`Run`] per measured configuration (its kind, label,
//! parameters, offered and delivered rates, loss, latency) and the
//! [`Ratio`]s between runs of that same invocation (xpf against the bare
//! AF_XDP forwarder, and so on). The serde field names are the JSON schema
//! scripts read; renaming one is a breaking change.
//!
//! [`write`] turns a report into files in one directory (created if needed;
//! files of an earlier report there are replaced):
//!
//! | file | contents |
//! |---|---|
//! | `latest.json` | the [`Report`] itself, pretty-printed; `null` for an absent latency, CPU figure or note; a run's `cpu` (how its CPU figure was measured), `updates` or `monitor` (the control-plane load it ran under) only where there was one |
//! | `latest.md` | a title with the machine line; a table of runs (label, offered and delivered Mpps, loss %, p50/p99/p99.9 µs, CPU ns per packet, notes); a table of ratios with their target and whether it was met; the control-plane load of the runs that had one, and the update latencies with their target; links to the plots below (relative paths) |
//! | `pps_vs_ipcache.png` | delivered Mpps against ipcache entries (log x), one line per run kind |
//! | `pps_vs_rules.png` | delivered Mpps against policy rules, one line per run kind |
//! | `pps_vs_flows.png` | delivered Mpps against concurrent flows, one line per run kind |
//! | `latency.png` | latency (µs, log) against percentile on a "nines" scale (0, 90, 99, 99.9, ...), one line per run with a [`Run::latency_curve`] |
//! | `cpu_per_packet.png` | CPU ns per delivered packet, one bar per run kind, destination and rate at the report's common point |
//!
//! A plot is drawn only when the runs hold what it needs: a sweep plot gets a
//! line for each run kind with at least two values of the swept parameter
//! among the runs whose other parameters sit at that kind's baseline (see
//! the `plot` module); the latency plot needs at least one latency curve;
//! the CPU plot at least one run with a CPU figure. A
//! plot file the current report does not produce is removed, so the
//! directory never shows a stale plot beside fresh numbers.
//!
//! Plot text (titles, axes, legends) needs a TrueType font, loaded at run
//! time from `XPF_REPORT_FONT` or the usual DejaVu Sans paths (Debian:
//! fonts-dejavu-core). Without one the plots are still drawn, with no text,
//! and [`Written::font`] is `None` and `latest.md` says so.

mod control;
mod markdown;
mod plot;
#[cfg(test)]
mod synthetic;

pub use control::{MonitorLoad, Spread, UpdateLatency, UpdateLoad};
#[cfg(test)]
pub(crate) use synthetic::synthetic_report;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// The run kinds [`Run::name`] takes, from the bare kernel baseline up to xpf.
pub mod kind {
    /// XDP program that drops every frame: the ceiling of the veth path.
    pub const XDP_DROP: &str = "xdp-drop";
    /// AF_XDP socket that receives and drops: the ceiling of the socket path.
    pub const AFXDP_RXDROP: &str = "afxdp-rxdrop";
    /// AF_XDP forwarder without policy: what xpf costs on top of the rings.
    pub const AFXDP_FWD: &str = "afxdp-fwd";
    /// The same policy as nftables rules in the kernel stack.
    pub const KERNEL_NFT: &str = "kernel-nft";
    /// xpf itself.
    pub const XPF: &str = "xpf";
    /// xpf while a client applies policy reloads and ipcache upserts
    /// through its API.
    pub const XPF_UPDATES: &str = "xpf-updates";
    /// xpf with a monitor (`xpf monitor`) attached.
    pub const XPF_MONITOR: &str = "xpf-monitor";
    /// XDP program that rewrites the Ethernet header and redirects to the
    /// destination endpoint's veth: the in-kernel ceiling endpoint to
    /// endpoint.
    pub const XDP_REDIRECT: &str = "xdp-redirect";
    /// XDP program that passes every frame to the host stack: the
    /// in-kernel ceiling towards the outside.
    pub const XDP_PASS: &str = "xdp-pass";
    /// xpf with `datapath: {mode: hybrid}`.
    pub const XPF_HYBRID: &str = "xpf-hybrid";
    /// Every kind, in the order tables and plots list them.
    pub const ALL: [&str; 10] = [
        XDP_DROP,
        XDP_REDIRECT,
        XDP_PASS,
        AFXDP_RXDROP,
        AFXDP_FWD,
        KERNEL_NFT,
        XPF,
        XPF_HYBRID,
        XPF_UPDATES,
        XPF_MONITOR,
    ];
}

/// Where a run's traffic goes: through the host stack to the outside
/// namespace, or from one endpoint to another on the same host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Destination {
    #[default]
    Outside,
    Endpoint,
}

impl Destination {
    pub fn as_str(self) -> &'static str {
        match self {
            Destination::Outside => "outside",
            Destination::Endpoint => "endpoint",
        }
    }
}

/// Latency percentiles of one run, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
}

impl Latency {
    /// Percentiles of a histogram whose unit is `us_per_unit` microseconds
    /// (0.001 for a histogram of nanoseconds); `None` when it is empty.
    pub fn from_histogram(h: &Histogram<u64>, us_per_unit: f64) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        let at = |q: f64| h.value_at_quantile(q) as f64 * us_per_unit;
        Some(Latency {
            p50: at(0.50),
            p99: at(0.99),
            p999: at(0.999),
        })
    }
}

/// Percentiles [`latency_curve`] samples, up to the 99.999th.
pub const CURVE_PERCENTILES: [f64; 21] = [
    0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 75.0, 80.0, 85.0, 90.0, 95.0, 97.5, 99.0, 99.5,
    99.9, 99.95, 99.99, 99.995, 99.999,
];

/// (percentile, microseconds) points of a histogram for [`Run::latency_curve`],
/// at [`CURVE_PERCENTILES`] but only as deep as the sample count supports
/// (the 99.99th of a thousand samples would just repeat the maximum).
pub fn latency_curve(h: &Histogram<u64>, us_per_unit: f64) -> Vec<(f64, f64)> {
    let n = h.len() as f64;
    CURVE_PERCENTILES
        .iter()
        .filter(|&&p| n * (1.0 - p / 100.0) >= 1.0 - 1e-9)
        .map(|&p| (p, h.value_at_percentile(p) as f64 * us_per_unit))
        .collect()
}

/// The parameters a run was measured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Params {
    pub ipcache_entries: u64,
    pub rules: u64,
    pub flows: u64,
    pub frame_size: u64,
    pub workers: u64,
    /// Offered rate asked of the generator; 0 = as fast as it can.
    pub rate_pps: u64,
    pub ipcache_updates_per_sec: u64,
    /// Where the traffic went (absent in reports from before it varied:
    /// the outside).
    #[serde(default)]
    pub to: Destination,
}

/// The CPU a run used, measured over the generator's sending window (see
/// `crate::harness::bench` for the method).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CpuUse {
    /// The window: the generator's first frame to its last completion.
    pub window_secs: f64,
    /// Busy CPU seconds over the window, all CPUs together (`/proc/stat`
    /// user + nice + system + irq + softirq).
    pub busy_secs: f64,
    /// The same, CPU by CPU (CPU 0 first).
    pub busy_secs_by_cpu: Vec<f64>,
    /// CPUs' worth of busy time measured just before the window, with
    /// everything set up but no traffic; `busy_secs` less this times the
    /// window is what [`Run::cpu_ns_per_packet`] divides.
    pub idle_busy_cpus: f64,
    /// Nanoseconds per delivered packet by group of tasks (`gen`, `sink`,
    /// `xpf`, `napi` threads, `ksoftirqd`), from each task's scheduler
    /// runtime, which includes softirq work done in its context. Over the
    /// generator's whole life (its own: the window); not subtracted.
    pub tasks_ns_per_packet: BTreeMap<String, f64>,
}

/// One measured configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// The run kind, one of [`kind::ALL`].
    pub name: String,
    /// Human label, e.g. "xpf ipcache=100k rules=1k flows=1k 64B w1".
    pub label: String,
    pub delivered_pps: f64,
    pub offered_pps: f64,
    /// Fraction of the offered packets not delivered, 0..1.
    pub loss: f64,
    pub latency_us: Option<Latency>,
    /// (percentile 0..100, microseconds) points for the latency plot; may be empty.
    pub latency_curve: Vec<(f64, f64)>,
    pub params: Params,
    /// CPU time of everything involved (generator, sink, xpf, NAPI and
    /// softirq work, on every CPU) per delivered packet, in nanoseconds,
    /// less the idle baseline; `None` when not measured or nothing was
    /// delivered. Details in [`Run::cpu`].
    #[serde(default)]
    pub cpu_ns_per_packet: Option<f64>,
    pub notes: Option<String>,
    /// How [`Run::cpu_ns_per_packet`] was arrived at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuUse>,
    /// The API updates applied during the run (kind `xpf-updates`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updates: Option<UpdateLoad>,
    /// The monitor attached during the run (kind `xpf-monitor`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor: Option<MonitorLoad>,
}

/// The machine a report was measured on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: u32,
    pub kernel: String,
    pub memory_gib: f64,
}

/// A ratio between two runs of the same invocation, e.g. xpf / afxdp-fwd.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ratio {
    pub name: String,
    /// Label of the run on top.
    pub numerator: String,
    /// Label of the run below.
    pub denominator: String,
    pub value: f64,
    /// The target, as text (e.g. ">= 0.5").
    pub target: Option<String>,
    /// Whether `value` meets `target`; `None` without a target.
    pub met: Option<bool>,
}

/// Everything one benchmark invocation measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub machine: Machine,
    /// Short runs: numbers are indicative only.
    pub quick: bool,
    /// RFC 3339, UTC (see [`crate::control::clock::rfc3339_utc`]).
    pub started_at: String,
    pub duration_secs: f64,
    pub runs: Vec<Run>,
    pub ratios: Vec<Ratio>,
    /// How long single updates took to be enforced, by kind of update.
    #[serde(default)]
    pub update_latency: Vec<UpdateLatency>,
}

/// The files [`write`] produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    pub json: PathBuf,
    pub markdown: PathBuf,
    /// The plots drawn, in the order `latest.md` shows them.
    pub plots: Vec<PathBuf>,
    /// The font the plot text was set in; `None`: no font was found and the
    /// plots have no text (titles, axes and legends are missing).
    pub font: Option<PathBuf>,
}

impl Written {
    /// One line for a person: the files, and a warning when the plots have
    /// no text.
    pub fn describe(&self) -> String {
        let mut files = vec![
            self.json.display().to_string(),
            self.markdown.display().to_string(),
        ];
        files.extend(self.plots.iter().map(|p| p.display().to_string()));
        let mut line = files.join(", ");
        if !self.plots.is_empty() && self.font.is_none() {
            line.push_str(
                " (plots without text: no font found; install fonts-dejavu-core \
                 or set XPF_REPORT_FONT)",
            );
        }
        line
    }
}

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{}: cannot create the report directory: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: cannot write: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: cannot remove the stale plot: {source}", path.display())]
    RemoveStale {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot encode the report as JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{}: cannot draw the plot: {message}", path.display())]
    Plot { path: PathBuf, message: String },
}

/// The machine this process runs on: CPU model (`/proc/cpuinfo`), usable
/// cores, kernel release (`uname`) and memory (`/proc/meminfo`). Anything
/// unreadable reads as "unknown" (or 0 GiB) rather than failing a report.
pub fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    Machine {
        cpu_model: cpu_model(&cpuinfo).unwrap_or_else(|| "unknown".to_string()),
        cores: std::thread::available_parallelism()
            .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
            .unwrap_or(1),
        kernel: kernel_release().unwrap_or_else(|| "unknown".to_string()),
        memory_gib: memory_gib(&meminfo).unwrap_or(0.0),
    }
}

/// The first CPU model line of `/proc/cpuinfo`: `model name` on x86, with
/// the keys other architectures use as fallbacks.
fn cpu_model(cpuinfo: &str) -> Option<String> {
    ["model name", "Model", "Hardware", "cpu model", "Processor"]
        .iter()
        .find_map(|key| {
            cpuinfo.lines().find_map(|line| {
                let (k, v) = line.split_once(':')?;
                let v = v.trim();
                (k.trim() == *key && !v.is_empty()).then(|| v.to_string())
            })
        })
}

/// `MemTotal` of `/proc/meminfo` in GiB, to two decimals.
fn memory_gib(meminfo: &str) -> Option<f64> {
    let kib: f64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((kib / (1024.0 * 1024.0) * 100.0).round() / 100.0)
}

fn kernel_release() -> Option<String> {
    // SAFETY: utsname is arrays of c_char, for which all zeroes is valid.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `uts` is a live, writable utsname; uname() fills it and keeps
    // no pointer to it.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return None;
    }
    let release: Vec<u8> = uts
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    let release = String::from_utf8_lossy(&release).trim().to_string();
    (!release.is_empty()).then_some(release)
}

/// Writes `latest.json`, the plots and `latest.md` into `dir` (created if
/// missing) and returns their paths. See the module doc for what each holds.
pub fn write(dir: &Path, report: &Report) -> Result<Written, ReportError> {
    write_with_font(dir, report, plot::load_font())
}

/// [`write`] with the font decided by the caller, so tests can take the
/// no-font path on a machine that has one.
fn write_with_font(
    dir: &Path,
    report: &Report,
    font: Option<&Path>,
) -> Result<Written, ReportError> {
    std::fs::create_dir_all(dir).map_err(|source| ReportError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;

    let json = dir.join("latest.json");
    let mut text = serde_json::to_string_pretty(report)?;
    text.push('\n');
    write_file(&json, &text)?;

    let plots = plot::draw_all(dir, report, font.is_some())?;
    for stale in plot::FILES {
        let path = dir.join(stale);
        if !plots.iter().any(|p| p.file == stale) && path.exists() {
            std::fs::remove_file(&path)
                .map_err(|source| ReportError::RemoveStale { path, source })?;
        }
    }

    let markdown = dir.join("latest.md");
    write_file(&markdown, &markdown::render(report, &plots, font))?;

    Ok(Written {
        json,
        markdown,
        plots: plots.iter().map(|p| dir.join(p.file)).collect(),
        font: font.map(Path::to_path_buf),
    })
}

fn write_file(path: &Path, contents: &str) -> Result<(), ReportError> {
    std::fs::write(path, contents).map_err(|source| ReportError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";

    fn assert_png(path: &Path) {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(bytes.len() > 1000, "{} is tiny", path.display());
        assert!(bytes.starts_with(PNG_MAGIC), "{} is no PNG", path.display());
    }

    #[test]
    fn writes_json_markdown_and_every_plot() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("bench");
        let report = synthetic_report();
        let written = write(&out, &report).unwrap();

        assert_eq!(written.json, out.join("latest.json"));
        assert_eq!(written.markdown, out.join("latest.md"));
        let names: Vec<_> = written
            .plots
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "pps_vs_ipcache.png",
                "pps_vs_rules.png",
                "pps_vs_flows.png",
                "latency.png",
                "cpu_per_packet.png"
            ]
        );
        for p in &written.plots {
            assert_png(p);
        }

        let back: Report =
            serde_json::from_str(&std::fs::read_to_string(&written.json).unwrap()).unwrap();
        assert_eq!(back, report);

        let md = std::fs::read_to_string(&written.markdown).unwrap();
        for name in &names {
            assert!(md.contains(&format!("]({name})")), "no link to {name}");
        }
    }

    #[test]
    fn plots_without_a_font_have_no_text_but_exist() {
        // The font family the plots use is registered only by load_font(),
        // so any text drawn on this path fails the draw.
        let dir = tempfile::tempdir().unwrap();
        let written = write_with_font(dir.path(), &synthetic_report(), None).unwrap();
        assert_eq!(written.plots.len(), 5);
        for p in &written.plots {
            assert_png(p);
        }
        assert_eq!(written.font, None);
        let md = std::fs::read_to_string(&written.markdown).unwrap();
        assert!(md.contains("without text"), "{md}");
    }

    #[test]
    fn plots_appear_only_with_their_points_and_stale_ones_go() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &synthetic_report()).unwrap();
        assert!(dir.path().join("pps_vs_rules.png").exists());

        // Baselines alone: one point per kind, no curves, no CPU figures:
        // no plot at all.
        let mut report = synthetic_report();
        report
            .runs
            .retain(|r| r.name != kind::XPF && r.name != kind::KERNEL_NFT);
        for r in &mut report.runs {
            r.latency_curve.clear();
            r.cpu_ns_per_packet = None;
        }
        let written = write(dir.path(), &report).unwrap();
        assert!(written.plots.is_empty());
        for f in plot::FILES {
            assert!(!dir.path().join(f).exists(), "stale {f} left");
        }
        let md = std::fs::read_to_string(&written.markdown).unwrap();
        assert!(!md.contains(".png"), "{md}");
    }

    #[test]
    fn empty_report_writes_without_plots() {
        let dir = tempfile::tempdir().unwrap();
        let mut report = synthetic_report();
        report.runs.clear();
        report.ratios.clear();
        let written = write(dir.path(), &report).unwrap();
        assert!(written.plots.is_empty());
        assert!(std::fs::read_to_string(&written.markdown)
            .unwrap()
            .contains("No runs"));
    }

    #[test]
    fn machine_fields_parse() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n";
        assert_eq!(
            cpu_model(cpuinfo).as_deref(),
            Some("Intel(R) Xeon(R) CPU @ 2.20GHz")
        );
        assert_eq!(
            cpu_model("processor : 0\nHardware : BCM2835\n").as_deref(),
            Some("BCM2835")
        );
        assert_eq!(cpu_model("processor : 0\n"), None);
        assert_eq!(
            memory_gib("MemTotal:       16318412 kB\nMemFree: 1 kB\n"),
            Some(15.56)
        );
        assert_eq!(memory_gib("MemFree: 1 kB\n"), None);

        let m = machine();
        assert!(!m.cpu_model.is_empty() && !m.kernel.is_empty() && m.cores >= 1);
    }

    #[test]
    fn latency_from_a_histogram_of_nanoseconds() {
        let mut h = Histogram::<u64>::new(3).unwrap();
        assert_eq!(Latency::from_histogram(&h, 0.001), None);
        assert!(latency_curve(&h, 0.001).is_empty());
        for v in 1..=10_000u64 {
            h.record(v * 1000).unwrap();
        }
        let l = Latency::from_histogram(&h, 0.001).unwrap();
        assert!((l.p50 - 5000.0).abs() < 5.0, "{l:?}");
        assert!((l.p99 - 9900.0).abs() < 10.0, "{l:?}");
        assert!((l.p999 - 9990.0).abs() < 10.0, "{l:?}");
        let curve = latency_curve(&h, 0.001);
        // 10k samples support the 99.99th, not the 99.995th.
        assert_eq!(curve.last().unwrap().0, 99.99);
        assert!(curve.windows(2).all(|w| w[0].1 <= w[1].1));
    }
}
