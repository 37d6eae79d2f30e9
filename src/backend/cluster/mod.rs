//! Redis Cluster as one store. The caller sees one Redis: each command goes to the master of its
//! key's slot, MOVED and ASK redirections are followed, the slot map is reloaded when the
//! cluster changes under it, and the commands redis-rb's cluster client spreads over the
//! masters (SCAN, DBSIZE, KEYS, FLUSHDB, SCRIPT LOAD …) are spread the same way. Multi-key
//! commands whose keys live in several slots are split by slot where redis-cluster-client
//! splits them (MGET, MSET, DEL, UNLINK, EXISTS, TOUCH); any other cross-slot command reaches
//! the server, whose CROSSSLOT error is raised as redis-rb raises it.
//!
//! Each node is a `Node` with its own pool, so connections, reconnects, fork safety
//! and restart detection are the node's business, not repeated here.

use crate::backend::node::{Node, NodeInFlight, ReadTimeout, ResetSignal};
use crate::error::{Error, Result, ServerErrorReply};
use crate::protocol::command::Command;
use crate::protocol::command_table;
use crate::transport::cancel::CancelToken;
use crate::transport::config::{Address, StoreConfig};
use crate::transport::connection::Reply;
use crate::transport::in_doubt::InDoubt;
use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod plan;
mod redirect;
mod slot;
mod topology;

use plan::{plan, sum_of, Combine, Plan, Split};
use redirect::{redirect, Redirect};
pub use slot::{key_slot, SLOTS};
use topology::{Topology, MIN_REFRESH_INTERVAL};

/// redis-rb follows at most this many redirections for one command (its `retry_count`, plus
/// the first attempt); a slot still bouncing after that is reported with the server's error.
const MAX_REDIRECTIONS: usize = 5;

/// Commands sent to the cluster's nodes whose replies have not been read yet.
pub struct ClusterInFlight {
    cmds: Vec<Command>,
    /// Per node: what was sent there and the positions of those commands in `cmds`.
    parts: Vec<(Arc<Node>, NodeInFlight, Vec<usize>)>,
    /// Commands run one by one when the replies are collected (split, spread over masters).
    later: Vec<usize>,
    transaction: bool,
}

pub struct Cluster {
    /// The template for each node's configuration (its address is replaced).
    node_config: StoreConfig,
    seeds: Vec<Address>,
    topology: ArcSwapOption<Topology>,
    /// Every node seen, by location, so a reloaded slot map reuses the nodes' pools.
    nodes: Mutex<HashMap<String, Arc<Node>>>,
    /// One reload at a time. Only ever tried with a timeout: a lock held by a thread that did
    /// not survive a fork must not hang the child.
    refreshing: Mutex<()>,
    next_master: AtomicUsize,
    /// The cluster store's: a node's restart (its run_id changed) is the store's.
    reset: Arc<ResetSignal>,
    /// The cluster store's: every node's sockets in doubt count for it.
    in_doubt: Arc<InDoubt>,
}

impl Cluster {
    pub fn new(config: &StoreConfig, reset: Arc<ResetSignal>, in_doubt: Arc<InDoubt>) -> Cluster {
        let seeds = config
            .cluster
            .as_ref()
            .map(|c| c.seeds.clone())
            .unwrap_or_default();
        let mut node_config = config.clone();
        node_config.cluster = None;
        // Redis Cluster has only database 0 (redis-rb's cluster client ignores `db` as well).
        node_config.db = 0;
        Cluster {
            node_config,
            seeds,
            topology: ArcSwapOption::empty(),
            nodes: Mutex::new(HashMap::new()),
            refreshing: Mutex::new(()),
            next_master: AtomicUsize::new(0),
            reset,
            in_doubt,
        }
    }

    pub fn seeds(&self) -> &[Address] {
        &self.seeds
    }

    /// How many masters a SCAN walks (its cursor's low 8 bits name one of them).
    pub fn master_count(&self, cancel: &CancelToken) -> Result<usize> {
        Ok(self.topology(cancel)?.masters.len())
    }

    pub fn nodes(&self) -> Vec<Arc<Node>> {
        self.nodes
            .try_lock_for(Duration::from_secs(1))
            .map(|nodes| nodes.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn call(&self, cmd: &Command, timeout: ReadTimeout, cancel: &CancelToken) -> Result<Reply> {
        match plan(cmd) {
            Plan::Slot(slot) => self.call_slot(cmd, slot, timeout, cancel),
            Plan::AnyMaster => {
                let topology = self.topology(cancel)?;
                self.next_master.fetch_add(1, Ordering::Relaxed);
                self.master_for(&topology, None)?.call(cmd, timeout, cancel)
            }
            Plan::Scan => self.scan(cmd, cancel),
            Plan::AllMasters(combine) => self.call_all_masters(cmd, combine, cancel),
            Plan::Split(split) => self.call_split(cmd, split, cancel),
        }
    }

    pub fn pipeline(&self, cmds: &[Command], cancel: &CancelToken) -> Result<Vec<Reply>> {
        let in_flight = self.send(cmds, cancel)?;
        self.receive(in_flight, cancel)
    }

    /// Sends each command to its node without waiting (one batch per node); a MULTI … EXEC
    /// batch goes whole to the one node its keys live on.
    pub fn send(&self, cmds: &[Command], cancel: &CancelToken) -> Result<ClusterInFlight> {
        let topology = self.topology(cancel)?;
        let transaction = cmds.len() >= 2
            && cmds.first().is_some_and(|c| c.name_is("multi"))
            && cmds.last().is_some_and(|c| c.name_is("exec"));
        let mut groups: Vec<(Arc<Node>, Vec<usize>)> = Vec::new();
        let mut later = Vec::new();
        if transaction {
            let node = self.transaction_node(&topology, cmds)?;
            groups.push((node, (0..cmds.len()).collect()));
        } else {
            for (i, cmd) in cmds.iter().enumerate() {
                match plan(cmd) {
                    Plan::Slot(slot) => {
                        let node = self.master_for(&topology, slot)?;
                        match groups.iter_mut().find(|(n, _)| Arc::ptr_eq(n, &node)) {
                            Some((_, members)) => members.push(i),
                            None => groups.push((node, vec![i])),
                        }
                    }
                    _ => later.push(i),
                }
            }
        }
        let mut parts = Vec::with_capacity(groups.len());
        for (node, members) in groups {
            let batch: Vec<Command> = members.iter().map(|&i| cmds[i].clone()).collect();
            let in_flight = node
                .send(&batch, cancel)
                .map_err(|err| self.after_node_failure(err, cancel))?;
            parts.push((node, in_flight, members));
        }
        Ok(ClusterInFlight {
            cmds: cmds.to_vec(),
            parts,
            later,
            transaction,
        })
    }

    pub fn receive(&self, in_flight: ClusterInFlight, cancel: &CancelToken) -> Result<Vec<Reply>> {
        let ClusterInFlight {
            cmds,
            parts,
            later,
            transaction,
        } = in_flight;
        let mut replies: Vec<Option<Reply>> = vec![None; cmds.len()];
        for (node, in_flight, members) in parts {
            let node_replies = node
                .receive(in_flight, cancel)
                .map_err(|err| self.after_node_failure(err, cancel))?;
            for (i, reply) in members.into_iter().zip(node_replies) {
                replies[i] = Some(reply);
            }
        }
        for i in later {
            replies[i] = Some(self.call(&cmds[i], ReadTimeout::Configured, cancel)?);
        }
        let mut replies: Vec<Reply> = replies
            .into_iter()
            .map(|r| r.unwrap_or(Reply::Nil))
            .collect();
        if transaction {
            return self.retry_moved_transaction(&cmds, replies, cancel);
        }
        // A command that met a redirection is run again on its own, following it. It then runs
        // after the batch's other commands, as redis-cluster-client does.
        for (i, reply) in replies.iter_mut().enumerate() {
            if let Some(redirect) = redirect(reply) {
                if let Redirect::Moved { slot, location } = &redirect {
                    self.moved(*slot, location, cancel);
                }
                *reply = self.call(&cmds[i], ReadTimeout::Configured, cancel)?;
            }
        }
        Ok(replies)
    }

    /// The connection a caller pins (WATCH … EXEC, a subscription) is on the node of the first
    /// command's key, or any master when it names none.
    pub fn node_for(&self, cmd: Option<&Command>, cancel: &CancelToken) -> Result<Arc<Node>> {
        let topology = self.topology(cancel)?;
        let slot = match cmd.map(plan) {
            Some(Plan::Slot(slot)) => slot,
            _ => None,
        };
        self.master_for(&topology, slot)
    }

    fn call_slot(
        &self,
        cmd: &Command,
        slot: Option<u16>,
        timeout: ReadTimeout,
        cancel: &CancelToken,
    ) -> Result<Reply> {
        let mut node = self.master_for(&*self.topology(cancel)?, slot)?;
        let mut asking = false;
        let mut failed_over = false;
        let mut reply = Reply::Nil;
        for _ in 0..MAX_REDIRECTIONS {
            let result = if asking {
                // ASKING holds for the next command on the same connection only.
                let batch = [Command::from_args(["asking"]), cmd.clone()];
                node.pipeline(&batch, cancel)
                    .map(|mut r| r.pop().unwrap_or(Reply::Nil))
            } else {
                node.call(cmd, timeout, cancel)
            };
            reply = match result {
                Ok(reply) => reply,
                // The node is gone (a failover, a node removed): nothing was sent, so after
                // reloading the slot map the command can go to the slot's new master once.
                Err(err @ Error::CannotConnect { .. }) if !failed_over => {
                    failed_over = true;
                    let Ok(topology) = self.refresh(cancel, Duration::ZERO) else {
                        return Err(err);
                    };
                    let next = self.master_for(&topology, slot)?;
                    if Arc::ptr_eq(&next, &node) {
                        return Err(err);
                    }
                    node = next;
                    continue;
                }
                Err(err) => return Err(err),
            };
            match redirect(&reply) {
                Some(Redirect::Moved { slot, location }) => {
                    node = self.moved(slot, &location, cancel);
                    asking = false;
                }
                Some(Redirect::Ask { location }) => {
                    node = self.node_at(&location);
                    asking = true;
                }
                None => return Ok(reply),
            }
        }
        Ok(reply)
    }

    /// redis-rb's cluster SCAN: the cursor's low 8 bits name the master, the rest is that
    /// master's own cursor; the scan moves to the next master when one is done.
    fn scan(&self, cmd: &Command, cancel: &CancelToken) -> Result<Reply> {
        let cursor: u64 = cmd
            .arg(1)
            .and_then(|c| std::str::from_utf8(c).ok())
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| Error::Server(ServerErrorReply::from_line(b"ERR invalid cursor")))?;
        let topology = self.topology(cancel)?;
        let index = (cursor % 256) as usize;
        let Some(node) = topology.masters.get(index) else {
            return Ok(Reply::Array(vec![
                Reply::Bulk(b"0".to_vec()),
                Reply::Array(Vec::new()),
            ]));
        };
        let mut on_node = Command::new();
        for (i, arg) in cmd.args().enumerate() {
            if i == 1 {
                on_node.push((cursor >> 8).to_string().as_bytes());
            } else {
                on_node.push(arg);
            }
        }
        let reply = node.call(&on_node, ReadTimeout::Configured, cancel)?;
        let Reply::Array(mut parts) = reply else {
            return Ok(reply);
        };
        let keys = parts.pop().unwrap_or(Reply::Array(Vec::new()));
        let next: u64 = parts
            .first()
            .and_then(Reply::as_bytes)
            .and_then(|c| std::str::from_utf8(c).ok())
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let next = match (next, index + 1 < topology.masters.len()) {
            (0, true) => (index + 1) as u64,
            // The last master is done: 0 ends the caller's loop.
            (0, false) => 0,
            (n, _) => n.checked_shl(8).map_or(0, |n| n | index as u64),
        };
        Ok(Reply::Array(vec![
            Reply::Bulk(next.to_string().into_bytes()),
            keys,
        ]))
    }

    fn call_all_masters(
        &self,
        cmd: &Command,
        combine: Combine,
        cancel: &CancelToken,
    ) -> Result<Reply> {
        let topology = self.topology(cancel)?;
        let mut replies = Vec::with_capacity(topology.masters.len());
        for node in &topology.masters {
            let reply = node.call(cmd, ReadTimeout::Configured, cancel)?;
            if reply.is_error() {
                return Ok(reply);
            }
            replies.push(reply);
        }
        Ok(match combine {
            Combine::First => replies.into_iter().next().unwrap_or(Reply::Nil),
            Combine::Sum => sum_of(&replies),
            Combine::ConcatSorted => {
                let mut all: Vec<Reply> = replies
                    .into_iter()
                    .flat_map(|r| match r {
                        Reply::Array(items) => items,
                        _ => Vec::new(),
                    })
                    .collect();
                all.sort_by(|a, b| a.as_bytes().cmp(&b.as_bytes()));
                Reply::Array(all)
            }
        })
    }

    /// One command per slot, sent as one pipeline (so one round trip per node), recombined.
    fn call_split(&self, cmd: &Command, split: Split, cancel: &CancelToken) -> Result<Reply> {
        let args: Vec<&[u8]> = cmd.args().collect();
        let per_key = if split == Split::Pairs { 2 } else { 1 };
        let mut by_slot: Vec<(u16, Vec<usize>)> = Vec::new();
        for (n, chunk) in args[1..].chunks(per_key).enumerate() {
            let slot = key_slot(chunk[0]);
            match by_slot.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, members)) => members.push(n),
                None => by_slot.push((slot, vec![n])),
            }
        }
        let parts: Vec<Command> = by_slot
            .iter()
            .map(|(_, members)| {
                let mut part = Command::new();
                part.push(args[0]);
                for &n in members {
                    for arg in &args[1 + n * per_key..1 + (n + 1) * per_key] {
                        part.push(arg);
                    }
                }
                part
            })
            .collect();
        let replies = self.pipeline(&parts, cancel)?;
        if let Some(error) = replies.iter().find(|r| r.is_error()) {
            return Ok(error.clone());
        }
        Ok(match split {
            Split::Pairs => Reply::Status(b"OK".to_vec()),
            Split::Count => sum_of(&replies),
            Split::Values => {
                let mut values = vec![Reply::Nil; (args.len() - 1) / per_key];
                for ((_, members), reply) in by_slot.iter().zip(replies) {
                    let Reply::Array(items) = reply else { continue };
                    for (&n, value) in members.iter().zip(items) {
                        values[n] = value;
                    }
                }
                Reply::Array(values)
            }
        })
    }

    /// MULTI … EXEC runs on one node: the one its keys live on. Keys on several nodes cannot be
    /// in one transaction, which redis-rb reports as `CrossSlotPipeliningError`.
    fn transaction_node(&self, topology: &Topology, cmds: &[Command]) -> Result<Arc<Node>> {
        let mut chosen: Option<Arc<Node>> = None;
        let mut keys: Vec<Vec<u8>> = Vec::new();
        let mut spread = false;
        for cmd in cmds {
            let Plan::Slot(Some(slot)) = plan(cmd) else {
                continue;
            };
            let node = self.master_for(topology, Some(slot))?;
            if let Some(key) = command_table::lookup(cmd)
                .and_then(|spec| command_table::keys(cmd, spec))
                .and_then(|k| k.first().map(|k| k.to_vec()))
            {
                if !keys.contains(&key) {
                    keys.push(key);
                }
            }
            match &chosen {
                Some(c) if !Arc::ptr_eq(c, &node) => spread = true,
                Some(_) => {}
                None => chosen = Some(node),
            }
        }
        if spread {
            return Err(Error::CrossSlot { keys });
        }
        match chosen {
            Some(node) => Ok(node),
            None => self.master_for(topology, None),
        }
    }

    /// A transaction whose commands met MOVED was refused whole (EXECABORT): nothing ran, so
    /// after reloading the slot map it is sent once more.
    fn retry_moved_transaction(
        &self,
        cmds: &[Command],
        replies: Vec<Reply>,
        cancel: &CancelToken,
    ) -> Result<Vec<Reply>> {
        let aborted = replies
            .last()
            .and_then(Reply::error_code)
            .is_some_and(|code| code == b"EXECABORT");
        let moved = replies
            .iter()
            .any(|r| matches!(redirect(r), Some(Redirect::Moved { .. })));
        if !(aborted && moved) {
            return Ok(replies);
        }
        self.refresh(cancel, Duration::ZERO)?;
        let in_flight = self.send(cmds, cancel)?;
        let ClusterInFlight { parts, .. } = in_flight;
        let mut again = vec![Reply::Nil; cmds.len()];
        for (node, in_flight, members) in parts {
            let node_replies = node
                .receive(in_flight, cancel)
                .map_err(|err| self.after_node_failure(err, cancel))?;
            for (i, reply) in members.into_iter().zip(node_replies) {
                again[i] = reply;
            }
        }
        Ok(again)
    }

    /// A node that cannot be reached may have failed over: the slot map is reloaded so the
    /// next command finds the new master, and the error goes to the caller as redis-rb raises
    /// it (some of a pipeline's commands may have run on other nodes).
    fn after_node_failure(&self, err: Error, cancel: &CancelToken) -> Error {
        if matches!(err, Error::CannotConnect { .. }) {
            if let Err(refresh) = self.refresh(cancel, MIN_REFRESH_INTERVAL) {
                tracing::debug!(error = %refresh, "cluster slot map reload failed");
            }
        }
        err
    }

    fn master_for(&self, topology: &Topology, slot: Option<u16>) -> Result<Arc<Node>> {
        let node = match slot {
            Some(slot) => topology.master_of(slot),
            None => {
                let turn = self.next_master.load(Ordering::Relaxed);
                topology.masters.get(turn % topology.masters.len().max(1))
            }
        };
        node.cloned().ok_or_else(|| {
            Error::Server(ServerErrorReply::from_line(
                b"CLUSTERDOWN Hash slot not served",
            ))
        })
    }
}
