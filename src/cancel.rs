//! Interrupting a call that is waiting on the network. Two ways in:
//! - `cancel` from another thread shuts the socket the call waits on down, so the blocked read
//!   returns at once (the connection is then discarded, never reused);
//! - a signal interrupting the blocked syscall (EINTR) makes the call ask its interrupt check
//!   whether to stop. The Ruby binding uses this one: Ruby interrupts a thread blocked in I/O by
//!   signalling it, and the check asks Ruby (with the GVL) whether an exception is pending.

use parking_lot::Mutex;
use std::os::fd::RawFd;

#[derive(Default)]
pub struct CancelToken {
    state: Mutex<CancelState>,
    /// Called after a syscall was interrupted by a signal: true means stop the call.
    interrupt_check: Option<fn() -> bool>,
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

    pub fn with_interrupt_check(check: fn() -> bool) -> Self {
        CancelToken {
            interrupt_check: Some(check),
            ..Self::default()
        }
    }

    /// After EINTR: whether the call must stop rather than retry the syscall.
    pub(crate) fn stop_after_signal(&self) -> bool {
        if self.is_cancelled() {
            return true;
        }
        if self.interrupt_check.is_some_and(|check| check()) {
            self.state.lock().cancelled = true;
            return true;
        }
        false
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
