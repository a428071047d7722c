//! Monitor events as flows: the JSON `xpf monitor --output json` prints,
//! one object per line in Hubble's shape (`{"flow": {...}, "time": ...}`
//! with `verdict`, `drop_reason_desc`, `IP`, `l4`, `source`,
//! `destination`, `Type`, `traffic_direction`, `event_type`, `is_reply`,
//! `Summary`), plus an `xpf` object with what Hubble has no field for
//! (xpf's own drop reason, the policy and rule, the revision).
//!
//! Names and labels come from the engine as it is now: an event decided
//! under an older revision keeps its numbers, and says its policy was
//! since replaced rather than name the wrong one.

use std::net::IpAddr;

use serde_json::{json, Map, Value};

use crate::datapath::monitor::MonitorEvent;
use crate::engine::Engine;
use crate::filter::DropReason;
use crate::policy::compile::Code;
use crate::wire::{tcp_flags, FlowInfo};

/// Which events a monitor wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Every dropped frame.
    Drop,
    /// Policy verdicts: new flows let through, and frames policy denied.
    Verdict,
    All,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "drop" => Some(Kind::Drop),
            "verdict" => Some(Kind::Verdict),
            "all" => Some(Kind::All),
            _ => None,
        }
    }

    pub fn wants(self, e: &MonitorEvent) -> bool {
        match self {
            Kind::All => true,
            Kind::Drop => e.drop.is_some(),
            Kind::Verdict => matches!(
                e.drop,
                None | Some(DropReason::PolicyDenied | DropReason::PolicyDefault)
            ),
        }
    }
}

/// Hubble's `drop_reason_desc` for an xpf drop reason.
fn hubble_reason(r: DropReason) -> &'static str {
    match r {
        DropReason::PolicyDefault => "POLICY_DENIED",
        DropReason::PolicyDenied => "POLICY_DENY",
        DropReason::SpoofedSource => "INVALID_SOURCE_IP",
        DropReason::NotIp => "UNSUPPORTED_L3_PROTOCOL",
        DropReason::VlanTagged => "VLAN_FILTERED",
        DropReason::ConntrackFull => "CT_MAP_INSERTION_FAILED",
        DropReason::TxFull | DropReason::HandoffFull => "QUEUE_FULL",
        DropReason::FragmentNoFirst => "FRAG_NOT_FOUND",
        _ => "INVALID_PACKET_DROPPED",
    }
}

/// RFC 3339 UTC with nanoseconds.
fn rfc3339_nanos(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let base = crate::control::clock::rfc3339_utc(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
    );
    format!("{}.{:09}Z", base.trim_end_matches('Z'), ns % 1_000_000_000)
}

fn l4(e: &FlowInfo) -> Value {
    let ports = json!({ "source_port": e.sport, "destination_port": e.dport });
    match e.proto {
        6 => {
            let mut flags = Map::new();
            for (bit, name) in [
                (tcp_flags::SYN, "SYN"),
                (tcp_flags::ACK, "ACK"),
                (tcp_flags::FIN, "FIN"),
                (tcp_flags::RST, "RST"),
                (tcp_flags::PSH, "PSH"),
            ] {
                if e.tcp_flags & bit != 0 {
                    flags.insert(name.into(), Value::Bool(true));
                }
            }
            let mut tcp = ports;
            tcp["flags"] = Value::Object(flags);
            json!({ "TCP": tcp })
        }
        17 => json!({ "UDP": ports }),
        132 => json!({ "SCTP": ports }),
        1 => json!({ "ICMPv4": { "type": e.icmp_type, "code": e.icmp_code } }),
        58 => json!({ "ICMPv6": { "type": e.icmp_type, "code": e.icmp_code } }),
        _ => Value::Null,
    }
}

fn labels_of(engine: &Engine, id: crate::identity::NumericIdentity) -> Vec<String> {
    engine
        .inventory
        .identity(id)
        .map(|i| i.labels.iter().map(|l| l.to_string()).collect())
        .unwrap_or_default()
}

/// The event as one line of flow JSON.
pub fn flow_json(engine: &Engine, e: &MonitorEvent, node: &str) -> Value {
    let time = rfc3339_nanos(e.time_ns);
    let sender = &engine.world.endpoints[usize::from(e.endpoint)];
    let src_id = engine.inventory.endpoint_identities[usize::from(e.endpoint)];
    let dst_local = engine
        .world
        .endpoints
        .iter()
        .find(|ep| e.flow.is_some_and(|f| ep.addresses().any(|a| a == f.dst)));
    let current = e.revision == engine.revision();
    let rule = (e.code != 0 && current)
        .then(|| engine.compiled.rule(Code(e.code)))
        .flatten();
    let (policy, rule_text) = match rule {
        Some(r) => {
            let p = &engine.world.policies[r.policy as usize];
            (
                Value::String(format!("{} {}", p.kind, p.display_name())),
                Value::String(format!(
                    "{}[{}]",
                    if r.deny { "egressDeny" } else { "egress" },
                    r.rule
                )),
            )
        }
        None => (Value::Null, Value::Null),
    };
    let decided_by_policy = matches!(
        e.drop,
        None | Some(DropReason::PolicyDefault | DropReason::PolicyDenied)
    );
    let (cause, selected_by) = if rule.is_some() {
        (Value::String("rule".into()), Value::Null)
    } else if current && decided_by_policy && e.flow.is_some() {
        let (cause, names) = default_cause(engine, &sender.labels);
        (Value::String(cause.into()), json!(names))
    } else {
        (Value::Null, Value::Null)
    };
    let verdict = if e.drop.is_some() {
        "DROPPED"
    } else {
        "FORWARDED"
    };
    let mut flow = json!({
        "time": time,
        "verdict": verdict,
        "Type": "L3_L4",
        "traffic_direction": "EGRESS",
        "event_type": { "type": if e.drop.is_some() { 1 } else { 5 } },
        "is_reply": false,
        "source": {
            "ID": e.endpoint,
            "identity": src_id.0,
            "labels": labels_of(engine, src_id),
            "pod_name": sender.name,
        },
        "destination": {
            "identity": e.dst_identity.0,
            "labels": labels_of(engine, e.dst_identity),
        },
        "node_name": node,
    });
    if let Some(local) = dst_local {
        flow["destination"]["pod_name"] = Value::String(local.name.clone());
    }
    if let Some(f) = &e.flow {
        flow["IP"] = json!({
            "source": f.src,
            "destination": f.dst,
            "ipVersion": if matches!(f.src, IpAddr::V4(_)) { "IPv4" } else { "IPv6" },
        });
        let l4 = l4(f);
        if !l4.is_null() {
            flow["l4"] = l4;
        }
    }
    if let Some(r) = e.drop {
        flow["drop_reason_desc"] = Value::String(hubble_reason(r).into());
    }
    flow["Summary"] = Value::String(summary(e, sender.name.as_str()));
    json!({
        "flow": flow,
        "node_name": node,
        "time": rfc3339_nanos(e.time_ns),
        "xpf": {
            "reason": e.drop.map(DropReason::as_str),
            "policy": policy,
            "rule": rule_text,
            "cause": cause,
            "selected_by": selected_by,
            "revision": e.revision,
            "policy_replaced": !current,
        },
    })
}

/// Why no rule decided for a sender with `labels`: default deny, default
/// allow or no policy, with the policies that select it for egress (the
/// ones whose defaults applied), as `Kind name`.
fn default_cause(engine: &Engine, labels: &crate::labels::LabelSet) -> (&'static str, Vec<String>) {
    let selecting: Vec<_> = engine
        .world
        .policies
        .iter()
        .filter(|p| p.egress.has_section && p.subject.matches(labels))
        .collect();
    let cause = if selecting.is_empty() {
        "no policy"
    } else if selecting.iter().any(|p| p.egress.enables_default_deny()) {
        "default deny"
    } else {
        "default allow"
    };
    let names = selecting
        .iter()
        .map(|p| format!("{} {}", p.kind, p.display_name()))
        .collect();
    (cause, names)
}

fn summary(e: &MonitorEvent, sender: &str) -> String {
    let what = match e.drop {
        Some(r) => format!("dropped ({})", r.as_str()),
        None => "new flow allowed".into(),
    };
    let Some(f) = &e.flow else {
        return format!("{sender}: unparsable frame {what}");
    };
    let proto = match f.proto {
        6 => "TCP",
        17 => "UDP",
        132 => "SCTP",
        1 => "ICMPv4",
        58 => "ICMPv6",
        _ => "IP",
    };
    format!(
        "{sender}: {proto} {} -> {} {what}",
        endpoint_of(f.src, f.sport, f.proto),
        endpoint_of(f.dst, f.dport, f.proto)
    )
}

fn endpoint_of(addr: IpAddr, port: u16, proto: u8) -> String {
    match (addr, matches!(proto, 6 | 17 | 132)) {
        (IpAddr::V4(a), true) => format!("{a}:{port}"),
        (IpAddr::V6(a), true) => format!("[{a}]:{port}"),
        (a, false) => a.to_string(),
    }
}

/// A line saying `n` events were lost where.
pub fn lost_json(source: &str, n: u64) -> Value {
    json!({ "lost_events": { "source": source, "num_events_lost": n } })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_with_nanoseconds() {
        assert_eq!(
            rfc3339_nanos(1_700_000_000_123_456_789),
            "2023-11-14T22:13:20.123456789Z"
        );
    }

    /// A drop or an allow that no rule decided names the default and the
    /// policies whose default it was; one a rule decided names the rule.
    #[test]
    fn a_default_names_the_selecting_policies() {
        use crate::policy::parse::parse_policies;
        use crate::world::{Endpoint, World};
        let ep = Endpoint::app_at;
        let policies = parse_policies(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: client-out}\n\
             spec:\n  endpointSelector: {matchLabels: {app: client}}\n  egress:\n  \
             - toEndpoints: [{matchLabels: {app: db}}]\n",
            std::path::Path::new("p.yaml"),
        )
        .unwrap();
        let world = World::new(
            vec![ep("client", 10), ep("db", 11), ep("loner", 12)],
            vec![],
            vec![],
            policies,
        )
        .unwrap();
        let engine = Engine::new(&world).unwrap();
        let event = |endpoint: u16, dst: [u8; 4], drop: Option<DropReason>| {
            let (src, dst): (IpAddr, IpAddr) =
                ([198, 18, 0, 10 + endpoint as u8].into(), dst.into());
            let check = engine.check(usize::from(endpoint), dst, 17, 53);
            MonitorEvent {
                time_ns: 0,
                endpoint,
                drop,
                flow: Some(crate::wire::FlowInfo {
                    src,
                    dst,
                    proto: 17,
                    sport: 4000,
                    dport: 53,
                    icmp_type: 0,
                    icmp_code: 0,
                    tcp_flags: 0,
                    fragment: crate::wire::Fragment::None,
                    l3_offset: 0,
                    l4_offset: 0,
                    l4_len: 0,
                }),
                dst_identity: check.dst_identity,
                code: engine
                    .compiled
                    .table(check.src_identity)
                    .lookup_code(check.dst_identity, 17, 53)
                    .0,
                revision: engine.revision(),
            }
        };
        let denied = flow_json(
            &engine,
            &event(0, [198, 18, 9, 9], Some(DropReason::PolicyDefault)),
            "n",
        );
        assert_eq!(denied["xpf"]["cause"], "default deny", "{denied}");
        assert_eq!(
            denied["xpf"]["selected_by"],
            json!(["CiliumNetworkPolicy client-out"]),
            "{denied}"
        );
        let allowed = flow_json(&engine, &event(0, [198, 18, 0, 11], None), "n");
        assert_eq!(allowed["xpf"]["cause"], "rule", "{allowed}");
        assert_eq!(allowed["xpf"]["rule"], "egress[0]", "{allowed}");
        let unselected = flow_json(&engine, &event(2, [198, 18, 9, 9], None), "n");
        assert_eq!(unselected["xpf"]["cause"], "no policy", "{unselected}");
        assert_eq!(unselected["xpf"]["selected_by"], json!([]), "{unselected}");
    }
}
