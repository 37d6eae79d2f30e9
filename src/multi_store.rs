//! The two stores of one functional partition, and the execution of each call's route: the
//! default store's reply is what the caller gets; whatever happens on the other store is
//! reported as an `Event` (and counted), never returned as an error.

use crate::blocking;
use crate::cancel::CancelToken;
use crate::command::Command;
use crate::command_table::{self, CommandKind, CommandSpec};
use crate::config::StoreConfig;
use crate::connection::Reply;
use crate::error::{Error, Result, ServerErrorReply};
use crate::metrics::{InstanceMetrics, RequestKind};
use crate::routing::{self, default_role, is_miss, Flags, ReadStrategy, Role, Route};
use crate::scripts::ScriptCache;
use crate::session::Session;
use crate::store::{blocking_read_timeout, ReadTimeout, Store};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Something the caller does not see in the reply but the application should hear about.
#[derive(Debug)]
pub enum Event {
    /// A write (or a pipeline) failed on the non-default store.
    NonDefaultFailed { role: Role, error: Error },
    /// A read raised on the primary; the secondary answered instead.
    ReadFromPrimaryFailed { error: Error },
    /// A read missed on the primary and the secondary had the value.
    ReadFallback,
    /// A command not in the command table, sent to the default store.
    MethodMissing,
    /// A pipeline's results differed between the two stores.
    PipelinedDiff,
}

/// A call's result plus what happened on the side.
pub struct Outcome<T> {
    pub result: Result<T>,
    pub command_name: String,
    pub events: Vec<Event>,
}

pub struct MultiStore {
    instance_name: String,
    primary: Arc<Store>,
    secondary: Arc<Store>,
    same_store: bool,
    read_strategy: ReadStrategy,
    metrics: InstanceMetrics,
    scripts: ScriptCache,
}

/// What one call is doing, for the side effects (events, metrics, logs) of its round trips.
struct CallContext<'a> {
    cmd_name: &'a dyn Fn() -> String,
    cancel: &'a CancelToken,
    events: Vec<Event>,
}

impl MultiStore {
    pub fn new(
        instance_name: impl Into<String>,
        primary: StoreConfig,
        secondary: StoreConfig,
    ) -> Self {
        let instance_name = instance_name.into();
        MultiStore {
            same_store: primary.same_data_as(&secondary),
            metrics: InstanceMetrics::new(&instance_name),
            instance_name,
            primary: Arc::new(Store::new(primary)),
            secondary: Arc::new(Store::new(secondary)),
            read_strategy: ReadStrategy::PrimaryWithFallback,
            scripts: ScriptCache::default(),
        }
    }

    pub fn with_read_strategy(mut self, strategy: ReadStrategy) -> Self {
        self.read_strategy = strategy;
        self
    }

    pub fn instance_name(&self) -> &str {
        &self.instance_name
    }

    pub fn primary(&self) -> &Arc<Store> {
        &self.primary
    }

    pub fn secondary(&self) -> &Arc<Store> {
        &self.secondary
    }

    /// True when both stores hold the same data (same server and db).
    pub fn same_store(&self) -> bool {
        self.same_store
    }

    pub fn store(&self, role: Role) -> &Arc<Store> {
        match role {
            Role::Primary => &self.primary,
            Role::Secondary => &self.secondary,
        }
    }

    pub fn default_store(&self, flags: Flags) -> &Arc<Store> {
        self.store(default_role(flags))
    }

    pub fn call(&self, cmd: &Command, flags: Flags, cancel: &CancelToken) -> Outcome<Reply> {
        let spec = command_table::lookup(cmd);
        let name = || cmd.name();
        let mut ctx = CallContext {
            cmd_name: &name,
            cancel,
            events: Vec::new(),
        };
        if let Err(err) = self.check_known(cmd, spec, flags, &mut ctx) {
            return self.outcome(ctx, Err(err));
        }
        let default = default_role(flags);
        let kind = request_kind(spec);
        let result = match routing::route(spec, flags, self.read_strategy, self.same_store) {
            Route::Default => self.timed(default, kind, |s| {
                s.call(cmd, ReadTimeout::Configured, cancel)
            }),
            Route::Both => self.write_both(cmd, default, kind, &mut ctx),
            Route::PrimaryWithFallback => match spec {
                Some(spec) => self.read_with_fallback(cmd, spec, &mut ctx),
                None => self.timed(default, kind, |s| {
                    s.call(cmd, ReadTimeout::Configured, cancel)
                }),
            },
        };
        self.outcome(ctx, result)
    }

    /// A blocking command (BLPOP, XREAD BLOCK …) on the default store, whose own timeout extends
    /// the socket's read timeout. With dual-write on, what it popped is removed from the other
    /// store too.
    pub fn call_blocking(
        &self,
        cmd: &Command,
        timeout: Duration,
        flags: Flags,
        cancel: &CancelToken,
    ) -> Outcome<Reply> {
        let spec = command_table::lookup(cmd);
        let name = || cmd.name();
        let mut ctx = CallContext {
            cmd_name: &name,
            cancel,
            events: Vec::new(),
        };
        if let Err(err) = self.check_known(cmd, spec, flags, &mut ctx) {
            return self.outcome(ctx, Err(err));
        }
        let default = default_role(flags);
        let result = self.timed(default, request_kind(spec), |s| {
            s.call(cmd, blocking_read_timeout(s.config(), timeout), cancel)
        });
        if flags.dual_write && !self.same_store {
            if let Ok(reply) = &result {
                let mirror = blocking::mirror(cmd, reply);
                if !mirror.is_empty() {
                    self.mirror(&mirror, other_role(default), &mut ctx);
                }
            }
        }
        self.outcome(ctx, result)
    }

    /// A batch (pipeline, or MULTI … EXEC) in one round trip per store. With dual-write on, a
    /// batch that writes goes to both stores at once and their results are compared; a batch
    /// of reads (or one the caller marked read-only) follows the read strategy as a whole.
    pub fn pipeline(
        &self,
        cmds: &[Command],
        flags: Flags,
        readonly: bool,
        cancel: &CancelToken,
    ) -> Outcome<Vec<Reply>> {
        let name = || "pipeline".to_string();
        let mut ctx = CallContext {
            cmd_name: &name,
            cancel,
            events: Vec::new(),
        };
        let default = default_role(flags);
        if !flags.dual_write || self.same_store {
            let result = self.timed(default, RequestKind::Pipeline, |s| s.pipeline(cmds, cancel));
            return self.outcome(ctx, result);
        }
        let only_reads = readonly
            || cmds.iter().all(|c| {
                command_table::lookup(c).map(CommandSpec::kind) == Some(CommandKind::Read)
            });
        let result = if only_reads && self.read_strategy == ReadStrategy::PrimaryWithFallback {
            self.read_pipeline_with_fallback(cmds, &mut ctx)
        } else if only_reads {
            self.timed(default, RequestKind::Pipeline, |s| s.pipeline(cmds, cancel))
        } else {
            self.pipeline_both(cmds, default, &mut ctx)
        };
        self.outcome(ctx, result)
    }

    /// Replays on the non-default store what already ran on the default one (a transaction
    /// run on a pinned connection). Only with dual-write on; failures are reported, never raised.
    pub fn mirror_to_non_default(
        &self,
        cmds: &[Command],
        flags: Flags,
        cancel: &CancelToken,
    ) -> Outcome<()> {
        let name = || cmds.first().map(Command::name).unwrap_or_default();
        let mut ctx = CallContext {
            cmd_name: &name,
            cancel,
            events: Vec::new(),
        };
        if flags.dual_write && !self.same_store && !cmds.is_empty() {
            self.mirror(cmds, other_role(default_role(flags)), &mut ctx);
        }
        self.outcome(ctx, Ok(()))
    }

    pub fn session(&self, flags: Flags) -> Session {
        Session::new(Arc::clone(self.default_store(flags)))
    }

    /// SELECT changes the database of the default store's connections.
    pub fn select(&self, db: i64, flags: Flags) {
        self.default_store(flags).select(db);
    }

    pub fn disconnect(&self) {
        self.primary.disconnect();
        self.secondary.disconnect();
    }

    pub fn is_connected(&self, flags: Flags) -> bool {
        self.default_store(flags).is_connected()
    }

    fn timed<T>(
        &self,
        role: Role,
        kind: RequestKind,
        round_trip: impl FnOnce(&Store) -> Result<T>,
    ) -> Result<T> {
        let started = Instant::now();
        let result = round_trip(self.store(role));
        self.metrics.request(role, kind, started);
        result
    }

    fn check_known(
        &self,
        cmd: &Command,
        spec: Option<&CommandSpec>,
        flags: Flags,
        ctx: &mut CallContext,
    ) -> Result<()> {
        if spec.is_some() {
            return Ok(());
        }
        let name = cmd.name();
        self.metrics.method_missing(&name);
        tracing::debug!(instance_name = %self.instance_name, command_name = %name, "command not in the command table");
        ctx.events.push(Event::MethodMissing);
        if flags.strict {
            return Err(Error::MethodMissing(name));
        }
        Ok(())
    }

    fn outcome<T>(&self, ctx: CallContext, result: Result<T>) -> Outcome<T> {
        Outcome {
            result,
            // Only needed when something is reported; skip the allocation otherwise.
            command_name: if ctx.events.is_empty() {
                String::new()
            } else {
                (ctx.cmd_name)()
            },
            events: ctx.events,
        }
    }

    /// Sends to the non-default store first without waiting, then runs the default store's
    /// round trip, then collects the other reply: latency is the slower store's, not the sum.
    fn write_both(
        &self,
        cmd: &Command,
        default: Role,
        kind: RequestKind,
        ctx: &mut CallContext,
    ) -> Result<Reply> {
        let other = other_role(default);
        let cancel = ctx.cancel;
        self.scripts.observe(cmd);
        let other_started = Instant::now();
        let in_flight = self.store(other).send(std::slice::from_ref(cmd), cancel);
        let reply = self.timed(default, kind, |s| {
            s.call(cmd, ReadTimeout::Configured, cancel)
        });
        let other_reply = in_flight
            .and_then(|f| self.store(other).receive(f, cancel))
            .and_then(|replies| self.recover_noscript(cmd, other, replies, cancel));
        self.metrics.request(other, kind, other_started);
        match other_reply {
            Err(error) => self.non_default_failed(other, error, ctx),
            Ok(replies) => {
                // An error reply only on the non-default store means the stores disagree.
                if let (Some(Reply::Error(line)), Ok(default_reply)) = (replies.first(), &reply) {
                    if !default_reply.is_error() {
                        self.non_default_failed(
                            other,
                            Error::Server(ServerErrorReply::from_line(line)),
                            ctx,
                        );
                    }
                }
            }
        }
        reply
    }

    /// An EVALSHA the other store does not know: load the script there (when it went through
    /// this MultiStore) and run it again, so that store gets the write too.
    fn recover_noscript(
        &self,
        cmd: &Command,
        role: Role,
        replies: Vec<Reply>,
        cancel: &CancelToken,
    ) -> Result<Vec<Reply>> {
        let noscript = replies.first().and_then(Reply::error_code) == Some(&b"NOSCRIPT"[..]);
        let Some(recovery) = noscript.then(|| self.scripts.recovery(cmd)).flatten() else {
            return Ok(replies);
        };
        tracing::debug!(instance_name = %self.instance_name, store = role.name(), "loading a script the store did not know");
        let mut recovered = self.store(role).pipeline(&recovery, cancel)?;
        Ok(recovered.pop().into_iter().collect())
    }

    fn read_with_fallback(
        &self,
        cmd: &Command,
        spec: &CommandSpec,
        ctx: &mut CallContext,
    ) -> Result<Reply> {
        let cancel = ctx.cancel;
        let read = |role: Role| {
            self.timed(role, RequestKind::Read, |s| {
                s.call(cmd, ReadTimeout::Configured, cancel)
            })
        };
        match read(Role::Primary) {
            Ok(Reply::Error(line)) => {
                self.read_failed_on_primary(Error::Server(ServerErrorReply::from_line(&line)), ctx);
            }
            Ok(reply) if !is_miss(spec, &reply) => return Ok(reply),
            Ok(_miss) => {
                let fallback = read(Role::Secondary);
                if matches!(&fallback, Ok(reply) if !is_miss(spec, reply)) {
                    self.metrics.read_fallback_miss();
                    ctx.events.push(Event::ReadFallback);
                }
                return fallback;
            }
            Err(Error::Interrupted) => return Err(Error::Interrupted),
            Err(error) => self.read_failed_on_primary(error, ctx),
        }
        read(Role::Secondary)
    }

    fn read_pipeline_with_fallback(
        &self,
        cmds: &[Command],
        ctx: &mut CallContext,
    ) -> Result<Vec<Reply>> {
        let cancel = ctx.cancel;
        let read =
            |role: Role| self.timed(role, RequestKind::Pipeline, |s| s.pipeline(cmds, cancel));
        let primary = match read(Role::Primary) {
            Err(Error::Interrupted) => return Err(Error::Interrupted),
            Err(error) => {
                self.read_failed_on_primary(error, ctx);
                return read(Role::Secondary);
            }
            Ok(replies) => replies,
        };
        let missed =
            primary
                .iter()
                .zip(cmds)
                .any(|(reply, cmd)| match command_table::lookup(cmd) {
                    Some(spec) => is_miss(spec, reply) || reply.is_error(),
                    None => false,
                });
        if !missed {
            return Ok(primary);
        }
        let secondary = read(Role::Secondary)?;
        if secondary != primary {
            self.metrics.read_fallback_miss();
            ctx.events.push(Event::ReadFallback);
        }
        Ok(secondary)
    }

    fn pipeline_both(
        &self,
        cmds: &[Command],
        default: Role,
        ctx: &mut CallContext,
    ) -> Result<Vec<Reply>> {
        let other = other_role(default);
        let cancel = ctx.cancel;
        let other_started = Instant::now();
        let in_flight = self.store(other).send(cmds, cancel);
        let replies = self.timed(default, RequestKind::Pipeline, |s| s.pipeline(cmds, cancel));
        let other_replies = in_flight.and_then(|f| self.store(other).receive(f, cancel));
        self.metrics
            .request(other, RequestKind::Pipeline, other_started);
        match other_replies {
            Err(error) => self.non_default_failed(other, error, ctx),
            Ok(other_replies) => {
                if matches!(&replies, Ok(r) if *r != other_replies) {
                    self.metrics.pipelined_diff();
                    tracing::debug!(instance_name = %self.instance_name, "pipeline results differ between the stores");
                    ctx.events.push(Event::PipelinedDiff);
                }
            }
        }
        replies
    }

    fn mirror(&self, cmds: &[Command], role: Role, ctx: &mut CallContext) {
        let cancel = ctx.cancel;
        if let Err(error) = self.timed(role, RequestKind::Pipeline, |s| s.pipeline(cmds, cancel)) {
            self.non_default_failed(role, error, ctx);
        }
    }

    fn non_default_failed(&self, role: Role, error: Error, ctx: &mut CallContext) {
        self.metrics.non_default_write_failure();
        tracing::debug!(
            instance_name = %self.instance_name,
            command_name = %(ctx.cmd_name)(),
            store = role.name(),
            error = %error,
            "write failed on the non-default store"
        );
        ctx.events.push(Event::NonDefaultFailed { role, error });
    }

    fn read_failed_on_primary(&self, error: Error, ctx: &mut CallContext) {
        self.metrics.read_fallback_error();
        ctx.events.push(Event::ReadFromPrimaryFailed { error });
    }
}

fn request_kind(spec: Option<&CommandSpec>) -> RequestKind {
    match spec.map(CommandSpec::kind) {
        Some(CommandKind::Read) => RequestKind::Read,
        Some(CommandKind::Write) => RequestKind::Write,
        _ => RequestKind::Other,
    }
}

fn other_role(role: Role) -> Role {
    match role {
        Role::Primary => Role::Secondary,
        Role::Secondary => Role::Primary,
    }
}
