//! BPF links that may outlive the process.
//!
//! A [`LinkFd`] owns one link fd. Unpinned, the attachment ends with the
//! fd. Pinned under bpffs, it stays attached after the process is gone, so
//! the XDP program keeps dropping what no socket takes (fail-closed), and a
//! successor finds it again by path ([`LinkFd::open_pinned`]) and swaps
//! its program in place with `BPF_LINK_UPDATE`, with no moment where the
//! interface runs without one.
//!
//! Dropping a `LinkFd` detaches it and removes its pin, unless
//! [`LinkFd::keep`] was called: that is how a crash-like exit (a panic, a
//! failed takeover, a stop that hands over to the next `xpf run`) leaves the
//! datapath enforcing.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use libbpf_rs::libbpf_sys;

/// One BPF link, maybe pinned.
#[derive(Debug)]
pub struct LinkFd {
    fd: OwnedFd,
    pin: Option<PathBuf>,
    keep: bool,
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path with a NUL byte"))
}

fn check(rc: i32) -> io::Result<i32> {
    if rc < 0 {
        // libbpf returns -errno and sets errno.
        Err(io::Error::from_raw_os_error(-rc))
    } else {
        Ok(rc)
    }
}

impl LinkFd {
    /// Takes ownership of a fresh link fd.
    ///
    /// # Safety
    /// `fd` must be an open BPF link fd that nothing else owns.
    pub unsafe fn from_raw(fd: RawFd) -> Self {
        Self {
            // SAFETY: the caller promises sole ownership of an open fd.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            pin: None,
            keep: false,
        }
    }

    /// Opens the link pinned at `path`.
    pub fn open_pinned(path: &Path) -> io::Result<Self> {
        let c = c_path(path)?;
        // SAFETY: `c` is NUL-terminated and lives for the call.
        let fd = check(unsafe { libbpf_sys::bpf_obj_get(c.as_ptr()) })?;
        Ok(Self {
            // SAFETY: bpf_obj_get returned a new fd that only we hold.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            pin: Some(path.to_path_buf()),
            keep: false,
        })
    }

    /// Pins the link at `path` (replacing nothing: the path must be free).
    pub fn pin(&mut self, path: &Path) -> io::Result<()> {
        let c = c_path(path)?;
        // SAFETY: the fd is open; `c` is NUL-terminated for the call.
        check(unsafe { libbpf_sys::bpf_obj_pin(self.fd.as_raw_fd(), c.as_ptr()) })?;
        self.pin = Some(path.to_path_buf());
        Ok(())
    }

    /// Replaces the link's program with `prog_fd`, atomically: every
    /// packet meets the old program or the new one.
    pub fn update(&self, prog_fd: RawFd) -> io::Result<()> {
        // SAFETY: both fds are open; null options mean "no expectations".
        check(unsafe {
            libbpf_sys::bpf_link_update(self.fd.as_raw_fd(), prog_fd, std::ptr::null())
        })?;
        Ok(())
    }

    /// The interface an XDP or tcx link is attached to; 0 once the
    /// interface is gone (the link is then defunct).
    pub fn ifindex(&self) -> io::Result<u32> {
        // SAFETY: bpf_link_info is plain integers and unions of them.
        let mut info: libbpf_sys::bpf_link_info = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libbpf_sys::bpf_link_info>() as u32;
        // SAFETY: `info` and `len` are live and sized for the call.
        check(unsafe {
            libbpf_sys::bpf_link_get_info_by_fd(self.fd.as_raw_fd(), &mut info, &mut len)
        })?;
        // SAFETY: XDP and tcx links both put the ifindex first in their
        // union member; other link types never reach here.
        Ok(match info.type_ {
            libbpf_sys::BPF_LINK_TYPE_XDP => unsafe { info.__bindgen_anon_1.xdp.ifindex },
            libbpf_sys::BPF_LINK_TYPE_TCX => unsafe { info.__bindgen_anon_1.tcx.ifindex },
            _ => 0,
        })
    }

    pub fn pin_path(&self) -> Option<&Path> {
        self.pin.as_deref()
    }

    /// Closes the fd and leaves the link attached and pinned.
    pub fn keep(mut self) {
        self.keep = true;
    }

    /// Removes the pin (if any) and detaches now.
    fn release(&mut self) {
        if let Some(p) = self.pin.take() {
            let _ = std::fs::remove_file(p);
        }
        // Closing detaches only the last reference, and a child being
        // spawned by another thread holds a copy of every fd until it
        // execs: detaching explicitly takes effect now.
        // SAFETY: the fd is an open BPF link owned by `self`.
        let _ = unsafe { libbpf_sys::bpf_link_detach(self.fd.as_raw_fd()) };
    }
}

impl Drop for LinkFd {
    fn drop(&mut self) {
        if !self.keep {
            self.release();
        }
    }
}
