//! Real TCP and UDP exchanges between network namespaces, for `xpf demo`
//! and the end-to-end tests: an echo server on a thread inside one
//! namespace, a client on a thread inside another, and the answer to "did a
//! round trip of data complete".
//!
//! Timeouts here bound how long a denied exchange is waited for; nothing
//! measures or asserts speed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::sys::netns;

/// Transport of a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// An echo server on a thread inside a namespace; stops when dropped.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    pub addr: SocketAddr,
}

const POLL: Duration = Duration::from_millis(50);

impl EchoServer {
    /// Binds `addr` inside `ns` (`None`: the caller's namespace) and
    /// echoes whatever arrives until dropped.
    pub fn start(
        ns: Option<&str>,
        transport: Transport,
        addr: SocketAddr,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = crossbeam_channel::bounded(1);
        let ns = ns.map(str::to_string);
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            if let Some(ns) = &ns {
                if let Err(e) = netns::enter(ns) {
                    let _ = tx.send(Err(std::io::Error::other(e.to_string())));
                    return;
                }
            }
            match transport {
                Transport::Tcp => match TcpListener::bind(addr) {
                    Ok(l) => {
                        let _ = tx.send(Ok(()));
                        serve_tcp(l, &flag);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                },
                Transport::Udp => match UdpSocket::bind(addr) {
                    Ok(s) => {
                        let _ = tx.send(Ok(()));
                        serve_udp(s, &flag);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                },
            }
        });
        let bound = rx
            .recv()
            .unwrap_or_else(|_| Err(std::io::Error::other("echo server thread died")));
        let mut me = Self {
            stop,
            handle: Some(handle),
            addr,
        };
        match bound {
            Ok(()) => Ok(me),
            Err(e) => {
                me.stop();
                Err(std::io::Error::new(
                    e.kind(),
                    format!("binding {addr}: {e}"),
                ))
            }
        }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve_tcp(l: TcpListener, stop: &AtomicBool) {
    let _ = l.set_nonblocking(true);
    while !stop.load(Ordering::Relaxed) {
        match l.accept() {
            Ok((mut s, _)) => {
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 512];
                if let Ok(n) = s.read(&mut buf) {
                    let _ = s.write_all(&buf[..n]);
                }
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

fn serve_udp(s: UdpSocket, stop: &AtomicBool) {
    let _ = s.set_read_timeout(Some(POLL));
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    }
}

/// Sends a few bytes to `dst` from inside `ns` (`None`: here) and waits up
/// to `timeout` for them to come back. `true` when the round trip completed.
pub fn round_trip(
    ns: Option<&str>,
    transport: Transport,
    dst: SocketAddr,
    timeout: Duration,
) -> bool {
    let ns = ns.map(str::to_string);
    std::thread::scope(|s| {
        s.spawn(|| {
            if let Some(ns) = &ns {
                if netns::enter(ns).is_err() {
                    return false;
                }
            }
            let msg = b"xpf probe";
            match transport {
                Transport::Tcp => tcp_round_trip(dst, msg, timeout).unwrap_or(false),
                Transport::Udp => udp_round_trip(dst, msg, timeout).unwrap_or(false),
            }
        })
        .join()
        .unwrap_or(false)
    })
}

fn tcp_round_trip(dst: SocketAddr, msg: &[u8], timeout: Duration) -> std::io::Result<bool> {
    let mut s = TcpStream::connect_timeout(&dst, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(msg)?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf)?;
    Ok(&buf[..n] == msg)
}

fn udp_round_trip(dst: SocketAddr, msg: &[u8], timeout: Duration) -> std::io::Result<bool> {
    let bind: SocketAddr = if dst.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let s = UdpSocket::bind(bind)?;
    s.connect(dst)?;
    // UDP promises nothing: resend every so often, as a resolver would. A
    // dropped flow stays dropped however often it is tried.
    let resend = Duration::from_millis(500).min(timeout);
    s.set_read_timeout(Some(resend))?;
    let deadline = std::time::Instant::now() + timeout;
    let mut buf = [0u8; 64];
    while std::time::Instant::now() < deadline {
        s.send(msg)?;
        match s.recv(&mut buf) {
            Ok(n) => return Ok(&buf[..n] == msg),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// A TCP connection opened from inside `ns`, waiting up to `timeout`.
pub fn connect_in(ns: &str, addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    netns::run_in(ns, || TcpStream::connect_timeout(&addr, timeout))
        .map_err(|e| std::io::Error::other(e.to_string()))?
}

/// Whether `msg` comes back on `s` within `wait` (a [`HoldingEcho`] on the
/// other end). A dropped segment never does within the wait; a
/// retransmission after an allow would, so a "no" holds only while the
/// deny does.
pub fn echoes(s: &mut TcpStream, msg: &[u8], wait: Duration) -> bool {
    if s.set_read_timeout(Some(wait)).is_err() || s.write_all(msg).is_err() {
        return false;
    }
    let mut buf = vec![0u8; msg.len()];
    s.read_exact(&mut buf).is_ok() && buf == msg
}

/// A TCP echo server in a namespace that keeps each connection open and
/// echoes until the client closes it; stops (and joins its threads) when
/// dropped.
pub struct HoldingEcho {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl HoldingEcho {
    /// Binds `addr` inside `ns` and echoes on every connection until its
    /// client closes it.
    pub fn start(ns: &str, addr: SocketAddr) -> std::io::Result<Self> {
        // A socket stays in the namespace it was made in, whichever thread
        // serves it.
        let listener = netns::run_in(ns, || TcpListener::bind(addr))
            .map_err(|e| std::io::Error::other(e.to_string()))?
            .map_err(|e| std::io::Error::new(e.kind(), format!("binding {addr} in {ns}: {e}")))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let flag = &*flag;
            std::thread::scope(|s| {
                while !flag.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            s.spawn(move || echo_until_closed(conn, flag));
                        }
                        Err(_) => std::thread::sleep(POLL),
                    }
                }
            });
        });
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for HoldingEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn echo_until_closed(mut conn: TcpStream, stop: &AtomicBool) {
    if conn.set_nonblocking(false).is_err() || conn.set_read_timeout(Some(POLL)).is_err() {
        return;
    }
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}
