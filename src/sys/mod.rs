//! Calls into the operating system that are not the datapath's BPF and
//! AF_XDP work. Started with `ip`: every place that ran iproute2 had its
//! own copy of spawning it and reading its errors. (Still outside: the
//! benchmark's `nft`, `nsenter` and `date`, and the sysctl, ethtool and
//! netns code of `endpoint` and `netns`.)

pub mod ip;
