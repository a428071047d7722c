//! `xpf bench datapath`: the packet-rate benchmark. One invocation, one
//! topology, one generator and frame mix for every run kind, so every ratio
//! it prints compares runs measured minutes apart on the same machine.
//!
//! Topology (inside a private testbed, see `crate::harness::testbed`): endpoint
//! `src` sends with `xpf gen` (AF_XDP, copy mode) from its `eth0`; its
//! host-side veth is where each run kind does its work; allowed frames go
//! into the host stack and on to the outside namespace, where `xpf sink`
//! counts them on its `eth0` (AF_PACKET) and a blackhole route discards
//! them. Traffic is IPv6 UDP from 2001:db8:10::2 to /128 ipcache entries in
//! 2001:db8:1000::/36: the 1M-entry point needs more addresses than the
//! IPv4 benchmarking range has. The smallest frame that carries the
//! generator's sequence number and timestamp over IPv6 is 86 bytes.
//!
//! Run kinds: `xdp-drop` (XDP_DROP on the veth: the ceiling for getting
//! frames off it), `afxdp-rxdrop` (xpf with `mode: rxdrop`), `afxdp-fwd`
//! (`mode: forward`: AF_XDP in, reinject out, no policy work), `kernel-nft`
//! (no XDP; the kernel forwards, with an nftables ruleset equivalent to the
//! policy) and `xpf` (the filter). Delivered rates come from the sink, or
//! for the two drop kinds from the dropping program's counter.

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::config::Config;
use crate::datapath::endpoint_specs;
use crate::datapath::programs::XdpDrop;
use crate::datapath::settings::AttachMode;
use crate::endpoint;
use crate::harness::report::{self, Latency, Params, Ratio, Report, Run};
use crate::harness::testbed::Testbed;
use crate::sys::netns;

#[derive(clap::Args, Debug)]
pub(super) struct BenchArgs {
    /// One middle point of each dimension (a few minutes) instead of the
    /// sweeps over ipcache size, rules, flows, frame size and workers.
    #[arg(long)]
    quick: bool,
    /// Seconds each measurement sends for [default: 5, or 3 with --quick].
    #[arg(long)]
    seconds: Option<u64>,
    /// Where latest.json, latest.md and the plots are written.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
}

/// Where the ipcache entries (and so the traffic's destinations) live.
const DST_BASE: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x1000, 0, 0, 0, 0, 0);
const DST_ROUTE: &str = "2001:db8:1000::/36";
const SRC6: &str = "2001:db8:10::2";
/// The port every rule allows.
const PORT: u16 = 9;
/// CPUs: the worker(s) first, the generator and the sink on the last one.
const GEN_CPU: &str = "1";
const MIN_FRAME: u64 = 86;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    XdpDrop,
    RxDrop,
    Fwd,
    Nft,
    Xpf,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::XdpDrop => "xdp-drop",
            Kind::RxDrop => "afxdp-rxdrop",
            Kind::Fwd => "afxdp-fwd",
            Kind::Nft => "kernel-nft",
            Kind::Xpf => "xpf",
        }
    }
}

/// One point of the parameter space.
#[derive(Clone, Copy, Debug)]
struct Point {
    ipcache: u64,
    rules: u64,
    flows: u64,
    size: u64,
    workers: u64,
    rate: u64,
    churn: u64,
}

const MID: Point = Point {
    ipcache: 100_000,
    rules: 1_000,
    flows: 1_000,
    size: MIN_FRAME,
    workers: 1,
    rate: 0,
    churn: 0,
};

fn short(n: u64) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

struct Bench {
    tag: String,
    bed: Testbed,
    exe: PathBuf,
    dir: tempfile::TempDir,
    seconds: u64,
    signals: super::signals::StopSignals,
}

pub(super) fn bench(args: BenchArgs) -> Result<()> {
    // Ctrl-C reaches the children too (one process group): they stop and
    // clean up, this process sees their failure and unwinds, removing the
    // testbed. Blocked here, it cannot kill this process half-way.
    let signals = super::signals::StopSignals::new()?;
    let started = Instant::now();
    let started_at = utc_now();
    let tag = format!("xb{}", std::process::id());
    let bed = Testbed::build(
        &tag,
        &["198.18.0.1".parse()?, "2001:db8::1".parse()?],
        &[],
        &[DST_ROUTE.parse()?],
    )?;
    // The outside discards what it receives, quietly (no ICMP errors back).
    run_ip(&[
        "-n",
        bed.outside.name(),
        "-6",
        "route",
        "add",
        "blackhole",
        DST_ROUTE,
    ])?;
    netns::enter(bed.host.name())?;
    let b = Bench {
        tag,
        bed,
        exe: std::env::current_exe().context("finding the xpf binary")?,
        dir: tempfile::tempdir()?,
        seconds: args
            .seconds
            .unwrap_or(if args.quick { 3 } else { 5 })
            .max(1),
        signals,
    };

    let mut runs = Vec::new();
    println!(
        "{:<44} {:>9} {:>10} {:>7} {:>8} {:>8} {:>8}",
        "run", "offered", "delivered", "loss", "p50 µs", "p99 µs", "p99.9 µs"
    );
    for kind in [Kind::XdpDrop, Kind::RxDrop] {
        runs.push(b.measure(kind, MID)?);
    }
    // The runs the main targets compare, interleaved and repeated: on a
    // shared machine one sample each is not a ratio worth quoting.
    let best_of = |kinds: &[Kind], by: fn(&Run) -> f64, what: &str, p: Point| -> Result<Vec<Run>> {
        let mut rounds: Vec<Vec<Run>> = kinds.iter().map(|_| Vec::new()).collect();
        for _ in 0..ROUNDS {
            for (k, r) in kinds.iter().zip(rounds.iter_mut()) {
                r.push(b.measure(*k, p)?);
            }
        }
        Ok(rounds.into_iter().map(|r| median(r, by, what)).collect())
    };
    let max_rate = best_of(
        &[Kind::Fwd, Kind::Nft, Kind::Xpf],
        |r| r.delivered_pps / 1e6,
        "delivered Mpps",
        MID,
    )?;
    let half = (max_rate[2].delivered_pps / 2.0).max(1000.0) as u64;
    runs.extend(max_rate);
    runs.extend(best_of(
        &[Kind::Fwd, Kind::Xpf],
        |r| r.latency_us.as_ref().map_or(f64::MAX, |l| l.p99),
        "p99 µs",
        Point { rate: half, ..MID },
    )?);
    runs.push(b.measure(
        Kind::Xpf,
        Point {
            churn: 10_000,
            ..MID
        },
    )?);

    // One step down each axis even in --quick, so every plot has two
    // points; the full run adds the far ends, frame sizes and 2 workers.
    let (ipcaches, rules_, flows_): (&[u64], &[u64], &[u64]) = if args.quick {
        (&[1_000], &[10], &[1])
    } else {
        (&[1_000, 1_000_000], &[10, 10_000], &[1, 100_000])
    };
    for &ipcache in ipcaches {
        for kind in [Kind::Nft, Kind::Xpf] {
            runs.push(b.measure(kind, Point { ipcache, ..MID })?);
        }
    }
    for &rules in rules_ {
        for kind in [Kind::Nft, Kind::Xpf] {
            runs.push(b.measure(kind, Point { rules, ..MID })?);
        }
    }
    for &flows in flows_ {
        for kind in [Kind::Fwd, Kind::Xpf] {
            runs.push(b.measure(kind, Point { flows, ..MID })?);
        }
    }
    if !args.quick {
        for size in [512, 1500] {
            for kind in [Kind::Fwd, Kind::Xpf] {
                runs.push(b.measure(kind, Point { size, ..MID })?);
            }
        }
        runs.push(b.measure(Kind::Xpf, Point { workers: 2, ..MID })?);
    }

    let ratios = ratios(&runs);
    println!();
    for r in &ratios {
        println!(
            "{:<52} {:>6.2}  {}",
            r.name,
            r.value,
            match (&r.target, r.met) {
                (Some(t), Some(true)) => format!("target {t}: met"),
                (Some(t), Some(false)) => format!("target {t}: MISSED"),
                _ => String::new(),
            }
        );
    }
    let report = Report {
        machine: report::machine(),
        quick: args.quick,
        started_at,
        duration_secs: started.elapsed().as_secs_f64(),
        runs,
        ratios,
    };
    let written = report::write(&args.out, &report)?;
    println!();
    println!("wrote {}", written.describe());
    drop(b);
    Ok(())
}

/// Rounds of the interleaved afxdp-fwd / xpf comparison.
const ROUNDS: usize = 3;

/// The run with the median `by`, noting every round's figure.
fn median(mut runs: Vec<Run>, by: fn(&Run) -> f64, what: &str) -> Run {
    runs.sort_by(|a, b| by(a).total_cmp(&by(b)));
    let all: Vec<String> = runs.iter().map(|r| format!("{:.3}", by(r))).collect();
    let mut m = runs.swap_remove(runs.len() / 2);
    m.notes = Some(format!(
        "median {what} of {} interleaved rounds: {}",
        all.len(),
        all.join(", ")
    ));
    m
}

fn find<'a>(runs: &'a [Run], kind: Kind, p: &Point) -> Option<&'a Run> {
    runs.iter().find(|r| {
        r.name == kind.name()
            && r.params.ipcache_entries == p.ipcache
            && r.params.rules == p.rules
            && r.params.flows == p.flows
            && r.params.frame_size == p.size
            && r.params.workers == p.workers
            && r.params.rate_pps == p.rate
            && r.params.ipcache_updates_per_sec == p.churn
    })
}

/// The ratios the issue sets targets for, between runs of this invocation.
fn ratios(runs: &[Run]) -> Vec<Ratio> {
    let mut out = Vec::new();
    type Target = Option<(&'static str, fn(f64) -> bool)>;
    let mut ratio = |name: &str,
                     a: Option<&Run>,
                     b: Option<&Run>,
                     value: fn(&Run, &Run) -> f64,
                     target: Target| {
        if let (Some(a), Some(b)) = (a, b) {
            let v = value(a, b);
            out.push(Ratio {
                name: name.into(),
                numerator: a.label.clone(),
                denominator: b.label.clone(),
                value: v,
                target: target.map(|(t, _)| t.to_string()),
                met: target.map(|(_, ok)| ok(v)),
            });
        }
    };
    let pps: fn(&Run, &Run) -> f64 = |a, b| a.delivered_pps / b.delivered_pps.max(1.0);
    let xpf = find(runs, Kind::Xpf, &MID);
    ratio(
        "xpf / afxdp-fwd (delivered pps)",
        xpf,
        find(runs, Kind::Fwd, &MID),
        pps,
        Some(("≥ 0.90", |v| v >= 0.9)),
    );
    ratio(
        "xpf / kernel-nft (delivered pps)",
        xpf,
        find(runs, Kind::Nft, &MID),
        pps,
        Some(("≥ 1.0", |v| v >= 1.0)),
    );
    ratio(
        "afxdp-fwd / afxdp-rxdrop",
        find(runs, Kind::Fwd, &MID),
        find(runs, Kind::RxDrop, &MID),
        pps,
        None,
    );
    ratio(
        "afxdp-rxdrop / xdp-drop",
        find(runs, Kind::RxDrop, &MID),
        find(runs, Kind::XdpDrop, &MID),
        pps,
        None,
    );
    let half = runs
        .iter()
        .find(|r| r.name == "xpf" && r.params.rate_pps > 0)
        .map(|r| r.params.rate_pps);
    if let Some(rate) = half {
        let p99: fn(&Run, &Run) -> f64 = |a, b| {
            let l = |r: &Run| r.latency_us.as_ref().map_or(f64::NAN, |l| l.p99);
            l(a) / l(b)
        };
        ratio(
            "p99 latency at half rate, xpf / afxdp-fwd",
            find(runs, Kind::Xpf, &Point { rate, ..MID }),
            find(runs, Kind::Fwd, &Point { rate, ..MID }),
            p99,
            Some(("≤ 2.0", |v| v <= 2.0)),
        );
    }
    for (kind, name) in [(Kind::Xpf, "xpf"), (Kind::Nft, "kernel-nft")] {
        let mid = find(runs, kind, &MID);
        let small_ipcache = find(
            runs,
            kind,
            &Point {
                ipcache: 1_000,
                ..MID
            },
        );
        ratio(
            &format!("{name}: 100k / 1k ipcache entries"),
            mid,
            small_ipcache,
            pps,
            None,
        );
        let few_rules = find(runs, kind, &Point { rules: 10, ..MID });
        ratio(&format!("{name}: 1k / 10 rules"), mid, few_rules, pps, None);
    }
    ratio(
        "xpf under 10k ipcache updates/s / xpf",
        find(
            runs,
            Kind::Xpf,
            &Point {
                churn: 10_000,
                ..MID
            },
        ),
        xpf,
        pps,
        None,
    );
    for (kind, name) in [(Kind::Xpf, "xpf"), (Kind::Nft, "kernel-nft")] {
        ratio(
            &format!("{name}: 1M / 1k ipcache entries"),
            find(
                runs,
                kind,
                &Point {
                    ipcache: 1_000_000,
                    ..MID
                },
            ),
            find(
                runs,
                kind,
                &Point {
                    ipcache: 1_000,
                    ..MID
                },
            ),
            pps,
            if kind == Kind::Xpf {
                Some(("≥ 0.90", |v| v >= 0.9))
            } else {
                None
            },
        );
        ratio(
            &format!("{name}: 10k / 10 rules"),
            find(
                runs,
                kind,
                &Point {
                    rules: 10_000,
                    ..MID
                },
            ),
            find(runs, kind, &Point { rules: 10, ..MID }),
            pps,
            None,
        );
    }
    out
}

impl Bench {
    fn src_ns(&self) -> String {
        format!("{}-src", self.tag)
    }

    /// Writes (once per ipcache size and rule count) the config and policy
    /// for a point; returns its path.
    fn config(&self, p: &Point, mode: &str) -> Result<PathBuf> {
        let policies = self
            .dir
            .path()
            .join(format!("policies-{}-{}.yaml", p.ipcache, p.rules));
        if !policies.exists() {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&policies)?);
            writeln!(f, "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: src}}\nspec:\n  endpointSelector: {{matchLabels: {{app: src}}}}\n  egress:")?;
            for r in 0..p.rules {
                writeln!(
                    f,
                    "    - toEndpoints: [{{matchLabels: {{svc: s{r}}}}}]\n      toPorts: [{{ports: [{{port: \"{PORT}\", protocol: UDP}}]}}]"
                )?;
            }
        }
        let entries = self
            .dir
            .path()
            .join(format!("ipcache-{}-{}.yaml", p.ipcache, p.rules));
        if !entries.exists() {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&entries)?);
            for i in 0..p.ipcache {
                writeln!(
                    f,
                    "  - {{prefix: \"{}/128\", labels: {{svc: s{}}}}}",
                    dst_addr(i),
                    i % p.rules
                )?;
            }
        }
        let cpus: Vec<String> = (0..p.workers).map(|c| c.to_string()).collect();
        let path = self.dir.path().join(format!(
            "xpf-{}-{}-{mode}-{}.yaml",
            p.ipcache, p.rules, p.workers
        ));
        let mut text = format!(
            "endpoints:\n  - {{name: src, netns: {}, labels: {{app: src}}, ipv4: 198.18.10.2, ipv6: \"{SRC6}\"}}\nhost_addresses: [198.18.0.1, \"2001:db8::1\"]\npolicies: [{}]\ndatapath: {{cpus: [{}], mode: {mode}}}\nipcache:\n",
            self.src_ns(),
            policies.file_name().and_then(|n| n.to_str()).unwrap_or_default(),
            cpus.join(", "),
        );
        text.push_str(&std::fs::read_to_string(&entries)?);
        std::fs::write(&path, text)?;
        Ok(path)
    }

    fn measure(&self, kind: Kind, p: Point) -> Result<Run> {
        if self.signals.fired() {
            bail!("interrupted: stopping and removing the testbed");
        }
        let label = format!(
            "{} ipcache={} rules={} flows={} {}B w{}{}{}",
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
        );
        eprintln!("== {label}");
        let (offered, delivered, sink) = match kind {
            Kind::XdpDrop => self.xdp_drop(&p)?,
            Kind::Nft => self.nft(&p)?,
            Kind::RxDrop => self.with_xpf(&p, "rxdrop", false)?,
            Kind::Fwd => self.with_xpf(&p, "forward", true)?,
            Kind::Xpf => self.with_xpf(&p, "filter", true)?,
        };
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
            },
            notes: None,
        };
        let lat = |f: fn(&Latency) -> f64| {
            run.latency_us
                .as_ref()
                .map_or("-".into(), |l| format!("{:.1}", f(l)))
        };
        println!(
            "{:<44} {:>9.3} {:>10.3} {:>6.1}% {:>8} {:>8} {:>8}",
            run.label,
            run.offered_pps / 1e6,
            run.delivered_pps / 1e6,
            run.loss * 100.0,
            lat(|l| l.p50),
            lat(|l| l.p99),
            lat(|l| l.p999)
        );
        std::io::stdout().flush().ok();
        Ok(run)
    }

    /// The endpoint on its own (xpf not running): for xdp-drop and nft.
    fn bare_endpoint(&self, p: &Point) -> Result<endpoint::Endpoint> {
        let cfg = Config::load(&self.config(p, "filter")?)?;
        let spec = endpoint_specs(&cfg.world).remove(0);
        Ok(endpoint::create(spec)?)
    }

    fn xdp_drop(&self, p: &Point) -> Result<(f64, f64, Option<Value>)> {
        let ep = self.bare_endpoint(p)?;
        let result = (|| {
            let prog = XdpDrop::load()?;
            let _link = prog.attach(&ep.spec.host_ifname, ep.host_ifindex, AttachMode::Native)?;
            let before = prog.dropped()?;
            let t = Instant::now();
            let gen = self.gen(p, &mut || {
                let n = prog.dropped().unwrap_or(0) - before;
                format!(
                    "{:.3} Mpps dropped",
                    n as f64 / t.elapsed().as_secs_f64() / 1e6
                )
            })?;
            let dropped = prog.dropped()? - before;
            Ok::<_, anyhow::Error>((gen.pps, dropped as f64 / gen.seconds, None))
        })();
        ep.teardown()?;
        result
    }

    fn nft(&self, p: &Point) -> Result<(f64, f64, Option<Value>)> {
        let ep = self.bare_endpoint(p)?;
        let ruleset = self
            .dir
            .path()
            .join(format!("nft-{}-{}.nft", p.ipcache, p.rules));
        write_nft(&ruleset, &ep.spec.host_ifname, p)?;
        let result = (|| {
            let out = Command::new("nft")
                .arg("-f")
                .arg(&ruleset)
                .output()
                .context("running nft (install nftables)")?;
            if !out.status.success() {
                bail!("nft -f: {}", String::from_utf8_lossy(&out.stderr).trim());
            }
            self.gen_to_sink(p)
        })();
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", "xpf_bench"])
            .output();
        ep.teardown()?;
        result
    }

    fn with_xpf(&self, p: &Point, mode: &str, to_sink: bool) -> Result<(f64, f64, Option<Value>)> {
        let cfg = self.config(p, mode)?;
        let mut cmd = Command::new(&self.exe);
        cmd.args([
            "run",
            "--output",
            "json",
            "--stats-interval",
            "1",
            "--config",
        ])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        if p.churn > 0 {
            cmd.args(["--ipcache-churn", &p.churn.to_string()]);
        }
        let xpf = Xpf::start(cmd)?;
        let result = if to_sink {
            self.gen_to_sink(p)
        } else {
            // Progress from xpf's own per-second rate lines.
            let mut last = String::new();
            self.gen(p, &mut || {
                for l in xpf.lines.try_iter() {
                    if let Some(rates) = l.strip_prefix("xpf: pps: ") {
                        last = rates.rsplit(" | ").next().unwrap_or(rates).to_string();
                    }
                }
                last.clone()
            })
            .map(|g| (g.pps, 0.0, None))
        };
        let fin = xpf.stop()?;
        let (offered, mut delivered, sink) = result?;
        if !to_sink {
            let rx: u64 = fin["workers"]
                .as_array()
                .map_or(0, |w| w.iter().filter_map(|w| w["rx"].as_u64()).sum());
            delivered = rx as f64 / self.seconds as f64;
        }
        Ok((offered, delivered, sink))
    }

    /// Runs the sink in the outside namespace and the generator; returns
    /// (offered pps, delivered pps, the sink's summary).
    fn gen_to_sink(&self, p: &Point) -> Result<(f64, f64, Option<Value>)> {
        let mut sink = Command::new("nsenter")
            .arg(format!(
                "--net={}",
                netns::path(self.bed.outside.name()).display()
            ))
            .arg(&self.exe)
            .args([
                "sink",
                "--dev",
                "eth0",
                "--output",
                "json",
                "--interval",
                "1",
            ])
            .args(["--duration", &(self.seconds + 3).to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting xpf sink")?;
        let lines = spawn_line_reader(sink.stdout.take().expect("piped"));
        std::thread::sleep(Duration::from_millis(300));
        let latest = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let gen = self.gen(p, &mut || {
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
        // SAFETY: signalling our own child (nsenter execs the sink).
        unsafe { libc::kill(sink.id() as i32, libc::SIGINT) };
        let status = sink.wait()?;
        let gen = gen?;
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
        Ok((gen.pps, received as f64 / gen.seconds, Some(summary)))
    }

    /// Runs the generator for the run's duration, printing a progress line
    /// a second from `progress`.
    fn gen(&self, p: &Point, progress: &mut dyn FnMut() -> String) -> Result<GenResult> {
        let last = dst_addr(p.ipcache.max(1) - 1);
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", netns::path(&self.src_ns()).display()))
            .arg(&self.exe)
            .args([
                "gen",
                "--dev",
                "eth0",
                "--dst-mac",
                "auto",
                "--output",
                "json",
                "--cpu",
                GEN_CPU,
            ])
            .args(["--src", SRC6, "--dst", &format!("{}-{last}", dst_addr(0))])
            .args(["--sport", "1024-65535", "--dport", &PORT.to_string()])
            .args([
                "--flows",
                &p.flows.to_string(),
                "--size",
                &p.size.to_string(),
            ])
            .args([
                "--rate",
                &p.rate.to_string(),
                "--duration",
                &self.seconds.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
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
                    seconds: v["seconds"]
                        .as_f64()
                        .unwrap_or(self.seconds as f64)
                        .max(1e-3),
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

struct GenResult {
    pps: f64,
    seconds: f64,
}

/// A running `xpf run` child.
struct Xpf {
    child: Child,
    lines: crossbeam_channel::Receiver<String>,
}

impl Xpf {
    fn start(mut cmd: Command) -> Result<Self> {
        let mut child = cmd.spawn().context("starting xpf run")?;
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
        Ok(Self { child, lines })
    }

    /// SIGTERM, wait, and the final counters.
    fn stop(mut self) -> Result<Value> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait()?;
        let rest: Vec<String> = self.lines.iter().collect();
        let text = rest.join("\n");
        let start = text
            .find("\n{")
            .map(|i| i + 1)
            .or_else(|| text.starts_with('{').then_some(0));
        match start {
            Some(i) if status.success() => Ok(serde_json::from_str(&text[i..])?),
            _ => bail!("xpf run ended with {status} and no final counters"),
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

fn dst_addr(i: u64) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(DST_BASE) + 1 + u128::from(i))
}

/// The nftables equivalent of the benchmark policy, as an expert would
/// write it: one concatenated set of allowed (destination, port) pairs,
/// conntrack first, default drop for the endpoint's traffic only.
fn write_nft(path: &Path, ifname: &str, p: &Point) -> Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(f, "table inet xpf_bench {{")?;
    writeln!(
        f,
        "  set allowed6 {{\n    type ipv6_addr . inet_service\n    size {}\n    elements = {{",
        p.ipcache.max(1) + 16
    )?;
    for i in 0..p.ipcache {
        let sep = if i + 1 == p.ipcache { "" } else { "," };
        writeln!(f, "      {} . {PORT}{sep}", dst_addr(i))?;
    }
    writeln!(f, "    }}\n  }}")?;
    writeln!(
        f,
        "  chain forward {{\n    type filter hook forward priority filter; policy accept;\n    iifname != \"{ifname}\" accept\n    ct state established,related accept\n    meta l4proto udp ip6 daddr . udp dport @allowed6 accept\n    drop\n  }}\n}}"
    )?;
    Ok(())
}

fn run_ip(args: &[&str]) -> Result<()> {
    crate::sys::ip::run(args)?;
    Ok(())
}

fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
