//! Copying the keys dual-writes never touch. During dual-write, only keys written since the
//! flag flipped reach the primary; a key that is only read (or has a long TTL) would be lost at
//! the switch. A backfill walks the secondary with SCAN and copies each key the primary lacks:
//!
//! - DUMP + PTTL on the secondary, RESTORE on the primary *without* REPLACE: a key written
//!   through dual-write since is newer and wins (BUSYKEY counts as "already present");
//! - the TTL is kept to the millisecond: the time between reading PTTL and RESTORE is taken off;
//!   a key that expires meanwhile is skipped;
//! - a key deleted through the MultiStore while it was being copied must not come back: after
//!   each batch, a restored key the secondary no longer has is deleted from the primary again —
//!   checked right away and once more after the next batch, when any delete that was in flight
//!   during the copy has landed on both stores.
//!
//! Streaming: one SCAN page in memory at a time, whatever the size of the store.

use crate::cancel::CancelToken;
use crate::command::Command;
use crate::error::{Error, Result};
use crate::reply::Reply;
use crate::store::Store;
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackfillReport {
    pub scanned: u64,
    pub copied: u64,
    pub already_present: u64,
    pub expired: u64,
    pub failed: u64,
    /// Copied keys deleted again because the secondary lost them during the copy.
    pub undone: u64,
    /// Keys on the secondary when the backfill started (DBSIZE), for progress.
    pub total: u64,
    pub done: bool,
}

pub struct Backfill {
    primary: Arc<Store>,
    secondary: Arc<Store>,
    pattern: Option<Vec<u8>>,
    count: usize,
    cursor: Vec<u8>,
    started: bool,
    /// Keys restored by the previous batch, re-checked once more after the next one.
    recheck: Vec<Vec<u8>>,
    report: BackfillReport,
}

impl Backfill {
    pub fn new(
        primary: Arc<Store>,
        secondary: Arc<Store>,
        pattern: Option<Vec<u8>>,
        count: usize,
    ) -> Self {
        Backfill {
            primary,
            secondary,
            pattern,
            count: count.max(1),
            cursor: b"0".to_vec(),
            started: false,
            recheck: Vec::new(),
            report: BackfillReport::default(),
        }
    }

    pub fn report(&self) -> &BackfillReport {
        &self.report
    }

    /// Copies one SCAN page. Call until the report says `done`.
    pub fn step(&mut self, cancel: &CancelToken) -> Result<&BackfillReport> {
        if self.report.done {
            return Ok(&self.report);
        }
        if !self.started {
            self.started = true;
            self.report.total = integer(&self.secondary.call(
                &Command::from_args(["DBSIZE"]),
                Default::default(),
                cancel,
            )?)
            .unwrap_or(0)
            .max(0) as u64;
        }
        let (cursor, keys) = scan_page(
            &self.secondary,
            &self.cursor,
            self.pattern.as_deref(),
            self.count,
            cancel,
        )?;
        self.cursor = cursor;
        self.report.scanned += keys.len() as u64;
        let restored = self.copy_missing(&keys, cancel)?;
        let previous = std::mem::replace(&mut self.recheck, restored.clone());
        self.undo_lost(&previous, cancel)?;
        self.undo_lost(&restored, cancel)?;
        if self.cursor == b"0" {
            let last = std::mem::take(&mut self.recheck);
            self.undo_lost(&last, cancel)?;
            self.report.done = true;
        }
        Ok(&self.report)
    }

    /// Returns the keys restored.
    fn copy_missing(&mut self, keys: &[Vec<u8>], cancel: &CancelToken) -> Result<Vec<Vec<u8>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let exists: Vec<Command> = keys
            .iter()
            .map(|k| Command::from_args([&b"EXISTS"[..], k]))
            .collect();
        let on_primary = self.primary.pipeline(&exists, cancel)?;
        let missing: Vec<&Vec<u8>> = keys
            .iter()
            .zip(&on_primary)
            .filter_map(|(key, reply)| match reply {
                Reply::Integer(0) => Some(key),
                _ => None,
            })
            .collect();
        self.report.already_present += (keys.len() - missing.len()) as u64;
        if missing.is_empty() {
            return Ok(Vec::new());
        }

        let mut reads = Vec::with_capacity(missing.len() * 2);
        for key in &missing {
            reads.push(Command::from_args([&b"PTTL"[..], key]));
            reads.push(Command::from_args([&b"DUMP"[..], key]));
        }
        let read_at = Instant::now();
        let dumped = self.secondary.pipeline(&reads, cancel)?;

        let elapsed_ms = read_at.elapsed().as_millis() as i64;
        let mut restores = Vec::with_capacity(missing.len());
        let mut restoring = Vec::with_capacity(missing.len());
        for (key, pair) in missing.iter().zip(dumped.chunks(2)) {
            match (&pair[0], &pair[1]) {
                (_, Reply::Nil) | (Reply::Integer(-2), _) => self.report.expired += 1,
                (Reply::Integer(pttl), Reply::Bulk(payload)) => {
                    let ttl = if *pttl < 0 { 0 } else { pttl - elapsed_ms };
                    if *pttl >= 0 && ttl <= 0 {
                        self.report.expired += 1;
                        continue;
                    }
                    let ttl = ttl.to_string();
                    restores.push(Command::from_args([
                        &b"RESTORE"[..],
                        key,
                        ttl.as_bytes(),
                        payload,
                    ]));
                    restoring.push((*key).clone());
                }
                _ => self.report.failed += 1,
            }
        }
        if restores.is_empty() {
            return Ok(Vec::new());
        }
        let results = self.primary.pipeline(&restores, cancel)?;
        let mut restored = Vec::with_capacity(restoring.len());
        for (key, result) in restoring.into_iter().zip(results) {
            match result {
                Reply::Status(_) => {
                    self.report.copied += 1;
                    restored.push(key);
                }
                // Written through dual-write since we looked: that value is newer.
                Reply::Error(line) if line.starts_with(b"BUSYKEY") => {
                    self.report.already_present += 1
                }
                _ => self.report.failed += 1,
            }
        }
        Ok(restored)
    }

    /// Deletes from the primary the restored keys the secondary no longer has: they were deleted
    /// (or expired) while being copied, and must not be resurrected.
    fn undo_lost(&mut self, restored: &[Vec<u8>], cancel: &CancelToken) -> Result<()> {
        if restored.is_empty() {
            return Ok(());
        }
        let exists: Vec<Command> = restored
            .iter()
            .map(|k| Command::from_args([&b"EXISTS"[..], k]))
            .collect();
        let on_secondary = self.secondary.pipeline(&exists, cancel)?;
        let lost: Vec<Command> = restored
            .iter()
            .zip(on_secondary)
            .filter(|(_, reply)| *reply == Reply::Integer(0))
            .map(|(key, _)| Command::from_args([&b"DEL"[..], key]))
            .collect();
        if lost.is_empty() {
            return Ok(());
        }
        for reply in self.primary.pipeline(&lost, cancel)? {
            if reply == Reply::Integer(1) {
                self.report.undone += 1;
                self.report.copied = self.report.copied.saturating_sub(1);
            }
        }
        Ok(())
    }
}

/// One SCAN page: the next cursor and the keys.
pub(crate) fn scan_page(
    store: &Store,
    cursor: &[u8],
    pattern: Option<&[u8]>,
    count: usize,
    cancel: &CancelToken,
) -> Result<(Vec<u8>, Vec<Vec<u8>>)> {
    let count = count.to_string();
    let mut scan = Command::from_args([&b"SCAN"[..], cursor, b"COUNT", count.as_bytes()]);
    if let Some(pattern) = pattern {
        scan.push(b"MATCH");
        scan.push(pattern);
    }
    match store.call(&scan, Default::default(), cancel)? {
        Reply::Array(mut page) if page.len() == 2 => {
            let keys = match page.pop() {
                Some(Reply::Array(keys)) => keys
                    .into_iter()
                    .filter_map(|k| match k {
                        Reply::Bulk(k) => Some(k),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            let cursor = page
                .pop()
                .and_then(|c| c.as_bytes().map(<[u8]>::to_vec))
                .unwrap_or_else(|| b"0".to_vec());
            Ok((cursor, keys))
        }
        Reply::Error(line) => Err(Error::Server(crate::error::ServerErrorReply::from_line(
            &line,
        ))),
        other => Err(Error::Protocol(format!("unexpected SCAN reply {other:?}"))),
    }
}

pub(crate) fn integer(reply: &Reply) -> Option<i64> {
    match reply {
        Reply::Integer(n) => Some(*n),
        _ => None,
    }
}
