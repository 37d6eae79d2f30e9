//! Dual writes in flight, counted so that a copy between the stores can wait for those that
//! began before it. The journal's fence holds back writes of a key once the key is journaled;
//! a write that began while the key was not (the journal empty, or the key not in it yet) is not
//! registered with it, and may still be on its way to the lagging store when the re-sync copies
//! the key: the copy then undoes it there, or compares equal before it lands. So each dual write
//! counts itself in the current epoch, and a copy first moves the epoch on and waits until no
//! write of the previous one is left -- a grace period, as in read-copy-update: writes that
//! begin afterwards are in the new epoch and are not waited for (those of the copied keys wait
//! at the fence instead).
//!
//! Each count carries the fork generation it was made in (high 16 bits), so a child never
//! waits for writes its parent had in flight, without a reset that could race with its own.

use crate::fork;
use crate::transport::cancel::CancelToken;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_micros(200);
const GENERATION_SHIFT: u32 = 48;
const COUNT_MASK: u64 = (1 << GENERATION_SHIFT) - 1;

#[derive(Default)]
pub struct WriteEpochs {
    epoch: AtomicU64,
    /// Per slot: the fork generation (high bits) and the writes in flight (low bits).
    in_flight: [AtomicU64; 2],
    /// One grace period at a time (a second one would move the epoch back onto the slot the
    /// first is waiting on): the fork generation of the one waiting, plus one; 0 when none is.
    /// Not a mutex: one held across a fork by a thread the child does not have would stay
    /// taken there, and a `ForkSafeMutex` is not for holding while waiting.
    waiting: AtomicU64,
}

/// A write counted in an epoch until dropped.
pub struct WriteInFlight<'e> {
    epochs: &'e WriteEpochs,
    slot: usize,
    generation: u64,
}

impl Drop for WriteInFlight<'_> {
    fn drop(&mut self) {
        // A count of another generation (this guard crossed a fork) is left alone.
        let _ = self.epochs.in_flight[self.slot].fetch_update(
            Ordering::AcqRel,
            Ordering::Acquire,
            |packed| {
                (packed >> GENERATION_SHIFT == self.generation && packed & COUNT_MASK > 0)
                    .then(|| packed - 1)
            },
        );
    }
}

fn generation() -> u64 {
    fork::generation() & 0xffff
}

impl WriteEpochs {
    /// Counts a dual write about to be sent, until the returned guard is dropped.
    pub fn begin(&self) -> WriteInFlight<'_> {
        let generation = generation();
        // Counted before the write looks at the journal: a copy that journals its keys after
        // this look moves the epoch on afterwards, and so waits for this write.
        let slot = (self.epoch.load(Ordering::SeqCst) % 2) as usize;
        let _ = self.in_flight[slot].fetch_update(Ordering::SeqCst, Ordering::SeqCst, |packed| {
            Some(if packed >> GENERATION_SHIFT == generation {
                packed + 1
            } else {
                (generation << GENERATION_SHIFT) | 1
            })
        });
        WriteInFlight {
            epochs: self,
            slot,
            generation,
        }
    }

    /// Writes of this process (since its last fork) in flight in `slot`.
    fn count(&self, slot: usize) -> u64 {
        let packed = self.in_flight[slot].load(Ordering::SeqCst);
        if packed >> GENERATION_SHIFT == generation() {
            packed & COUNT_MASK
        } else {
            0
        }
    }

    /// Waits until every dual write that began before this call has been answered (or failed),
    /// at most `timeout`, and no longer than the caller's `cancel` allows. Whether they all were.
    pub fn wait_for_earlier_writes(&self, timeout: Duration, cancel: &CancelToken) -> bool {
        let mine = generation() + 1;
        let deadline = Instant::now() + timeout;
        let pause = || Instant::now() < deadline && crate::transport::cancel::pause(cancel, POLL);
        let _one_at_a_time = loop {
            let holder = self.waiting.load(Ordering::Acquire);
            // Free (0), or taken in a generation before a fork: nobody here is waiting.
            if holder != mine
                && self
                    .waiting
                    .compare_exchange(holder, mine, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                break Waiting(&self.waiting);
            }
            if !pause() {
                return false;
            }
        };
        // Writes still counted in the other epoch began before an earlier grace period that ran
        // out of time: they are earlier writes too, and moving the epoch back onto their slot
        // would mix them with later ones. So they drain first.
        let drained = |slot: usize| {
            while self.count(slot) > 0 {
                if !pause() {
                    return false;
                }
            }
            true
        };
        let current = (self.epoch.load(Ordering::SeqCst) % 2) as usize;
        if !drained(1 - current) {
            return false;
        }
        let previous = (self.epoch.fetch_add(1, Ordering::SeqCst) % 2) as usize;
        drained(previous)
    }
}

/// The grace period under way, ended when dropped.
struct Waiting<'e>(&'e AtomicU64);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_the_writes_that_began_before_it_and_not_for_later_ones() {
        let epochs = WriteEpochs::default();
        let cancel = CancelToken::new();
        let earlier = epochs.begin();
        assert!(!epochs.wait_for_earlier_writes(Duration::from_millis(20), &cancel));
        // A grace period that ran out leaves the write counted in the epoch before: the next
        // one waits for it too.
        assert!(!epochs.wait_for_earlier_writes(Duration::from_millis(20), &cancel));
        drop(earlier);
        assert!(epochs.wait_for_earlier_writes(Duration::from_millis(20), &cancel));

        let earlier = epochs.begin();
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| {
                epochs.wait_for_earlier_writes(Duration::from_secs(5), &CancelToken::new())
            });
            while epochs.epoch.load(Ordering::SeqCst) < 3 {
                std::thread::yield_now();
            }
            // A write that begins while the copy waits is in the new epoch.
            let _later = epochs.begin();
            drop(earlier);
            assert!(waiter.join().unwrap_or(false));
        });
    }

    #[test]
    fn gives_up_waiting_when_the_caller_is_cancelled() {
        let epochs = WriteEpochs::default();
        let _stuck = epochs.begin();
        let cancel = CancelToken::new();
        cancel.cancel();
        let started = Instant::now();
        assert!(!epochs.wait_for_earlier_writes(Duration::from_secs(5), &cancel));
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
