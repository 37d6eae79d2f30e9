//! The two stores of one functional partition, and the execution of each call's route: the
//! default store's reply is what the caller gets; whatever happens on the other store is
//! reported as an `Event` (and counted), never returned as an error.

pub mod blocking;
mod dual_write;
mod fallback;
mod missed_writes;
mod same_server;
pub mod session;
pub mod stream_ids;
pub mod subscription;

use crate::backend::store::{blocking_read_timeout, ReadTimeout, Store};
use crate::error::{Error, Result, ServerErrorReply};
use crate::fork::ForkSafeMutex;
use crate::healing::breaker::{Admission, Breaker, BreakerSettings, BreakerState, Transition};
use crate::healing::journal::Journal;
use crate::healing::migration_state::MigrationState;
use crate::healing::resync::{self, ResyncContext};
use crate::metrics::{InstanceMetrics, RequestKind};
use crate::protocol::call::{self, Batch, Call};
use crate::protocol::command::Command;
use crate::protocol::command_table::{self, CommandKind, CommandSpec};
use crate::routing::{self, default_role, is_miss, Flags, PerRole, ReadStrategy, Role, Route};
use crate::transport::cancel::CancelToken;
use crate::transport::config::StoreConfig;
use crate::transport::connection::Reply;
use session::Session;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::healing::migration_state::VerifyStanding;
use crate::healing::migration_state::{
    DUAL_WRITE_NEVER_ON, DUAL_WRITE_OFF_BOTH_DEFAULT, DUAL_WRITE_OFF_PRIMARY_DEFAULT,
    DUAL_WRITE_OFF_SECONDARY_DEFAULT, DUAL_WRITE_ON,
};
pub use missed_writes::PinnedWrites;

/// How long a SELECT waits for a re-sync batch in flight (each round trip of which is bounded
/// by the stores' timeouts).
const DB_SWITCH_WAIT: Duration = Duration::from_secs(5);

const SAME_SERVER_UNKNOWN: u8 = 0;
const SAME_SERVER: u8 = 1;
const OTHER_SERVERS: u8 = 2;
/// How often the run_ids are asked for again while a store does not answer.
const SAME_SERVER_RETRY: Duration = Duration::from_secs(1);

/// How far back `status` counts write failures.
const RECENT_FAILURES_WINDOW: Duration = Duration::from_secs(300);

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
    stores: PerRole<Arc<Store>>,
    /// The configurations name one server and database.
    configured_same: bool,
    /// Whether the two stores are one server under two names (`localhost` and `127.0.0.1`, a
    /// socket and a port), told by the servers' run_ids: `SAME_SERVER_*`.
    same_server: AtomicU8,
    /// When the run_ids were last asked for without an answer, so a store that is down is not
    /// asked on every call.
    same_server_asked: ForkSafeMutex<Option<Instant>>,
    /// One thread asks for the run_ids at a time; the others wait for its answer, so threads
    /// making their first write at once do not each take the stores for two. Held across the
    /// connect, so not a fork-safe lock: only ever waited for with a timeout.
    same_server_asking: parking_lot::Mutex<()>,
    read_strategy: ReadStrategy,
    metrics: InstanceMetrics,
    /// Journal, breakers, restarts, dual-write gaps: shared with the other MultiStores of the
    /// same partition in this process.
    state: Arc<MigrationState>,
}

/// What an operator needs before switching the default store.
#[derive(Debug, Clone)]
pub struct Status {
    /// [primary, secondary]
    pub breakers: [BreakerState; 2],
    pub recent_write_failures: u64,
    pub journal_keys: usize,
    pub journal_peak: usize,
    pub journal_overflows: u64,
    pub full_verify_needed: bool,
    /// Restarts noticed (run_id changed): [primary, secondary].
    pub resets: [u64; 2],
    /// Connections whose commands timed out and may still run on the server: [primary,
    /// secondary]. Until they are settled the stores may yet change behind any comparison.
    pub requests_in_doubt: [usize; 2],
}

/// What one call is doing, for the side effects (events, metrics, logs) of its round trips.
struct CallContext<'a> {
    cmd_name: &'a dyn Fn() -> String,
    cancel: &'a CancelToken,
    events: Vec<Event>,
}

/// Whether a call goes ahead (`MultiStore::start_call`).
enum Start<'a> {
    Go(CallContext<'a>),
    /// Refused before anything was sent: what the caller gets.
    Refused(Outcome<Reply>),
}

impl MultiStore {
    pub fn new(
        instance_name: impl Into<String>,
        primary: StoreConfig,
        secondary: StoreConfig,
    ) -> Self {
        let instance_name = instance_name.into();
        let metrics = InstanceMetrics::new(&instance_name);
        let state = MigrationState::of_partition(&instance_name, &primary, &secondary);
        // A store that restarted may have come back empty, or with data older than the other
        // store's: a backfill is needed again, and until a full verify says otherwise the
        // stores may differ anywhere.
        let reset_hook = |role: Role| {
            let (metrics, state) = (metrics.clone(), Arc::downgrade(&state));
            move || {
                metrics.store_reset(role);
                if let Some(state) = state.upgrade() {
                    state.reset_seen.store(true, Ordering::Release);
                    state.journal.require_full_verify(Some(role.other()));
                }
            }
        };
        // A request in doubt let go unseen may still land on its store: where, nobody knows.
        let given_up_hook = |role: Role| {
            let state = Arc::downgrade(&state);
            move || {
                tracing::warn!(
                    store = role.name(),
                    "a request in doubt was let go: a full verify is needed"
                );
                if let Some(state) = state.upgrade() {
                    state.journal.require_full_verify(None);
                }
            }
        };
        let store = |config: StoreConfig, role: Role| {
            Arc::new(
                Store::new(config)
                    .with_reset_hook(reset_hook(role))
                    .with_in_doubt_given_up_hook(given_up_hook(role)),
            )
        };
        MultiStore {
            configured_same: primary.same_data_as(&secondary),
            same_server: AtomicU8::new(SAME_SERVER_UNKNOWN),
            same_server_asked: ForkSafeMutex::new(None),
            same_server_asking: parking_lot::Mutex::new(()),
            stores: PerRole::new(
                store(primary, Role::Primary),
                store(secondary, Role::Secondary),
            ),
            metrics,
            instance_name,
            read_strategy: ReadStrategy::PrimaryWithFallback,
            state,
        }
    }

    pub fn with_breaker_settings(self, settings: BreakerSettings) -> Self {
        self.state
            .breakers
            .iter()
            .for_each(|b| b.configure(settings));
        self
    }

    pub fn with_journal_capacity(self, capacity: usize) -> Self {
        self.state.journal.set_capacity(capacity);
        self
    }

    pub fn journal(&self) -> &Journal {
        &self.state.journal
    }

    pub fn breaker(&self, role: Role) -> &Breaker {
        &self.state.breakers[role]
    }

    /// What this partition's migration has been through in this process (shared by its
    /// MultiStores).
    pub fn state(&self) -> &Arc<MigrationState> {
        &self.state
    }

    pub fn status(&self) -> Status {
        if !self.state.journal.is_empty() {
            // A forked child inherits the journal but not the re-sync thread.
            self.ensure_resync();
        }
        let cutoff = Instant::now().checked_sub(RECENT_FAILURES_WINDOW);
        let recent_write_failures = {
            let mut failures = self.state.recent_failures.lock();
            while matches!((failures.front(), cutoff), (Some(t), Some(c)) if *t < c) {
                failures.pop_front();
            }
            failures.len() as u64
        };
        Status {
            breakers: [
                self.state.breakers.primary.state(),
                self.state.breakers.secondary.state(),
            ],
            recent_write_failures,
            journal_keys: self.state.journal.len(),
            journal_peak: self.state.journal.peak(),
            journal_overflows: self.state.journal.overflows(),
            full_verify_needed: self.state.journal.full_verify_needed(),
            resets: [self.stores.primary.resets(), self.stores.secondary.resets()],
            requests_in_doubt: [
                self.stores.primary.requests_in_doubt(),
                self.stores.secondary.requests_in_doubt(),
            ],
        }
    }

    /// Asks each store for its run_id, so a restart that no call has run into yet is part of the
    /// verdict, and takes the flags as they are now. A store whose breaker is open is not waited on (its failures are in the status
    /// already).
    pub fn check_stores(&self, flags: Flags, cancel: &CancelToken) {
        // A dual-write gap is part of the verdict even before a call ran into it.
        self.watch_dual_write(flags);
        let default = default_role(flags);
        for role in [Role::Primary, Role::Secondary] {
            let store = self.store(role);
            if let Some(Err(error)) =
                self.through_breaker(role, default, || store.check_run_id(cancel))
            {
                tracing::debug!(instance_name = %self.instance_name, store = role.name(), error = %error, "could not ask the store for its run_id");
            }
        }
    }

    /// A store restarted since this instance began (or since the last full copy): a backfill
    /// is needed again.
    pub fn reset_seen(&self) -> bool {
        self.state.reset_seen.load(Ordering::Acquire)
    }

    /// What a backfill takes when it starts, to hand back to `acknowledge_backfill`: the
    /// restarts noticed so far.
    pub fn backfill_token(&self) -> u64 {
        self.stores.primary.resets() + self.stores.secondary.resets()
    }

    /// A backfill that started with `token` ran over every key without a failure: what a
    /// restarted store lost has been copied again -- unless a store restarted while it ran,
    /// losing keys it had already copied. Whether it counted. (It does not make the stores
    /// agree: it never overwrites a key the primary has, such as a counter re-created from
    /// zero; only a full verify can say they agree.)
    pub fn acknowledge_backfill(&self, token: u64) -> bool {
        if self.backfill_token() != token {
            tracing::warn!(instance_name = %self.instance_name, "a store restarted during the backfill: it has to run again");
            return false;
        }
        self.state.reset_seen.store(false, Ordering::Release);
        true
    }

    /// What a full verify takes when it starts, to hand back to `acknowledge_verify`; `None`
    /// while dual-write is off, when writes reach the default store only and no verify can
    /// vouch for the other.
    pub fn verify_token(&self, flags: Flags) -> Option<u64> {
        self.watch_dual_write(flags);
        flags.dual_write.then(|| self.state.journal.verify_token())
    }

    /// The store whose data is the truth for a repair: the one known to hold every write since
    /// a disturbance (a restarted default store lost its data: the other one has it), else the
    /// default store.
    pub fn source_of_truth(&self, flags: Flags) -> Role {
        self.state
            .journal
            .full_verify_needed()
            .then(|| self.state.journal.complete_store())
            .flatten()
            .unwrap_or(default_role(flags))
    }

    /// A full verify that started at `token` found the stores in agreement. If no store restart
    /// and no unrecorded miss happened since it started, the stores are known to agree: no
    /// backfill or full verify is needed any more. Returns whether the verify counts.
    pub fn acknowledge_verify(&self, token: u64) -> bool {
        let counts = self.state.journal.verified(token);
        if counts {
            self.state.reset_seen.store(false, Ordering::Release);
        }
        counts
    }

    /// Keeps what a verify found for every MultiStore of the partition: a pool of them gives
    /// one answer about it, whichever ran it.
    pub fn record_verify(&self, standing: VerifyStanding) {
        *self.state.last_verify.lock() = Some(standing);
    }

    pub fn last_verify(&self) -> Option<VerifyStanding> {
        self.state.last_verify.lock().clone()
    }

    pub fn with_read_strategy(mut self, strategy: ReadStrategy) -> Self {
        self.read_strategy = strategy;
        self
    }

    pub fn instance_name(&self) -> &str {
        &self.instance_name
    }

    pub fn primary(&self) -> &Arc<Store> {
        &self.stores.primary
    }

    pub fn secondary(&self) -> &Arc<Store> {
        &self.stores.secondary
    }

    pub fn store(&self, role: Role) -> &Arc<Store> {
        &self.stores[role]
    }

    pub fn default_store(&self, flags: Flags) -> &Arc<Store> {
        self.store(default_role(flags))
    }

    pub fn call(&self, cmd: &Command, flags: Flags, cancel: &CancelToken) -> Outcome<Reply> {
        self.watch_dual_write(flags);
        if cmd.name_is("select") {
            return self.select(cmd, flags, cancel);
        }
        let call = Call::new(cmd);
        if call.spec.is_some_and(|spec| routing::blocks(cmd, spec)) {
            // A blocking command sent with `call` waits for the configured read timeout only, as
            // with redis-rb; what it takes is mirrored like any blocking command's.
            return self.run_blocking(call, ReadTimeout::Configured, flags, cancel);
        }
        let name = || cmd.name();
        let mut ctx = match self.start_call(call, flags, &name, cancel) {
            Start::Go(ctx) => ctx,
            Start::Refused(outcome) => return outcome,
        };
        self.observe_script(call);
        let default = default_role(flags);
        let kind = request_kind(call.spec);
        let on_default = |s: &Store| s.call(cmd, ReadTimeout::Configured, cancel);
        let same_store = flags.dual_write && self.same_store(flags, cancel);
        let result = match (
            routing::route(cmd, call.spec, flags, self.read_strategy, same_store),
            call.spec,
        ) {
            (Route::Both, _) => self.write_both(call, default, kind, &mut ctx),
            (Route::PrimaryWithFallback, Some(spec)) => {
                self.read_with_fallback(call, spec, default, &mut ctx)
            }
            _ => self.round_trip(default, kind, on_default),
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
        self.watch_dual_write(flags);
        let read_timeout = blocking_read_timeout(self.default_store(flags).config(), timeout);
        let call = Call::new(cmd);
        self.run_blocking(call, read_timeout, flags, cancel)
    }

    fn run_blocking(
        &self,
        call: Call,
        read_timeout: ReadTimeout,
        flags: Flags,
        cancel: &CancelToken,
    ) -> Outcome<Reply> {
        let cmd = call.cmd;
        let name = || cmd.name();
        let mut ctx = match self.start_call(call, flags, &name, cancel) {
            Start::Go(ctx) => ctx,
            Start::Refused(outcome) => return outcome,
        };
        let default = default_role(flags);
        // It pops from the default store first: what that store missed is copied there before
        // (waiting for a copy another thread has under way), as before any dual write, or it
        // would take a stale element. The keys are not held while it waits: a pop blocked for
        // seconds (or for good, timeout 0) would keep every copy of them -- other threads'
        // catch-ups, the re-sync -- waiting that long.
        if flags.dual_write {
            drop(self.begin_pinned(std::slice::from_ref(cmd), default, flags, cancel));
        }
        let result = self.round_trip(default, request_kind(call.spec), |s| {
            s.call(cmd, read_timeout, cancel)
        });
        if flags.dual_write {
            match &result {
                Ok(reply) => {
                    let mirror = blocking::mirror(cmd, reply);
                    if !mirror.is_empty() && !self.same_store(flags, cancel) {
                        let specs = call::resolve(&mirror);
                        self.mirror(Batch::new(&mirror, &specs), default.other(), &mut ctx);
                    }
                }
                // What it popped, if it popped anything before the connection failed, cannot be
                // told: the other store is re-synced from the default one.
                Err(error) if error.is_connection_error() => {
                    self.journal_missed(Batch::one(&call), default.other());
                }
                Err(_) => {}
            }
        }
        self.outcome(ctx, result)
    }

    /// SELECT moves both stores to the database, as it moves redis-rb's one connection: the
    /// dual-written commands that follow then land in the same database on each. It is asked
    /// of the default store first; an index the server refuses raises and changes nothing, and
    /// the client keeps working on the database it had. With dual-write on, the other store is
    /// asked too, and a refusal there is reported, not raised.
    fn select(&self, cmd: &Command, flags: Flags, cancel: &CancelToken) -> Outcome<Reply> {
        let name = || "select".to_string();
        let mut ctx = CallContext {
            cmd_name: &name,
            cancel,
            events: Vec::new(),
        };
        let default = default_role(flags);
        let result = self.round_trip(default, RequestKind::Other, |s| {
            s.call(cmd, ReadTimeout::Configured, cancel)
        });
        let db = cmd
            .arg(1)
            .and_then(|db| std::str::from_utf8(db).ok())
            .and_then(|db| db.parse::<i64>().ok());
        if let (Ok(Reply::Status(_)), Some(db)) = (&result, db) {
            let other = default.other();
            if flags.dual_write && !self.same_store(flags, cancel) {
                let checked = self.round_trip(other, RequestKind::Other, |s| {
                    s.call(cmd, ReadTimeout::Configured, cancel)
                });
                let refused = match checked {
                    Ok(Reply::Error(line)) => {
                        Some(Error::Server(ServerErrorReply::from_line(&line)))
                    }
                    Ok(_) => None,
                    Err(error) => Some(error),
                };
                if let Some(error) = refused {
                    self.metrics.non_default_write_failure();
                    ctx.events
                        .push(Event::NonDefaultFailed { role: other, error });
                }
            }
            self.set_db(db);
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
        self.watch_dual_write(flags);
        // GitLab's names for a batch in logs and metric labels.
        let batch_name = if cmds.first().is_some_and(|cmd| cmd.name_is("multi")) {
            "multi"
        } else {
            "pipelined"
        };
        let name = || batch_name.to_string();
        let mut ctx = CallContext {
            cmd_name: &name,
            cancel,
            events: Vec::new(),
        };
        if let Err(refused) = self.runs_in_namespaces(cmds) {
            return self.outcome(ctx, Err(refused));
        }
        let specs = call::resolve(cmds);
        let batch = Batch::new(cmds, &specs);
        batch.iter().for_each(|call| self.observe_script(call));
        let default = default_role(flags);
        // Two databases of one server: a batch that SELECTs moves both stores to one database,
        // where sending it twice would apply it twice.
        let one_server_selecting = || {
            self.same_server.load(Ordering::Acquire) == SAME_SERVER
                && cmds.iter().any(|c| c.name_is("select"))
        };
        if !flags.dual_write || self.same_store(flags, cancel) || one_server_selecting() {
            let result =
                self.round_trip(default, RequestKind::Pipeline, |s| s.pipeline(cmds, cancel));
            return self.outcome(ctx, result);
        }
        let only_reads = readonly
            || batch
                .iter()
                .all(|call| call.kind() == Some(CommandKind::Read));
        let per_key = || {
            batch.iter().all(|call| {
                call.spec
                    .is_some_and(|spec| routing::reads_named_keys_only(call.cmd, spec))
            })
        };
        let result =
            if only_reads && self.read_strategy == ReadStrategy::PrimaryWithFallback && per_key() {
                self.read_pipeline_with_fallback(batch, default, &mut ctx)
            } else if only_reads {
                self.round_trip(default, RequestKind::Pipeline, |s| s.pipeline(cmds, cancel))
            } else {
                self.pipeline_both(batch, default, &mut ctx)
            };
        self.outcome(ctx, result)
    }

    /// Replays on the other store what already ran on the store a session was pinned to (a
    /// transaction run on a pinned connection): with dual-write on, or when the pinned store is
    /// no longer the default (the flag flipped between MULTI and EXEC), so the store callers now
    /// read has the write too. Failures are reported, never raised.
    pub fn mirror_transaction(
        &self,
        cmds: &[Command],
        pinned: Role,
        flags: Flags,
        cancel: &CancelToken,
    ) -> Outcome<()> {
        let name = || cmds.first().map(Command::name).unwrap_or_default();
        let mut ctx = CallContext {
            cmd_name: &name,
            cancel,
            events: Vec::new(),
        };
        let wanted = flags.dual_write || default_role(flags) != pinned;
        if wanted && !cmds.is_empty() && !self.same_store(flags, cancel) {
            let specs = call::resolve(cmds);
            self.mirror(Batch::new(cmds, &specs), pinned.other(), &mut ctx);
        }
        self.outcome(ctx, Ok(()))
    }

    /// Journals, for re-sync from the pinned store, the keys of the writes run on a session's
    /// pinned connection outside a transaction (between WATCH and MULTI): they reached that
    /// store only. Wanted while dual-write is on, or when the pinned store is no longer the
    /// default one.
    pub fn journal_pinned(
        &self,
        cmds: &[Command],
        pinned: Role,
        flags: Flags,
        cancel: &CancelToken,
    ) {
        let wanted = flags.dual_write || default_role(flags) != pinned;
        if wanted && !self.same_store(flags, cancel) {
            let specs = call::resolve(cmds);
            self.journal_missed(Batch::new(cmds, &specs), pinned.other());
        }
    }

    /// A session for a subscription: with dual-write on it listens on both stores, delivering
    /// each message once (see `subscription.rs`).
    pub fn subscription_session(&self, flags: Flags, cancel: &CancelToken) -> Session {
        let session = self.session(flags);
        if flags.dual_write && !self.same_store(flags, cancel) {
            let other = default_role(flags).other();
            return session.with_echo(Arc::clone(self.store(other)));
        }
        session
    }

    pub fn session(&self, flags: Flags) -> Session {
        let role = default_role(flags);
        Session::new(Arc::clone(self.store(role)), role)
    }

    /// Moves both stores to database `db` (nothing is sent: their connections reopen on it).
    pub fn set_db(&self, db: i64) {
        // A re-sync copying a batch finishes it in the database its keys were journaled in.
        let _copies_done = self.state.db_switch.try_lock_for(DB_SWITCH_WAIT);
        if db != self.stores.primary.db() && !self.state.journal.is_empty() {
            // The journal names keys of the database it was filled in: re-synced in another, the
            // wrong keys would be copied, and the missed ones never. A full verify (of each
            // database, as the README says) takes over.
            self.state.journal.forget_lagging(None);
            self.state.journal.require_full_verify(None);
            tracing::warn!(instance_name = %self.instance_name, "SELECT while keys waited for re-sync: a full verify is needed");
        }
        self.stores.primary.select(db);
        self.stores.secondary.select(db);
    }

    pub fn disconnect(&self) {
        self.stores.primary.disconnect();
        self.stores.secondary.disconnect();
    }

    /// Until `give_back_connections`, this thread uses one connection of each store for all
    /// its calls (GitLab's `with_borrowed_connection`). Borrows nest.
    pub fn borrow_connections(&self) {
        self.stores.primary.borrow();
        self.stores.secondary.borrow();
    }

    pub fn give_back_connections(&self) {
        self.stores.primary.give_back();
        self.stores.secondary.give_back();
    }

    pub fn is_connected(&self, flags: Flags) -> bool {
        self.default_store(flags).is_connected()
    }

    /// Dual-write turned off and on again leaves a gap: the store that was not the default missed
    /// every write in between, and any key may be stale there (a rollback from "primary only"
    /// to dual-write leaves on the old store keys deleted meanwhile, which a fallback read would
    /// bring back, and lacks keys written meanwhile). So when this process sees dual-write
    /// return after a gap, a full verify is needed, and until it ran reads go only to the store
    /// that was the default during the gap -- whichever store is the default now.
    fn watch_dual_write(&self, flags: Flags) {
        let seen = self.state.dual_write_seen.load(Ordering::Relaxed);
        let off = match default_role(flags) {
            Role::Primary => DUAL_WRITE_OFF_PRIMARY_DEFAULT,
            Role::Secondary => DUAL_WRITE_OFF_SECONDARY_DEFAULT,
        };
        let next = match (flags.dual_write, seen) {
            (true, DUAL_WRITE_ON) | (false, DUAL_WRITE_NEVER_ON | DUAL_WRITE_OFF_BOTH_DEFAULT) => {
                return
            }
            (false, current) if current == off => return,
            (true, _) => DUAL_WRITE_ON,
            (false, DUAL_WRITE_ON) => {
                // A verify running across this cannot vouch for the writes that follow.
                self.state.journal.disturb();
                // What the store now written alone missed before is not copied onto it any
                // more: that would undo the writes it gets from now on (see `resync`).
                self.state.journal.forget_lagging(Some(default_role(flags)));
                off
            }
            // The default store changed while dual-write was off: each store got writes the
            // other did not, and neither may be copied onto.
            (false, _) => {
                self.state.journal.forget_lagging(None);
                DUAL_WRITE_OFF_BOTH_DEFAULT
            }
        };
        if self
            .state
            .dual_write_seen
            .compare_exchange(seen, next, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
            || next != DUAL_WRITE_ON
            || seen == DUAL_WRITE_NEVER_ON
        {
            return;
        }
        let complete = match seen {
            DUAL_WRITE_OFF_PRIMARY_DEFAULT => Some(Role::Primary),
            DUAL_WRITE_OFF_SECONDARY_DEFAULT => Some(Role::Secondary),
            _ => None,
        };
        // Keys journaled before the gap as missed by the store written alone during it (or by
        // either, when both were the default in turn) would be copied onto it from a store
        // that missed the gap's writes.
        self.state.journal.forget_lagging(complete);
        self.state.journal.require_full_verify(complete);
        tracing::warn!(instance_name = %self.instance_name, "dual-write is back after a gap: the store that was not the default missed writes; a full verify is needed");
    }

    /// A backfill or a repairing verify is about to copy keys from one store to the other. While
    /// dual-write is off only the default store gets writes, so what is copied goes stale on the
    /// other store: when dual-write comes on, that is a gap like dual-write turned off and on
    /// again (a full verify is needed; until then reads go to the store that was the default).
    /// Without this, a copy made before dual-write was ever on would be read, stale, from the
    /// primary once dual-write began.
    pub fn copying_between_stores(&self, flags: Flags) {
        self.watch_dual_write(flags);
        if flags.dual_write {
            return;
        }
        let off = match default_role(flags) {
            Role::Primary => DUAL_WRITE_OFF_PRIMARY_DEFAULT,
            Role::Secondary => DUAL_WRITE_OFF_SECONDARY_DEFAULT,
        };
        // Only "never on" changes: any other off state already counts as a gap.
        let _ = self.state.dual_write_seen.compare_exchange(
            DUAL_WRITE_NEVER_ON,
            off,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }

    /// Remembers the body of every script loaded or run through this MultiStore, in every flag
    /// state: an EVALSHA of a script loaded before dual-write began is then recovered on a store
    /// that does not know it yet.
    fn observe_script(&self, call: Call) {
        if matches!(
            call.spec.map(|spec| spec.name),
            Some("eval" | "script|load")
        ) {
            self.state.scripts.observe(call.cmd);
        }
    }

    /// Runs a round trip on the store of `role`, its latency recorded as `kind`.
    fn round_trip<T>(
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

    /// Whether a call goes ahead, with its context: a command a namespaced store would refuse is
    /// refused, and one not in the command table is counted and reported (and refused before
    /// anything is sent in strict mode).
    fn start_call<'a>(
        &self,
        call: Call,
        flags: Flags,
        name: &'a dyn Fn() -> String,
        cancel: &'a CancelToken,
    ) -> Start<'a> {
        let mut ctx = CallContext {
            cmd_name: name,
            cancel,
            events: Vec::new(),
        };
        if let Err(refused) = self.runs_in_namespaces(std::slice::from_ref(call.cmd)) {
            return Start::Refused(self.outcome(ctx, Err(refused)));
        }
        if call.spec.is_some() {
            return Start::Go(ctx);
        }
        let command_name = call.cmd.name();
        self.metrics.method_missing(&command_name);
        tracing::debug!(instance_name = %self.instance_name, command_name = %command_name, "command not in the command table");
        ctx.events.push(Event::MethodMissing);
        if flags.strict {
            return Start::Refused(self.outcome(ctx, Err(Error::MethodMissing(command_name))));
        }
        Start::Go(ctx)
    }

    /// A command a namespaced store would refuse is refused before it reaches either store,
    /// so the other one neither runs it nor counts it as a missed write.
    fn runs_in_namespaces(&self, cmds: &[Command]) -> Result<()> {
        for store in [&self.stores.primary, &self.stores.secondary] {
            if let Some(namespace) = &store.config().namespace {
                for cmd in cmds {
                    namespace.command(cmd)?;
                }
            }
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
}
fn request_kind(spec: Option<&CommandSpec>) -> RequestKind {
    match spec.map(CommandSpec::kind) {
        Some(CommandKind::Read) => RequestKind::Read,
        Some(CommandKind::Write) => RequestKind::Write,
        _ => RequestKind::Other,
    }
}
