//! [`ProgramError`]: every way loading, attaching or configuring the
//! programs fails, naming the program, interface, map or pin involved.

use std::io;
use std::path::PathBuf;

use super::{AttachMode, MAX_XSK_SLOTS};

/// Why loading, attaching or configuring a program failed.
#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    #[error("BPF program `{program}`: opening the object: {source}")]
    Open {
        program: &'static str,
        source: libbpf_rs::Error,
    },
    #[error("BPF program `{program}`: the object has no mmapped .rodata to configure")]
    NoRodata { program: &'static str },
    #[error("BPF program `{program}`: loading into the kernel: {source}")]
    Load {
        program: &'static str,
        source: libbpf_rs::Error,
    },
    #[error("interface {ifname}: XDP {mode} mode is not supported by its driver ({source})")]
    XdpModeUnsupported {
        ifname: String,
        mode: AttachMode,
        source: io::Error,
    },
    #[error("interface {ifname} already has an XDP program attached ({source})")]
    XdpAlreadyAttached { ifname: String, source: io::Error },
    #[error("interface {ifname}: attaching XDP in {mode} mode: {source}")]
    XdpAttach {
        ifname: String,
        mode: AttachMode,
        source: io::Error,
    },
    #[error("interface {ifname}: attaching the inbound program at tcx egress: {source}")]
    TcxAttach { ifname: String, source: io::Error },
    #[error("interface {ifname}: pinned link {path}: {action}: {source}")]
    Pin {
        ifname: String,
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
    #[error("XSK slot {slot} is out of range: the map has {MAX_XSK_SLOTS} slots")]
    SlotOutOfRange { slot: u32 },
    #[error("BPF map `{map}`: pinning at {path}: {source}")]
    MapPin {
        map: &'static str,
        path: PathBuf,
        source: libbpf_rs::Error,
    },
    #[error("BPF map `{map}`: {action}: {source}")]
    Map {
        map: &'static str,
        action: String,
        source: libbpf_rs::Error,
    },
}
