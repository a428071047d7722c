//! The per-packet policy step: frame bytes in, verdict code out. Parse the
//! headers, look the destination up in the ipcache, look the verdict up in
//! the sender's compiled egress table. No allocation, no locks: the caller
//! holds an ipcache view for a whole batch.

use crate::identity::{NumericIdentity, WORLD};
use crate::ipcache::IpCacheView;
use crate::policy::compile::EgressTable;
use crate::policy::model::proto;
use crate::wire::{self, FlowInfo, ParseError};

/// What the policy step decided about one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Classified {
    pub flow: FlowInfo,
    pub dst_identity: NumericIdentity,
    /// Verdict code of `table` (see [`crate::policy::compile`]).
    pub code: u32,
}

/// The port a rule matches against: the destination port, or the ICMP type.
#[inline]
pub fn policy_port(flow: &FlowInfo) -> u16 {
    match flow.proto {
        proto::ICMP | proto::ICMPV6 => flow.icmp_type as u16,
        _ => flow.dport,
    }
}

/// Classifies one frame sent by an endpoint whose egress table is `table`.
#[inline]
pub fn classify(
    frame: &[u8],
    table: &EgressTable,
    ipcache: &IpCacheView<'_>,
) -> Result<Classified, ParseError> {
    let flow = wire::parse(frame)?;
    let dst_identity = ipcache.lookup(flow.dst).unwrap_or(WORLD);
    let code = table.lookup_code(dst_identity, flow.proto, policy_port(&flow));
    Ok(Classified {
        flow,
        dst_identity,
        code,
    })
}
