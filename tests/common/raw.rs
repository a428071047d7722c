//! Raw frames in and out of an endpoint namespace (AF_PACKET), for tests
//! that send what an endpoint crafting its own packets would, and look at
//! what reaches another endpoint.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use xpf::sys::netns;

/// Sends raw frames out of `eth0` inside `ns` (AF_PACKET), as an endpoint
/// that crafts its own packets would.
pub fn send_raw(ns: &str, frames: &[Vec<u8>]) {
    netns::run_in(ns, || {
        // SAFETY: plain socket call; the fd is owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `fd` is fresh and owned from here on.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let ifindex = unsafe { libc::if_nametoindex(c"eth0".as_ptr()) };
        assert!(ifindex > 0);
        for f in frames {
            // SAFETY: a zeroed sockaddr_ll is valid; fields set below.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = ifindex as i32;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&f[0..6]);
            // SAFETY: buffer and address are live for the call.
            let n = unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    f.as_ptr().cast(),
                    f.len(),
                    0,
                    (&addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(
                n,
                f.len() as isize,
                "sendto: {}",
                std::io::Error::last_os_error()
            );
        }
    })
    .unwrap();
}

pub fn capture_while(ns: &str, wait: Duration, send: impl FnOnce()) -> Vec<Vec<u8>> {
    // SAFETY: plain socket call; the fd is owned below.
    let fd = netns::run_in(ns, || unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW,
            (libc::ETH_P_ALL as u16).to_be() as i32,
        )
    })
    .unwrap();
    assert!(
        fd >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `fd` is fresh and owned from here on.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: `tv` is live and sized for SO_RCVTIMEO.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as u32,
        )
    };
    send();
    let deadline = std::time::Instant::now() + wait;
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while std::time::Instant::now() < deadline {
        // SAFETY: reads at most `buf.len()` bytes into the live buffer.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n > 0 {
            got.push(buf[..n as usize].to_vec());
        }
    }
    got
}
