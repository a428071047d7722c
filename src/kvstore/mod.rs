//! Cluster mode: identities and the ipcache shared
//! through etcd in Cilium's kvstore layout.
//!
//! - [`agent`]: the thread of `xpf run` that publishes this host and
//!   follows the others;
//! - [`layout`]: keys and values as Cilium writes them, without I/O;
//! - [`etcd`]: a blocking client for the control-plane thread;
//! - [`identities`]: cluster-wide identity allocation, Cilium's way;
//! - [`gc`]: collecting the master keys of identities no node uses, in two
//!   rounds and under the allocation lock, Cilium's way;
//! - [`follow`]: a prefix kept by list, watch and relist, as Cilium does;
//! - [`node`]: this host publishing its endpoints, and the cluster as it
//!   sees it (the other hosts' entries as labelled prefixes);
//! - [`settings`]: the config's `kvstore:` section;
//! - [`dump`]: what the store holds in Cilium's layout, read for people.

pub mod agent;
pub mod dump;
pub mod etcd;
pub mod follow;
pub mod gc;
pub mod identities;
pub mod layout;
pub mod node;
pub mod settings;
