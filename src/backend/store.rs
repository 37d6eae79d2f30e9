//! A store as the MultiStore sees it: one Redis, whatever its shape. Behind it is either one
//! server (`Node`, found directly or through Sentinel) or a Redis Cluster of nodes; every
//! method says what each shape does, so no caller branches on it.

use crate::backend::cluster::{Cluster, ClusterInFlight};
pub use crate::backend::node::ReadTimeout;
use crate::backend::node::{Node, NodeInFlight, ResetSignal};
use crate::error::{Error, Result};
use crate::protocol::command::Command;
use crate::transport::cancel::CancelToken;
use crate::transport::config::StoreConfig;
use crate::transport::connection::Reply;
use crate::transport::in_doubt::InDoubt;
use std::sync::Arc;
use std::time::Duration;

// One per store, which lives behind an `Arc`: the size of the variants does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Backend {
    Node(Arc<Node>),
    Cluster(Cluster),
}

/// Commands sent whose replies have not been read yet.
// Lives on the stack for one round trip: boxing the connection would cost an allocation per
// dual write.
#[allow(clippy::large_enum_variant)]
pub enum InFlight {
    Node(NodeInFlight),
    Cluster(Box<ClusterInFlight>),
}

pub struct Store {
    /// As configured (for a cluster: with its seeds).
    config: StoreConfig,
    backend: Backend,
    /// Shared with the nodes: a node's restart is this store's.
    reset: Arc<ResetSignal>,
    /// Shared with the nodes: the store is settled as a whole.
    in_doubt: Arc<InDoubt>,
}

impl Store {
    pub fn new(config: StoreConfig) -> Store {
        let reset = Arc::new(ResetSignal::default());
        let in_doubt = Arc::new(InDoubt::new());
        let backend = if config.cluster.is_some() {
            Backend::Cluster(Cluster::new(
                &config,
                Arc::clone(&reset),
                Arc::clone(&in_doubt),
            ))
        } else {
            Backend::Node(Arc::new(Node::new(
                config.clone(),
                Arc::clone(&reset),
                Arc::clone(&in_doubt),
            )))
        };
        Store {
            config,
            backend,
            reset,
            in_doubt,
        }
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    pub fn cluster(&self) -> Option<&Cluster> {
        match &self.backend {
            Backend::Cluster(cluster) => Some(cluster),
            Backend::Node(_) => None,
        }
    }

    /// Waits until every command this store sent without reading its reply (a timeout, an
    /// interrupt) has run or never will: a re-sync, verify or backfill that reads or copies keys
    /// before that could see a write land behind it. `Error::RequestsInDoubt` when the server
    /// is still busy with them (or stopped) after `timeout`.
    pub fn settle_requests_in_doubt(&self, timeout: Duration, cancel: &CancelToken) -> Result<()> {
        self.in_doubt
            .settle(timeout, cancel)
            .map_err(|error| match error {
                Error::Timeout => Error::RequestsInDoubt {
                    store: self.id(),
                    waited_ms: timeout.as_millis() as u64,
                },
                other => other,
            })
    }

    /// Sockets whose commands may still run on the server, after a look that does not wait.
    pub fn requests_in_doubt(&self) -> usize {
        self.in_doubt.pending()
    }

    /// Called when a socket in doubt had to be let go before its server closed it (too many at
    /// once): a write it carried may land unseen.
    pub fn with_in_doubt_given_up_hook(self, hook: impl Fn() + Send + Sync + 'static) -> Self {
        self.in_doubt.on_given_up(hook);
        self
    }

    /// Called (without the GVL, from whichever thread noticed) when the server (for a cluster:
    /// any node) restarted.
    pub fn with_reset_hook(self, hook: impl Fn() + Send + Sync + 'static) -> Self {
        self.reset.on_fire(hook);
        self
    }

    /// Restarts noticed since this store was created (of any node, for a cluster).
    pub fn resets(&self) -> u64 {
        self.reset.count()
    }

    /// The server's run_id as last seen, if a connection was ever opened; never for a cluster,
    /// whose nodes each have their own.
    pub fn run_id(&self) -> Option<String> {
        match &self.backend {
            Backend::Node(node) => node.run_id(),
            Backend::Cluster(_) => None,
        }
    }

    /// Opens (or reuses) a connection so the server's run_id is known.
    pub fn learn_run_id(&self, cancel: &CancelToken) -> Result<Option<String>> {
        match &self.backend {
            Backend::Node(node) => node.learn_run_id(cancel),
            Backend::Cluster(_) => Ok(None),
        }
    }

    /// Asks the server for its run_id now, so a restart is noticed even by a store no call has
    /// reached since (for a cluster: each node known).
    pub fn check_run_id(&self, cancel: &CancelToken) -> Result<()> {
        match &self.backend {
            Backend::Node(node) => node.check_run_id(cancel),
            Backend::Cluster(cluster) => cluster
                .nodes()
                .iter()
                .try_for_each(|node| node.check_run_id(cancel)),
        }
    }

    /// How many SCANs can walk this store side by side: one per master of a cluster, else one.
    pub fn scan_lanes(&self, cancel: &CancelToken) -> Result<usize> {
        match &self.backend {
            Backend::Node(_) => Ok(1),
            Backend::Cluster(cluster) => Ok(cluster.master_count(cancel)?.clamp(1, 256)),
        }
    }

    /// The node a caller pins a connection of (WATCH … EXEC, a subscription): the server, or
    /// for a cluster the master of `cmd`'s key (any master when it names none).
    pub fn node_for(&self, cmd: Option<&Command>, cancel: &CancelToken) -> Result<Arc<Node>> {
        match &self.backend {
            Backend::Node(node) => Ok(Arc::clone(node)),
            Backend::Cluster(cluster) => cluster.node_for(cmd, cancel),
        }
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// The database this store's commands run in. A cluster's is the configured one, which
    /// only names the store (its nodes have database 0 alone, as redis-rb's cluster client).
    pub fn db(&self) -> i64 {
        match &self.backend {
            Backend::Node(node) => node.db(),
            Backend::Cluster(_) => self.config.db,
        }
    }

    pub fn id(&self) -> String {
        match &self.backend {
            Backend::Node(node) => node.id(),
            Backend::Cluster(_) => self.config.id(),
        }
    }

    /// redis-rb's `connected?`: for a cluster, whether any node is.
    pub fn is_connected(&self) -> bool {
        match &self.backend {
            Backend::Node(node) => node.is_connected(),
            Backend::Cluster(cluster) => cluster.nodes().iter().any(|node| node.is_connected()),
        }
    }

    /// Sends one command, reconnecting and retrying after a connection error as redis-rb does.
    pub fn call(&self, cmd: &Command, timeout: ReadTimeout, cancel: &CancelToken) -> Result<Reply> {
        match &self.backend {
            Backend::Node(node) => node.call(cmd, timeout, cancel),
            Backend::Cluster(cluster) => cluster.call(cmd, timeout, cancel),
        }
    }

    /// Sends a batch in one round trip (one per node on a cluster). Retried only when nothing
    /// was read yet, as redis-rb does, since a partly read pipeline may have been partly applied.
    pub fn pipeline(&self, cmds: &[Command], cancel: &CancelToken) -> Result<Vec<Reply>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        match &self.backend {
            Backend::Node(node) => node.pipeline(cmds, cancel),
            Backend::Cluster(cluster) => cluster.pipeline(cmds, cancel),
        }
    }

    /// Sends a batch without waiting: the caller does other work (the other store's round trip)
    /// and then collects the replies with `receive`. Not retried: used for the non-default
    /// store, whose failures are reported rather than hidden.
    pub fn send(&self, cmds: &[Command], cancel: &CancelToken) -> Result<InFlight> {
        match &self.backend {
            Backend::Node(node) => Ok(InFlight::Node(node.send(cmds, cancel)?)),
            Backend::Cluster(cluster) => {
                Ok(InFlight::Cluster(Box::new(cluster.send(cmds, cancel)?)))
            }
        }
    }

    pub fn receive(&self, in_flight: InFlight, cancel: &CancelToken) -> Result<Vec<Reply>> {
        match (&self.backend, in_flight) {
            (Backend::Node(node), InFlight::Node(sent)) => node.receive(sent, cancel),
            (Backend::Cluster(cluster), InFlight::Cluster(sent)) => cluster.receive(*sent, cancel),
            _ => Err(Error::InvalidConfig(
                "replies read from another store than the one sent to".into(),
            )),
        }
    }

    /// From now until the matching `give_back`, this thread's round trips to this store use one
    /// connection (see `borrowed`). Borrows nest. A Redis Cluster store keeps no connection for
    /// the thread: its commands go to whichever node owns their keys.
    pub fn borrow(&self) {
        if let Backend::Node(node) = &self.backend {
            node.borrow();
        }
    }

    pub fn give_back(&self) {
        if let Backend::Node(node) = &self.backend {
            node.give_back();
        }
    }

    /// Changes the database of every connection: later calls open connections on `db`. Redis
    /// Cluster has database 0 only; redis-rb's cluster client ignores `db=` too.
    pub fn select(&self, db: i64) {
        if let Backend::Node(node) = &self.backend {
            node.select(db);
        }
    }

    /// Closes the idle connections (of every node); connections in use are closed when they
    /// come back.
    pub fn disconnect(&self) {
        match &self.backend {
            Backend::Node(node) => node.disconnect(),
            Backend::Cluster(cluster) => cluster.nodes().iter().for_each(|node| node.disconnect()),
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("id", &self.id()).finish()
    }
}

/// A blocking command's socket timeout, computed as redis-rb's `call_with_timeout` does: the
/// read timeout plus the command's own, or no timeout at all when the command waits forever.
pub fn blocking_read_timeout(config: &StoreConfig, command_timeout: Duration) -> ReadTimeout {
    if command_timeout.is_zero() {
        ReadTimeout::Override(None)
    } else {
        let base = config.read_timeout.unwrap_or_default();
        ReadTimeout::Override(Some(base + command_timeout))
    }
}
