//! Bad input is refused whole, with a message that names the file, the line
//! where the parser knows it, the policy and the field.

mod common;

use common::*;

fn cnp(spec: &str) -> String {
    format!("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: bad-one\nspec:\n  endpointSelector: {{}}\n{spec}")
}

fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "error message lacks `{p}`:\n{msg}");
    }
}

#[test]
fn malformed_yaml_names_file_and_line() {
    let msg = load_error(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x\nspec: {}\n",
    );
    assert_mentions(&msg, &["bad.yaml:", ":4:"]);
}

#[test]
fn invalid_cidr() {
    let msg = load_error(&cnp("  egress:\n    - toCIDR: [198.18.0.0/33]\n"));
    assert_mentions(
        &msg,
        &[
            "bad.yaml",
            "CiliumNetworkPolicy `bad-one`",
            "spec.egress[0].toCIDR[0]",
            "invalid CIDR `198.18.0.0/33`",
        ],
    );
    let msg = load_error(&cnp(
        "  egress:\n    - toCIDRSet: [{cidr: 198.18.0.0/16, except: [198.20.0.0/24]}]\n",
    ));
    assert_mentions(
        &msg,
        &[
            "spec.egress[0].toCIDRSet[0].except[0]",
            "not inside 198.18.0.0/16",
        ],
    );
}

#[test]
fn port_out_of_range() {
    let port = |p: &str| {
        cnp(&format!(
            "  egress:\n    - toPorts: [{{ports: [{{port: \"{p}\"}}]}}]\n"
        ))
    };
    let msg = load_error(&port("-1"));
    assert_mentions(
        &msg,
        &[
            "spec.egress[0].toPorts[0].ports[0].port",
            "port -1 is out of range",
        ],
    );
    let msg = load_error(&port("65536"));
    assert_mentions(&msg, &["spec.egress[0].toPorts[0].ports[0].port", "65536"]);
    let msg = load_error(&port("http"));
    assert_mentions(
        &msg,
        &["ports[0].port", "named port `http` is not supported"],
    );
}

#[test]
fn end_port_with_port_zero() {
    // Port 0 is every port; a range starting there says nothing sensible.
    let msg = load_error(&cnp(
        "  egress:\n    - toPorts: [{ports: [{port: \"0\", endPort: 80}]}]\n",
    ));
    assert_mentions(&msg, &["ports[0].endPort", "needs a `port` above 0"]);
}

#[test]
fn end_port_below_port() {
    let msg = load_error(&cnp(
        "  egress:\n    - toPorts: [{ports: [{port: \"80\", endPort: 79}]}]\n",
    ));
    assert_mentions(&msg, &["ports[0].endPort", "endPort 79 is below port 80"]);
    let msg = load_error(&cnp(
        "  egress:\n    - toPorts: [{ports: [{port: \"80\", endPort: 70000}]}]\n",
    ));
    assert_mentions(&msg, &["ports[0].endPort", "70000 is out of range"]);
}

#[test]
fn unknown_protocol() {
    let msg = load_error(&cnp(
        "  egress:\n    - toPorts: [{ports: [{port: \"80\", protocol: QUIC}]}]\n",
    ));
    assert_mentions(&msg, &["ports[0].protocol", "unknown protocol `QUIC`"]);
    // NetworkPolicy has no ANY.
    let msg = load_error("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: n}\nspec:\n  podSelector: {}\n  egress: [{ports: [{port: 80, protocol: ANY}]}]\n");
    assert_mentions(
        &msg,
        &[
            "NetworkPolicy `n`",
            "spec.egress[0].ports[0].protocol",
            "`ANY`",
        ],
    );
}

#[test]
fn unknown_operator() {
    let msg = load_error(&cnp(
        "  egress:\n    - toEndpoints: [{matchExpressions: [{key: app, operator: Matches, values: [x]}]}]\n",
    ));
    assert_mentions(
        &msg,
        &[
            "spec.egress[0].toEndpoints[0].matchExpressions[0].operator",
            "unknown operator `Matches`",
        ],
    );
    let msg = load_error(&cnp(
        "  egress:\n    - toEndpoints: [{matchExpressions: [{key: app, operator: In}]}]\n",
    ));
    assert_mentions(&msg, &["matchExpressions[0].values", "must not be empty"]);
}

#[test]
fn unsupported_fields_are_refused_with_their_line() {
    for (field, body) in [
        ("toFQDNs", "  egress:\n    - toFQDNs: [{matchName: example.com}]\n"),
        ("toServices", "  egress:\n    - toServices: [{k8sService: {serviceName: x}}]\n"),
        ("toGroups", "  egress:\n    - toGroups: [{aws: {}}]\n"),
        ("authentication", "  egress:\n    - toEndpoints: [{}]\n      authentication: {mode: required}\n"),
        ("rules", "  egress:\n    - toPorts: [{ports: [{port: \"80\"}], rules: {http: [{method: GET}]}}]\n"),
        ("nodeSelector", "  nodeSelector: {}\n"),
    ] {
        let msg = load_error(&cnp(body));
        assert_mentions(&msg, &["bad.yaml:", "CiliumNetworkPolicy `bad-one`", field, "not supported by xpf"]);
    }
    let msg = load_error(&cnp(
        "  egress:\n    - toEndpoints: [{}]\n      toSomething: 1\n",
    ));
    assert_mentions(
        &msg,
        &["bad.yaml:9:", "spec.egress[0].toSomething", "unknown field"],
    );
}

#[test]
fn unsupported_entity_and_mixed_l4() {
    let msg = load_error(&cnp("  egress:\n    - toEntities: [kube-apiserver]\n"));
    assert_mentions(
        &msg,
        &[
            "spec.egress[0].toEntities[0]",
            "entity `kube-apiserver` is not supported",
        ],
    );
    let msg = load_error(&cnp(
        "  egress:\n    - toPorts: [{ports: [{port: \"80\"}]}]\n      icmps: [{fields: [{type: 8}]}]\n",
    ));
    assert_mentions(&msg, &["spec.egress[0]", "cannot be combined"]);
    let msg = load_error(&cnp("  egress:\n    - icmps: [{fields: [{type: 300}]}]\n"));
    assert_mentions(&msg, &["icmps[0].fields[0].type", "300"]);
}

#[test]
fn kinds_and_versions() {
    let msg = load_error("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n");
    assert_mentions(&msg, &["kind", "unsupported kind `ConfigMap`"]);
    let msg = load_error("apiVersion: cilium.io/v1\nkind: CiliumNetworkPolicy\nmetadata: {name: c}\nspec: {endpointSelector: {}}\n");
    assert_mentions(&msg, &["apiVersion", "cilium.io/v2"]);
    let msg = load_error("apiVersion: v1\nkind: List\nitems:\n  - apiVersion: cilium.io/v2\n    kind: CiliumNetworkPolicy\n    metadata: {name: inner}\n    spec:\n      endpointSelector: {}\n      egress: [{toCIDR: [nope]}]\n");
    assert_mentions(
        &msg,
        &[
            "`inner`",
            "items[0].spec.egress[0].toCIDR[0]",
            "invalid CIDR `nope`",
        ],
    );
}

#[test]
fn one_bad_file_refuses_the_whole_config() {
    let good = cnp("  egress: [{}]\n").replace("bad-one", "good");
    let d = Dir::new(
        ENDPOINTS,
        &[("a-good.yaml", &good), ("b-bad.yaml", "kind: [")],
    );
    let msg = d.load().unwrap_err().to_string();
    assert_mentions(&msg, &["b-bad.yaml"]);
    let d = Dir::new(ENDPOINTS, &[("a.yaml", &good), ("b.yaml", &good)]);
    assert_mentions(
        &d.load().unwrap_err().to_string(),
        &["`good`", "defined twice"],
    );
}

#[test]
fn config_errors_name_the_field() {
    let cases = [
        (
            ENDPOINTS.replace("name: db", "name: frontend"),
            "endpoints[2].name",
            "duplicate endpoint",
        ),
        (
            ENDPOINTS.replace("ipv4: 198.18.10.4", "ipv4: 198.18.10.3"),
            "endpoints[2].ipv4",
            "used twice",
        ),
        (
            ENDPOINTS.replace("{app: db, env: staging}", "{\"reserved:host\": x}"),
            "endpoints[2].labels",
            "assigned by xpf",
        ),
        (
            ENDPOINTS.replace("{app: db, env: staging}", "{\"bogus:app\": x}"),
            "endpoints[2].labels",
            "unknown source `bogus`",
        ),
        (
            ENDPOINTS.replace("prefix: 198.19.200.0/24", "prefix: 198.19.200.0/40"),
            "ipcache[0].prefix",
            "invalid CIDR",
        ),
        (
            ENDPOINTS.replace("policies: [policies/]", "policies: [missing/]"),
            "policies[0]",
            "does not exist",
        ),
    ];
    for (cfg, field, what) in cases {
        let d = Dir::new(&cfg, &[]);
        let msg = d.load().unwrap_err().to_string();
        assert_mentions(&msg, &["xpf.yaml", field, what]);
    }
    let d = Dir::new(&format!("{ENDPOINTS}\nworkerz: 3\n"), &[]);
    assert_mentions(
        &d.load().unwrap_err().to_string(),
        &["xpf.yaml:", "unknown field `workerz`"],
    );
}

mod never_panics {
    use proptest::prelude::*;
    use std::path::Path;
    use xpf::policy::parse::parse_policies;

    const VALID: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: web}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
    - toEndpoints: [{matchExpressions: [{key: app, operator: In, values: [db]}]}]
      toPorts: [{ports: [{port: "5432", endPort: 5440, protocol: TCP}]}]
    - toCIDRSet: [{cidr: 198.18.0.0/15, except: [198.19.0.0/24]}]
    - icmps: [{fields: [{type: 8}]}]
  egressDeny:
    - toEntities: [world]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: n}
spec:
  podSelector: {}
  egress: [{to: [{ipBlock: {cidr: 2001:db8::/32}}], ports: [{port: 53, protocol: UDP}]}]
"#;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Mangled policy files are refused or loaded, never a panic: the
        /// parser is a fuzz target in the shape of a property.
        #[test]
        fn mangled_documents(cut in 0..VALID.len(), flips in prop::collection::vec((0..VALID.len(), any::<u8>()), 0..6)) {
            let mut bytes = VALID.as_bytes()[..cut].to_vec();
            for (at, b) in flips {
                if at < bytes.len() {
                    bytes[at] = b;
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            let _ = parse_policies(&text, Path::new("fuzz.yaml"));
        }

        #[test]
        fn arbitrary_text(text in ".{0,300}") {
            let _ = parse_policies(&text, Path::new("fuzz.yaml"));
        }
    }

    #[test]
    fn the_seed_document_loads() {
        assert_eq!(
            parse_policies(VALID, Path::new("ok.yaml")).unwrap().len(),
            2
        );
    }
}
