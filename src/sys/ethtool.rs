//! ethtool ioctls (SIOCETHTOOL) on an interface of the calling thread's
//! network namespace: TX checksum offload, which xpf turns off on
//! endpoints' `eth0` so every frame reaches the filter with its checksums,
//! and GRO, which gives a veth NAPI so that XDP_REDIRECT into it delivers.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// IFNAMSIZ from linux/if.h: names are shorter, with their NUL.
const IFNAMSIZ: usize = 16;
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;
const ETHTOOL_GGRO: u32 = 0x2b;
const ETHTOOL_SGRO: u32 = 0x2c;

/// Whether TX checksum offload is on for `ifname`.
pub fn tx_checksum(ifname: &str) -> io::Result<bool> {
    value(ifname, ETHTOOL_GTXCSUM, 0).map(|v| v != 0)
}

/// Turns TX checksum offload on `ifname` on or off; returns whether it is
/// on afterwards (a driver may refuse without an error).
pub fn set_tx_checksum(ifname: &str, on: bool) -> io::Result<bool> {
    value(ifname, ETHTOOL_STXCSUM, u32::from(on))?;
    tx_checksum(ifname)
}

/// Whether generic receive offload is on for `ifname`.
pub fn gro(ifname: &str) -> io::Result<bool> {
    value(ifname, ETHTOOL_GGRO, 0).map(|v| v != 0)
}

/// Turns GRO on `ifname` on or off; returns whether it is on afterwards.
/// On a veth, GRO on enables NAPI on its receive queues: frames another
/// interface's XDP program redirects into its peer are then delivered
/// instead of dropped (veth_ndo_xdp_xmit needs the peer's NAPI).
pub fn set_gro(ifname: &str, on: bool) -> io::Result<bool> {
    value(ifname, ETHTOOL_SGRO, u32::from(on))?;
    gro(ifname)
}

/// `struct ethtool_value` from linux/ethtool.h.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// One SIOCETHTOOL call with a `struct ethtool_value` on `ifname` in the
/// calling thread's namespace; returns the `data` the kernel left.
fn value(ifname: &str, cmd: u32, data: u32) -> io::Result<u32> {
    let name = ifname.as_bytes();
    if name.is_empty() || name.len() >= IFNAMSIZ || name.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{ifname}` is not an interface name"),
        ));
    }
    // SAFETY: socket() takes no pointers; the result is checked below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor socket() just returned and nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut value = EthtoolValue { cmd, data };
    // SAFETY: `ifreq` is plain data (a name array and a union of plain
    // fields); all zeroes is a valid value: an empty name and null pointers.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in ifr.ifr_name.iter_mut().zip(name) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
    // SAFETY: `ifr` holds a NUL-terminated name (checked shorter than
    // IFNAMSIZ above, rest zeroed) and a pointer to `value`; for the
    // G/STXCSUM and G/SGRO commands the kernel reads and writes exactly one
    // `ethtool_value` there. Both outlive the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL as libc::Ioctl, &mut ifr) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value.data)
}
