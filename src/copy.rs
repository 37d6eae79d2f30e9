//! Reading a key for a copy and writing it elsewhere, shared by backfill, repair and re-sync.
//! The expiry travels as an absolute time (PEXPIRETIME, RESTORE … ABSTTL), so a copy expires
//! when the original does however long the copy takes; a relative TTL would be extended by
//! the copy's own latency (a 10 MB value, a paused server). Servers older than Redis 7.0 lack
//! PEXPIRETIME: there the TTL is read with PTTL and the read time is taken off.

use crate::cancel::CancelToken;
use crate::command::Command;
use crate::error::Result;
use crate::reply::Reply;
use crate::store::Store;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// A key as read for copying.
pub(crate) enum Snapshot {
    /// Gone (deleted or expired) by the time it was read.
    Missing,
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
    Ok(replies
        .chunks(2)
        .map(|pair| match (&pair[0], &pair[1]) {
            (Reply::Integer(at), Reply::Bulk(payload)) if *at != -2 => Snapshot::Value {
                payload: payload.clone(),
                expiry: if *at < 0 {
                    Expiry::Never
                } else {
                    Expiry::At(*at)
                },
            },
            _ => Snapshot::Missing,
        })
        .collect())
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

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
