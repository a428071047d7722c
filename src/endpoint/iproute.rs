//! What the endpoint code asks iproute2 and how it reads the answers: `ip`
//! runs through [`crate::sys::ip`] with its failures turned into
//! [`EndpointError`]s that name the interface, and `ip -j` prints the
//! links, addresses, routes and neighbours parsed here. MACs are read and
//! written in the `aa:bb:cc:dd:ee:ff` form `ip` uses.

use std::net::IpAddr;

use serde::Deserialize;

use super::{EndpointError, Owner};

/// Runs `ip ARGS` in the calling thread's namespace and returns its stdout.
/// `args` is split at whitespace: every name in it has been validated to
/// contain none.
pub(super) fn ip(owner: &Owner, interface: &str, args: &str) -> Result<String, EndpointError> {
    let split: Vec<&str> = args.split_whitespace().collect();
    crate::sys::ip::run(&split).map_err(|e| match e {
        crate::sys::ip::IpError::Spawn(source) => EndpointError::Io {
            owner: owner.clone(),
            what: "running `ip` (is iproute2 installed?)".into(),
            source,
        },
        other => EndpointError::Command {
            owner: owner.clone(),
            interface: interface.into(),
            command: format!("ip {args}"),
            stderr: other.stderr().unwrap_or_default().to_string(),
        },
    })
}

/// Like [`ip`] for a delete, where "already gone" is success.
pub(super) fn ip_absent_ok(
    owner: &Owner,
    interface: &str,
    args: &str,
) -> Result<(), EndpointError> {
    match ip(owner, interface, args) {
        Err(EndpointError::Command { stderr, .. })
            if stderr.contains("No such process")
                || stderr.contains("No such file or directory")
                || stderr.contains("Cannot find device") =>
        {
            Ok(())
        }
        r => r.map(drop),
    }
}

/// `ip -j -d link show dev NAME` (inside `netns` if given); `None` if there
/// is no such interface.
pub(super) fn show_link(
    owner: &Owner,
    netns: Option<&str>,
    ifname: &str,
) -> Result<Option<IpLink>, EndpointError> {
    let args = match netns {
        Some(ns) => format!("-n {ns} -j -d link show dev {ifname}"),
        None => format!("-j -d link show dev {ifname}"),
    };
    match ip(owner, ifname, &args) {
        Ok(out) => Ok(parse_json::<Vec<IpLink>>(owner, ifname, &out)?
            .into_iter()
            .find(|l| l.ifname == ifname)),
        Err(EndpointError::Command { stderr, .. }) if stderr.contains("does not exist") => Ok(None),
        Err(e) => Err(e),
    }
}

/// The veth peer of `host` if it is in `netns`: the link there whose own
/// peer is `host`.
pub(super) fn find_peer(
    owner: &Owner,
    netns: &str,
    host: &IpLink,
) -> Result<Option<IpLink>, EndpointError> {
    let Some(peer_index) = host.link_index else {
        return Ok(None);
    };
    if host.kind() != Some("veth") {
        return Ok(None);
    }
    let links: Vec<IpLink> = ip_json(owner, &host.ifname, &format!("-n {netns} -j -d link show"))?;
    Ok(links
        .into_iter()
        .find(|l| l.ifindex == peer_index && l.link_index == Some(host.ifindex)))
}

/// Global addresses on `ifname` inside `netns`.
pub(super) fn peer_addresses(
    owner: &Owner,
    netns: &str,
    ifname: &str,
) -> Result<Vec<IpAddr>, EndpointError> {
    let ifaces: Vec<IpAddrs> = ip_json(
        owner,
        ifname,
        &format!("-n {netns} -j addr show dev {ifname}"),
    )?;
    Ok(ifaces
        .into_iter()
        .flat_map(|l| l.addr_info)
        .filter(|a| a.scope.as_deref() == Some("global"))
        .filter_map(|a| a.local)
        .collect())
}

/// Runs `ip ARGS` (which include `-j`) and parses what it prints.
pub(super) fn ip_json<T: serde::de::DeserializeOwned + Default>(
    owner: &Owner,
    interface: &str,
    args: &str,
) -> Result<T, EndpointError> {
    parse_json(owner, interface, &ip(owner, interface, args)?)
}

fn parse_json<T: serde::de::DeserializeOwned + Default>(
    owner: &Owner,
    interface: &str,
    text: &str,
) -> Result<T, EndpointError> {
    if text.trim().is_empty() {
        return Ok(T::default());
    }
    serde_json::from_str(text).map_err(|e| EndpointError::Interface {
        owner: owner.clone(),
        interface: interface.into(),
        message: format!("cannot read `ip -j` output: {e}"),
    })
}

/// One entry of `ip -j -d link show`.
#[derive(Debug, Deserialize)]
pub(super) struct IpLink {
    pub(super) ifindex: u32,
    pub(super) ifname: String,
    #[serde(default)]
    address: Option<String>,
    /// A veth's peer ifindex (in `link_netnsid` when that is present).
    #[serde(default)]
    link_index: Option<u32>,
    #[serde(default)]
    pub(super) num_rx_queues: Option<u32>,
    #[serde(default)]
    linkinfo: Option<IpLinkInfo>,
}

#[derive(Debug, Deserialize)]
struct IpLinkInfo {
    #[serde(default)]
    info_kind: Option<String>,
}

impl IpLink {
    pub(super) fn kind(&self) -> Option<&str> {
        self.linkinfo.as_ref()?.info_kind.as_deref()
    }

    pub(super) fn mac(&self, owner: &Owner) -> Result<[u8; 6], EndpointError> {
        self.address
            .as_deref()
            .and_then(parse_mac)
            .ok_or_else(|| EndpointError::Interface {
                owner: owner.clone(),
                interface: self.ifname.clone(),
                message: format!("has no Ethernet address (`ip` says {:?})", self.address),
            })
    }
}

/// One interface of `ip -j addr show`.
#[derive(Debug, Deserialize)]
struct IpAddrs {
    #[serde(default)]
    addr_info: Vec<IpAddrInfo>,
}

#[derive(Debug, Deserialize)]
struct IpAddrInfo {
    #[serde(default)]
    local: Option<IpAddr>,
    #[serde(default)]
    scope: Option<String>,
}

/// One entry of `ip -j route show`.
#[derive(Debug, Deserialize)]
pub(super) struct IpRoute {
    #[serde(default)]
    pub(super) dev: Option<String>,
}

/// One entry of `ip -j neigh show`.
#[derive(Debug, Deserialize)]
pub(super) struct IpNeigh {
    #[serde(default)]
    pub(super) lladdr: Option<String>,
    #[serde(default)]
    pub(super) state: Vec<String>,
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// `aa:bb:cc:dd:ee:ff`, the form `ip` prints and accepts.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn mac_round_trips() {
        let mac = parse_mac("06:12:ef:1f:c2:2d").unwrap();
        assert_eq!(mac, [0x06, 0x12, 0xef, 0x1f, 0xc2, 0x2d]);
        assert_eq!(format_mac(&mac), "06:12:ef:1f:c2:2d");
        for bad in [
            "",
            "06:12:ef:1f:c2",
            "06:12:ef:1f:c2:2d:00",
            "6:12:ef:1f:c2:2d",
            "zz:12:ef:1f:c2:2d",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn link_json_from_iproute2_6_1() {
        let text = r#"[{"ifindex":2,"link_index":2,"ifname":"vh","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1500,"qdisc":"noqueue","operstate":"UP","linkmode":"DEFAULT","group":"default","txqlen":1000,"link_type":"ether","address":"06:12:ef:1f:c2:2d","broadcast":"ff:ff:ff:ff:ff:ff","link_netnsid":0,"promiscuity":0,"allmulti":0,"min_mtu":68,"max_mtu":65535,"linkinfo":{"info_kind":"veth"},"inet6_addr_gen_mode":"none","num_tx_queues":2,"num_rx_queues":2,"gso_max_size":65536}]"#;
        let owner = Owner::InternalPair;
        let links: Vec<IpLink> = parse_json(&owner, "vh", text).unwrap();
        let l = &links[0];
        assert_eq!((l.ifindex, l.ifname.as_str()), (2, "vh"));
        assert_eq!(
            (l.link_index, l.num_rx_queues, l.kind()),
            (Some(2), Some(2), Some("veth"))
        );
        assert_eq!(l.mac(&owner).unwrap(), [0x06, 0x12, 0xef, 0x1f, 0xc2, 0x2d]);
    }

    #[test]
    fn addr_json_keeps_global_addresses() {
        let text = r#"[{"ifindex":2,"ifname":"eth0","addr_info":[{"family":"inet","local":"198.18.0.2","prefixlen":32,"scope":"global"},{"family":"inet6","local":"fe80::1:2","prefixlen":64,"scope":"link"},{}]}]"#;
        let ifaces: Vec<IpAddrs> = parse_json(&Owner::InternalPair, "eth0", text).unwrap();
        let global: Vec<IpAddr> = ifaces
            .into_iter()
            .flat_map(|l| l.addr_info)
            .filter(|a| a.scope.as_deref() == Some("global"))
            .filter_map(|a| a.local)
            .collect();
        assert_eq!(global, vec![IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2))]);
    }

    #[test]
    fn empty_ip_output_is_an_empty_list() {
        let routes: Vec<IpRoute> = parse_json(&Owner::InternalPair, "x", "\n").unwrap();
        assert!(routes.is_empty());
    }
}
