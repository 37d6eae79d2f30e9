//! One Redis server as the core sees it: its configuration and a pool of connections, so Ruby
//! threads sharing one MultiStore never queue behind a single socket. Connections are opened
//! lazily, reopened once after a connection error (redis-rb's `reconnect_attempts`), and never
//! carried across a fork. A standalone store is one node; a Redis Cluster is many.

use crate::error::{Error, Result};
use crate::fork::{self, ForkSafeMutex};
use crate::protocol::command::Command;
use crate::transport::cancel::CancelToken;
use crate::transport::config::StoreConfig;
use crate::transport::connection::{Connection, Reply};
use crate::transport::in_doubt::InDoubt;
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// How long to wait for a reply: the configured read timeout, or a blocking command's own.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum ReadTimeout {
    #[default]
    Configured,
    /// `None` waits forever (a blocking command with timeout 0).
    Override(Option<Duration>),
}

struct Pool {
    fork_generation: u64,
    idle: Mutex<Vec<Connection>>,
}

/// Commands sent to a node whose replies have not been read yet.
pub struct NodeInFlight {
    conn: Connection,
    expected: usize,
}

/// Counts a store's restarts and tells its owner. A cluster's nodes share their store's: a
/// node's restart is the cluster store's.
#[derive(Default)]
pub struct ResetSignal {
    count: AtomicU64,
    hook: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl ResetSignal {
    fn fire(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
        if let Some(hook) = self.hook.get() {
            hook();
        }
    }

    /// Restarts seen so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// Called (without the GVL, from whichever thread noticed) on each restart; set once.
    pub fn on_fire(&self, hook: impl Fn() + Send + Sync + 'static) {
        let _ = self.hook.set(Box::new(hook));
    }
}

pub struct Node {
    /// Names this store in the threads' borrowed connections (`borrowed`).
    uid: u64,
    config: StoreConfig,
    /// The database new connections select; `select` changes it for the whole pool.
    db: AtomicI64,
    epoch: AtomicU64,
    pool: ArcSwap<Pool>,
    /// True once a connection has been opened and until `disconnect`; redis-rb's `connected?`.
    connected: AtomicBool,
    /// The server's run_id as first seen; a new connection finding another one means the
    /// server restarted (and may have lost its data).
    run_id: ForkSafeMutex<Option<String>>,
    reset: Arc<ResetSignal>,
    /// Behind Sentinel: the address the sentinels last gave.
    resolved: ForkSafeMutex<Option<crate::transport::config::Address>>,
    /// Sockets dropped with commands unanswered, until the server has closed them (a cluster's
    /// nodes share their store's).
    in_doubt: Arc<InDoubt>,
}

impl Node {
    pub fn new(config: StoreConfig, reset: Arc<ResetSignal>, in_doubt: Arc<InDoubt>) -> Node {
        fork::install_handler();
        Node {
            uid: crate::transport::borrowed::next_store_id(),
            db: AtomicI64::new(config.db),
            config,
            epoch: AtomicU64::new(0),
            pool: ArcSwap::from_pointee(Pool {
                fork_generation: fork::generation(),
                idle: Mutex::new(Vec::new()),
            }),
            connected: AtomicBool::new(false),
            run_id: ForkSafeMutex::new(None),
            reset,
            resolved: ForkSafeMutex::new(None),
            in_doubt,
        }
    }

    /// The server's run_id as last seen, if a connection was ever opened.
    pub fn run_id(&self) -> Option<String> {
        self.run_id.lock().clone()
    }

    /// Opens (or reuses) a connection so the server's run_id is known.
    pub fn learn_run_id(&self, cancel: &CancelToken) -> Result<Option<String>> {
        let conn = self.checkout(cancel)?;
        self.checkin(conn);
        Ok(self.run_id())
    }

    /// Asks the server for its run_id now, so a restart is noticed even by a store no call has
    /// reached since.
    pub fn check_run_id(&self, cancel: &CancelToken) -> Result<()> {
        let info = self.call(
            &Command::from_args(["info", "server"]),
            ReadTimeout::Configured,
            cancel,
        )?;
        if let Some(id) = info
            .as_bytes()
            .and_then(crate::transport::connection::run_id)
        {
            self.note_run_id(Some(&id));
        }
        Ok(())
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    pub fn db(&self) -> i64 {
        self.db.load(Ordering::Acquire)
    }

    pub fn id(&self) -> String {
        let mut config = self.config.clone();
        config.db = self.db();
        if let Some(address) = self.resolved.lock().clone() {
            config.address = address;
        }
        config.id()
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
            && self.current_pool().fork_generation == fork::generation()
    }

    /// Sends one command, reconnecting and retrying after a connection error as redis-rb does.
    pub fn call(&self, cmd: &Command, timeout: ReadTimeout, cancel: &CancelToken) -> Result<Reply> {
        let reusable = reusable_after(std::slice::from_ref(cmd));
        self.with_retry(std::slice::from_ref(cmd), cancel, |conn| {
            let reply = match timeout {
                ReadTimeout::Configured => conn.request(cmd, cancel),
                ReadTimeout::Override(t) => conn.with_read_timeout(t, |c| c.request(cmd, cancel)),
            }?;
            conn.retired |= !reusable;
            Ok(reply)
        })
    }

    /// Sends a batch in one round trip (retried as `with_retry` says).
    pub fn pipeline(&self, cmds: &[Command], cancel: &CancelToken) -> Result<Vec<Reply>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        let reusable = reusable_after(cmds);
        self.with_retry(cmds, cancel, |conn| {
            let replies = conn.pipeline(cmds, cancel)?;
            if !reusable {
                conn.retired = true;
            }
            Ok(replies)
        })
    }

    /// Sends a batch on a pooled connection without waiting: the caller does other work (the
    /// other store's round trip) and then collects the replies with `receive`. Not retried: used
    /// for the non-default store, whose failures are reported rather than hidden.
    pub fn send(&self, cmds: &[Command], cancel: &CancelToken) -> Result<NodeInFlight> {
        let mut conn = self.checkout(cancel)?;
        conn.send_batch(cmds, cancel)?;
        if !reusable_after(cmds) {
            conn.retired = true;
        }
        Ok(NodeInFlight {
            conn,
            expected: cmds.len(),
        })
    }

    pub fn receive(&self, in_flight: NodeInFlight, cancel: &CancelToken) -> Result<Vec<Reply>> {
        let NodeInFlight { mut conn, expected } = in_flight;
        let mut replies = Vec::with_capacity(expected);
        for _ in 0..expected {
            replies.push(conn.receive(cancel)?);
        }
        self.checkin(conn);
        Ok(replies)
    }

    /// Takes a connection out of the pool for a caller that needs the same connection across
    /// calls (WATCH … EXEC, MULTI without a block). Give it back with `checkin`.
    pub fn checkout(&self, cancel: &CancelToken) -> Result<Connection> {
        if let Some(conn) = crate::transport::borrowed::take(self.uid) {
            // One the server closed, or of a database or pool left since, is replaced by the
            // next one this thread opens or takes.
            if conn.epoch == self.epoch.load(Ordering::Acquire) && conn.still_open() {
                return Ok(conn);
            }
        }
        if let Some(conn) = self.take_idle() {
            return Ok(conn);
        }
        self.open(cancel)
    }

    pub fn checkin(&self, mut conn: Connection) {
        let pool = self.current_pool();
        if conn.retired
            || conn.epoch != self.epoch.load(Ordering::Acquire)
            || pool.fork_generation != fork::generation()
        {
            return;
        }
        conn.set_idle();
        let Some(conn) = crate::transport::borrowed::keep(self.uid, conn) else {
            return; // kept for the thread that borrows this store's connection
        };
        let mut idle = pool.idle.lock();
        if idle.len() < self.config.pool_size {
            idle.push(conn);
        }
    }

    /// From now until the matching `give_back`, this thread's round trips to this store use one
    /// connection (see `borrowed`). Borrows nest.
    pub fn borrow(&self) {
        crate::transport::borrowed::begin(self.uid);
    }

    pub fn give_back(&self) {
        if let Some(conn) = crate::transport::borrowed::end(self.uid) {
            self.checkin(conn);
        }
    }

    /// Changes the database of every connection: later calls open connections on `db`. Nothing
    /// is sent: the connections in the pool are closed, and new ones select `db` when they open.
    pub fn select(&self, db: i64) {
        self.db.store(db, Ordering::Release);
        self.disconnect();
    }

    /// Closes the idle connections; connections in use are closed when they come back.
    pub fn disconnect(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.current_pool().idle.lock().clear();
        self.connected.store(false, Ordering::Release);
    }

    /// Runs `attempt_once` on a pooled connection; after a connection error, once more on a
    /// fresh one (redis-rb's `reconnect_attempts`) -- but only when sending `cmds` again cannot
    /// apply them twice: the connection failed to open, or lost before any byte of them left,
    /// or they only read (GET, PING …). Once a write has reached the server it may have run,
    /// whatever came back: the first replies of a batch, none at all (a server runs a whole
    /// batch and then closes the connection when its replies overflow the client output buffer
    /// limit, or CLIENT KILL lands after it ran), or a timeout (a pipeline is sent in one
    /// write, so the server may answer nothing before it has run all of it). Sending it again
    /// would apply its commands twice (an INCR, an LPOP, a whole MULTI … EXEC). redis-rb 4.8
    /// re-sends a lone command in those cases; this raises instead, so no write is ever applied
    /// twice.
    fn with_retry<T>(
        &self,
        cmds: &[Command],
        cancel: &CancelToken,
        mut attempt_once: impl FnMut(&mut Connection) -> Result<T>,
    ) -> Result<T> {
        let mut attempts = 0;
        loop {
            let (err, may_have_run) = match self.checkout(cancel) {
                Ok(mut conn) => match attempt_once(&mut conn) {
                    Ok(value) => {
                        self.checkin(conn);
                        return Ok(value);
                    }
                    Err(err) => (err, conn.sent_anything()),
                },
                Err(err) => (err, false),
            };
            let retry = matches!(
                err,
                Error::CannotConnect { .. } | Error::ConnectionLost { .. }
            ) && (!may_have_run || only_repeatable(cmds))
                && attempts < self.config.reconnect_attempts
                && !cancel.is_cancelled();
            if !retry {
                return Err(err);
            }
            attempts += 1;
            // After a dropped connection the idle ones are most likely dead as well (server
            // restarted): start over with fresh connections.
            self.disconnect();
            tracing::debug!(store = %self.id(), error = %err, "reconnecting after connection error");
        }
    }

    fn take_idle(&self) -> Option<Connection> {
        let pool = self.current_pool();
        let epoch = self.epoch.load(Ordering::Acquire);
        let mut idle = pool.idle.lock();
        while let Some(conn) = idle.pop() {
            if conn.epoch == epoch && conn.still_open() {
                return Some(conn);
            }
        }
        None
    }

    fn open(&self, cancel: &CancelToken) -> Result<Connection> {
        let mut config = self.config.clone();
        config.db = self.db();
        if let Some(sentinel) = &self.config.sentinel {
            // Asked on every new connection: after a failover the next reconnect follows it.
            config.address = crate::backend::sentinel::resolve(&config, sentinel, cancel)?;
            *self.resolved.lock() = Some(config.address.clone());
        }
        let mut conn = Connection::open(&config, cancel, self.epoch.load(Ordering::Acquire))?;
        conn.report_unanswered_to(Arc::clone(&self.in_doubt));
        if let Some(sentinel) = &self.config.sentinel {
            crate::backend::sentinel::check_role(&mut conn, sentinel, cancel)?;
        }
        self.connected.store(true, Ordering::Release);
        self.note_run_id(conn.run_id.as_deref());
        Ok(conn)
    }

    fn note_run_id(&self, seen: Option<&str>) {
        let Some(seen) = seen else { return };
        let mut known = self.run_id.lock();
        match known.as_deref() {
            None => *known = Some(seen.to_string()),
            Some(id) if id == seen => {}
            Some(_) => {
                *known = Some(seen.to_string());
                drop(known);
                tracing::warn!(store = %self.id(), "store restarted (run_id changed): its data may be gone");
                self.reset.fire();
            }
        }
    }

    /// The pool of this process. In a forked child the inherited pool is left behind untouched:
    /// its sockets are the parent's, and its lock may have been held by a thread that does not
    /// exist in the child. Leaking it (a few idle sockets per fork) is the price of never
    /// touching them.
    fn current_pool(&self) -> arc_swap::Guard<Arc<Pool>> {
        let pool = self.pool.load();
        let generation = fork::generation();
        if pool.fork_generation == generation {
            return pool;
        }
        let fresh = Arc::new(Pool {
            fork_generation: generation,
            idle: Mutex::new(Vec::new()),
        });
        let inherited = self.pool.compare_and_swap(&*pool, fresh);
        if Arc::ptr_eq(&*inherited, &*pool) {
            std::mem::forget(Arc::clone(&*inherited));
        }
        self.connected.store(false, Ordering::Release);
        self.pool.load()
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("id", &self.id()).finish()
    }
}

/// Whether `cmds` can be sent again after they may have run: none of them changes anything.
fn only_repeatable(cmds: &[Command]) -> bool {
    cmds.iter().all(|cmd| {
        crate::protocol::command_table::lookup(cmd).is_some_and(|spec| spec.safe_to_repeat())
    })
}

/// Whether a connection that ran `cmds` can go back to the pool: not after a command that changed
/// its own state -- SELECT (another database than the pool's; the caller moves the whole pool),
/// RESET (back to database 0), AUTH (another user), HELLO (another protocol).
pub(crate) fn reusable_after(cmds: &[Command]) -> bool {
    !cmds.iter().any(|cmd| {
        cmd.name_is("select") || cmd.name_is("reset") || cmd.name_is("auth") || cmd.name_is("hello")
    })
}
