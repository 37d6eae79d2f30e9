//! The keys the non-default store missed. When a write to it fails, times out, is skipped by the
//! circuit breaker, or is part of a pipeline whose results differed, its keys are recorded
//! here; reads of a recorded key trust only the store that got the write, and a background
//! re-sync copies each key over once the lagging store answers again. Bounded: past its
//! capacity it stops recording and says a full verify is needed, instead of growing without
//! limit.

use crate::fork::ForkSafeMutex;
use crate::healing::write_epochs::{WriteEpochs, WriteInFlight};
use crate::routing::Role;
use crate::transport::cancel::CancelToken;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The store that missed the write.
    pub lagging: Role,
    /// Bumped each time the key is recorded again, so a re-sync that raced with a newer miss
    /// does not drop it.
    pub generation: u64,
    /// Dual writes of the key on their way to the stores (see `writes_begin`).
    in_flight: u32,
    /// The re-sync is copying and comparing the key: writes of it wait (see `fence`).
    fenced: bool,
}

/// How long a write waits for the re-sync to finish with a key before going ahead anyway (the
/// key is then recorded again, so that round does not settle it).
const FENCE_WAIT: Duration = Duration::from_millis(100);
const FENCE_POLL: Duration = Duration::from_micros(100);

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
    /// Every dual write in flight, for a copy to wait for those that began before it.
    epochs: WriteEpochs,
    /// The process the entries' `in_flight` and `fenced` marks were made in (see
    /// `entries_map`).
    fork_generation: std::sync::atomic::AtomicU64,
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
            epochs: WriteEpochs::default(),
            fork_generation: std::sync::atomic::AtomicU64::new(crate::fork::generation()),
        }
    }

    /// The entries, locked. In a forked child, the writes and copies the parent had under way
    /// (other threads, which the child does not have) will never end here: their marks are
    /// cleared the first time the child looks, or its keys would wait for them for ever.
    fn entries_map(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Entry>> {
        let mut map = self.keys.lock();
        let now = crate::fork::generation();
        if self.fork_generation.load(Ordering::Acquire) != now {
            for entry in map.values_mut() {
                entry.in_flight = 0;
                entry.fenced = false;
            }
            self.fork_generation.store(now, Ordering::Release);
        }
        map
    }

    /// Counts a dual write (or a replay on the other store) about to be sent, until the guard is
    /// dropped: see `write_epochs`. Taken before the write looks at the journal.
    pub fn write_begins(&self) -> WriteInFlight<'_> {
        self.epochs.begin()
    }

    /// Waits, at most `timeout`, until every dual write that began before this call was
    /// answered: one that looked at the journal before a key was recorded is not held back by
    /// the fence, and would otherwise be undone by a copy of the key. Whether they all were.
    pub fn wait_for_earlier_writes(&self, timeout: Duration, cancel: &CancelToken) -> bool {
        self.epochs.wait_for_earlier_writes(timeout, cancel)
    }

    /// Records keys that `lagging` missed; `None` (keys unknown) marks a full verify as needed.
    /// Returns how many keys could not be recorded because the journal is full.
    pub fn record<'k>(
        &self,
        keys: Option<impl IntoIterator<Item = &'k [u8]>>,
        lagging: Role,
    ) -> u64 {
        self.record_with(keys, lagging, None)
    }

    /// Records every one of `keys` as missed by `lagging`, or none of them when they do not all
    /// fit: a repair that finds the journal full copies directly instead of overflowing it
    /// (an overflow would ask for the very full verify that is running).
    pub fn record_if_room(&self, keys: &[Vec<u8>], lagging: Role) -> bool {
        let capacity = self.capacity.load(Ordering::Relaxed);
        let mut map = self.entries_map();
        let new = keys.iter().filter(|key| !map.contains_key(*key)).count();
        if map.len() + new > capacity {
            return false;
        }
        for key in keys {
            let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
            let entry = map.entry(key.clone()).or_insert(Entry {
                lagging,
                generation,
                in_flight: 0,
                fenced: false,
            });
            entry.lagging = lagging;
            entry.generation = generation;
        }
        self.len.store(map.len(), Ordering::Release);
        self.peak.fetch_max(map.len(), Ordering::Relaxed);
        true
    }

    /// `record`, for a write about to be sent to the other store only: the keys are also
    /// registered as written (`writes_begin`), in one step, so the re-sync cannot copy and
    /// settle them before the write lands. Hand `registered` to `writes_end` afterwards.
    pub fn record_in_flight<'k>(
        &self,
        keys: Option<impl IntoIterator<Item = &'k [u8]>>,
        lagging: Role,
        registered: &mut Vec<Vec<u8>>,
    ) -> u64 {
        self.record_with(keys, lagging, Some(registered))
    }

    fn record_with<'k>(
        &self,
        keys: Option<impl IntoIterator<Item = &'k [u8]>>,
        lagging: Role,
        mut registered: Option<&mut Vec<Vec<u8>>>,
    ) -> u64 {
        let Some(keys) = keys else {
            self.require_full_verify(Some(lagging.other()));
            return 0;
        };
        let capacity = self.capacity.load(Ordering::Relaxed);
        let mut map = self.entries_map();
        let mut dropped = 0;
        for key in keys {
            let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
            let in_flight = u32::from(registered.is_some());
            if let Some(entry) = map.get_mut(key) {
                entry.lagging = lagging;
                entry.generation = generation;
                entry.in_flight += in_flight;
            } else if map.len() < capacity {
                map.insert(
                    key.to_vec(),
                    Entry {
                        lagging,
                        generation,
                        in_flight,
                        fenced: false,
                    },
                );
            } else {
                dropped += 1;
                continue;
            }
            if let Some(registered) = registered.as_deref_mut() {
                registered.push(key.to_vec());
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
        self.entries_map().get(key).map(|e| e.lagging)
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
        let mut map = self.entries_map();
        map.clear();
        self.len.store(0, Ordering::Release);
        drop(map);
        self.full_verify_needed.store(false, Ordering::Release);
        self.complete.store(COMPLETE_UNKNOWN, Ordering::Release);
        self.agree.store(false, Ordering::Release);
        self.disturbances.fetch_add(1, Ordering::AcqRel);
    }

    /// Drops the keys recorded as missed by `lagging` (`None`: by either store): they must not
    /// be copied onto it any more. Keys that could not be recorded stay counted.
    pub fn forget_lagging(&self, lagging: Option<Role>) {
        let mut map = self.entries_map();
        map.retain(|_, entry| lagging.is_some_and(|role| entry.lagging != role));
        self.len.store(map.len(), Ordering::Release);
    }

    /// The entries of those of `keys` that are recorded.
    pub fn entries(&self, keys: &[Vec<u8>]) -> Vec<(Vec<u8>, Entry)> {
        if self.is_empty() {
            return Vec::new();
        }
        let map = self.entries_map();
        keys.iter()
            .filter_map(|key| map.get(key).map(|entry| (key.clone(), *entry)))
            .collect()
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
        let mut map = self.entries_map();
        let settled = map
            .get(key)
            .is_some_and(|now| now.generation == entry.generation && now.lagging == entry.lagging);
        if settled {
            map.remove(key);
        }
        self.len.store(map.len(), Ordering::Release);
        settled
    }

    /// A dual write of `keys` is about to be sent. For each recorded one, it waits while the
    /// re-sync copies and compares it (bounded by `FENCE_WAIT`), then keeps the re-sync from
    /// taking it until the write has been answered (`writes_end`): a write landing between the
    /// copy and the comparison could otherwise be lost on the lagging store while both stores
    /// look alike. Free while nothing is recorded. Returns the keys to hand to `writes_end`.
    pub fn writes_begin<'k>(&self, keys: impl IntoIterator<Item = &'k [u8]>) -> Vec<Vec<u8>> {
        if self.is_empty() {
            return Vec::new();
        }
        let keys: Vec<&[u8]> = keys.into_iter().collect();
        let deadline = Instant::now() + FENCE_WAIT;
        loop {
            let mut map = self.entries_map();
            let fenced = keys
                .iter()
                .any(|key| map.get(*key).is_some_and(|entry| entry.fenced));
            if !fenced || Instant::now() >= deadline {
                let mut registered = Vec::new();
                for key in keys {
                    if let Some(entry) = map.get_mut(key) {
                        if entry.fenced {
                            // Going ahead while the re-sync holds the key: this round must
                            // not settle it.
                            entry.generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
                        }
                        entry.in_flight += 1;
                        registered.push(key.to_vec());
                    }
                }
                return registered;
            }
            drop(map);
            std::thread::sleep(FENCE_POLL);
        }
    }

    /// The write registered by `writes_begin` in fork generation `registered_in` was answered
    /// (or failed). Registered before a fork, it is left alone in the child: the child's
    /// journal cleared those marks (`entries_map`), and the counts now are the child's own.
    pub fn writes_end(&self, registered: Vec<Vec<u8>>, registered_in: u64) {
        if registered.is_empty() || registered_in != crate::fork::generation() {
            return;
        }
        let mut map = self.entries_map();
        for key in registered {
            if let Some(entry) = map.get_mut(&key) {
                entry.in_flight = entry.in_flight.saturating_sub(1);
            }
        }
    }

    /// For the re-sync: takes the keys of `batch` that no write is on its way to, and holds
    /// new writes of them back until `release`. The copy and comparison that follow then see
    /// every write of those keys either before or after them, never in between.
    pub fn fence(&self, batch: Vec<(Vec<u8>, Entry)>) -> Vec<(Vec<u8>, Entry)> {
        let mut map = self.entries_map();
        batch
            .into_iter()
            .filter_map(|(key, seen)| {
                let entry = map.get_mut(&key)?;
                if entry.in_flight > 0 || entry.fenced || entry.lagging != seen.lagging {
                    return None;
                }
                entry.fenced = true;
                Some((key, *entry))
            })
            .collect()
    }

    /// Ends the re-sync's hold on a fenced key, dropping it if the stores agreed on it and it
    /// was not recorded again meanwhile. Whether it was dropped.
    pub fn release(&self, key: &[u8], entry: Entry, equal: bool) -> bool {
        let mut map = self.entries_map();
        let Some(now) = map.get_mut(key) else {
            return false;
        };
        now.fenced = false;
        let settled = equal && now.generation == entry.generation && now.lagging == entry.lagging;
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
    fn records_a_repair_whole_or_not_at_all_without_overflowing() {
        let journal = Journal::new(3);
        journal.record(Some([&b"a"[..]]), Role::Primary);
        let keys = |names: &[&str]| {
            names
                .iter()
                .map(|n| n.as_bytes().to_vec())
                .collect::<Vec<_>>()
        };

        assert!(!journal.record_if_room(&keys(&["b", "c", "d"]), Role::Secondary));
        assert_eq!(journal.len(), 1);
        assert!(journal.record_if_room(&keys(&["a", "b", "c"]), Role::Secondary));
        assert_eq!(journal.lagging(b"a"), Some(Role::Secondary));
        assert_eq!((journal.len(), journal.overflows()), (3, 0));
        assert!(!journal.full_verify_needed());
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
