//! What the MultiStore does about a store that missed writes: reports, the journal, the
//! re-sync thread, catching the default store up, and the circuit breakers.

use super::*;

impl MultiStore {
    pub(super) fn non_default_failed(
        &self,
        batch: Batch,
        role: Role,
        error: Error,
        ctx: &mut CallContext,
    ) {
        self.journal_missed(batch, role);
        self.report_non_default_failure(role, error, ctx);
    }

    pub(super) fn report_non_default_failure(
        &self,
        role: Role,
        error: Error,
        ctx: &mut CallContext,
    ) {
        self.metrics.non_default_write_failure();
        if error.is_connection_error() {
            self.breaker_failure(role);
        }
        self.state.recent_failures.lock().push_back(Instant::now());
        tracing::debug!(
            instance_name = %self.instance_name,
            command_name = %(ctx.cmd_name)(),
            store = role.name(),
            error = %error,
            "write failed on the non-default store"
        );
        ctx.events.push(Event::NonDefaultFailed { role, error });
    }

    /// Records the keys of the writes in `batch` as missed by `lagging`, and makes sure the
    /// re-sync task runs.
    pub(super) fn journal_missed(&self, batch: Batch, lagging: Role) {
        self.record_writes(batch, lagging, None, false);
    }

    /// `journal_missed`; with `registered`, the keys are also registered as being written (see
    /// `Journal::record_in_flight`).
    pub(super) fn journal_missed_with(
        &self,
        batch: Batch,
        lagging: Role,
        registered: Option<&mut Vec<Vec<u8>>>,
    ) {
        self.record_writes(batch, lagging, registered, false);
    }

    /// Journals, as lagging `lagging`, the keys of writes that ran on both stores yet may have
    /// left them different (answered differently, a random script, a key only one store had)
    /// -- except keys journaled as lagging the other store already: that one was known stale
    /// before the write (a rollback of the default whose catch-up could not copy), and ran it
    /// on its stale value; the store with every write is still the one to copy from.
    pub(super) fn journal_ran_on_both(&self, batch: Batch, lagging: Role) {
        self.record_writes(batch, lagging, None, true);
    }

    fn record_writes(
        &self,
        batch: Batch,
        lagging: Role,
        mut registered: Option<&mut Vec<Vec<u8>>>,
        spare_known_stale: bool,
    ) {
        let journal = &self.state.journal;
        for call in batch.iter().filter(Call::is_write) {
            let keys = if command_table::writes_other_database(call.cmd) {
                None // a full verify (of every database) is needed
            } else if spare_known_stale && !journal.is_empty() {
                let keys = call.keys().map(|keys| {
                    keys.into_iter()
                        .filter(|key| journal.lagging(key) != Some(lagging.other()))
                        .collect::<Vec<_>>()
                });
                if keys.as_ref().is_some_and(Vec::is_empty) {
                    continue;
                }
                keys
            } else {
                call.keys()
            };
            let dropped = match registered.as_deref_mut() {
                Some(registered) => journal.record_in_flight(keys, lagging, registered),
                None => journal.record(keys, lagging),
            };
            if dropped > 0 {
                self.metrics.journal_overflow(dropped);
                tracing::warn!(instance_name = %self.instance_name, dropped, "journal full: a full verify is needed");
            }
        }
        self.metrics.journal_size(journal.len());
        self.ensure_resync();
    }

    /// A write that reads a key journaled as differing carries the difference to the keys it
    /// writes: RENAME, COPY, LMOVE, SUNIONSTORE, a script … The re-sync would settle the
    /// source (gone from both stores, or copied) and never look at the destination, which the
    /// journal does not name -- reads of it from the store that lags would be stale, unseen.
    /// So before such a write, every key it names is journaled as lagging where the source
    /// does, and registered in flight (the re-sync cannot copy and settle the destination
    /// before the write lands): hand the returned keys to a `WritesInFlight`. A SORT whose BY
    /// or GET pattern reads keys it does not name counts as reading every journaled key.
    /// MOVE, COPY … DB and SWAPDB carry keys into another database, where the journal (which
    /// names keys of the database a call runs in) cannot follow: for them -- for SWAPDB while
    /// any key is journaled -- a full verify of every database is asked for. So is it when the
    /// keys of one write lag behind different stores. (Fuzz seed 427860330: a MOVE of a key
    /// the primary had missed, on both stores alike.)
    pub(super) fn journal_what_differing_keys_reach(&self, batch: Batch) -> Vec<Vec<u8>> {
        let journal = &self.state.journal;
        let mut registered = Vec::new();
        if journal.is_empty() {
            return registered;
        }
        for call in batch.iter().filter(Call::is_write) {
            let elsewhere = command_table::writes_other_database(call.cmd);
            let keys = call.keys().unwrap_or_default();
            let reads_any =
                call.cmd.name_is("swapdb") || command_table::reads_unnamed_keys(call.cmd);
            let lagging: Vec<Role> = if reads_any {
                journal
                    .batch(usize::MAX)
                    .into_iter()
                    .map(|(_, e)| e.lagging)
                    .collect()
            } else {
                keys.iter().filter_map(|key| journal.lagging(key)).collect()
            };
            let Some(&first) = lagging.first() else {
                continue;
            };
            let one_lagging = lagging.iter().all(|&role| role == first);
            if elsewhere || !one_lagging {
                journal.require_full_verify(one_lagging.then(|| first.other()));
                tracing::warn!(instance_name = %self.instance_name, command_name = %call.cmd.name(), "a write carries keys that differ where the journal cannot follow: a full verify is needed");
            } else if reads_any || lagging.len() < keys.len() {
                let dropped =
                    journal.record_in_flight(Some(keys.iter().copied()), first, &mut registered);
                if dropped > 0 {
                    self.metrics.journal_overflow(dropped);
                }
                self.metrics.journal_size(journal.len());
                self.ensure_resync();
            }
        }
        registered
    }

    /// Records the keys of one write as missed by `lagging`, if it names them (a write without
    /// nameable keys is left alone: its differing answer is no sign of differing data).
    pub(super) fn journal_keys_of(&self, call: Call, lagging: Role) {
        if call.keys().is_some_and(|keys| !keys.is_empty()) {
            self.journal_ran_on_both(Batch::one(&call), lagging);
        }
    }

    /// The store that missed the latest write of the command's key, if it is journaled.
    pub(super) fn journaled(&self, call: Call) -> Option<Role> {
        if self.state.journal.is_empty() {
            return None;
        }
        let keys = call.keys()?;
        keys.iter().find_map(|key| self.state.journal.lagging(key))
    }

    pub(super) fn ensure_resync(&self) {
        resync::ensure_running(&self.state, || self.resync_context());
    }

    /// How a verify's repair and a backfill's re-copy run by this MultiStore bring keys in line:
    /// through its re-sync, so the copies cannot undo its own dual writes (see
    /// `resync::RepairThroughResync`).
    pub fn reconciler(&self) -> Arc<dyn crate::migration::copy::Reconciler> {
        Arc::new(resync::RepairThroughResync {
            ctx: self.resync_context(),
        })
    }

    pub(super) fn resync_context(&self) -> ResyncContext {
        ResyncContext {
            instance_name: self.instance_name.clone(),
            stores: self.stores.clone(),
            state: Arc::downgrade(&self.state),
            metrics: self.metrics.clone(),
        }
    }

    /// Before a write, the keys it names that the default store missed (journaled as lagging
    /// it: the default flipped back before the re-sync copied them) are copied to it first
    /// (see `resync::catch_up`). Free while nothing is journaled.
    pub(super) fn catch_up_default(&self, batch: Batch, default: Role, cancel: &CancelToken) {
        let journal = &self.state.journal;
        if journal.is_empty() {
            return;
        }
        let mut stale: Vec<Vec<u8>> = Vec::new();
        for key in batch.iter().filter_map(|call| call.keys()).flatten() {
            if journal.lagging(key) == Some(default) && !stale.iter().any(|k| k == key) {
                stale.push(key.to_vec());
            }
        }
        if !stale.is_empty() {
            resync::catch_up(&self.resync_context(), journal, default, &stale, cancel);
        }
    }

    /// Before commands run on one store only, to be replayed on the other afterwards (a
    /// session's pinned connection: WATCH, a transaction's EXEC, a command between WATCH and
    /// MULTI; a blocking pop): the keys they name that this store missed (journaled as lagging
    /// it: the default flipped back before the re-sync copied them) are copied to it first, as
    /// before any dual write. Then they are registered as being written until the returned
    /// guard is dropped -- after the replay -- so that no copy (another thread's catch-up, the
    /// re-sync) lands on them in between and undoes what ran. A key another thread was copying
    /// is waited for, and caught up once more if still stale. `None` while nothing is journaled.
    pub fn begin_pinned(
        &self,
        cmds: &[Command],
        pinned: Role,
        flags: Flags,
        cancel: &CancelToken,
    ) -> Option<PinnedWrites> {
        let journal = &self.state.journal;
        if journal.is_empty() || self.same_store(flags, cancel) {
            return None;
        }
        let specs = call::resolve(cmds);
        let batch = Batch::new(cmds, &specs);
        let keys: Vec<&[u8]> = batch
            .iter()
            .filter_map(|call| call.keys())
            .flatten()
            .collect();
        let catch_up = self.breaker(pinned.other()).state() == BreakerState::Closed;
        let mut registered = Vec::new();
        for attempt in 0..2 {
            if catch_up {
                self.catch_up_default(batch, pinned, cancel);
            }
            registered = journal.writes_begin(keys.iter().copied());
            let stale = keys.iter().any(|key| journal.lagging(key) == Some(pinned));
            if !(catch_up && stale && attempt == 0) {
                break;
            }
            // A copy under way elsewhere held the key: once more, now that it was waited for.
            journal.writes_end(std::mem::take(&mut registered), crate::fork::generation());
        }
        Some(PinnedWrites {
            state: Arc::clone(&self.state),
            keys: registered,
            generation: crate::fork::generation(),
        })
    }

    pub(super) fn breaker_success(&self, role: Role) {
        if self.breaker(role).record_success() == Transition::Closed {
            tracing::warn!(instance_name = %self.instance_name, store = role.name(), "circuit breaker closed: the store answers again");
        }
    }

    pub(super) fn breaker_failure(&self, role: Role) {
        // Its pooled connections are most likely dead too (restart, reset): the next attempt,
        // the breaker's probe included, gets a fresh one instead of the next dead one.
        self.store(role).disconnect();
        if self.breaker(role).record_failure() == Transition::Opened {
            self.metrics.breaker_opened(role);
            tracing::warn!(instance_name = %self.instance_name, store = role.name(), "circuit breaker opened: not waiting on the store for a cool-down");
        }
    }
}

/// Keys registered as being written on one store until its replay on the other is done (see
/// `MultiStore::begin_pinned`); dropping it ends the registration.
pub struct PinnedWrites {
    state: Arc<MigrationState>,
    keys: Vec<Vec<u8>>,
    generation: u64,
}

impl Drop for PinnedWrites {
    fn drop(&mut self) {
        self.state
            .journal
            .writes_end(std::mem::take(&mut self.keys), self.generation);
    }
}
