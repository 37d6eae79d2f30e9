//! A connection pinned to one caller across several calls. WATCH must be followed by MULTI and
//! EXEC on the same connection, and a subscription reads many replies to one command, so such
//! a caller keeps one connection out of the pool until it is done.

use crate::backend::node::Node;
use crate::backend::store::{blocking_read_timeout, ReadTimeout, Store};
use crate::error::Result;
use crate::fork;
use crate::multi_store::subscription::{Dedup, Side};
use crate::protocol::command::Command;
use crate::routing::Role;
use crate::transport::cancel::CancelToken;
use crate::transport::connection::{Connection, Reply};
use std::sync::Arc;
use std::time::Duration;

/// What `Session::next_message` found.
#[derive(Debug)]
pub enum NextMessage {
    Reply(Reply),
    /// Nothing yet: wait for one of these sockets to become readable, then ask again.
    WaitOn(Vec<std::os::fd::RawFd>),
}

/// A subscription's connection to the store that is not the default one, during dual-write
/// (see `subscription.rs`).
struct Echo {
    store: Arc<Store>,
    conn: Option<Connection>,
    dedup: Dedup,
}

pub struct Session {
    store: Arc<Store>,
    /// Which of the MultiStore's stores it is pinned to: a transaction replayed on the other
    /// store goes to the other one of this, whatever the flags say by then.
    role: Role,
    /// The pinned connection and the node it belongs to.
    conn: Option<(Arc<Node>, Connection)>,
    fork_generation: u64,
    /// On a cluster, a MULTI that opened no connection yet: it is sent with the first command
    /// that follows, on that command's node, since a transaction must run where its keys are.
    deferred_multi: bool,
    /// A command changed the connection's own state (SELECT, RESET, AUTH, HELLO): it is closed
    /// instead of going back to the pool, whose connections are all alike.
    changed_state: bool,
    /// A subscription during dual-write also listens on the other store.
    echo: Option<Echo>,
}

impl Session {
    pub fn new(store: Arc<Store>, role: Role) -> Session {
        Session {
            store,
            role,
            conn: None,
            fork_generation: fork::generation(),
            deferred_multi: false,
            changed_state: false,
            echo: None,
        }
    }

    /// A subscription that also listens on `other`, delivering each message once.
    pub fn with_echo(mut self, other: Arc<Store>) -> Session {
        self.echo = Some(Echo {
            store: other,
            conn: None,
            dedup: Dedup::default(),
        });
        self
    }

    fn note(&mut self, cmds: &[Command]) {
        self.changed_state |= !crate::backend::node::reusable_after(cmds);
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn blocking_read_timeout(&self, timeout: Duration) -> ReadTimeout {
        blocking_read_timeout(self.store.config(), timeout)
    }

    pub fn call(
        &mut self,
        cmd: &Command,
        timeout: ReadTimeout,
        cancel: &CancelToken,
    ) -> Result<Reply> {
        self.note(std::slice::from_ref(cmd));
        if self.conn.is_none() && self.store.cluster().is_some() {
            if let Some(reply) = self.defer_multi(cmd, cancel)? {
                return Ok(reply);
            }
        }
        self.with_connection(Some(cmd), cancel, |conn| match timeout {
            ReadTimeout::Configured => conn.request(cmd, cancel),
            ReadTimeout::Override(t) => conn.with_read_timeout(t, |c| c.request(cmd, cancel)),
        })
    }

    /// A block-less MULTI on a cluster before any connection is pinned: answered OK at once and
    /// sent ahead of the next command (DISCARD then sends nothing). `None`: not such a case.
    fn defer_multi(&mut self, cmd: &Command, cancel: &CancelToken) -> Result<Option<Reply>> {
        let ok = || Reply::Status(b"OK".to_vec());
        if !self.deferred_multi {
            if cmd.name_is("multi") {
                self.deferred_multi = true;
                return Ok(Some(ok()));
            }
            return Ok(None);
        }
        self.deferred_multi = false;
        if cmd.name_is("discard") {
            return Ok(Some(ok()));
        }
        let batch = [Command::from_args(["multi"]), cmd.clone()];
        let mut replies =
            self.with_connection(Some(cmd), cancel, |conn| conn.pipeline(&batch, cancel))?;
        let reply = replies.pop().unwrap_or(Reply::Nil);
        match replies.pop() {
            Some(multi) if multi.is_error() => Ok(Some(multi)),
            _ => Ok(Some(reply)),
        }
    }

    pub fn pipeline(&mut self, cmds: &[Command], cancel: &CancelToken) -> Result<Vec<Reply>> {
        self.note(cmds);
        self.with_connection(cmds.first(), cancel, |conn| conn.pipeline(cmds, cancel))
    }

    /// Sends without reading: the reply arrives among the messages `read` returns. A
    /// subscription's echo gets it too; an echo that fails is given up (the subscription goes on
    /// on the default store).
    pub fn write(&mut self, cmd: &Command, cancel: &CancelToken) -> Result<()> {
        self.with_connection(Some(cmd), cancel, |conn| conn.send(cmd, cancel))?;
        if let Some(echo) = &mut self.echo {
            let sent = match echo.conn.take() {
                Some(conn) => Ok(conn),
                None => echo
                    .store
                    .node_for(None, cancel)
                    .and_then(|node| node.checkout(cancel)),
            }
            .and_then(|mut conn| conn.send(cmd, cancel).map(|()| conn));
            match sent {
                Ok(conn) => echo.conn = Some(conn),
                Err(error) => {
                    tracing::debug!(error = %error, "subscription: the other store is not listened to");
                    self.echo = None;
                }
            }
        }
        Ok(())
    }

    /// Reads the next reply; `None` waits forever.
    pub fn read(&mut self, timeout: Option<Duration>, cancel: &CancelToken) -> Result<Reply> {
        self.with_connection(None, cancel, |conn| {
            conn.with_read_timeout(timeout, |c| c.receive(cancel))
        })
    }

    /// The next message of a subscription if one can be read without waiting for the server
    /// (a message that has begun to arrive is read to its end, within the read timeout), else
    /// the socket to wait on. Waiting happens outside: a caller that holds this session behind
    /// a lock must not hold it while it waits, since a signal handler run during the wait may
    /// need the session (to unsubscribe).
    pub fn next_message(&mut self, cancel: &CancelToken) -> Result<NextMessage> {
        loop {
            let from_default = self.with_connection(None, cancel, |conn| {
                if conn.input_ready() {
                    conn.receive(cancel).map(Ok)
                } else {
                    Ok(Err(conn.socket()))
                }
            })?;
            let default_socket = match from_default {
                Ok(reply) => {
                    let deliver = self
                        .echo
                        .as_mut()
                        .is_none_or(|echo| echo.dedup.deliver(&reply, Side::Default));
                    if deliver {
                        return Ok(NextMessage::Reply(reply));
                    }
                    continue;
                }
                Err(socket) => socket,
            };
            let Some(echo) = &mut self.echo else {
                return Ok(NextMessage::WaitOn(vec![default_socket]));
            };
            let Some(conn) = echo.conn.as_mut() else {
                return Ok(NextMessage::WaitOn(vec![default_socket]));
            };
            if !conn.input_ready() {
                return Ok(NextMessage::WaitOn(vec![default_socket, conn.socket()]));
            }
            match conn.receive(cancel) {
                Ok(reply) => {
                    if echo.dedup.deliver(&reply, Side::Other) {
                        return Ok(NextMessage::Reply(reply));
                    }
                }
                Err(error) => {
                    tracing::debug!(error = %error, "subscription: the other store stopped answering");
                    self.echo = None;
                }
            }
        }
    }

    /// Returns the connection to the pool: the caller has left every connection-bound state
    /// (EXEC, DISCARD or UNWATCH ran, the subscription ended).
    pub fn release(&mut self) {
        // The other store's subscription may not have ended yet: its connection is closed.
        self.drop_echo();
        if std::mem::take(&mut self.changed_state) {
            return self.discard();
        }
        self.deferred_multi = false;
        if let Some((node, conn)) = self.conn.take() {
            if self.fork_generation == fork::generation() {
                node.checkin(conn);
            } else {
                std::mem::forget(conn);
            }
        }
    }

    /// Closes the connection: it may be left in a state (MONITOR, a subscription) no other
    /// caller should inherit.
    pub fn discard(&mut self) {
        self.drop_echo();
        self.deferred_multi = false;
        if let Some((_, conn)) = self.conn.take() {
            if self.fork_generation != fork::generation() {
                std::mem::forget(conn);
            }
        }
    }

    fn drop_echo(&mut self) {
        if let Some(conn) = self.echo.take().and_then(|echo| echo.conn) {
            if self.fork_generation != fork::generation() {
                std::mem::forget(conn);
            }
        }
    }

    /// Runs `f` on the pinned connection, first taking one from the pool of the store (or
    /// cluster node) `first` is for.
    fn with_connection<T>(
        &mut self,
        first: Option<&Command>,
        cancel: &CancelToken,
        f: impl FnOnce(&mut Connection) -> Result<T>,
    ) -> Result<T> {
        if self.fork_generation != fork::generation() {
            // The pinned socket is the parent's: leave it alone and start afresh.
            if let Some(inherited) = self.conn.take() {
                std::mem::forget(inherited);
            }
            self.fork_generation = fork::generation();
        }
        let (node, mut conn) = match self.conn.take() {
            Some(pinned) => pinned,
            None => {
                let node = self.store.node_for(first, cancel)?;
                let conn = node.checkout(cancel)?;
                (node, conn)
            }
        };
        // A connection that failed is dropped: what it was watching or queueing is gone on the
        // server too, so reusing it would only hide that.
        let result = f(&mut conn)?;
        self.conn = Some((node, conn));
        Ok(result)
    }
}

impl Drop for Session {
    /// A session dropped without `release` may still be inside MULTI or a subscription, so its
    /// connection is closed rather than returned to the pool.
    fn drop(&mut self) {
        self.discard();
    }
}
