//! The verdict cache's maps (`bpf/include/flow_cache.h`) from userspace:
//! entries, the generation they must carry, the ports a cached frame may
//! be redirected to, and what the program served per endpoint.
//!
//! [`FlowCacheMaps`] owns duplicated map fds, so it outlives no skeleton and
//! can be shared by the workers and the control plane without borrowing
//! [`Programs`]. Keys and values are the ABI header's generated types.

use std::os::fd::AsFd;

use libbpf_rs::{libbpf_sys, ErrorKind, MapCore, MapFlags, MapHandle, MapType};

use super::{ProgramError, Programs};
use crate::datapath::bpf::xsk_redirect::types;

/// `struct xpf_flow_key`: a flow as its sender's veth sees it.
pub type FlowKey = types::xpf_flow_key;
/// `struct xpf_flow_verdict`: what a hit does.
pub type FlowVerdict = types::xpf_flow_verdict;
/// `enum xpf_cache_action`.
pub type CacheAction = types::xpf_cache_action;

/// Flows the cache holds (`XPF_FLOW_CACHE_MAX`); the least recently used
/// go first beyond that.
pub const FLOW_CACHE_MAX: u32 = types::xpf_abi_limit::XPF_LIMIT_FLOW_CACHE.0;

const _: () = assert!(std::mem::size_of::<FlowKey>() == 44);
const _: () = assert!(std::mem::size_of::<FlowVerdict>() == 40);
const _: () = assert!(std::mem::size_of::<types::xpf_cache_served>() == 16);

fn bytes_of<T>(v: &T) -> &[u8] {
    // SAFETY: only called with the ABI's generated key and value types:
    // repr(C) plain integers and byte arrays whose padding is spelled out
    // as fields (sizes asserted above), so every byte is initialised.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

/// The cache's maps, by duplicated fds.
#[derive(Debug)]
pub struct FlowCacheMaps {
    cache: MapHandle,
    generation: MapHandle,
    /// An ARRAY_OF_MAPS of one slot and the map kept in it: updating a
    /// map-in-map makes the kernel wait for an RCU grace period, i.e.
    /// until every XDP program running at the call has returned.
    barrier: MapHandle,
    barrier_inner: MapHandle,
}

fn map_error(map: &'static str, action: String) -> impl FnOnce(libbpf_rs::Error) -> ProgramError {
    move |source| ProgramError::Map {
        map,
        action,
        source,
    }
}

impl Programs {
    /// Handles on the verdict cache's maps.
    pub fn flow_cache_maps(&self) -> Result<FlowCacheMaps, ProgramError> {
        let dup = |m: &libbpf_rs::MapMut<'static>, name: &'static str| {
            MapHandle::try_from(m).map_err(map_error(name, "duplicating its fd".into()))
        };
        let barrier_inner = MapHandle::create(
            MapType::Array,
            Some("xpf_barrier_in"),
            4,
            4,
            1,
            &libbpf_sys::bpf_map_create_opts {
                sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as libbpf_sys::size_t,
                ..Default::default()
            },
        )
        .map_err(map_error("cache_barrier", "creating its inner map".into()))?;
        let barrier = MapHandle::create(
            MapType::ArrayOfMaps,
            Some("xpf_barrier"),
            4,
            4,
            1,
            &libbpf_sys::bpf_map_create_opts {
                sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as libbpf_sys::size_t,
                inner_map_fd: std::os::fd::AsRawFd::as_raw_fd(&barrier_inner.as_fd()) as u32,
                ..Default::default()
            },
        )
        .map_err(map_error("cache_barrier", "creating it".into()))?;
        Ok(FlowCacheMaps {
            cache: dup(&self.xdp.maps.flow_cache, "flow_cache")?,
            generation: dup(&self.xdp.maps.cache_generation, "cache_generation")?,
            barrier,
            barrier_inner,
        })
    }

    /// Lets cached frames be redirected to interface `ifindex` (a local
    /// endpoint's host-side veth).
    pub fn set_cache_port(&self, ifindex: u32) -> Result<(), ProgramError> {
        self.xdp
            .maps
            .cache_ports
            .update(
                &ifindex.to_ne_bytes(),
                &ifindex.to_ne_bytes(),
                MapFlags::ANY,
            )
            .map_err(map_error(
                "cache_ports",
                format!("adding ifindex {ifindex}"),
            ))
    }

    /// Frames and bytes the program served from the cache, per endpoint
    /// index (`endpoints` of them), summed over CPUs.
    pub fn cache_served(&self, endpoints: usize) -> Result<Vec<(u64, u64)>, ProgramError> {
        let map = &self.xdp.maps.cache_served;
        (0..endpoints as u32)
            .map(|i| {
                let per_cpu = map
                    .lookup_percpu(&i.to_ne_bytes(), MapFlags::ANY)
                    .map_err(map_error("cache_served", format!("reading endpoint {i}")))?
                    .unwrap_or_default();
                Ok(per_cpu.iter().fold((0, 0), |(p, b), v| {
                    let word = |at: usize| {
                        v.get(at..at + 8)
                            .and_then(|w| w.try_into().ok())
                            .map_or(0, u64::from_ne_bytes)
                    };
                    (p + word(0), b + word(8))
                }))
            })
            .collect()
    }
}

impl FlowCacheMaps {
    /// Another set of handles on the same maps (for another thread).
    pub fn try_clone(&self) -> Result<Self, ProgramError> {
        let dup = |m: &MapHandle, name: &'static str| {
            MapHandle::try_from(m).map_err(map_error(name, "duplicating its fd".into()))
        };
        Ok(Self {
            cache: dup(&self.cache, "flow_cache")?,
            generation: dup(&self.generation, "cache_generation")?,
            barrier: dup(&self.barrier, "cache_barrier")?,
            barrier_inner: dup(&self.barrier_inner, "cache_barrier")?,
        })
    }

    /// Writes (or replaces) the entry of `key`.
    pub fn insert(&self, key: &FlowKey, verdict: &FlowVerdict) -> Result<(), ProgramError> {
        self.cache
            .update(bytes_of(key), bytes_of(verdict), MapFlags::ANY)
            .map_err(map_error("flow_cache", "writing an entry".into()))
    }

    /// Deletes the entry of `key`; `Ok(false)` when there was none.
    pub fn delete(&self, key: &FlowKey) -> Result<bool, ProgramError> {
        match self.cache.delete(bytes_of(key)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(map_error("flow_cache", "deleting an entry".into())(e)),
        }
    }

    /// The entry of `key`, if there is one.
    pub fn get(&self, key: &FlowKey) -> Result<Option<FlowVerdict>, ProgramError> {
        let bytes = self
            .cache
            .lookup(bytes_of(key), MapFlags::ANY)
            .map_err(map_error("flow_cache", "reading an entry".into()))?;
        Ok(bytes
            .filter(|b| b.len() == std::mem::size_of::<FlowVerdict>())
            // SAFETY: the kernel returned exactly one value of the map's
            // value type, plain data for which any bytes are valid.
            .map(|b| unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<FlowVerdict>()) }))
    }

    /// The generation the program serves (0 before any was set).
    pub fn generation(&self) -> Result<u64, ProgramError> {
        let bytes = self
            .generation
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(map_error("cache_generation", "reading it".into()))?;
        Ok(bytes
            .and_then(|b| b.get(..8)?.try_into().ok())
            .map_or(0, u64::from_ne_bytes))
    }

    /// Sets the generation the program serves.
    pub fn set_generation(&self, generation: u64) -> Result<(), ProgramError> {
        self.generation
            .update(
                &0u32.to_ne_bytes(),
                &generation.to_ne_bytes(),
                MapFlags::ANY,
            )
            .map_err(map_error(
                "cache_generation",
                format!("setting it to {generation}"),
            ))
    }

    /// Returns once every XDP program that was running at the call has
    /// finished: after a generation change, no frame is being served under
    /// the old one any more. A thread run on every CPU does it in tens of
    /// microseconds ([`crate::sys::cpus`]); where that cannot be relied on,
    /// the kernel's own RCU grace period (milliseconds).
    pub fn wait_for_programs(&self) -> Result<(), ProgramError> {
        if crate::sys::cpus::pass_every_cpu().is_ok() {
            return Ok(());
        }
        self.wait_for_grace_period()
    }

    /// [`FlowCacheMaps::wait_for_programs`] through the kernel: updating a
    /// map-in-map returns after an RCU grace period.
    pub fn wait_for_grace_period(&self) -> Result<(), ProgramError> {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.barrier_inner.as_fd()) as u32;
        self.barrier
            .update(&0u32.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY)
            .map_err(map_error(
                "cache_barrier",
                "waiting for a grace period".into(),
            ))
    }
}
