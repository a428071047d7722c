//! `xpf kvstore dump`: connects to the config's store and prints what
//! [`crate::kvstore::dump`] reads.

use std::time::Duration;

use anyhow::{anyhow, Result};

use crate::config::Config;
use crate::kvstore::dump::{self, Dump};
use crate::kvstore::etcd::Etcd;

/// How long connecting to one endpoint may take.
const CONNECT: Duration = Duration::from_secs(5);

pub(super) fn dump(config: &Config, json: bool) -> Result<()> {
    let Some(kv) = &config.kvstore else {
        return Err(anyhow!(
            "{}: no `kvstore:` section (this config is single-host)",
            config.path.display()
        ));
    };
    let mut etcd = Etcd::connect_any(&kv.endpoints, CONNECT)?;
    let d = dump::dump(&mut etcd)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&d)?);
    } else {
        print_text(&d);
    }
    Ok(())
}

fn print_text(d: &Dump) {
    println!("kvstore {} at revision {}", d.endpoint, d.revision);
    println!("\nidentities ({}):", d.identities.len());
    println!("  {:>7}  {:<50}  nodes", "id", "labels");
    for i in &d.identities {
        println!("  {:>7}  {:<50}  {}", i.id, i.labels, i.nodes.join(", "));
    }
    println!("\nipcache ({}):", d.ipcache.len());
    println!(
        "  {:<24}  {:>8}  {:<16}  labels",
        "prefix", "identity", "host"
    );
    for e in &d.ipcache {
        println!(
            "  {:<24}  {:>8}  {:<16}  {}",
            e.prefix,
            e.identity,
            e.host_ip.map_or("-".to_string(), |h| h.to_string()),
            e.labels.as_deref().unwrap_or("(no master key)")
        );
    }
    if !d.unreadable.is_empty() {
        println!("\nunreadable keys ({}):", d.unreadable.len());
        for u in &d.unreadable {
            println!("  {}: {}", u.key, u.error);
        }
    }
}
