//! The commands that read a config and print what xpf makes of it: `policy
//! check` (one packet's verdict and why), `policy compile` (each
//! endpoint's table), `identity list` and `ipcache list`, as text or JSON.

use super::*;

pub(super) fn check(
    engine: &Engine,
    from: &str,
    to: IpAddr,
    port: Option<u16>,
    proto_arg: Option<Proto>,
    icmp_type: Option<u8>,
    output: Output,
) -> Result<()> {
    let (src_index, _) = engine.endpoint(from)?;
    let proto = proto_arg.unwrap_or(match (icmp_type, to) {
        (Some(_), IpAddr::V4(_)) => Proto::Icmp,
        (Some(_), IpAddr::V6(_)) => Proto::Icmpv6,
        (None, _) => Proto::Tcp,
    });
    let (ip_proto, value) = match proto {
        Proto::Tcp | Proto::Udp | Proto::Sctp => {
            if icmp_type.is_some() {
                bail!("--icmp-type goes with --proto icmp or icmpv6");
            }
            let Some(port) = port else {
                let name = proto.to_possible_value().expect("no skipped values");
                bail!("--port is required with --proto {}", name.get_name());
            };
            let n = match proto {
                Proto::Tcp => proto::TCP,
                Proto::Udp => proto::UDP,
                _ => proto::SCTP,
            };
            (n, port)
        }
        Proto::Icmp | Proto::Icmpv6 => {
            if port.is_some() {
                bail!("--port does not apply to ICMP; use --icmp-type");
            }
            let v6 = proto == Proto::Icmpv6;
            if v6 != to.is_ipv6() {
                bail!(
                    "--proto {} does not match the {} destination {to}",
                    if v6 { "icmpv6" } else { "icmp" },
                    if to.is_ipv6() { "IPv6" } else { "IPv4" }
                );
            }
            let default = if v6 { 128 } else { 8 };
            let n = if v6 { proto::ICMPV6 } else { proto::ICMP };
            (n, icmp_type.unwrap_or(default) as u16)
        }
    };
    let result = engine.check(src_index, to, ip_proto, value);
    let reason = result.decision.reason(&engine.world.policies);
    let what = match proto {
        Proto::Icmp | Proto::Icmpv6 => format!("{}/type {value}", proto_name(ip_proto)),
        _ => format!("{}/{value}", proto_name(ip_proto)),
    };
    match output {
        Output::Json => {
            let v = json!({
                "verdict": result.decision.verdict,
                "from": from,
                "to": to.to_string(),
                "proto": proto_name(ip_proto),
                "port": if proto::has_ports(ip_proto) { Some(value) } else { None },
                "icmp_type": if proto::has_ports(ip_proto) { None } else { Some(value) },
                "src_identity": result.src_identity.0,
                "dst_identity": result.dst_identity.0,
                "dst_labels": labels_of(engine, result.dst_identity),
                "reason": reason,
                "rule": rule_json(engine, &result.decision),
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Output::Text => {
            println!("{from} -> {to} {what}: {}", result.decision.verdict);
            println!(
                "  source identity {} [{}]",
                result.src_identity,
                labels_of(engine, result.src_identity)
            );
            println!(
                "  destination identity {} [{}]",
                result.dst_identity,
                labels_of(engine, result.dst_identity)
            );
            println!("  reason: {reason}");
        }
    }
    Ok(())
}

fn proto_name(p: u8) -> &'static str {
    match p {
        proto::TCP => "tcp",
        proto::UDP => "udp",
        proto::SCTP => "sctp",
        proto::ICMP => "icmp",
        proto::ICMPV6 => "icmpv6",
        _ => "other",
    }
}

fn labels_of(engine: &Engine, id: NumericIdentity) -> String {
    engine
        .inventory
        .identity(id)
        .map(|i| i.labels.to_string())
        .unwrap_or_default()
}

fn rule_json(engine: &Engine, d: &Decision) -> serde_json::Value {
    let r = match d.cause {
        crate::policy::Cause::Allow(r) | crate::policy::Cause::Deny(r) => r,
        _ => return serde_json::Value::Null,
    };
    let p = &engine.world.policies[r.policy as usize];
    let rules = if r.deny {
        &p.egress.deny
    } else {
        &p.egress.allow
    };
    json!({
        "kind": p.kind,
        "name": p.name,
        "namespace": p.namespace,
        "section": if r.deny { "egressDeny" } else { "egress" },
        "index": rules[r.rule as usize].index,
        "file": p.origin.file.display().to_string(),
    })
}

fn describe_code(compiled: &CompiledPolicy, engine: &Engine, code: Code) -> (String, String) {
    let verdict = if code.is_deny() { "deny" } else { "allow" };
    let rule = compiled.rule(code).expect("non-zero code");
    let p = &engine.world.policies[rule.policy as usize];
    let rules = if rule.deny {
        &p.egress.deny
    } else {
        &p.egress.allow
    };
    let section = if rule.deny { "egressDeny" } else { "egress" };
    (
        verdict.to_string(),
        format!(
            "{} {section}[{}]",
            p.display_name(),
            rules[rule.rule as usize].index
        ),
    )
}

fn segment_ranges(segs: &[Segment]) -> Vec<(u16, u16, u32)> {
    let mut out = Vec::new();
    let mut first = 0u16;
    for s in segs {
        if s.code != 0 {
            out.push((first, s.last, s.code));
        }
        first = s.last.wrapping_add(1);
    }
    out
}

pub(super) fn compile_cmd(engine: &Engine, output: Output) -> Result<()> {
    let compiled = &engine.compiled;
    let mut json_eps = Vec::new();
    for (i, ep) in engine.world.endpoints.iter().enumerate() {
        let id = engine.inventory.endpoint_identities[i];
        let table = compiled.table(id);
        let policies: Vec<String> = table
            .policies
            .iter()
            .map(|p| engine.world.policies[*p as usize].display_name())
            .collect();
        let default = format!("{:?}", table.default);
        let mut entries = Vec::new();
        for (dst, classes) in table.describe() {
            let mut ranges = Vec::new();
            for (class, segs) in &classes {
                for (first, last, code) in segment_ranges(segs) {
                    let (verdict, rule) = describe_code(compiled, engine, Code(code));
                    ranges.push((class.name(), first, last, verdict, rule));
                }
            }
            if dst.is_none() && ranges.is_empty() {
                continue;
            }
            entries.push((dst, ranges));
        }
        match output {
            Output::Text => {
                println!(
                    "endpoint {} (identity {id}) default: {default}; policies: {}",
                    ep.name,
                    if policies.is_empty() {
                        "none".to_string()
                    } else {
                        policies.join(", ")
                    }
                );
                for (dst, ranges) in &entries {
                    let who = match dst {
                        Some(d) => format!("{d} [{}]", labels_of(engine, *d)),
                        None => "any other identity".to_string(),
                    };
                    println!("  -> {who}");
                    for (class, first, last, verdict, rule) in ranges {
                        let span = match (*class, first, last) {
                            ("other", _, _) => "all".to_string(),
                            (_, f, l) if f == l => format!("{f}"),
                            (_, 0, 65535) | ("icmp" | "icmpv6", 0, 255) => "all".to_string(),
                            (_, f, l) => format!("{f}-{l}"),
                        };
                        println!("       {class:<6} {span:<12} {verdict:<5} {rule}");
                    }
                }
            }
            Output::Json => json_eps.push(json!({
                "endpoint": ep.name,
                "identity": id.0,
                "default": default,
                "policies": policies,
                "entries": entries.iter().map(|(dst, ranges)| json!({
                    "identity": dst.map(|d| d.0),
                    "rules": ranges.iter().map(|(class, first, last, verdict, rule)| json!({
                        "proto": class, "first": first, "last": last, "verdict": verdict, "rule": rule,
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })),
        }
    }
    if output == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "endpoints": json_eps }))?
        );
    }
    Ok(())
}

pub(super) fn identity_list(engine: &Engine, output: Output) -> Result<()> {
    let mut rows = Vec::new();
    for info in engine.inventory.identities.values() {
        let users: Vec<&str> = engine
            .world
            .endpoints
            .iter()
            .zip(&engine.inventory.endpoint_identities)
            .filter(|(_, id)| **id == info.id)
            .map(|(e, _)| e.name.as_str())
            .collect();
        rows.push((info, users));
    }
    match output {
        Output::Json => {
            let v: Vec<_> = rows
                .iter()
                .map(|(info, users)| {
                    json!({
                        "identity": info.id.0,
                        "kind": info.kind,
                        "labels": info.labels.iter().map(|l| l.to_string()).collect::<Vec<_>>(),
                        "endpoints": users,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Output::Text => {
            println!(
                "{:<10} {:<11} {:<30} ENDPOINTS",
                "IDENTITY", "KIND", "LABELS"
            );
            for (info, users) in rows {
                println!(
                    "{:<10} {:<11} {:<30} {}",
                    info.id.0,
                    info.kind.name(),
                    info.labels.to_string(),
                    users.join(",")
                );
            }
        }
    }
    Ok(())
}

pub(super) fn ipcache_list(
    engine: &Engine,
    remotes: Option<&Remotes>,
    output: Output,
) -> Result<()> {
    let entries = engine.ipcache.entries();
    let host = |prefix: &ipnet::IpNet| {
        let r = remotes?.get(prefix)?;
        Some((r.host?, r.node.as_deref().map(str::to_string)))
    };
    match output {
        Output::Json => {
            let v: Vec<_> = entries
                .iter()
                .map(|e| {
                    let mut row = json!({
                        "prefix": e.prefix.to_string(),
                        "identity": e.identity.0,
                        "origin": format!("{:?}", e.origin).to_lowercase(),
                        "labels": labels_of(engine, e.identity),
                    });
                    if let Some((ip, node)) = host(&e.prefix) {
                        row["host"] = json!(ip);
                        row["node"] = json!(node);
                    }
                    row
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Output::Text => {
            // The host column only in cluster mode.
            let clustered = remotes.is_some();
            let labels_width = if clustered { 40 } else { 0 };
            print!("{:<28} {:<10} {:<9} ", "PREFIX", "IDENTITY", "ORIGIN");
            if clustered {
                println!("{:<labels_width$} HOST", "LABELS");
            } else {
                println!("LABELS");
            }
            for e in entries {
                let at = match host(&e.prefix) {
                    Some((ip, Some(node))) => format!(" {node} ({ip})"),
                    Some((ip, None)) => format!(" {ip}"),
                    None if clustered => " local".to_string(),
                    None => String::new(),
                };
                println!(
                    "{:<28} {:<10} {:<9} {:<labels_width$}{at}",
                    e.prefix.to_string(),
                    e.identity.0,
                    format!("{:?}", e.origin).to_lowercase(),
                    labels_of(engine, e.identity)
                );
            }
            println!("(addresses no prefix covers are world, identity 2)");
        }
    }
    Ok(())
}
