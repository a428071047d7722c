//! Stop requests (SIGINT, SIGTERM) for every long-running command: blocked
//! in the calling thread and in every thread and child started after, and
//! read through a signalfd, so a stop is seen between batches or wakes a
//! sleep, and nothing is left half torn down by a default signal action.
//! Children inherit the blocked mask; xpf's own commands read the signals
//! the same way.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// SIGINT and SIGTERM, blocked and read through a signalfd, so that a stop
/// request is seen between batches or wakes a sleep, and the summary still
/// gets printed.
pub(super) struct StopSignals {
    fd: OwnedFd,
    fired: std::cell::Cell<bool>,
}

impl StopSignals {
    /// Blocks both signals in this thread (and threads it starts later).
    pub(super) fn new() -> io::Result<Self> {
        Self::blocking(&[libc::SIGINT, libc::SIGTERM])
    }

    /// SIGINT, SIGTERM, SIGUSR2 and SIGHUP (which asks `xpf run` to read
    /// its config again), to be taken one at a time with
    /// [`StopSignals::next`].
    pub(super) fn for_daemon() -> io::Result<Self> {
        Self::blocking(&[libc::SIGINT, libc::SIGTERM, libc::SIGUSR2, libc::SIGHUP])
    }

    /// Waits for the next blocked signal and returns its number; `None`
    /// after `timeout` without one.
    pub(super) fn next(&self, timeout: Duration) -> Option<libc::c_int> {
        let mut fds = [libc::pollfd {
            fd: self.fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        wait(
            &mut fds,
            u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX),
        );
        self.read_one()
    }

    /// One pending signal's number, without blocking.
    fn read_one(&self) -> Option<libc::c_int> {
        // SAFETY: signalfd_siginfo is plain integers; all-zero is valid.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reads at most `size` bytes into the live `info`; the fd
        // is non-blocking.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        (n == size as isize).then_some(info.ssi_signo as libc::c_int)
    }

    fn blocking(signals: &[libc::c_int]) -> io::Result<Self> {
        // SAFETY: sigemptyset/sigaddset initialise `set` before it is read;
        // pthread_sigmask and signalfd only read it.
        let fd = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for s in signals {
                libc::sigaddset(&mut set, *s);
            }
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC)
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self {
            fd,
            fired: std::cell::Cell::new(false),
        })
    }

    /// Readable when a stop signal is pending.
    pub(super) fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Whether a stop signal has arrived (consumes it without blocking).
    pub(super) fn fired(&self) -> bool {
        if !self.fired.get() && self.read_one().is_some() {
            self.fired.set(true);
        }
        self.fired.get()
    }

    /// Sleeps `ns` nanoseconds or until a stop signal; true if one came.
    pub(super) fn sleep(&self, ns: u64) -> bool {
        let mut fds = [libc::pollfd {
            fd: self.fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        wait(&mut fds, ns);
        self.fired()
    }
}

/// ppoll(2) on `fds` for up to `ns` nanoseconds (EINTR is a short wait).
pub(super) fn wait(fds: &mut [libc::pollfd], ns: u64) {
    let ts = libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: `fds` is a live array of initialised pollfds of the given
    // length; `ts` is live; a null sigmask leaves the mask alone.
    unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            &ts,
            std::ptr::null(),
        )
    };
}
