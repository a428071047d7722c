//! One endpoint's life: setting it up (making the namespace and veth, or
//! adopting ones that are there), configuring both ends, and removing
//! exactly what was made or changed; and, with no [`Endpoint`] at hand,
//! what exists of a spec ([`list`]) and deleting what [`create`] made
//! ([`delete`]).

use std::net::IpAddr;
use std::sync::Arc;

use super::iproute::{
    find_peer, format_mac, ip, ip_absent_ok, ip_json, peer_addresses, show_link, IpNeigh, IpRoute,
};
use super::{
    gone, keep_first, netns_error, Attach, Change, Endpoint, EndpointError, EndpointSpec,
    EndpointStatus, HomeNetns, Owner, GATEWAY_V4, GATEWAY_V6, PEER_IFNAME,
};
use crate::sys::{ethtool, netns};

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

pub(super) fn setup_at(
    spec: EndpointSpec,
    home: Arc<HomeNetns>,
) -> Result<Endpoint, EndpointError> {
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
    pub(super) fn remove(&self) -> Result<(), EndpointError> {
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

/// The host route for one endpoint address: `ip` family flag and prefix.
fn host_route(a: IpAddr) -> (&'static str, String) {
    match a {
        IpAddr::V4(a) => ("-4", format!("{a}/32")),
        IpAddr::V6(a) => ("-6", format!("{a}/128")),
    }
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
