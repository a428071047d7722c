//! xpf: identity-based egress filtering for veth endpoints on one Linux host.
//!
//! The policy core (`labels`, `identity`, `ipcache`, `policy`) does no I/O:
//! parsed headers in, verdicts out. The `datapath` owns everything that talks
//! to the kernel.

pub mod datapath;
pub mod identity;
pub mod labels;
