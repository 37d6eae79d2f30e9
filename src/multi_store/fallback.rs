//! Reads during dual-write: the primary first and, on a miss or an error, the secondary
//! (GitLab's MultiStore), or the default store only.

use super::*;

/// The secondary's answers to a read-only batch, but the default primary's error replies where
/// it gave them: those are answers, not misses.
pub(super) fn keep_errors_of(primary: Vec<Reply>, secondary: Vec<Reply>) -> Vec<Reply> {
    if primary.len() != secondary.len() {
        return secondary;
    }
    primary
        .into_iter()
        .zip(secondary)
        .map(|(p, s)| if p.is_error() { p } else { s })
        .collect()
}

impl MultiStore {
    /// Runs a round trip on `role`, through its circuit breaker when it is the non-default
    /// store: `None` when the breaker skips it. The outcome feeds the breaker.
    pub(super) fn through_breaker<T>(
        &self,
        role: Role,
        default: Role,
        round_trip: impl FnOnce() -> Result<T>,
    ) -> Option<Result<T>> {
        if role == default {
            return Some(round_trip());
        }
        if self.breaker(role).admit() == Admission::Skipped {
            return None;
        }
        let result = round_trip();
        match &result {
            Err(error) if error.is_connection_error() => self.breaker_failure(role),
            Err(Error::Interrupted) => {}
            _ => self.breaker_success(role),
        }
        Some(result)
    }

    /// Reads the primary and falls back to the secondary on a miss or an error -- unless the key
    /// is journaled (one store missed its latest write: only the store that got it is read).
    /// Whichever of the two is the non-default store is asked through its breaker, and its
    /// failures never reach the caller; the default store's failures do, as with redis-rb.
    pub(super) fn read_with_fallback(
        &self,
        call: Call,
        spec: &CommandSpec,
        default: Role,
        ctx: &mut CallContext,
    ) -> Result<Reply> {
        let cmd = call.cmd;
        let cancel = ctx.cancel;
        let read = |role: Role| {
            self.round_trip(role, RequestKind::Read, |s| {
                s.call(cmd, ReadTimeout::Configured, cancel)
            })
        };
        if let Some(lagging) = self.journaled(call) {
            return read(lagging.other());
        }
        if self.state.journal.full_verify_needed() {
            // Some missed writes could not be journaled, a store restarted or dual-write was off
            // for a while: any key may be stale on one store, so only the store that got every
            // write since (else the default store) is read until a full verify says the stores
            // agree.
            return read(self.state.journal.complete_store().unwrap_or(default));
        }
        // Until the stores are known to agree, the primary may lack a key the read names (not
        // backfilled yet): it is asked whether it has them in the same round trip, and its answer
        // counts only if it has them all. Once they agree, an answer that says "missing" (nil,
        // empty, 0 …) is what sends the read to the secondary.
        let probes = self.presence_probes(Batch::one(&call));
        let read_primary = || {
            if probes.is_empty() {
                return read(Role::Primary).map(|reply| (reply, None));
            }
            let mut batch = probes.clone();
            batch.push(cmd.clone());
            self.round_trip(Role::Primary, RequestKind::Read, |s| {
                s.pipeline(&batch, cancel)
            })
            .map(|mut replies| {
                let reply = replies.pop().unwrap_or(Reply::Nil);
                let has_all = replies.iter().all(|r| *r == Reply::Integer(1));
                (reply, Some(has_all))
            })
        };
        let answered = |reply: &Reply, has_all: Option<bool>| match has_all {
            Some(has_all) => has_all,
            None => !is_miss(spec, reply),
        };
        let primary = match self.through_breaker(Role::Primary, default, read_primary) {
            Some(Ok((reply, has_all))) if !reply.is_error() && answered(&reply, has_all) => {
                return Ok(reply)
            }
            Some(Err(Error::Interrupted)) => return Err(Error::Interrupted),
            // The primary is the default store, the one every write reached: its error reply
            // (WRONGTYPE, say) is the answer, as a single Redis would give it. The secondary may
            // have restarted empty unnoticed; its nil would hide the error.
            Some(Ok((Reply::Error(line), _))) if default == Role::Primary => {
                return Ok(Reply::Error(line))
            }
            Some(Ok((Reply::Error(line), _))) => {
                self.read_failed_on_primary(Error::Server(ServerErrorReply::from_line(&line)), ctx);
                Some(Ok(Reply::Error(line)))
            }
            Some(Ok((reply, _))) => Some(Ok(reply)),
            Some(Err(error)) => {
                self.read_failed_on_primary(error.clone(), ctx);
                Some(Err(error))
            }
            None => None,
        };
        let primary_missed = matches!(&primary, Some(Ok(reply)) if !reply.is_error());
        let read_secondary = || read(Role::Secondary);
        self.fall_back(default, primary, read_secondary, ctx, |reply| {
            primary_missed && !reply.is_error() && !is_miss(spec, reply)
        })
    }

    /// The second half of a read with fallback, for single reads and read-only pipelines: asks
    /// the secondary and decides whose answer the caller gets. `found_more` says whether the
    /// secondary's answer is a fallback worth reporting.
    pub(super) fn fall_back<T>(
        &self,
        default: Role,
        primary: Option<Result<T>>,
        read_secondary: impl FnOnce() -> Result<T>,
        ctx: &mut CallContext,
        found_more: impl FnOnce(&T) -> bool,
    ) -> Result<T> {
        match (
            self.through_breaker(Role::Secondary, default, read_secondary),
            primary,
        ) {
            (Some(Ok(reply)), _) => {
                if found_more(&reply) {
                    self.metrics.read_fallback_miss(&(ctx.cmd_name)());
                    ctx.events.push(Event::ReadFallback);
                }
                Ok(reply)
            }
            // The secondary is the default store: its failure is the caller's.
            (Some(Err(error)), _) if default == Role::Secondary => Err(error),
            // The primary is the default store; the secondary was only asked as a fallback.
            (_, Some(primary)) => primary,
            (Some(Err(error)), None) => Err(error),
            (None, None) => Err(Error::Protocol("neither store could be asked".into())),
        }
    }

    pub(super) fn read_pipeline_with_fallback(
        &self,
        batch: Batch,
        default: Role,
        ctx: &mut CallContext,
    ) -> Result<Vec<Reply>> {
        let cmds = batch.cmds();
        let cancel = ctx.cancel;
        let read =
            |role: Role| self.round_trip(role, RequestKind::Pipeline, |s| s.pipeline(cmds, cancel));
        let any_journaled = !self.state.journal.is_empty()
            && batch.iter().any(|call| self.journaled(call).is_some());
        if any_journaled {
            return read(default);
        }
        if self.state.journal.full_verify_needed() {
            return read(self.state.journal.complete_store().unwrap_or(default));
        }
        // With the primary the default store, its error replies are answers (see
        // `read_with_fallback`): only its misses send the batch to the secondary.
        let primary_default = default == Role::Primary;
        let missed = |replies: &[Reply]| {
            replies
                .iter()
                .zip(batch.iter())
                .any(|(reply, call)| match call.spec {
                    Some(spec) => is_miss(spec, reply) || (reply.is_error() && !primary_default),
                    None => false,
                })
        };
        // As for a single read: until the stores agree, the primary's answers count only if it
        // has every key the batch names (asked in the same round trip).
        let probes = self.presence_probes(batch);
        let read_primary = || {
            if probes.is_empty() {
                return read(Role::Primary).map(|replies| {
                    let missed = missed(&replies);
                    (replies, missed)
                });
            }
            let batch: Vec<Command> = probes.iter().chain(cmds).cloned().collect();
            self.round_trip(Role::Primary, RequestKind::Pipeline, |s| {
                s.pipeline(&batch, cancel)
            })
            .map(|mut replies| {
                let answers = replies.split_off(probes.len());
                let lacks_some = replies.iter().any(|r| *r != Reply::Integer(1));
                let missed =
                    lacks_some || (!primary_default && answers.iter().any(Reply::is_error));
                (answers, missed)
            })
        };
        let primary = match self.through_breaker(Role::Primary, default, read_primary) {
            Some(Ok((replies, false))) => return Ok(replies),
            Some(Ok((replies, true))) => Some(Ok(replies)),
            Some(Err(Error::Interrupted)) => return Err(Error::Interrupted),
            Some(Err(error)) => {
                self.read_failed_on_primary(error.clone(), ctx);
                Some(Err(error))
            }
            None => None,
        };
        let primary_replies = match &primary {
            Some(Ok(replies)) => Some(replies.clone()),
            _ => None,
        };
        let replies = self.fall_back(
            default,
            primary,
            || read(Role::Secondary),
            ctx,
            |secondary| primary_replies.as_ref().is_some_and(|p| p != secondary),
        )?;
        Ok(match primary_replies {
            Some(primary) if primary_default => keep_errors_of(primary, replies),
            _ => replies,
        })
    }

    pub(super) fn read_failed_on_primary(&self, error: Error, ctx: &mut CallContext) {
        self.metrics.read_fallback_error(&(ctx.cmd_name)());
        ctx.events.push(Event::ReadFromPrimaryFailed { error });
    }
}
