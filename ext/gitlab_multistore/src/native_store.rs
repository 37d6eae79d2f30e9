//! `GitlabMultistore::NativeStore`: the core MultiStore as a Ruby object. Every method converts
//! its arguments under the GVL, runs the round trip without it, and converts the reply back.

use crate::convert::{command_from_ruby, commands_from_ruby, replies_to_ruby, reply_or_raise};
use crate::error::to_ruby_error;
use crate::native_session::NativeSession;
use crate::nogvl::without_gvl;
use crate::store_config::store_config;
use gitlab_multistore::{CancelToken, MultiStore, Store};
use magnus::{function, method, prelude::*, Error, RArray, RHash, RModule, Ruby, Value};
use std::time::Duration;

#[magnus::wrap(class = "GitlabMultistore::NativeStore", free_immediately, size)]
pub struct NativeStore {
    inner: MultiStore,
}

impl NativeStore {
    fn new(
        ruby: &Ruby,
        instance_name: String,
        primary: RHash,
        secondary: RHash,
    ) -> Result<Self, Error> {
        let primary = store_config(ruby, primary)?;
        let secondary = store_config(ruby, secondary)?;
        Ok(NativeStore {
            inner: MultiStore::new(instance_name, primary, secondary),
        })
    }

    fn call(ruby: &Ruby, rb_self: &Self, args: RArray) -> Result<Value, Error> {
        let cmd = command_from_ruby(args)?;
        let cancel = CancelToken::new();
        let reply = without_gvl(ruby, &cancel, || rb_self.inner.call(&cmd, &cancel))?;
        reply_or_raise(ruby, reply.map_err(|e| to_ruby_error(ruby, e))?)
    }

    fn call_blocking(
        ruby: &Ruby,
        rb_self: &Self,
        args: RArray,
        timeout: f64,
    ) -> Result<Value, Error> {
        let cmd = command_from_ruby(args)?;
        let timeout = Duration::try_from_secs_f64(timeout.max(0.0)).unwrap_or_default();
        let cancel = CancelToken::new();
        let reply = without_gvl(ruby, &cancel, || {
            rb_self.inner.call_blocking(&cmd, timeout, &cancel)
        })?;
        reply_or_raise(ruby, reply.map_err(|e| to_ruby_error(ruby, e))?)
    }

    /// Replies in order, error replies in place as `Redis::CommandError` objects.
    fn pipeline(ruby: &Ruby, rb_self: &Self, commands: RArray) -> Result<RArray, Error> {
        let cmds = commands_from_ruby(commands)?;
        let cancel = CancelToken::new();
        let replies = without_gvl(ruby, &cancel, || rb_self.inner.pipeline(&cmds, &cancel))?;
        replies_to_ruby(ruby, replies.map_err(|e| to_ruby_error(ruby, e))?)
    }

    fn session(&self) -> NativeSession {
        NativeSession::new(self.inner.session())
    }

    fn select(&self, db: i64) {
        self.inner.select(db);
    }

    fn disconnect(&self) {
        self.inner.disconnect();
    }

    fn is_connected(&self) -> bool {
        self.inner.is_connected()
    }

    fn default_id(&self) -> String {
        self.inner.default_store().id()
    }

    fn primary_id(&self) -> String {
        self.inner.primary().id()
    }

    fn secondary_id(&self) -> String {
        self.inner.secondary().id()
    }

    fn default_db(&self) -> i64 {
        self.inner.default_store().db()
    }

    fn read_timeout(&self) -> f64 {
        store_read_timeout(self.inner.default_store())
    }
}

fn store_read_timeout(store: &Store) -> f64 {
    store
        .config()
        .read_timeout
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

pub fn init(ruby: &Ruby, module: RModule) -> Result<(), Error> {
    let class = module.define_class("NativeStore", ruby.class_object())?;
    class.define_singleton_method("new", function!(NativeStore::new, 3))?;
    class.define_method("_call", method!(NativeStore::call, 1))?;
    class.define_method("_call_blocking", method!(NativeStore::call_blocking, 2))?;
    class.define_method("_pipeline", method!(NativeStore::pipeline, 1))?;
    class.define_method("_session", method!(NativeStore::session, 0))?;
    class.define_method("_select", method!(NativeStore::select, 1))?;
    class.define_method("_disconnect", method!(NativeStore::disconnect, 0))?;
    class.define_method("_connected?", method!(NativeStore::is_connected, 0))?;
    class.define_method("_default_id", method!(NativeStore::default_id, 0))?;
    class.define_method("_primary_id", method!(NativeStore::primary_id, 0))?;
    class.define_method("_secondary_id", method!(NativeStore::secondary_id, 0))?;
    class.define_method("_default_db", method!(NativeStore::default_db, 0))?;
    class.define_method("_read_timeout", method!(NativeStore::read_timeout, 0))?;
    Ok(())
}
