//! `GitlabMultistore::NativeSession`: a connection pinned to one Ruby thread for WATCH … EXEC,
//! MULTI without a block, and subscriptions.

use crate::convert::{
    command_from_ruby, commands_from_ruby, replies_to_ruby, reply_or_raise, reply_to_ruby,
};
use crate::error::to_ruby_error;
use crate::nogvl::without_gvl;
use gitlab_multistore::multi_store::session::NextMessage;
use gitlab_multistore::multi_store::PinnedWrites;
use gitlab_multistore::seconds::Wait;
use gitlab_multistore::transport::poll::{self, Ready};
use gitlab_multistore::{Command, ReadTimeout, Session};
use magnus::{method, prelude::*, Error, RArray, RModule, Ruby, Value};
use parking_lot::{Mutex, MutexGuard};
use std::time::Instant;

#[magnus::wrap(class = "GitlabMultistore::NativeSession", free_immediately, size)]
pub struct NativeSession {
    // Locked only inside GVL-free sections, never while holding the GVL, and never across a
    // wait for the server: Ruby code (a signal handler) may run during such a wait and use
    // this session on the same thread.
    inner: Mutex<Session>,
    /// Commands written while the session was busy on this same thread (a signal handler
    /// unsubscribing while the subscription reads a message): sent by the reader right after.
    pending_writes: Mutex<Vec<Command>>,
    role: gitlab_multistore::Role,
    /// Keys registered as being written while a transaction runs on this session and is
    /// replayed on the other store (see the core's `begin_pinned`).
    writes: Mutex<Option<PinnedWrites>>,
}

impl NativeSession {
    pub fn new(session: Session) -> Self {
        NativeSession {
            role: session.role(),
            inner: Mutex::new(session),
            pending_writes: Mutex::new(Vec::new()),
            writes: Mutex::new(None),
        }
    }

    /// Keeps `writes` registered until `_end_writes` (or the session's end); any earlier
    /// registration ends.
    pub fn hold_writes(&self, writes: Option<PinnedWrites>) {
        *self.writes.lock() = writes;
    }

    fn end_writes(&self) {
        self.writes.lock().take();
    }

    /// The store it is pinned to.
    pub fn role(&self) -> gitlab_multistore::Role {
        self.role
    }

    /// The session, for a call that needs its reply. The session belongs to one Ruby thread
    /// (fiber), so finding it locked means this thread re-entered it: Ruby code run in the
    /// middle of a call (a signal handler) calling the same pinned connection, which would
    /// interleave two commands on one socket.
    fn session(&self) -> Result<MutexGuard<'_, Session>, &'static str> {
        self.inner.try_lock().ok_or(
            "the connection pinned to this thread is busy: a call was made from inside \
             another call on it (a signal handler during WATCH/MULTI or a subscription?)",
        )
    }

    fn flush_pending(
        &self,
        session: &mut Session,
        cancel: &gitlab_multistore::CancelToken,
    ) -> gitlab_multistore::Result<()> {
        let pending: Vec<Command> = std::mem::take(&mut *self.pending_writes.lock());
        pending
            .iter()
            .try_for_each(|cmd| session.write(cmd, cancel))
    }

    fn call(ruby: &Ruby, rb_self: &Self, args: RArray) -> Result<Value, Error> {
        let cmd = command_from_ruby(args)?;
        let cancel = crate::nogvl::cancel_token();
        let reply = without_gvl(ruby, || {
            rb_self
                .session()
                .map(|mut session| session.call(&cmd, ReadTimeout::Configured, &cancel))
        })?;
        reply_or_raise(
            ruby,
            busy(ruby, reply)?.map_err(|e| to_ruby_error(ruby, e))?,
        )
    }

    fn call_blocking(
        ruby: &Ruby,
        rb_self: &Self,
        args: RArray,
        timeout: f64,
    ) -> Result<Value, Error> {
        let cmd = command_from_ruby(args)?;
        let timeout = crate::convert::blocking_timeout(ruby, timeout)?;
        let cancel = crate::nogvl::cancel_token();
        let reply = without_gvl(ruby, || {
            rb_self.session().map(|mut session| {
                let read_timeout = session.blocking_read_timeout(timeout);
                session.call(&cmd, read_timeout, &cancel)
            })
        })?;
        reply_or_raise(
            ruby,
            busy(ruby, reply)?.map_err(|e| to_ruby_error(ruby, e))?,
        )
    }

    fn pipeline(ruby: &Ruby, rb_self: &Self, commands: RArray) -> Result<RArray, Error> {
        let cmds = commands_from_ruby(commands)?;
        let cancel = crate::nogvl::cancel_token();
        let replies = without_gvl(ruby, || {
            rb_self
                .session()
                .map(|mut session| session.pipeline(&cmds, &cancel))
        })?;
        replies_to_ruby(
            ruby,
            busy(ruby, replies)?.map_err(|e| to_ruby_error(ruby, e))?,
        )
    }

    /// Sends a command without reading its reply (UNSUBSCRIBE from inside a subscription). When
    /// this thread is in the middle of reading a message (a signal handler unsubscribing), the
    /// command waits for the reader, which sends it as soon as that message is read.
    fn write(ruby: &Ruby, rb_self: &Self, args: RArray) -> Result<(), Error> {
        let cmd = command_from_ruby(args)?;
        let cancel = crate::nogvl::cancel_token();
        let sent = without_gvl(ruby, || match rb_self.inner.try_lock() {
            Some(mut session) => rb_self
                .flush_pending(&mut session, &cancel)
                .and_then(|()| session.write(&cmd, &cancel)),
            None => {
                rb_self.pending_writes.lock().push(cmd);
                Ok(())
            }
        })?;
        sent.map_err(|e| to_ruby_error(ruby, e))
    }

    /// Reads the next reply (a subscription message); `timeout` in seconds, 0 waits forever.
    /// The wait for the server happens with the session unlocked (see `inner`).
    fn read(ruby: &Ruby, rb_self: &Self, timeout: f64) -> Result<Value, Error> {
        let wait = Wait::from_seconds(timeout);
        let deadline = match wait {
            Wait::For(duration) => Some(Instant::now() + duration),
            // redis-rb reads what has already arrived and raises RangeError ("Inf out of Time
            // range") as soon as it would have to wait.
            Wait::OutOfRange => Some(Instant::now()),
            Wait::Forever => None,
        };
        let cancel = crate::nogvl::cancel_token();
        loop {
            let step = without_gvl(ruby, || {
                let mut session = rb_self.session()?;
                Ok(rb_self
                    .flush_pending(&mut session, &cancel)
                    .and_then(|()| session.next_message(&cancel))
                    .and_then(|next| {
                        // Whatever a signal handler wrote while the message was read goes now.
                        rb_self.flush_pending(&mut session, &cancel)?;
                        Ok(next)
                    }))
            })?;
            let sockets = match busy(ruby, step)?.map_err(|e| to_ruby_error(ruby, e))? {
                NextMessage::Reply(reply) => return reply_to_ruby(ruby, reply),
                NextMessage::WaitOn(sockets) => sockets,
            };
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let waited = without_gvl(ruby, || {
                poll::wait_any(&sockets, Ready::Readable, left, &cancel)
            })?;
            match waited {
                Ok(()) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    if wait == Wait::OutOfRange {
                        return Err(Error::new(
                            ruby.exception_range_error(),
                            Wait::out_of_range_message(timeout),
                        ));
                    }
                    return Err(to_ruby_error(ruby, gitlab_multistore::Error::Timeout));
                }
                Err(_) => {
                    return Err(to_ruby_error(ruby, gitlab_multistore::Error::Interrupted));
                }
            }
        }
    }

    fn discard(ruby: &Ruby, rb_self: &Self) -> Result<(), Error> {
        rb_self.pending_writes.lock().clear();
        rb_self.end_writes();
        let done = without_gvl(ruby, || rb_self.session().map(|mut s| s.discard()))?;
        busy(ruby, done)
    }

    fn release(ruby: &Ruby, rb_self: &Self) -> Result<(), Error> {
        rb_self.pending_writes.lock().clear();
        rb_self.end_writes();
        let done = without_gvl(ruby, || rb_self.session().map(|mut s| s.release()))?;
        busy(ruby, done)
    }
}

/// A re-entered session (see `NativeSession::session`) as Ruby's error for the same mistake
/// with a Mutex.
fn busy<T>(ruby: &Ruby, result: Result<T, &'static str>) -> Result<T, Error> {
    result.map_err(|message| {
        Error::new(
            ruby.class_object()
                .const_get::<_, magnus::ExceptionClass>("ThreadError")
                .unwrap_or_else(|_| ruby.exception_runtime_error()),
            message,
        )
    })
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
    class.define_method("_end_writes", method!(NativeSession::end_writes, 0))?;
    Ok(())
}
