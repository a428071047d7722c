//! One rule set for an endpoint: every config the suite uses, and configs
//! on each edge of the rules, get the same answer from the checks every
//! command runs (loading the config, as `policy check` and `identity list`
//! do) and from the checks `xpf run` adds before it touches the system
//! (each endpoint's spec). A config the first accept is never one the
//! second refuses.

mod common;

use common::lab::lab_config;
use common::{Dir, ENDPOINTS};
use xpf::datapath::endpoint_specs;

/// `Ok` when loading accepts the config and every spec validates; the
/// message of whichever refused otherwise, and which one.
fn judge(config: &str) -> Result<(), (&'static str, String)> {
    let d = Dir::new(config, &[]);
    let loaded = d.load().map_err(|e| ("load", e.to_string()))?;
    for spec in endpoint_specs(&loaded.world) {
        spec.validate().map_err(|e| ("run", e.to_string()))?;
    }
    Ok(())
}

fn endpoint(fields: &str) -> String {
    format!("endpoints:\n  - {{name: ep, labels: {{app: a}}, {fields}}}\n")
}

#[test]
fn loading_and_run_agree_on_every_config() {
    let configs = vec![
        ENDPOINTS.replace("policies: [policies/]\n", ""),
        lab_config("xtagree", "").replace("policies: [policies.yaml]\n", ""),
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/xpf.yaml"))
            .unwrap()
            .replace("policies:\n  - policies/\n", ""),
    ];
    // Each with whether it is a valid endpoint.
    let edges = [
        ("ipv4: 198.18.10.2", true),
        ("ipv6: \"2001:db8:10::2\"", true),
        ("ipv4: 169.254.1.1", false),
        ("ipv4: 169.254.7.7", false),
        ("ipv4: 255.255.255.255", false),
        ("ipv4: 0.0.0.0", false),
        ("ipv4: 127.0.0.2", false),
        ("ipv4: 224.0.0.9", false),
        ("ipv6: \"fe80::1\"", false),
        ("ipv6: \"febf::9\"", false),
        ("ipv6: \"ff02::1\"", false),
        ("ipv6: \"::1\"", false),
        ("ipv4: 198.18.10.2, netns: cni-0f8e1a2b-3c4d-5e6f-7a8b-9c0d1e2f3a4b", true),
        ("ipv4: 198.18.10.2, netns: nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn", true),
        ("ipv4: 198.18.10.2, netns: nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn", false),
        ("ipv4: 198.18.10.2, netns: \"-lead\"", false),
        ("ipv4: 198.18.10.2, netns: \"a b\"", false),
        ("ipv4: 198.18.10.2, netns: \"a/b\"", false),
        ("ipv4: 198.18.10.2, netns: \"..\"", false),
        ("ipv4: 198.18.10.2, host_ifname: \"-lead\"", false),
        ("ipv4: 198.18.10.2, host_ifname: \"a:b\"", false),
        ("ipv4: 198.18.10.2, host_ifname: fifteen-chars-x", true),
        ("ipv4: 198.18.10.2, host_ifname: sixteen-chars-xx", false),
        ("ipv4: 198.18.10.2, host_ifname: xpf_net", false),
        ("ipv4: 198.18.10.2, attach: existing", true),
    ];
    for c in &configs {
        assert_eq!(judge(c), Ok(()), "{c}");
    }
    let mut wrong = Vec::new();
    for (fields, valid) in edges {
        let c = endpoint(fields);
        match (judge(&c), valid) {
            (Ok(()), true) | (Err(("load", _)), false) => {}
            (Err(("run", why)), _) => {
                wrong.push(format!("{fields}: loading accepts, run refuses: {why}"))
            }
            (got, _) => wrong.push(format!("{fields}: expected valid={valid}, got {got:?}")),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
