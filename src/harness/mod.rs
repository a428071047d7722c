//! Harness code: what measures and demonstrates xpf rather than being it.
//! The benchmarks behind `xpf bench` (`bench`: the datapath packet-rate one
//! and the classify one), the generator and sink's frame logic (`traffic`),
//! benchmark reports and plots (`report`), synthetic worlds for the
//! benchmarks (`synth`), TCP and UDP echo probes across namespaces (`probe`)
//! and the stand-in host and world namespaces of the demo, the tests and
//! the benchmark (`testbed`).
//!
//! Dependencies point one way: the CLI and the tests use the harness, the
//! harness uses the core; nothing in the core (wire, labels, identity,
//! ipcache, policy, conntrack, fragments, filter, engine) imports it.

pub mod bench;
pub mod probe;
pub mod report;
pub mod synth;
pub mod testbed;
pub mod traffic;
