//! The YAML the policy core reads, from arbitrary bytes: each input is read
//! both as policy documents (CiliumNetworkPolicy and friends, compiled
//! against the example config's endpoints) and as a whole `xpf.yaml`. The
//! parsers must refuse bad input with an error, never a panic, and whatever
//! they accept must compile (`Engine::new`) without panicking.

use std::path::Path;

use serde_yaml::Value;
use xpf::config::Config;
use xpf::world::World;
use xpf::engine::Engine;
use xpf::policy::parse::parse_policies;

/// Whether a config names policy files. `Config::parse` reads those from
/// disk; a fuzzer that learns to write `policies: [/dev/zero]` would hang
/// in `read_to_string`, a finding about the harness and not about xpf, so
/// such configs are not parsed as configs. Unreadable YAML is skipped too:
/// the YAML syntax errors are serde_yaml's, and the policy pass below reads
/// the same text anyway.
fn names_files(text: &str) -> bool {
    let Ok(doc) = serde_yaml::from_str::<Value>(text) else {
        return true;
    };
    let Value::Mapping(map) = untag(&doc) else {
        return false;
    };
    map.iter().any(|(k, v)| {
        untag(k).as_str() == Some("policies")
            && match untag(v) {
                Value::Null => false,
                Value::Sequence(s) => !s.is_empty(),
                _ => true,
            }
    })
}

fn untag(mut v: &Value) -> &Value {
    while let Value::Tagged(t) = v {
        v = &t.value;
    }
    v
}

fn main() {
    let example = xpf_fuzz::example_config();
    let base = Config::load(&example)
        .unwrap_or_else(|e| panic!("{}: {e}", example.display()))
        .world;
    let file = Path::new("fuzz/policy.yaml");
    let config_file = Path::new("fuzz/xpf.yaml");

    afl::fuzz!(|data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        if let Ok(policies) = parse_policies(text, file) {
            // Policies reach the compiler only through `World::new`, as
            // they do from a config.
            let world = World::new(
                base.endpoints.clone(),
                base.ipcache.clone(),
                base.host_addresses.clone(),
                policies,
            );
            if let Ok(world) = world {
                let _ = Engine::new(&world);
            }
        }
        if !names_files(text) {
            if let Ok(config) = Config::parse(text, config_file) {
                let _ = Engine::new(&config.world);
            }
        }
    });
}
