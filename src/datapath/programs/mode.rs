//! Where an XDP program attaches ([`AttachMode`]): its name on the command
//! line and in output, and the `XDP_FLAGS_*` the kernel takes for it.

use std::fmt;
use std::str::FromStr;

use libbpf_rs::libbpf_sys;

/// Where an XDP program is attached: the driver's hook, the generic (skb)
/// hook, or the NIC itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttachMode {
    Native,
    Generic,
    Offload,
}

impl AttachMode {
    pub const ALL: [AttachMode; 3] = [AttachMode::Native, AttachMode::Generic, AttachMode::Offload];

    pub fn as_str(self) -> &'static str {
        match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
            AttachMode::Offload => "offload",
        }
    }

    pub(super) fn xdp_flags(self) -> u32 {
        match self {
            AttachMode::Native => libbpf_sys::XDP_FLAGS_DRV_MODE,
            AttachMode::Generic => libbpf_sys::XDP_FLAGS_SKB_MODE,
            AttachMode::Offload => libbpf_sys::XDP_FLAGS_HW_MODE,
        }
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An attach mode name that is not `native`, `generic` or `offload`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown XDP attach mode `{0}`: expected native, generic or offload")]
pub struct UnknownAttachMode(pub String);

impl FromStr for AttachMode {
    type Err = UnknownAttachMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| UnknownAttachMode(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_mode_round_trips_through_its_name() {
        for mode in AttachMode::ALL {
            assert_eq!(mode.to_string().parse::<AttachMode>(), Ok(mode));
        }
        let err = "skb".parse::<AttachMode>().unwrap_err();
        assert!(err.to_string().contains("`skb`"), "{err}");
    }
}
