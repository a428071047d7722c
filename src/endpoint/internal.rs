//! The internal veth pair (`xpf_net` / `xpf_host`) through which the filter
//! reinjects allowed frames: made in the calling thread's namespace with one
//! queue per worker, `xpf_host` set to forward what it receives (through
//! per-interface sysctls only), and deleted as one.

use std::sync::Arc;

use super::iproute::{ip, show_link};
use super::{
    gone, EndpointError, HomeNetns, InternalPair, Owner, INTERNAL_HOST_IFNAME, INTERNAL_NET_IFNAME,
};
use crate::sys::sysctl;

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

    pub(super) fn create_at(queues: u32, home: Arc<HomeNetns>) -> Result<Self, EndpointError> {
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
    pub(super) fn configure(&mut self) -> Result<(), EndpointError> {
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

    pub(super) fn remove(&self) -> Result<(), EndpointError> {
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
