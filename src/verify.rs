//! Proving the stores agree before the default is switched. Compares every key of the
//! secondary (or a random sample) with the primary by type, a digest of its value and its TTL,
//! then looks for keys only the primary has. The value digest is computed from a canonical
//! form (sets and hashes sorted), not from DUMP, whose bytes differ between two servers holding
//! the same set or hash. With `repair`, each differing key is copied from the secondary
//! (RESTORE REPLACE) and checked again.

use crate::backfill::{integer, scan_page};
use crate::cancel::CancelToken;
use crate::command::Command;
use crate::copy::{self, Snapshot};
use crate::error::Result;
use crate::reply::Reply;
use crate::store::Store;
use std::sync::Arc;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub checked: u64,
    pub agree: u64,
    pub missing_on_primary: u64,
    pub different: u64,
    pub only_on_primary: u64,
    pub repaired: u64,
    pub repair_failed: u64,
    /// Keys on the secondary when verify started (DBSIZE), for progress.
    pub total: u64,
    pub done: bool,
}

impl VerifyReport {
    /// Share of the secondary's checked keys that the primary holds identically, in percent.
    pub fn readiness(&self) -> f64 {
        let compared = self.agree + self.missing_on_primary + self.different;
        if compared == 0 {
            100.0
        } else {
            self.agree as f64 * 100.0 / compared as f64
        }
    }

    /// The stores agree: nothing missing, different or only on the primary (after repairs).
    pub fn in_agreement(&self) -> bool {
        self.missing_on_primary + self.different + self.only_on_primary == self.repaired
            && self.repair_failed == 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    SecondaryKeys,
    PrimaryKeys,
    Done,
}

pub struct VerifyOptions {
    pub pattern: Option<Vec<u8>>,
    pub count: usize,
    /// Check this many random keys of the secondary instead of all of them.
    pub sample: Option<u64>,
    pub repair: bool,
    /// TTLs within this many milliseconds are equal (they tick down between the two reads).
    pub ttl_tolerance_ms: i64,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            pattern: None,
            count: 1000,
            sample: None,
            repair: false,
            ttl_tolerance_ms: 1000,
        }
    }
}

pub struct Verify {
    primary: Arc<Store>,
    secondary: Arc<Store>,
    options: VerifyOptions,
    phase: Phase,
    cursor: Vec<u8>,
    started: bool,
    /// Random keys drawn so far (`sample`).
    drawn: u64,
    report: VerifyReport,
}

/// How many times a key that differs is looked at again, and how long apart.
const RECHECKS: usize = 3;
const RECHECK_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);
const REPAIR_ROUNDS: usize = 5;

fn is_unsettled(verdict: &Verdict) -> bool {
    matches!(verdict, Verdict::Different | Verdict::MissingOnPrimary)
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Agree,
    MissingOnPrimary,
    Different,
    /// Gone from the secondary since it was listed: nothing to compare.
    Vanished,
}

/// What a key is, for comparison: type, value digest, TTL.
#[derive(Debug, PartialEq, Eq)]
struct KeyState {
    kind: Vec<u8>,
    digest: [u8; 20],
    pttl: i64,
}

impl Verify {
    pub fn new(primary: Arc<Store>, secondary: Arc<Store>, options: VerifyOptions) -> Self {
        Verify {
            primary,
            secondary,
            options,
            phase: Phase::SecondaryKeys,
            cursor: b"0".to_vec(),
            started: false,
            drawn: 0,
            report: VerifyReport::default(),
        }
    }

    pub fn report(&self) -> &VerifyReport {
        &self.report
    }

    /// Checks one page of keys. Call until the report says `done`.
    pub fn step(&mut self, cancel: &CancelToken) -> Result<&VerifyReport> {
        if !self.started {
            self.started = true;
            let dbsize =
                self.secondary
                    .call(&Command::from_args(["DBSIZE"]), Default::default(), cancel)?;
            self.report.total = self
                .options
                .sample
                .unwrap_or(integer(&dbsize).unwrap_or(0).max(0) as u64);
        }
        match self.phase {
            Phase::SecondaryKeys => {
                let keys = match self.options.sample {
                    Some(_) => self.sample_page(cancel)?,
                    None => self.scan(&self.secondary.clone(), cancel)?,
                };
                self.compare(&keys, cancel)?;
                if self.cursor == b"0" {
                    // A sample never looks for keys only on the primary: that needs a full scan.
                    self.phase = if self.options.sample.is_some() {
                        Phase::Done
                    } else {
                        Phase::PrimaryKeys
                    };
                }
            }
            Phase::PrimaryKeys => {
                let keys = self.scan(&self.primary.clone(), cancel)?;
                self.find_only_on_primary(&keys, cancel)?;
                if self.cursor == b"0" {
                    self.phase = Phase::Done;
                }
            }
            Phase::Done => {}
        }
        self.report.done = self.phase == Phase::Done;
        Ok(&self.report)
    }

    fn scan(&mut self, store: &Store, cancel: &CancelToken) -> Result<Vec<Vec<u8>>> {
        let (cursor, keys) = scan_page(
            store,
            &self.cursor,
            self.options.pattern.as_deref(),
            self.options.count,
            cancel,
        )?;
        self.cursor = cursor;
        Ok(keys)
    }

    /// Random keys of the secondary (matching the pattern), until `sample` were checked. Draws
    /// at most ten times the sample, so a pattern that matches little cannot loop forever.
    fn sample_page(&mut self, cancel: &CancelToken) -> Result<Vec<Vec<u8>>> {
        let sample = self.options.sample.unwrap_or(0);
        let remaining = sample.saturating_sub(self.report.checked);
        let n = remaining.min(self.options.count as u64) as usize;
        let randoms: Vec<Command> = (0..n).map(|_| Command::from_args(["RANDOMKEY"])).collect();
        let drawn = self.secondary.pipeline(&randoms, cancel)?;
        self.drawn += n as u64;
        let empty = drawn.iter().all(|r| matches!(r, Reply::Nil));
        let mut keys: Vec<Vec<u8>> = drawn
            .into_iter()
            .filter_map(|r| match r {
                Reply::Bulk(k) => Some(k),
                _ => None,
            })
            .filter(|k| {
                self.options
                    .pattern
                    .as_deref()
                    .is_none_or(|p| glob_match(p, k))
            })
            .collect();
        keys.truncate(n);
        let exhausted = empty || self.drawn >= sample.saturating_mul(10);
        if n == 0 || remaining <= keys.len() as u64 || exhausted {
            self.cursor = b"0".to_vec();
        } else {
            self.cursor = b"1".to_vec();
        }
        Ok(keys)
    }

    fn compare(&mut self, keys: &[Vec<u8>], cancel: &CancelToken) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut verdicts = self.verdicts(keys, cancel)?;
        // While traffic flows, a key written between the two reads looks different for a
        // moment: look again at the keys that differ before counting them.
        for _ in 0..RECHECKS {
            let unsettled: Vec<usize> = (0..keys.len())
                .filter(|&i| is_unsettled(&verdicts[i]))
                .collect();
            if unsettled.is_empty() {
                break;
            }
            std::thread::sleep(RECHECK_PAUSE);
            let again: Vec<Vec<u8>> = unsettled.iter().map(|&i| keys[i].clone()).collect();
            for (i, verdict) in unsettled.into_iter().zip(self.verdicts(&again, cancel)?) {
                verdicts[i] = verdict;
            }
        }
        let mut to_repair = Vec::new();
        for (key, verdict) in keys.iter().zip(verdicts) {
            match verdict {
                Verdict::Vanished => continue,
                Verdict::Agree => self.report.agree += 1,
                Verdict::MissingOnPrimary => self.report.missing_on_primary += 1,
                Verdict::Different => self.report.different += 1,
            }
            self.report.checked += 1;
            if verdict != Verdict::Agree && self.options.repair {
                to_repair.push(key.clone());
            }
        }
        if !to_repair.is_empty() {
            self.repair(&to_repair, cancel)?;
        }
        Ok(())
    }

    fn verdicts(&self, keys: &[Vec<u8>], cancel: &CancelToken) -> Result<Vec<Verdict>> {
        let secondary = key_states(&self.secondary, keys, cancel)?;
        let primary = key_states(&self.primary, keys, cancel)?;
        Ok(secondary
            .iter()
            .zip(&primary)
            .map(|(s, p)| self.verdict(s.as_ref(), p.as_ref()))
            .collect())
    }

    fn verdict(&self, secondary: Option<&KeyState>, primary: Option<&KeyState>) -> Verdict {
        match (secondary, primary) {
            (None, _) => Verdict::Vanished,
            (Some(_), None) => Verdict::MissingOnPrimary,
            (Some(s), Some(p)) => {
                let ttl_agrees = match (s.pttl, p.pttl) {
                    (a, b) if a < 0 || b < 0 => a == b,
                    (a, b) => (a - b).abs() <= self.options.ttl_tolerance_ms,
                };
                if s.kind == p.kind && s.digest == p.digest && ttl_agrees {
                    Verdict::Agree
                } else {
                    Verdict::Different
                }
            }
        }
    }

    /// Copies each key from the secondary and checks it again. A write in flight while the
    /// copy happens (it reached the primary before the RESTORE and the secondary after the DUMP)
    /// leaves the key different again, so keys that still differ are copied once more, a few
    /// rounds at most.
    fn repair(&mut self, keys: &[Vec<u8>], cancel: &CancelToken) -> Result<()> {
        let mut pending = keys.to_vec();
        for _ in 0..REPAIR_ROUNDS {
            self.copy_from_secondary(&pending, cancel)?;
            let mut verdicts = self.verdicts(&pending, cancel)?;
            for _ in 0..RECHECKS {
                if !verdicts.iter().any(is_unsettled) {
                    break;
                }
                std::thread::sleep(RECHECK_PAUSE);
                verdicts = self.verdicts(&pending, cancel)?;
            }
            let still: Vec<Vec<u8>> = pending
                .iter()
                .zip(&verdicts)
                .filter(|(_, v)| is_unsettled(v))
                .map(|(k, _)| k.clone())
                .collect();
            self.report.repaired += (pending.len() - still.len()) as u64;
            pending = still;
            if pending.is_empty() {
                break;
            }
        }
        self.report.repair_failed += pending.len() as u64;
        Ok(())
    }

    /// RESTORE REPLACE of each key's DUMP, expiring when the original does.
    fn copy_from_secondary(&self, keys: &[Vec<u8>], cancel: &CancelToken) -> Result<()> {
        let snapshots = copy::read(&self.secondary, keys, cancel)?;
        let restores: Vec<Command> = keys
            .iter()
            .zip(snapshots)
            .filter_map(|(key, snapshot)| match snapshot {
                Snapshot::Value { payload, expiry } => {
                    Some(copy::restore(key, &payload, expiry, true))
                }
                // Gone from the secondary: the next check sees it vanished.
                Snapshot::Missing => None,
            })
            .collect();
        self.primary.pipeline(&restores, cancel)?;
        Ok(())
    }

    fn find_only_on_primary(&mut self, keys: &[Vec<u8>], cancel: &CancelToken) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let exists: Vec<Command> = keys
            .iter()
            .map(|k| Command::from_args([&b"EXISTS"[..], k]))
            .collect();
        let on_secondary = self.secondary.pipeline(&exists, cancel)?;
        let only: Vec<&Vec<u8>> = keys
            .iter()
            .zip(on_secondary)
            .filter(|(_, r)| *r == Reply::Integer(0))
            .map(|(k, _)| k)
            .collect();
        self.report.only_on_primary += only.len() as u64;
        if self.options.repair && !only.is_empty() {
            // The secondary is the source of truth while it is the default: a key it does not
            // have should not be on the primary either.
            let dels: Vec<Command> = only
                .iter()
                .map(|k| Command::from_args([&b"DEL"[..], k.as_slice()]))
                .collect();
            self.primary.pipeline(&dels, cancel)?;
            self.report.repaired += only.len() as u64;
        }
        Ok(())
    }
}

/// Whether each key is the same on both stores (type, value, TTL within a second; absent from
/// both counts as the same).
pub fn same_on_both(
    primary: &Store,
    secondary: &Store,
    keys: &[Vec<u8>],
    cancel: &CancelToken,
) -> Result<Vec<bool>> {
    let on_secondary = key_states(secondary, keys, cancel)?;
    let on_primary = key_states(primary, keys, cancel)?;
    Ok(on_secondary
        .iter()
        .zip(&on_primary)
        .map(|(s, p)| match (s, p) {
            (None, None) => true,
            (Some(s), Some(p)) => {
                s.kind == p.kind
                    && s.digest == p.digest
                    && match (s.pttl, p.pttl) {
                        (a, b) if a < 0 || b < 0 => a == b,
                        (a, b) => (a - b).abs() <= 1000,
                    }
            }
            _ => false,
        })
        .collect())
}

/// Type, canonical value digest and TTL of each key (None: the key does not exist).
fn key_states(
    store: &Store,
    keys: &[Vec<u8>],
    cancel: &CancelToken,
) -> Result<Vec<Option<KeyState>>> {
    let mut meta = Vec::with_capacity(keys.len() * 2);
    for key in keys {
        meta.push(Command::from_args([&b"TYPE"[..], key]));
        meta.push(Command::from_args([&b"PTTL"[..], key]));
    }
    let meta = store.pipeline(&meta, cancel)?;
    let kinds: Vec<Vec<u8>> = meta
        .chunks(2)
        .map(|m| m[0].as_bytes().unwrap_or(b"none").to_vec())
        .collect();
    let reads: Vec<Command> = keys
        .iter()
        .zip(&kinds)
        .map(|(key, kind)| value_read(kind, key))
        .collect();
    let values = store.pipeline(&reads, cancel)?;
    Ok(keys
        .iter()
        .enumerate()
        .map(|(i, _)| {
            let kind = &kinds[i];
            if kind.as_slice() == b"none" {
                return None;
            }
            Some(KeyState {
                kind: kind.clone(),
                digest: digest(kind, &values[i]),
                pttl: integer(&meta[i * 2 + 1]).unwrap_or(-2),
            })
        })
        .collect())
}

/// The read that returns a key's whole value in an order that does not depend on the server.
fn value_read(kind: &[u8], key: &[u8]) -> Command {
    match kind {
        b"string" => Command::from_args([&b"GET"[..], key]),
        b"list" => Command::from_args([&b"LRANGE"[..], key, b"0", b"-1"]),
        b"set" => Command::from_args([&b"SMEMBERS"[..], key]),
        b"zset" => Command::from_args([&b"ZRANGE"[..], key, b"0", b"-1", b"WITHSCORES"]),
        b"hash" => Command::from_args([&b"HGETALL"[..], key]),
        b"stream" => Command::from_args([&b"XRANGE"[..], key, b"-", b"+"]),
        // Unknown (module) types: compare their DUMP, the best available.
        _ => Command::from_args([&b"DUMP"[..], key]),
    }
}

fn digest(kind: &[u8], value: &Reply) -> [u8; 20] {
    let mut items: Vec<Vec<u8>> = Vec::new();
    flatten(value, &mut items);
    match kind {
        b"set" => items.sort(),
        b"hash" => {
            // Length-prefixed, so that field "f1" value "v1" cannot collide with "f1v" / "1".
            let mut pairs: Vec<Vec<u8>> = items
                .chunks(2)
                .map(|pair| {
                    let mut joined = (pair[0].len() as u64).to_le_bytes().to_vec();
                    pair.iter().for_each(|part| joined.extend_from_slice(part));
                    joined
                })
                .collect();
            pairs.sort();
            items = pairs;
        }
        _ => {}
    }
    let mut sha = sha1_smol::Sha1::new();
    sha.update(kind);
    for item in &items {
        sha.update(&(item.len() as u64).to_le_bytes());
        sha.update(item);
    }
    sha.digest().bytes()
}

fn flatten(reply: &Reply, out: &mut Vec<Vec<u8>>) {
    match reply {
        Reply::Array(items) => items.iter().for_each(|item| flatten(item, out)),
        Reply::Bulk(b) | Reply::Status(b) | Reply::Error(b) => out.push(b.clone()),
        Reply::Integer(n) => out.push(n.to_string().into_bytes()),
        Reply::Nil => out.push(Vec::new()),
    }
}

/// Redis's glob (`*`, `?`, `[...]`, `\\`), for filtering sampled keys the way MATCH filters a scan.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    match (pattern.first(), text.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob_match(&pattern[1..], text) || (!text.is_empty() && glob_match(pattern, &text[1..]))
        }
        (Some(b'?'), Some(_)) => glob_match(&pattern[1..], &text[1..]),
        (Some(b'['), Some(c)) => match pattern.iter().position(|b| *b == b']') {
            Some(end) => {
                let class = &pattern[1..end];
                let (negate, class) = match class.first() {
                    Some(b'^') => (true, &class[1..]),
                    _ => (false, class),
                };
                let mut hit = false;
                let mut i = 0;
                while i < class.len() {
                    if i + 2 < class.len() && class[i + 1] == b'-' {
                        hit |= (class[i]..=class[i + 2]).contains(c);
                        i += 3;
                    } else {
                        hit |= class[i] == *c;
                        i += 1;
                    }
                }
                hit != negate && glob_match(&pattern[end + 1..], &text[1..])
            }
            None => *c == b'[' && glob_match(&pattern[1..], &text[1..]),
        },
        (Some(b'\\'), Some(c)) if pattern.len() > 1 => {
            pattern[1] == *c && glob_match(&pattern[2..], &text[1..])
        }
        (Some(p), Some(c)) => p == c && glob_match(&pattern[1..], &text[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_do_not_depend_on_set_or_hash_order() {
        let members = |items: &[&str]| {
            Reply::Array(
                items
                    .iter()
                    .map(|s| Reply::Bulk(s.as_bytes().to_vec()))
                    .collect(),
            )
        };
        assert_eq!(
            digest(b"set", &members(&["a", "b"])),
            digest(b"set", &members(&["b", "a"]))
        );
        assert_eq!(
            digest(b"hash", &members(&["f1", "v1", "f2", "v2"])),
            digest(b"hash", &members(&["f2", "v2", "f1", "v1"]))
        );
        assert_ne!(
            digest(b"list", &members(&["a", "b"])),
            digest(b"list", &members(&["b", "a"]))
        );
        assert_ne!(
            digest(b"hash", &members(&["f1", "v1"])),
            digest(b"hash", &members(&["f1v", "1"]))
        );
    }

    #[test]
    fn globs_like_redis() {
        assert!(glob_match(b"session:*", b"session:42"));
        assert!(!glob_match(b"session:*", b"rate:1"));
        assert!(glob_match(b"h?llo", b"hello"));
        assert!(glob_match(b"h[ae]llo", b"hallo"));
        assert!(!glob_match(b"h[^e]llo", b"hello"));
        assert!(glob_match(b"h[a-c]llo", b"hbllo"));
    }
}
