//! Egress semantics end to end: YAML policies loaded from files, verdicts
//! from the compiled engine, each checked against the reference evaluator.

mod common;

use common::*;
use xpf::policy::Cause;

fn cnp(name: &str, body: &str) -> String {
    format!("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: {name}\nspec:\n{body}")
}

const FRONTEND_TO_BACKEND_8080: &str = r#"
  endpointSelector: {matchLabels: {app: frontend}}
  egress:
    - toEndpoints: [{matchLabels: {app: backend}}]
      toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
"#;

#[test]
fn no_policy_allows_everything() {
    let e = engine(&[]);
    let d = decide(&e, "frontend", "198.18.10.4", TCP, 22);
    assert_eq!(d.cause, Cause::NoPolicy);
    assert!(allowed(&e, "db", "203.0.113.9", UDP, 53));
}

#[test]
fn allow_rule_and_default_deny_ipv4_and_ipv6() {
    let e = engine(&[&cnp("fe", FRONTEND_TO_BACKEND_8080)]);
    for backend in ["198.18.10.3", "2001:db8:10::3"] {
        assert!(allowed(&e, "frontend", backend, TCP, 8080));
        assert!(!allowed(&e, "frontend", backend, TCP, 8081));
        assert!(!allowed(&e, "frontend", backend, UDP, 8080));
    }
    assert_eq!(
        decide(&e, "frontend", "198.18.10.4", TCP, 8080).cause,
        Cause::DefaultDeny
    );
    // Endpoints the policy does not select are untouched.
    assert!(allowed(&e, "backend", "198.18.10.2", TCP, 1));
}

#[test]
fn port_zero_is_every_port_of_its_protocol() {
    // As in Cilium: `port: "0"` with a protocol is that protocol on any port,
    // the same as NetworkPolicy's `ports: [{protocol: TCP}]`.
    let e = engine(&[&cnp(
        "zero",
        r#"
  endpointSelector: {matchLabels: {app: frontend}}
  egress:
    - toEndpoints: [{matchLabels: {app: backend}}]
      toPorts: [{ports: [{port: "0", protocol: TCP}]}]
"#,
    )]);
    for p in [1, 80, 8080, 65535] {
        assert!(allowed(&e, "frontend", "198.18.10.3", TCP, p));
    }
    assert!(!allowed(&e, "frontend", "198.18.10.3", UDP, 53));
    assert!(!allowed(&e, "frontend", "198.18.10.4", TCP, 80));
}

#[test]
fn port_range_edges() {
    let e = engine(&[&cnp(
        "range",
        r#"
  endpointSelector: {}
  egress:
    - toPorts: [{ports: [{port: "1000", endPort: 2000, protocol: UDP}, {port: "65535"}, {port: "1"}]}]
"#,
    )]);
    assert!(!allowed(&e, "frontend", "198.18.10.3", UDP, 999));
    assert!(allowed(&e, "frontend", "198.18.10.3", UDP, 1000));
    assert!(allowed(&e, "frontend", "198.18.10.3", UDP, 2000));
    assert!(!allowed(&e, "frontend", "198.18.10.3", UDP, 2001));
    assert!(!allowed(&e, "frontend", "198.18.10.3", TCP, 1500));
    // ANY (the default protocol in Cilium) is TCP, UDP and SCTP, not ICMP.
    for p in [TCP, UDP, SCTP] {
        assert!(allowed(&e, "frontend", "198.18.10.3", p, 65535));
        assert!(allowed(&e, "frontend", "198.18.10.3", p, 1));
        assert!(!allowed(&e, "frontend", "198.18.10.3", p, 2));
        assert!(!allowed(&e, "frontend", "198.18.10.3", p, 65534));
    }
    assert!(!allowed(&e, "frontend", "198.18.10.3", ICMP, 1));
}

#[test]
fn selector_operators() {
    let rule = |expr: &str| {
        cnp(
            "sel",
            &format!(
                r#"
  endpointSelector: {{matchLabels: {{app: frontend}}}}
  egress:
    - toEndpoints: [{{matchExpressions: [{expr}]}}]
"#
            ),
        )
    };
    let reach = |e: &xpf::engine::Engine| {
        [
            "198.18.10.3",
            "198.18.10.4",
            "198.19.200.1",
            "198.18.0.1",
            "203.0.113.1",
        ]
        .map(|ip| allowed(e, "frontend", ip, TCP, 80))
    };
    // backend(app=backend,tier=api) db(app=db,env=staging) backup(app=backup) host world
    let e = engine(&[&rule("{key: app, operator: In, values: [backend, db]}")]);
    assert_eq!(reach(&e), [true, true, false, false, false]);
    let e = engine(&[&rule("{key: app, operator: NotIn, values: [backend]}")]);
    // NotIn matches endpoints without the value (and frontend itself), never
    // the host or the world: label selectors only select endpoints.
    assert_eq!(reach(&e), [false, true, true, false, false]);
    let e = engine(&[&rule("{key: tier, operator: Exists}")]);
    assert_eq!(reach(&e), [true, false, false, false, false]);
    let e = engine(&[&rule("{key: tier, operator: DoesNotExist}")]);
    assert_eq!(reach(&e), [false, true, true, false, false]);
    // matchLabels with a source prefix matches bare config labels.
    let e = engine(&[&cnp(
        "src",
        r#"
  endpointSelector: {matchLabels: {"k8s:app": frontend}}
  egress:
    - toEndpoints: [{matchLabels: {"k8s:env": staging}}]
"#,
    )]);
    assert_eq!(reach(&e), [false, true, false, false, false]);
}

#[test]
fn empty_selector_selects_endpoints_not_world_or_host() {
    let e = engine(&[&cnp(
        "all-eps",
        r#"
  endpointSelector: {matchLabels: {app: frontend}}
  egress:
    - toEndpoints: [{}]
"#,
    )]);
    assert!(allowed(&e, "frontend", "198.18.10.4", UDP, 9));
    assert!(allowed(&e, "frontend", "2001:db8:200::7", UDP, 9));
    assert!(!allowed(&e, "frontend", "198.18.0.1", UDP, 9));
    assert!(!allowed(&e, "frontend", "203.0.113.1", UDP, 9));
    // A selector naming reserved:host selects the host.
    let e = engine(&[&cnp(
        "host",
        r#"
  endpointSelector: {matchLabels: {app: frontend}}
  egress:
    - toEndpoints: [{matchLabels: {"reserved:host": ""}}]
"#,
    )]);
    assert!(allowed(&e, "frontend", "198.18.0.1", UDP, 9));
    assert!(allowed(&e, "frontend", "2001:db8::1", UDP, 9));
    assert!(!allowed(&e, "frontend", "198.18.10.4", UDP, 9));
}

#[test]
fn deny_beats_allow() {
    let allow_all = cnp(
        "allow-all",
        r#"
  endpointSelector: {}
  egress:
    - toEntities: [all]
"#,
    );
    let deny = cnp(
        "deny-db",
        r#"
  endpointSelector: {matchLabels: {app: frontend}}
  egressDeny:
    - toEndpoints: [{matchLabels: {app: db}}]
      toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
"#,
    );
    let e = engine(&[&allow_all, &deny]);
    let d = decide(&e, "frontend", "198.18.10.4", TCP, 5432);
    assert!(matches!(d.cause, Cause::Deny(_)));
    assert!(allowed(&e, "frontend", "198.18.10.4", TCP, 5433));
    assert!(allowed(&e, "backend", "198.18.10.4", TCP, 5432));
    assert!(matches!(
        decide(&e, "frontend", "198.18.10.3", TCP, 1).cause,
        Cause::Allow(_)
    ));
}

#[test]
fn default_deny_switches_on_and_off() {
    // A deny-only policy with enableDefaultDeny off: only the denied traffic
    // is dropped.
    let deny_only = cnp(
        "deny-only",
        r#"
  endpointSelector: {matchLabels: {app: frontend}}
  enableDefaultDeny: {egress: false}
  egressDeny:
    - toCIDR: [198.19.99.0/24]
"#,
    );
    let e = engine(&[&deny_only]);
    assert_eq!(
        decide(&e, "frontend", "198.19.1.1", TCP, 80).cause,
        Cause::DefaultAllow
    );
    assert!(!allowed(&e, "frontend", "198.19.99.1", TCP, 80));
    // The same deny rule with default deny on (the default) drops the rest.
    let e = engine(&[&deny_only.replace("  enableDefaultDeny: {egress: false}\n", "")]);
    assert_eq!(
        decide(&e, "frontend", "198.19.1.1", TCP, 80).cause,
        Cause::DefaultDeny
    );
    // An empty egress rule turns default deny on without allowing anything.
    let e = engine(&[&cnp(
        "lockdown",
        "  endpointSelector: {matchLabels: {app: db}}\n  egress: [{}]\n",
    )]);
    assert_eq!(
        decide(&e, "db", "198.18.10.3", TCP, 80).cause,
        Cause::DefaultDeny
    );
    // One policy with default deny on is enough, even beside one that is off.
    let open = cnp(
        "open",
        r#"
  endpointSelector: {matchLabels: {app: db}}
  enableDefaultDeny: {egress: false}
  egress:
    - toPorts: [{ports: [{port: "53", protocol: UDP}]}]
"#,
    );
    let e = engine(&[&open]);
    assert!(allowed(&e, "db", "198.18.10.3", TCP, 80));
    let e = engine(&[
        &open,
        &cnp(
            "lockdown",
            "  endpointSelector: {matchLabels: {app: db}}\n  egress: [{}]\n",
        ),
    ]);
    assert!(!allowed(&e, "db", "198.18.10.3", TCP, 80));
    assert!(allowed(&e, "db", "198.18.10.3", UDP, 53));
    // An empty `egress: []` is no egress section at all.
    let e = engine(&[&cnp(
        "empty-list",
        "  endpointSelector: {matchLabels: {app: db}}\n  egress: []\n",
    )]);
    assert_eq!(
        decide(&e, "db", "198.18.10.3", TCP, 80).cause,
        Cause::NoPolicy
    );
}

#[test]
fn cidr_except_and_the_cidr_vs_endpoint_rule() {
    let e = engine(&[&cnp(
        "cidr",
        r#"
  endpointSelector: {matchLabels: {app: frontend}}
  egress:
    - toCIDRSet:
        - cidr: 198.18.0.0/15
          except: [198.19.99.0/24]
        - cidr: 2001:db8::/32
          except: [2001:db8:99::/48]
"#,
    )]);
    // World addresses inside the CIDR, outside the exception.
    assert!(allowed(&e, "frontend", "198.19.1.1", TCP, 80));
    assert!(allowed(&e, "frontend", "2001:db8:5::1", TCP, 80));
    assert!(!allowed(&e, "frontend", "198.19.99.1", TCP, 80));
    assert!(!allowed(&e, "frontend", "2001:db8:99::1", TCP, 80));
    assert!(!allowed(&e, "frontend", "203.0.113.1", TCP, 80));
    // Endpoints, labelled ipcache entries and the host inside the CIDR are
    // matched by labels and entities, never by the CIDR.
    assert!(!allowed(&e, "frontend", "198.18.10.3", TCP, 80));
    assert!(!allowed(&e, "frontend", "2001:db8:10::3", TCP, 80));
    assert!(!allowed(&e, "frontend", "198.19.200.5", TCP, 80));
    assert!(!allowed(&e, "frontend", "2001:db8:200::5", TCP, 80));
    assert!(!allowed(&e, "frontend", "198.18.0.1", TCP, 80));
    // A CIDR longer than a labelled entry still does not match inside it.
    let e = engine(&[&cnp(
        "inner",
        r#"
  endpointSelector: {matchLabels: {app: frontend}}
  egress:
    - toCIDR: [198.19.200.128/25, 198.19.201.7]
"#,
    )]);
    assert!(!allowed(&e, "frontend", "198.19.200.200", TCP, 80));
    assert!(allowed(&e, "frontend", "198.19.201.7", TCP, 80));
    assert!(!allowed(&e, "frontend", "198.19.201.8", TCP, 80));
}

/// Two other hosts' node addresses, as cluster mode adds them.
const NODES: [&str; 2] = ["198.18.100.9", "2001:db8:100::9"];

#[test]
fn entities() {
    let ent = |list: &str| {
        engine_with_nodes(&[&cnp(
            "ent",
            &format!("  endpointSelector: {{matchLabels: {{app: frontend}}}}\n  egress:\n    - toEntities: [{list}]\n"),
        )], &NODES)
    };
    // An endpoint, a labelled entry, the host, two world addresses, the
    // two remote nodes, and a world address beside a node.
    let reach = |e: &xpf::engine::Engine| {
        [
            "198.18.10.3",
            "2001:db8:200::1",
            "198.18.0.1",
            "2001:db8:77::1",
            "203.0.113.1",
            NODES[0],
            NODES[1],
            "198.18.100.10",
        ]
        .map(|ip| allowed(e, "frontend", ip, UDP, 53))
    };
    let (t, f) = (true, false);
    assert_eq!(reach(&ent("world")), [f, f, f, t, t, f, f, t]);
    assert_eq!(reach(&ent("host")), [f, f, t, f, f, f, f, f]);
    assert_eq!(reach(&ent("remote-node")), [f, f, f, f, f, t, t, f]);
    assert_eq!(reach(&ent("cluster")), [t, t, t, f, f, t, t, f]);
    assert_eq!(reach(&ent("all")), [t; 8]);
}

#[test]
fn remote_nodes_by_reserved_label_only() {
    let to = |selector: &str| {
        engine_with_nodes(
            &[&cnp(
                "nodes",
                &format!(
                    "  endpointSelector: {{matchLabels: {{app: frontend}}}}\n  egress:\n    \
                     - toEndpoints: [{selector}]\n"
                ),
            )],
            &NODES,
        )
    };
    let e = to(r#"{matchLabels: {"reserved:remote-node": ""}}"#);
    for node in NODES {
        assert!(allowed(&e, "frontend", node, TCP, 22), "{node}");
    }
    assert!(!allowed(&e, "frontend", "198.18.10.3", TCP, 22));
    assert!(!allowed(&e, "frontend", "198.18.0.1", TCP, 22));
    assert!(!allowed(&e, "frontend", "198.18.100.10", TCP, 22));

    let e = to("{}");
    assert!(allowed(&e, "frontend", "198.18.10.3", TCP, 22));
    for node in NODES {
        assert!(!allowed(&e, "frontend", node, TCP, 22), "{node}");
    }
}

#[test]
fn icmp_types() {
    let e = engine(&[&cnp(
        "icmp",
        r#"
  endpointSelector: {matchLabels: {app: frontend}}
  egress:
    - toEndpoints: [{matchLabels: {app: backend}}]
      icmps:
        - fields: [{type: 8}, {type: EchoRequest, family: IPv6}]
"#,
    )]);
    assert!(allowed(&e, "frontend", "198.18.10.3", ICMP, 8));
    assert!(!allowed(&e, "frontend", "198.18.10.3", ICMP, 13));
    assert!(allowed(&e, "frontend", "2001:db8:10::3", ICMPV6, 128));
    assert!(!allowed(&e, "frontend", "2001:db8:10::3", ICMPV6, 8));
    assert!(!allowed(&e, "frontend", "198.18.10.3", TCP, 8));
    // Other IP protocols are matched only by rules without L4.
    assert!(!allowed(&e, "frontend", "198.18.10.3", 47, 0));
}

#[test]
fn network_policy_namespacing() {
    let mut cfg = ENDPOINTS.to_string();
    cfg = cfg.replace(
        "labels: {app: frontend, env: prod}",
        "labels: {app: frontend, env: prod, io.kubernetes.pod.namespace: web}",
    );
    cfg = cfg.replace(
        "labels: {app: backend, env: prod, tier: api}",
        "labels: {app: backend, env: prod, tier: api, io.kubernetes.pod.namespace: web}",
    );
    cfg = cfg.replace(
        "labels: {app: db, env: staging}",
        "labels: {app: db, env: staging, io.kubernetes.pod.namespace: data, io.cilium.k8s.namespace.labels.team: storage}",
    );
    let np = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: fe, namespace: web}
spec:
  podSelector: {matchLabels: {app: frontend}}
  policyTypes: [Egress]
  egress:
    - to: [{podSelector: {}}]
      ports: [{port: 8080}]
    - to:
        - namespaceSelector: {matchLabels: {team: storage}}
          podSelector: {matchLabels: {app: db}}
      ports: [{port: 5432, protocol: TCP}]
    - to: [{ipBlock: {cidr: 198.19.0.0/16, except: [198.19.99.0/24]}}]
      ports: [{protocol: UDP}]
"#;
    let d = Dir::new(&cfg, &[("np.yaml", np)]);
    let e = xpf::engine::Engine::new(&d.load().unwrap().world).unwrap();
    // podSelector {} is every pod in the policy's namespace, not db's.
    assert!(allowed(&e, "frontend", "198.18.10.3", TCP, 8080));
    assert!(!allowed(&e, "frontend", "198.18.10.4", TCP, 8080));
    assert!(!allowed(&e, "frontend", "198.18.10.3", UDP, 8080));
    // namespaceSelector keys other than the name map to namespace labels.
    assert!(allowed(&e, "frontend", "198.18.10.4", TCP, 5432));
    // ipBlock with except, a protocol without port means all ports.
    assert!(allowed(&e, "frontend", "198.19.1.1", UDP, 1));
    assert!(allowed(&e, "frontend", "198.19.1.1", UDP, 65535));
    assert!(!allowed(&e, "frontend", "198.19.99.1", UDP, 1));
    assert!(!allowed(&e, "frontend", "198.19.1.1", TCP, 1));
    // The policy selects only its namespace.
    assert!(allowed(&e, "db", "198.18.10.3", TCP, 1));

    // namespaceSelector on the namespace name; egress: [{}] allows all.
    let np2 = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: data}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
    - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: web}}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: all, namespace: web}
spec:
  podSelector: {matchLabels: {app: backend}}
  egress: [{}]
"#;
    let d = Dir::new(&cfg, &[("np.yaml", np2)]);
    let e = xpf::engine::Engine::new(&d.load().unwrap().world).unwrap();
    assert!(allowed(&e, "db", "198.18.10.2", TCP, 1));
    assert!(!allowed(&e, "db", "198.19.200.1", TCP, 1));
    assert!(allowed(&e, "backend", "203.0.113.1", TCP, 1));
    // policyTypes: [Egress] with no rules denies everything.
    let np3 = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x, namespace: web}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n";
    let d = Dir::new(&cfg, &[("np.yaml", np3)]);
    let e = xpf::engine::Engine::new(&d.load().unwrap().world).unwrap();
    assert_eq!(
        decide(&e, "frontend", "198.18.10.3", TCP, 1).cause,
        Cause::DefaultDeny
    );
    // Ingress-only policy types leave egress open.
    let np4 = np3.replace("[Egress]", "[Ingress]");
    let d = Dir::new(&cfg, &[("np.yaml", np4.as_str())]);
    let e = xpf::engine::Engine::new(&d.load().unwrap().world).unwrap();
    assert_eq!(
        decide(&e, "frontend", "198.18.10.3", TCP, 1).cause,
        Cause::NoPolicy
    );
}

#[test]
fn namespaced_cilium_policy_scopes_selectors() {
    let cfg = ENDPOINTS
        .replace(
            "{app: frontend, env: prod}",
            "{app: frontend, env: prod, io.kubernetes.pod.namespace: web}",
        )
        .replace(
            "{app: backend, env: prod, tier: api}",
            "{app: backend, env: prod, tier: api, io.kubernetes.pod.namespace: web}",
        )
        .replace(
            "{app: db, env: staging}",
            "{app: db, env: staging, io.kubernetes.pod.namespace: data}",
        );
    let p = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fe, namespace: web}
spec:
  endpointSelector: {}
  egress:
    - toEndpoints: [{}]
    - toEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": data}}]
      toPorts: [{ports: [{port: "5432"}]}]
"#;
    let d = Dir::new(&cfg, &[("p.yaml", p)]);
    let e = xpf::engine::Engine::new(&d.load().unwrap().world).unwrap();
    assert!(allowed(&e, "frontend", "198.18.10.3", TCP, 1));
    assert!(!allowed(&e, "frontend", "198.18.10.4", TCP, 1));
    assert!(allowed(&e, "frontend", "198.18.10.4", TCP, 5432));
    // The subject is scoped too: db (namespace data) is not selected.
    assert_eq!(
        decide(&e, "db", "198.18.10.3", TCP, 1).cause,
        Cause::NoPolicy
    );
    // A clusterwide policy is never scoped.
    let ccnp = p
        .replace("CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy")
        .replace("{name: fe, namespace: web}", "{name: fe}");
    let d = Dir::new(&cfg, &[("p.yaml", ccnp.as_str())]);
    let e = xpf::engine::Engine::new(&d.load().unwrap().world).unwrap();
    assert!(allowed(&e, "frontend", "198.18.10.4", TCP, 1));
    assert!(allowed(&e, "db", "198.18.10.3", TCP, 1));
}

#[test]
fn documents_lists_json_and_specs() {
    let list = r#"{"apiVersion": "v1", "kind": "List", "items": [
      {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
       "metadata": {"name": "a"},
       "specs": [
         {"endpointSelector": {"matchLabels": {"app": "frontend"}},
          "egress": [{"toEndpoints": [{"matchLabels": {"app": "backend"}}]}]},
         {"endpointSelector": {"matchLabels": {"app": "db"}}, "egress": [{}]}
       ]}
    ]}"#;
    let e = engine(&[list]);
    assert!(allowed(&e, "frontend", "198.18.10.3", TCP, 1));
    assert!(!allowed(&e, "frontend", "198.18.10.4", TCP, 1));
    assert!(!allowed(&e, "db", "198.18.10.3", TCP, 1));
    assert_eq!(e.world.policies.len(), 2);
}
