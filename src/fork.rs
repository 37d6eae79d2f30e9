//! Fork safety. A forked child (Puma worker, Sidekiq process) inherits the parent's sockets;
//! writing to one would interleave the two processes' commands on one connection. A
//! `pthread_atfork` child handler bumps a generation number, so each store can tell cheaply,
//! without a getpid syscall per command, that it is now in a new process. The same handlers
//! keep the core's short-lived locks from being inherited locked (`ForkSafeMutex`).

use std::any::Any;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once, PoisonError, Weak};

static GENERATION: AtomicU64 = AtomicU64::new(0);
static REGISTER: Once = Once::new();

extern "C" fn bump_generation_in_child() {
    GENERATION.fetch_add(1, Ordering::SeqCst);
}

/// Installs the fork handler once per process image.
pub fn install_handler() {
    REGISTER.call_once(|| {
        // SAFETY: plain functions with no arguments; the child's only touch the locks held by
        // the forking thread and an atomic.
        let rc = unsafe {
            libc::pthread_atfork(
                Some(hold_locks_before_fork),
                Some(release_locks_after_fork),
                Some(after_fork_in_child),
            )
        };
        if rc != 0 {
            tracing::warn!(
                rc,
                "pthread_atfork failed; forked children may reuse sockets"
            );
        }
    });
}

pub fn generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

/// A mutex that a fork never leaves locked in the child. `fork` copies only the thread that
/// called it: a lock another thread held at that moment would stay locked in the child for
/// ever, and the child's first call needing it would hang (a Puma or Sidekiq worker forked
/// while a request thread journals a big MSET). Every such mutex is registered; a
/// `pthread_atfork` handler takes them all just before the fork (waiting for whoever holds one
/// to finish its short critical section) and releases them on both sides after it, so the
/// child inherits each unlocked and its data whole. Only for locks held briefly and never
/// across I/O or while taking another of them: the fork waits for each.
///
/// Built on `std::sync::Mutex`, not parking_lot's: unlocking a parking_lot mutex that another
/// thread waits for may hand it straight to that thread (its eventual fairness) -- in the child
/// that thread does not exist, and the lock would stay taken. std's futex mutex just clears it.
pub struct ForkSafeMutex<T> {
    inner: Arc<Mutex<T>>,
}

impl<T: Send + 'static> ForkSafeMutex<T> {
    pub fn new(value: T) -> Self {
        install_handler();
        let inner = Arc::new(Mutex::new(value));
        let weak: Weak<dyn HeldAcrossFork> = Arc::downgrade(&inner) as Weak<dyn HeldAcrossFork>;
        let mut registry = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
        if registry.len() >= 64 && registry.len().is_power_of_two() {
            registry.retain(|lock| lock.strong_count() > 0);
        }
        registry.push(weak);
        ForkSafeMutex { inner }
    }
}

impl<T> ForkSafeMutex<T> {
    /// A panic while the lock was held leaves the data as the panicking code left it; the
    /// core's critical sections cannot panic half-way, so poisoning is not propagated.
    pub fn lock(&self) -> MutexGuard<'_, T> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T: Default + Send + 'static> Default for ForkSafeMutex<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for ForkSafeMutex<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

trait HeldAcrossFork: Send + Sync {
    /// Takes the lock; it is released when the returned value is dropped.
    fn hold(self: Arc<Self>) -> Box<dyn Any>;
}

impl<T: Send + 'static> HeldAcrossFork for Mutex<T> {
    fn hold(self: Arc<Self>) -> Box<dyn Any> {
        /// Fields drop in order: the guard before the mutex it borrows.
        struct Held<T: 'static> {
            _guard: MutexGuard<'static, T>,
            _mutex: Arc<Mutex<T>>,
        }
        let guard = self.lock().unwrap_or_else(PoisonError::into_inner);
        // SAFETY: the guard borrows the mutex that `_mutex` keeps alive, and is dropped first.
        let guard: MutexGuard<'static, T> = unsafe { std::mem::transmute(guard) };
        Box::new(Held {
            _guard: guard,
            _mutex: self,
        })
    }
}

static REGISTRY: Mutex<Vec<Weak<dyn HeldAcrossFork>>> = Mutex::new(Vec::new());

thread_local! {
    /// The guards held across the current fork, by the forking thread (which is the child's
    /// only thread: the thread-local comes along).
    static HELD: RefCell<Vec<Box<dyn Any>>> = const { RefCell::new(Vec::new()) };
}

extern "C" fn hold_locks_before_fork() {
    let registry = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
    let live: Vec<Arc<dyn HeldAcrossFork>> = registry.iter().filter_map(Weak::upgrade).collect();
    let mut held: Vec<Box<dyn Any>> = Vec::with_capacity(live.len() + 1);
    // The registry stays locked through the fork (released last): no lock is added half-way.
    held.push(Box::new(registry));
    held.extend(live.into_iter().map(HeldAcrossFork::hold));
    HELD.with(|slot| *slot.borrow_mut() = held);
}

extern "C" fn release_locks_after_fork() {
    let held = HELD.with(|slot| std::mem::take(&mut *slot.borrow_mut()));
    // Released in reverse: the registry last.
    held.into_iter().rev().for_each(drop);
}

extern "C" fn after_fork_in_child() {
    release_locks_after_fork();
    bump_generation_in_child();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::time::{Duration, Instant};

    #[test]
    fn a_child_forked_while_another_thread_holds_a_lock_finds_it_free() {
        let journal = Arc::new(ForkSafeMutex::new(Vec::<u64>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let busy = {
            let (journal, stop) = (Arc::clone(&journal), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let mut entries = journal.lock();
                    entries.clear();
                    // A long critical section, so most forks land inside it.
                    entries.extend(0..50_000);
                }
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        for _ in 0..20 {
            // SAFETY: the child only takes the lock, checks the data and exits at once.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                let whole = journal.lock().len().is_multiple_of(50_000);
                unsafe { libc::_exit(if whole { 0 } else { 2 }) };
            }
            assert!(pid > 0, "fork failed");
            let started = Instant::now();
            let mut status = 0;
            loop {
                // SAFETY: waits for our own child.
                let done = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
                if done == pid {
                    break;
                }
                if started.elapsed() > Duration::from_secs(5) {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    panic!("the child hung on a lock held by a thread it does not have");
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        }
        stop.store(true, Ordering::Relaxed);
        busy.join().expect("busy thread");
    }
}
