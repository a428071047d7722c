//! Putting the programs on interfaces through BPF links (see
//! [`crate::datapath::links`]): attached afresh
//! ([`Programs::attach_xdp`], [`Programs::attach_inbound`]) or swapped into
//! the link a predecessor pinned ([`Programs::take_over_xdp`],
//! [`Programs::take_over_inbound`]). An [`Attachment`] owns its link:
//! dropping it detaches the program, unless it was pinned and kept.

use std::ffi::c_int;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;

use libbpf_rs::libbpf_sys;

use super::{AttachMode, ProgramError, Programs};
use crate::datapath::links::LinkFd;

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

impl Programs {
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
pub(super) fn attach_xdp_link(
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
