//! The keys the non-default store missed. When a write to it fails, times out, is skipped by the
//! circuit breaker, or is part of a pipeline whose results differed, its keys are recorded
//! here; reads of a recorded key trust only the store that got the write, and a background
//! re-sync copies each key over once the lagging store answers again. Bounded: past its
//! capacity it stops recording and says a full verify is needed, instead of growing without
//! limit.

use crate::fork::ForkSafeMutex;
use crate::routing::Role;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The store that missed the write.
    pub lagging: Role,
    /// Bumped each time the key is recorded again, so a re-sync that raced with a newer miss
    /// does not drop it.
    pub generation: u64,
}

const COMPLETE_UNKNOWN: u8 = 0;
const COMPLETE_PRIMARY: u8 = 1;
const COMPLETE_SECONDARY: u8 = 2;
const COMPLETE_NEITHER: u8 = 3;

pub struct Journal {
    capacity: AtomicUsize,
    keys: ForkSafeMutex<HashMap<Vec<u8>, Entry>>,
    len: AtomicUsize,
    peak: AtomicUsize,
    next_generation: std::sync::atomic::AtomicU64,
    /// Some miss could not be recorded (full, or a write without nameable keys such as
    /// FLUSHDB), or a store restarted and may have lost data: only a full verify can tell what
    /// differs.
    full_verify_needed: AtomicBool,
    /// Bumped each time a full verify becomes needed, so a verify that started before the
    /// latest such event cannot clear it.
    disturbances: std::sync::atomic::AtomicU64,
    /// While a full verify is needed: the store known to hold every write since (`COMPLETE_*`).
    complete: std::sync::atomic::AtomicU8,
    /// A full verify found the stores in agreement and nothing disturbed them since.
    agree: AtomicBool,
    overflows: std::sync::atomic::AtomicU64,
}

impl Journal {
    pub fn new(capacity: usize) -> Self {
        Journal {
            capacity: AtomicUsize::new(capacity),
            keys: ForkSafeMutex::new(HashMap::new()),
            len: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            next_generation: std::sync::atomic::AtomicU64::new(1),
            full_verify_needed: AtomicBool::new(false),
            disturbances: std::sync::atomic::AtomicU64::new(0),
            complete: std::sync::atomic::AtomicU8::new(COMPLETE_UNKNOWN),
            agree: AtomicBool::new(false),
            overflows: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Records keys that `lagging` missed; `None` (keys unknown) marks a full verify as needed.
    /// Returns how many keys could not be recorded because the journal is full.
    pub fn record<'k>(
        &self,
        keys: Option<impl IntoIterator<Item = &'k [u8]>>,
        lagging: Role,
    ) -> u64 {
        let Some(keys) = keys else {
            self.require_full_verify(Some(lagging.other()));
            return 0;
        };
        let capacity = self.capacity.load(Ordering::Relaxed);
        let mut map = self.keys.lock();
        let mut dropped = 0;
        for key in keys {
            let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
            if let Some(entry) = map.get_mut(key) {
                *entry = Entry {
                    lagging,
                    generation,
                };
            } else if map.len() < capacity {
                map.insert(
                    key.to_vec(),
                    Entry {
                        lagging,
                        generation,
                    },
                );
            } else {
                dropped += 1;
            }
        }
        self.len.store(map.len(), Ordering::Release);
        self.peak.fetch_max(map.len(), Ordering::Relaxed);
        drop(map);
        if dropped > 0 {
            self.require_full_verify(Some(lagging.other()));
            self.overflows.fetch_add(dropped, Ordering::Relaxed);
        }
        dropped
    }

    /// The store a key's latest write missed, if the key is recorded. Free when empty.
    pub fn lagging(&self, key: &[u8]) -> Option<Role> {
        if self.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.keys.lock().get(key).map(|e| e.lagging)
    }

    pub fn is_empty(&self) -> bool {
        self.len.load(Ordering::Acquire) == 0
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    pub fn overflows(&self) -> u64 {
        self.overflows.load(Ordering::Relaxed)
    }

    pub fn full_verify_needed(&self) -> bool {
        self.full_verify_needed.load(Ordering::Acquire)
    }

    pub fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity, Ordering::Relaxed);
    }

    /// Something happened that the journal cannot account for (a miss it could not record, a
    /// store that restarted, dual-write turned off for a while): the stores may differ anywhere
    /// until a full verify says otherwise. `complete`: the store that still got every write (the
    /// other one missed some, or lost its data), if one did.
    pub fn require_full_verify(&self, complete: Option<Role>) {
        let wanted = match complete {
            Some(Role::Primary) => COMPLETE_PRIMARY,
            Some(Role::Secondary) => COMPLETE_SECONDARY,
            None => COMPLETE_NEITHER,
        };
        // Two disturbances that each spared a different store leave neither complete.
        let _ = self
            .complete
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
                Some(match current {
                    COMPLETE_UNKNOWN => wanted,
                    same if same == wanted => same,
                    _ => COMPLETE_NEITHER,
                })
            });
        self.agree.store(false, Ordering::Release);
        self.disturbances.fetch_add(1, Ordering::AcqRel);
        self.full_verify_needed.store(true, Ordering::Release);
    }

    /// While a full verify is needed, the store that holds every write since the disturbance:
    /// reads go there. `None` when neither is known to.
    pub fn complete_store(&self) -> Option<Role> {
        match self.complete.load(Ordering::Acquire) {
            COMPLETE_PRIMARY => Some(Role::Primary),
            COMPLETE_SECONDARY => Some(Role::Secondary),
            _ => None,
        }
    }

    /// Something happened that makes a verify running now unable to vouch for the stores (dual-
    /// write turned off: writes reach one store only), without a full verify being needed for it
    /// yet.
    pub fn disturb(&self) {
        self.agree.store(false, Ordering::Release);
        self.disturbances.fetch_add(1, Ordering::AcqRel);
    }

    /// A full verify found the stores in agreement, and nothing has disturbed them since (misses
    /// since are journaled).
    pub fn stores_agree(&self) -> bool {
        self.agree.load(Ordering::Acquire)
    }

    /// Taken when a full verify starts; `verified` accepts it only if nothing disturbed the
    /// stores since.
    pub fn verify_token(&self) -> u64 {
        self.disturbances.load(Ordering::Acquire)
    }

    /// A full verify that started at `token` found the stores in agreement: if nothing happened
    /// since that it could not have seen, no full verify is needed any more. Returns whether
    /// that is so.
    pub fn verified(&self, token: u64) -> bool {
        if self.disturbances.load(Ordering::Acquire) != token {
            return false;
        }
        self.full_verify_needed.store(false, Ordering::Release);
        self.complete.store(COMPLETE_UNKNOWN, Ordering::Release);
        self.agree.store(true, Ordering::Release);
        // A disturbance that slipped in between the check and the store sets the flag again.
        if self.disturbances.load(Ordering::Acquire) != token {
            self.full_verify_needed.store(true, Ordering::Release);
            self.complete.store(COMPLETE_NEITHER, Ordering::Release);
            self.agree.store(false, Ordering::Release);
            return false;
        }
        true
    }

    /// Forgets everything: no key journaled, no full verify needed (the stores were wiped).
    pub fn clear(&self) {
        let mut map = self.keys.lock();
        map.clear();
        self.len.store(0, Ordering::Release);
        drop(map);
        self.full_verify_needed.store(false, Ordering::Release);
        self.complete.store(COMPLETE_UNKNOWN, Ordering::Release);
        self.agree.store(false, Ordering::Release);
        self.disturbances.fetch_add(1, Ordering::AcqRel);
    }

    /// Up to `n` recorded keys, still recorded until `settle`.
    pub fn batch(&self, n: usize) -> Vec<(Vec<u8>, Entry)> {
        self.keys
            .lock()
            .iter()
            .take(n)
            .map(|(k, e)| (k.clone(), *e))
            .collect()
    }

    /// Drops a key once both stores agree on it, unless it was recorded again since `entry`.
    pub fn settle(&self, key: &[u8], entry: Entry) -> bool {
        let mut map = self.keys.lock();
        let settled = map.get(key) == Some(&entry);
        if settled {
            map.remove(key);
        }
        self.len.store(map.len(), Ordering::Release);
        settled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_deduplicates_and_settles_only_the_version_it_copied() {
        let journal = Journal::new(10);
        journal.record(Some([&b"a"[..], b"b"]), Role::Primary);
        journal.record(Some([&b"a"[..]]), Role::Primary);
        assert_eq!(journal.len(), 2);
        assert_eq!(journal.lagging(b"a"), Some(Role::Primary));

        let batch = journal.batch(10);
        let (key, entry) = batch.iter().find(|(k, _)| k == b"a").cloned().unwrap();
        journal.record(Some([&b"a"[..]]), Role::Primary); // missed again while re-syncing
        assert!(!journal.settle(&key, entry));
        let fresh = journal
            .batch(10)
            .into_iter()
            .find(|(k, _)| k == b"a")
            .unwrap()
            .1;
        assert!(journal.settle(b"a", fresh));
        assert_eq!(journal.lagging(b"a"), None);
    }

    #[test]
    fn stays_bounded_and_asks_for_a_full_verify() {
        let journal = Journal::new(2);
        let dropped = journal.record(Some([&b"a"[..], b"b", b"c"]), Role::Secondary);
        assert_eq!((dropped, journal.len()), (1, 2));
        assert!(journal.full_verify_needed());
        journal.record(None::<[&[u8]; 0]>, Role::Secondary);
        assert_eq!(journal.overflows(), 1);
    }

    #[test]
    fn only_a_verify_that_began_after_the_last_disturbance_clears_the_need_for_one() {
        let journal = Journal::new(1);
        journal.record(Some([&b"a"[..], b"b"]), Role::Primary); // overflows
        assert_eq!(journal.complete_store(), Some(Role::Secondary));
        let before_restart = journal.verify_token();
        journal.require_full_verify(Some(Role::Secondary)); // the primary restarted meanwhile
        assert!(!journal.verified(before_restart));
        assert!(journal.full_verify_needed());

        let token = journal.verify_token();
        assert!(journal.verified(token));
        assert!(!journal.full_verify_needed());
        assert_eq!(journal.complete_store(), None);
    }

    #[test]
    fn knows_no_complete_store_once_each_store_missed_something() {
        let journal = Journal::new(10);
        journal.require_full_verify(Some(Role::Primary));
        assert_eq!(journal.complete_store(), Some(Role::Primary));
        journal.require_full_verify(Some(Role::Secondary));
        assert_eq!(journal.complete_store(), None);
    }
}
