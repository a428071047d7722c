//! The layout of an instance's pin folder (bpffs): the name each pinned
//! map and link has there, so that a later process finds them again.

use std::path::{Path, PathBuf};

/// Where map `name` is pinned in the pin folder `dir`.
pub fn map_pin_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("map_{name}"))
}

/// Where the XDP link of interface `ifname` is pinned in `dir`.
pub fn xdp_link_path(dir: &Path, ifname: &str) -> PathBuf {
    dir.join(format!("xdp_{ifname}"))
}

/// Where the tcx link of interface `ifname` is pinned in `dir`.
pub fn tc_link_path(dir: &Path, ifname: &str) -> PathBuf {
    dir.join(format!("tc_{ifname}"))
}
