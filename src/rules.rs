//! What makes an endpoint's namespace, interface name and addresses valid:
//! one set of rules, so a config that `policy check` or `identity list`
//! accepts is never one `xpf run` refuses. `config` checks a file with
//! them (naming the field) and `endpoint` checks every spec again before it
//! touches the system (specs also come from records of a dead run).
//!
//! No I/O: each rule says why a value is refused, in words that follow the
//! value in a message.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Longest namespace name xpf accepts. The kernel allows a file name (255
/// bytes) under /run/netns, but the names travel through commands, state
/// files and JSON; 64 of a plain alphabet cover generated names such as
/// CNI's `cni-<uuid>`.
pub const NETNS_MAX: usize = 64;

/// An interface name: 1-15 bytes (IFNAMSIZ less the NUL), printable, no
/// '/', ':' or whitespace, not '.', '..' or starting with '-'.
pub fn ifname(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 15 {
        Err("must be 1-15 characters long")
    } else if name == "." || name == ".." || name.starts_with('-') {
        Err("is not a valid interface name ('.', '..' and a leading '-' are not)")
    } else if name
        .bytes()
        .any(|c| c == b'/' || c == b':' || !c.is_ascii_graphic())
    {
        Err("must not contain '/', ':', whitespace or control characters")
    } else {
        Ok(())
    }
}

/// A network namespace name: 1-[`NETNS_MAX`] characters of a-z, A-Z, 0-9,
/// '-', '_' and '.', not '.', '..' or starting with '-'.
pub fn netns(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > NETNS_MAX {
        Err("must be 1-64 characters long")
    } else if name == "." || name == ".." || name.starts_with('-') {
        Err("is not a valid namespace name ('.', '..' and a leading '-' are not)")
    } else if !name
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    {
        Err("may only contain a-z, A-Z, 0-9, '-', '_' and '.'")
    } else {
        Ok(())
    }
}

/// An endpoint's IPv4 address: unicast, and not in 169.254.0.0/16, where
/// the endpoint's gateway (169.254.1.1) lives.
pub fn endpoint_ipv4(a: Ipv4Addr) -> Result<(), &'static str> {
    if a.is_unspecified()
        || a.is_loopback()
        || a.is_multicast()
        || a.is_broadcast()
        || a.is_link_local()
    {
        Err("is not a unicast address an endpoint can own (169.254.0.0/16 is the gateway's)")
    } else {
        Ok(())
    }
}

/// An endpoint's IPv6 address: unicast, and not link-local (fe80::/10),
/// where the endpoint's gateway (fe80::1) lives.
pub fn endpoint_ipv6(a: Ipv6Addr) -> Result<(), &'static str> {
    if a.is_unspecified()
        || a.is_loopback()
        || a.is_multicast()
        || a.segments()[0] & 0xffc0 == 0xfe80
    {
        Err("is not a unicast address an endpoint can own (fe80::/10 is the gateway's)")
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(netns("cni-0f8e1a2b-3c4d-5e6f-7a8b-9c0d1e2f3a4b").is_ok());
        assert!(netns(&"n".repeat(64)).is_ok());
        for bad in ["", ".", "..", "-x", "a b", "a/b", &"n".repeat(65)] {
            assert!(netns(bad).is_err(), "{bad:?}");
        }
        assert!(ifname("xpf-frontend").is_ok());
        for bad in ["", "-x", "a:b", "a/b", "a b", "sixteen-chars-xx"] {
            assert!(ifname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn addresses() {
        assert!(endpoint_ipv4("198.18.10.2".parse().unwrap()).is_ok());
        for bad in [
            "0.0.0.0",
            "127.0.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "169.254.1.1",
        ] {
            assert!(endpoint_ipv4(bad.parse().unwrap()).is_err(), "{bad}");
        }
        assert!(endpoint_ipv6("2001:db8::2".parse().unwrap()).is_ok());
        for bad in ["::", "::1", "ff02::1", "fe80::1", "febf::1"] {
            assert!(endpoint_ipv6(bad.parse().unwrap()).is_err(), "{bad}");
        }
    }
}
