//! The `kernel-nft` baseline: no XDP on the endpoint's veth; the kernel
//! forwards, filtering with an nftables ruleset equivalent to the benchmark
//! policy, applied for the run and deleted after it.

use std::fmt::Write;

use anyhow::{bail, Result};

use super::cpu::Tasks;
use super::kernel::teardown;
use super::plan::{dst_addr, Point, PORT};
use super::run::{Bench, Measured};
use crate::sys::nft::{self, NftError};

/// The table the ruleset creates (and the run deletes).
const TABLE: &str = "xpf_bench";

impl Bench<'_> {
    pub(super) fn nft(&self, p: &Point) -> Result<Measured> {
        let eps = self.bare_endpoints(p)?;
        let rules = ruleset(&eps[0].spec.host_ifname, p);
        let result = (|| {
            match nft::apply(&rules) {
                Ok(()) => {}
                Err(NftError::Spawn(e)) => {
                    return Err(anyhow::Error::new(e).context("running nft (install nftables)"))
                }
                Err(e) => bail!("nft -f: {}", e.stderr().unwrap_or_default()),
            }
            self.gen_to_sink(p, self.seconds, Tasks::default())
        })();
        let _ = nft::delete_table("inet", TABLE);
        teardown(eps);
        result
    }
}

/// The nftables equivalent of the benchmark policy, as an expert would
/// write it: one concatenated set of allowed (destination, port) pairs,
/// conntrack first, default drop for the endpoint's traffic only.
fn ruleset(ifname: &str, p: &Point) -> String {
    let mut f = String::new();
    write_ruleset(&mut f, ifname, p).expect("a String takes every write");
    f
}

fn write_ruleset(f: &mut String, ifname: &str, p: &Point) -> std::fmt::Result {
    writeln!(f, "table inet {TABLE} {{")?;
    writeln!(
        f,
        "  set allowed6 {{\n    type ipv6_addr . inet_service\n    size {}\n    elements = {{",
        p.ipcache.max(1) + 16
    )?;
    for i in 0..p.ipcache {
        let sep = if i + 1 == p.ipcache { "" } else { "," };
        writeln!(f, "      {} . {PORT}{sep}", dst_addr(i))?;
    }
    writeln!(f, "    }}\n  }}")?;
    writeln!(
        f,
        "  chain forward {{\n    type filter hook forward priority filter; policy accept;\n    iifname != \"{ifname}\" accept\n    ct state established,related accept\n    meta l4proto udp ip6 daddr . udp dport @allowed6 accept\n    drop\n  }}\n}}"
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::plan::MID;
    use super::*;

    #[test]
    fn the_ruleset_allows_each_entry_on_the_port_and_drops_the_rest_of_the_endpoint() {
        let text = ruleset("xpf-src", &Point { ipcache: 2, ..MID });
        assert_eq!(
            text,
            "table inet xpf_bench {
  set allowed6 {
    type ipv6_addr . inet_service
    size 18
    elements = {
      2001:db8:1000::1 . 9,
      2001:db8:1000::2 . 9
    }
  }
  chain forward {
    type filter hook forward priority filter; policy accept;
    iifname != \"xpf-src\" accept
    ct state established,related accept
    meta l4proto udp ip6 daddr . udp dport @allowed6 accept
    drop
  }
}
"
        );
    }
}
