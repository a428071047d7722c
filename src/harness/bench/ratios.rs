//! The ratios between runs of one invocation that the benchmark reports,
//! with the targets the issue sets for some of them. A ratio whose runs
//! were not measured (a `--quick` invocation skips the far ends) is left
//! out, not guessed.

use super::plan::{Kind, Point, MID};
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
