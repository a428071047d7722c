//! xpf: identity-based egress filtering for veth endpoints on one Linux host.
//!
//! The policy core (`labels`, `identity`, `ipcache`, `policy`) does no I/O:
//! parsed headers in, verdicts out. The `datapath` owns everything that talks
//! to the kernel.

pub mod classify;
pub mod cli;
pub mod config;
pub mod conntrack;
pub mod datapath;
pub mod endpoint;
pub mod engine;
pub mod filter;
pub mod fragments;
pub mod harness;
pub mod hostile;
pub mod identity;
pub mod inventory;
pub mod ipcache;
pub mod labels;
pub mod policy;
pub mod rules;
pub mod sys;
pub mod wire;
