//! What one partition's migration has been through, as this process knows it: the keys a store
//! missed (journal), the stores' circuit breakers, the scripts seen, recent write failures,
//! restarts, and whether dual-write was ever on and off again. Shared by every MultiStore of the
//! same partition (instance name and stores) in the process: an application that keeps a pool
//! of them (GitLab's `Wrapper.pool`) must not have one instance read a key another one knows to
//! be stale, nor call the stores safe to switch while another one saw them fail.

use crate::fork::ForkSafeMutex;
use crate::healing::breaker::{Breaker, BreakerSettings};
use crate::healing::journal::Journal;
use crate::healing::scripts::ScriptCache;
use crate::routing::{PerRole, Role};
use crate::transport::config::StoreConfig;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, LazyLock, Weak};
use std::time::Instant;

/// Keys journaled at most: past this a full verify is needed instead of more memory.
pub const DEFAULT_JOURNAL_CAPACITY: usize = 100_000;

/// What this process has seen of the dual-write flag (see `MultiStore::watch_dual_write`):
/// never on, on, or off since it was on -- and then which store was the default (the one that
/// got the writes), or both in turn.
pub const DUAL_WRITE_NEVER_ON: u8 = 0;
pub const DUAL_WRITE_ON: u8 = 1;
pub const DUAL_WRITE_OFF_PRIMARY_DEFAULT: u8 = 2;
pub const DUAL_WRITE_OFF_SECONDARY_DEFAULT: u8 = 3;
pub const DUAL_WRITE_OFF_BOTH_DEFAULT: u8 = 4;

/// What the partition's last verify found, for `migration_status` (of any of its MultiStores).
#[derive(Clone, Debug, PartialEq)]
pub struct VerifyStanding {
    pub readiness: f64,
    pub in_agreement: bool,
    /// Over every key: no pattern, no sample.
    pub full: bool,
    /// It cleared "full verify needed": nothing happened while it ran that it cannot vouch for.
    pub counted: bool,
    /// The database it compared.
    pub db: i64,
    /// When it finished, in seconds since the Unix epoch.
    pub at: f64,
}

pub struct MigrationState {
    pub journal: Journal,
    /// One per store, used while that store is the non-default one: [primary, secondary].
    pub breakers: PerRole<Breaker>,
    pub scripts: ScriptCache,
    /// When non-default writes failed, for `status`.
    pub recent_failures: ForkSafeMutex<VecDeque<Instant>>,
    /// A store restarted since the last full backfill or counted verify.
    pub reset_seen: AtomicBool,
    /// What this process has seen of the dual-write flag (`DUAL_WRITE_*`).
    pub dual_write_seen: AtomicU8,
    /// The fork generation the re-sync thread was started in (threads do not survive a fork).
    pub resync_started: ForkSafeMutex<Option<u64>>,
    /// The last verify run by any MultiStore of the partition.
    pub last_verify: ForkSafeMutex<Option<VerifyStanding>>,
    /// Held by the re-sync while it copies a batch, and by a SELECT while it moves the stores:
    /// a copy read in one database must not be written into another. Not a `ForkSafeMutex`
    /// (those are taken around a fork, and this one is held across round trips): it is only
    /// ever tried with a timeout, so one a thread that did not survive a fork held cannot hang
    /// the child.
    pub db_switch: parking_lot::Mutex<()>,
}

type Partition = (String, String, String);

static PARTITIONS: LazyLock<ForkSafeMutex<HashMap<Partition, Weak<MigrationState>>>> =
    LazyLock::new(|| ForkSafeMutex::new(HashMap::new()));

impl MigrationState {
    fn new() -> Self {
        let breaker = || Breaker::new(BreakerSettings::default());
        MigrationState {
            journal: Journal::new(DEFAULT_JOURNAL_CAPACITY),
            breakers: PerRole::new(breaker(), breaker()),
            scripts: ScriptCache::default(),
            recent_failures: ForkSafeMutex::new(VecDeque::new()),
            reset_seen: AtomicBool::new(false),
            dual_write_seen: AtomicU8::new(0),
            resync_started: ForkSafeMutex::new(None),
            last_verify: ForkSafeMutex::new(None),
            db_switch: parking_lot::Mutex::new(()),
        }
    }

    /// Whether dual-write is on, as this process last saw the flags.
    pub fn dual_write_on(&self) -> bool {
        self.dual_write_seen.load(Ordering::Acquire) == DUAL_WRITE_ON
    }

    /// Whether `role` gets writes the other store does not: dual-write is off (as this process
    /// last saw the flags) and `role` is, or was during the gap, the default store. Nothing may
    /// be copied onto such a store from the other: it would undo those writes.
    pub fn written_alone(&self, role: Role) -> bool {
        match self.dual_write_seen.load(Ordering::Acquire) {
            DUAL_WRITE_OFF_PRIMARY_DEFAULT => role == Role::Primary,
            DUAL_WRITE_OFF_SECONDARY_DEFAULT => role == Role::Secondary,
            DUAL_WRITE_OFF_BOTH_DEFAULT => true,
            _ => false,
        }
    }

    /// Forgets what this process's MultiStores learned about their partitions: the MultiStores
    /// built from now on start afresh, and those alive drop their journals. For when both stores
    /// were wiped (FLUSHALL), and for test suites that reuse stores between examples.
    pub fn forget_all() {
        let partitions = std::mem::take(&mut *PARTITIONS.lock());
        for state in partitions.values().filter_map(Weak::upgrade) {
            state.journal.clear();
            state.breakers.iter().for_each(Breaker::reset);
            state.recent_failures.lock().clear();
            *state.last_verify.lock() = None;
            state
                .reset_seen
                .store(false, std::sync::atomic::Ordering::Release);
        }
    }

    /// The state of the partition `instance_name` moving from `secondary` to `primary`: the one
    /// another MultiStore of it in this process already has, or a new one.
    pub fn of_partition(
        instance_name: &str,
        primary: &StoreConfig,
        secondary: &StoreConfig,
    ) -> Arc<MigrationState> {
        let key = (instance_name.to_string(), primary.id(), secondary.id());
        let mut partitions = PARTITIONS.lock();
        if let Some(state) = partitions.get(&key).and_then(Weak::upgrade) {
            return state;
        }
        partitions.retain(|_, state| state.strong_count() > 0);
        let state = Arc::new(MigrationState::new());
        partitions.insert(key, Arc::downgrade(&state));
        state
    }
}
