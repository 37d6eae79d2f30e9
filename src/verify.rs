//! Proving the stores agree before the default is switched. Compares every key of the
//! secondary (or a random sample) with the primary by type, a canonical digest of its value and
//! its TTL (see `key_state`), then looks for keys only the primary has. With `repair`, each key
//! that differs is copied from the default store -- the store callers are answered from, whose
//! data is the truth -- and checked again.

use crate::backfill::scan_page;
use crate::cancel::CancelToken;
use crate::command::Command;
use crate::copy::{self, DirectCopy, Reconciler};
use crate::error::Result;
use crate::in_doubt::WAIT_BEFORE_COMPARING;
use crate::key_state::{self, KeyState};
use crate::reply::Reply;
use crate::routing::Role;
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
    /// Keys a store answered a read of with an error (counted among `different` or
    /// `only_on_primary` as well): what cannot be read cannot be shown to agree.
    pub unreadable: u64,
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
    /// Where `repair` copies from: the default store.
    pub repair_source: Role,
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
            repair_source: Role::Secondary,
            ttl_tolerance_ms: DEFAULT_TTL_TOLERANCE_MS,
        }
    }
}

pub struct Verify {
    primary: Arc<Store>,
    secondary: Arc<Store>,
    options: VerifyOptions,
    /// How `repair` copies (see `copy::Reconciler`).
    reconciler: Arc<dyn Reconciler>,
    phase: Phase,
    cursor: Vec<u8>,
    started: bool,
    /// Random keys drawn so far (`sample`).
    drawn: u64,
    report: VerifyReport,
}

/// Where a verify stands (`Verify::checkpoint`, `Verify::resume`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyCheckpoint {
    pub scanning_primary: bool,
    pub cursor: Vec<u8>,
    pub report: VerifyReport,
}

/// TTLs within a second are equal: they tick down between the reads of the two stores.
pub const DEFAULT_TTL_TOLERANCE_MS: i64 = 1000;

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Agree,
    MissingOnPrimary,
    Different,
    /// Gone from the secondary since it was listed: nothing to compare.
    Vanished,
}

impl Verify {
    pub fn new(primary: Arc<Store>, secondary: Arc<Store>, options: VerifyOptions) -> Self {
        let reconciler = Arc::new(DirectCopy {
            primary: Arc::clone(&primary),
            secondary: Arc::clone(&secondary),
        });
        Verify {
            primary,
            secondary,
            options,
            reconciler,
            phase: Phase::SecondaryKeys,
            cursor: b"0".to_vec(),
            started: false,
            drawn: 0,
            report: VerifyReport::default(),
        }
    }

    /// Repairs through `reconciler` instead of copying directly (a MultiStore's re-sync).
    pub fn with_reconciler(mut self, reconciler: Arc<dyn Reconciler>) -> Self {
        self.reconciler = reconciler;
        self
    }

    pub fn report(&self) -> &VerifyReport {
        &self.report
    }

    /// What `resume` needs to continue from here in another process: which scan (the
    /// secondary's keys, then the primary's), its cursor, and the counters so far.
    pub fn checkpoint(&self) -> VerifyCheckpoint {
        VerifyCheckpoint {
            scanning_primary: self.phase == Phase::PrimaryKeys,
            cursor: self.cursor.clone(),
            report: self.report.clone(),
        }
    }

    /// Continues a verify from a checkpoint (not a sample: its keys are drawn at random). The
    /// page it was checking when it stopped is checked again, and counted once.
    pub fn resume(mut self, checkpoint: VerifyCheckpoint) -> Self {
        self.phase = if checkpoint.scanning_primary {
            Phase::PrimaryKeys
        } else {
            Phase::SecondaryKeys
        };
        self.cursor = checkpoint.cursor;
        self.report = checkpoint.report;
        self.report.done = false;
        self
    }

    /// Checks one page of keys. Call until the report says `done`.
    pub fn step(&mut self, cancel: &CancelToken) -> Result<&VerifyReport> {
        if !self.started {
            // Commands that timed out earlier may still land on either store: compared (or
            // copied) before they land, a key would look right and then differ.
            for store in [&self.primary, &self.secondary] {
                store.settle_requests_in_doubt(WAIT_BEFORE_COMPARING, cancel)?;
            }
            self.started = true;
            self.report.total = match self.options.sample {
                Some(sample) => sample,
                None => crate::backfill::estimated_keys(&self.secondary, cancel)?,
            };
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
                    .is_none_or(|p| crate::glob::matches(p, k))
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
        // While traffic flows, a key written between the two reads looks different for a
        // moment: what differs is looked at again before it counts.
        let tolerance = self.options.ttl_tolerance_ms;
        let differing =
            copy::still_different(&self.secondary, &self.primary, keys, tolerance, cancel)?;
        let mut to_repair = Vec::new();
        if !differing.is_empty() {
            let on_secondary = key_state::read(&self.secondary, &differing, cancel)?;
            let on_primary = key_state::read(&self.primary, &differing, cancel)?;
            for ((key, secondary), primary) in differing.iter().zip(&on_secondary).zip(&on_primary)
            {
                let verdict = self.verdict(secondary, primary);
                match verdict {
                    Verdict::Vanished => continue,
                    Verdict::Agree => self.report.agree += 1,
                    Verdict::MissingOnPrimary => self.report.missing_on_primary += 1,
                    Verdict::Different => self.report.different += 1,
                }
                self.report.checked += 1;
                if verdict != Verdict::Agree {
                    to_repair.push(key.clone());
                }
            }
        }
        let agreeing = (keys.len() - differing.len()) as u64;
        self.report.agree += agreeing;
        self.report.checked += agreeing;
        if self.options.repair && !to_repair.is_empty() {
            self.repair(&to_repair, cancel)?;
        }
        Ok(())
    }

    fn verdict(&mut self, secondary: &KeyState, primary: &KeyState) -> Verdict {
        if matches!(secondary, KeyState::Unreadable(_))
            || matches!(primary, KeyState::Unreadable(_))
        {
            self.report.unreadable += 1;
            return Verdict::Different;
        }
        match (secondary, primary) {
            (KeyState::Absent, _) => Verdict::Vanished,
            (_, KeyState::Absent) => Verdict::MissingOnPrimary,
            (s, p) if s.same_as(p, self.options.ttl_tolerance_ms) => Verdict::Agree,
            _ => Verdict::Different,
        }
    }

    /// Copies each key from the default store to the other (RESTORE REPLACE, or DEL where the
    /// default store has no such key) until both agree, a few rounds at most.
    fn repair(&mut self, keys: &[Vec<u8>], cancel: &CancelToken) -> Result<()> {
        let left = self.reconciler.reconcile(
            self.options.repair_source,
            keys,
            self.options.ttl_tolerance_ms,
            cancel,
        )?;
        self.report.repaired += (keys.len() - left.len()) as u64;
        self.report.repair_failed += left.len() as u64;
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
        let mut only = Vec::new();
        for (key, reply) in keys.iter().zip(on_secondary) {
            match reply {
                Reply::Integer(0) => only.push(key.clone()),
                Reply::Integer(_) => {}
                _ => {
                    self.report.unreadable += 1;
                    only.push(key.clone());
                }
            }
        }
        // Written through dual-write to both stores since the primary was listed: not only
        // on the primary after all.
        let only = copy::still_different(
            &self.primary,
            &self.secondary,
            &only,
            self.options.ttl_tolerance_ms,
            cancel,
        )?;
        self.report.only_on_primary += only.len() as u64;
        if self.options.repair && !only.is_empty() {
            self.repair(&only, cancel)?;
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
    let on_secondary = key_state::read(secondary, keys, cancel)?;
    let on_primary = key_state::read(primary, keys, cancel)?;
    Ok(on_secondary
        .iter()
        .zip(&on_primary)
        .map(|(s, p)| s.same_as(p, DEFAULT_TTL_TOLERANCE_MS))
        .collect())
}
