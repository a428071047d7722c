//! `xpf endpoint create|delete|list`: the endpoints' namespaces and veths
//! without the filter.

use std::path::Path;

use anyhow::{Context, Result};

use crate::datapath::endpoint_specs;
use crate::endpoint::{self, format_mac, Attach};

pub(super) fn create(config: &Path) -> Result<()> {
    let config = super::load_config(config)?;
    let specs = endpoint_specs(&config.world);
    let mut made = Vec::new();
    for spec in specs {
        if spec.attach == Attach::Existing {
            println!("{}: attach: existing, left as it is", spec.name);
            continue;
        }
        let name = spec.name.clone();
        match endpoint::create(spec) {
            Ok(ep) => {
                println!(
                    "{}: namespace {}, {} ({}) <-> {} ({})",
                    ep.spec.name,
                    ep.spec.netns,
                    ep.spec.host_ifname,
                    format_mac(&ep.host_mac),
                    ep.peer_ifname,
                    format_mac(&ep.peer_mac)
                );
                made.push(ep);
            }
            Err(e) => {
                // Nothing half-applied: undo the endpoints made so far.
                for ep in made {
                    if let Err(e) = ep.teardown() {
                        eprintln!("xpf: {e}");
                    }
                }
                return Err(e).with_context(|| format!("creating endpoint `{name}`"));
            }
        }
    }
    // Dropping an Endpoint leaves it in place: that is the point here.
    drop(made);
    Ok(())
}

pub(super) fn list(config: &Path, json: bool) -> Result<()> {
    let config = super::load_config(config)?;
    let status = endpoint::list(&endpoint_specs(&config.world))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    println!(
        "{:<12} {:<9} {:<16} {:<7} {:<16} {:<7} addresses",
        "endpoint", "attach", "netns", "exists", "host veth", "exists"
    );
    for s in status {
        let addrs: Vec<String> = s.addresses.iter().map(ToString::to_string).collect();
        println!(
            "{:<12} {:<9} {:<16} {:<7} {:<16} {:<7} {}",
            s.name,
            match s.attach {
                Attach::Create => "create",
                Attach::Existing => "existing",
            },
            s.netns,
            if s.netns_exists { "yes" } else { "no" },
            s.host_ifname,
            if s.host_if_exists { "yes" } else { "no" },
            if addrs.is_empty() {
                "-".into()
            } else {
                addrs.join(", ")
            }
        );
    }
    Ok(())
}
