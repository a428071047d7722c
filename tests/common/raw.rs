//! Raw frames in and out of an endpoint namespace (AF_PACKET, through
//! `xpf::sys::packet`), for tests that send what an endpoint crafting its
//! own packets would, and look at what reaches another endpoint.

use std::time::{Duration, Instant};

use xpf::sys::netns;
use xpf::sys::packet::{PacketSocket, ReceiveOptions, RecvBatch};

/// Sends raw frames out of `eth0` inside `ns` (AF_PACKET), as an endpoint
/// that crafts its own packets would.
pub fn send_raw(ns: &str, frames: &[Vec<u8>]) {
    netns::run_in(ns, || {
        let socket = PacketSocket::sender("eth0").expect("AF_PACKET socket on eth0");
        for f in frames {
            socket.send(f).expect("sendto");
        }
    })
    .unwrap();
}

/// Every frame `eth0` inside `ns` carries, both ways, while `send` runs and
/// for `wait` after it returns.
pub fn capture_while(ns: &str, wait: Duration, send: impl FnOnce()) -> Vec<Vec<u8>> {
    let socket = netns::run_in(ns, || {
        PacketSocket::receiver("eth0", ReceiveOptions::default())
    })
    .unwrap()
    .expect("AF_PACKET socket on eth0");
    send();
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    let mut batch = RecvBatch::new(64);
    while Instant::now() < deadline {
        let n = batch.receive(&socket).expect("recvmmsg");
        if n == 0 {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        got.extend(batch.all(n).map(<[u8]>::to_vec));
    }
    got
}
