//! The files `xpf run` is given for a point: the policy (one rule per
//! destination label, all allowing UDP to the benchmark port), the ipcache
//! entries, and the config naming both with the endpoint(s), the worker
//! CPUs and the run mode. Written into the benchmark's private directory,
//! the policy and ipcache once per ipcache size and rule count.
//!
//! Endpoint to endpoint, the config has a second endpoint, `dst`, labelled
//! `app: dst` and `svc: s0`: the first rule's label, so exactly one rule of
//! the point's allows src to dst on UDP 9, as one rule allows each ipcache
//! entry. The point's ipcache entries all stay (the table is as big, so a
//! lookup costs what it costs to the outside); dst is one more /128, and
//! the only destination the traffic has.
//!
//! A config for the API kinds also names the reload policy: one that
//! selects no endpoint, flipped between two versions before each reload,
//! so every reload really recompiles and no verdict changes.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::plan::{dst_addr, Destination, Point, DST4, DST6, PORT, SRC6};
use super::run::Bench;

impl Bench<'_> {
    pub(super) fn src_ns(&self) -> String {
        format!("{}-src", self.tag)
    }

    /// The destination endpoint's namespace (endpoint to endpoint runs).
    pub(super) fn dst_ns(&self) -> String {
        format!("{}-dst", self.tag)
    }

    /// The reload policy's file.
    pub(super) fn reload_policy_path(&self) -> PathBuf {
        self.dir.path().join("reload-policy.yaml")
    }

    /// Writes (once per ipcache size and rule count) the config and policy
    /// for a point; returns its path. With `reloadable`, the config also
    /// names the reload policy (written afresh).
    pub(super) fn config(&self, p: &Point, mode: &str, reloadable: bool) -> Result<PathBuf> {
        let policies = self
            .dir
            .path()
            .join(format!("policies-{}-{}.yaml", p.ipcache, p.rules));
        if !policies.exists() {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&policies)?);
            writeln!(f, "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: src}}\nspec:\n  endpointSelector: {{matchLabels: {{app: src}}}}\n  egress:")?;
            for r in 0..p.rules {
                writeln!(
                    f,
                    "    - toEndpoints: [{{matchLabels: {{svc: s{r}}}}}]\n      toPorts: [{{ports: [{{port: \"{PORT}\", protocol: UDP}}]}}]"
                )?;
            }
        }
        let entries = self
            .dir
            .path()
            .join(format!("ipcache-{}-{}.yaml", p.ipcache, p.rules));
        if !entries.exists() {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&entries)?);
            for i in 0..p.ipcache {
                writeln!(
                    f,
                    "  - {{prefix: \"{}/128\", labels: {{svc: s{}}}}}",
                    dst_addr(i),
                    i % p.rules
                )?;
            }
        }
        let cpus: Vec<String> = (0..p.workers).map(|c| c.to_string()).collect();
        let mut policy_files = vec![policies
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string()];
        if reloadable {
            write_reload_policy(&self.reload_policy_path(), 0)?;
            policy_files.push("reload-policy.yaml".into());
        }
        let e2e = p.to == Destination::Endpoint;
        let path = self.dir.path().join(format!(
            "xpf-{}-{}-{mode}-{}{}{}.yaml",
            p.ipcache,
            p.rules,
            p.workers,
            if reloadable { "-reload" } else { "" },
            if e2e { "-e2e" } else { "" }
        ));
        let dst = if e2e {
            format!(
                "  - {{name: dst, netns: {}, labels: {{app: dst, svc: s0}}, ipv4: {DST4}, ipv6: \"{DST6}\"}}\n",
                self.dst_ns()
            )
        } else {
            String::new()
        };
        let mut text = format!(
            "endpoints:\n  - {{name: src, netns: {}, labels: {{app: src}}, ipv4: 198.18.10.2, ipv6: \"{SRC6}\"}}\n{dst}host_addresses: [198.18.0.1, \"2001:db8::1\"]\npolicies: [{}]\ndatapath: {{cpus: [{}], mode: {mode}}}\nipcache:\n",
            self.src_ns(),
            policy_files.join(", "),
            cpus.join(", "),
        );
        text.push_str(&std::fs::read_to_string(&entries)?);
        std::fs::write(&path, text)?;
        Ok(path)
    }
}

/// Writes `version` of the reload policy to `path`: it allows UDP to a
/// port that depends on the version's parity, for endpoints that do not
/// exist.
pub(super) fn write_reload_policy(path: &Path, version: u64) -> std::io::Result<()> {
    std::fs::write(
        path,
        format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: bench-reload}}\nspec:\n  endpointSelector: {{matchLabels: {{app: nobody}}}}\n  egress:\n    - toEndpoints: [{{matchLabels: {{svc: s0}}}}]\n      toPorts: [{{ports: [{{port: \"{}\", protocol: UDP}}]}}]\n",
            1 + version % 2
        ),
    )
}
