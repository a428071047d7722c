//! The ratios between runs of one invocation that the benchmark reports,
//! with the targets the issue sets for some of them. A ratio whose runs
//! were not measured (a `--quick` invocation skips the far ends), or that
//! lack the figure compared (a latency, a CPU figure), is left out, not
//! guessed.
//!
//! The hybrid datapath's ratios hold `xpf-hybrid` to the in-kernel
//! ceiling of the same path: `xdp-redirect` endpoint to endpoint,
//! `xdp-pass` to the outside; by delivered rate at saturation and by CPU
//! per packet at saturation and at [`MODERATE_PPS`]. The same ratios for
//! `xpf` (userspace) come without a target, for reference.

use super::plan::{Destination, Kind, Point, MID, MODERATE_PPS};
use crate::harness::report::{Ratio, Run};

/// The run of `kind` at `p`, if this invocation measured one.
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
            && r.params.to == p.to
    })
}

/// The ratios the issue sets targets for, between runs of this invocation.
pub(super) fn ratios(runs: &[Run]) -> Vec<Ratio> {
    let mut out = Vec::new();
    type Target = Option<(&'static str, fn(f64) -> bool)>;
    let mut ratio = |name: &str,
                     a: Option<&Run>,
                     b: Option<&Run>,
                     value: fn(&Run, &Run) -> f64,
                     target: Target| {
        if let (Some(a), Some(b)) = (a, b) {
            let v = value(a, b);
            if !v.is_finite() {
                return;
            }
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
    let cpu: fn(&Run, &Run) -> f64 = |a, b| match (a.cpu_ns_per_packet, b.cpu_ns_per_packet) {
        // A figure of 0 is a baseline that ate the window: no ratio.
        (Some(a), Some(b)) if a > 0.0 && b > 0.0 => a / b,
        _ => f64::NAN,
    };
    for (to, ceiling, path) in [
        (
            Destination::Endpoint,
            Kind::XdpRedirect,
            "endpoint to endpoint",
        ),
        (Destination::Outside, Kind::XdpPass, "to the outside"),
    ] {
        for (kind, target) in [(Kind::XpfHybrid, true), (Kind::Xpf, false)] {
            let at = |rate| Point { to, rate, ..MID };
            ratio(
                &format!(
                    "{} / {}, {path} (delivered pps)",
                    kind.name(),
                    ceiling.name()
                ),
                find(runs, kind, &at(0)),
                find(runs, ceiling, &at(0)),
                pps,
                target.then_some(("≥ 0.95", |v| v >= 0.95)),
            );
            let moderate = format!("{} kpps", MODERATE_PPS / 1000);
            for (rate, at_rate) in [(0, "saturation"), (MODERATE_PPS, moderate.as_str())] {
                ratio(
                    &format!(
                        "{} / {}, {path}, CPU per packet at {at_rate}",
                        kind.name(),
                        ceiling.name()
                    ),
                    find(runs, kind, &at(rate)),
                    find(runs, ceiling, &at(rate)),
                    cpu,
                    target.then_some(("≤ 1.1", |v| v <= 1.1)),
                );
            }
        }
    }
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
        "xpf under updates / xpf (delivered pps)",
        find(runs, Kind::XpfUpdates, &MID),
        xpf,
        pps,
        Some(("≥ 0.90", |v| v >= 0.9)),
    );
    ratio(
        "xpf with monitor / xpf (delivered pps)",
        find(runs, Kind::XpfMonitor, &MID),
        xpf,
        pps,
        Some(("≥ 0.95", |v| v >= 0.95)),
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
        .find(|r| {
            r.name == "xpf"
                && r.params.rate_pps > 0
                && r.params.rate_pps != MODERATE_PPS
                && r.params.to == Destination::Outside
        })
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

#[cfg(test)]
mod tests {
    use super::super::plan::MID_E2E;
    use super::*;
    use crate::harness::report::Params;

    fn run(kind: Kind, p: Point, pps: f64, cpu: Option<f64>) -> Run {
        Run {
            name: kind.name().into(),
            label: super::super::run::label(kind, &p),
            delivered_pps: pps,
            offered_pps: pps,
            loss: 0.0,
            latency_us: None,
            latency_curve: Vec::new(),
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
            cpu_ns_per_packet: cpu,
            notes: None,
            cpu: None,
            updates: None,
            monitor: None,
        }
    }

    #[test]
    fn the_hybrid_is_held_to_the_in_kernel_ceiling_of_its_path() {
        let slow = Point {
            rate: MODERATE_PPS,
            ..MID_E2E
        };
        let runs = [
            run(Kind::XdpRedirect, MID_E2E, 1.0e6, Some(1000.0)),
            run(Kind::XpfHybrid, MID_E2E, 0.96e6, Some(1200.0)),
            run(Kind::Xpf, MID_E2E, 0.5e6, Some(3000.0)),
            run(Kind::XdpRedirect, slow, 4e4, Some(2000.0)),
            run(Kind::XpfHybrid, slow, 4e4, Some(2100.0)),
            // No CPU figure: its ratio is left out.
            run(Kind::Xpf, slow, 4e4, None),
            // Nothing to the outside but xpf: no ratio there either.
            run(Kind::Xpf, MID, 0.3e6, Some(3500.0)),
        ];
        let got: Vec<(String, f64, Option<bool>)> = ratios(&runs)
            .into_iter()
            .map(|r| (r.name, (r.value * 100.0).round() / 100.0, r.met))
            .collect();
        let want = [
            (
                "xpf-hybrid / xdp-redirect, endpoint to endpoint (delivered pps)",
                0.96,
                Some(true),
            ),
            (
                "xpf-hybrid / xdp-redirect, endpoint to endpoint, CPU per packet at saturation",
                1.2,
                Some(false),
            ),
            (
                "xpf-hybrid / xdp-redirect, endpoint to endpoint, CPU per packet at 40 kpps",
                1.05,
                Some(true),
            ),
            (
                "xpf / xdp-redirect, endpoint to endpoint (delivered pps)",
                0.5,
                None,
            ),
            (
                "xpf / xdp-redirect, endpoint to endpoint, CPU per packet at saturation",
                3.0,
                None,
            ),
        ];
        let want: Vec<(String, f64, Option<bool>)> = want
            .into_iter()
            .map(|(n, v, m)| (n.to_string(), v, m))
            .collect();
        assert_eq!(got, want);
    }
}
