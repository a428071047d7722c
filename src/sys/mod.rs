//! Calls into the operating system that are not the datapath's BPF and
//! AF_XDP work, one small module each: `ip` (iproute2, the one place it is
//! spawned), `nft` (nftables, likewise), `process` (every other child
//! process: started in a named network namespace or in the caller's, and
//! signalled), `sysctl` (/proc/sys), `ethtool` (SIOCETHTOOL). Callers turn
//! their errors into their own. (Still outside: the netns code in `netns`,
//! and AF_PACKET and eventfd use in the datapath and harness.)

pub mod ethtool;
pub mod ip;
pub mod nft;
pub mod process;
pub mod sysctl;
