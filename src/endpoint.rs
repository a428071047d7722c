//! Endpoints: a network namespace joined to the host by a veth pair, and the
//! internal veth pair (`xpf_net` / `xpf_host`) through which the filter hands
//! allowed frames back to the host stack.
//!
//! This module owns every namespace, interface, route, neighbour entry and
//! per-interface sysctl that xpf makes, and it undoes exactly those: a
//! namespace or veth it adopted ([`Attach::Existing`]) is never deleted, only
//! the host routes, neighbour entries and checksum setting it changed are put
//! back. [`Topology::build`] is all-or-nothing, and a [`Topology`] tears down
//! everything it made when dropped.
//!
//! Inside an endpoint, `eth0` has only its own /32 and /128 and reaches the
//! world through fixed gateways ([`GATEWAY_V4`], [`GATEWAY_V6`]) whose
//! neighbour entries are permanent and point at the host side's MAC, so the
//! endpoint sends no ARP or neighbour solicitation for them. Both veth ends
//! use `addrgenmode none`, so neither generates IPv6 link-local addresses,
//! DAD, MLD or router solicitations for the filter to see. The IPv6 gateway
//! `fe80::1` works without a link-local address on `eth0`: the kernel checks
//! a link-local gateway only against the device the route names. `eth0` has
//! TX checksum offload off, because veth would otherwise hand frames with
//! partial checksums to the AF_XDP socket on the host side.
//!
//! Host-side commands (`ip` without `-n`) act on the network namespace of the
//! calling thread, the one the datapath runs in. Each endpoint and internal
//! pair remembers that namespace and tears down inside it, whichever thread
//! drops it. MACs and ifindexes are read with `ip -j`, never from
//! `/sys/class/net`, which shows the namespace sysfs was mounted in rather
//! than the thread's.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::rules;
use crate::sys::netns::{self, NetnsError, NetnsFile};
use crate::sys::{ethtool, sysctl};

mod record;
pub use record::{remove_leftovers, EndpointRecord, InternalRecord};

/// The IPv4 gateway every endpoint routes through (the host side answers for
/// it by MAC only; no host interface carries the address).
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The IPv6 gateway every endpoint routes through.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// The endpoint-side name of a veth that xpf creates.
pub const PEER_IFNAME: &str = "eth0";
/// The end of the internal pair the filter transmits on.
pub const INTERNAL_NET_IFNAME: &str = "xpf_net";
/// The end of the internal pair where reinjected frames enter the host stack.
pub const INTERNAL_HOST_IFNAME: &str = "xpf_host";

/// Whether xpf makes the namespace and veth or uses ones that are there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Attach {
    Create,
    Existing,
}

/// What an endpoint should look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSpec {
    pub name: String,
    pub netns: String,
    /// The veth end in the calling thread's namespace.
    pub host_ifname: String,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub attach: Attach,
    /// RX and TX queue count of a veth that xpf creates (at least 1).
    pub queues: u32,
}

/// A set-up endpoint.
///
/// Dropping one leaves it in place; [`Endpoint::teardown`] (or dropping the
/// [`Topology`] that holds it) removes it.
#[derive(Debug)]
pub struct Endpoint {
    pub spec: EndpointSpec,
    pub host_ifindex: u32,
    pub host_mac: [u8; 6],
    /// The veth end inside the namespace ([`PEER_IFNAME`] unless adopted).
    pub peer_ifname: String,
    pub peer_mac: [u8; 6],
    /// RX queues of the host end: what the datapath binds AF_XDP sockets to.
    pub rx_queues: u32,
    created: bool,
    home: Arc<HomeNetns>,
    /// What an adopted endpoint changed, in order, so teardown can undo it.
    changes: Vec<Change>,
}

/// The veth pair the filter reinjects allowed frames through: it transmits
/// on `xpf_net` and the frames enter the host stack on `xpf_host`.
#[derive(Debug)]
pub struct InternalPair {
    /// [`INTERNAL_NET_IFNAME`].
    pub net_ifname: String,
    pub net_ifindex: u32,
    pub net_mac: [u8; 6],
    /// [`INTERNAL_HOST_IFNAME`].
    pub host_ifname: String,
    pub host_ifindex: u32,
    pub host_mac: [u8; 6],
    pub queues: u32,
    home: Arc<HomeNetns>,
}

/// Every endpoint plus the internal pair, torn down together when dropped
/// (errors go to stderr; dropping never panics).
#[derive(Debug)]
pub struct Topology {
    pub endpoints: Vec<Endpoint>,
    pub internal: InternalPair,
    torn_down: bool,
}

/// What exists of one configured endpoint (for `xpf endpoint list`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndpointStatus {
    pub name: String,
    pub attach: Attach,
    pub netns: String,
    pub netns_exists: bool,
    pub host_ifname: String,
    pub host_if_exists: bool,
    pub host_ifindex: Option<u32>,
    /// The host interface's veth peer, when it is in `netns`.
    pub peer_ifname: Option<String>,
    /// Global addresses on the peer.
    pub addresses: Vec<IpAddr>,
    /// Whether the peer computes TX checksums in "hardware" (xpf wants off).
    pub tx_checksum_offload: Option<bool>,
}

/// Who an [`EndpointError`] is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    Endpoint(String),
    InternalPair,
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Endpoint(name) => write!(f, "endpoint `{name}`"),
            Owner::InternalPair => write!(
                f,
                "internal pair {INTERNAL_NET_IFNAME}/{INTERNAL_HOST_IFNAME}"
            ),
        }
    }
}

/// Why an endpoint or the internal pair could not be set up or torn down.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("{owner}: field `{field}`: {message}")]
    Invalid {
        owner: Owner,
        field: &'static str,
        message: String,
    },
    #[error("{owner}: network namespace `{netns}`: {message}")]
    Netns {
        owner: Owner,
        netns: String,
        message: String,
    },
    #[error("{owner}: interface `{interface}`: {message}")]
    Interface {
        owner: Owner,
        interface: String,
        message: String,
    },
    #[error("{owner}: interface `{interface}`: `{command}` failed: {stderr}")]
    Command {
        owner: Owner,
        interface: String,
        command: String,
        stderr: String,
    },
    #[error("{owner}: {what}: {source}")]
    Io {
        owner: Owner,
        what: String,
        source: io::Error,
    },
}

impl EndpointError {
    /// Who the error is about.
    pub fn owner(&self) -> &Owner {
        match self {
            Self::Invalid { owner, .. }
            | Self::Netns { owner, .. }
            | Self::Interface { owner, .. }
            | Self::Command { owner, .. }
            | Self::Io { owner, .. } => owner,
        }
    }
}

/// What adopting an endpoint changed, undone on teardown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Change {
    Route(IpAddr),
    Neigh(IpAddr),
    TxChecksumOff,
}

impl EndpointSpec {
    fn owner(&self) -> Owner {
        Owner::Endpoint(self.name.clone())
    }

    fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.ipv4
            .map(IpAddr::V4)
            .into_iter()
            .chain(self.ipv6.map(IpAddr::V6))
    }

    /// Checks the fields on their own, before anything is made.
    pub fn validate(&self) -> Result<(), EndpointError> {
        let invalid = |field, message: String| EndpointError::Invalid {
            owner: self.owner(),
            field,
            message,
        };
        if self.name.is_empty() {
            return Err(invalid("name", "is empty".into()));
        }
        if let Err(why) = rules::netns(&self.netns) {
            return Err(invalid("netns", format!("`{}` {why}", self.netns)));
        }
        if let Err(why) = rules::ifname(&self.host_ifname) {
            return Err(invalid(
                "host_ifname",
                format!("`{}` {why}", self.host_ifname),
            ));
        }
        if [INTERNAL_NET_IFNAME, INTERNAL_HOST_IFNAME].contains(&self.host_ifname.as_str()) {
            return Err(invalid(
                "host_ifname",
                format!("`{}` is reserved for xpf's internal pair", self.host_ifname),
            ));
        }
        if self.queues == 0 {
            return Err(invalid("queues", "must be at least 1".into()));
        }
        if self.ipv4.is_none() && self.ipv6.is_none() {
            return Err(invalid(
                "ipv4",
                "an endpoint needs at least one of ipv4 and ipv6".into(),
            ));
        }
        if let Some(a) = self.ipv4 {
            if let Err(why) = rules::endpoint_ipv4(a) {
                return Err(invalid("ipv4", format!("{a} {why}")));
            }
        }
        if let Some(a) = self.ipv6 {
            if let Err(why) = rules::endpoint_ipv6(a) {
                return Err(invalid("ipv6", format!("{a} {why}")));
            }
        }
        Ok(())
    }
}

/// Sets up `spec` as its `attach` says.
pub fn setup(spec: EndpointSpec) -> Result<Endpoint, EndpointError> {
    let home = Arc::new(HomeNetns::current_for(spec.owner())?);
    setup_at(spec, home)
}

/// Makes the namespace `spec.netns` and a veth whose host end `spec.host_ifname`
/// stays in the calling thread's namespace; nothing of it is left on error.
pub fn create(spec: EndpointSpec) -> Result<Endpoint, EndpointError> {
    let home = Arc::new(HomeNetns::current_for(spec.owner())?);
    create_at(spec, home)
}

/// Takes over an existing namespace and veth: reads their MACs, turns TX
/// checksum offload off on the peer, brings the host end up and adds host
/// routes and neighbour entries (unless identical ones are there). Teardown
/// undoes the checksum setting, routes and neighbours it changed and deletes
/// nothing; the host end stays up. The peer must already carry the spec's
/// addresses.
pub fn adopt(spec: EndpointSpec) -> Result<Endpoint, EndpointError> {
    let home = Arc::new(HomeNetns::current_for(spec.owner())?);
    adopt_at(spec, home)
}

fn setup_at(spec: EndpointSpec, home: Arc<HomeNetns>) -> Result<Endpoint, EndpointError> {
    match spec.attach {
        Attach::Create => create_at(spec, home),
        Attach::Existing => adopt_at(spec, home),
    }
}

fn create_at(spec: EndpointSpec, home: Arc<HomeNetns>) -> Result<Endpoint, EndpointError> {
    spec.validate()?;
    let owner = spec.owner();
    if spec.attach != Attach::Create {
        return Err(EndpointError::Invalid {
            owner,
            field: "attach",
            message: "create() makes new endpoints; use adopt() for existing ones".into(),
        });
    }
    if netns::exists(&spec.netns) {
        return Err(EndpointError::Netns {
            owner,
            netns: spec.netns.clone(),
            message: format!(
                "already exists; delete it (`ip netns delete {}`), set `attach: existing` in \
                 the config to use it as it is, or set `netns:` to another name",
                spec.netns
            ),
        });
    }
    if show_link(&owner, None, &spec.host_ifname)?.is_some() {
        return Err(EndpointError::Interface {
            owner,
            interface: spec.host_ifname.clone(),
            message: "already exists in this network namespace; delete it or choose another \
                      host interface name"
                .into(),
        });
    }
    netns::create(&spec.netns).map_err(|e| netns_error(&owner, &spec.netns, e))?;
    let mut ep = Endpoint {
        spec,
        host_ifindex: 0,
        host_mac: [0; 6],
        peer_ifname: PEER_IFNAME.into(),
        peer_mac: [0; 6],
        rx_queues: 0,
        created: true,
        home,
        changes: Vec::new(),
    };
    match ep.configure_created() {
        Ok(()) => Ok(ep),
        Err(e) => {
            if let Err(undo) = ep.remove() {
                eprintln!("xpf: while undoing a failed endpoint: {undo}");
            }
            Err(e)
        }
    }
}

fn adopt_at(spec: EndpointSpec, home: Arc<HomeNetns>) -> Result<Endpoint, EndpointError> {
    spec.validate()?;
    let owner = spec.owner();
    if spec.attach != Attach::Existing {
        return Err(EndpointError::Invalid {
            owner,
            field: "attach",
            message: "adopt() takes over existing endpoints; use create() for new ones".into(),
        });
    }
    if !netns::exists(&spec.netns) {
        return Err(EndpointError::Netns {
            owner,
            netns: spec.netns.clone(),
            message: "does not exist; an existing endpoint needs its namespace and veth in place"
                .into(),
        });
    }
    let host =
        show_link(&owner, None, &spec.host_ifname)?.ok_or_else(|| EndpointError::Interface {
            owner: owner.clone(),
            interface: spec.host_ifname.clone(),
            message: "does not exist in this network namespace".into(),
        })?;
    let peer = find_peer(&owner, &spec.netns, &host)?.ok_or_else(|| EndpointError::Interface {
        owner: owner.clone(),
        interface: spec.host_ifname.clone(),
        message: format!(
            "is not a veth whose peer is in network namespace `{}`",
            spec.netns
        ),
    })?;
    let present = peer_addresses(&owner, &spec.netns, &peer.ifname)?;
    if let Some(missing) = spec.addresses().find(|a| !present.contains(a)) {
        return Err(EndpointError::Interface {
            owner,
            interface: peer.ifname.clone(),
            message: format!(
                "in network namespace `{}` does not have the address {missing}",
                spec.netns
            ),
        });
    }
    let mut ep = Endpoint {
        host_ifindex: host.ifindex,
        host_mac: host.mac(&owner)?,
        peer_mac: peer.mac(&owner)?,
        peer_ifname: peer.ifname,
        rx_queues: host.num_rx_queues.unwrap_or(1),
        spec,
        created: false,
        home,
        changes: Vec::new(),
    };
    match ep.configure_adopted() {
        Ok(()) => Ok(ep),
        Err(e) => {
            if let Err(undo) = ep.remove() {
                eprintln!("xpf: while undoing a failed endpoint: {undo}");
            }
            Err(e)
        }
    }
}

impl Endpoint {
    /// Removes the endpoint: a created one with its namespace and veth, an
    /// adopted one by undoing only what [`adopt`] changed.
    pub fn teardown(self) -> Result<(), EndpointError> {
        self.remove()
    }

    fn owner(&self) -> Owner {
        self.spec.owner()
    }

    /// Steps 2-7 of creating: the namespace exists and is ours.
    fn configure_created(&mut self) -> Result<(), EndpointError> {
        let owner = self.owner();
        let s = &self.spec;
        let (ns, host, peer, q) = (&s.netns, &s.host_ifname, PEER_IFNAME, s.queues);
        ip(
            &owner,
            host,
            &format!(
                "link add name {host} numtxqueues {q} numrxqueues {q} type veth \
                 peer name {peer} netns {ns} numtxqueues {q} numrxqueues {q}"
            ),
        )?;
        // Before any link is up, so no link-local address, DAD, MLD or router
        // solicitation ever leaves either end.
        ip(
            &owner,
            host,
            &format!("link set dev {host} addrgenmode none"),
        )?;
        ip(
            &owner,
            peer,
            &format!("-n {ns} link set dev {peer} addrgenmode none"),
        )?;
        let host_link = show_link(&owner, None, host)?.ok_or_else(|| gone(&owner, host))?;
        let peer_link = show_link(&owner, Some(ns), peer)?.ok_or_else(|| gone(&owner, peer))?;
        self.host_ifindex = host_link.ifindex;
        self.host_mac = host_link.mac(&owner)?;
        self.peer_mac = peer_link.mac(&owner)?;
        self.rx_queues = host_link.num_rx_queues.unwrap_or(q);
        let host_mac = format_mac(&self.host_mac);
        let peer_mac = format_mac(&self.peer_mac);

        ip(&owner, "lo", &format!("-n {ns} link set dev lo up"))?;
        ip(&owner, peer, &format!("-n {ns} link set dev {peer} up"))?;
        if let Some(a) = s.ipv4 {
            let gw = GATEWAY_V4;
            for cmd in [
                format!("addr add {a}/32 dev {peer}"),
                format!("route add {gw} dev {peer} scope link"),
                format!("route add default via {gw} dev {peer}"),
                format!("neigh replace {gw} lladdr {host_mac} dev {peer} nud permanent"),
            ] {
                ip(&owner, peer, &format!("-n {ns} {cmd}"))?;
            }
        }
        if let Some(a) = s.ipv6 {
            let gw = GATEWAY_V6;
            // A link-local gateway needs no link-local address of our own:
            // the kernel only checks that the route names the device.
            for cmd in [
                format!("addr add {a}/128 dev {peer} nodad"),
                format!("route add default via {gw} dev {peer}"),
                format!("neigh replace {gw} lladdr {host_mac} dev {peer} nud permanent"),
            ] {
                ip(&owner, peer, &format!("-n {ns} -6 {cmd}"))?;
            }
        }
        set_tx_checksum(&owner, ns, peer, false)?;

        ip(&owner, host, &format!("link set dev {host} up"))?;
        for a in s.addresses() {
            let (family, dst) = host_route(a);
            ip(
                &owner,
                host,
                &format!("{family} route add {dst} dev {host}"),
            )?;
            ip(
                &owner,
                host,
                &format!("{family} neigh replace {a} lladdr {peer_mac} dev {host} nud permanent"),
            )?;
        }
        Ok(())
    }

    /// Checksum offload on the peer, then host routes and neighbours,
    /// recording each change before the next can fail.
    fn configure_adopted(&mut self) -> Result<(), EndpointError> {
        let owner = self.owner();
        let (ns, host) = (self.spec.netns.clone(), self.spec.host_ifname.clone());
        if tx_checksum(&owner, &ns, &self.peer_ifname)? {
            self.changes.push(Change::TxChecksumOff);
            set_tx_checksum(&owner, &ns, &self.peer_ifname, false)?;
        }
        ip(&owner, &host, &format!("link set dev {host} up"))?;
        let peer_mac = format_mac(&self.peer_mac);
        for a in self.spec.addresses().collect::<Vec<_>>() {
            let (family, dst) = host_route(a);
            let routes: Vec<IpRoute> = ip_json(
                &owner,
                &host,
                &format!("{family} -j route show exact {dst}"),
            )?;
            match routes.iter().find_map(|r| r.dev.as_deref()) {
                Some(dev) if dev == host => {}
                Some(dev) => {
                    return Err(EndpointError::Interface {
                        owner,
                        interface: host,
                        message: format!("a route for {dst} already exists via `{dev}`"),
                    })
                }
                None => {
                    ip(
                        &owner,
                        &host,
                        &format!("{family} route add {dst} dev {host}"),
                    )?;
                    self.changes.push(Change::Route(a));
                }
            }
            let neighs: Vec<IpNeigh> = ip_json(
                &owner,
                &host,
                &format!("{family} -j neigh show {a} dev {host}"),
            )?;
            let ours = neighs.iter().any(|n| {
                n.lladdr.as_deref() == Some(peer_mac.as_str())
                    && n.state.iter().any(|s| s == "PERMANENT")
            });
            if !ours {
                ip(
                    &owner,
                    &host,
                    &format!(
                        "{family} neigh replace {a} lladdr {peer_mac} dev {host} nud permanent"
                    ),
                )?;
                self.changes.push(Change::Neigh(a));
            }
        }
        Ok(())
    }

    /// Undoes whatever exists of the endpoint, continuing past errors; the
    /// first one is returned and the rest printed.
    fn remove(&self) -> Result<(), EndpointError> {
        let owner = self.owner();
        self.home
            .run(&owner, || {
                if self.created {
                    self.remove_created()
                } else {
                    self.remove_adopted()
                }
            })
            .and_then(|r| r)
    }

    fn remove_created(&self) -> Result<(), EndpointError> {
        let owner = self.owner();
        let host = &self.spec.host_ifname;
        let mut first = None;
        // Deleting the host end takes the peer with it at once; the
        // namespace's own teardown in the kernel is asynchronous.
        match show_link(&owner, None, host) {
            Ok(Some(l)) if self.host_ifindex == 0 || l.ifindex == self.host_ifindex => {
                let r = ip(&owner, host, &format!("link del dev {host}"));
                keep_first(&mut first, r.map(drop));
            }
            Ok(_) => {}
            Err(e) => keep_first(&mut first, Err(e)),
        }
        if netns::exists(&self.spec.netns) {
            keep_first(
                &mut first,
                netns::delete(&self.spec.netns)
                    .map_err(|e| netns_error(&owner, &self.spec.netns, e)),
            );
        }
        first.map_or(Ok(()), Err)
    }

    fn remove_adopted(&self) -> Result<(), EndpointError> {
        let owner = self.owner();
        let host = &self.spec.host_ifname;
        let mut first = None;
        let host_there = match show_link(&owner, None, host) {
            Ok(l) => l.is_some_and(|l| l.ifindex == self.host_ifindex),
            Err(e) => {
                keep_first(&mut first, Err(e));
                false
            }
        };
        for change in self.changes.iter().rev() {
            let r = match *change {
                // Routes and neighbours went with the interface if it is gone.
                Change::Route(_) | Change::Neigh(_) if !host_there => Ok(()),
                Change::Route(a) => {
                    let (family, dst) = host_route(a);
                    ip_absent_ok(
                        &owner,
                        host,
                        &format!("{family} route del {dst} dev {host}"),
                    )
                }
                Change::Neigh(a) => {
                    let (family, _) = host_route(a);
                    ip_absent_ok(&owner, host, &format!("{family} neigh del {a} dev {host}"))
                }
                Change::TxChecksumOff if netns::exists(&self.spec.netns) => {
                    match show_link(&owner, Some(&self.spec.netns), &self.peer_ifname) {
                        Ok(Some(_)) => {
                            set_tx_checksum(&owner, &self.spec.netns, &self.peer_ifname, true)
                        }
                        Ok(None) => Ok(()),
                        Err(e) => Err(e),
                    }
                }
                Change::TxChecksumOff => Ok(()),
            };
            keep_first(&mut first, r);
        }
        first.map_or(Ok(()), Err)
    }
}

impl InternalPair {
    /// Creates `xpf_net`/`xpf_host` with `queues` RX and TX queues each in the
    /// calling thread's namespace, up, without addresses, with `xpf_host`
    /// forwarding what it receives. Only one xpf runs per namespace.
    pub fn create(queues: u32) -> Result<Self, EndpointError> {
        Self::create_at(
            queues,
            Arc::new(HomeNetns::current_for(Owner::InternalPair)?),
        )
    }

    fn create_at(queues: u32, home: Arc<HomeNetns>) -> Result<Self, EndpointError> {
        let owner = Owner::InternalPair;
        let (net, host) = (INTERNAL_NET_IFNAME, INTERNAL_HOST_IFNAME);
        if queues == 0 {
            return Err(EndpointError::Invalid {
                owner,
                field: "workers",
                message: "must be at least 1".into(),
            });
        }
        if show_link(&owner, None, net)?.is_some() {
            return Err(EndpointError::Interface {
                owner,
                interface: net.into(),
                message: "exists, but no xpf runs in this network namespace and none left a \
                          state file to take over from; remove what is left with `xpf cleanup`"
                    .into(),
            });
        }
        if show_link(&owner, None, host)?.is_some() {
            return Err(EndpointError::Interface {
                owner,
                interface: host.into(),
                message: format!(
                    "exists without {net}; delete it (`ip link delete {host}`) and start again"
                ),
            });
        }
        let q = queues;
        ip(
            &owner,
            net,
            &format!(
                "link add name {net} numtxqueues {q} numrxqueues {q} type veth \
                 peer name {host} numtxqueues {q} numrxqueues {q}"
            ),
        )?;
        let mut pair = Self {
            net_ifname: net.into(),
            net_ifindex: 0,
            net_mac: [0; 6],
            host_ifname: host.into(),
            host_ifindex: 0,
            host_mac: [0; 6],
            queues,
            home,
        };
        // Before either end is up, so no link-local address is made.
        let quiet = [net, host].into_iter().try_for_each(|dev| {
            ip(&owner, dev, &format!("link set dev {dev} addrgenmode none")).map(drop)
        });
        match quiet.and_then(|()| pair.configure()) {
            Ok(()) => Ok(pair),
            Err(e) => {
                if let Err(undo) = pair.remove() {
                    eprintln!("xpf: while undoing a failed internal pair: {undo}");
                }
                Err(e)
            }
        }
    }

    /// Sysctls, links up, ifindexes and MACs: safe to repeat on a pair
    /// that is already up (a takeover).
    fn configure(&mut self) -> Result<(), EndpointError> {
        let owner = Owner::InternalPair;
        let (net, host) = (INTERNAL_NET_IFNAME, INTERNAL_HOST_IFNAME);
        // Per-interface and per-namespace, gone with the interface: the
        // machine's global settings are never touched.
        write_sysctl(&owner, &format!("net/ipv4/conf/{host}/forwarding"), "1")?;
        write_sysctl(&owner, &format!("net/ipv4/conf/{host}/rp_filter"), "0")?;
        if read_sysctl("net/ipv4/conf/all/rp_filter").as_deref() == Some("1") {
            eprintln!(
                "xpf: warning: net.ipv4.conf.all.rp_filter is 1 (strict) in this network \
                 namespace; the effective value is the larger of `all` and the interface's, so \
                 the host stack may drop frames reinjected through {host}. Set it to 0 or 2."
            );
        }
        let force = format!("net/ipv6/conf/{host}/force_forwarding");
        if sysctl::path(&force).exists() {
            write_sysctl(&owner, &force, "1")?;
        } else if read_sysctl("net/ipv6/conf/all/forwarding").as_deref() != Some("1") {
            return Err(EndpointError::Interface {
                owner,
                interface: host.into(),
                message: "net.ipv6.conf.xpf_host.force_forwarding is missing (it needs Linux \
                          6.17 or later); IPv6 reinjection needs it, or global IPv6 forwarding \
                          (net.ipv6.conf.all.forwarding=1)"
                    .into(),
            });
        }
        for dev in [net, host] {
            ip(&owner, dev, &format!("link set dev {dev} up"))?;
        }
        let net = show_link(&owner, None, net)?.ok_or_else(|| gone(&owner, net))?;
        let host = show_link(&owner, None, host)?.ok_or_else(|| gone(&owner, host))?;
        self.net_ifindex = net.ifindex;
        self.net_mac = net.mac(&owner)?;
        self.host_ifindex = host.ifindex;
        self.host_mac = host.mac(&owner)?;
        Ok(())
    }

    /// Deletes the pair (both ends go with `xpf_net`).
    pub fn teardown(self) -> Result<(), EndpointError> {
        self.remove()
    }

    fn remove(&self) -> Result<(), EndpointError> {
        let owner = Owner::InternalPair;
        self.home
            .run(&owner, || {
                let net = &self.net_ifname;
                match show_link(&owner, None, net)? {
                    Some(l) if self.net_ifindex == 0 || l.ifindex == self.net_ifindex => {
                        ip(&owner, net, &format!("link del dev {net}")).map(drop)
                    }
                    _ => Ok(()),
                }
            })
            .and_then(|r| r)
    }
}

impl Topology {
    /// Makes the internal pair with `workers` queues, then every endpoint in
    /// order. All or nothing: on any error, whatever was made is torn down
    /// again before the error is returned.
    pub fn build(specs: Vec<EndpointSpec>, workers: u32) -> Result<Self, EndpointError> {
        validate_all(&specs)?;
        let home = Arc::new(HomeNetns::current_for(Owner::InternalPair)?);
        let internal = InternalPair::create_at(workers, home.clone())?;
        let mut topology = Topology {
            endpoints: Vec::with_capacity(specs.len()),
            internal,
            torn_down: false,
        };
        for spec in specs {
            match setup_at(spec, home.clone()) {
                Ok(ep) => topology.endpoints.push(ep),
                Err(e) => {
                    if let Err(undo) = topology.teardown() {
                        eprintln!("xpf: while undoing a failed build: {undo}");
                    }
                    return Err(e);
                }
            }
        }
        Ok(topology)
    }

    /// The endpoint called `name`.
    pub fn endpoint(&self, name: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.spec.name == name)
    }

    /// Tears everything down now, endpoints in reverse order and then the
    /// internal pair; returns the first error (the rest go to stderr).
    pub fn teardown(mut self) -> Result<(), EndpointError> {
        self.remove_all()
    }

    fn remove_all(&mut self) -> Result<(), EndpointError> {
        if std::mem::replace(&mut self.torn_down, true) {
            return Ok(());
        }
        let mut first = None;
        for ep in self.endpoints.drain(..).rev() {
            keep_first(&mut first, ep.teardown());
        }
        keep_first(&mut first, self.internal.remove());
        first.map_or(Ok(()), Err)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if let Err(e) = self.remove_all() {
            eprintln!("xpf: {e}");
        }
    }
}

/// What exists of each endpoint in `specs`, looked up from the calling
/// thread's namespace.
pub fn list(specs: &[EndpointSpec]) -> Result<Vec<EndpointStatus>, EndpointError> {
    specs
        .iter()
        .map(|spec| {
            spec.validate()?;
            let owner = spec.owner();
            let netns_exists = netns::exists(&spec.netns);
            let host = show_link(&owner, None, &spec.host_ifname)?;
            let peer = match (&host, netns_exists) {
                (Some(h), true) => find_peer(&owner, &spec.netns, h)?,
                _ => None,
            };
            let (addresses, tx_checksum_offload) = match &peer {
                Some(p) => (
                    peer_addresses(&owner, &spec.netns, &p.ifname)?,
                    Some(tx_checksum(&owner, &spec.netns, &p.ifname)?),
                ),
                None => (Vec::new(), None),
            };
            Ok(EndpointStatus {
                name: spec.name.clone(),
                attach: spec.attach,
                netns: spec.netns.clone(),
                netns_exists,
                host_ifname: spec.host_ifname.clone(),
                host_if_exists: host.is_some(),
                host_ifindex: host.as_ref().map(|h| h.ifindex),
                peer_ifname: peer.map(|p| p.ifname),
                addresses,
                tx_checksum_offload,
            })
        })
        .collect()
}

/// Deletes what [`create`] made for `spec` when no [`Endpoint`] is at hand
/// (`xpf endpoint delete` after `xpf endpoint create` has exited): the host
/// veth and the namespace. An adopted endpoint ([`Attach::Existing`]) is left
/// alone, and so is a host interface that is not a veth into `spec.netns`.
/// Returns whether there was anything to delete.
pub fn delete(spec: &EndpointSpec) -> Result<bool, EndpointError> {
    spec.validate()?;
    if spec.attach == Attach::Existing {
        return Ok(false);
    }
    let owner = spec.owner();
    let host_ifname = &spec.host_ifname;
    let netns_exists = netns::exists(&spec.netns);
    let host = show_link(&owner, None, host_ifname)?;
    if let Some(h) = &host {
        let paired = netns_exists && find_peer(&owner, &spec.netns, h)?.is_some();
        if !paired {
            return Err(EndpointError::Interface {
                owner,
                interface: host_ifname.clone(),
                message: format!(
                    "is not a veth into network namespace `{}`, so xpf did not make it; \
                     not deleting anything",
                    spec.netns
                ),
            });
        }
        ip(&owner, host_ifname, &format!("link del dev {host_ifname}"))?;
    }
    if netns_exists {
        netns::delete(&spec.netns).map_err(|e| netns_error(&owner, &spec.netns, e))?;
    }
    Ok(host.is_some() || netns_exists)
}

/// Every spec valid on its own, and no name, namespace, host interface or
/// address used twice.
fn validate_all(specs: &[EndpointSpec]) -> Result<(), EndpointError> {
    for (i, spec) in specs.iter().enumerate() {
        spec.validate()?;
        for other in &specs[..i] {
            let clash = |field, what: String| EndpointError::Invalid {
                owner: spec.owner(),
                field,
                message: format!("{what} is also used by endpoint `{}`", other.name),
            };
            if spec.name == other.name {
                return Err(clash("name", format!("`{}`", spec.name)));
            }
            if spec.netns == other.netns {
                return Err(clash(
                    "netns",
                    format!("network namespace `{}`", spec.netns),
                ));
            }
            if spec.host_ifname == other.host_ifname {
                return Err(clash(
                    "host_ifname",
                    format!("interface `{}`", spec.host_ifname),
                ));
            }
            if let Some(a) = spec.ipv4.filter(|a| other.ipv4 == Some(*a)) {
                return Err(clash("ipv4", a.to_string()));
            }
            if let Some(a) = spec.ipv6.filter(|a| other.ipv6 == Some(*a)) {
                return Err(clash("ipv6", a.to_string()));
            }
        }
    }
    Ok(())
}

/// The network namespace a thing was made in, so it is torn down there even
/// when a thread in another namespace drops it.
#[derive(Debug)]
struct HomeNetns(NetnsFile);

impl HomeNetns {
    fn current_for(owner: Owner) -> Result<Self, EndpointError> {
        NetnsFile::current()
            .map(Self)
            .map_err(|source| EndpointError::Io {
                owner,
                what: format!("opening {}", NetnsFile::THREAD_SELF),
                source,
            })
    }

    /// Runs `f` in this namespace: right here if the calling thread is in
    /// it, otherwise on a scoped thread that moves there.
    fn run<T: Send>(
        &self,
        owner: &Owner,
        f: impl FnOnce() -> T + Send,
    ) -> Result<T, EndpointError> {
        let io_err = |what: &str, source| EndpointError::Io {
            owner: owner.clone(),
            what: what.into(),
            source,
        };
        let here = self
            .0
            .is_current()
            .map_err(|e| io_err("reading the thread's network namespace", e))?;
        if here {
            return Ok(f());
        }
        std::thread::scope(|s| {
            s.spawn(|| {
                self.0
                    .enter()
                    .map_err(|e| io_err("entering the network namespace it was made in", e))?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

/// Runs `ip ARGS` in the calling thread's namespace and returns its stdout.
/// `args` is split at whitespace: every name in it has been validated to
/// contain none.
fn ip(owner: &Owner, interface: &str, args: &str) -> Result<String, EndpointError> {
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
fn ip_absent_ok(owner: &Owner, interface: &str, args: &str) -> Result<(), EndpointError> {
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
fn show_link(
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
fn find_peer(owner: &Owner, netns: &str, host: &IpLink) -> Result<Option<IpLink>, EndpointError> {
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
fn peer_addresses(owner: &Owner, netns: &str, ifname: &str) -> Result<Vec<IpAddr>, EndpointError> {
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
fn ip_json<T: serde::de::DeserializeOwned + Default>(
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

/// The host route for one endpoint address: `ip` family flag and prefix.
fn host_route(a: IpAddr) -> (&'static str, String) {
    match a {
        IpAddr::V4(a) => ("-4", format!("{a}/32")),
        IpAddr::V6(a) => ("-6", format!("{a}/128")),
    }
}

fn gone(owner: &Owner, interface: &str) -> EndpointError {
    EndpointError::Interface {
        owner: owner.clone(),
        interface: interface.into(),
        message: "disappeared while being set up".into(),
    }
}

fn netns_error(owner: &Owner, netns: &str, e: NetnsError) -> EndpointError {
    let message = match e {
        NetnsError::Command { message, .. } => message,
        NetnsError::Io { source, .. } => source.to_string(),
    };
    EndpointError::Netns {
        owner: owner.clone(),
        netns: netns.into(),
        message,
    }
}

fn keep_first(first: &mut Option<EndpointError>, r: Result<(), EndpointError>) {
    if let Err(e) = r {
        if first.is_none() {
            *first = Some(e);
        } else {
            eprintln!("xpf: {e}");
        }
    }
}

fn write_sysctl(owner: &Owner, name: &str, value: &str) -> Result<(), EndpointError> {
    sysctl::write(name, value).map_err(|source| EndpointError::Io {
        owner: owner.clone(),
        what: format!("writing {value} to {}", sysctl::path(name).display()),
        source,
    })
}

fn read_sysctl(name: &str) -> Option<String> {
    sysctl::read(name)
}

/// Turns TX checksum offload on `ifname` inside `netns` on or off, and
/// checks that it took effect.
fn set_tx_checksum(
    owner: &Owner,
    netns: &str,
    ifname: &str,
    on: bool,
) -> Result<(), EndpointError> {
    let r = netns::run_in(netns, || ethtool::set_tx_checksum(ifname, on))
        .map_err(|e| netns_error(owner, netns, e))?;
    match r {
        Ok(now) if now == on => Ok(()),
        Ok(_) => Err(EndpointError::Interface {
            owner: owner.clone(),
            interface: ifname.into(),
            message: format!(
                "TX checksum offload is still {} after ETHTOOL_STXCSUM",
                if on { "off" } else { "on" }
            ),
        }),
        Err(source) => Err(EndpointError::Io {
            owner: owner.clone(),
            what: format!("setting TX checksum offload on `{ifname}` in `{netns}`"),
            source,
        }),
    }
}

fn tx_checksum(owner: &Owner, netns: &str, ifname: &str) -> Result<bool, EndpointError> {
    netns::run_in(netns, || ethtool::tx_checksum(ifname))
        .map_err(|e| netns_error(owner, netns, e))?
        .map_err(|source| EndpointError::Io {
            owner: owner.clone(),
            what: format!("reading TX checksum offload of `{ifname}` in `{netns}`"),
            source,
        })
}

/// One entry of `ip -j -d link show`.
#[derive(Debug, Deserialize)]
struct IpLink {
    ifindex: u32,
    ifname: String,
    #[serde(default)]
    address: Option<String>,
    /// A veth's peer ifindex (in `link_netnsid` when that is present).
    #[serde(default)]
    link_index: Option<u32>,
    #[serde(default)]
    num_rx_queues: Option<u32>,
    #[serde(default)]
    linkinfo: Option<IpLinkInfo>,
}

#[derive(Debug, Deserialize)]
struct IpLinkInfo {
    #[serde(default)]
    info_kind: Option<String>,
}

impl IpLink {
    fn kind(&self) -> Option<&str> {
        self.linkinfo.as_ref()?.info_kind.as_deref()
    }

    fn mac(&self, owner: &Owner) -> Result<[u8; 6], EndpointError> {
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
struct IpRoute {
    #[serde(default)]
    dev: Option<String>,
}

/// One entry of `ip -j neigh show`.
#[derive(Debug, Deserialize)]
struct IpNeigh {
    #[serde(default)]
    lladdr: Option<String>,
    #[serde(default)]
    state: Vec<String>,
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
    use super::*;

    fn spec() -> EndpointSpec {
        EndpointSpec {
            name: "web".into(),
            netns: "web".into(),
            host_ifname: "xpf-web".into(),
            ipv4: Some(Ipv4Addr::new(198, 18, 0, 2)),
            ipv6: Some("2001:db8::2".parse().unwrap()),
            attach: Attach::Create,
            queues: 1,
        }
    }

    fn invalid_field(r: Result<(), EndpointError>) -> &'static str {
        match r {
            Err(EndpointError::Invalid { field, .. }) => field,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

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

    #[test]
    fn validation_names_the_field() {
        assert!(spec().validate().is_ok());
        type Break = fn(&mut EndpointSpec);
        let cases: [(&str, Break); 9] = [
            ("name", |s| s.name.clear()),
            ("netns", |s| s.netns = "a/b".into()),
            ("host_ifname", |s| s.host_ifname = "sixteen-chars-xx".into()),
            ("host_ifname", |s| {
                s.host_ifname = INTERNAL_HOST_IFNAME.into()
            }),
            ("queues", |s| s.queues = 0),
            ("ipv4", |s| (s.ipv4, s.ipv6) = (None, None)),
            ("ipv4", |s| s.ipv4 = Some(GATEWAY_V4)),
            ("ipv6", |s| s.ipv6 = Some(GATEWAY_V6)),
            ("ipv6", |s| s.ipv6 = Some(Ipv6Addr::UNSPECIFIED)),
        ];
        for (field, break_it) in cases {
            let mut s = spec();
            break_it(&mut s);
            assert_eq!(invalid_field(s.validate()), field);
        }
    }

    #[test]
    fn duplicates_across_endpoints_name_the_field() {
        let mut b = spec();
        b.name = "api".into();
        b.netns = "api".into();
        b.host_ifname = "xpf-api".into();
        b.ipv6 = None;
        let err = validate_all(&[spec(), b]).unwrap_err();
        assert!(
            matches!(&err, EndpointError::Invalid { field: "ipv4", .. }),
            "{err}"
        );
        assert_eq!(err.owner(), &Owner::Endpoint("api".into()));
        assert!(err.to_string().contains("endpoint `web`"), "{err}");
    }
}
