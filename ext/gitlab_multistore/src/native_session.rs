//! `GitlabMultistore::NativeSession`: a connection pinned to one Ruby thread for WATCH … EXEC,
//! MULTI without a block, and subscriptions.

use crate::convert::{
    command_from_ruby, commands_from_ruby, replies_to_ruby, reply_or_raise, reply_to_ruby,
};
use crate::error::to_ruby_error;
use crate::nogvl::without_gvl;
use gitlab_multistore::{ReadTimeout, Session};
use magnus::{method, prelude::*, Error, RArray, RModule, Ruby, Value};
use parking_lot::Mutex;
use std::time::Duration;

#[magnus::wrap(class = "GitlabMultistore::NativeSession", free_immediately, size)]
pub struct NativeSession {
    // Locked only inside GVL-free sections, never while holding the GVL.
    inner: Mutex<Session>,
}

impl NativeSession {
    pub fn new(session: Session) -> Self {
        NativeSession {
            inner: Mutex::new(session),
        }
    }

    fn call(ruby: &Ruby, rb_self: &Self, args: RArray) -> Result<Value, Error> {
        let cmd = command_from_ruby(args)?;
        let cancel = crate::nogvl::cancel_token();
        let reply = without_gvl(ruby, || {
            rb_self
                .inner
                .lock()
                .call(&cmd, ReadTimeout::Configured, &cancel)
        })?;
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
        let cancel = crate::nogvl::cancel_token();
        let reply = without_gvl(ruby, || {
            let mut session = rb_self.inner.lock();
            let read_timeout = session.blocking_read_timeout(timeout);
            session.call(&cmd, read_timeout, &cancel)
        })?;
        reply_or_raise(ruby, reply.map_err(|e| to_ruby_error(ruby, e))?)
    }

    fn pipeline(ruby: &Ruby, rb_self: &Self, commands: RArray) -> Result<RArray, Error> {
        let cmds = commands_from_ruby(commands)?;
        let cancel = crate::nogvl::cancel_token();
        let replies = without_gvl(ruby, || rb_self.inner.lock().pipeline(&cmds, &cancel))?;
        replies_to_ruby(ruby, replies.map_err(|e| to_ruby_error(ruby, e))?)
    }

    /// Sends a command without reading its reply (UNSUBSCRIBE from inside a subscription).
    fn write(ruby: &Ruby, rb_self: &Self, args: RArray) -> Result<(), Error> {
        let cmd = command_from_ruby(args)?;
        let cancel = crate::nogvl::cancel_token();
        let sent = without_gvl(ruby, || rb_self.inner.lock().write(&cmd, &cancel))?;
        sent.map_err(|e| to_ruby_error(ruby, e))
    }

    /// Reads the next reply (a subscription message); `timeout` 0 waits forever.
    fn read(ruby: &Ruby, rb_self: &Self, timeout: f64) -> Result<Value, Error> {
        let timeout = (timeout > 0.0).then(|| Duration::from_secs_f64(timeout));
        let cancel = crate::nogvl::cancel_token();
        let reply = without_gvl(ruby, || rb_self.inner.lock().read(timeout, &cancel))?;
        reply_to_ruby(ruby, reply.map_err(|e| to_ruby_error(ruby, e))?)
    }

    fn discard(ruby: &Ruby, rb_self: &Self) -> Result<(), Error> {
        without_gvl(ruby, || rb_self.inner.lock().discard())
    }

    fn release(ruby: &Ruby, rb_self: &Self) -> Result<(), Error> {
        without_gvl(ruby, || rb_self.inner.lock().release())
    }
}

pub fn init(ruby: &Ruby, module: RModule) -> Result<(), Error> {
    let class = module.define_class("NativeSession", ruby.class_object())?;
    class.undef_default_alloc_func();
    class.define_method("_call", method!(NativeSession::call, 1))?;
    class.define_method("_call_blocking", method!(NativeSession::call_blocking, 2))?;
    class.define_method("_pipeline", method!(NativeSession::pipeline, 1))?;
    class.define_method("_write", method!(NativeSession::write, 1))?;
    class.define_method("_read", method!(NativeSession::read, 1))?;
    class.define_method("_release", method!(NativeSession::release, 0))?;
    class.define_method("_discard", method!(NativeSession::discard, 0))?;
    Ok(())
}
