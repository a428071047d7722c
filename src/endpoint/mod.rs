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
//!
//! The work is split by job: `spec` checks what an endpoint should look
//! like, `create` sets one endpoint up (created or adopted) and removes it,
//! `internal` owns the internal pair, `topology` builds and tears down all
//! of them together, `record` writes down what was made for a successor,
//! and `iproute` runs `ip` and reads its JSON.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::sys::netns::{NetnsError, NetnsFile};

mod create;
mod internal;
mod iproute;
mod record;
mod spec;
mod topology;

pub use create::{adopt, create, delete, list, setup};
pub use iproute::format_mac;
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
