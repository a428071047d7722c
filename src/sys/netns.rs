//! Named network namespaces (the `ip netns` kind, bind-mounted under
//! `/run/netns`), running code inside one, and [`NetnsFile`], a namespace
//! held open by descriptor; the one place xpf calls setns.
//!
//! A thread's network namespace is its own: [`enter`] and
//! [`NetnsFile::enter`] move only the calling thread, and whatever it then
//! spawns (threads, `ip` commands) starts there too. [`run_in`] does the
//! work on a scoped thread so the caller never moves.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// Why a namespace operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace `{name}`: {message}")]
    Command { name: String, message: String },
    #[error("network namespace `{name}`: {source}")]
    Io { name: String, source: io::Error },
}

/// Where `ip netns` keeps the namespace called `name`.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

/// Whether a namespace called `name` exists.
pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// Names of the existing namespaces.
pub fn list() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Creates the namespace `name`; an existing one is an error, so xpf never
/// takes over (and later deletes) a namespace someone else made.
pub fn create(name: &str) -> Result<(), NetnsError> {
    if exists(name) {
        return Err(NetnsError::Command {
            name: name.into(),
            message: "already exists".into(),
        });
    }
    run_ip(name, &["netns", "add", name])
}

/// Deletes the namespace `name` and with it every interface inside.
pub fn delete(name: &str) -> Result<(), NetnsError> {
    run_ip(name, &["netns", "delete", name])
}

fn run_ip(name: &str, args: &[&str]) -> Result<(), NetnsError> {
    match crate::sys::ip::run(args) {
        Ok(_) => Ok(()),
        Err(crate::sys::ip::IpError::Spawn(source)) => Err(NetnsError::Io {
            name: name.into(),
            source,
        }),
        Err(other) => Err(NetnsError::Command {
            name: name.into(),
            message: other.stderr().unwrap_or_default().to_string(),
        }),
    }
}

/// Moves the calling thread into the namespace `name`.
pub fn enter(name: &str) -> Result<(), NetnsError> {
    let io_err = |source| NetnsError::Io {
        name: name.into(),
        source,
    };
    let f = File::open(path(name)).map_err(io_err)?;
    setns_net(&f).map_err(io_err)
}

/// Moves the calling thread into the network namespace `f` is open on.
fn setns_net(f: &File) -> io::Result<()> {
    // SAFETY: `f` is an open namespace file for the duration of the call;
    // setns only reads the descriptor.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A network namespace held open, so a thread can enter it later whatever
/// namespace that thread is in by then, named or not.
#[derive(Debug)]
pub struct NetnsFile {
    file: File,
    /// Device and inode: two files are the same namespace when these match.
    id: (u64, u64),
}

impl NetnsFile {
    /// The calling thread's network namespace, as procfs shows it.
    pub const THREAD_SELF: &'static str = "/proc/thread-self/ns/net";

    /// Opens the calling thread's network namespace.
    pub fn current() -> io::Result<Self> {
        let file = File::open(Self::THREAD_SELF)?;
        let m = file.metadata()?;
        Ok(Self {
            id: (m.dev(), m.ino()),
            file,
        })
    }

    /// Whether the calling thread is in this namespace now.
    pub fn is_current(&self) -> io::Result<bool> {
        let here = std::fs::metadata(Self::THREAD_SELF)?;
        Ok((here.dev(), here.ino()) == self.id)
    }

    /// Moves the calling thread into this namespace.
    pub fn enter(&self) -> io::Result<()> {
        setns_net(&self.file)
    }
}

/// Runs `f` on a thread inside the namespace `name` and returns its result.
pub fn run_in<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(name)?;
            Ok(f())
        })
        .join()
        .expect("thread inside a network namespace panicked")
    })
}

/// A namespace this process created, deleted when dropped (also when a test
/// fails half-way).
#[derive(Debug)]
pub struct OwnedNetns {
    name: String,
}

impl OwnedNetns {
    pub fn create(name: &str) -> Result<Self, NetnsError> {
        create(name)?;
        Ok(Self { name: name.into() })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for OwnedNetns {
    fn drop(&mut self) {
        if let Err(e) = delete(&self.name) {
            eprintln!("xpf: {e}");
        }
    }
}
