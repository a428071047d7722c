//! Test traffic: what `xpf gen` puts in its frames and what `xpf sink`
//! makes of them, without any I/O.
//!
//! [`gen`] turns address and port ranges into a fixed set of flows and
//! writes complete, checksummed UDP frames for them; every frame carries a
//! [`PayloadHeader`] (sequence number, send time, flow). [`sink`] reads that
//! header back out of received frames and keeps the books: loss, reordering,
//! duplicates and one-way latency. Both sides run on one host, so the send
//! time (CLOCK_MONOTONIC) is comparable with the receive time.
//!
//! The sockets, the pacing and the command-line options live in
//! `cli::gen` and `cli::sink`; everything here is deterministic and tested
//! without root.

pub mod gen;
mod payload;
pub mod sink;

pub use gen::{AddrRange, FlowTuple, FrameFactory, GenSpec, PortRange, RangeError, SpecError};
pub use payload::{PayloadHeader, MAGIC, PAYLOAD_HEADER_LEN};
pub use sink::{generator_frame, payload_header, Accounting, LatencyUs, Summary};
