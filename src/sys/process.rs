//! Child processes that are not one of the tools with a module of their own
//! (`ip`, `nft`): started with standard output and error piped (standard
//! input inherited), either in the calling thread's network namespace or in
//! a named one, and signalled.
//!
//! A child put in a named namespace joins it between fork and exec (one
//! setns(2) in a `pre_exec` hook), as `nsenter --net` would, so its pid is
//! the program's own and signals sent to it reach the program. Everything
//! else it inherits as any `std::process` child does.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Starts `program` with `args` in the calling thread's network namespace,
/// its standard output and error piped.
pub fn spawn_piped<I, S>(program: &Path, args: I) -> io::Result<Child>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    piped(program, args).spawn()
}

/// Starts `program` with `args` inside the network namespace `netns` (an
/// `ip netns` name), its standard output and error piped. A namespace that
/// cannot be opened is an error naming it; one the child cannot join is the
/// spawn's error.
pub fn spawn_piped_in<I, S>(netns: &str, program: &Path, args: I) -> io::Result<Child>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let ns = File::open(crate::sys::netns::path(netns))
        .map_err(|e| io::Error::new(e.kind(), format!("network namespace `{netns}`: {e}")))?;
    let fd = ns.as_raw_fd();
    let mut cmd = piped(program, args);
    // SAFETY: the hook runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed: it makes one setns(2) system call
    // and builds an io::Error from errno, allocating nothing. `fd` is open in
    // the child: it was open at the fork (`ns` lives until `spawn` returns)
    // and is close-on-exec, so the program does not inherit it.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
    }
    let child = cmd.spawn();
    drop(ns);
    child
}

fn piped<I, S>(program: &Path, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

/// Sends `signal` (e.g. `libc::SIGTERM`) to `child`.
pub fn signal(child: &Child, signal: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(child.id())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our own
    // child, not yet reaped (`Child::wait` takes it by `&mut`).
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn stdout_of(mut child: Child) -> String {
        let mut out = String::new();
        child
            .stdout
            .take()
            .expect("piped")
            .read_to_string(&mut out)
            .unwrap();
        assert!(child.wait().unwrap().success());
        out
    }

    #[test]
    fn a_child_prints_through_the_pipe() {
        let child = spawn_piped(Path::new("echo"), ["hello"]).unwrap();
        assert_eq!(stdout_of(child), "hello\n");
    }

    #[test]
    fn a_missing_namespace_is_named() {
        let e = spawn_piped_in("xpf-no-such-netns", Path::new("true"), [""; 0]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains("`xpf-no-such-netns`"), "{e}");
    }

    #[test]
    fn a_child_runs_inside_the_named_namespace() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root (network namespaces)");
            return;
        }
        let ns = crate::sys::netns::OwnedNetns::create(&format!("xpf-proc{}", std::process::id()))
            .unwrap();
        let child =
            spawn_piped_in(ns.name(), Path::new("readlink"), ["/proc/self/ns/net"]).unwrap();
        let inside = stdout_of(child);
        let ino = std::os::unix::fs::MetadataExt::ino(
            &std::fs::metadata(crate::sys::netns::path(ns.name())).unwrap(),
        );
        assert_eq!(inside.trim(), format!("net:[{ino}]"));
    }

    #[test]
    fn a_signal_reaches_the_child() {
        let mut child = spawn_piped(Path::new("sleep"), ["30"]).unwrap();
        signal(&child, libc::SIGTERM).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGTERM)
        );
    }
}
