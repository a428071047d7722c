//! Named network namespaces (the `ip netns` kind, bind-mounted under
//! `/run/netns`) and running code inside one.
//!
//! A thread's network namespace is its own: [`enter`] moves only the calling
//! thread, and whatever it then spawns (threads, `ip` commands) starts there
//! too. [`run_in`] does the work on a scoped thread so the caller never moves.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
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
    // SAFETY: `f` is an open namespace file for the duration of the call.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(io_err(io::Error::last_os_error()));
    }
    Ok(())
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
