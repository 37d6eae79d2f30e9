//! A connection pinned to one caller across several calls. WATCH must be followed by MULTI and
//! EXEC on the same connection, so a caller that watches (or opens MULTI without a block)
//! keeps one connection out of the pool until it is done.

use crate::cancel::CancelToken;
use crate::command::Command;
use crate::connection::{Connection, Reply};
use crate::error::Result;
use crate::store::{ReadTimeout, Store};
use std::sync::Arc;

pub struct Session {
    store: Arc<Store>,
    conn: Option<Connection>,
}

impl Session {
    pub fn new(store: Arc<Store>) -> Session {
        Session { store, conn: None }
    }

    pub fn call(&mut self, cmd: &Command, timeout: ReadTimeout, cancel: &CancelToken) -> Result<Reply> {
        let mut conn = match self.conn.take() {
            Some(conn) => conn,
            None => self.store.checkout(cancel)?,
        };
        // A connection that failed is dropped: whatever it was watching or queueing is gone on
        // the server too, so reusing it would only hide that.
        let reply = match timeout {
            ReadTimeout::Configured => conn.request(cmd, cancel),
            ReadTimeout::Override(t) => conn.with_read_timeout(t, |c| c.request(cmd, cancel)),
        }?;
        self.conn = Some(conn);
        Ok(reply)
    }

    pub fn pipeline(&mut self, cmds: &[Command], cancel: &CancelToken) -> Result<Vec<Reply>> {
        let mut conn = match self.conn.take() {
            Some(conn) => conn,
            None => self.store.checkout(cancel)?,
        };
        let replies = conn.pipeline(cmds, cancel)?;
        self.conn = Some(conn);
        Ok(replies)
    }

    /// Returns the connection to the pool.
    pub fn release(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.store.checkin(conn);
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.release();
    }
}
