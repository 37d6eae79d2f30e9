//! Interrupting a call that is waiting on the network. The binding hands a token to the core
//! for the duration of one call; when Ruby wants the thread back (Thread#kill, Timeout,
//! Ctrl-C) it calls `cancel` from another thread, which shuts the socket down so the blocked
//! read returns at once. The connection is then discarded, never reused.

use parking_lot::Mutex;
use std::os::fd::RawFd;

#[derive(Default)]
pub struct CancelToken {
    state: Mutex<CancelState>,
}

#[derive(Default)]
struct CancelState {
    cancelled: bool,
    watched_fd: Option<RawFd>,
}

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        let mut state = self.state.lock();
        state.cancelled = true;
        if let Some(fd) = state.watched_fd {
            // SAFETY: the fd is registered only while the owning connection is alive and in
            // use by this call (`watch` guard), so it cannot have been closed or reused.
            unsafe {
                libc::shutdown(fd, libc::SHUT_RDWR);
            }
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.state.lock().cancelled
    }

    /// Registers the socket the call is about to wait on. Fails if the call was already
    /// cancelled, so no new I/O starts after an interrupt.
    pub(crate) fn watch(&self, fd: RawFd) -> Option<WatchGuard<'_>> {
        let mut state = self.state.lock();
        if state.cancelled {
            return None;
        }
        state.watched_fd = Some(fd);
        Some(WatchGuard { token: self })
    }
}

pub(crate) struct WatchGuard<'a> {
    token: &'a CancelToken,
}

impl Drop for WatchGuard<'_> {
    fn drop(&mut self) {
        self.token.state.lock().watched_fd = None;
    }
}
