//! xpf: identity-based egress filtering for veth endpoints on one Linux host.
//!
//! The policy core (`wire`, `labels`, `identity`, `ipcache`, `policy`,
//! `conntrack`, `fragments`, `filter`, `engine`, `world`) does no I/O:
//! parsed headers in, verdicts out. `config` turns a file into a
//! [`world::World`]; the `datapath` owns everything that talks to the
//! kernel, through `sys` for what is not BPF or AF_XDP.

pub mod classify;
pub mod cli;
pub mod config;
pub mod conntrack;
pub mod control;
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
pub mod kvstore;
pub mod labels;
pub mod policy;
pub mod rules;
pub mod sys;
pub mod wire;
pub mod world;
