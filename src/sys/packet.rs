//! AF_PACKET raw sockets on one interface of the calling thread's network
//! namespace: a receiver that sees every frame the interface carries (the
//! sink, tests capturing what reached an endpoint) and a sender that puts
//! complete Ethernet frames on the wire as they are (tests crafting what an
//! endpoint would). Reads come in `recvmmsg` batches ([`RecvBatch`]).
//!
//! A socket stays in the namespace it was opened in, whichever thread uses
//! it afterwards. Callers turn [`PacketError`] into their own errors.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Bytes kept of each frame received; longer ones are cut. More than an
/// AF_XDP frame holds, so the generator's frames never are.
pub const FRAME_BUF: usize = 4096;
/// Not in the libc crate yet (linux/if_packet.h, Linux 4.20).
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

/// Why a packet socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    /// The name cannot be an interface's (it holds a NUL).
    #[error("`{0}` is not an interface name")]
    Name(String),
    #[error("{0}: no such device in this network namespace")]
    NoDevice(String),
    /// socket(2) refused (EPERM without CAP_NET_RAW).
    #[error("cannot open a packet socket: {0}")]
    Open(#[source] io::Error),
    #[error("cannot bind a packet socket to {ifname}: {source}")]
    Bind {
        ifname: String,
        #[source]
        source: io::Error,
    },
}

/// What a receiver sets up before it binds.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReceiveOptions {
    /// Receive buffer bytes asked for; root may exceed `rmem_max`.
    pub receive_buffer: Option<libc::c_int>,
    /// Leave out this host's own transmissions (PACKET_IGNORE_OUTGOING).
    pub ignore_outgoing: bool,
}

/// An AF_PACKET raw socket tied to one interface.
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: u32,
    /// PACKET_STATISTICS resets on read: the drops read so far.
    drops: u64,
}

impl PacketSocket {
    /// A non-blocking socket bound to `ifname`, receiving every protocol,
    /// with `options` applied before the bind. It is opened with protocol
    /// 0, which receives nothing until bind() names the device, so no frame
    /// of another device slips in before.
    pub fn receiver(ifname: &str, options: ReceiveOptions) -> Result<Self, PacketError> {
        let ifindex = ifindex(ifname)?;
        let me = Self::open(ifindex, libc::SOCK_NONBLOCK)?;
        if let Some(bytes) = options.receive_buffer {
            // Best effort: the default buffer still receives.
            let _ = me.set_receive_buffer(bytes);
        }
        if options.ignore_outgoing {
            // Older kernels lack it; [`RecvBatch::incoming`] skips this
            // host's transmissions by type as well.
            let _ = setsockopt_int(me.fd(), libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, 1);
        }
        // SAFETY: sockaddr_ll is plain integers; all-zero is valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: `sll` is a live sockaddr_ll of the length given.
        let rc = unsafe {
            libc::bind(
                me.fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(PacketError::Bind {
                ifname: ifname.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(me)
    }

    /// A blocking socket that sends on `ifname` and receives nothing
    /// (protocol 0, never bound).
    pub fn sender(ifname: &str) -> Result<Self, PacketError> {
        Self::open(ifindex(ifname)?, 0)
    }

    fn open(ifindex: u32, flags: libc::c_int) -> Result<Self, PacketError> {
        // SAFETY: plain socket(2) call; the result is checked below.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | flags,
                0,
            )
        };
        if fd < 0 {
            return Err(PacketError::Open(io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self {
            fd,
            ifindex,
            drops: 0,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Asks for a receive buffer of `bytes`: beyond `rmem_max` where the
    /// caller may (SO_RCVBUFFORCE, root), else as much as `rmem_max` allows.
    fn set_receive_buffer(&self, bytes: libc::c_int) -> io::Result<()> {
        setsockopt_int(self.fd(), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, bytes)
            .or_else(|_| setsockopt_int(self.fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, bytes))
    }

    /// Sends one complete Ethernet frame (without FCS) out of the
    /// interface, addressed to the frame's own destination MAC.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        if frame.len() < 14 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "shorter than an Ethernet header",
            ));
        }
        // SAFETY: a zeroed sockaddr_ll is valid; fields set below.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = self.ifindex as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[0..6]);
        // SAFETY: buffer and address are live for the call, of the
        // lengths given.
        let n = unsafe {
            libc::sendto(
                self.fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n as usize != frame.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("sent {n} of {} bytes", frame.len()),
            ));
        }
        Ok(())
    }

    /// Frames the kernel dropped for want of buffer space, since the
    /// socket was opened.
    pub fn drops(&mut self) -> u64 {
        let mut st = libc::tpacket_stats {
            tp_packets: 0,
            tp_drops: 0,
        };
        let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: `st` and `len` are live and sized for PACKET_STATISTICS.
        let rc = unsafe {
            libc::getsockopt(
                self.fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut st as *mut libc::tpacket_stats).cast(),
                &mut len,
            )
        };
        if rc == 0 {
            self.drops += u64::from(st.tp_drops);
        }
        self.drops
    }
}

/// `ifname`'s index in the calling thread's namespace.
fn ifindex(ifname: &str) -> Result<u32, PacketError> {
    let name = std::ffi::CString::new(ifname).map_err(|_| PacketError::Name(ifname.to_string()))?;
    // SAFETY: `name` is a live NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(PacketError::NoDevice(ifname.to_string()));
    }
    Ok(ifindex)
}

fn setsockopt_int(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a live c_int of the length given.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Buffers for one `recvmmsg`. The headers point into the boxed buffers,
/// whose heap storage never moves while the batch lives.
pub struct RecvBatch {
    bufs: Box<[[u8; FRAME_BUF]]>,
    addrs: Box<[libc::sockaddr_ll]>,
    /// Only read through `hdrs`.
    _iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
}

impl RecvBatch {
    /// Room for `frames` frames per read.
    pub fn new(frames: usize) -> Self {
        let mut bufs = vec![[0u8; FRAME_BUF]; frames].into_boxed_slice();
        // SAFETY: sockaddr_ll is plain integers; all-zero is valid.
        let mut addrs: Box<[libc::sockaddr_ll]> =
            vec![unsafe { std::mem::zeroed() }; frames].into_boxed_slice();
        let mut iovs: Box<[libc::iovec]> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: FRAME_BUF,
            })
            .collect();
        let hdrs = iovs
            .iter_mut()
            .zip(addrs.iter_mut())
            .map(|(iov, addr)| {
                // SAFETY: integers and pointers; all-zero is a valid empty header.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_iov = iov;
                h.msg_hdr.msg_iovlen = 1;
                h.msg_hdr.msg_name = (addr as *mut libc::sockaddr_ll).cast();
                h
            })
            .collect();
        Self {
            bufs,
            addrs,
            _iovs: iovs,
            hdrs,
        }
    }

    /// Frames one read takes at most.
    pub fn capacity(&self) -> usize {
        self.hdrs.len()
    }

    /// Reads up to a batch without blocking; 0 when none is waiting.
    pub fn receive(&mut self, socket: &PacketSocket) -> io::Result<usize> {
        for h in self.hdrs.iter_mut() {
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            h.msg_len = 0;
        }
        // SAFETY: every header points at a live iovec, buffer and address
        // of the sizes given; they outlive the call.
        let n = unsafe {
            libc::recvmmsg(
                socket.fd(),
                self.hdrs.as_mut_ptr(),
                self.hdrs.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(0),
                _ => Err(e),
            };
        }
        Ok(n as usize)
    }

    /// The first `n` frames received, skipping any this host sent.
    pub fn incoming(&self, n: usize) -> impl Iterator<Item = &[u8]> {
        (0..n)
            .filter(|&i| self.addrs[i].sll_pkttype != libc::PACKET_OUTGOING)
            .map(|i| self.frame(i))
    }

    /// The first `n` frames received, this host's own transmissions too.
    pub fn all(&self, n: usize) -> impl Iterator<Item = &[u8]> {
        (0..n).map(|i| self.frame(i))
    }

    fn frame(&self, i: usize) -> &[u8] {
        &self.bufs[i][..(self.hdrs[i].msg_len as usize).min(FRAME_BUF)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_no_interface_can_have_are_refused_before_any_socket() {
        assert!(matches!(
            PacketSocket::receiver("bad\0name", ReceiveOptions::default()),
            Err(PacketError::Name(_))
        ));
        assert!(matches!(
            PacketSocket::sender("xpf-no-such"),
            Err(PacketError::NoDevice(_))
        ));
    }
}
