//! Which AF_XDP socket takes an interface's frames: `if_slots` gives each
//! interface its base slot (one slot per receive queue from there on) and
//! the XSKMAP `xsks` holds the socket bound in each slot.

use std::os::fd::RawFd;

use libbpf_rs::{ErrorKind, MapCore, MapFlags};

use super::{ProgramError, Programs};
use crate::datapath::bpf::xsk_redirect;

/// Slots in the XSKMAP (`XPF_MAX_XSK_SLOTS`).
pub const MAX_XSK_SLOTS: u32 = xsk_redirect::types::xpf_abi_limit::XPF_LIMIT_XSK_SLOTS.0;
/// Interfaces `if_slots` can hold (`XPF_MAX_INTERFACES`).
pub const MAX_INTERFACES: u32 = xsk_redirect::types::xpf_abi_limit::XPF_LIMIT_INTERFACES.0;

impl Programs {
    /// Gives interface `ifindex` the XSK slots `base..` (one per receive
    /// queue). Frames from an interface without slots are treated as having
    /// no socket.
    pub fn set_interface_slots(&self, ifindex: u32, base: u32) -> Result<(), ProgramError> {
        if base >= MAX_XSK_SLOTS {
            return Err(ProgramError::SlotOutOfRange { slot: base });
        }
        self.xdp
            .maps
            .if_slots
            .update(&ifindex.to_ne_bytes(), &base.to_ne_bytes(), MapFlags::ANY)
            .map_err(|source| ProgramError::Map {
                map: "if_slots",
                action: format!("setting ifindex {ifindex} to base slot {base}"),
                source,
            })
    }

    /// Forgets interface `ifindex`'s slots; forgetting an unknown interface
    /// is not an error.
    pub fn remove_interface(&self, ifindex: u32) -> Result<(), ProgramError> {
        match self.xdp.maps.if_slots.delete(&ifindex.to_ne_bytes()) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(ProgramError::Map {
                map: "if_slots",
                action: format!("removing ifindex {ifindex}"),
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// Puts the AF_XDP socket `xsk_fd` into slot `slot`. The kernel drops
    /// the entry by itself when the socket closes.
    pub fn register_xsk(&self, slot: u32, xsk_fd: RawFd) -> Result<(), ProgramError> {
        if slot >= MAX_XSK_SLOTS {
            return Err(ProgramError::SlotOutOfRange { slot });
        }
        self.xdp
            .maps
            .xsks
            .update(&slot.to_ne_bytes(), &xsk_fd.to_ne_bytes(), MapFlags::ANY)
            .map_err(|source| ProgramError::Map {
                map: "xsks",
                action: format!("registering socket fd {xsk_fd} in slot {slot}"),
                source,
            })
    }
}
