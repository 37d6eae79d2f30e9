//! The two stores of one functional partition, and the execution of each call's route: the
//! default store's reply is what the caller gets; whatever happens on the other store is
//! reported as an `Event` (and counted), never returned as an error.

pub mod blocking;
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

use crate::healing::migration_state::{
    DUAL_WRITE_NEVER_ON, DUAL_WRITE_OFF_BOTH_DEFAULT, DUAL_WRITE_OFF_PRIMARY_DEFAULT,
    DUAL_WRITE_OFF_SECONDARY_DEFAULT, DUAL_WRITE_ON,
};

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

/// Keys registered with `Journal::writes_begin`, handed back when dropped: the write was
/// answered, failed, or was interrupted.
struct WritesInFlight<'j> {
    journal: &'j Journal,
    keys: Vec<Vec<u8>>,
    /// The write counted for copies that must wait for it (`Journal::write_begins`).
    _counted: Option<crate::healing::write_epochs::WriteInFlight<'j>>,
}

impl Drop for WritesInFlight<'_> {
    fn drop(&mut self) {
        self.journal.writes_end(std::mem::take(&mut self.keys));
    }
}

/// What the presence look before an in-place write found.
enum Presence {
    /// Keys that exist on one store only, to re-sync once the write has run.
    Partial(Vec<Vec<u8>>),
    /// The non-default store did not answer: it is not sent the write either.
    OtherDidNotAnswer(Error),
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
            if let Some(Err(error)) = self.ask(role, default, || store.check_run_id(cancel)) {
                tracing::debug!(instance_name = %self.instance_name, store = role.name(), error = %error, "could not ask the store for its run_id");
            }
        }
    }

    /// A store restarted since this instance began (or since the last full copy): a backfill
    /// is needed again.
    pub fn reset_seen(&self) -> bool {
        self.state.reset_seen.load(Ordering::Acquire)
    }

    /// A backfill ran over every key without a failure: what a restarted store lost has been
    /// copied again. (It does not make the stores agree: it never overwrites a key the primary
    /// has, such as a counter re-created from zero; only a full verify can say they agree.)
    pub fn acknowledge_backfill(&self) {
        self.state.reset_seen.store(false, Ordering::Release);
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

    /// True when both stores hold the same data: the same server (as configured, or as the
    /// servers' run_ids show once both were reached) and the same database. Every write then
    /// goes to one store only, so it is never applied twice.
    pub fn same_store(&self, flags: Flags, cancel: &CancelToken) -> bool {
        if self.configured_same {
            return true;
        }
        let same_server = match self.same_server.load(Ordering::Acquire) {
            SAME_SERVER_UNKNOWN => self.ask_same_server(flags, cancel),
            known => known == SAME_SERVER,
        };
        same_server
            && self.stores.primary.db() == self.stores.secondary.db()
            && self.stores.primary.config().namespace == self.stores.secondary.config().namespace
    }

    /// Compares the servers' run_ids (read by every connection's handshake), connecting to a
    /// store not reached yet. Cached once both are known; while one cannot be reached the
    /// stores count as different (a write then goes to both, as before sameness could be told)
    /// and they are asked again a second later.
    fn ask_same_server(&self, flags: Flags, cancel: &CancelToken) -> bool {
        if self.stores.primary.cluster().is_some() || self.stores.secondary.cluster().is_some() {
            // A cluster's nodes each have their own run_id: sameness is the configuration's.
            self.same_server.store(OTHER_SERVERS, Ordering::Release);
            return false;
        }
        let wait = self
            .stores
            .primary
            .config()
            .connect_timeout
            .unwrap_or(Duration::from_secs(5))
            .saturating_mul(2);
        let _asking = self.same_server_asking.try_lock_for(wait);
        match self.same_server.load(Ordering::Acquire) {
            SAME_SERVER_UNKNOWN => {}
            known => return known == SAME_SERVER, // told while this thread waited
        }
        {
            let mut asked = self.same_server_asked.lock();
            if asked.is_some_and(|at| at.elapsed() < SAME_SERVER_RETRY) {
                return false;
            }
            *asked = Some(Instant::now());
        }
        let run_id = |role: Role| {
            let store = self.store(role);
            if let Some(id) = store.run_id() {
                return Ok(Some(id));
            }
            // Reaching a store that does not answer costs its connect timeout; for the store
            // that is not the default its breaker decides, and hears how it went.
            let default = default_role(flags);
            match self.ask(role, default, || store.learn_run_id(cancel)) {
                Some(answer) => answer,
                None => Err(Error::Interrupted),
            }
        };
        let (Ok(primary), Ok(secondary)) = (run_id(Role::Primary), run_id(Role::Secondary)) else {
            return false;
        };
        // A server that does not tell its run_id (INFO refused) can only be judged by the
        // configuration.
        let same = matches!((&primary, &secondary), (Some(p), Some(s)) if p == s);
        self.same_server.store(
            if same { SAME_SERVER } else { OTHER_SERVERS },
            Ordering::Release,
        );
        if same
            && self.stores.primary.db() == self.stores.secondary.db()
            && self.stores.primary.config().namespace == self.stores.secondary.config().namespace
        {
            tracing::warn!(instance_name = %self.instance_name, "both stores are the same server under two names: each write goes to it once");
        }
        same
    }

    /// A backfill or verify scans a store as a whole: a store on the same server and database
    /// as the other, whose namespace contains the other's ("cache" and "cache:v2", or no
    /// namespace and any), would take the other's keys for its own -- a backfill would copy
    /// them again one level deeper, a repair would delete the only copy. Refused, whatever the
    /// names of the server or the database selected since.
    pub fn check_namespaces_apart(&self, flags: Flags, cancel: &CancelToken) -> Result<()> {
        let (primary, secondary) = (
            &self.stores.primary.config().namespace,
            &self.stores.secondary.config().namespace,
        );
        let contains =
            |outer: &Option<crate::protocol::namespace::Namespace>,
             inner: &Option<crate::protocol::namespace::Namespace>| {
                match (outer, inner) {
                    (None, _) => true,
                    (Some(outer), Some(inner)) => inner.within(outer),
                    (Some(_), None) => false,
                }
            };
        let overlap = (primary.is_some() || secondary.is_some())
            && (contains(primary, secondary) || contains(secondary, primary));
        if !overlap || self.stores.primary.db() != self.stores.secondary.db() {
            return Ok(());
        }
        let same_server = match self.same_server.load(Ordering::Acquire) {
            SAME_SERVER_UNKNOWN => self.ask_same_server(flags, cancel),
            known => known == SAME_SERVER,
        };
        if !same_server {
            return Ok(());
        }
        let name = |ns: &Option<crate::protocol::namespace::Namespace>| match ns {
            Some(ns) => format!("namespace {:?}", String::from_utf8_lossy(ns.name())),
            None => "no namespace".to_string(),
        };
        Err(Error::InvalidConfig(format!(
            "the stores are one server and database, with {} and {}: one would take the other's keys for its own",
            name(primary),
            name(secondary)
        )))
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
        let spec = command_table::lookup(cmd);
        if spec.is_some_and(|spec| routing::blocks(cmd, spec)) {
            // A blocking command sent with `call` waits for the configured read timeout only, as
            // with redis-rb; what it takes is mirrored like any blocking command's.
            return self.run_blocking(cmd, ReadTimeout::Configured, flags, cancel);
        }
        let name = || cmd.name();
        let mut ctx = match self.begin(cmd, spec, flags, &name, cancel) {
            Ok(ctx) => ctx,
            Err(refused) => return refused,
        };
        self.observe_script(spec, cmd);
        let default = default_role(flags);
        let kind = request_kind(spec);
        let on_default = |s: &Store| s.call(cmd, ReadTimeout::Configured, cancel);
        let same_store = flags.dual_write && self.same_store(flags, cancel);
        let result = match (
            routing::route(cmd, spec, flags, self.read_strategy, same_store),
            spec,
        ) {
            (Route::Both, _) => self.write_both(cmd, default, kind, &mut ctx),
            (Route::PrimaryWithFallback, Some(spec)) => {
                self.read_with_fallback(cmd, spec, default, &mut ctx)
            }
            _ => self.timed(default, kind, on_default),
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
        self.run_blocking(cmd, read_timeout, flags, cancel)
    }

    fn run_blocking(
        &self,
        cmd: &Command,
        read_timeout: ReadTimeout,
        flags: Flags,
        cancel: &CancelToken,
    ) -> Outcome<Reply> {
        let spec = command_table::lookup(cmd);
        let name = || cmd.name();
        let mut ctx = match self.begin(cmd, spec, flags, &name, cancel) {
            Ok(ctx) => ctx,
            Err(refused) => return refused,
        };
        let default = default_role(flags);
        let result = self.timed(default, request_kind(spec), |s| {
            s.call(cmd, read_timeout, cancel)
        });
        if flags.dual_write {
            match &result {
                Ok(reply) => {
                    let mirror = blocking::mirror(cmd, reply);
                    if !mirror.is_empty() && !self.same_store(flags, cancel) {
                        self.mirror(&mirror, default.other(), &mut ctx);
                    }
                }
                // What it popped, if it popped anything before the connection failed, cannot be
                // told: the other store is re-synced from the default one.
                Err(error) if error.is_connection_error() => {
                    self.journal_missed(std::slice::from_ref(cmd), default.other());
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
        let result = self.timed(default, RequestKind::Other, |s| {
            s.call(cmd, ReadTimeout::Configured, cancel)
        });
        let db = cmd
            .arg(1)
            .and_then(|db| std::str::from_utf8(db).ok())
            .and_then(|db| db.parse::<i64>().ok());
        if let (Ok(Reply::Status(_)), Some(db)) = (&result, db) {
            let other = default.other();
            if flags.dual_write && !self.same_store(flags, cancel) {
                let checked = self.timed(other, RequestKind::Other, |s| {
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
        for cmd in cmds {
            self.observe_script(command_table::lookup(cmd), cmd);
        }
        let default = default_role(flags);
        // Two databases of one server: a batch that SELECTs moves both stores to one database,
        // where sending it twice would apply it twice.
        let one_server_selecting = || {
            self.same_server.load(Ordering::Acquire) == SAME_SERVER
                && cmds.iter().any(|c| c.name_is("select"))
        };
        if !flags.dual_write || self.same_store(flags, cancel) || one_server_selecting() {
            let result = self.timed(default, RequestKind::Pipeline, |s| s.pipeline(cmds, cancel));
            return self.outcome(ctx, result);
        }
        let only_reads = readonly
            || cmds.iter().all(|c| {
                command_table::lookup(c).map(CommandSpec::kind) == Some(CommandKind::Read)
            });
        let per_key = || {
            cmds.iter().all(|c| {
                command_table::lookup(c).is_some_and(|spec| routing::reads_named_keys_only(c, spec))
            })
        };
        let result =
            if only_reads && self.read_strategy == ReadStrategy::PrimaryWithFallback && per_key() {
                self.read_pipeline_with_fallback(cmds, default, &mut ctx)
            } else if only_reads {
                self.timed(default, RequestKind::Pipeline, |s| s.pipeline(cmds, cancel))
            } else {
                self.pipeline_both(cmds, default, &mut ctx)
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
            self.mirror(cmds, pinned.other(), &mut ctx);
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
            self.journal_missed(cmds, pinned.other());
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
    fn observe_script(&self, spec: Option<&CommandSpec>, cmd: &Command) {
        if matches!(spec.map(|spec| spec.name), Some("eval" | "script|load")) {
            self.state.scripts.observe(cmd);
        }
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

    /// The context of a call, or the outcome of refusing it: a command not in the command
    /// table is counted and reported, and refused before anything is sent in strict mode.
    fn begin<'a>(
        &self,
        cmd: &Command,
        spec: Option<&CommandSpec>,
        flags: Flags,
        name: &'a dyn Fn() -> String,
        cancel: &'a CancelToken,
    ) -> std::result::Result<CallContext<'a>, Outcome<Reply>> {
        let mut ctx = CallContext {
            cmd_name: name,
            cancel,
            events: Vec::new(),
        };
        if let Err(refused) = self.runs_in_namespaces(std::slice::from_ref(cmd)) {
            return Err(self.outcome(ctx, Err(refused)));
        }
        if spec.is_some() {
            return Ok(ctx);
        }
        let command_name = cmd.name();
        self.metrics.method_missing(&command_name);
        tracing::debug!(instance_name = %self.instance_name, command_name = %command_name, "command not in the command table");
        ctx.events.push(Event::MethodMissing);
        if flags.strict {
            return Err(self.outcome(ctx, Err(Error::MethodMissing(command_name))));
        }
        Ok(ctx)
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

    /// Sends to the non-default store first without waiting, then runs the default store's
    /// round trip, then collects the other reply: latency is the slower store's, not the sum.
    /// While the other store's breaker is open it is not asked at all; what it misses is
    /// journaled for re-sync.
    fn write_both(
        &self,
        cmd: &Command,
        default: Role,
        kind: RequestKind,
        ctx: &mut CallContext,
    ) -> Result<Reply> {
        let cancel = ctx.cancel;
        self.guarded_dual_write(
            std::slice::from_ref(cmd),
            default,
            kind,
            ctx,
            |s| s.call(cmd, ReadTimeout::Configured, cancel),
            |ctx| self.write_both_unguarded(cmd, default, kind, ctx),
        )
    }

    /// What every dual write goes through: one breaker admission, taken before the presence
    /// look (a probe after the cool-down is looked before like any write: its keys may exist on
    /// one store only); the writes registered in flight for the re-sync; the presence look; then
    /// `both` -- or `on_default` alone when the other store is skipped or did not answer.
    fn guarded_dual_write<T>(
        &self,
        cmds: &[Command],
        default: Role,
        kind: RequestKind,
        ctx: &mut CallContext,
        on_default: impl FnOnce(&Store) -> Result<T>,
        both: impl FnOnce(&mut CallContext) -> Result<T>,
    ) -> Result<T> {
        let other = default.other();
        // Free while nothing is journaled (no lock taken on the hot path).
        if !self.state.journal.is_empty() && self.breaker(other).state() == BreakerState::Closed {
            self.catch_up_default(cmds, default, ctx.cancel);
        }
        if self.breaker(other).admit() == Admission::Skipped {
            self.metrics.breaker_skipped();
            return self.missing_write(cmds, other, || self.timed(default, kind, on_default));
        }
        let _writes = self.writes_in_flight(cmds);
        match self.keys_only_one_store_has(cmds, default, ctx.cancel)? {
            Presence::Partial(partial) => {
                let reply = both(ctx);
                self.journal_partial(partial, default);
                reply
            }
            Presence::OtherDidNotAnswer(look_failed) => {
                self.write_default_only(cmds, default, kind, look_failed, ctx, on_default)
            }
        }
    }

    /// The other store did not answer the presence look before a write: it is not sent the
    /// write too, which would make the caller wait out its timeout a second time (and a write
    /// answered late would count as no failure, leaving the breaker closed). The write counts
    /// as failed there: reported, fed to its breaker and journaled.
    fn write_default_only<T>(
        &self,
        cmds: &[Command],
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
        let reply = self.missing_write(cmds, other, || self.timed(default, kind, write));
        self.report_non_default_failure(other, look_failed, ctx);
        reply
    }

    /// Runs a write the `lagging` store does not get. Its keys are journaled before it, so reads
    /// go to the default store meanwhile, and registered as written until it is answered, so the
    /// re-sync cannot copy and settle them before the write has landed.
    fn missing_write<T>(&self, cmds: &[Command], lagging: Role, write: impl FnOnce() -> T) -> T {
        let mut registered = Vec::new();
        self.journal_missed_with(cmds, lagging, Some(&mut registered));
        let _writes = WritesInFlight {
            journal: &self.state.journal,
            keys: registered,
            _counted: None,
        };
        write()
    }

    /// Registers a dual write of `cmds` with the journal (see `Journal::writes_begin`) until
    /// the returned guard is dropped.
    fn writes_in_flight(&self, cmds: &[Command]) -> WritesInFlight<'_> {
        let journal = &self.state.journal;
        // A batch with a blocking command stays in flight for as long as it blocks (seconds):
        // counted, it would hold every copy of every key back that long (a stream of them,
        // for ever). Its other writes reach both stores as it is sent, like any pipeline.
        let blocking = cmds
            .iter()
            .any(|cmd| command_table::lookup(cmd).is_some_and(CommandSpec::is_blocking));
        let counted = (!blocking).then(|| journal.write_begins());
        if journal.is_empty() {
            return WritesInFlight {
                journal,
                keys: Vec::new(),
                _counted: counted,
            };
        }
        let keys: Vec<&[u8]> = cmds
            .iter()
            .filter_map(|cmd| command_table::keys(cmd, command_table::lookup(cmd)?))
            .flatten()
            .collect();
        WritesInFlight {
            journal,
            keys: journal.writes_begin(keys),
            _counted: counted,
        }
    }

    fn write_both_unguarded(
        &self,
        cmd: &Command,
        default: Role,
        kind: RequestKind,
        ctx: &mut CallContext,
    ) -> Result<Reply> {
        let other = default.other();
        let cancel = ctx.cancel;
        let other_started = Instant::now();
        let (reply, other_reply) = match crate::multi_store::stream_ids::auto_id_position(cmd) {
            // The other store gets the stream entry under the ID the default store chose.
            Some(id_at) => {
                let reply = self.timed(default, kind, |s| {
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
                let reply = self.timed(default, kind, |s| {
                    s.call(cmd, ReadTimeout::Configured, cancel)
                });
                let other_reply = in_flight
                    .and_then(|f| self.store(other).receive(f, cancel))
                    .and_then(|replies| self.recover_noscript(cmd, other, replies, cancel));
                (reply, other_reply)
            }
        };
        self.metrics.request(other, kind, other_started);
        if reply.as_ref().is_err_and(Error::is_connection_error) && other_reply.is_ok() {
            // The other store may now hold a write the default store never applied: re-sync it
            // from the default store, and meanwhile read the key from the default store only.
            self.journal_missed(std::slice::from_ref(cmd), other);
        }
        match other_reply {
            Err(error) => self.non_default_failed(std::slice::from_ref(cmd), other, error, ctx),
            Ok(replies) => {
                self.breaker_success(other);
                match (replies.first(), &reply) {
                    // An error reply only on the non-default store means the stores disagree.
                    (Some(Reply::Error(line)), Ok(default_reply)) if !default_reply.is_error() => {
                        let error = Error::Server(ServerErrorReply::from_line(line));
                        self.non_default_failed(std::slice::from_ref(cmd), other, error, ctx);
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
                        self.journal_keys_of(cmd, other);
                    }
                    _ => {}
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
        let Some(recovery) = noscript.then(|| self.state.scripts.recovery(cmd)).flatten() else {
            return Ok(replies);
        };
        tracing::debug!(instance_name = %self.instance_name, store = role.name(), "loading a script the store did not know");
        let mut recovered = self.store(role).pipeline(&recovery, cancel)?;
        Ok(recovered.pop().into_iter().collect())
    }

    /// Runs a round trip on `role`, through its circuit breaker when it is the non-default
    /// store: `None` when the breaker skips it. The outcome feeds the breaker.
    fn ask<T>(
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
    fn read_with_fallback(
        &self,
        cmd: &Command,
        spec: &CommandSpec,
        default: Role,
        ctx: &mut CallContext,
    ) -> Result<Reply> {
        let cancel = ctx.cancel;
        let read = |role: Role| {
            self.timed(role, RequestKind::Read, |s| {
                s.call(cmd, ReadTimeout::Configured, cancel)
            })
        };
        if let Some(lagging) = self.journaled(cmd, spec) {
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
        let probes = self.presence_probes(std::slice::from_ref(cmd));
        let read_primary = || {
            if probes.is_empty() {
                return read(Role::Primary).map(|reply| (reply, None));
            }
            let mut batch = probes.clone();
            batch.push(cmd.clone());
            self.timed(Role::Primary, RequestKind::Read, |s| {
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
        let primary = match self.ask(Role::Primary, default, read_primary) {
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
    fn fall_back<T>(
        &self,
        default: Role,
        primary: Option<Result<T>>,
        read_secondary: impl FnOnce() -> Result<T>,
        ctx: &mut CallContext,
        found_more: impl FnOnce(&T) -> bool,
    ) -> Result<T> {
        match (self.ask(Role::Secondary, default, read_secondary), primary) {
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

    fn read_pipeline_with_fallback(
        &self,
        cmds: &[Command],
        default: Role,
        ctx: &mut CallContext,
    ) -> Result<Vec<Reply>> {
        let cancel = ctx.cancel;
        let read =
            |role: Role| self.timed(role, RequestKind::Pipeline, |s| s.pipeline(cmds, cancel));
        let any_journaled = !self.state.journal.is_empty()
            && cmds.iter().any(|c| {
                command_table::lookup(c).is_some_and(|spec| self.journaled(c, spec).is_some())
            });
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
                .zip(cmds)
                .any(|(reply, cmd)| match command_table::lookup(cmd) {
                    Some(spec) => is_miss(spec, reply) || (reply.is_error() && !primary_default),
                    None => false,
                })
        };
        // As for a single read: until the stores agree, the primary's answers count only if it
        // has every key the batch names (asked in the same round trip).
        let probes = self.presence_probes(cmds);
        let read_primary = || {
            if probes.is_empty() {
                return read(Role::Primary).map(|replies| {
                    let missed = missed(&replies);
                    (replies, missed)
                });
            }
            let batch: Vec<Command> = probes.iter().chain(cmds).cloned().collect();
            self.timed(Role::Primary, RequestKind::Pipeline, |s| {
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
        let primary = match self.ask(Role::Primary, default, read_primary) {
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

    fn pipeline_both(
        &self,
        cmds: &[Command],
        default: Role,
        ctx: &mut CallContext,
    ) -> Result<Vec<Reply>> {
        let cancel = ctx.cancel;
        self.guarded_dual_write(
            cmds,
            default,
            RequestKind::Pipeline,
            ctx,
            |s| s.pipeline(cmds, cancel),
            |ctx| self.pipeline_both_unguarded(cmds, default, ctx),
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
    fn keys_only_one_store_has(
        &self,
        cmds: &[Command],
        source: Role,
        cancel: &CancelToken,
    ) -> Result<Presence> {
        if self.state.journal.stores_agree() {
            return Ok(Presence::Partial(Vec::new()));
        }
        let mut per_command: Vec<Vec<&[u8]>> = Vec::new();
        let mut keys: Vec<&[u8]> = Vec::new();
        for cmd in cmds {
            let Some(spec) = command_table::lookup(cmd) else {
                continue;
            };
            if spec.kind() != CommandKind::Write || command_table::replaces_whole_keys(cmd, spec) {
                continue;
            }
            let named = command_table::keys(cmd, spec).unwrap_or_default();
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
    fn presence_probes(&self, cmds: &[Command]) -> Vec<Command> {
        if self.state.journal.stores_agree() {
            return Vec::new();
        }
        let mut keys: Vec<&[u8]> = Vec::new();
        for cmd in cmds {
            if let Some(spec) = command_table::lookup(cmd) {
                for key in command_table::keys(cmd, spec).unwrap_or_default() {
                    if !keys.contains(&key) {
                        keys.push(key);
                    }
                }
            }
        }
        exists_probes(keys)
    }

    fn journal_partial(&self, keys: Vec<Vec<u8>>, default: Role) {
        if keys.is_empty() {
            return;
        }
        tracing::debug!(instance_name = %self.instance_name, keys = keys.len(), "a write changed keys only one store had: re-syncing them");
        self.state
            .journal
            .record(Some(keys.iter().map(Vec::as_slice)), default.other());
        self.metrics.journal_size(self.state.journal.len());
        self.ensure_resync();
    }

    fn pipeline_both_unguarded(
        &self,
        cmds: &[Command],
        default: Role,
        ctx: &mut CallContext,
    ) -> Result<Vec<Reply>> {
        let other = default.other();
        let cancel = ctx.cancel;
        let other_started = Instant::now();
        let (replies, other_replies) = if crate::multi_store::stream_ids::has_auto_id(cmds) {
            // The other store stores XADD * entries under the IDs the default store chose.
            let replies = self.timed(default, RequestKind::Pipeline, |s| s.pipeline(cmds, cancel));
            let mirrored = replies
                .as_ref()
                .ok()
                .and_then(|r| crate::multi_store::stream_ids::mirror_batch(cmds, r));
            let other_cmds = mirrored.as_deref().unwrap_or(cmds);
            (replies, self.store(other).pipeline(other_cmds, cancel))
        } else {
            let in_flight = self.store(other).send(cmds, cancel);
            let replies = self.timed(default, RequestKind::Pipeline, |s| s.pipeline(cmds, cancel));
            (
                replies,
                in_flight.and_then(|f| self.store(other).receive(f, cancel)),
            )
        };
        self.metrics
            .request(other, RequestKind::Pipeline, other_started);
        if replies.as_ref().is_err_and(Error::is_connection_error) && other_replies.is_ok() {
            self.journal_missed(cmds, other);
        }
        match other_replies {
            Err(error) => self.non_default_failed(cmds, other, error, ctx),
            Ok(other_replies) => {
                self.breaker_success(other);
                if matches!(&replies, Ok(r) if *r != other_replies) {
                    self.metrics.pipelined_diff(&(ctx.cmd_name)());
                    tracing::debug!(instance_name = %self.instance_name, "pipeline results differ between the stores");
                    ctx.events.push(Event::PipelinedDiff);
                    // Which of the two is right cannot be told here; the default store's data
                    // is the truth callers see, so the other store is re-synced from it.
                    self.journal_missed(cmds, other);
                }
            }
        }
        replies
    }

    /// Replays on `role` writes that already ran on the other store (a transaction on a pinned
    /// connection, what a blocking pop took). Looked before like any dual write: a key the
    /// other store had and `role` did not is re-synced whole afterwards.
    fn mirror(&self, cmds: &[Command], role: Role, ctx: &mut CallContext) {
        let cancel = ctx.cancel;
        if self.breaker(role).admit() == Admission::Skipped {
            self.metrics.breaker_skipped();
            self.journal_missed(cmds, role);
            return;
        }
        let source = role.other();
        let _counted = self.state.journal.write_begins();
        let partial = match self.keys_only_one_store_has(cmds, source, cancel) {
            Ok(Presence::Partial(partial)) => Some(partial),
            Ok(Presence::OtherDidNotAnswer(error)) => {
                return self.non_default_failed(cmds, role, error, ctx)
            }
            // The source did not answer the look: the replay goes ahead, all its keys re-synced.
            Err(_) => None,
        };
        match self.timed(role, RequestKind::Pipeline, |s| s.pipeline(cmds, cancel)) {
            Ok(replies) => {
                self.breaker_success(role);
                // The other store did not have what the replayed command was to take (the entry
                // a blocking XREADGROUP got had not reached it yet, the element was not there)
                // or refused it: the stores differ, and the key is re-synced from the source.
                for (cmd, reply) in cmds.iter().zip(&replies) {
                    if reply.is_error() || took_nothing(cmd, reply) {
                        self.journal_keys_of(cmd, role);
                    }
                }
            }
            Err(error) => self.non_default_failed(cmds, role, error, ctx),
        }
        match partial {
            Some(partial) => self.journal_partial(partial, source),
            None => self.journal_missed(cmds, role),
        }
    }

    fn non_default_failed(
        &self,
        cmds: &[Command],
        role: Role,
        error: Error,
        ctx: &mut CallContext,
    ) {
        self.journal_missed(cmds, role);
        self.report_non_default_failure(role, error, ctx);
    }

    fn report_non_default_failure(&self, role: Role, error: Error, ctx: &mut CallContext) {
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

    fn read_failed_on_primary(&self, error: Error, ctx: &mut CallContext) {
        self.metrics.read_fallback_error(&(ctx.cmd_name)());
        ctx.events.push(Event::ReadFromPrimaryFailed { error });
    }

    /// Records the keys of the writes among `cmds` as missed by `lagging`, and makes sure the
    /// re-sync task runs.
    fn journal_missed(&self, cmds: &[Command], lagging: Role) {
        self.journal_missed_with(cmds, lagging, None);
    }

    /// `journal_missed`; with `registered`, the keys are also registered as being written (see
    /// `Journal::record_in_flight`).
    fn journal_missed_with(
        &self,
        cmds: &[Command],
        lagging: Role,
        mut registered: Option<&mut Vec<Vec<u8>>>,
    ) {
        for cmd in cmds {
            let Some(spec) = command_table::lookup(cmd) else {
                continue;
            };
            if spec.kind() != CommandKind::Write {
                continue;
            }
            let keys = if command_table::writes_other_database(cmd) {
                None // a full verify (of every database) is needed
            } else {
                command_table::keys(cmd, spec)
            };
            let dropped = match registered.as_deref_mut() {
                Some(registered) => self
                    .state
                    .journal
                    .record_in_flight(keys, lagging, registered),
                None => self.state.journal.record(keys, lagging),
            };
            if dropped > 0 {
                self.metrics.journal_overflow(dropped);
                tracing::warn!(instance_name = %self.instance_name, dropped, "journal full: a full verify is needed");
            }
        }
        self.metrics.journal_size(self.state.journal.len());
        self.ensure_resync();
    }

    /// Records the keys of one write as missed by `lagging`, if it names them (a write without
    /// nameable keys is left alone: its differing answer is no sign of differing data).
    fn journal_keys_of(&self, cmd: &Command, lagging: Role) {
        let Some(spec) = command_table::lookup(cmd) else {
            return;
        };
        match command_table::keys(cmd, spec) {
            Some(keys) if !keys.is_empty() => {
                self.journal_missed(std::slice::from_ref(cmd), lagging);
            }
            _ => {}
        }
    }

    /// The store that missed the latest write of the command's key, if it is journaled.
    fn journaled(&self, cmd: &Command, spec: &CommandSpec) -> Option<Role> {
        if self.state.journal.is_empty() {
            return None;
        }
        let keys = command_table::keys(cmd, spec)?;
        keys.iter().find_map(|key| self.state.journal.lagging(key))
    }

    fn ensure_resync(&self) {
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

    fn resync_context(&self) -> ResyncContext {
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
    fn catch_up_default(&self, cmds: &[Command], default: Role, cancel: &CancelToken) {
        let journal = &self.state.journal;
        if journal.is_empty() {
            return;
        }
        let mut stale: Vec<Vec<u8>> = Vec::new();
        for cmd in cmds {
            let Some(spec) = command_table::lookup(cmd) else {
                continue;
            };
            for key in command_table::keys(cmd, spec).unwrap_or_default() {
                if journal.lagging(key) == Some(default) && !stale.iter().any(|k| k == key) {
                    stale.push(key.to_vec());
                }
            }
        }
        if !stale.is_empty() {
            resync::catch_up(&self.resync_context(), journal, default, &stale, cancel);
        }
    }

    fn breaker_success(&self, role: Role) {
        if self.breaker(role).record_success() == Transition::Closed {
            tracing::warn!(instance_name = %self.instance_name, store = role.name(), "circuit breaker closed: the store answers again");
        }
    }

    fn breaker_failure(&self, role: Role) {
        // Its pooled connections are most likely dead too (restart, reset): the next attempt,
        // the breaker's probe included, gets a fresh one instead of the next dead one.
        self.store(role).disconnect();
        if self.breaker(role).record_failure() == Transition::Opened {
            self.metrics.breaker_opened(role);
            tracing::warn!(instance_name = %self.instance_name, store = role.name(), "circuit breaker opened: not waiting on the store for a cool-down");
        }
    }
}

/// One EXISTS per key, so that each answer says whether that one key is there (and each goes to
/// its own node on a cluster, ahead of the commands that follow it there).
fn exists_probes<'k>(keys: impl IntoIterator<Item = &'k [u8]>) -> Vec<Command> {
    keys.into_iter()
        .map(|key| Command::from_args([&b"EXISTS"[..], key]))
        .collect()
}

/// A replayed removal that removed nothing (see `blocking::mirror`): LREM/ZREM answering 0, an
/// XREADGROUP delivering nothing.
fn took_nothing(cmd: &Command, reply: &Reply) -> bool {
    match reply {
        Reply::Integer(0) => cmd.name_is("lrem") || cmd.name_is("zrem") || cmd.name_is("srem"),
        Reply::Nil => cmd.name_is("xreadgroup"),
        Reply::Array(items) => cmd.name_is("xreadgroup") && items.is_empty(),
        _ => false,
    }
}

/// Whether two stores answering a write differently means their data differs. PUBLISH answers
/// with each server's own subscriber count.
fn replies_tell_the_data(cmd: &Command) -> bool {
    !(cmd.name_is("publish") || cmd.name_is("spublish"))
}

fn request_kind(spec: Option<&CommandSpec>) -> RequestKind {
    match spec.map(CommandSpec::kind) {
        Some(CommandKind::Read) => RequestKind::Read,
        Some(CommandKind::Write) => RequestKind::Write,
        _ => RequestKind::Other,
    }
}

/// The secondary's answers to a read-only batch, but the default primary's error replies where
/// it gave them: those are answers, not misses.
fn keep_errors_of(primary: Vec<Reply>, secondary: Vec<Reply>) -> Vec<Reply> {
    if primary.len() != secondary.len() {
        return secondary;
    }
    primary
        .into_iter()
        .zip(secondary)
        .map(|(p, s)| if p.is_error() { p } else { s })
        .collect()
}
