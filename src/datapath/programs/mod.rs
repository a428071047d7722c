//! The BPF programs xpf runs, loaded once and attached per interface.
//!
//! [`Programs::load`] is the one place where the open → configure rodata →
//! load sequence happens, for both skeletons: the XDP redirect
//! (`bpf/xsk_redirect.bpf.c`) and the inbound flow reporter
//! (`bpf/inbound.bpf.c`). Attaching returns an owned value
//! ([`XdpAttachment`], [`TcAttachment`]) holding a BPF link (see
//! [`super::links`]): dropping it detaches the program, unless it was
//! pinned and kept.
//!
//! With a pin folder ([`Programs::load_pinned`]) every named map is pinned
//! there by name, and a later load reuses the pinned maps instead of making
//! new ones: socket slots, counters, the inbound flow ring and its rate
//! limiter carry over from one process to the next, and a program swapped
//! into a pinned link ([`Programs::take_over_xdp`]) finds the same state.
//!
//! libbpf-rs skeletons borrow the `MaybeUninit<OpenObject>` they were opened
//! into. [`LoadedSkel`] owns that storage on the heap next to the skeleton,
//! hands the skeleton a `'static` borrow of it, and frees it only after the
//! skeleton is gone. Invariant: the `'static` borrows inside a skeleton never
//! leave this module (callers get `&self`-bounded access through methods).

use std::ffi::c_int;
use std::fmt;
use std::io;
use std::mem::{ManuallyDrop, MaybeUninit};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use libbpf_rs::libbpf_sys;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{ErrorKind, MapCore, MapFlags, MapMut, OpenObject};
use libbpf_rs::{RingBuffer, RingBufferBuilder};

use super::bpf::inbound::{self, InboundSkel, InboundSkelBuilder, OpenInboundSkel};
use super::bpf::xdp_drop::{XdpDropSkel, XdpDropSkelBuilder};
use super::bpf::xsk_redirect::{
    self, OpenXskRedirectSkel, XskRedirectSkel, XskRedirectSkelBuilder,
};
use super::links::LinkFd;

/// `enum xpf_xdp_counter` from the ABI header: indexes [`Programs::xdp_counters`].
pub type XdpCounter = xsk_redirect::types::xpf_xdp_counter;
/// `enum xpf_tc_counter` from the ABI header: indexes [`Programs::tc_counters`].
pub type TcCounter = inbound::types::xpf_tc_counter;

/// Number of XDP counters (`XPF_XDP_COUNTER_MAX`).
pub const XDP_COUNTERS: usize = XdpCounter::XPF_XDP_COUNTER_MAX.0 as usize;
/// Number of inbound TC counters (`XPF_TC_COUNTER_MAX`).
pub const TC_COUNTERS: usize = TcCounter::XPF_TC_COUNTER_MAX.0 as usize;

/// Names of the XDP counters for output, indexed like [`Programs::xdp_counters`].
/// A counter added to the C enum without a name here fails a unit test.
pub const XDP_COUNTER_NAMES: [&str; XDP_COUNTERS] = {
    let mut names = [""; XDP_COUNTERS];
    names[XdpCounter::XPF_XDP_REDIRECTED.0 as usize] = "redirected";
    names[XdpCounter::XPF_XDP_NO_SOCKET.0 as usize] = "no_socket";
    names[XdpCounter::XPF_XDP_PASSED_NEIGH.0 as usize] = "passed_neighbour";
    names[XdpCounter::XPF_XDP_FAIL_OPEN.0 as usize] = "fail_open";
    names
};

/// Names of the inbound TC counters, indexed like [`Programs::tc_counters`].
pub const TC_COUNTER_NAMES: [&str; TC_COUNTERS] = {
    let mut names = [""; TC_COUNTERS];
    names[TcCounter::XPF_TC_REPORTED.0 as usize] = "reported";
    names[TcCounter::XPF_TC_RING_FULL.0 as usize] = "ring_full";
    names[TcCounter::XPF_TC_SKIPPED_DUPLICATE.0 as usize] = "skipped_duplicate";
    names
};
/// Slots in the XSKMAP (`XPF_MAX_XSK_SLOTS`).
pub const MAX_XSK_SLOTS: u32 = xsk_redirect::types::xpf_abi_limit::XPF_LIMIT_XSK_SLOTS.0;
/// Interfaces `if_slots` can hold (`XPF_MAX_INTERFACES`).
pub const MAX_INTERFACES: u32 = xsk_redirect::types::xpf_abi_limit::XPF_LIMIT_INTERFACES.0;

/// How long the inbound program stays quiet about a connectionless flow it
/// has just reported, unless configured otherwise.
pub const DEFAULT_INBOUND_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// At most this many ring samples are decoded per [`InboundReports::drain`],
/// so a burst never stalls one worker's batch for long.
pub const INBOUND_DRAIN_MAX: usize = 512;

type RawFlowEvent = inbound::types::xpf_flow_event;
const RAW_FLOW_EVENT_SIZE: usize = size_of::<RawFlowEvent>();
// The byte copy in `FlowEvent::decode` relies on the generated type having
// exactly the C layout's fields and no padding: 16 + 16 + 4 + 2 + 2 + 4 × 1.
const _: () = assert!(RAW_FLOW_EVENT_SIZE == 44);

/// Where an XDP program is attached: the driver's hook, the generic (skb)
/// hook, or the NIC itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttachMode {
    Native,
    Generic,
    Offload,
}

impl AttachMode {
    fn xdp_flags(self) -> u32 {
        match self {
            AttachMode::Native => libbpf_sys::XDP_FLAGS_DRV_MODE,
            AttachMode::Generic => libbpf_sys::XDP_FLAGS_SKB_MODE,
            AttachMode::Offload => libbpf_sys::XDP_FLAGS_HW_MODE,
        }
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
            AttachMode::Offload => "offload",
        })
    }
}

/// An attach mode name that is not `native`, `generic` or `offload`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown XDP attach mode `{0}`: expected native, generic or offload")]
pub struct UnknownAttachMode(pub String);

impl FromStr for AttachMode {
    type Err = UnknownAttachMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "native" => Ok(AttachMode::Native),
            "generic" => Ok(AttachMode::Generic),
            "offload" => Ok(AttachMode::Offload),
            other => Err(UnknownAttachMode(other.to_string())),
        }
    }
}

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

/// Load-time settings baked into the programs' rodata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgramConfig {
    /// Pass frames without an AF_XDP socket to the kernel instead of
    /// dropping them.
    pub fail_open: bool,
    /// How long a connectionless inbound flow stays unreported after a
    /// report. Zero reports every packet.
    pub inbound_report_interval: Duration,
}

impl Default for ProgramConfig {
    fn default() -> Self {
        Self {
            fail_open: false,
            inbound_report_interval: DEFAULT_INBOUND_REPORT_INTERVAL,
        }
    }
}

/// A loaded skeleton together with the heap storage it borrows.
struct LoadedSkel<S> {
    skel: ManuallyDrop<S>,
    /// Allocated by `Box` in `open_load`; the skeleton holds a `'static`
    /// borrow of it, so it is freed only in `Drop`, after the skeleton.
    storage: NonNull<MaybeUninit<OpenObject>>,
}

impl<S> LoadedSkel<S> {
    /// Opens the skeleton `builder` makes, lets `configure` set its rodata,
    /// and loads it.
    fn open_load<B, O>(
        program: &'static str,
        builder: B,
        configure: impl FnOnce(&mut O) -> Result<(), ProgramError>,
    ) -> Result<Self, ProgramError>
    where
        B: SkelBuilder<'static, Output = O>,
        O: OpenSkel<'static, Output = S>,
    {
        let storage = NonNull::from(Box::leak(Box::new(MaybeUninit::<OpenObject>::uninit())));
        // SAFETY: `storage` is a fresh allocation nobody else references; the
        // skeleton made from this borrow is dropped before it is freed (in
        // `Drop`, or below when opening or loading fails).
        let object: &'static mut MaybeUninit<OpenObject> = unsafe { &mut *storage.as_ptr() };
        let loaded = builder
            .open(object)
            .map_err(|source| ProgramError::Open { program, source })
            .and_then(|mut open| {
                configure(&mut open)?;
                open.load()
                    .map_err(|source| ProgramError::Load { program, source })
            });
        match loaded {
            Ok(skel) => Ok(Self {
                skel: ManuallyDrop::new(skel),
                storage,
            }),
            Err(e) => {
                // SAFETY: the open or half-loaded skeleton was dropped inside
                // the chain above, closing the object it had written there;
                // no borrow of `storage` is left.
                drop(unsafe { Box::from_raw(storage.as_ptr()) });
                Err(e)
            }
        }
    }
}

impl<S> std::ops::Deref for LoadedSkel<S> {
    type Target = S;

    fn deref(&self) -> &S {
        &self.skel
    }
}

impl<S> Drop for LoadedSkel<S> {
    fn drop(&mut self) {
        // SAFETY: `skel` is dropped exactly once, here; it closes the object
        // living in `storage` before that memory is freed on the next line.
        unsafe { ManuallyDrop::drop(&mut self.skel) };
        // SAFETY: `storage` came from `Box::leak` in `open_load` and its only
        // borrower, the skeleton, is gone.
        drop(unsafe { Box::from_raw(self.storage.as_ptr()) });
    }
}

// SAFETY: `storage` is only touched in `Drop`, after the skeleton is gone;
// everything else reachable is the skeleton, whose own Send/Sync decide.
unsafe impl<S: Send> Send for LoadedSkel<S> {}
// SAFETY: as above; `&LoadedSkel` gives access to nothing but `&S`.
unsafe impl<S: Sync> Sync for LoadedSkel<S> {}

/// Both programs, loaded once, shared by every interface and worker
/// (`Send + Sync`; put it in an `Arc`).
pub struct Programs {
    // Field order is drop order: the ring buffer reader goes before the
    // skeleton whose map it reads.
    inbound_reports: InboundReports,
    xdp: LoadedSkel<XskRedirectSkel<'static>>,
    inbound: LoadedSkel<InboundSkel<'static>>,
}

impl fmt::Debug for Programs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Programs").finish_non_exhaustive()
    }
}

impl Programs {
    /// Loads both programs with the default inbound report interval.
    pub fn load(fail_open: bool) -> Result<Self, ProgramError> {
        Self::load_with(
            ProgramConfig {
                fail_open,
                ..ProgramConfig::default()
            },
            None,
        )
    }

    /// Loads both programs with their maps pinned in `pins` (bpffs): maps
    /// already pinned there are reused, missing ones are made and pinned.
    pub fn load_pinned(fail_open: bool, pins: &Path) -> Result<Self, ProgramError> {
        Self::load_with(
            ProgramConfig {
                fail_open,
                ..ProgramConfig::default()
            },
            Some(pins),
        )
    }

    /// Opens, configures and loads both programs, with their named maps
    /// pinned in `pins` when given.
    pub fn load_with(config: ProgramConfig, pins: Option<&Path>) -> Result<Self, ProgramError> {
        let pin = |map: &mut libbpf_rs::OpenMapMut<'static>,
                   name: &'static str|
         -> Result<(), ProgramError> {
            let Some(dir) = pins else { return Ok(()) };
            let path = map_pin_path(dir, name);
            map.set_pin_path(&path)
                .map_err(|source| ProgramError::MapPin {
                    map: name,
                    path,
                    source,
                })
        };
        let xdp = LoadedSkel::open_load(
            "xsk_redirect",
            XskRedirectSkelBuilder::default(),
            |open: &mut OpenXskRedirectSkel<'static>| {
                pin(&mut open.maps.xsks, "xsks")?;
                pin(&mut open.maps.if_slots, "if_slots")?;
                pin(&mut open.maps.xdp_counters, "xdp_counters")?;
                let rodata =
                    open.maps
                        .rodata_data
                        .as_deref_mut()
                        .ok_or(ProgramError::NoRodata {
                            program: "xsk_redirect",
                        })?;
                rodata.fail_open = u8::from(config.fail_open);
                Ok(())
            },
        )?;
        let inbound = LoadedSkel::open_load(
            "inbound",
            InboundSkelBuilder::default(),
            |open: &mut OpenInboundSkel<'static>| {
                pin(&mut open.maps.inbound_flows, "inbound_flows")?;
                pin(&mut open.maps.inbound_seen, "inbound_seen")?;
                pin(&mut open.maps.tc_counters, "tc_counters")?;
                let rodata = open
                    .maps
                    .rodata_data
                    .as_deref_mut()
                    .ok_or(ProgramError::NoRodata { program: "inbound" })?;
                rodata.report_interval_ns =
                    u64::try_from(config.inbound_report_interval.as_nanos()).unwrap_or(u64::MAX);
                Ok(())
            },
        )?;
        let inbound_reports = InboundReports::new(&inbound.maps.inbound_flows)?;
        Ok(Self {
            inbound_reports,
            xdp,
            inbound,
        })
    }

    fn xdp_prog_fd(&self) -> RawFd {
        self.xdp.progs.xpf_xsk_redirect.as_fd().as_raw_fd()
    }

    fn inbound_prog_fd(&self) -> RawFd {
        self.inbound.progs.xpf_inbound.as_fd().as_raw_fd()
    }

    /// Attaches the XDP redirect program to `ifindex` (named `ifname` in
    /// errors) through a BPF link. The program stays attached while the
    /// returned value lives, or longer once pinned and kept.
    ///
    /// `ifindex` is resolved in the calling thread's network namespace.
    pub fn attach_xdp(
        &self,
        ifname: &str,
        ifindex: u32,
        mode: AttachMode,
    ) -> Result<XdpAttachment, ProgramError> {
        attach_xdp_link(self.xdp_prog_fd(), ifname, ifindex, mode)
    }

    /// Attaches the inbound flow reporter at tcx egress of `ifindex`, after
    /// any programs already there. It never drops: it only reports.
    ///
    /// `ifindex` is resolved in the calling thread's network namespace.
    pub fn attach_inbound(&self, ifname: &str, ifindex: u32) -> Result<TcAttachment, ProgramError> {
        let opts = libbpf_sys::bpf_link_create_opts {
            sz: size_of::<libbpf_sys::bpf_link_create_opts>() as libbpf_sys::size_t,
            ..Default::default()
        };
        // SAFETY: the program fd is open while `self` lives; `opts` is fully
        // initialised (no relative placement: append) and outlives the call.
        let fd = unsafe {
            libbpf_sys::bpf_link_create(
                self.inbound_prog_fd(),
                ifindex as c_int,
                libbpf_sys::BPF_TCX_EGRESS,
                &opts,
            )
        };
        if fd < 0 {
            return Err(ProgramError::TcxAttach {
                ifname: ifname.to_string(),
                source: io::Error::from_raw_os_error(-fd),
            });
        }
        // SAFETY: `fd` is a new link fd that nothing else owns.
        let link = unsafe { LinkFd::from_raw(fd) };
        Ok(Attachment::new(link, ifname, ifindex, ()))
    }

    /// Takes over the XDP link pinned at `path` on `ifindex`: swaps this
    /// process's program into it in place. `Ok(None)` when no usable link
    /// is pinned there (none, or its interface is gone); the caller then
    /// attaches afresh.
    pub fn take_over_xdp(
        &self,
        path: &Path,
        ifname: &str,
        ifindex: u32,
        mode: AttachMode,
    ) -> Result<Option<XdpAttachment>, ProgramError> {
        Ok(take_over(path, ifname, ifindex, self.xdp_prog_fd())?
            .map(|link| Attachment::new(link, ifname, ifindex, mode)))
    }

    /// Like [`take_over_xdp`](Self::take_over_xdp) for the tcx link.
    pub fn take_over_inbound(
        &self,
        path: &Path,
        ifname: &str,
        ifindex: u32,
    ) -> Result<Option<TcAttachment>, ProgramError> {
        Ok(take_over(path, ifname, ifindex, self.inbound_prog_fd())?
            .map(|link| Attachment::new(link, ifname, ifindex, ())))
    }

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

    /// The XDP program's counters summed over CPUs, indexed by [`XdpCounter`].
    pub fn xdp_counters(&self) -> Result<[u64; XDP_COUNTERS], ProgramError> {
        sum_per_cpu(&self.xdp.maps.xdp_counters, "xdp_counters")
    }

    /// The inbound program's counters summed over CPUs, indexed by
    /// [`TcCounter`].
    pub fn tc_counters(&self) -> Result<[u64; TC_COUNTERS], ProgramError> {
        sum_per_cpu(&self.inbound.maps.tc_counters, "tc_counters")
    }

    /// [`xdp_counters`](Self::xdp_counters) with their names, for output.
    pub fn xdp_counter_list(&self) -> Result<Vec<(&'static str, u64)>, ProgramError> {
        Ok(XDP_COUNTER_NAMES
            .into_iter()
            .zip(self.xdp_counters()?)
            .collect())
    }

    /// [`tc_counters`](Self::tc_counters) with their names, for output.
    pub fn tc_counter_list(&self) -> Result<Vec<(&'static str, u64)>, ProgramError> {
        Ok(TC_COUNTER_NAMES
            .into_iter()
            .zip(self.tc_counters()?)
            .collect())
    }

    /// The reader of flows opened towards endpoints.
    pub fn inbound_reports(&self) -> &InboundReports {
        &self.inbound_reports
    }

    /// Shorthand for `inbound_reports().drain(f)`.
    pub fn drain_inbound(&self, f: impl FnMut(FlowEvent)) -> usize {
        self.inbound_reports.drain(f)
    }
}

fn xdp_attach_error(ifname: &str, mode: AttachMode, source: io::Error) -> ProgramError {
    let ifname = ifname.to_string();
    match source.raw_os_error() {
        Some(libc::EBUSY | libc::EEXIST) => ProgramError::XdpAlreadyAttached { ifname, source },
        Some(libc::EOPNOTSUPP | libc::EINVAL)
            if matches!(mode, AttachMode::Native | AttachMode::Offload) =>
        {
            ProgramError::XdpModeUnsupported {
                ifname,
                mode,
                source,
            }
        }
        _ => ProgramError::XdpAttach {
            ifname,
            mode,
            source,
        },
    }
}

/// Where map `name` is pinned in the pin folder `dir`.
pub fn map_pin_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("map_{name}"))
}

/// Where the XDP link of interface `ifname` is pinned in `dir`.
pub fn xdp_link_path(dir: &Path, ifname: &str) -> PathBuf {
    dir.join(format!("xdp_{ifname}"))
}

/// Where the tcx link of interface `ifname` is pinned in `dir`.
pub fn tc_link_path(dir: &Path, ifname: &str) -> PathBuf {
    dir.join(format!("tc_{ifname}"))
}

fn pin_error(ifname: &str, path: &Path, action: &'static str, source: io::Error) -> ProgramError {
    ProgramError::Pin {
        ifname: ifname.to_string(),
        path: path.to_path_buf(),
        action,
        source,
    }
}

/// The link pinned at `path` on `ifindex` with `prog_fd` swapped in, if
/// there is one.
fn take_over(
    path: &Path,
    ifname: &str,
    ifindex: u32,
    prog_fd: RawFd,
) -> Result<Option<LinkFd>, ProgramError> {
    let Some(link) = open_pinned_on(path, ifname, ifindex)? else {
        return Ok(None);
    };
    link.update(prog_fd)
        .map_err(|source| pin_error(ifname, path, "swapping the program in", source))?;
    Ok(Some(link))
}

/// The link pinned at `path` if it is attached to `ifindex`. A link whose
/// interface is gone (or is another one now) has its pin removed.
fn open_pinned_on(path: &Path, ifname: &str, ifindex: u32) -> Result<Option<LinkFd>, ProgramError> {
    let link = match LinkFd::open_pinned(path) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(pin_error(ifname, path, "opening", e)),
    };
    let on = link
        .ifindex()
        .map_err(|e| pin_error(ifname, path, "reading its info", e))?;
    if on != ifindex {
        // Dropping a defunct link detaches nothing and removes its pin.
        drop(link);
        return Ok(None);
    }
    Ok(Some(link))
}

/// Attaches XDP program `prog_fd` to `ifindex` in `mode` through a BPF
/// link (detached when the returned value is dropped, unless kept).
fn attach_xdp_link(
    prog_fd: RawFd,
    ifname: &str,
    ifindex: u32,
    mode: AttachMode,
) -> Result<XdpAttachment, ProgramError> {
    let opts = libbpf_sys::bpf_link_create_opts {
        sz: size_of::<libbpf_sys::bpf_link_create_opts>() as libbpf_sys::size_t,
        flags: mode.xdp_flags(),
        ..Default::default()
    };
    // The kernel reads this argument as an unsigned ifindex; the cast keeps
    // the bits.
    let target = ifindex as c_int;
    // SAFETY: `prog_fd` belongs to a loaded program the caller keeps alive
    // for the call; `opts` is fully initialised and outlives the call.
    let fd = unsafe { libbpf_sys::bpf_link_create(prog_fd, target, libbpf_sys::BPF_XDP, &opts) };
    if fd < 0 {
        return Err(xdp_attach_error(
            ifname,
            mode,
            io::Error::from_raw_os_error(-fd),
        ));
    }
    // SAFETY: `fd` is a new link fd that nothing else owns.
    let link = unsafe { LinkFd::from_raw(fd) };
    Ok(Attachment::new(link, ifname, ifindex, mode))
}

/// Benchmark baseline: XDP_DROP on an interface, counted (`bpf/xdp_drop.bpf.c`).
pub struct XdpDrop {
    skel: LoadedSkel<XdpDropSkel<'static>>,
}

impl XdpDrop {
    pub fn load() -> Result<Self, ProgramError> {
        Ok(Self {
            skel: LoadedSkel::open_load("xdp_drop", XdpDropSkelBuilder::default(), |_| Ok(()))?,
        })
    }

    /// Attaches the dropper to `ifindex` in `mode`; see [`Programs::attach_xdp`].
    pub fn attach(
        &self,
        ifname: &str,
        ifindex: u32,
        mode: AttachMode,
    ) -> Result<XdpAttachment, ProgramError> {
        attach_xdp_link(
            self.skel.progs.xpf_xdp_drop.as_fd().as_raw_fd(),
            ifname,
            ifindex,
            mode,
        )
    }

    /// Frames dropped so far, over all CPUs.
    pub fn dropped(&self) -> Result<u64, ProgramError> {
        let [n] = sum_per_cpu::<1>(&self.skel.maps.dropped, "dropped")?;
        Ok(n)
    }
}

fn sum_per_cpu<const N: usize>(
    map: &MapMut<'static>,
    name: &'static str,
) -> Result<[u64; N], ProgramError> {
    let mut sums = [0u64; N];
    for (index, sum) in (0u32..).zip(sums.iter_mut()) {
        let per_cpu = map
            .lookup_percpu(&index.to_ne_bytes(), MapFlags::ANY)
            .map_err(|source| ProgramError::Map {
                map: name,
                action: format!("reading counter {index}"),
                source,
            })?
            .unwrap_or_default();
        *sum = per_cpu
            .iter()
            .filter_map(|value| value.get(..8)?.try_into().ok())
            .map(u64::from_ne_bytes)
            .sum();
    }
    Ok(sums)
}

/// A program attached to one interface through a BPF link, detached when
/// this is dropped unless [`kept`](Self::keep) (then a pinned link stays
/// attached). `K` is what the kind of attachment adds: the XDP mode, or
/// nothing for tcx.
#[derive(Debug)]
pub struct Attachment<K> {
    link: LinkFd,
    ifname: String,
    ifindex: u32,
    kind: K,
}

/// The XDP program on one interface.
pub type XdpAttachment = Attachment<AttachMode>;
/// The inbound program at an interface's tcx egress.
pub type TcAttachment = Attachment<()>;

impl<K> Attachment<K> {
    /// Wraps a link fd just made or taken over on `ifname`.
    fn new(link: LinkFd, ifname: &str, ifindex: u32, kind: K) -> Self {
        Self {
            link,
            ifname: ifname.to_string(),
            ifindex,
            kind,
        }
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Pins the link at `path`, so it outlives the process once kept.
    pub fn pin(&mut self, path: &Path) -> Result<(), ProgramError> {
        self.link
            .pin(path)
            .map_err(|source| pin_error(&self.ifname, path, "pinning", source))
    }

    /// Leaves the program attached (pinned links stay after the process).
    pub fn keep(self) {
        self.link.keep();
    }
}

impl XdpAttachment {
    pub fn mode(&self) -> AttachMode {
        self.kind
    }
}

/// A flow opened towards an endpoint, as the inbound program saw it leave
/// the host towards the endpoint's veth. Source is the remote side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowEvent {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// For ICMP echo, the echo identifier (as is `dport`).
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// The TCP flags of the SYN; zero for other protocols.
    pub tcp_flags: u8,
    /// The host-side veth the packet left through.
    pub ifindex: u32,
}

impl FlowEvent {
    /// Decodes one `struct xpf_flow_event` ring sample; `None` for a sample
    /// of the wrong size or an unknown address family.
    fn decode(sample: &[u8]) -> Option<Self> {
        if sample.len() != RAW_FLOW_EVENT_SIZE {
            return None;
        }
        // SAFETY: the sample holds exactly `size_of::<RawFlowEvent>()` bytes,
        // and the type is `repr(C)` integers and byte arrays, valid for any
        // bit pattern. Unaligned read: the slice promises no alignment.
        let raw: RawFlowEvent = unsafe { sample.as_ptr().cast::<RawFlowEvent>().read_unaligned() };
        let (src, dst) = match raw.family {
            4 => {
                let v4 = |a: [u8; 16]| IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]));
                (v4(raw.saddr), v4(raw.daddr))
            }
            6 => (
                IpAddr::V6(Ipv6Addr::from(raw.saddr)),
                IpAddr::V6(Ipv6Addr::from(raw.daddr)),
            ),
            _ => return None,
        };
        Some(FlowEvent {
            src,
            dst,
            sport: raw.sport,
            dport: raw.dport,
            proto: raw.proto,
            tcp_flags: raw.tcp_flags,
            ifindex: raw.ifindex,
        })
    }
}

/// The reading end of `inbound_flows`, shared by all workers.
///
/// [`drain`](Self::drain) takes the ring's lock, decodes what is there and
/// hands it to the caller before letting go. So when `drain` returns, every
/// report written before it was called has been handled, by this caller or
/// an earlier one: a worker that drains before judging a batch never sees a
/// reply before the report of the flow it answers, whichever worker took
/// the report. The lock is held for a bounded number of reports; when the
/// ring is empty a call costs an uncontended lock and two index reads, no
/// syscall.
pub struct InboundReports {
    ring: Mutex<RingBuffer<'static>>,
    events: Receiver<FlowEvent>,
    undecodable: Arc<AtomicU64>,
}

impl fmt::Debug for InboundReports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboundReports")
            .field("queued", &self.events.len())
            .field("undecodable", &self.undecodable())
            .finish_non_exhaustive()
    }
}

impl InboundReports {
    fn new(map: &MapMut<'static>) -> Result<Self, ProgramError> {
        let (tx, events): (Sender<FlowEvent>, _) = crossbeam_channel::unbounded();
        let undecodable = Arc::new(AtomicU64::new(0));
        let bad = Arc::clone(&undecodable);
        let ring_error = |source| ProgramError::Map {
            map: "inbound_flows",
            action: "opening the ring buffer".to_string(),
            source,
        };
        let mut builder = RingBufferBuilder::new();
        builder
            .add(map, move |sample: &[u8]| {
                match FlowEvent::decode(sample) {
                    // The receiver lives in the same struct, so it is
                    // there whenever the ring can be consumed.
                    Some(event) => drop(tx.send(event)),
                    None => {
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                }
                0
            })
            .map_err(ring_error)?;
        let ring = builder.build().map_err(ring_error)?;
        Ok(Self {
            ring: Mutex::new(ring),
            events,
            undecodable,
        })
    }

    /// Hands every reported flow waiting now (up to about
    /// [`INBOUND_DRAIN_MAX`] new ones) to `f`, under the ring's lock;
    /// returns how many.
    pub fn drain(&self, mut f: impl FnMut(FlowEvent)) -> usize {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        // Negative only when a callback fails, and ours never does.
        let _ = ring.consume_raw_n(INBOUND_DRAIN_MAX);
        let mut handed = 0;
        while let Ok(event) = self.events.try_recv() {
            f(event);
            handed += 1;
        }
        drop(ring);
        handed
    }

    /// Ring samples that were not a `struct xpf_flow_event` (an ABI
    /// mismatch; should stay zero).
    pub fn undecodable(&self) -> u64 {
        self.undecodable.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(family: u8, saddr: &[u8], daddr: &[u8]) -> Vec<u8> {
        let mut s = vec![0u8; RAW_FLOW_EVENT_SIZE];
        s[..saddr.len()].copy_from_slice(saddr);
        s[16..16 + daddr.len()].copy_from_slice(daddr);
        s[32..36].copy_from_slice(&7u32.to_ne_bytes()); // ifindex
        s[36..38].copy_from_slice(&40000u16.to_ne_bytes()); // sport
        s[38..40].copy_from_slice(&443u16.to_ne_bytes()); // dport
        s[40] = family;
        s[41] = 6; // TCP
        s[42] = 0x02; // SYN
        s
    }

    #[test]
    fn decodes_an_ipv4_event() {
        let ev = FlowEvent::decode(&sample(4, &[198, 18, 0, 1], &[198, 18, 0, 2])).unwrap();
        assert_eq!(
            ev,
            FlowEvent {
                src: "198.18.0.1".parse().unwrap(),
                dst: "198.18.0.2".parse().unwrap(),
                sport: 40000,
                dport: 443,
                proto: 6,
                tcp_flags: 0x02,
                ifindex: 7,
            }
        );
    }

    #[test]
    fn decodes_an_ipv6_event() {
        let src: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let dst: Ipv6Addr = "2001:db8::2".parse().unwrap();
        let ev = FlowEvent::decode(&sample(6, &src.octets(), &dst.octets())).unwrap();
        assert_eq!((ev.src, ev.dst), (IpAddr::V6(src), IpAddr::V6(dst)));
    }

    #[test]
    fn rejects_wrong_size_and_unknown_family() {
        let good = sample(4, &[198, 18, 0, 1], &[198, 18, 0, 2]);
        assert!(FlowEvent::decode(&good[..RAW_FLOW_EVENT_SIZE - 1]).is_none());
        assert!(FlowEvent::decode(&[good.as_slice(), &[0]].concat()).is_none());
        assert!(FlowEvent::decode(&sample(5, &[], &[])).is_none());
    }

    #[test]
    fn attach_mode_round_trips_through_its_name() {
        for mode in [AttachMode::Native, AttachMode::Generic, AttachMode::Offload] {
            assert_eq!(mode.to_string().parse::<AttachMode>(), Ok(mode));
        }
        let err = "skb".parse::<AttachMode>().unwrap_err();
        assert!(err.to_string().contains("`skb`"), "{err}");
    }

    #[test]
    fn every_counter_has_a_name() {
        for name in XDP_COUNTER_NAMES.iter().chain(&TC_COUNTER_NAMES) {
            assert!(!name.is_empty(), "a counter in xpf_abi.h has no name here");
        }
    }

    #[test]
    fn programs_are_shareable_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Programs>();
        assert_send_sync::<XdpAttachment>();
        assert_send_sync::<TcAttachment>();
    }
}
