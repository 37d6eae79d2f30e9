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

/// Sleeps `duration`, unless the call is cancelled or interrupted (a signal cuts the sleep short
/// and the interrupt check says stop): whether it slept without being told to stop.
pub fn pause(cancel: &CancelToken, duration: std::time::Duration) -> bool {
    if cancel.is_cancelled() {
        return false;
    }
    let ts = libc::timespec {
        tv_sec: duration.as_secs() as libc::time_t,
        tv_nsec: duration.subsec_nanos() as libc::c_long,
    };
    // SAFETY: ppoll with no descriptors only sleeps (or returns EINTR on a signal).
    let slept = unsafe { libc::ppoll(std::ptr::null_mut(), 0, &ts, std::ptr::null()) };
    let told_to_stop = was_interrupted(slept) && cancel.stop_after_signal();
    !told_to_stop && !cancel.is_cancelled()
}

/// Runs `a` and `b` on two threads of their own, each with a cancel token of its own, and
/// returns both results (`None` for one that panicked). The calling thread only waits (see
/// `Workers::wait`), so an interrupt of it -- a Ruby thread raised into, or Ctrl-C -- cancels
/// both, even while they are blocked on a hung server.
pub fn both<A: Send, B: Send>(
    cancel: &CancelToken,
    a: impl FnOnce(&CancelToken) -> A + Send,
    b: impl FnOnce(&CancelToken) -> B + Send,
) -> (Option<A>, Option<B>) {
    let workers = Workers::new(2);
    std::thread::scope(|scope| {
        let a = scope.spawn(|| workers.run(0, a));
        let b = scope.spawn(|| workers.run(1, b));
        workers.wait(cancel, || a.is_finished() && b.is_finished());
        (a.join().ok(), b.join().ok())
    })
}

/// `both`, for any number of jobs of one kind: each on a thread of its own with a token of its
/// own; `None` for one that panicked.
pub fn all<T: Send, J: FnOnce(&CancelToken) -> T + Send>(
    cancel: &CancelToken,
    jobs: Vec<J>,
) -> Vec<Option<T>> {
    let workers = Workers::new(jobs.len());
    std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .into_iter()
            .enumerate()
            .map(|(i, job)| {
                let workers = &workers;
                scope.spawn(move || workers.run(i, job))
            })
            .collect();
        workers.wait(cancel, || handles.iter().all(|h| h.is_finished()));
        handles.into_iter().map(|h| h.join().ok()).collect()
    })
}

/// Worker threads' cancel tokens, and a socket pair each finished worker writes a byte to, so
/// the waiting thread wakes the moment one is done.
struct Workers {
    tokens: Vec<CancelToken>,
    done: Option<(
        std::os::unix::net::UnixStream,
        std::os::unix::net::UnixStream,
    )>,
}

/// How long a waiting thread sleeps before looking again, with the socket pair (it wakes when a
/// job is done) and without it.
const WORKER_POLL_MS: libc::c_int = 50;
const WORKER_POLL_FALLBACK_MS: libc::c_int = 1;

impl Workers {
    fn new(count: usize) -> Self {
        Workers {
            tokens: (0..count).map(|_| CancelToken::new()).collect(),
            // Without a socket pair (out of descriptors), the waiting thread polls every ms.
            done: std::os::unix::net::UnixStream::pair()
                .and_then(|(tx, rx)| rx.set_nonblocking(true).map(|()| (tx, rx)))
                .ok(),
        }
    }

    fn run<T>(&self, i: usize, job: impl FnOnce(&CancelToken) -> T) -> T {
        /// Says the job is done when dropped, panicking or not.
        struct Done<'w>(&'w Workers);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                if let Some((tx, _)) = &self.0.done {
                    let _ = std::io::Write::write(&mut &*tx, &[1]);
                }
            }
        }
        let _done = Done(self);
        job(&self.tokens[i])
    }

    /// Waits until every job is done (`finished()` without the socket pair), interruptibly: Ruby
    /// interrupts a thread by signalling it, which cuts the `poll` short; the caller's interrupt
    /// check (or a cancel of its own token, for a worker that has workers of its own) then
    /// cancels every worker, whose blocked reads return at once.
    fn wait(&self, cancel: &CancelToken, finished: impl Fn() -> bool) {
        use std::os::fd::AsRawFd;
        let mut cancelled = false;
        let mut done = 0;
        loop {
            let interrupted = match &self.done {
                Some(_) if done >= self.tokens.len() => break,
                None if finished() => break,
                Some((_, rx)) => {
                    let mut fd = libc::pollfd {
                        fd: rx.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd, alive for the call.
                    let slept = unsafe { libc::poll(&mut fd, 1, WORKER_POLL_MS) };
                    let interrupted = was_interrupted(slept);
                    let mut drained = [0u8; 64];
                    while let Ok(n @ 1..) = std::io::Read::read(&mut &*rx, &mut drained) {
                        done += n;
                    }
                    interrupted
                }
                // SAFETY: poll with no descriptors only sleeps (or returns EINTR on a signal).
                None => was_interrupted(unsafe {
                    libc::poll(std::ptr::null_mut(), 0, WORKER_POLL_FALLBACK_MS)
                }),
            };
            if !cancelled && (cancel.is_cancelled() || (interrupted && cancel.stop_after_signal()))
            {
                self.tokens.iter().for_each(CancelToken::cancel);
                cancelled = true;
            }
        }
    }
}

/// Whether a `poll` that returned `slept` was cut short by a signal (read before anything else
/// can change errno).
fn was_interrupted(slept: libc::c_int) -> bool {
    slept < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn runs_jobs_side_by_side_and_a_cancel_of_the_caller_reaches_every_worker() {
        let cancel = CancelToken::new();
        assert_eq!(both(&cancel, |_| 1, |_| "two"), (Some(1), Some("two")));
        assert_eq!(all(&cancel, vec![|_: &CancelToken| 3; 3]), vec![Some(3); 3]);
        let blocked = |token: &CancelToken| {
            while !token.is_cancelled() {
                std::thread::sleep(Duration::from_millis(1));
            }
            "stopped"
        };

        std::thread::scope(|scope| {
            scope.spawn(|| {
                std::thread::sleep(Duration::from_millis(20));
                cancel.cancel();
            });
            assert_eq!(
                both(&cancel, blocked, |_| "done"),
                (Some("stopped"), Some("done"))
            );
        });
    }
}
