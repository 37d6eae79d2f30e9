//! Waiting for a socket to become ready without giving up interruptibility. A blocking
//! syscall interrupted by a signal returns EINTR; the wait then asks the caller's cancel token
//! whether to stop (the Ruby binding answers by running Ruby's interrupt handling: a
//! `Timeout.timeout`, a `Thread#kill`, a trap handler) or to go on waiting for what is left of
//! the deadline.

use crate::transport::cancel::CancelToken;
use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    Readable,
    Writable,
}

/// Waits until `fd` is ready (or has failed, or was closed by its peer: the I/O that follows
/// reports that). `None` waits forever. Errors: `TimedOut` when the deadline passed,
/// `Interrupted` when the cancel token says stop.
pub fn wait(
    fd: RawFd,
    ready: Ready,
    timeout: Option<Duration>,
    cancel: &CancelToken,
) -> io::Result<()> {
    wait_any(&[fd], ready, timeout, cancel)
}

/// `wait` for whichever of `fds` becomes ready first.
pub fn wait_any(
    fds: &[RawFd],
    ready: Ready,
    timeout: Option<Duration>,
    cancel: &CancelToken,
) -> io::Result<()> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let events = match ready {
        Ready::Readable => libc::POLLIN,
        Ready::Writable => libc::POLLOUT,
    };
    loop {
        if cancel.is_cancelled() {
            return Err(io::Error::from(io::ErrorKind::Interrupted));
        }
        let millis = match deadline {
            None => -1,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::from(io::ErrorKind::TimedOut));
                }
                // Rounded up, so a wait of 0.3 ms does not become a busy loop of 0 ms polls.
                i32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
            }
        };
        let mut pollfds: Vec<libc::pollfd> = fds
            .iter()
            .map(|&fd| libc::pollfd {
                fd,
                events,
                revents: 0,
            })
            .collect();
        // SAFETY: pollfds for descriptors the caller owns, as many as the length given.
        let rc = unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, millis) };
        match rc {
            0 => continue, // the deadline check above ends the loop
            n if n > 0 => return Ok(()),
            _ => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
                if cancel.stop_after_signal() {
                    return Err(err);
                }
            }
        }
    }
}
