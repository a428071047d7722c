//! The client commands of a running xpf: `status`, `reload`, `ipcache
//! upsert` and `ipcache delete`. Each sends one request to the API socket
//! and prints the answer as text or JSON; a refusal is an error (exit 2)
//! with the daemon's reason.

use std::collections::BTreeMap;
use std::path::PathBuf;

use std::io::Write;

use anyhow::{bail, Result};
use serde_json::{json, Value};

use super::{ApiArgs, Output};
use crate::control::api::parse_prefix;
use crate::control::client;

fn socket(api: &ApiArgs) -> Result<PathBuf> {
    match &api.api {
        Some(p) => Ok(p.clone()),
        None => super::run::default_api_path(),
    }
}

/// The strings of a JSON array (none if it is not one).
fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// One call; a non-2xx answer becomes the error the daemon gave.
fn call(api: &ApiArgs, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
    let (status, answer) = client::call(&socket(api)?, method, path, body.as_ref())?;
    if !(200..300).contains(&status) {
        let why = answer["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| answer.to_string());
        bail!("{why}");
    }
    Ok(answer)
}

fn print_json(v: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub(super) fn status(api: &ApiArgs, output: Output) -> Result<()> {
    let s = call(api, "GET", "/v1/status", None)?;
    if output == Output::Json {
        return print_json(&s);
    }
    println!(
        "instance {} (PID {}), up {} s, config {}",
        s["instance"].as_str().unwrap_or("?"),
        s["pid"],
        s["uptime_seconds"],
        s["config"].as_str().unwrap_or("?")
    );
    println!(
        "policy revision {} ({} changes since start), {} policies, {} identities, {} ipcache entries",
        s["revision"], s["policy_changes"], s["policies"], s["identities"], s["ipcache_entries"]
    );
    println!("endpoints:");
    for e in s["endpoints"].as_array().into_iter().flatten() {
        let addrs: Vec<String> = ["ipv4", "ipv6"]
            .iter()
            .filter_map(|k| e[*k].as_str().map(str::to_string))
            .collect();
        let labels: Vec<&str> = strings(&e["labels"]);
        println!(
            "  {:<16} identity {:<8} {:<40} {}",
            e["name"].as_str().unwrap_or("?"),
            e["identity"],
            addrs.join(" "),
            labels.join(",")
        );
    }
    let runtime = s["runtime_ipcache_entries"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !runtime.is_empty() {
        println!("runtime ipcache entries:");
        for r in runtime {
            let labels: Vec<&str> = strings(&r["labels"]);
            println!(
                "  {:<24} {}",
                r["prefix"].as_str().unwrap_or("?"),
                labels.join(",")
            );
        }
    }
    let k = &s["kvstore"];
    if !k.is_null() {
        let at = match k["state"].as_str() {
            Some("synced") => format!("synced with {}", k["endpoint"].as_str().unwrap_or("?")),
            Some("lost") => format!(
                "LOST ({}); enforcing the last state seen",
                k["error"].as_str().unwrap_or("?")
            ),
            other => other.unwrap_or("?").to_string(),
        };
        println!(
            "kvstore: {at}; node {} ({}), revision {}, {} remote entries, {} conflicts, \
             {} relists, {} reconnects",
            k["node"]["name"].as_str().unwrap_or("?"),
            k["node"]["ip"].as_str().unwrap_or("?"),
            k["revision"],
            k["remote_entries"],
            k["conflicts"].as_array().map_or(0, Vec::len),
            k["relists"],
            k["reconnects"]
        );
    }
    println!("workers:");
    for (i, w) in s["workers"].as_array().into_iter().flatten().enumerate() {
        let ports: Vec<&str> = strings(&w["ports"]);
        println!("  {i} on CPU {}: {}", w["cpu"], ports.join(", "));
    }
    let c = &s["counters"];
    let sum = |k: &str| -> u64 {
        c["workers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|w| w[k].as_u64().unwrap_or(0))
            .sum()
    };
    println!(
        "counters: rx {} allowed {} denied {} tx {}; conntrack {} entries",
        sum("rx"),
        sum("allowed"),
        sum("denied"),
        sum("tx"),
        c["conntrack_entries"]
    );
    Ok(())
}

/// What an applied change reports, as one line.
fn print_applied(what: &str, r: &Value, output: Output) -> Result<()> {
    if output == Output::Json {
        return print_json(r);
    }
    if r["restarted"] == true {
        println!(
            "xpf: {what}: the datapath restarted with the new endpoints at policy revision {} \
             ({} identities) after {:.1} ms; {} frames sent meanwhile were dropped (fail-closed)",
            r["revision"],
            r["identities"],
            r["applied_in_us"].as_f64().unwrap_or(0.0) / 1000.0,
            r["gap_dropped"]
        );
        return Ok(());
    }
    println!(
        "xpf: {what}: now at policy revision {} (ipcache +{} -{}, {} identities), enforced by every worker after {:.1} ms",
        r["revision"],
        r["ipcache_inserted"],
        r["ipcache_removed"],
        r["identities"],
        r["applied_in_us"].as_f64().unwrap_or(0.0) / 1000.0
    );
    Ok(())
}

pub(super) fn reload(api: &ApiArgs, output: Output) -> Result<()> {
    let r = call(api, "POST", "/v1/reload", None)?;
    print_applied("reloaded", &r, output)
}

/// `key=value[,key=value...]` as a map; refusals name `--labels`.
pub(super) fn parse_labels(text: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            bail!("--labels: `{pair}` is not key=value");
        };
        if k.trim().is_empty() {
            bail!("--labels: `{pair}` has an empty key");
        }
        if out
            .insert(k.trim().to_string(), v.trim().to_string())
            .is_some()
        {
            bail!("--labels: `{}` is given twice", k.trim());
        }
    }
    if out.is_empty() {
        bail!("--labels: give at least one key=value (unlabelled addresses are world)");
    }
    Ok(out)
}

pub(super) fn ipcache_upsert(
    api: &ApiArgs,
    prefix: &str,
    labels: &str,
    output: Output,
) -> Result<()> {
    let net = parse_prefix(prefix).map_err(|m| anyhow::anyhow!("PREFIX: {m}"))?;
    let labels = parse_labels(labels)?;
    let r = call(
        api,
        "PUT",
        "/v1/ipcache",
        Some(json!({ "prefix": net.to_string(), "labels": labels })),
    )?;
    print_applied(&format!("ipcache upsert {net}"), &r, output)
}

pub(super) fn ipcache_delete(api: &ApiArgs, prefix: &str, output: Output) -> Result<()> {
    let net = parse_prefix(prefix).map_err(|m| anyhow::anyhow!("PREFIX: {m}"))?;
    let r = call(
        api,
        "DELETE",
        "/v1/ipcache",
        Some(json!({ "prefix": net.to_string() })),
    )?;
    print_applied(&format!("ipcache delete {net}"), &r, output)
}

pub(super) fn endpoint_add(
    api: &ApiArgs,
    name: &str,
    labels: &str,
    ipv4: Option<std::net::Ipv4Addr>,
    ipv6: Option<std::net::Ipv6Addr>,
    output: Output,
) -> Result<()> {
    if ipv4.is_none() && ipv6.is_none() {
        bail!("give --ipv4, --ipv6 or both");
    }
    let labels = parse_labels(labels)?;
    let r = call(
        api,
        "PUT",
        "/v1/endpoints",
        Some(json!({ "name": name, "labels": labels, "ipv4": ipv4, "ipv6": ipv6 })),
    )?;
    print_applied(&format!("endpoint add {name}"), &r, output)
}

pub(super) fn endpoint_remove(api: &ApiArgs, name: &str, output: Output) -> Result<()> {
    let r = call(
        api,
        "DELETE",
        "/v1/endpoints",
        Some(json!({ "name": name })),
    )?;
    print_applied(&format!("endpoint remove {name}"), &r, output)
}

pub(super) fn monitor(
    api: &ApiArgs,
    kind: &str,
    endpoint: Option<&str>,
    output: Output,
) -> Result<()> {
    let mut path = format!("/v1/monitor?type={kind}");
    if let Some(e) = endpoint {
        path.push_str(&format!("&endpoint={e}"));
    }
    let mut out = std::io::stdout().lock();
    let answer = client::stream(&socket(api)?, &path, |line| {
        let text = if output == Output::Json {
            line.to_string()
        } else {
            match serde_json::from_str::<Value>(line) {
                Ok(v) => flow_line(&v),
                Err(_) => line.to_string(),
            }
        };
        // A reader that went away (`| head`) ends the monitor.
        writeln!(out, "{text}").and_then(|_| out.flush()).is_ok()
    })?;
    if let Err((_, answer)) = answer {
        bail!("{}", answer["error"].as_str().unwrap_or("refused"));
    }
    Ok(())
}

/// A flow (or lost-events) line for people.
fn flow_line(v: &Value) -> String {
    if let Some(l) = v.get("lost_events") {
        return format!(
            "-- {} events lost ({})",
            l["num_events_lost"],
            l["source"].as_str().unwrap_or("?")
        );
    }
    let f = &v["flow"];
    let x = &v["xpf"];
    let time = f["time"].as_str().unwrap_or("");
    let clock = time.get(11..23).unwrap_or(time);
    let peer = |p: &Value| {
        let labels: Vec<&str> = strings(&p["labels"]);
        format!("{} [{}]", p["identity"], labels.join(","))
    };
    // A default names the policies whose default it was.
    let default = x["cause"]
        .as_str()
        .filter(|c| *c != "rule")
        .map(|c| match strings(&x["selected_by"]).as_slice() {
            [] => format!(" ({c})"),
            by => format!(" ({c} of {})", by.join(", ")),
        })
        .unwrap_or_default();
    let why = match (x["reason"].as_str(), x["policy"].as_str()) {
        (Some(r), Some(p)) => format!("{r}: {p} {}", x["rule"].as_str().unwrap_or("")),
        (Some(r), None) => format!("{r}{default}"),
        (None, Some(p)) => format!("allowed by {p} {}", x["rule"].as_str().unwrap_or("")),
        (None, None) => format!("allowed{default}"),
    };
    format!(
        "{clock} {:<9} {} | {} -> {} | {why}",
        f["verdict"].as_str().unwrap_or("?"),
        f["Summary"].as_str().unwrap_or(""),
        peer(&f["source"]),
        peer(&f["destination"]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_and_refusals_name_the_flag() {
        let m = parse_labels("app=db, tier=backend").unwrap();
        assert_eq!(m.get("tier").map(String::as_str), Some("backend"));
        for bad in ["", "app", "=x", "a=1,a=2"] {
            let e = parse_labels(bad).unwrap_err().to_string();
            assert!(e.starts_with("--labels:"), "{bad}: {e}");
        }
    }
}
