//! Reading a key for a copy and writing it elsewhere, shared by backfill, repair and re-sync.
//! An error reply to a read (an ACL refusing DUMP, a module type the server cannot serialise)
//! is a failure, never "the key is gone": taking it for gone would report a key as expired
//! while nothing was copied, or make re-sync delete the key from the other store.
//! The expiry travels as an absolute time (PEXPIRETIME, RESTORE … ABSTTL), so a copy expires
//! when the original does however long the copy takes; a relative TTL would be extended by
//! the copy's own latency (a 10 MB value, a paused server). Servers older than Redis 7.0 lack
//! PEXPIRETIME: there the TTL is read with PTTL and the read time is taken off.

use crate::backend::store::{ReadTimeout, Store};
use crate::error::{Result, ServerErrorReply};
use crate::migration::key_state;
use crate::protocol::command::Command;
use crate::protocol::reply::Reply;
use crate::routing::Role;
use crate::transport::cancel::CancelToken;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// A key as read for copying.
pub(crate) enum Snapshot {
    /// Gone (deleted or expired) by the time it was read.
    Missing,
    /// The source answered a read of it with an error.
    Failed(ServerErrorReply),
    Value {
        payload: Vec<u8>,
        expiry: Expiry,
    },
}

#[derive(Clone, Copy)]
pub(crate) enum Expiry {
    Never,
    /// Unix time in milliseconds.
    At(i64),
    /// Milliseconds left when read (servers without PEXPIRETIME).
    In(i64),
}

pub(crate) fn read(
    source: &Store,
    keys: &[Vec<u8>],
    cancel: &CancelToken,
) -> Result<Vec<Snapshot>> {
    let mut reads = Vec::with_capacity(keys.len() * 2);
    for key in keys {
        reads.push(Command::from_args([&b"PEXPIRETIME"[..], key]));
        reads.push(Command::from_args([&b"DUMP"[..], key]));
    }
    let replies = source.pipeline(&reads, cancel)?;
    if replies.first().is_some_and(Reply::is_error) {
        return read_relative(source, keys, cancel);
    }
    let mut replies = replies.into_iter();
    let mut snapshots = Vec::with_capacity(keys.len());
    while let (Some(at), Some(payload)) = (replies.next(), replies.next()) {
        snapshots.push(match (at, payload) {
            (Reply::Error(line), _) | (_, Reply::Error(line)) => {
                Snapshot::Failed(ServerErrorReply::from_line(&line))
            }
            (Reply::Integer(at), Reply::Bulk(payload)) if at != -2 => Snapshot::Value {
                payload,
                expiry: if at < 0 {
                    Expiry::Never
                } else {
                    Expiry::At(at)
                },
            },
            _ => Snapshot::Missing,
        });
    }
    Ok(snapshots)
}

/// `EXISTS` of each key, as the replies of one `EXISTS` a key. One `EXISTS` of all the keys
/// settles the common pages (none of them there yet, or all of them) in one command: its
/// count is 0, or the number of keys, only when every key's own answer is the same. Any other
/// count, and a cluster (whose keys span slots), asks key by key.
pub(crate) fn exists_each(
    store: &Store,
    keys: &[Vec<u8>],
    cancel: &CancelToken,
) -> Result<Vec<Reply>> {
    if store.cluster().is_none() && keys.len() > 1 {
        let mut count = Command::from_args([&b"EXISTS"[..]]);
        for key in keys {
            count.push(key);
        }
        match store.call(&count, ReadTimeout::Configured, cancel)? {
            Reply::Integer(0) => return Ok(vec![Reply::Integer(0); keys.len()]),
            Reply::Integer(n) if n == keys.len() as i64 => {
                return Ok(vec![Reply::Integer(1); keys.len()])
            }
            _ => {}
        }
    }
    let each: Vec<Command> = keys
        .iter()
        .map(|key| Command::from_args([&b"EXISTS"[..], key]))
        .collect();
    store.pipeline(&each, cancel)
}

fn read_relative(source: &Store, keys: &[Vec<u8>], cancel: &CancelToken) -> Result<Vec<Snapshot>> {
    let mut reads = Vec::with_capacity(keys.len() * 2);
    for key in keys {
        reads.push(Command::from_args([&b"PTTL"[..], key]));
        reads.push(Command::from_args([&b"DUMP"[..], key]));
    }
    let read_at = Instant::now();
    let replies = source.pipeline(&reads, cancel)?;
    let spent = read_at.elapsed().as_millis() as i64;
    Ok(replies
        .chunks(2)
        .map(|pair| match (&pair[0], &pair[1]) {
            (Reply::Error(line), _) | (_, Reply::Error(line)) => {
                Snapshot::Failed(ServerErrorReply::from_line(line))
            }
            (Reply::Integer(ttl), Reply::Bulk(payload)) if *ttl != -2 => Snapshot::Value {
                payload: payload.clone(),
                expiry: if *ttl < 0 {
                    Expiry::Never
                } else {
                    Expiry::In(ttl - spent)
                },
            },
            _ => Snapshot::Missing,
        })
        .collect())
}

impl Expiry {
    /// Whether the key will have expired before it could be written.
    pub(crate) fn is_past(self) -> bool {
        match self {
            Expiry::Never => false,
            Expiry::At(at) => at <= now_ms(),
            Expiry::In(ms) => ms <= 0,
        }
    }
}

/// What a copy wrote, in 20 bytes: a later read of the source tells whether the key changed
/// since (DUMP bytes are stable while a value is unchanged on its server).
pub(crate) type Fingerprint = [u8; 20];

pub(crate) fn fingerprint(payload: &[u8], expiry: Expiry) -> Fingerprint {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(payload);
    match expiry {
        Expiry::Never => sha.update(b"never"),
        Expiry::At(at) => sha.update(&at.to_le_bytes()),
        // A relative TTL (servers before 7.0) changes by the second: only the value is compared.
        Expiry::In(_) => {}
    }
    sha.digest().bytes()
}

/// The RESTORE that writes a snapshot under `key`.
pub(crate) fn restore(key: &[u8], payload: &[u8], expiry: Expiry, replace: bool) -> Command {
    let mut cmd = Command::from_args([&b"RESTORE"[..], key]);
    match expiry {
        Expiry::Never => cmd.push(b"0"),
        Expiry::At(at) => cmd.push(at.to_string().as_bytes()),
        Expiry::In(ms) => cmd.push(ms.max(1).to_string().as_bytes()),
    }
    cmd.push(payload);
    if replace {
        cmd.push(b"REPLACE");
    }
    if matches!(expiry, Expiry::At(_)) {
        cmd.push(b"ABSTTL");
    }
    cmd
}

/// The write that makes `target` hold what `snapshot` read from the source: RESTORE REPLACE, or
/// DEL when the source no longer has the key. `None` when the source could not be read.
pub(crate) fn overwrite(key: &[u8], snapshot: Snapshot) -> Option<Command> {
    match snapshot {
        Snapshot::Value { payload, expiry } if !expiry.is_past() => {
            Some(restore(key, &payload, expiry, true))
        }
        Snapshot::Value { .. } | Snapshot::Missing => Some(Command::from_args([&b"DEL"[..], key])),
        Snapshot::Failed(_) => None,
    }
}

/// How many times keys are copied again while a write in flight keeps making them differ.
const RECONCILE_ROUNDS: usize = 5;
const RECHECKS: usize = 3;
const RECHECK_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

/// Copies each key from `source` to `target` (RESTORE REPLACE, or DEL) until both hold the same.
/// A write in flight while a copy happens (it reached the target before the RESTORE and the
/// source after the read) leaves the key different again, so what still differs is looked at
/// again a few milliseconds later and copied once more, a few rounds at most. Returns the keys
/// that still differ.
pub(crate) fn reconcile(
    source: &Store,
    target: &Store,
    keys: &[Vec<u8>],
    ttl_tolerance_ms: i64,
    cancel: &CancelToken,
) -> Result<Vec<Vec<u8>>> {
    let mut pending = keys.to_vec();
    for _ in 0..RECONCILE_ROUNDS {
        if pending.is_empty() {
            break;
        }
        let snapshots = read(source, &pending, cancel)?;
        let writes: Vec<Command> = pending
            .iter()
            .zip(snapshots)
            .filter_map(|(key, snapshot)| overwrite(key, snapshot))
            .collect();
        if !writes.is_empty() {
            target.pipeline(&writes, cancel)?;
        }
        pending = still_different(source, target, &pending, ttl_tolerance_ms, cancel)?;
    }
    Ok(pending)
}

/// How a verify's repair and a backfill's re-copy bring keys that differ in line: copying each
/// from `source` to the other store. Returns the keys still different.
///
/// A copy cannot be made atomic with the dual writes that keep landing on both stores: a write
/// that reaches the target before the copy's RESTORE and the source after its DUMP is undone on
/// the target. A verify or backfill on its own copies directly (`DirectCopy`) and reports what
/// it could not bring in line; run by a MultiStore, it goes through that MultiStore's re-sync
/// (`resync::RepairThroughResync`), which journals the keys first and holds the process's own
/// writes of them back while it copies.
pub trait Reconciler: Send + Sync {
    fn reconcile(
        &self,
        source: Role,
        keys: &[Vec<u8>],
        ttl_tolerance_ms: i64,
        cancel: &CancelToken,
    ) -> Result<Vec<Vec<u8>>>;

    /// Whether `role` is, as the MultiStore last saw the flags, the only store written: nothing
    /// may be copied onto it then. (On its own, a copy cannot know.)
    fn written_alone(&self, _role: Role) -> bool {
        false
    }

    /// Keys that may differ, which the caller could not check (it failed or was stopped): left
    /// to whoever brings the stores together later -- `lagging`, when known, is the store that
    /// may be behind the other. On its own, a copy has nobody to leave them to.
    fn hand_over(&self, _keys: &[Vec<u8>], _lagging: Option<Role>) {}
}

/// Copies straight from one store to the other (see `reconcile`).
pub struct DirectCopy {
    pub primary: Arc<Store>,
    pub secondary: Arc<Store>,
}

impl DirectCopy {
    pub fn new(primary: &Arc<Store>, secondary: &Arc<Store>) -> Self {
        DirectCopy {
            primary: Arc::clone(primary),
            secondary: Arc::clone(secondary),
        }
    }
}

impl Reconciler for DirectCopy {
    fn reconcile(
        &self,
        source: Role,
        keys: &[Vec<u8>],
        ttl_tolerance_ms: i64,
        cancel: &CancelToken,
    ) -> Result<Vec<Vec<u8>>> {
        let (from, to) = match source {
            Role::Primary => (&self.primary, &self.secondary),
            Role::Secondary => (&self.secondary, &self.primary),
        };
        reconcile(from, to, keys, ttl_tolerance_ms, cancel)
    }
}

/// The keys that differ between the stores, each looked at again a few times a few
/// milliseconds apart, since a write in flight between the two reads makes a key differ for a
/// moment.
pub(crate) fn still_different(
    a: &Store,
    b: &Store,
    keys: &[Vec<u8>],
    ttl_tolerance_ms: i64,
    cancel: &CancelToken,
) -> Result<Vec<Vec<u8>>> {
    let mut different = keys.to_vec();
    for attempt in 0..RECHECKS {
        if different.is_empty() {
            break;
        }
        if attempt > 0 {
            std::thread::sleep(RECHECK_PAUSE);
        }
        let (on_a, on_b) = at_once(
            cancel,
            |cancel| key_state::read(a, &different, cancel),
            |cancel| key_state::read(b, &different, cancel),
        )?;
        different = different
            .into_iter()
            .zip(on_a.iter().zip(&on_b))
            .filter(|(_, (a, b))| !a.same_as(b, ttl_tolerance_ms))
            .map(|(key, _)| key)
            .collect();
    }
    Ok(different)
}

/// Runs two reads at once, on threads of their own (see `cancel::both`): the two stores are read
/// side by side instead of one after the other (and closer together in time).
pub(crate) fn at_once<A: Send, B: Send>(
    cancel: &CancelToken,
    a: impl FnOnce(&CancelToken) -> Result<A> + Send,
    b: impl FnOnce(&CancelToken) -> Result<B> + Send,
) -> Result<(A, B)> {
    let panicked = || crate::error::Error::Protocol("a read panicked".into());
    match crate::transport::cancel::both(cancel, a, b) {
        (Some(a), Some(b)) => Ok((a?, b?)),
        _ => Err(panicked()),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
