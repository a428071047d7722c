//! The steps of [`super::Datapath::start`] between the topology and the
//! workers: programs onto every endpoint veth (or into the links a dead
//! instance pinned), then one AF_XDP socket per receive queue.

use std::path::Path;
use std::sync::Arc;

use super::programs::{self, AttachMode, Programs};
use super::settings::DatapathConfig;
use super::xsk::{PortKind, PortSpec, WorkerXsk};
use super::{DatapathError, Parts};
use crate::endpoint::Topology;

/// Gives every endpoint its XSK slots and its XDP and tcx programs: swapped
/// into the link pinned for its veth when there is one (no moment without a
/// program), attached and pinned otherwise. The attachments go into
/// `parts` as they are made, so a failure drops them as `parts` says.
/// Returns each endpoint's first slot.
pub(super) fn attach_all(
    programs: &Programs,
    pins: &Path,
    mode: AttachMode,
    parts: &mut Parts,
) -> Result<Vec<u32>, DatapathError> {
    let topology = parts.topology.as_ref().expect("topology until drop");
    let mut slot_base = 0u32;
    let mut slots = Vec::with_capacity(topology.endpoints.len());
    for ep in &topology.endpoints {
        let (ifname, ifindex) = (&ep.spec.host_ifname, ep.host_ifindex);
        programs.set_interface_slots(ifindex, slot_base)?;
        slots.push(slot_base);
        slot_base += ep.rx_queues;

        let path = programs::xdp_link_path(pins, ifname);
        let xdp = match programs.take_over_xdp(&path, ifname, ifindex, mode)? {
            Some(a) => a,
            None => {
                let mut a = programs.attach_xdp(ifname, ifindex, mode)?;
                a.pin(&path)?;
                a
            }
        };
        parts.xdp.push(xdp);

        let path = programs::tc_link_path(pins, ifname);
        let tc = match programs.take_over_inbound(&path, ifname, ifindex)? {
            Some(a) => a,
            None => {
                let mut a = programs.attach_inbound(ifname, ifindex)?;
                a.pin(&path)?;
                a
            }
        };
        parts.tc.push(tc);
    }
    Ok(slots)
}

/// Removes pinned links of interfaces that are no endpoint's any more (a
/// predecessor's endpoint that left the config): with the pin gone and no
/// fd left, the kernel detaches them.
pub(super) fn forget_stale_links(pins: &Path, topology: &Topology) {
    let Ok(dir) = std::fs::read_dir(pins) else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let ifname = name
            .strip_prefix("xdp_")
            .or_else(|| name.strip_prefix("tc_"));
        if let Some(ifname) = ifname {
            if topology
                .endpoints
                .iter()
                .all(|e| e.spec.host_ifname != ifname)
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Per endpoint: (worker, port index) of the socket on its queue 0.
pub(super) type PortOwners = Arc<Vec<(usize, usize)>>;

/// Binds one socket per endpoint receive queue (round-robin over the
/// workers) plus one `xpf_net` queue per worker, and registers the
/// endpoint sockets in the XSKMAP. Returns the workers' sockets and, per
/// endpoint, (worker, port index) of its queue 0.
pub(super) fn bind_sockets(
    programs: &Programs,
    topology: &Topology,
    slots: &[u32],
    dp: &DatapathConfig,
) -> Result<(Vec<WorkerXsk>, PortOwners), DatapathError> {
    let workers_n = dp.cpus.len();
    let mut port_specs: Vec<Vec<(PortSpec, Option<u32>)>> =
        (0..workers_n).map(|_| Vec::new()).collect();
    let mut owner = vec![(usize::MAX, 0usize); topology.endpoints.len()];
    let mut next = 0usize;
    for (i, ep) in topology.endpoints.iter().enumerate() {
        for q in 0..ep.rx_queues {
            let w = next % workers_n;
            next += 1;
            if q == 0 {
                owner[i] = (w, port_specs[w].len());
            }
            port_specs[w].push((
                PortSpec {
                    kind: PortKind::Endpoint(i as u16),
                    ifname: ep.spec.host_ifname.clone(),
                    queue: q,
                },
                Some(slots[i] + q),
            ));
        }
    }
    let internal = &topology.internal;
    for (w, specs) in port_specs.iter_mut().enumerate() {
        specs.push((
            PortSpec {
                kind: PortKind::Reinject,
                ifname: internal.net_ifname.clone(),
                queue: w as u32,
            },
            None,
        ));
    }
    let mut xsks = Vec::with_capacity(workers_n);
    for specs in &port_specs {
        let plain: Vec<PortSpec> = specs
            .iter()
            .map(|(s, _)| PortSpec {
                kind: s.kind,
                ifname: s.ifname.clone(),
                queue: s.queue,
            })
            .collect();
        let x = WorkerXsk::new(&plain, &dp.xsk)?;
        for (port, (_, slot)) in x.ports.iter().zip(specs) {
            if let Some(slot) = slot {
                programs.register_xsk(*slot, port.fd())?;
            }
        }
        xsks.push(x);
    }
    Ok((xsks, Arc::new(owner)))
}
