//! Calls into the operating system that are not the datapath's BPF and
//! AF_XDP work, one small module each: `ip` (iproute2, the one place it is
//! spawned), `nft` (nftables, likewise), `process` (every other child
//! process: started in a named network namespace or in the caller's, and
//! signalled), `netns` (named network namespaces and setns), `sysctl`
//! (/proc/sys), `ethtool` (SIOCETHTOOL), `packet` (AF_PACKET raw sockets
//! on one interface), `eventfd` (wake-ups between threads), `napi`
//! (threaded NAPI and pinning its threads), `cputime` (CPU time from
//! /proc/stat, schedstat and getrusage), `clock` (CLOCK_MONOTONIC as BPF
//! reads it), `cpus` (a pass over every CPU). Callers turn their errors into
//! their own.

pub mod clock;
pub mod cpus;
pub mod cputime;
pub mod ethtool;
pub mod eventfd;
pub mod ip;
pub mod napi;
pub mod netns;
pub mod nft;
pub mod packet;
pub mod process;
pub mod sysctl;
