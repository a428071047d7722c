//! What a running xpf made, written down so a successor can find it again:
//! after a crash, [`Topology::reclaim`] takes over the namespaces, veths
//! and internal pair a dead instance left (they are still in use: its
//! pinned programs keep filtering on those veths), and
//! [`remove_leftovers`] removes them for good (`xpf cleanup`).
//!
//! A record says whether xpf created the endpoint (then it deletes it in
//! the end) or adopted it (then it only undoes the changes listed), so the
//! successor tears down exactly what its predecessor would have.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::create::setup_at;
use super::iproute::{find_peer, ip, show_link};
use super::spec::validate_all;
use super::{
    keep_first, Attach, Change, Endpoint, EndpointError, EndpointSpec, HomeNetns, InternalPair,
    Owner, Topology, INTERNAL_HOST_IFNAME, INTERNAL_NET_IFNAME,
};
use crate::sys::netns;

/// One endpoint as an instance set it up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub name: String,
    pub netns: String,
    pub host_ifname: String,
    pub host_ifindex: u32,
    pub peer_ifname: String,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    /// xpf made the namespace and veth (and deletes them at the end).
    pub created: bool,
    /// What adopting changed, in order (empty for a created endpoint).
    changes: Vec<Change>,
}

/// The internal pair as an instance made it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InternalRecord {
    pub net_ifindex: u32,
    pub host_ifindex: u32,
    pub queues: u32,
}

impl Endpoint {
    /// This endpoint as a record.
    pub fn record(&self) -> EndpointRecord {
        EndpointRecord {
            name: self.spec.name.clone(),
            netns: self.spec.netns.clone(),
            host_ifname: self.spec.host_ifname.clone(),
            host_ifindex: self.host_ifindex,
            peer_ifname: self.peer_ifname.clone(),
            ipv4: self.spec.ipv4,
            ipv6: self.spec.ipv6,
            created: self.created,
            changes: self.changes.clone(),
        }
    }

    /// A handle on a recorded endpoint, good for [`Endpoint::remove`].
    fn from_record(rec: &EndpointRecord, home: Arc<HomeNetns>) -> Self {
        Endpoint {
            spec: EndpointSpec {
                name: rec.name.clone(),
                netns: rec.netns.clone(),
                host_ifname: rec.host_ifname.clone(),
                ipv4: rec.ipv4,
                ipv6: rec.ipv6,
                attach: if rec.created {
                    Attach::Create
                } else {
                    Attach::Existing
                },
                queues: 1,
            },
            host_ifindex: rec.host_ifindex,
            host_mac: [0; 6],
            peer_ifname: rec.peer_ifname.clone(),
            peer_mac: [0; 6],
            rx_queues: 0,
            created: rec.created,
            home,
            changes: rec.changes.clone(),
        }
    }
}

impl InternalPair {
    pub fn record(&self) -> InternalRecord {
        InternalRecord {
            net_ifindex: self.net_ifindex,
            host_ifindex: self.host_ifindex,
            queues: self.queues,
        }
    }

    /// Takes over an `xpf_net`/`xpf_host` pair left by a dead instance when
    /// it has queues for `workers`, else makes a new one.
    fn reclaim_at(workers: u32, home: Arc<HomeNetns>) -> Result<Self, EndpointError> {
        let owner = Owner::InternalPair;
        let (net, host) = (INTERNAL_NET_IFNAME, INTERNAL_HOST_IFNAME);
        if let Some(l) = show_link(&owner, None, net)? {
            let queues = l.num_rx_queues.unwrap_or(1);
            if l.kind() == Some("veth") && queues >= workers {
                let mut pair = Self {
                    net_ifname: net.into(),
                    net_ifindex: l.ifindex,
                    net_mac: [0; 6],
                    host_ifname: host.into(),
                    host_ifindex: 0,
                    host_mac: [0; 6],
                    queues,
                    home,
                };
                pair.configure()?;
                return Ok(pair);
            }
            ip(&owner, net, &format!("link del dev {net}"))?;
        }
        if show_link(&owner, None, host)?.is_some() {
            ip(&owner, host, &format!("link del dev {host}"))?;
        }
        Self::create_at(workers, home)
    }
}

impl Topology {
    /// The internal pair and every endpoint, as records.
    pub fn records(&self) -> (InternalRecord, Vec<EndpointRecord>) {
        (
            self.internal.record(),
            self.endpoints.iter().map(Endpoint::record).collect(),
        )
    }

    /// Leaves everything in place (for a successor to take over).
    pub fn release(mut self) {
        self.torn_down = true;
    }

    /// Takes over what a dead instance recorded in `records` for the
    /// endpoints of `specs`, and sets up the rest as [`Topology::build`]
    /// would. A recorded endpoint that no longer matches its spec (other
    /// addresses, names or attach mode) or is gone in part is removed and
    /// set up anew; one no longer configured is removed. Returns what it
    /// did besides taking over, one line each.
    ///
    /// On error, what the predecessor made stays in place (its pinned
    /// programs still filter there) and only what was made now is undone.
    pub fn reclaim(
        specs: Vec<EndpointSpec>,
        workers: u32,
        records: &[EndpointRecord],
    ) -> Result<(Self, Vec<String>), EndpointError> {
        validate_all(&specs)?;
        let home = Arc::new(HomeNetns::current_for(Owner::InternalPair)?);
        let mut notes = Vec::new();
        for rec in records
            .iter()
            .filter(|r| !specs.iter().any(|s| s.name == r.name))
        {
            Endpoint::from_record(rec, home.clone()).remove()?;
            notes.push(format!(
                "endpoint `{}`: removed (no longer configured)",
                rec.name
            ));
        }
        let internal = InternalPair::reclaim_at(workers, home.clone())?;
        let mut topology = Topology {
            endpoints: Vec::with_capacity(specs.len()),
            internal,
            torn_down: false,
        };
        let mut fresh = Vec::new();
        for spec in specs {
            let rec = records.iter().find(|r| r.name == spec.name);
            let name = spec.name.clone();
            let taken = match rec {
                Some(rec) => reclaim_one(&spec, rec, &home),
                None => Ok(None),
            };
            let result = match taken {
                Ok(Some(ep)) => Ok(ep),
                Ok(None) => {
                    let undo = match rec {
                        Some(rec) => Endpoint::from_record(rec, home.clone()).remove(),
                        None => Ok(()),
                    };
                    undo.and_then(|()| setup_at(spec, home.clone()))
                        .inspect(|_| {
                            fresh.push(topology.endpoints.len());
                            notes.push(format!(
                                "endpoint `{name}`: set up anew ({})",
                                if rec.is_some() {
                                    "its recorded state did not match"
                                } else {
                                    "new in the config"
                                }
                            ));
                        })
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(ep) => topology.endpoints.push(ep),
                Err(e) => {
                    for i in fresh.into_iter().rev() {
                        let ep = topology.endpoints.remove(i);
                        if let Err(undo) = ep.teardown() {
                            eprintln!("xpf: while undoing a failed takeover: {undo}");
                        }
                    }
                    topology.release();
                    return Err(e);
                }
            }
        }
        Ok((topology, notes))
    }
}

/// The endpoint `rec` describes, if it is still there as recorded and
/// matches `spec`.
fn reclaim_one(
    spec: &EndpointSpec,
    rec: &EndpointRecord,
    home: &Arc<HomeNetns>,
) -> Result<Option<Endpoint>, EndpointError> {
    let same = rec.netns == spec.netns
        && rec.host_ifname == spec.host_ifname
        && rec.ipv4 == spec.ipv4
        && rec.ipv6 == spec.ipv6
        && rec.created == (spec.attach == Attach::Create);
    if !same || !netns::exists(&spec.netns) {
        return Ok(None);
    }
    let owner = spec.owner();
    let Some(host) = show_link(&owner, None, &spec.host_ifname)? else {
        return Ok(None);
    };
    if host.ifindex != rec.host_ifindex {
        return Ok(None);
    }
    let Some(peer) = find_peer(&owner, &spec.netns, &host)? else {
        return Ok(None);
    };
    if peer.ifname != rec.peer_ifname {
        return Ok(None);
    }
    Ok(Some(Endpoint {
        spec: spec.clone(),
        host_ifindex: host.ifindex,
        host_mac: host.mac(&owner)?,
        peer_mac: peer.mac(&owner)?,
        peer_ifname: peer.ifname,
        rx_queues: host.num_rx_queues.unwrap_or(1),
        created: rec.created,
        home: home.clone(),
        changes: rec.changes.clone(),
    }))
}

/// Removes what a dead instance recorded (endpoints in reverse order:
/// created ones deleted, adopted ones restored) and the internal pair of
/// the calling thread's namespace. Returns one line per thing removed.
pub fn remove_leftovers(records: &[EndpointRecord]) -> Result<Vec<String>, EndpointError> {
    let home = Arc::new(HomeNetns::current_for(Owner::InternalPair)?);
    let mut notes = Vec::new();
    let mut first = None;
    for rec in records.iter().rev() {
        let r = Endpoint::from_record(rec, home.clone()).remove();
        if r.is_ok() {
            notes.push(format!(
                "endpoint `{}`: {}",
                rec.name,
                if rec.created {
                    "namespace and veth deleted"
                } else {
                    "adopted: xpf's routes, neighbours and checksum setting undone"
                }
            ));
        }
        keep_first(&mut first, r);
    }
    let owner = Owner::InternalPair;
    for dev in [INTERNAL_NET_IFNAME, INTERNAL_HOST_IFNAME] {
        match show_link(&owner, None, dev) {
            Ok(Some(_)) => {
                let r = ip(&owner, dev, &format!("link del dev {dev}")).map(drop);
                if r.is_ok() {
                    notes.push(format!("internal pair: {dev} deleted"));
                }
                keep_first(&mut first, r);
            }
            Ok(None) => {}
            Err(e) => keep_first(&mut first, Err(e)),
        }
    }
    first.map_or(Ok(notes), Err)
}
