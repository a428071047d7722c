//! The PNG plots of a report, and which runs each one shows.
//!
//! # Which runs make a sweep line
//!
//! A benchmark sweeps one parameter at a time around a baseline (ipcache
//! entries 1k..1M at rules=1k flows=1k, then rules at ipcache=100k
//! flows=1k, ...), and the runs carry no record of which sweep they
//! belonged to. So for a plot of parameter P and one run kind, every other
//! parameter is held at that kind's *baseline value*: the value most of the
//! kind's runs have (in a one-at-a-time sweep the baseline appears in every
//! sweep but the one that moves it); on a tie, the middle of the tied values
//! in order. The runs at the baseline give the points (x = P, y = delivered
//! Mpps; repeated x are averaged), and a kind gets a line only with two or
//! more distinct x. Kinds that do not sweep (the xdp-drop and AF_XDP
//! baselines) thus get no line.
//!
//! # CPU per packet
//!
//! One horizontal bar per run with a CPU figure whose parameters other
//! than the destination and the rate sit at the report's baseline (the
//! most common value over all runs, as above): the comparison point. Bars
//! are grouped by destination, then rate, and labelled with kind,
//! destination, rate and value (see the `cpu` child module).
//!
//! # Text
//!
//! Text needs a font. [`load_font`] registers one under a family name of
//! our own; every text style here names that family, so without the font no
//! text is drawn at all (and if some text slipped through, drawing it would
//! fail loudly instead of silently using another font).

use std::collections::BTreeMap;
use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::ranged1d::{Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use super::{kind, Destination, Params, Report, ReportError, Run};

mod cpu;

/// Every file this module may write, in the order `latest.md` shows them.
pub(super) const FILES: [&str; 5] = [
    "pps_vs_ipcache.png",
    "pps_vs_rules.png",
    "pps_vs_flows.png",
    "latency.png",
    "cpu_per_packet.png",
];

/// One plot that was drawn.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Plot {
    /// File name inside the report directory (one of [`FILES`]).
    pub file: &'static str,
    /// What it shows; also the markdown alt text.
    pub title: String,
}

/// The family name the report's font is registered under.
const FAMILY: &str = "xpf-report-sans";
const SIZE: (u32, u32) = (1024, 640);

/// Where [`load_font`] looks after `XPF_REPORT_FONT`: Debian
/// (fonts-dejavu-core), Fedora, Arch, then Liberation on Debian.
const FONT_PATHS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Loads and registers the plot font once per process: the file named by
/// `XPF_REPORT_FONT`, else the first of [`FONT_PATHS`] that parses. `None`
/// when there is none; the plots then have no text.
pub(super) fn load_font() -> Option<&'static Path> {
    static FONT: OnceLock<Option<PathBuf>> = OnceLock::new();
    FONT.get_or_init(|| {
        let candidates = std::env::var_os("XPF_REPORT_FONT")
            .map(PathBuf::from)
            .into_iter()
            .chain(FONT_PATHS.iter().map(PathBuf::from));
        for path in candidates {
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            // plotters keeps registered fonts for the life of the process;
            // this runs once, so the leak is one font file.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font(FAMILY, FontStyle::Normal, bytes).is_ok() {
                return Some(path);
            }
        }
        None
    })
    .as_deref()
}

/// The parameter a sweep plot puts on its x axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sweep {
    Ipcache,
    Rules,
    Flows,
}

impl Sweep {
    const ALL: [Sweep; 3] = [Sweep::Ipcache, Sweep::Rules, Sweep::Flows];

    fn file(self) -> &'static str {
        match self {
            Sweep::Ipcache => FILES[0],
            Sweep::Rules => FILES[1],
            Sweep::Flows => FILES[2],
        }
    }

    fn axis(self) -> &'static str {
        match self {
            Sweep::Ipcache => "ipcache entries",
            Sweep::Rules => "policy rules",
            Sweep::Flows => "concurrent flows",
        }
    }

    /// Index of this parameter in [`param_values`].
    fn index(self) -> usize {
        match self {
            Sweep::Ipcache => 0,
            Sweep::Rules => 1,
            Sweep::Flows => 2,
        }
    }
}

/// Every parameter of a run, the swept ones first in [`Sweep::index`] order,
/// the rate and the destination last.
fn param_values(p: &Params) -> [u64; PARAMS] {
    [
        p.ipcache_entries,
        p.rules,
        p.flows,
        p.frame_size,
        p.workers,
        p.ipcache_updates_per_sec,
        p.rate_pps,
        match p.to {
            Destination::Outside => 0,
            Destination::Endpoint => 1,
        },
    ]
}

/// How many [`param_values`] a run has.
const PARAMS: usize = 8;

/// One line of a sweep plot: a run kind and its (x, delivered Mpps) points
/// in increasing x.
#[derive(Debug, Clone, PartialEq)]
struct Line {
    kind: String,
    points: Vec<(f64, f64)>,
}

/// The run kinds present, known kinds in [`kind::ALL`] order, then others
/// in order of appearance.
fn kinds(runs: &[Run]) -> Vec<&str> {
    let mut out: Vec<&str> = kind::ALL
        .into_iter()
        .filter(|k| runs.iter().any(|r| r.name == *k))
        .collect();
    for r in runs {
        if !out.contains(&r.name.as_str()) {
            out.push(&r.name);
        }
    }
    out
}

/// The most common of `values`; on a tie, the middle of the tied values.
fn baseline(values: impl Iterator<Item = u64>) -> Option<u64> {
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for v in values {
        *counts.entry(v).or_default() += 1;
    }
    let top = *counts.values().max()?;
    let tied: Vec<u64> = counts
        .into_iter()
        .filter(|&(_, c)| c == top)
        .map(|(v, _)| v)
        .collect();
    Some(tied[(tied.len() - 1) / 2])
}

fn sweep_lines(runs: &[Run], sweep: Sweep) -> Vec<Line> {
    let swept = sweep.index();
    let mut lines = Vec::new();
    for k in kinds(runs) {
        let of_kind: Vec<&Run> = runs.iter().filter(|r| r.name == k).collect();
        let mut base = [0u64; PARAMS];
        for (i, b) in base.iter_mut().enumerate() {
            *b = baseline(of_kind.iter().map(|r| param_values(&r.params)[i])).unwrap_or(0);
        }
        let mut by_x: BTreeMap<u64, (f64, usize)> = BTreeMap::new();
        for r in &of_kind {
            let v = param_values(&r.params);
            let at_base = (0..v.len()).all(|i| i == swept || v[i] == base[i]);
            if at_base && r.delivered_pps.is_finite() {
                let e = by_x.entry(v[swept]).or_default();
                e.0 += r.delivered_pps;
                e.1 += 1;
            }
        }
        if by_x.len() >= 2 {
            lines.push(Line {
                kind: k.to_string(),
                points: by_x
                    .into_iter()
                    .map(|(x, (sum, n))| (x as f64, sum / n as f64 / 1e6))
                    .collect(),
            });
        }
    }
    lines
}

/// Percentile on the "nines" scale: 0 → 0, 90 → 1, 99 → 2, 99.9 → 3.
fn nines(percentile: f64) -> f64 {
    -(1.0 - percentile / 100.0).log10()
}

/// The inverse of [`nines`], as an axis label: 1 → "90", 3 → "99.9".
fn nines_label(n: f64) -> String {
    if n <= 0.0 {
        return "0".to_string();
    }
    let p = 100.0 * (1.0 - 10f64.powf(-n));
    let decimals = (n.round() as usize).saturating_sub(2);
    format!("{p:.decimals$}")
}

/// Each run's latency curve on the nines scale, leaving out what the scale
/// or a log axis cannot show (the 100th percentile, zero latencies); runs
/// with fewer than two points left get no line.
fn latency_lines(runs: &[Run]) -> Vec<(String, Vec<(f64, f64)>)> {
    runs.iter()
        .filter_map(|r| {
            let points: Vec<(f64, f64)> = r
                .latency_curve
                .iter()
                .filter(|&&(p, us)| (0.0..100.0).contains(&p) && us > 0.0 && us.is_finite())
                .map(|&(p, us)| (nines(p), us))
                .collect();
            (points.len() >= 2).then(|| (r.label.clone(), points))
        })
        .collect()
}

/// Axis tick text: 1000 → "1k", 1000000 → "1M".
fn si(v: f64) -> String {
    let (div, suffix) = match v.abs() {
        a if a >= 1e9 => (1e9, "G"),
        a if a >= 1e6 => (1e6, "M"),
        a if a >= 1e3 => (1e3, "k"),
        _ => (1.0, ""),
    };
    let s = format!("{:.1}", v / div);
    format!("{}{suffix}", s.trim_end_matches(".0"))
}

/// Axis tick text to at most three decimals, without trailing zeros:
/// 2.0 → "2", 0.25 → "0.25".
fn plain(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Line colours: one per known kind, so a kind looks the same on every plot.
fn kind_color(k: &str, i: usize) -> RGBColor {
    match k {
        kind::XDP_DROP => RGBColor(0x44, 0x44, 0x44),
        kind::AFXDP_RXDROP => RGBColor(0x98, 0x4e, 0xa3),
        kind::AFXDP_FWD => RGBColor(0x4d, 0xaf, 0x4a),
        kind::KERNEL_NFT => RGBColor(0xe4, 0x1a, 0x1c),
        kind::XPF => RGBColor(0x37, 0x7e, 0xb8),
        kind::XDP_REDIRECT => RGBColor(0x88, 0x88, 0x88),
        kind::XDP_PASS => RGBColor(0xa6, 0x56, 0x28),
        kind::XPF_HYBRID => RGBColor(0xff, 0x7f, 0x00),
        _ => run_color(i),
    }
}

fn run_color(i: usize) -> RGBColor {
    let c = Palette99::pick(i).to_rgba();
    RGBColor(c.0, c.1, c.2)
}

/// Draws every plot the report has points for into `dir`; `text` says
/// whether the font is registered.
pub(super) fn draw_all(dir: &Path, report: &Report, text: bool) -> Result<Vec<Plot>, ReportError> {
    let mut plots = Vec::new();
    for sweep in Sweep::ALL {
        let lines = sweep_lines(&report.runs, sweep);
        if lines.is_empty() {
            continue;
        }
        let plot = Plot {
            file: sweep.file(),
            title: format!("Delivered Mpps against {}", sweep.axis()),
        };
        let path = dir.join(plot.file);
        draw_sweep(&path, &plot.title, sweep, &lines, text).map_err(|e| ReportError::Plot {
            path: path.clone(),
            message: e.to_string(),
        })?;
        plots.push(plot);
    }
    let lines = latency_lines(&report.runs);
    if !lines.is_empty() {
        let plot = Plot {
            file: FILES[3],
            title: "Latency distribution by percentile".to_string(),
        };
        let path = dir.join(plot.file);
        draw_latency(&path, &plot.title, &lines, text).map_err(|e| ReportError::Plot {
            path: path.clone(),
            message: e.to_string(),
        })?;
        plots.push(plot);
    }
    let bars = cpu::bars(&report.runs);
    if !bars.is_empty() {
        let plot = Plot {
            file: FILES[4],
            title: "CPU ns per delivered packet".to_string(),
        };
        let path = dir.join(plot.file);
        cpu::draw(&path, &plot.title, &bars, text).map_err(|e| ReportError::Plot {
            path: path.clone(),
            message: e.to_string(),
        })?;
        plots.push(plot);
    }
    Ok(plots)
}

type Drawn = Result<(), Box<dyn Error>>;

fn draw_sweep(path: &Path, title: &str, sweep: Sweep, lines: &[Line], text: bool) -> Drawn {
    let xs = || lines.iter().flat_map(|l| l.points.iter().map(|p| p.0));
    let (xmin, xmax) = xs().fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(x), hi.max(x)));
    let ymax = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .fold(0.0, f64::max);
    let y = 0.0..if ymax > 0.0 { ymax * 1.15 } else { 1.0 };

    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(20);
    if text {
        builder
            .caption(title, (FAMILY, 26))
            .x_label_area_size(55)
            .y_label_area_size(70);
    }
    let axis = Axes {
        x: sweep.axis(),
        y: "delivered Mpps",
        x_labels: 10,
        x_format: &|v| si(*v),
        y_format: &|v| plain(*v),
    };
    // Counts spanning a decade or more read best on a log axis (which
    // cannot hold 0).
    if xmin > 0.0 && xmax / xmin >= 10.0 {
        let x = (xmin / 1.5..xmax * 1.5).log_scale();
        finish_sweep(builder.build_cartesian_2d(x, y)?, lines, &axis, text)?;
    } else {
        let pad = ((xmax - xmin) * 0.05).max(1.0);
        let x = (xmin - pad).max(0.0)..xmax + pad;
        finish_sweep(builder.build_cartesian_2d(x, y)?, lines, &axis, text)?;
    }
    root.present()?;
    Ok(())
}

/// Axis descriptions and tick labels of one chart.
struct Axes<'a> {
    x: &'a str,
    y: &'a str,
    x_labels: usize,
    x_format: &'a dyn Fn(&f64) -> String,
    y_format: &'a dyn Fn(&f64) -> String,
}

type Chart<'a, X, Y> = ChartContext<'a, BitMapBackend<'a>, Cartesian2d<X, Y>>;

fn mesh<X, Y>(chart: &mut Chart<'_, X, Y>, axis: &Axes<'_>, text: bool) -> Drawn
where
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let mut mesh = chart.configure_mesh();
    mesh.light_line_style(BLACK.mix(0.06));
    if text {
        mesh.x_desc(axis.x)
            .y_desc(axis.y)
            .x_labels(axis.x_labels)
            .x_label_formatter(axis.x_format)
            .y_label_formatter(axis.y_format)
            .label_style((FAMILY, 15))
            .axis_desc_style((FAMILY, 17));
    }
    mesh.draw()?;
    Ok(())
}

/// The legend, in smaller type when it has many entries so it stays on the
/// chart.
fn legend<X, Y>(
    chart: &mut Chart<'_, X, Y>,
    position: SeriesLabelPosition,
    entries: usize,
    text: bool,
) -> Drawn
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    if text {
        chart
            .configure_series_labels()
            .position(position)
            .label_font((FAMILY, if entries > 12 { 11 } else { 15 }))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()?;
    }
    Ok(())
}

fn finish_sweep<X>(
    mut chart: Chart<'_, X, RangedCoordf64>,
    lines: &[Line],
    axis: &Axes<'_>,
    text: bool,
) -> Drawn
where
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    mesh(&mut chart, axis, text)?;
    for (i, line) in lines.iter().enumerate() {
        let color = kind_color(&line.kind, i);
        chart
            .draw_series(
                LineSeries::new(line.points.iter().copied(), color.stroke_width(2)).point_size(4),
            )?
            .label(line.kind.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], color.stroke_width(2)));
    }
    legend(
        &mut chart,
        SeriesLabelPosition::UpperRight,
        lines.len(),
        text,
    )
}

fn draw_latency(
    path: &Path,
    title: &str,
    lines: &[(String, Vec<(f64, f64)>)],
    text: bool,
) -> Drawn {
    let points = || lines.iter().flat_map(|(_, p)| p.iter().copied());
    let max_nines = points().map(|p| p.0).fold(0.0, f64::max).ceil().max(1.0);
    let (ymin, ymax) = points().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
        (lo.min(p.1), hi.max(p.1))
    });

    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(20);
    if text {
        builder
            .caption(title, (FAMILY, 26))
            .x_label_area_size(55)
            .y_label_area_size(70);
    }
    let x = 0.0..max_nines;
    let y = (ymin / 1.5..ymax * 1.5).log_scale();
    let mut chart = builder.build_cartesian_2d(x, y)?;
    let axis = Axes {
        x: "percentile (nines scale)",
        y: "latency µs (log)",
        x_labels: max_nines as usize + 1,
        x_format: &|v| nines_label(*v),
        y_format: &|v| plain(*v),
    };
    mesh(&mut chart, &axis, text)?;
    for (i, (label, pts)) in lines.iter().enumerate() {
        let color = run_color(i);
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)).point_size(3))?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], color.stroke_width(2)));
    }
    legend(
        &mut chart,
        SeriesLabelPosition::UpperLeft,
        lines.len(),
        text,
    )?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::report::synthetic_report;

    #[test]
    fn baseline_is_the_mode_then_the_middle() {
        assert_eq!(baseline([1, 5, 5, 9].into_iter()), Some(5));
        assert_eq!(baseline([1, 5, 9].into_iter()), Some(5));
        assert_eq!(baseline([1, 5, 9, 20].into_iter()), Some(5));
        assert_eq!(baseline(std::iter::empty()), None);
    }

    #[test]
    fn sweeps_hold_other_parameters_at_the_baseline() {
        let report = synthetic_report();

        let ipcache = sweep_lines(&report.runs, Sweep::Ipcache);
        assert_eq!(ipcache.len(), 1, "{ipcache:?}");
        assert_eq!(ipcache[0].kind, "xpf");
        let xs: Vec<f64> = ipcache[0].points.iter().map(|p| p.0).collect();
        assert_eq!(xs, [1e3, 1e4, 1e5, 1e6]);
        assert!((ipcache[0].points[0].1 - 1.9).abs() < 1e-9);

        // xpf's rules sweep includes the baseline run (rules=1k), which the
        // ipcache sweep shares; kernel-nft sweeps rules too.
        let rules = sweep_lines(&report.runs, Sweep::Rules);
        let kinds: Vec<&str> = rules.iter().map(|l| l.kind.as_str()).collect();
        assert_eq!(kinds, ["kernel-nft", "xpf"]);
        let xs: Vec<f64> = rules[1].points.iter().map(|p| p.0).collect();
        assert_eq!(xs, [10.0, 100.0, 1e3, 1e4]);

        let flows = sweep_lines(&report.runs, Sweep::Flows);
        assert_eq!(flows.len(), 1);
        assert_eq!(flows[0].points.len(), 3);
    }

    #[test]
    fn repeated_points_are_averaged() {
        let mut report = synthetic_report();
        let mut again = report
            .runs
            .iter()
            .find(|r| r.name == "xpf" && r.params.ipcache_entries == 1000)
            .unwrap()
            .clone();
        again.delivered_pps = 1.7e6;
        report.runs.push(again);
        let lines = sweep_lines(&report.runs, Sweep::Ipcache);
        assert!((lines[0].points[0].1 - 1.8).abs() < 1e-9, "{lines:?}");
    }

    #[test]
    fn latency_curves_on_the_nines_scale() {
        assert_eq!(nines(0.0), 0.0);
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
        assert_eq!(nines_label(0.0), "0");
        assert_eq!(nines_label(1.0), "90");
        assert_eq!(nines_label(2.0), "99");
        assert_eq!(nines_label(3.0), "99.9");
        assert_eq!(nines_label(5.0), "99.999");

        let lines = latency_lines(&synthetic_report().runs);
        assert_eq!(lines.len(), 3);
        // The 100th percentile is left out.
        assert!(lines.iter().all(|(_, p)| p.len() == 6));
    }

    #[test]
    fn tick_labels() {
        assert_eq!(si(10.0), "10");
        assert_eq!(si(1000.0), "1k");
        assert_eq!(si(2500.0), "2.5k");
        assert_eq!(si(1e6), "1M");
        assert_eq!(plain(2.0), "2");
        assert_eq!(plain(100.0), "100");
        assert_eq!(plain(0.25), "0.25");
        assert_eq!(plain(0.0), "0");
    }
}
