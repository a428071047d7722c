//! `latest.md`: the report as a page a person reads, with the plots linked
//! by relative path so the directory can be moved or published as it is.

use std::fmt::Write as _;
use std::path::Path;

use super::plot::Plot;
use super::{CpuUse, Report, Run, UpdateLatency};

/// The markdown page for `report`, linking the `plots` that were drawn;
/// `font` is the font of their text (`None`: drawn without text).
pub(super) fn render(report: &Report, plots: &[Plot], font: Option<&Path>) -> String {
    let mut md = String::new();
    let m = &report.machine;
    // Writing into a String cannot fail; the results are ignored below.
    let _ = writeln!(md, "# xpf benchmark report\n");
    let _ = writeln!(
        md,
        "**Machine:** {}, {} cores, {:.1} GiB RAM, Linux {}  ",
        cell(&m.cpu_model),
        m.cores,
        m.memory_gib,
        cell(&m.kernel)
    );
    let _ = writeln!(
        md,
        "**Started:** {} (UTC), took {:.1} s, {}\n",
        report.started_at,
        report.duration_secs,
        if report.quick {
            "quick mode (short runs: the numbers are indicative only)"
        } else {
            "full mode"
        }
    );

    let _ = writeln!(md, "## Runs\n");
    if report.runs.is_empty() {
        let _ = writeln!(md, "No runs.\n");
    } else {
        runs_table(&mut md, &report.runs);
    }

    if !report.ratios.is_empty() {
        let _ = writeln!(md, "## Ratios\n");
        let _ = writeln!(
            md,
            "| ratio | numerator | denominator | value | target | result |"
        );
        let _ = writeln!(md, "|---|---|---|---:|---|---|");
        for r in &report.ratios {
            let result = match r.met {
                Some(true) => "met",
                Some(false) => "**missed**",
                None => "-",
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.2} | {} | {} |",
                cell(&r.name),
                cell(&r.numerator),
                cell(&r.denominator),
                r.value,
                r.target.as_deref().map_or("-".to_string(), cell),
                result
            );
        }
        let _ = writeln!(md);
    }

    cpu_table(&mut md, &report.runs);
    control_load_table(&mut md, &report.runs);
    if !report.update_latency.is_empty() {
        update_latency_table(&mut md, &report.update_latency);
    }

    if !plots.is_empty() {
        let _ = writeln!(md, "## Plots\n");
        if font.is_none() {
            let _ = writeln!(
                md,
                "The plots are drawn without text (no titles, axes or legends): no font was \
                 found. Install fonts-dejavu-core or point XPF_REPORT_FONT at a TrueType font.\n"
            );
        }
        for p in plots {
            let _ = writeln!(md, "![{}]({})\n", p.title, p.file);
        }
    }
    md
}

fn runs_table(md: &mut String, runs: &[Run]) {
    let notes = runs.iter().any(|r| r.notes.is_some());
    let _ = write!(
        md,
        "| run | offered Mpps | delivered Mpps | loss % | p50 µs | p99 µs | p99.9 µs | CPU ns/pkt |"
    );
    let _ = writeln!(md, "{}", if notes { " notes |" } else { "" });
    let _ = write!(md, "|---|---:|---:|---:|---:|---:|---:|---:|");
    let _ = writeln!(md, "{}", if notes { "---|" } else { "" });
    for r in runs {
        let (p50, p99, p999) = match &r.latency_us {
            Some(l) => (micros(l.p50), micros(l.p99), micros(l.p999)),
            None => ("-".to_string(), "-".to_string(), "-".to_string()),
        };
        let cpu = r
            .cpu_ns_per_packet
            .map_or("-".to_string(), |ns| format!("{ns:.0}"));
        let _ = write!(
            md,
            "| {} | {:.3} | {:.3} | {:.2} | {p50} | {p99} | {p999} | {cpu} |",
            cell(&r.label),
            r.offered_pps / 1e6,
            r.delivered_pps / 1e6,
            r.loss * 100.0
        );
        let note = if notes {
            format!(" {} |", r.notes.as_deref().map_or(String::new(), cell))
        } else {
            String::new()
        };
        let _ = writeln!(md, "{note}");
    }
    let _ = writeln!(md);
}

/// How the CPU figures of the runs that have one were arrived at: the
/// window, the busy time by CPU, the idle baseline taken off, and the
/// task groups' share; nothing when no run has one.
fn cpu_table(md: &mut String, runs: &[Run]) {
    let measured: Vec<(&Run, &CpuUse)> = runs
        .iter()
        .filter_map(|r| Some((r, r.cpu.as_ref()?)))
        .collect();
    if measured.is_empty() {
        return;
    }
    // The groups the benchmark knows in the order of the path, then others.
    let mut groups: Vec<&str> = vec!["gen", "sink", "xpf", "napi", "ksoftirqd"];
    for (_, c) in &measured {
        for g in c.tasks_ns_per_packet.keys() {
            if !groups.contains(&g.as_str()) {
                groups.push(g);
            }
        }
    }
    groups.retain(|g| {
        measured
            .iter()
            .any(|(_, c)| c.tasks_ns_per_packet.contains_key(*g))
    });
    let _ = writeln!(md, "## CPU per packet\n");
    let _ = writeln!(
        md,
        "Busy CPU time of the whole machine (`/proc/stat`: user, nice, system, irq, softirq) \
         over the generator's sending window, less the idle baseline measured just before it, \
         per delivered packet. The task columns are each group's scheduler runtime per \
         delivered packet (softirq work included where it ran in their context).\n"
    );
    let _ = write!(
        md,
        "| run | CPU ns/pkt | window s | busy CPUs (by CPU) | idle CPUs |"
    );
    for g in &groups {
        let _ = write!(md, " {} ns/pkt |", cell(g));
    }
    let _ = writeln!(md);
    let _ = write!(md, "|---|---:|---:|---|---:|");
    for _ in &groups {
        let _ = write!(md, "---:|");
    }
    let _ = writeln!(md);
    for (r, c) in measured {
        let window = c.window_secs.max(1e-9);
        let by_cpu: Vec<String> = c
            .busy_secs_by_cpu
            .iter()
            .map(|b| format!("{:.2}", b / window))
            .collect();
        let _ = write!(
            md,
            "| {} | {} | {:.2} | {:.2} ({}) | {:.2} |",
            cell(&r.label),
            r.cpu_ns_per_packet
                .map_or("-".to_string(), |ns| format!("{ns:.0}")),
            c.window_secs,
            c.busy_secs / window,
            by_cpu.join(" / "),
            c.idle_busy_cpus
        );
        for g in &groups {
            let v = c
                .tasks_ns_per_packet
                .get(*g)
                .map_or("-".to_string(), |ns| format!("{ns:.0}"));
            let _ = write!(md, " {v} |");
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(md);
}

/// The control-plane load of the runs that ran under one; nothing when
/// none did.
fn control_load_table(md: &mut String, runs: &[Run]) {
    let loaded: Vec<&Run> = runs
        .iter()
        .filter(|r| r.updates.is_some() || r.monitor.is_some())
        .collect();
    if loaded.is_empty() {
        return;
    }
    let _ = writeln!(md, "## Control-plane load\n");
    let _ = writeln!(
        md,
        "| run | delivered Mpps | reloads/s (asked) | upserts/s (asked) | deletes/s | errors | monitor lines | lost events |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in loaded {
        let (reloads, upserts, deletes, errors) = match &r.updates {
            Some(u) => (
                format!("{:.1} ({:.0})", u.reloads_per_sec, u.reloads_asked_per_sec),
                format!("{:.0} ({:.0})", u.upserts_per_sec, u.upserts_asked_per_sec),
                format!("{:.0}", u.deletes_per_sec),
                u.errors.to_string(),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        let (lines, lost) = match &r.monitor {
            Some(m) => (m.lines.to_string(), m.lost_events.to_string()),
            None => ("-".into(), "-".into()),
        };
        let _ = writeln!(
            md,
            "| {} | {:.3} | {reloads} | {upserts} | {deletes} | {errors} | {lines} | {lost} |",
            cell(&r.label),
            r.delivered_pps / 1e6
        );
    }
    let _ = writeln!(md);
}

/// How long single updates took, with their target.
fn update_latency_table(md: &mut String, rows: &[UpdateLatency]) {
    let _ = writeln!(md, "## Update latency\n");
    let _ = writeln!(
        md,
        "From the call to its answer, which comes once every worker enforces the change; \
         \"applied\" is the daemon's own measure (a reload's leaves out reading the config).\n"
    );
    let _ = writeln!(
        md,
        "| update | during | samples | p50 ms | p99 ms | max ms | applied p50 ms | applied p99 ms | target | result |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|---|---|");
    for u in rows {
        let result = match u.met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "-",
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {result} |",
            cell(&u.update),
            cell(&u.during),
            u.samples,
            millis(u.call_ms.p50),
            millis(u.call_ms.p99),
            millis(u.call_ms.max),
            millis(u.applied_ms.p50),
            millis(u.applied_ms.p99),
            u.target.as_deref().map_or("-".to_string(), cell),
        );
    }
    let _ = writeln!(md);
}

/// Milliseconds to two decimals below 10 ms, one below 100 ms, whole above.
fn millis(ms: f64) -> String {
    match ms {
        m if m < 10.0 => format!("{m:.2}"),
        m if m < 100.0 => format!("{m:.1}"),
        m => format!("{m:.0}"),
    }
}

/// Microseconds to one decimal below 100 µs, whole above.
fn micros(us: f64) -> String {
    if us < 100.0 {
        format!("{us:.1}")
    } else {
        format!("{us:.0}")
    }
}

/// Text made safe for one table cell: no pipes, no line breaks.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::report::synthetic_report;

    fn plots() -> Vec<Plot> {
        vec![
            Plot {
                file: "pps_vs_ipcache.png",
                title: "Delivered Mpps against ipcache entries".to_string(),
            },
            Plot {
                file: "latency.png",
                title: "Latency distribution".to_string(),
            },
        ]
    }

    #[test]
    fn page_has_machine_runs_ratios_and_plot_links() {
        let report = synthetic_report();
        let md = render(&report, &plots(), Some(Path::new("/f.ttf")));

        assert!(md.starts_with("# xpf benchmark report\n"));
        assert!(
            md.contains("**Machine:** Test CPU @ 3.0GHz, 2 cores, 7.8 GiB RAM, Linux 6.18.0-test")
        );
        assert!(md.contains("2024-05-01T12:00:00Z"));
        assert!(md.contains("quick mode"));

        assert!(md.contains(
            "| run | offered Mpps | delivered Mpps | loss % | p50 µs | p99 µs | p99.9 µs | CPU ns/pkt | notes |"
        ));
        // One row per run, with Mpps, loss % and latency formatted.
        assert!(md.contains(
            "| afxdp-fwd ipcache=100000 rules=1000 flows=1000 64B w1 | 4.000 | 2.200 | 45.00 | 12.0 | 40.0 | 95.5 | - |  |"
        ), "{md}");
        assert!(md.contains(
            "| xdp-drop ipcache=100000 rules=1000 flows=1000 64B w1 | 4.000 | 3.900 | 2.50 | - | - | - | 310 |"
        ));
        let loaded = report
            .runs
            .iter()
            .filter(|r| r.updates.is_some() || r.monitor.is_some())
            .count();
        let with_cpu = report.runs.iter().filter(|r| r.cpu.is_some()).count();
        let rows = md.lines().filter(|l| l.starts_with("| ")).count();
        assert_eq!(
            rows,
            1 + report.runs.len()
                + 1
                + report.ratios.len()
                + 1
                + with_cpu
                + 1
                + loaded
                + 1
                + report.update_latency.len()
        );
        // A pipe in a note does not split the cell.
        assert!(md.contains("| nft \\| 10k rules |"));

        assert!(md.contains("| ratio | numerator | denominator | value | target | result |"));
        assert!(md.contains("| xpf / afxdp-fwd |"));
        assert!(md.contains("| 0.77 | >= 0.5 | met |"));
        assert!(md.contains("| 0.44 | >= 0.6 | **missed** |"));
        assert!(md.contains("| 2.40 | - | - |"));

        assert!(md.contains("## CPU per packet"));
        assert!(
            md.contains("| run | CPU ns/pkt | window s | busy CPUs (by CPU) | idle CPUs | gen ns/pkt | napi ns/pkt |"),
            "{md}"
        );
        assert!(
            md.contains("| xdp-redirect ipcache=100000 rules=1000 flows=1000 64B w1 e2e | 900 | 3.00 | 1.09 (0.33 / 0.50) | 0.01 | 250 | 500 |"),
            "{md}"
        );
        assert!(md.find("## Ratios") < md.find("## CPU per packet"));
        assert!(md.find("## CPU per packet") < md.find("## Control-plane load"));
        assert!(md.contains("## Control-plane load"));
        assert!(md.contains(
            "| xpf-updates ipcache=100000 rules=1000 flows=1000 64B w1 | 1.700 | 2.5 (10) | 2250 (10000) | 1900 | 0 | - | - |"
        ), "{md}");
        assert!(md.contains(
            "| xpf-monitor ipcache=100000 rules=1000 flows=1000 64B w1 | 1.800 | - | - | - | - | 1000 | 0 |"
        ), "{md}");
        assert!(md.contains("## Update latency"));
        assert!(md.contains(
            "| upsert | xpf ipcache=100k, 0.3 Mpps delivered | 200 | 0.50 | 1.25 | 2.00 | 0.25 | 0.75 | p99 ≤ 50 ms | met |"
        ), "{md}");
        assert!(md.contains("| reload | xpf ipcache=100k, 0.3 Mpps delivered | 30 | 400 | 650 |"));
        assert!(
            md.contains("| 150 | 220 | p99 ≤ 50 ms | **missed** |"),
            "{md}"
        );
        assert!(md.find("## Ratios") < md.find("## Control-plane load"));
        assert!(md.find("## Update latency") < md.find("## Plots"));

        assert!(md.contains("![Delivered Mpps against ipcache entries](pps_vs_ipcache.png)"));
        assert!(md.contains("![Latency distribution](latency.png)"));
        assert!(!md.contains("without text"));
        assert!(!md.contains("pps_vs_rules.png"));
    }

    #[test]
    fn page_without_notes_ratios_or_plots() {
        let mut report = synthetic_report();
        for r in &mut report.runs {
            r.notes = None;
        }
        report.ratios.clear();
        report.update_latency.clear();
        report
            .runs
            .retain(|r| r.updates.is_none() && r.monitor.is_none());
        report.quick = false;
        let md = render(&report, &[], None);
        assert!(md.contains("full mode"));
        assert!(md.contains("| CPU ns/pkt |\n|---|"));
        assert!(!md.contains("notes"));
        assert!(!md.contains("## Ratios"));
        assert!(!md.contains("## Control-plane load"));
        assert!(!md.contains("## Update latency"));
        assert!(!md.contains("## Plots"));
        assert!(!md.contains("without text"));
    }

    #[test]
    fn page_says_when_plots_have_no_text() {
        let md = render(&synthetic_report(), &plots(), None);
        assert!(md.contains("drawn without text"));
        assert!(md.contains("fonts-dejavu-core"));
    }
}
