//! One xpf per network namespace, and what it leaves to the kernel.
//!
//! An *instance* is the `xpf run` of one network namespace (its internal
//! pair has fixed names, so there is at most one). It is named after that
//! namespace: the `ip netns` name when it has one, `root` for the initial
//! namespace, `netns-<inode>` otherwise. Everything that outlives the
//! process carries that name:
//!
//! - `/run/xpf/<instance>/lock`: held with `flock` by the running process
//!   and holding its PID. The kernel drops the lock when the process dies,
//!   however it dies, so a held lock means a live instance and a free one
//!   with state beside it means a dead one to take over.
//! - `/run/xpf/<instance>/state.json`: what the instance made (endpoints,
//!   the internal pair, attach settings) and its drop counters at the last
//!   save, rewritten atomically (write, then rename) after every change.
//! - `/sys/fs/bpf/xpf/<instance>/`: the pinned BPF links (one XDP and one
//!   tcx link per endpoint veth) and maps (socket slots, counters, the
//!   inbound flow ring, the conntrack journal). Pinned links keep the
//!   programs attached after the process is gone, and with no AF_XDP
//!   socket bound the XDP program drops every frame (fail-closed).
//!
//! bpffs is mounted at `/sys/fs/bpf` when it is not already, as Cilium does.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::endpoint::{EndpointRecord, InternalRecord};

/// Where instances keep their lock and state.
pub const STATE_ROOT: &str = "/run/xpf";
/// Where bpffs is (or gets) mounted.
pub const BPFFS: &str = "/sys/fs/bpf";
/// The folder under bpffs that holds every instance's pins.
pub const PIN_ROOT: &str = "/sys/fs/bpf/xpf";

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Why an instance could not be claimed, read or removed.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error(
        "another xpf (PID {pid}) is running in this network namespace (instance `{instance}`); \
         stop it first (SIGTERM removes everything, `xpf stop --keep-datapath` hands over)"
    )]
    Live { instance: String, pid: String },
    #[error("instance `{instance}`: {what}: {source}")]
    Io {
        instance: String,
        what: String,
        source: io::Error,
    },
    #[error("instance `{instance}`: {path}: {message}")]
    State {
        instance: String,
        path: PathBuf,
        message: String,
    },
}

/// What a running instance records about itself for the one that follows.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct InstanceState {
    /// PID of the process that wrote it.
    pub pid: u32,
    /// XDP attach mode of the pinned links (`native`, `generic`, ...).
    pub attach: String,
    pub internal: Option<InternalRecord>,
    pub endpoints: Vec<EndpointRecord>,
    /// The XDP program's `no_socket` + `fail_open` counters at the last
    /// save: what a successor subtracts to count the frames that met no
    /// xpf.
    pub unserved_seen: u64,
    /// Frames that met no xpf over every takeover so far.
    pub gap_dropped: u64,
}

/// The claimed instance of this network namespace: the lock is held for as
/// long as this value lives.
#[derive(Debug)]
pub struct Instance {
    pub name: String,
    pub state_dir: PathBuf,
    pub pin_dir: PathBuf,
    lock: File,
}

/// A state file left by an instance whose process is gone.
#[derive(Debug)]
pub struct Leftover {
    pub state: InstanceState,
}

impl Instance {
    /// The instance name of the calling thread's network namespace.
    pub fn current_name() -> io::Result<String> {
        let me = fs::metadata("/proc/thread-self/ns/net")?;
        let id = (me.dev(), me.ino());
        let same = |p: &Path| {
            fs::metadata(p)
                .map(|m| (m.dev(), m.ino()) == id)
                .unwrap_or(false)
        };
        if same(Path::new("/proc/1/ns/net")) {
            return Ok("root".into());
        }
        for name in crate::sys::netns::list() {
            if same(&crate::sys::netns::path(&name)) {
                return Ok(name);
            }
        }
        Ok(format!("netns-{}", id.1))
    }

    fn dirs(name: &str) -> (PathBuf, PathBuf) {
        (
            Path::new(STATE_ROOT).join(name),
            Path::new(PIN_ROOT).join(name),
        )
    }

    /// Claims this namespace's instance: takes the lock, or fails naming
    /// the live holder's PID. Returns the state a dead predecessor left, if
    /// any.
    pub fn claim() -> Result<(Self, Option<Leftover>), InstanceError> {
        let name = Self::current_name().map_err(|source| InstanceError::Io {
            instance: "?".into(),
            what: "reading this thread's network namespace".into(),
            source,
        })?;
        Self::claim_named(&name)
    }

    fn claim_named(name: &str) -> Result<(Self, Option<Leftover>), InstanceError> {
        let (state_dir, pin_dir) = Self::dirs(name);
        let io_err = |what: String| {
            let instance = name.to_string();
            move |source| InstanceError::Io {
                instance,
                what,
                source,
            }
        };
        fs::create_dir_all(&state_dir)
            .map_err(io_err(format!("creating {}", state_dir.display())))?;
        let lock_path = state_dir.join("lock");
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io_err(format!("opening {}", lock_path.display())))?;
        // SAFETY: flock on an fd `lock` keeps open; no memory is passed.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut pid = String::new();
                let _ = lock.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(InstanceError::Live {
                    instance: name.into(),
                    pid: if pid.is_empty() {
                        "unknown".into()
                    } else {
                        pid.into()
                    },
                });
            }
            return Err(io_err(format!("locking {}", lock_path.display()))(e));
        }
        let write_pid = |lock: &mut File| -> io::Result<()> {
            lock.set_len(0)?;
            lock.rewind()?;
            writeln!(lock, "{}", std::process::id())?;
            lock.sync_data()
        };
        write_pid(&mut lock).map_err(io_err(format!("writing {}", lock_path.display())))?;
        let me = Self {
            name: name.into(),
            state_dir,
            pin_dir,
            lock,
        };
        let leftover = me.read_state()?.map(|state| Leftover { state });
        Ok((me, leftover))
    }

    fn state_path(&self) -> PathBuf {
        self.state_dir.join("state.json")
    }

    fn read_state(&self) -> Result<Option<InstanceState>, InstanceError> {
        let path = self.state_path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(InstanceError::Io {
                    instance: self.name.clone(),
                    what: format!("reading {}", path.display()),
                    source,
                })
            }
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| InstanceError::State {
                instance: self.name.clone(),
                path,
                message: format!("unreadable ({e}); `xpf cleanup` removes what it describes"),
            })
    }

    /// Replaces the state file (write to a temporary file, then rename, so
    /// a crash leaves the old or the new one, never half of one).
    pub fn save(&self, state: &InstanceState) -> Result<(), InstanceError> {
        let path = self.state_path();
        let tmp = self.state_dir.join("state.json.tmp");
        let io_err = |source| InstanceError::Io {
            instance: self.name.clone(),
            what: format!("writing {}", path.display()),
            source,
        };
        let text = serde_json::to_vec_pretty(state).expect("state serialises");
        let mut f = File::create(&tmp).map_err(io_err)?;
        f.write_all(&text).map_err(io_err)?;
        f.sync_data().map_err(io_err)?;
        fs::rename(&tmp, &path).map_err(io_err)
    }

    /// Makes sure bpffs is mounted and this instance's pin folder exists.
    pub fn prepare_pins(&self) -> Result<(), InstanceError> {
        ensure_bpffs().map_err(|source| InstanceError::Io {
            instance: self.name.clone(),
            what: format!("mounting bpffs at {BPFFS}"),
            source,
        })?;
        fs::create_dir_all(&self.pin_dir).map_err(|source| InstanceError::Io {
            instance: self.name.clone(),
            what: format!("creating {}", self.pin_dir.display()),
            source,
        })
    }

    /// Whether this instance has anything pinned.
    pub fn has_pins(&self) -> bool {
        fs::read_dir(&self.pin_dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    }

    /// Removes the pins (which detaches every pinned link no process holds)
    /// and the state folder, lock included. Consumes the claim.
    pub fn remove(self) -> Result<(), InstanceError> {
        let mut first = None;
        if self.pin_dir.exists() {
            if let Err(source) = fs::remove_dir_all(&self.pin_dir) {
                first.get_or_insert(InstanceError::Io {
                    instance: self.name.clone(),
                    what: format!("removing {}", self.pin_dir.display()),
                    source,
                });
            }
        }
        // The parent folders stay only while other instances use them.
        let _ = fs::remove_dir(PIN_ROOT);
        if let Err(source) = fs::remove_dir_all(&self.state_dir) {
            if source.kind() != io::ErrorKind::NotFound {
                first.get_or_insert(InstanceError::Io {
                    instance: self.name.clone(),
                    what: format!("removing {}", self.state_dir.display()),
                    source,
                });
            }
        }
        let _ = fs::remove_dir(STATE_ROOT);
        drop(self.lock);
        first.map_or(Ok(()), Err)
    }
}

/// The process holding this namespace's instance lock.
#[derive(Debug)]
pub struct LiveInstance {
    pub name: String,
    pub pid: u32,
    lock: File,
}

impl LiveInstance {
    /// The running xpf of the calling thread's network namespace, if any.
    pub fn find() -> io::Result<Option<Self>> {
        let name = Instance::current_name()?;
        let path = Path::new(STATE_ROOT).join(&name).join("lock");
        let mut lock = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        // SAFETY: flock on an fd `lock` keeps open.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
            // Nobody holds it: no live instance.
            return Ok(None);
        }
        let mut pid = String::new();
        lock.read_to_string(&mut pid)?;
        let pid = pid.trim().parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} holds no PID", path.display()),
            )
        })?;
        Ok(Some(Self { name, pid, lock }))
    }

    /// Whether the holder has let go of the lock (it exited).
    pub fn gone(&self) -> bool {
        // SAFETY: flock on an fd `self.lock` keeps open.
        unsafe { libc::flock(self.lock.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) == 0 }
    }
}

/// Mounts bpffs at [`BPFFS`] unless one is there.
pub fn ensure_bpffs() -> io::Result<()> {
    if is_bpffs(Path::new(BPFFS)) {
        return Ok(());
    }
    fs::create_dir_all(BPFFS)?;
    let src = c"bpffs";
    let target = c"/sys/fs/bpf";
    let fstype = c"bpf";
    // SAFETY: every pointer is a NUL-terminated literal; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs is plain integers; all-zero is valid.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` is live for the call.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_through_json() {
        let s = InstanceState {
            pid: 42,
            attach: "native".into(),
            unserved_seen: 7,
            ..Default::default()
        };
        let back: InstanceState =
            serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!((back.pid, back.unserved_seen), (42, 7));
        assert_eq!(back.attach, "native");
    }
}
