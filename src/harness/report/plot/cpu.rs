//! `cpu_per_packet.png`: CPU nanoseconds per delivered packet, one
//! horizontal bar per run kind, destination and rate at the report's
//! comparison point (see the parent module).

use std::collections::BTreeMap;
use std::path::Path;

use plotters::coord::ranged1d::{IntoSegmentedCoord, SegmentValue};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{baseline, kind_color, kinds, param_values, plain, Drawn, FAMILY, PARAMS, SIZE};
use crate::harness::report::{Destination, Run};

/// One bar: a kind at a destination and rate, and its CPU figure (the
/// mean when several runs share all three).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Bar {
    pub kind: String,
    pub to: Destination,
    pub rate_pps: u64,
    pub ns: f64,
}

impl Bar {
    fn label(&self) -> String {
        let rate = if self.rate_pps == 0 {
            "saturation".to_string()
        } else {
            format!("{:.0} kpps", self.rate_pps as f64 / 1e3)
        };
        format!("{}, to {}, {rate}", self.kind, self.to.as_str())
    }
}

/// Parameters the bars may differ in: the rate and the destination (the
/// last two of [`param_values`]).
const FREE: usize = 2;

/// The bars of `runs`: those with a CPU figure at the baseline of every
/// parameter but the rate and the destination, grouped by destination
/// (outside first), then rate (saturation first), then kind.
pub(super) fn bars(runs: &[Run]) -> Vec<Bar> {
    let with_cpu: Vec<&Run> = runs
        .iter()
        .filter(|r| r.cpu_ns_per_packet.is_some_and(f64::is_finite))
        .collect();
    let fixed = PARAMS - FREE;
    let base: Vec<u64> = (0..fixed)
        .map(|i| baseline(runs.iter().map(|r| param_values(&r.params)[i])).unwrap_or(0))
        .collect();
    let mut sums: BTreeMap<(u64, u64, usize), (f64, usize)> = BTreeMap::new();
    let order = kinds(runs);
    for r in with_cpu {
        let v = param_values(&r.params);
        if v[..fixed] != base[..] {
            continue;
        }
        let k = order
            .iter()
            .position(|k| *k == r.name)
            .unwrap_or(usize::MAX);
        let e = sums
            .entry((v[fixed + 1], r.params.rate_pps, k))
            .or_default();
        e.0 += r.cpu_ns_per_packet.unwrap_or(0.0);
        e.1 += 1;
    }
    sums.into_iter()
        .map(|((to, rate_pps, k), (sum, n))| Bar {
            kind: order[k].to_string(),
            to: if to == 0 {
                Destination::Outside
            } else {
                Destination::Endpoint
            },
            rate_pps,
            ns: sum / n as f64,
        })
        .collect()
}

pub(super) fn draw(path: &Path, title: &str, bars: &[Bar], text: bool) -> Drawn {
    let n = bars.len();
    let height = SIZE.1.max(140 + 34 * n as u32);
    let xmax = bars.iter().map(|b| b.ns).fold(0.0, f64::max);
    let x = 0.0..if xmax > 0.0 { xmax * 1.2 } else { 1.0 };

    let root = BitMapBackend::new(path, (SIZE.0, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(20);
    if text {
        builder
            .caption(title, (FAMILY, 26))
            .x_label_area_size(55)
            .y_label_area_size(330);
    }
    // An integer range holds both its ends: n rows are 0..n - 1.
    let mut chart = builder.build_cartesian_2d(x, (0..n.saturating_sub(1)).into_segmented())?;
    // The first bar at the top.
    let row = |i: usize| n - 1 - i;
    let labels: Vec<String> = bars.iter().map(Bar::label).collect();
    let label_of = |v: &SegmentValue<usize>| match v {
        SegmentValue::CenterOf(r) if *r < n => labels[n - 1 - *r].clone(),
        _ => String::new(),
    };
    let mut mesh = chart.configure_mesh();
    mesh.light_line_style(BLACK.mix(0.06)).disable_y_mesh();
    if text {
        mesh.x_desc("CPU ns per delivered packet (all CPUs, idle baseline taken off)")
            .y_labels(n)
            .x_label_formatter(&|v| plain(*v))
            .y_label_formatter(&label_of)
            .label_style((FAMILY, 15))
            .axis_desc_style((FAMILY, 17));
    }
    mesh.draw()?;
    for (i, b) in bars.iter().enumerate() {
        let color = kind_color(&b.kind, i);
        let mut rect = Rectangle::new(
            [
                (0.0, SegmentValue::Exact(row(i))),
                (b.ns, SegmentValue::Exact(row(i) + 1)),
            ],
            color.filled(),
        );
        rect.set_margin(5, 5, 0, 0);
        chart.draw_series(std::iter::once(rect))?;
        if text {
            chart.draw_series(std::iter::once(Text::new(
                format!(" {:.0}", b.ns),
                (b.ns, SegmentValue::CenterOf(row(i))),
                TextStyle::from((FAMILY, 14).into_font()).pos(Pos::new(HPos::Left, VPos::Center)),
            )))?;
        }
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::report::synthetic_report;

    #[test]
    fn bars_are_the_comparison_point_grouped_by_destination_and_rate() {
        let mut report = synthetic_report();
        // A run off the comparison point (1k ipcache entries) is left out,
        // and a second run of a bar is averaged in.
        let mut off = report.runs[0].clone();
        off.params.ipcache_entries = 1_000;
        report.runs.push(off);
        let mut again = report.runs[0].clone();
        again.cpu_ns_per_packet = Some(330.0);
        report.runs.push(again);
        let bars = bars(&report.runs);
        let got: Vec<(&str, Destination, f64)> =
            bars.iter().map(|b| (b.kind.as_str(), b.to, b.ns)).collect();
        assert_eq!(
            got,
            [
                ("xdp-drop", Destination::Outside, 320.0),
                ("xdp-redirect", Destination::Endpoint, 900.0),
                ("xpf", Destination::Endpoint, 2_400.0),
                ("xpf-hybrid", Destination::Endpoint, 1_000.0),
            ]
        );
        assert_eq!(bars[1].label(), "xdp-redirect, to endpoint, saturation");
        let slow = Bar {
            rate_pps: 40_000,
            ..bars[1].clone()
        };
        assert_eq!(slow.label(), "xdp-redirect, to endpoint, 40 kpps");
    }
}
