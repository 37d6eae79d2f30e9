//! Fork detection. A forked child (Puma worker, Sidekiq process) inherits the parent's
//! sockets; writing to one would interleave the two processes' commands on one connection.
//! A `pthread_atfork` child handler bumps a generation number, so each store can tell cheaply,
//! without a getpid syscall per command, that it is now in a new process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

static GENERATION: AtomicU64 = AtomicU64::new(0);
static REGISTER: Once = Once::new();

extern "C" fn bump_generation_in_child() {
    GENERATION.fetch_add(1, Ordering::SeqCst);
}

/// Installs the fork handler once per process image.
pub fn install_handler() {
    REGISTER.call_once(|| {
        // SAFETY: the handler only touches an atomic, which is async-signal-safe.
        let rc = unsafe { libc::pthread_atfork(None, None, Some(bump_generation_in_child)) };
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
