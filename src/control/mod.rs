//! The control plane of `xpf run`: the API its clients talk to over a Unix
//! socket (`api`, `client`) and the metrics it exports (`metrics`). It
//! runs on its own threads and reaches the datapath only through the
//! control loop of `xpf run`, the one writer of the engine.

pub mod api;
pub mod client;
pub mod clock;
pub mod cluster;
mod enforced;
pub mod flows;
pub mod metrics;
pub mod plane;
