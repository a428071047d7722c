//! Cluster mode (issue 12, in progress): identities and the ipcache shared
//! through etcd in Cilium's kvstore layout. So far only the layout itself
//! ([`layout`]): keys and values as Cilium writes them, without I/O.

pub mod layout;
