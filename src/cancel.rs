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

/// Runs `a` and `b` on two threads of their own, each with a cancel token of its own, and
/// returns both results (`None` for one that panicked). The calling thread only
/// waits (see `wait_for_workers`), so an interrupt of it -- a Ruby thread raised into, or
/// Ctrl-C -- cancels both, even while they are blocked on a hung server.
pub fn both<A: Send, B: Send>(
    cancel: &CancelToken,
    a: impl FnOnce(&CancelToken) -> A + Send,
    b: impl FnOnce(&CancelToken) -> B + Send,
) -> (Option<A>, Option<B>) {
    let tokens = [CancelToken::new(), CancelToken::new()];
    std::thread::scope(|scope| {
        let (token_a, token_b) = (&tokens[0], &tokens[1]);
        let a = scope.spawn(move || a(token_a));
        let b = scope.spawn(move || b(token_b));
        wait_for_workers(cancel, &tokens, || a.is_finished() && b.is_finished());
        (a.join().ok(), b.join().ok())
    })
}

/// `both`, for any number of jobs of one kind: each on a thread of its own with a token of its
/// own; `None` for one that panicked.
pub fn all<T: Send, J: FnOnce(&CancelToken) -> T + Send>(
    cancel: &CancelToken,
    jobs: Vec<J>,
) -> Vec<Option<T>> {
    let tokens: Vec<CancelToken> = jobs.iter().map(|_| CancelToken::new()).collect();
    std::thread::scope(|scope| {
        let workers: Vec<_> = jobs
            .into_iter()
            .zip(&tokens)
            .map(|(job, token)| scope.spawn(move || job(token)))
            .collect();
        wait_for_workers(cancel, &tokens, || workers.iter().all(|w| w.is_finished()));
        workers.into_iter().map(|w| w.join().ok()).collect()
    })
}

/// How often a thread waiting for its workers looks whether they are done.
const WORKER_POLL_MS: libc::c_int = 2;

/// Waits until `finished()`, interruptibly: Ruby interrupts a thread by signalling it, which
/// cuts the short `poll` sleeps short; the caller's interrupt check (or a cancel of its own
/// token, for a worker that has workers of its own) then cancels every worker, whose blocked
/// reads return at once.
fn wait_for_workers(cancel: &CancelToken, workers: &[CancelToken], finished: impl Fn() -> bool) {
    let mut cancelled = false;
    while !finished() {
        // SAFETY: poll with no descriptors only sleeps (or returns EINTR on a signal).
        let slept = unsafe { libc::poll(std::ptr::null_mut(), 0, WORKER_POLL_MS) };
        let interrupted =
            slept < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR);
        if !cancelled && (cancel.is_cancelled() || (interrupted && cancel.stop_after_signal())) {
            workers.iter().for_each(CancelToken::cancel);
            cancelled = true;
        }
    }
}
