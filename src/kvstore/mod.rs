//! Cluster mode (issue 12, in progress): identities and the ipcache shared
//! through etcd in Cilium's kvstore layout.
//!
//! - [`layout`]: keys and values as Cilium writes them, without I/O;
//! - [`etcd`]: a blocking client for the control-plane thread;
//! - [`identities`]: cluster-wide identity allocation, Cilium's way.

pub mod etcd;
pub mod identities;
pub mod layout;
