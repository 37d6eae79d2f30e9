//! `GitlabMultistore::NativeStore`: the core MultiStore as a Ruby object. Every method converts
//! its arguments under the GVL, runs the round trips without it, converts the reply back, and
//! hands the side events to the Ruby reporter.

use crate::convert::{
    command_from_ruby, commands_from_ruby, replies_to_ruby, reply_or_raise, reply_to_hash,
    symbol_hash,
};
use crate::error::to_ruby_error;
use crate::events;
use crate::native_session::NativeSession;
use crate::nogvl::without_gvl;
use crate::store_config::store_config;
use gitlab_multistore::healing::breaker::BreakerSettings;
use gitlab_multistore::multi_store::VerifyStanding;
use gitlab_multistore::{
    CancelToken, Command, Flags, MultiStore, ReadStrategy, Reply, Role, Store,
};
use magnus::value::Opaque;
use magnus::{
    function, gc, method, prelude::*, DataTypeFunctions, Error, IntoValue, RArray, RHash, RModule,
    Ruby, Symbol, TypedData, Value,
};

#[derive(TypedData)]
#[magnus(class = "GitlabMultistore::NativeStore", free_immediately, size, mark)]
pub struct NativeStore {
    inner: MultiStore,
    /// Called with the events of a call; marked so the GC keeps it (and does not move it).
    reporter: Opaque<Value>,
}

impl DataTypeFunctions for NativeStore {
    fn mark(&self, marker: &gc::Marker) {
        marker.mark(self.reporter);
    }
}

impl NativeStore {
    fn new(
        ruby: &Ruby,
        instance_name: String,
        primary: RHash,
        secondary: RHash,
        read_strategy: Symbol,
        reporter: Value,
        tuning: RHash,
    ) -> Result<Self, Error> {
        let strategy = match read_strategy.name()?.as_ref() {
            "primary_with_fallback" => ReadStrategy::PrimaryWithFallback,
            "default_only" => ReadStrategy::DefaultOnly,
            other => {
                return Err(Error::new(
                    ruby.exception_arg_error(),
                    format!(
                    "unknown read_strategy :{other} (use :primary_with_fallback or :default_only)"
                ),
                ))
            }
        };
        let primary = store_config(ruby, primary)?;
        let secondary = store_config(ruby, secondary)?;
        let mut breaker = BreakerSettings::default();
        if let Some(threshold) =
            tuning.lookup::<_, Option<u32>>(ruby.to_symbol("breaker_threshold"))?
        {
            breaker.threshold = threshold.max(1);
        }
        if let Some(seconds) =
            tuning.lookup::<_, Option<f64>>(ruby.to_symbol("breaker_cool_down"))?
        {
            breaker.cool_down = gitlab_multistore::seconds::saturating(seconds);
        }
        let mut inner = MultiStore::new(instance_name, primary, secondary)
            .with_read_strategy(strategy)
            .with_breaker_settings(breaker);
        if let Some(capacity) =
            tuning.lookup::<_, Option<usize>>(ruby.to_symbol("journal_capacity"))?
        {
            inner = inner.with_journal_capacity(capacity);
        }
        Ok(NativeStore {
            inner,
            reporter: Opaque::from(reporter),
        })
    }

    /// The core's cutover-readiness facts; the Ruby side adds the last verify and the verdict.
    fn status(ruby: &Ruby, rb_self: &Self, flags: u32) -> Result<RHash, Error> {
        let flags = Flags::from_bits(flags);
        let cancel = crate::nogvl::cancel_token();
        without_gvl(ruby, || rb_self.inner.check_stores(flags, &cancel))?;
        let status = rb_self.inner.status();
        let sym = |name: &str| ruby.to_symbol(name).into_value_with(ruby);
        let v = |value: u64| value.into_value_with(ruby);
        let per_store = |primary: Value, secondary: Value| {
            symbol_hash(ruby, &[("primary", primary), ("secondary", secondary)])
        };
        let breakers = per_store(
            sym(status.breakers[0].name()),
            sym(status.breakers[1].name()),
        )?;
        let resets = per_store(v(status.resets[0]), v(status.resets[1]))?;
        let in_doubt = per_store(
            v(status.requests_in_doubt[0] as u64),
            v(status.requests_in_doubt[1] as u64),
        )?;
        symbol_hash(
            ruby,
            &[
                ("breaker", breakers.as_value()),
                ("recent_write_failures", v(status.recent_write_failures)),
                ("journal_keys", v(status.journal_keys as u64)),
                ("journal_peak", v(status.journal_peak as u64)),
                ("journal_overflows", v(status.journal_overflows)),
                (
                    "full_verify_needed",
                    status.full_verify_needed.into_value_with(ruby),
                ),
                ("store_resets", resets.as_value()),
                ("requests_in_doubt", in_doubt.as_value()),
                (
                    "repair_from",
                    sym(rb_self.inner.source_of_truth(flags).name()),
                ),
                (
                    "backfill_needed",
                    rb_self.inner.reset_seen().into_value_with(ruby),
                ),
            ],
        )
    }

    /// The core MultiStore, for the backfill and verify that run on its stores.
    pub fn core(&self) -> &MultiStore {
        &self.inner
    }

    fn record_verify(
        &self,
        readiness: f64,
        in_agreement: bool,
        full: bool,
        counted: bool,
        db: i64,
    ) {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |since| since.as_secs_f64());
        self.inner.record_verify(VerifyStanding {
            readiness,
            in_agreement,
            full,
            counted,
            db,
            at,
        });
    }

    /// The partition's last verify as `migration_status[:last_verify]` shows it (`at` in
    /// seconds; Ruby makes it a Time), or nil.
    fn last_verify(ruby: &Ruby, rb_self: &Self) -> Result<Option<RHash>, Error> {
        let Some(standing) = rb_self.inner.last_verify() else {
            return Ok(None);
        };
        symbol_hash(
            ruby,
            &[
                ("readiness", standing.readiness.into_value_with(ruby)),
                ("in_agreement", standing.in_agreement.into_value_with(ruby)),
                ("full", standing.full.into_value_with(ruby)),
                ("counted", standing.counted.into_value_with(ruby)),
                ("db", standing.db.into_value_with(ruby)),
                ("at", standing.at.into_value_with(ruby)),
            ],
        )
        .map(Some)
    }

    fn backfill_token(&self) -> u64 {
        self.inner.backfill_token()
    }

    fn acknowledge_backfill(&self, token: u64) -> bool {
        self.inner.acknowledge_backfill(token)
    }

    fn verify_token(&self, flags: u32) -> Option<u64> {
        self.inner.verify_token(Flags::from_bits(flags))
    }

    fn acknowledge_verify(&self, token: u64) -> bool {
        self.inner.acknowledge_verify(token)
    }

    fn reporter(&self, ruby: &Ruby) -> Value {
        ruby.get_inner(self.reporter)
    }

    fn call(ruby: &Ruby, rb_self: &Self, args: RArray, flags: u32) -> Result<Value, Error> {
        rb_self.call_converting(ruby, args, flags, reply_or_raise)
    }

    /// `call` for a command whose reply redis-rb hands to `Hashify`: the Hash is built here,
    /// saving the Ruby block its pass over the reply (HGETALL of 1,000 fields: see README).
    fn call_hashify(ruby: &Ruby, rb_self: &Self, args: RArray, flags: u32) -> Result<Value, Error> {
        rb_self.call_converting(ruby, args, flags, |ruby, reply| match reply {
            Reply::Error(_) => reply_or_raise(ruby, reply),
            reply => reply_to_hash(ruby, reply),
        })
    }

    fn call_converting(
        &self,
        ruby: &Ruby,
        args: RArray,
        flags: u32,
        convert: impl FnOnce(&Ruby, Reply) -> Result<Value, Error>,
    ) -> Result<Value, Error> {
        let cmd = command_from_ruby(args)?;
        let flags = Flags::from_bits(flags);
        let cancel = crate::nogvl::cancel_token();
        let outcome = without_gvl(ruby, || self.inner.call(&cmd, flags, &cancel))?;
        events::report(ruby, self.reporter(ruby), &outcome)?;
        convert(ruby, outcome.result.map_err(|e| to_ruby_error(ruby, e))?)
    }

    fn call_blocking(
        ruby: &Ruby,
        rb_self: &Self,
        args: RArray,
        timeout: f64,
        flags: u32,
    ) -> Result<Value, Error> {
        let cmd = command_from_ruby(args)?;
        let timeout = crate::convert::blocking_timeout(ruby, timeout)?;
        let flags = Flags::from_bits(flags);
        let cancel = crate::nogvl::cancel_token();
        let outcome = without_gvl(ruby, || {
            rb_self.inner.call_blocking(&cmd, timeout, flags, &cancel)
        })?;
        events::report(ruby, rb_self.reporter(ruby), &outcome)?;
        reply_or_raise(ruby, outcome.result.map_err(|e| to_ruby_error(ruby, e))?)
    }

    /// Replies in order, error replies in place as `Redis::CommandError` objects.
    fn pipeline(
        ruby: &Ruby,
        rb_self: &Self,
        commands: RArray,
        flags: u32,
        readonly: bool,
    ) -> Result<RArray, Error> {
        let cmds = commands_from_ruby(commands)?;
        let flags = Flags::from_bits(flags);
        let cancel = crate::nogvl::cancel_token();
        let outcome = without_gvl(ruby, || {
            rb_self.inner.pipeline(&cmds, flags, readonly, &cancel)
        })?;
        events::report(ruby, rb_self.reporter(ruby), &outcome)?;
        replies_to_ruby(ruby, outcome.result.map_err(|e| to_ruby_error(ruby, e))?)
    }

    /// Runs `work` on the core, without the GVL, with what each call about a session's pinned
    /// connection takes: its commands, the store it is pinned to, the flags.
    fn about_pinned<R>(
        ruby: &Ruby,
        rb_self: &Self,
        commands: RArray,
        flags: u32,
        session: &NativeSession,
        work: impl FnOnce(&MultiStore, &[Command], Role, Flags, &CancelToken) -> R,
    ) -> Result<R, Error> {
        let cmds = commands_from_ruby(commands)?;
        let flags = Flags::from_bits(flags);
        let pinned = session.role();
        let cancel = crate::nogvl::cancel_token();
        without_gvl(ruby, || work(&rb_self.inner, &cmds, pinned, flags, &cancel))
    }

    /// Replays on the other store a transaction that already ran on a session's pinned
    /// connection (WATCH … MULTI … EXEC), targeting the other store of the one it was pinned to.
    fn mirror(
        ruby: &Ruby,
        rb_self: &Self,
        commands: RArray,
        flags: u32,
        session: &NativeSession,
    ) -> Result<(), Error> {
        let outcome = Self::about_pinned(
            ruby,
            rb_self,
            commands,
            flags,
            session,
            |store, cmds, pinned, flags, cancel| {
                store.mirror_transaction(cmds, pinned, flags, cancel)
            },
        )?;
        events::report(ruby, rb_self.reporter(ruby), &outcome)
    }

    /// Writes run on a session's pinned connection outside a transaction reached that store only:
    /// their keys are journaled for re-sync to the other one.
    fn journal_pinned(
        ruby: &Ruby,
        rb_self: &Self,
        commands: RArray,
        flags: u32,
        session: &NativeSession,
    ) -> Result<(), Error> {
        Self::about_pinned(
            ruby,
            rb_self,
            commands,
            flags,
            session,
            |store, cmds, pinned, flags, cancel| store.journal_pinned(cmds, pinned, flags, cancel),
        )
    }

    /// Before commands run on a session's pinned connection: keys they name that the pinned
    /// store missed are copied to it first, and stay registered as being written until the
    /// session's `_end_writes` (see the core's `begin_pinned`). Free while nothing is journaled.
    fn catch_up_pinned(
        ruby: &Ruby,
        rb_self: &Self,
        commands: RArray,
        flags: u32,
        session: &NativeSession,
    ) -> Result<(), Error> {
        if rb_self.inner.journal().is_empty() {
            return Ok(());
        }
        let writes = Self::about_pinned(
            ruby,
            rb_self,
            commands,
            flags,
            session,
            |store, cmds, pinned, flags, cancel| store.begin_pinned(cmds, pinned, flags, cancel),
        )?;
        session.hold_writes(writes);
        Ok(())
    }

    fn session(&self, flags: u32) -> NativeSession {
        NativeSession::new(self.inner.session(Flags::from_bits(flags)))
    }

    fn subscription_session(
        ruby: &Ruby,
        rb_self: &Self,
        flags: u32,
    ) -> Result<NativeSession, Error> {
        let flags = Flags::from_bits(flags);
        let cancel = crate::nogvl::cancel_token();
        let session = without_gvl(ruby, || rb_self.inner.subscription_session(flags, &cancel))?;
        Ok(NativeSession::new(session))
    }

    /// Moves both stores to database `db` (after a pipelined SELECT ran).
    fn set_db(&self, db: i64) {
        self.inner.set_db(db);
    }

    fn disconnect(&self) {
        self.inner.disconnect();
    }

    /// Called with the GVL held, on the Ruby thread's own OS thread: the borrow is that
    /// thread's (see the core's `borrowed`).
    fn borrow_connections(&self) {
        crate::nogvl::claim_borrows();
        self.inner.borrow_connections();
    }

    fn give_back_connections(&self) {
        self.inner.give_back_connections();
    }

    fn is_connected(&self, flags: u32) -> bool {
        self.inner.is_connected(Flags::from_bits(flags))
    }

    fn store_id(ruby: &Ruby, rb_self: &Self, role: Symbol) -> Result<String, Error> {
        Ok(rb_self.store_by_name(ruby, role)?.id())
    }

    /// Seconds one PING to the store takes (its own round trip: the latency a backfill paced by
    /// `max_latency:` watches), without the GVL.
    fn round_trip(ruby: &Ruby, rb_self: &Self, role: Symbol) -> Result<f64, Error> {
        let store = rb_self.store_by_name(ruby, role)?;
        let cancel = crate::nogvl::cancel_token();
        let ping = gitlab_multistore::Command::from_args(["PING"]);
        let started = std::time::Instant::now();
        without_gvl(ruby, || {
            store.call(&ping, gitlab_multistore::ReadTimeout::Configured, &cancel)
        })?
        .map_err(|e| to_ruby_error(ruby, e))?;
        Ok(started.elapsed().as_secs_f64())
    }

    fn store_db(ruby: &Ruby, rb_self: &Self, role: Symbol) -> Result<i64, Error> {
        Ok(rb_self.store_by_name(ruby, role)?.db())
    }

    fn store_read_timeout(ruby: &Ruby, rb_self: &Self, role: Symbol) -> Result<f64, Error> {
        let store = rb_self.store_by_name(ruby, role)?;
        Ok(store
            .config()
            .read_timeout
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0))
    }

    fn same_store(ruby: &Ruby, rb_self: &Self, flags: u32) -> Result<bool, Error> {
        let cancel = crate::nogvl::cancel_token();
        let flags = Flags::from_bits(flags);
        without_gvl(ruby, || rb_self.inner.same_store(flags, &cancel))
    }

    fn store_by_name(&self, ruby: &Ruby, role: Symbol) -> Result<&Store, Error> {
        match role.name()?.as_ref() {
            "primary" => Ok(self.inner.store(Role::Primary)),
            "secondary" => Ok(self.inner.store(Role::Secondary)),
            other => Err(Error::new(
                ruby.exception_arg_error(),
                format!("unknown store :{other}"),
            )),
        }
    }
}

fn forget_partitions() {
    gitlab_multistore::healing::migration_state::MigrationState::forget_all();
}

fn metrics_text() -> String {
    gitlab_multistore::metrics::text()
}

fn flush_logs(ruby: &Ruby) -> Result<(), Error> {
    crate::logging::deliver(ruby)
}

fn set_log_level(level: u8) {
    crate::logging::set_level(level);
}

fn set_metrics_hook(enabled: bool) {
    gitlab_multistore::metrics::set_hook_enabled(enabled);
}

fn set_request_metrics(enabled: bool) {
    gitlab_multistore::metrics::set_request_metrics_enabled(enabled);
}

pub fn init(ruby: &Ruby, module: RModule) -> Result<(), Error> {
    let class = module.define_class("NativeStore", ruby.class_object())?;
    // The flag bits the Ruby side packs for each call, defined once, in the core.
    class.const_set("FLAG_DUAL_WRITE", Flags::DUAL_WRITE)?;
    class.const_set("FLAG_PRIMARY_DEFAULT", Flags::PRIMARY_DEFAULT)?;
    class.const_set("FLAG_STRICT", Flags::STRICT)?;
    class.define_singleton_method("new", function!(NativeStore::new, 6))?;
    class.define_singleton_method(
        "resolve_error_classes",
        function!(crate::error::resolve_classes, 0),
    )?;
    class.define_method("_status", method!(NativeStore::status, 1))?;
    class.define_method(
        "_acknowledge_backfill",
        method!(NativeStore::acknowledge_backfill, 1),
    )?;
    class.define_method("_record_verify", method!(NativeStore::record_verify, 5))?;
    class.define_method("_last_verify", method!(NativeStore::last_verify, 0))?;
    class.define_method("_backfill_token", method!(NativeStore::backfill_token, 0))?;
    class.define_method("_verify_token", method!(NativeStore::verify_token, 1))?;
    class.define_method(
        "_acknowledge_verify",
        method!(NativeStore::acknowledge_verify, 1),
    )?;
    class.define_singleton_method("metrics_text", function!(metrics_text, 0))?;
    class.define_singleton_method("forget_partitions", function!(forget_partitions, 0))?;
    class.define_singleton_method("log_level=", function!(set_log_level, 1))?;
    class.define_singleton_method("flush_logs", function!(flush_logs, 0))?;
    class.define_singleton_method("metrics_hook=", function!(set_metrics_hook, 1))?;
    class.define_singleton_method("request_metrics=", function!(set_request_metrics, 1))?;
    class.define_method("_call", method!(NativeStore::call, 2))?;
    class.define_method("_call_hashify", method!(NativeStore::call_hashify, 2))?;
    class.define_method("_call_blocking", method!(NativeStore::call_blocking, 3))?;
    class.define_method("_pipeline", method!(NativeStore::pipeline, 3))?;
    class.define_method("_session", method!(NativeStore::session, 1))?;
    class.define_method(
        "_subscription_session",
        method!(NativeStore::subscription_session, 1),
    )?;
    class.define_method("_mirror", method!(NativeStore::mirror, 3))?;
    class.define_method("_set_db", method!(NativeStore::set_db, 1))?;
    class.define_method("_journal_pinned", method!(NativeStore::journal_pinned, 3))?;
    class.define_method("_catch_up_pinned", method!(NativeStore::catch_up_pinned, 3))?;
    class.define_method("_disconnect", method!(NativeStore::disconnect, 0))?;
    class.define_method(
        "_borrow_connections",
        method!(NativeStore::borrow_connections, 0),
    )?;
    class.define_method(
        "_give_back_connections",
        method!(NativeStore::give_back_connections, 0),
    )?;
    class.define_method("_connected?", method!(NativeStore::is_connected, 1))?;
    class.define_method("_store_id", method!(NativeStore::store_id, 1))?;
    class.define_method("_round_trip", method!(NativeStore::round_trip, 1))?;
    class.define_method("_store_db", method!(NativeStore::store_db, 1))?;
    class.define_method(
        "_store_read_timeout",
        method!(NativeStore::store_read_timeout, 1),
    )?;
    class.define_method("_same_store?", method!(NativeStore::same_store, 1))?;
    Ok(())
}
