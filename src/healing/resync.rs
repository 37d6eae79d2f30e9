//! The background task that brings a lagging store back in line. It takes journaled keys in
//! batches, copies each from the store that got the write (DUMP + PTTL, RESTORE REPLACE, or DEL
//! when the key is gone), then compares both stores and drops a key from the journal only when
//! they agree and nobody journaled it again meanwhile. A dual write racing with the copy makes
//! the comparison fail, and the key is simply copied again on the next round. Runs on its own
//! thread, without the GVL, off the callers' threads; exits when its MultiStore is dropped.

use crate::backend::store::Store;
use crate::healing::breaker::{Admission, Breaker, Transition};
use crate::healing::journal::{Entry, Journal};
use crate::healing::migration_state::MigrationState;
use crate::metrics::InstanceMetrics;
use crate::migration::copy;
use crate::migration::key_state::same_on_both;
use crate::protocol::command::Command;
use crate::routing::{PerRole, Role};
use crate::transport::cancel::CancelToken;
use crate::transport::in_doubt::WAIT_BEFORE_RESYNC;
use std::sync::{Arc, Weak};
use std::thread;
use std::time::{Duration, Instant};

const BATCH: usize = 200;
const IDLE_PAUSE: Duration = Duration::from_millis(50);
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// How long a copy waits for the dual writes that began before it (see `write_epochs`); a
/// round whose wait runs out settles nothing and is tried again.
const WAIT_FOR_EARLIER_WRITES: Duration = Duration::from_secs(1);

/// What the task works with: the stores of the MultiStore that started it, and the partition's
/// shared state, held weakly -- the task ends once no MultiStore of the partition is left.
#[derive(Clone)]
pub struct ResyncContext {
    pub instance_name: String,
    pub stores: PerRole<Arc<Store>>,
    pub state: Weak<MigrationState>,
    pub metrics: InstanceMetrics,
}

/// How long a round waits for a SELECT moving the stores (it does no I/O).
const DB_SWITCH_WAIT: Duration = Duration::from_secs(1);

fn breaker(state: &MigrationState, role: Role) -> &Breaker {
    &state.breakers[role]
}

/// Starts the partition's re-sync thread unless this process (since its last fork) already has.
pub fn ensure_running(state: &MigrationState, ctx: impl FnOnce() -> ResyncContext) {
    let generation = crate::fork::generation();
    {
        // Claimed under the lock, started outside it: the lock is a `ForkSafeMutex`, never
        // held while doing anything else (a fork would wait for it).
        let mut started = state.resync_started.lock();
        if *started == Some(generation) {
            return;
        }
        *started = Some(generation);
    }
    if spawn(ctx()).is_none() {
        *state.resync_started.lock() = None;
    }
}

fn spawn(ctx: ResyncContext) -> Option<thread::JoinHandle<()>> {
    let name = format!("multistore-resync-{}", ctx.instance_name);
    thread::Builder::new()
        .name(name.chars().take(15).collect())
        .spawn(move || run(ctx))
        .map_err(|e| tracing::error!(error = %e, "could not start the re-sync thread"))
        .ok()
}

fn run(ctx: ResyncContext) {
    let cancel = CancelToken::new();
    while let Some(state) = ctx.state.upgrade() {
        let pause = if state.journal.is_empty() {
            IDLE_PAUSE
        } else if resync_round(&ctx, &state, &cancel) {
            Duration::ZERO
        } else {
            RETRY_PAUSE
        };
        // Not held while sleeping: the last MultiStore of the partition may go meanwhile.
        drop(state);
        thread::sleep(pause);
    }
}

/// One batch of journaled keys per lagging store; whether any key settled.
fn resync_round(ctx: &ResyncContext, state: &MigrationState, cancel: &CancelToken) -> bool {
    let journal = &state.journal;
    // Keys are copied in the database they were journaled in: a SELECT waits for the round, and
    // one under way (it forgets the journal) makes the round wait.
    let Some(_same_db) = state.db_switch.try_lock_for(DB_SWITCH_WAIT) else {
        return false;
    };
    let batch = journal.batch(BATCH);
    let mut progressed = false;
    for lagging in [Role::Primary, Role::Secondary] {
        let keys: Vec<(Vec<u8>, Entry)> = batch
            .iter()
            .filter(|(_, e)| e.lagging == lagging)
            .cloned()
            .collect();
        if keys.is_empty() {
            continue;
        }
        // With dual-write off, a store written alone holds writes the other one never got.
        if state.written_alone(lagging) {
            tracing::debug!(instance_name = %ctx.instance_name, store = lagging.name(), keys = keys.len(), "re-sync waits: the store is written alone while dual-write is off");
            continue;
        }
        // The lagging store is only asked when its breaker lets a call through.
        let breaker = breaker(state, lagging);
        if breaker.admit() == Admission::Skipped {
            tracing::debug!(instance_name = %ctx.instance_name, store = lagging.name(), keys = keys.len(), "re-sync waits: the store's breaker is open");
            continue;
        }
        let started = Instant::now();
        match resync_batch(ctx, journal, lagging, &keys, cancel) {
            Ok(settled) => {
                if breaker.record_success() == Transition::Closed {
                    tracing::warn!(instance_name = %ctx.instance_name, store = lagging.name(), "circuit breaker closed: the store answers the re-sync again");
                }
                progressed |= settled > 0;
                ctx.metrics.resynced(settled);
                tracing::debug!(
                    instance_name = %ctx.instance_name,
                    store = lagging.name(),
                    keys = settled,
                    millis = started.elapsed().as_millis() as u64,
                    "re-synced journaled keys"
                );
            }
            Err(Failed { store, error }) => {
                // Only the lagging store's own failures count against its breaker: the
                // source failing to answer says nothing about it.
                if store == lagging {
                    if !error.is_connection_error() {
                        breaker.record_success();
                    } else if breaker.record_failure() == Transition::Opened {
                        ctx.metrics.breaker_opened(lagging);
                        tracing::warn!(instance_name = %ctx.instance_name, store = lagging.name(), "circuit breaker opened by the re-sync: not waiting on the store for a cool-down");
                    }
                }
                tracing::debug!(instance_name = %ctx.instance_name, store = store.name(), error = %error, "re-sync failed, will retry");
            }
        }
    }
    ctx.metrics.journal_size(journal.len());
    progressed
}

/// Copies `keys`, journaled as missed by `lagging`, now, on the caller's thread: a write is about
/// to change them on `lagging`, which became the default store (a rollback of the default) before
/// the re-sync got to them. Computed on its stale copy, the write would answer wrongly, and its
/// result would then be re-synced over the other store's newer one. Best effort: keys it cannot
/// copy now stay journaled for the background re-sync. How many left the journal.
pub fn catch_up(
    ctx: &ResyncContext,
    journal: &Journal,
    lagging: Role,
    keys: &[Vec<u8>],
    cancel: &CancelToken,
) -> u64 {
    let entries: Vec<(Vec<u8>, Entry)> = journal
        .entries(keys)
        .into_iter()
        .filter(|(_, entry)| entry.lagging == lagging)
        .collect();
    if entries.is_empty() {
        return 0;
    }
    match resync_batch(ctx, journal, lagging, &entries, cancel) {
        Ok(settled) => {
            ctx.metrics.resynced(settled);
            settled
        }
        Err(Failed { store, error }) => {
            tracing::debug!(instance_name = %ctx.instance_name, store = store.name(), error = %error, "could not bring a key up to date before writing it: left to the re-sync");
            0
        }
    }
}

/// How long a repair keeps trying to bring its keys in line itself before leaving the rest to
/// the background re-sync: a key with a write on its way cannot be taken until it is answered.
const REPAIR_PATIENCE: Duration = Duration::from_secs(1);
const REPAIR_PAUSE: Duration = Duration::from_millis(5);

/// A verify's repair or a backfill's re-copy run by a MultiStore (see `copy::Reconciler`): the
/// keys are journaled as missed by the store they are copied to, so reads trust the source
/// meanwhile, then copied and compared while this process's writes of them wait, the way the
/// re-sync does, until both stores agree. What is still different after `REPAIR_PATIENCE`
/// stays journaled, for the background re-sync to finish, and is returned. A key the journal
/// holds as missed by the source is left to the re-sync too: the other store has its latest
/// write, which a copy from the source would undo. While dual-write is off no write of this
/// process reaches the target, and the keys are copied directly -- unless the target is the
/// store written alone (the flags changed under the caller): then nothing is copied.
pub struct RepairThroughResync {
    pub ctx: ResyncContext,
}

impl crate::migration::copy::Reconciler for RepairThroughResync {
    fn written_alone(&self, role: Role) -> bool {
        self.ctx
            .state
            .upgrade()
            .is_some_and(|state| state.written_alone(role))
    }

    /// Journaled for the re-sync, which compares each key and copies it from the other store
    /// where it differs. Without a known lagging store, with no room in the journal, or with no
    /// dual-write to keep the journal true, only a full verify can tell, and the migration
    /// status says so.
    fn hand_over(&self, keys: &[Vec<u8>], lagging: Option<Role>) {
        let Some(state) = self.ctx.state.upgrade() else {
            return;
        };
        match lagging {
            Some(lagging)
                if state.dual_write_on() && state.journal.record_if_room(keys, lagging) =>
            {
                self.ctx.metrics.journal_size(state.journal.len());
                ensure_running(&state, || self.ctx.clone());
            }
            _ => state.journal.require_full_verify(lagging.map(Role::other)),
        }
    }

    fn reconcile(
        &self,
        source: Role,
        keys: &[Vec<u8>],
        ttl_tolerance_ms: i64,
        cancel: &CancelToken,
    ) -> crate::error::Result<Vec<Vec<u8>>> {
        let direct = crate::migration::copy::DirectCopy::new(
            &self.ctx.stores.primary,
            &self.ctx.stores.secondary,
        );
        let Some(state) = self.ctx.state.upgrade() else {
            return direct.reconcile(source, keys, ttl_tolerance_ms, cancel);
        };
        if !state.dual_write_on() {
            // The flags changed since the caller chose `source`: the target is now the store
            // written alone, and a copy onto it would undo its writes.
            if state.written_alone(source.other()) {
                return Ok(keys.to_vec());
            }
            return direct.reconcile(source, keys, ttl_tolerance_ms, cancel);
        }
        let journal = &state.journal;
        let target = source.other();
        let newer_on_target: Vec<Vec<u8>> = journal
            .entries(keys)
            .into_iter()
            .filter(|(_, entry)| entry.lagging == source)
            .map(|(key, _)| key)
            .collect();
        let wanted: Vec<Vec<u8>> = keys
            .iter()
            .filter(|key| !newer_on_target.contains(key))
            .cloned()
            .collect();
        if !journal.record_if_room(&wanted, target) {
            tracing::warn!(instance_name = %self.ctx.instance_name, keys = wanted.len(), "the re-sync journal is too full to repair through it: copying directly");
            let mut left = direct.reconcile(source, &wanted, ttl_tolerance_ms, cancel)?;
            left.extend(newer_on_target);
            return Ok(left);
        }
        self.ctx.metrics.journal_size(journal.len());
        ensure_running(&state, || self.ctx.clone());
        let deadline = Instant::now() + REPAIR_PATIENCE;
        loop {
            let pending: Vec<(Vec<u8>, Entry)> = journal
                .entries(&wanted)
                .into_iter()
                .filter(|(_, entry)| entry.lagging == target)
                .collect();
            if pending.is_empty() || Instant::now() >= deadline || cancel.is_cancelled() {
                let mut left: Vec<Vec<u8>> = pending.into_iter().map(|(key, _)| key).collect();
                left.extend(newer_on_target);
                return Ok(left);
            }
            let settled = resync_batch(&self.ctx, journal, target, &pending, cancel)
                .map_err(|failed| failed.error)?;
            self.ctx.metrics.resynced(settled);
            if settled < pending.len() as u64 {
                thread::sleep(REPAIR_PAUSE);
            }
        }
    }
}

/// A re-sync round that failed, and on which store.
struct Failed {
    store: Role,
    error: crate::error::Error,
}

/// Copies the keys to the lagging store; returns how many are now equal and left the journal.
/// A key the source answered with an error is neither copied nor deleted: it stays journaled
/// and is tried again.
fn resync_batch(
    ctx: &ResyncContext,
    journal: &Journal,
    lagging: Role,
    keys: &[(Vec<u8>, Entry)],
    cancel: &CancelToken,
) -> Result<u64, Failed> {
    let source_role = lagging.other();
    let failed_on = |store: Role| move |error| Failed { store, error };
    let source = &ctx.stores[source_role];
    let target = &ctx.stores[lagging];
    // A write that timed out may still land on either store: copied before it lands, the key
    // would differ again once it does, and compare equal now.
    for role in [source_role, lagging] {
        ctx.stores[role]
            .settle_requests_in_doubt(WAIT_BEFORE_RESYNC, cancel)
            .map_err(failed_on(role))?;
    }
    // Writes of these keys wait until the copy and the comparison are done (see
    // `Journal::fence`); keys with a write on its way are left for a later round.
    let fenced = Fenced {
        journal,
        keys: journal.fence(keys.to_vec()),
    };
    let keys = &fenced.keys;
    if keys.is_empty() {
        return Ok(0);
    }
    // A dual write that looked at the journal before these keys were recorded is not held back
    // by the fence: the copy waits for it, or it would undo it on the lagging store.
    if !journal.wait_for_earlier_writes(WAIT_FOR_EARLIER_WRITES, cancel) {
        return Ok(0); // `fenced` releases the keys unsettled
    }
    let names: Vec<Vec<u8>> = keys.iter().map(|(k, _)| k.clone()).collect();
    let snapshots = copy::read(source, &names, cancel).map_err(failed_on(source_role))?;
    let writes: Vec<Command> = names
        .iter()
        .zip(snapshots)
        .filter_map(|(key, snapshot)| copy::overwrite(key, snapshot))
        .collect();
    // Dual-write may have gone off since the round began (looked at again as late as can be).
    if state_written_alone(ctx, lagging) {
        return Ok(0); // `fenced` releases the keys unsettled
    }
    if !writes.is_empty() {
        target
            .pipeline(&writes, cancel)
            .map_err(failed_on(lagging))?;
    }

    let equal = same_on_both(&ctx.stores.primary, &ctx.stores.secondary, &names, cancel)
        .map_err(failed_on(source_role))?;
    Ok(fenced.release(&equal))
}

/// Keys the re-sync holds (`Journal::fence`); released when dropped if `release` did not run
/// (a round that failed half-way settles nothing).
struct Fenced<'j> {
    journal: &'j Journal,
    keys: Vec<(Vec<u8>, Entry)>,
}

impl Fenced<'_> {
    /// Releases every key, dropping those the stores agree on; how many were dropped.
    fn release(mut self, equal: &[bool]) -> u64 {
        let keys = std::mem::take(&mut self.keys);
        let mut settled = 0;
        for (i, (key, entry)) in keys.iter().enumerate() {
            let agree = equal.get(i).copied().unwrap_or(false);
            if self.journal.release(key, *entry, agree) {
                settled += 1;
            }
        }
        settled
    }
}

impl Drop for Fenced<'_> {
    fn drop(&mut self) {
        for (key, entry) in std::mem::take(&mut self.keys) {
            self.journal.release(&key, entry, false);
        }
    }
}

fn state_written_alone(ctx: &ResyncContext, role: Role) -> bool {
    ctx.state
        .upgrade()
        .is_some_and(|state| state.written_alone(role))
}
