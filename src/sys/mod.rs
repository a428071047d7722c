//! Calls into the operating system that are not the datapath's BPF and
//! AF_XDP work, one small module each: `ip` (iproute2, the one place it is
//! spawned), `sysctl` (/proc/sys), `ethtool` (SIOCETHTOOL), `packet`
//! (AF_PACKET raw sockets on one interface). Callers turn their errors into
//! their own. (Still outside: the benchmark's `nft`, `nsenter` and `date`,
//! the netns code in `netns`, and eventfd use in the datapath.)

pub mod ethtool;
pub mod ip;
pub mod packet;
pub mod sysctl;
