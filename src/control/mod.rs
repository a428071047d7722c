//! The control plane: what runs beside the datapath while `xpf run` is up,
//! to observe and steer it without ever making a worker wait.

pub mod metrics;
