//! The programs' per-CPU counters: their indexes (the ABI header's enums),
//! their names for output, and reading them summed over CPUs.

use libbpf_rs::{MapCore, MapFlags, MapMut};

use super::{ProgramError, Programs};
use crate::datapath::bpf::{inbound, xsk_redirect};

/// `enum xpf_xdp_counter` from the ABI header: indexes [`Programs::xdp_counters`].
pub type XdpCounter = xsk_redirect::types::xpf_xdp_counter;
/// `enum xpf_tc_counter` from the ABI header: indexes [`Programs::tc_counters`].
pub type TcCounter = inbound::types::xpf_tc_counter;

/// Number of XDP counters (`XPF_XDP_COUNTER_MAX`).
pub const XDP_COUNTERS: usize = XdpCounter::XPF_XDP_COUNTER_MAX.0 as usize;
/// Number of inbound TC counters (`XPF_TC_COUNTER_MAX`).
pub const TC_COUNTERS: usize = TcCounter::XPF_TC_COUNTER_MAX.0 as usize;

/// Names of the XDP counters for output, indexed like [`Programs::xdp_counters`].
/// A counter added to the C enum without a name here fails a unit test.
pub const XDP_COUNTER_NAMES: [&str; XDP_COUNTERS] = {
    let mut names = [""; XDP_COUNTERS];
    names[XdpCounter::XPF_XDP_REDIRECTED.0 as usize] = "redirected";
    names[XdpCounter::XPF_XDP_NO_SOCKET.0 as usize] = "no_socket";
    names[XdpCounter::XPF_XDP_PASSED_NEIGH.0 as usize] = "passed_neighbour";
    names[XdpCounter::XPF_XDP_FAIL_OPEN.0 as usize] = "fail_open";
    names[XdpCounter::XPF_XDP_CACHE_REDIRECTED.0 as usize] = "cache_redirected";
    names[XdpCounter::XPF_XDP_CACHE_PASSED.0 as usize] = "cache_passed";
    names[XdpCounter::XPF_XDP_CACHE_MISS.0 as usize] = "cache_miss";
    names[XdpCounter::XPF_XDP_CACHE_STALE.0 as usize] = "cache_stale";
    names[XdpCounter::XPF_XDP_CACHE_BYPASS.0 as usize] = "cache_bypass";
    names[XdpCounter::XPF_XDP_CACHE_NO_PORT.0 as usize] = "cache_no_port";
    names
};

/// Names of the inbound TC counters, indexed like [`Programs::tc_counters`].
pub const TC_COUNTER_NAMES: [&str; TC_COUNTERS] = {
    let mut names = [""; TC_COUNTERS];
    names[TcCounter::XPF_TC_REPORTED.0 as usize] = "reported";
    names[TcCounter::XPF_TC_RING_FULL.0 as usize] = "ring_full";
    names[TcCounter::XPF_TC_SKIPPED_DUPLICATE.0 as usize] = "skipped_duplicate";
    names
};

impl Programs {
    /// The XDP program's counters summed over CPUs, indexed by [`XdpCounter`].
    pub fn xdp_counters(&self) -> Result<[u64; XDP_COUNTERS], ProgramError> {
        sum_per_cpu(&self.xdp.maps.xdp_counters, "xdp_counters")
    }

    /// The inbound program's counters summed over CPUs, indexed by
    /// [`TcCounter`].
    pub fn tc_counters(&self) -> Result<[u64; TC_COUNTERS], ProgramError> {
        sum_per_cpu(&self.inbound.maps.tc_counters, "tc_counters")
    }

    /// [`xdp_counters`](Self::xdp_counters) with their names, for output.
    pub fn xdp_counter_list(&self) -> Result<Vec<(&'static str, u64)>, ProgramError> {
        Ok(XDP_COUNTER_NAMES
            .into_iter()
            .zip(self.xdp_counters()?)
            .collect())
    }

    /// [`tc_counters`](Self::tc_counters) with their names, for output.
    pub fn tc_counter_list(&self) -> Result<Vec<(&'static str, u64)>, ProgramError> {
        Ok(TC_COUNTER_NAMES
            .into_iter()
            .zip(self.tc_counters()?)
            .collect())
    }
}

pub(super) fn sum_per_cpu<const N: usize>(
    map: &MapMut<'static>,
    name: &'static str,
) -> Result<[u64; N], ProgramError> {
    let mut sums = [0u64; N];
    for (index, sum) in (0u32..).zip(sums.iter_mut()) {
        let per_cpu = map
            .lookup_percpu(&index.to_ne_bytes(), MapFlags::ANY)
            .map_err(|source| ProgramError::Map {
                map: name,
                action: format!("reading counter {index}"),
                source,
            })?
            .unwrap_or_default();
        *sum = per_cpu
            .iter()
            .filter_map(|value| value.get(..8)?.try_into().ok())
            .map(u64::from_ne_bytes)
            .sum();
    }
    Ok(sums)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_has_a_name() {
        for name in XDP_COUNTER_NAMES.iter().chain(&TC_COUNTER_NAMES) {
            assert!(!name.is_empty(), "a counter in xpf_abi.h has no name here");
        }
    }
}
