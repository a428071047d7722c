//! A stand-in host and world for `xpf demo` and the end-to-end tests: a
//! private "host" namespace (xpf runs inside it, so the machine's own
//! namespace is never touched) and an "outside" namespace behind it on a
//! veth, holding world addresses the host routes to.
//!
//! The link between them has fixed MACs, static neighbours and no IPv6
//! link-local addresses, so no ND or DAD delay sits in the path to the
//! world. Both namespaces are deleted when the [`Testbed`] is dropped.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::sys::netns::{self, NetnsError, OwnedNetns};

/// Why a testbed could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("ip {command}: {stderr}")]
    Ip { command: String, stderr: String },
    #[error("setting {what}: {source}")]
    Sysctl {
        what: &'static str,
        source: std::io::Error,
    },
}

/// The host-side end of the link to the outside.
pub const OUT_IFNAME: &str = "out0";
const HOST_MAC: &str = "02:00:00:00:01:01";
const OUTSIDE_MAC: &str = "02:00:00:00:01:02";
/// Link addresses: (host side, outside side, prefix length).
const LINK_V4: (&str, &str, u8) = ("198.18.1.1", "198.18.1.2", 24);
const LINK_V6: (&str, &str, u8) = ("2001:db8:1::1", "2001:db8:1::2", 64);

/// The two namespaces; deleted (outside first) when dropped.
pub struct Testbed {
    pub outside: OwnedNetns,
    pub host: OwnedNetns,
}

fn ip(args: &[&str]) -> Result<(), TestbedError> {
    crate::sys::ip::run(args)
        .map(|_| ())
        .map_err(|e| TestbedError::Ip {
            command: args.join(" "),
            stderr: e.stderr().map_or_else(|| e.to_string(), str::to_string),
        })
}

fn host_prefix(a: &IpAddr) -> String {
    format!("{a}/{}", if a.is_ipv4() { 32 } else { 128 })
}

impl Testbed {
    /// Creates `<tag>-host`, with `host_addresses` on its loopback and
    /// forwarding on, and `<tag>-out` behind it holding `world`, reached
    /// through routes to `world_routes`. Works from any namespace.
    pub fn build(
        tag: &str,
        host_addresses: &[IpAddr],
        world: &[IpAddr],
        world_routes: &[IpNet],
    ) -> Result<Self, TestbedError> {
        let host = OwnedNetns::create(&format!("{tag}-host"))?;
        let outside = OwnedNetns::create(&format!("{tag}-out"))?;
        let (h, o) = (host.name(), outside.name());
        netns::run_in(h, || -> Result<(), TestbedError> {
            for (name, what) in [
                ("net/ipv4/ip_forward", "net.ipv4.ip_forward"),
                (
                    "net/ipv6/conf/all/forwarding",
                    "net.ipv6.conf.all.forwarding",
                ),
            ] {
                crate::sys::sysctl::write(name, "1")
                    .map_err(|source| TestbedError::Sysctl { what, source })?;
            }
            Ok(())
        })??;
        ip(&["-n", h, "link", "set", "lo", "up"])?;
        for a in host_addresses {
            ip(&["-n", h, "addr", "add", &host_prefix(a), "dev", "lo"])?;
        }

        ip(&[
            "-n",
            h,
            "link",
            "add",
            OUT_IFNAME,
            "address",
            HOST_MAC,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "address",
            OUTSIDE_MAC,
            "netns",
            o,
        ])?;
        for (ns, dev) in [(h, OUT_IFNAME), (o, "eth0")] {
            ip(&["-n", ns, "link", "set", "dev", dev, "addrgenmode", "none"])?;
            ip(&["-n", ns, "link", "set", "dev", dev, "up"])?;
        }
        for (ns, dev, mac, (mine, theirs, len)) in [
            (
                h,
                OUT_IFNAME,
                OUTSIDE_MAC,
                (LINK_V4.0, LINK_V4.1, LINK_V4.2),
            ),
            (
                h,
                OUT_IFNAME,
                OUTSIDE_MAC,
                (LINK_V6.0, LINK_V6.1, LINK_V6.2),
            ),
            (o, "eth0", HOST_MAC, (LINK_V4.1, LINK_V4.0, LINK_V4.2)),
            (o, "eth0", HOST_MAC, (LINK_V6.1, LINK_V6.0, LINK_V6.2)),
        ] {
            let cidr = format!("{mine}/{len}");
            let mut add = vec!["-n", ns, "addr", "add", &cidr, "dev", dev];
            if mine.contains(':') {
                add.push("nodad");
            }
            ip(&add)?;
            ip(&[
                "-n",
                ns,
                "neigh",
                "replace",
                theirs,
                "lladdr",
                mac,
                "dev",
                dev,
                "nud",
                "permanent",
            ])?;
        }
        ip(&["-n", o, "link", "set", "lo", "up"])?;
        for a in world {
            ip(&["-n", o, "addr", "add", &host_prefix(a), "dev", "lo"])?;
        }
        ip(&["-n", o, "route", "add", "default", "via", LINK_V4.0])?;
        ip(&["-n", o, "-6", "route", "add", "default", "via", LINK_V6.0])?;
        for r in world_routes {
            let via = if r.addr().is_ipv4() {
                LINK_V4.1
            } else {
                LINK_V6.1
            };
            ip(&["-n", h, "route", "add", &r.to_string(), "via", via])?;
        }
        Ok(Self { outside, host })
    }
}
