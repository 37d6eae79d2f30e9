//! Writes during dual-write: to both stores at once, the default store's reply returned; what
//! the other store missed or may have missed journaled for the re-sync; pipelines compared.

use super::*;

/// What the presence look before an in-place write found.
pub(super) enum Presence {
    /// Keys that exist on one store only, to re-sync once the write has run.
    Partial(Vec<Vec<u8>>),
    /// The non-default store did not answer: it is not sent the write either.
    OtherDidNotAnswer(Error),
}

/// Keys registered with `Journal::writes_begin`, handed back when dropped: the write was
/// answered, failed, or was interrupted.
pub(super) struct WritesInFlight<'j> {
    journal: &'j Journal,
    keys: Vec<Vec<u8>>,
    /// The write counted for copies that must wait for it (`Journal::write_begins`).
    _counted: Option<crate::healing::write_epochs::WriteInFlight<'j>>,
    generation: u64,
}

impl<'j> WritesInFlight<'j> {
    pub(super) fn new(
        journal: &'j Journal,
        keys: Vec<Vec<u8>>,
        counted: Option<crate::healing::write_epochs::WriteInFlight<'j>>,
    ) -> Self {
        WritesInFlight {
            journal,
            keys,
            _counted: counted,
            generation: crate::fork::generation(),
        }
    }
}

impl Drop for WritesInFlight<'_> {
    fn drop(&mut self) {
        self.journal
            .writes_end(std::mem::take(&mut self.keys), self.generation);
    }
}

/// One EXISTS per key, so that each answer says whether that one key is there (and each goes to
/// its own node on a cluster, ahead of the commands that follow it there).
pub(super) fn exists_probes<'k>(keys: impl IntoIterator<Item = &'k [u8]>) -> Vec<Command> {
    keys.into_iter()
        .map(|key| Command::from_args([&b"EXISTS"[..], key]))
        .collect()
}

/// A replayed removal that removed nothing (see `blocking::mirror`): LREM/ZREM answering 0, an
/// XREADGROUP delivering nothing.
pub(super) fn took_nothing(cmd: &Command, reply: &Reply) -> bool {
    match reply {
        Reply::Integer(0) => cmd.name_is("lrem") || cmd.name_is("zrem") || cmd.name_is("srem"),
        Reply::Nil => cmd.name_is("xreadgroup"),
        Reply::Array(items) => cmd.name_is("xreadgroup") && items.is_empty(),
        _ => false,
    }
}

/// A write whose effect each server picks for itself: SPOP's members, XADD's `*` entry ID.
/// Sent to both stores at once, their answers tell (or the ID is mirrored); replayed after a
/// transaction, nothing compares them.
pub(super) fn picks_at_random(cmd: &Command) -> bool {
    cmd.name_is("spop") || crate::multi_store::stream_ids::auto_id_position(cmd).is_some()
}

/// Whether two stores answering a write differently means their data differs. PUBLISH answers
/// with each server's own subscriber count.
pub(super) fn replies_tell_the_data(cmd: &Command) -> bool {
    !(cmd.name_is("publish") || cmd.name_is("spublish"))
}

impl MultiStore {
    /// Sends to the non-default store first without waiting, then runs the default store's
    /// round trip, then collects the other reply: latency is the slower store's, not the sum.
    /// While the other store's breaker is open it is not asked at all; what it misses is
    /// journaled for re-sync.
    pub(super) fn write_both(
        &self,
        call: Call,
        default: Role,
        kind: RequestKind,
        ctx: &mut CallContext,
    ) -> Result<Reply> {
        let cancel = ctx.cancel;
        self.guarded_dual_write(
            Batch::one(&call),
            default,
            kind,
            ctx,
            |s| s.call(call.cmd, ReadTimeout::Configured, cancel),
            |ctx| self.send_to_both(call, default, kind, ctx),
        )
    }

    /// What every dual write goes through: one breaker admission, taken before the presence
    /// look (a probe after the cool-down is looked before like any write: its keys may exist on
    /// one store only); the writes registered in flight for the re-sync; the presence look; then
    /// `both` -- or `on_default` alone when the other store is skipped or did not answer.
    pub(super) fn guarded_dual_write<T>(
        &self,
        batch: Batch,
        default: Role,
        kind: RequestKind,
        ctx: &mut CallContext,
        on_default: impl FnOnce(&Store) -> Result<T>,
        both: impl FnOnce(&mut CallContext) -> Result<T>,
    ) -> Result<T> {
        let other = default.other();
        // Free while nothing is journaled (no lock taken on the hot path).
        if !self.state.journal.is_empty() {
            // A forked child inherits the journal but not the re-sync thread.
            self.ensure_resync();
            if self.breaker(other).state() == BreakerState::Closed {
                self.catch_up_default(batch, default, ctx.cancel);
            }
        }
        let _carried = WritesInFlight::new(
            &self.state.journal,
            self.journal_what_differing_keys_reach(batch),
            None,
        );
        if self.breaker(other).admit() == Admission::Skipped {
            self.metrics.breaker_skipped();
            return self.missing_write(batch, other, || self.round_trip(default, kind, on_default));
        }
        let _writes = self.writes_in_flight(batch);
        match self.keys_only_one_store_has(batch, default, ctx.cancel)? {
            Presence::Partial(partial) => {
                let reply = both(ctx);
                self.journal_partial(partial, default);
                reply
            }
            Presence::OtherDidNotAnswer(look_failed) => {
                self.write_default_only(batch, default, kind, look_failed, ctx, on_default)
            }
        }
    }

    /// The other store did not answer the presence look before a write: it is not sent the
    /// write too, which would make the caller wait out its timeout a second time (and a write
    /// answered late would count as no failure, leaving the breaker closed). The write counts
    /// as failed there: reported, fed to its breaker and journaled.
    pub(super) fn write_default_only<T>(
        &self,
        batch: Batch,
        default: Role,
        kind: RequestKind,
        look_failed: Error,
        ctx: &mut CallContext,
        write: impl FnOnce(&Store) -> Result<T>,
    ) -> Result<T> {
        if matches!(look_failed, Error::Interrupted) {
            return Err(Error::Interrupted); // nothing of the write was sent yet
        }
        let other = default.other();
        let reply = self.missing_write(batch, other, || self.round_trip(default, kind, write));
        self.report_non_default_failure(other, look_failed, ctx);
        reply
    }

    /// Runs a write the `lagging` store does not get. Its keys are journaled before it, so reads
    /// go to the default store meanwhile, and registered as written until it is answered, so the
    /// re-sync cannot copy and settle them before the write has landed.
    pub(super) fn missing_write<T>(
        &self,
        batch: Batch,
        lagging: Role,
        write: impl FnOnce() -> T,
    ) -> T {
        let mut registered = Vec::new();
        self.journal_missed_with(batch, lagging, Some(&mut registered));
        let _writes = WritesInFlight::new(&self.state.journal, registered, None);
        write()
    }

    /// Registers a dual write of `batch` with the journal (see `Journal::writes_begin`) until
    /// the returned guard is dropped.
    pub(super) fn writes_in_flight(&self, batch: Batch) -> WritesInFlight<'_> {
        let journal = &self.state.journal;
        // A batch with a blocking command stays in flight for as long as it blocks (seconds):
        // counted, it would hold every copy of every key back that long (a stream of them,
        // for ever). Its other writes reach both stores as it is sent, like any pipeline.
        let blocking = batch.iter().any(|call| call.is_blocking());
        let counted = (!blocking).then(|| journal.write_begins());
        if journal.is_empty() {
            return WritesInFlight::new(journal, Vec::new(), counted);
        }
        let keys: Vec<&[u8]> = batch
            .iter()
            .filter_map(|call| call.keys())
            .flatten()
            .collect();
        WritesInFlight::new(journal, journal.writes_begin(keys), counted)
    }

    /// One write on both stores at once, once `guarded_dual_write` let it through; what the
    /// other store's answer says about it journaled or reported.
    pub(super) fn send_to_both(
        &self,
        call: Call,
        default: Role,
        kind: RequestKind,
        ctx: &mut CallContext,
    ) -> Result<Reply> {
        let cmd = call.cmd;
        let other = default.other();
        let cancel = ctx.cancel;
        let other_started = Instant::now();
        let (reply, other_reply) = match crate::multi_store::stream_ids::auto_id_position(cmd) {
            // The other store gets the stream entry under the ID the default store chose.
            Some(id_at) => {
                let reply = self.round_trip(default, kind, |s| {
                    s.call(cmd, ReadTimeout::Configured, cancel)
                });
                let mirrored = match &reply {
                    Ok(Reply::Bulk(id)) => crate::multi_store::stream_ids::with_id(cmd, id_at, id),
                    _ => cmd.clone(),
                };
                let other_reply = self
                    .store(other)
                    .pipeline(std::slice::from_ref(&mirrored), cancel);
                (reply, other_reply)
            }
            None => {
                let in_flight = self.store(other).send(std::slice::from_ref(cmd), cancel);
                let reply = self.round_trip(default, kind, |s| {
                    s.call(cmd, ReadTimeout::Configured, cancel)
                });
                let other_reply = in_flight
                    .and_then(|f| self.store(other).receive(f, cancel))
                    .and_then(|replies| self.recover_noscript(cmd, other, replies, cancel));
                (reply, other_reply)
            }
        };
        self.metrics.request(other, kind, other_started);
        if reply.is_err() && other_reply.is_ok() {
            // The other store may now hold a write the default store never applied (a lost
            // connection, a new connection it refused: max clients, a rotated password): re-sync
            // it from the default store, and meanwhile read the key from the default store only.
            self.journal_missed(Batch::one(&call), other);
        }
        match other_reply {
            Err(error) => self.non_default_failed(Batch::one(&call), other, error, ctx),
            Ok(replies) => {
                self.breaker_success(other);
                match (replies.first(), &reply) {
                    // An error reply only on the non-default store means the stores disagree.
                    (Some(Reply::Error(line)), Ok(default_reply)) if !default_reply.is_error() => {
                        let error = Error::Server(ServerErrorReply::from_line(line));
                        self.non_default_failed(Batch::one(&call), other, error, ctx);
                    }
                    // Two different answers to one write mean the key differed before it (a
                    // counter the new store started from zero, EXPIRE or SETNX on a key it does
                    // not have yet) or differs now (SPOP took another member): the other store
                    // is brought in line with the default one, and meanwhile reads of the key go
                    // to the default store only.
                    (Some(other_reply), Ok(default_reply))
                        if other_reply != default_reply && replies_tell_the_data(cmd) =>
                    {
                        tracing::debug!(instance_name = %self.instance_name, command_name = %cmd.name(), "a write answered differently by the stores: re-syncing its keys");
                        self.journal_keys_of(call, other);
                    }
                    // A script that calls something random may have written something else on
                    // each store while answering both alike.
                    (Some(_), Ok(_)) if self.batch_may_differ(Batch::one(&call)) => {
                        self.journal_keys_of(call, other);
                    }
                    _ => {}
                }
            }
        }
        reply
    }

    /// Whether a batch answered alike may still have written differently on the two stores:
    /// a script that calls something random, or a SORT reading keys through a pattern. Every
    /// key of the batch is then re-synced -- a later command of the batch may have carried
    /// what the first one wrote into other keys (a SUNIONSTORE after a script's SPOP).
    pub(super) fn batch_may_differ(&self, batch: Batch) -> bool {
        batch.iter().any(|call| {
            self.state.scripts.may_differ(call.cmd)
                || (call.is_write() && command_table::reads_unnamed_keys(call.cmd))
        })
    }

    /// An EVALSHA the other store does not know: load the script there (when it went through
    /// this MultiStore) and run it again, so that store gets the write too.
    pub(super) fn recover_noscript(
        &self,
        cmd: &Command,
        role: Role,
        replies: Vec<Reply>,
        cancel: &CancelToken,
    ) -> Result<Vec<Reply>> {
        let noscript = replies.first().and_then(Reply::error_code) == Some(&b"NOSCRIPT"[..]);
        let Some(recovery) = noscript.then(|| self.state.scripts.recovery(cmd)).flatten() else {
            return Ok(replies);
        };
        tracing::debug!(instance_name = %self.instance_name, store = role.name(), "loading a script the store did not know");
        // One after the other, not as one batch: a cluster sends SCRIPT LOAD to every master
        // after the rest of a batch, which would run the EVALSHA before its script is there.
        let store = self.store(role);
        let mut last = Reply::Nil;
        for cmd in &recovery {
            last = store.call(cmd, ReadTimeout::Configured, cancel)?;
        }
        Ok(vec![last])
    }

    pub(super) fn pipeline_both(
        &self,
        batch: Batch,
        default: Role,
        ctx: &mut CallContext,
    ) -> Result<Vec<Reply>> {
        let cancel = ctx.cancel;
        self.guarded_dual_write(
            batch,
            default,
            RequestKind::Pipeline,
            ctx,
            |s| s.pipeline(batch.cmds(), cancel),
            |ctx| self.send_batch_to_both(batch, default, ctx),
        )
    }

    /// Until a full verify has shown the stores agree, a key may exist on one store only (not
    /// backfilled yet). A write that changes such a key in place -- HSET of one field, SADD,
    /// INCR, EXPIRE -- leaves the other store holding a part of it (a hash of one field), which
    /// a primary-first read would return as if whole; one that reads it (ZUNIONSTORE, BITOP, a
    /// script) computes another result there for its other keys. So before such writes, both
    /// stores are asked which of their keys they have (EXISTS, one pipelined round trip to
    /// each, at once); every key of a command that names a key only one store has is journaled
    /// after the write and re-synced from `source`. Writes that replace the whole key (SET, DEL,
    /// MSET …) need no such look, nor does anything once the stores are known to agree.
    pub(super) fn keys_only_one_store_has(
        &self,
        batch: Batch,
        source: Role,
        cancel: &CancelToken,
    ) -> Result<Presence> {
        if self.state.journal.stores_agree() {
            return Ok(Presence::Partial(Vec::new()));
        }
        let mut per_command: Vec<Vec<&[u8]>> = Vec::new();
        let mut keys: Vec<&[u8]> = Vec::new();
        for call in batch.iter() {
            let Some(spec) = call.spec else {
                continue;
            };
            if !call.is_write() || command_table::replaces_whole_keys(call.cmd, spec) {
                continue;
            }
            let named = call.keys().unwrap_or_default();
            for key in &named {
                if !keys.contains(key) {
                    keys.push(key);
                }
            }
            per_command.push(named);
        }
        if keys.is_empty() {
            return Ok(Presence::Partial(Vec::new()));
        }
        let other = source.other();
        let probes = exists_probes(keys.iter().copied());
        let in_flight = self.store(other).send(&probes, cancel);
        let on_source = self.store(source).pipeline(&probes, cancel);
        let on_other = in_flight.and_then(|f| self.store(other).receive(f, cancel));
        // A default store that did not answer fails the call before any of the write is sent
        // anywhere, as the write itself would have, instead of waiting out its timeout twice.
        let on_source = on_source?;
        let on_other = match on_other {
            Ok(on_other) => on_other,
            Err(error) => return Ok(Presence::OtherDidNotAnswer(error)),
        };
        let differing: Vec<&[u8]> = keys
            .iter()
            .zip(on_source.iter().zip(&on_other))
            .filter(|(_, (s, o))| s != o)
            .map(|(key, _)| *key)
            .collect();
        let mut journaled: Vec<Vec<u8>> = Vec::new();
        for named in per_command {
            if named.iter().any(|key| differing.contains(key)) {
                for key in named {
                    if !journaled.iter().any(|k| k == key) {
                        journaled.push(key.to_vec());
                    }
                }
            }
        }
        Ok(Presence::Partial(journaled))
    }

    /// EXISTS of each key the commands name, while the stores are not known to agree (empty once
    /// they are).
    pub(super) fn presence_probes(&self, batch: Batch) -> Vec<Command> {
        if self.state.journal.stores_agree() {
            return Vec::new();
        }
        let mut keys: Vec<&[u8]> = Vec::new();
        for key in batch.iter().filter_map(|call| call.keys()).flatten() {
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        exists_probes(keys)
    }

    pub(super) fn journal_partial(&self, keys: Vec<Vec<u8>>, default: Role) {
        if keys.is_empty() {
            return;
        }
        tracing::debug!(instance_name = %self.instance_name, keys = keys.len(), "a write changed keys only one store had: re-syncing them");
        // Keys known stale on `default` stay so (see `journal_ran_on_both`).
        let journal = &self.state.journal;
        let keys: Vec<&[u8]> = keys
            .iter()
            .map(Vec::as_slice)
            .filter(|key| journal.lagging(key) != Some(default))
            .collect();
        journal.record(Some(keys), default.other());
        self.metrics.journal_size(self.state.journal.len());
        self.ensure_resync();
    }

    /// A batch on both stores at once, once `guarded_dual_write` let it through; replies that
    /// differ are reported and the batch's keys re-synced.
    pub(super) fn send_batch_to_both(
        &self,
        batch: Batch,
        default: Role,
        ctx: &mut CallContext,
    ) -> Result<Vec<Reply>> {
        let cmds = batch.cmds();
        let other = default.other();
        let cancel = ctx.cancel;
        let other_started = Instant::now();
        let (replies, other_replies) = if crate::multi_store::stream_ids::has_auto_id(cmds) {
            // The other store stores XADD * entries under the IDs the default store chose.
            let replies =
                self.round_trip(default, RequestKind::Pipeline, |s| s.pipeline(cmds, cancel));
            let mirrored = replies
                .as_ref()
                .ok()
                .and_then(|r| crate::multi_store::stream_ids::mirror_batch(cmds, r));
            let other_cmds = mirrored.as_deref().unwrap_or(cmds);
            (replies, self.store(other).pipeline(other_cmds, cancel))
        } else {
            let in_flight = self.store(other).send(cmds, cancel);
            let replies =
                self.round_trip(default, RequestKind::Pipeline, |s| s.pipeline(cmds, cancel));
            (
                replies,
                in_flight.and_then(|f| self.store(other).receive(f, cancel)),
            )
        };
        self.metrics
            .request(other, RequestKind::Pipeline, other_started);
        if replies.is_err() && other_replies.is_ok() {
            self.journal_missed(batch, other); // as in `send_to_both`
        }
        match other_replies {
            Err(error) => self.non_default_failed(batch, other, error, ctx),
            Ok(other_replies) => {
                self.breaker_success(other);
                if matches!(&replies, Ok(r) if *r != other_replies) {
                    self.metrics.pipelined_diff(&(ctx.cmd_name)());
                    tracing::debug!(instance_name = %self.instance_name, "pipeline results differ between the stores");
                    ctx.events.push(Event::PipelinedDiff);
                    // Which of the two is right cannot be told here; the default store's data
                    // is the truth callers see, so the other store is re-synced from it.
                    self.journal_ran_on_both(batch, other);
                } else if replies.is_ok() && self.batch_may_differ(batch) {
                    self.journal_ran_on_both(batch, other);
                }
            }
        }
        replies
    }

    /// Replays on `role` writes that already ran on the other store (a transaction on a pinned
    /// connection, what a blocking pop took). Looked before like any dual write: a key the
    /// other store had and `role` did not is re-synced whole afterwards.
    pub(super) fn mirror(&self, batch: Batch, role: Role, ctx: &mut CallContext) {
        let cancel = ctx.cancel;
        if self.breaker(role).admit() == Admission::Skipped {
            self.metrics.breaker_skipped();
            self.journal_missed(batch, role);
            return;
        }
        let _carried = WritesInFlight::new(
            &self.state.journal,
            self.journal_what_differing_keys_reach(batch),
            None,
        );
        let source = role.other();
        let _counted = self.state.journal.write_begins();
        let partial = match self.keys_only_one_store_has(batch, source, cancel) {
            Ok(Presence::Partial(partial)) => Some(partial),
            Ok(Presence::OtherDidNotAnswer(error)) => {
                return self.non_default_failed(batch, role, error, ctx)
            }
            // The source did not answer the look: the replay goes ahead, all its keys re-synced.
            Err(_) => None,
        };
        match self.round_trip(role, RequestKind::Pipeline, |s| {
            s.pipeline(batch.cmds(), cancel)
        }) {
            Ok(replies) => {
                self.breaker_success(role);
                // The other store did not have what the replayed command was to take (the entry
                // a blocking XREADGROUP got had not reached it yet, the element was not there)
                // or refused it: the stores differ, and the key is re-synced from the source.
                // The replay's answers are not compared with the transaction's (Ruby has
                // those), so a write that picks at random is re-synced whatever it answered.
                if self.batch_may_differ(batch)
                    || batch.iter().any(|call| picks_at_random(call.cmd))
                {
                    self.journal_ran_on_both(batch, role);
                }
                for (call, reply) in batch.iter().zip(&replies) {
                    if reply.is_error() || took_nothing(call.cmd, reply) {
                        self.journal_keys_of(call, role);
                    }
                }
            }
            Err(error) => self.non_default_failed(batch, role, error, ctx),
        }
        match partial {
            Some(partial) => self.journal_partial(partial, source),
            None => self.journal_ran_on_both(batch, role),
        }
    }
}
