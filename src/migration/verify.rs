//! Proving the stores agree before the default is switched. Compares every key of the
//! secondary (or a random sample) with the primary by type, a canonical digest of its value and
//! its TTL (see `key_state`), then looks for keys only the primary has. With `repair`, each key
//! that differs is copied from the default store -- the store callers are answered from, whose
//! data is the truth -- and checked again.

use crate::backend::store::Store;
use crate::error::Result;
use crate::migration::copy::{self, DirectCopy, Reconciler};
use crate::migration::key_state::{self, KeyState};
use crate::migration::scan_lanes::scan_page;
use crate::migration::scan_lanes::Lanes;
use crate::protocol::command::Command;
use crate::protocol::reply::Reply;
use crate::routing::Role;
use crate::transport::cancel::CancelToken;
use crate::transport::in_doubt::WAIT_BEFORE_COMPARING;
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
    /// Adds the counters of a page.
    fn add(&mut self, page: &VerifyReport) {
        self.checked += page.checked;
        self.agree += page.agree;
        self.missing_on_primary += page.missing_on_primary;
        self.different += page.different;
        self.only_on_primary += page.only_on_primary;
        self.repaired += page.repaired;
        self.repair_failed += page.repair_failed;
        self.unreadable += page.unreadable;
    }

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
    /// Where the scan of the current phase's store stands, once its first step knows its lanes
    /// (one per master of a cluster); until then, the position a resumed verify starts from.
    lanes: Option<Lanes<()>>,
    resume_from: Option<Vec<u8>>,
    /// A sample has drawn all its keys.
    sampled: bool,
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

pub use crate::migration::key_state::DEFAULT_TTL_TOLERANCE_MS;

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
        let reconciler = Arc::new(DirectCopy::new(&primary, &secondary));
        Verify {
            primary,
            secondary,
            options,
            reconciler,
            phase: Phase::SecondaryKeys,
            lanes: None,
            resume_from: None,
            sampled: false,
            started: false,
            drawn: 0,
            report: VerifyReport::default(),
        }
    }

    /// Where repairs copy from now: the store that holds every write (the flags may change
    /// while a verify runs).
    pub fn set_repair_source(&mut self, source: Role) {
        self.options.repair_source = source;
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
            cursor: match &self.lanes {
                Some(lanes) => lanes.saved(),
                None => self.resume_from.clone().unwrap_or_else(|| b"0".to_vec()),
            },
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
        self.lanes = None;
        self.resume_from = Some(checkpoint.cursor);
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
                None => crate::migration::scan_lanes::estimated_keys(&self.secondary, cancel)?,
            };
        }
        match self.phase {
            Phase::SecondaryKeys if self.options.sample.is_some() => {
                let keys = self.sample_page(cancel)?;
                let page = self.checker().compare(&keys, cancel)?;
                self.report.add(&page);
                // A sample never looks for keys only on the primary: that needs a full scan.
                if self.sampled {
                    self.phase = Phase::Done;
                }
            }
            Phase::SecondaryKeys => {
                if self.scan_pages(Role::Secondary, cancel)? {
                    self.phase = Phase::PrimaryKeys;
                }
            }
            Phase::PrimaryKeys => {
                if self.scan_pages(Role::Primary, cancel)? {
                    self.phase = Phase::Done;
                }
            }
            Phase::Done => {}
        }
        self.report.done = self.phase == Phase::Done;
        Ok(&self.report)
    }

    /// Checks a page of `role`'s keys -- of each of up to `scan_lanes::WORKERS` masters at once,
    /// when it is a cluster: the secondary's against the primary, the primary's for keys only it
    /// has. Whether that store's scan is done.
    fn scan_pages(&mut self, role: Role, cancel: &CancelToken) -> Result<bool> {
        let store = match role {
            Role::Primary => &self.primary,
            Role::Secondary => &self.secondary,
        };
        let lanes = match &mut self.lanes {
            Some(lanes) => lanes,
            None => self.lanes.insert(Lanes::of(
                store,
                self.resume_from.take().as_deref(),
                cancel,
            )?),
        };
        let checker = Checker {
            primary: &self.primary,
            secondary: &self.secondary,
            options: &self.options,
            reconciler: self.reconciler.as_ref(),
        };
        let pattern = self.options.pattern.as_deref();
        let count = self.options.count;
        let pages = lanes.run(cancel, |lane, cancel| {
            let (returned, keys) = scan_page(store, lane.cursor(), pattern, count, cancel)?;
            let page = match role {
                Role::Secondary => checker.compare(&keys, cancel)?,
                Role::Primary => checker.find_only_on_primary(&keys, cancel)?,
            };
            let (index, of) = lane.position();
            lane.advance(crate::migration::scan_lanes::next_cursor(
                index, of, &returned,
            ));
            Ok(page)
        });
        let done = lanes.done();
        let mut failed = None;
        for page in pages {
            match page {
                Ok(page) => self.report.add(&page),
                Err(error) => failed = failed.or(Some(error)),
            }
        }
        if let Some(error) = failed {
            return Err(error);
        }
        if done {
            self.lanes = None;
        }
        Ok(done)
    }

    fn checker(&self) -> Checker<'_> {
        Checker {
            primary: &self.primary,
            secondary: &self.secondary,
            options: &self.options,
            reconciler: self.reconciler.as_ref(),
        }
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
                    .is_none_or(|p| crate::protocol::glob::matches(p, k))
            })
            .collect();
        keys.truncate(n);
        let exhausted = empty || self.drawn >= sample.saturating_mul(10);
        self.sampled = n == 0 || remaining <= keys.len() as u64 || exhausted;
        Ok(keys)
    }
}

/// The checks of pages, shared by the lanes' workers: each returns the counters of its page.
struct Checker<'v> {
    primary: &'v Store,
    secondary: &'v Store,
    options: &'v VerifyOptions,
    reconciler: &'v dyn Reconciler,
}

impl Checker<'_> {
    fn compare(&self, keys: &[Vec<u8>], cancel: &CancelToken) -> Result<VerifyReport> {
        let mut page = VerifyReport::default();
        if keys.is_empty() {
            return Ok(page);
        }
        // While traffic flows, a key written between the two reads looks different for a
        // moment: what differs is looked at again before it counts.
        let tolerance = self.options.ttl_tolerance_ms;
        let differing =
            copy::still_different(self.secondary, self.primary, keys, tolerance, cancel)?;
        let mut to_repair = Vec::new();
        if !differing.is_empty() {
            let (on_secondary, on_primary) = copy::at_once(
                cancel,
                |cancel| key_state::read(self.secondary, &differing, cancel),
                |cancel| key_state::read(self.primary, &differing, cancel),
            )?;
            for ((key, secondary), primary) in differing.iter().zip(&on_secondary).zip(&on_primary)
            {
                let verdict = self.verdict(secondary, primary, &mut page);
                match verdict {
                    Verdict::Vanished => continue,
                    Verdict::Agree => page.agree += 1,
                    Verdict::MissingOnPrimary => page.missing_on_primary += 1,
                    Verdict::Different => page.different += 1,
                }
                page.checked += 1;
                if verdict != Verdict::Agree {
                    to_repair.push(key.clone());
                }
            }
        }
        let agreeing = (keys.len() - differing.len()) as u64;
        page.agree += agreeing;
        page.checked += agreeing;
        if self.options.repair && !to_repair.is_empty() {
            self.repair(&to_repair, &mut page, cancel)?;
        }
        Ok(page)
    }

    fn verdict(
        &self,
        secondary: &KeyState,
        primary: &KeyState,
        page: &mut VerifyReport,
    ) -> Verdict {
        if matches!(secondary, KeyState::Unreadable(_))
            || matches!(primary, KeyState::Unreadable(_))
        {
            page.unreadable += 1;
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
    fn repair(
        &self,
        keys: &[Vec<u8>],
        page: &mut VerifyReport,
        cancel: &CancelToken,
    ) -> Result<()> {
        let left = self.reconciler.reconcile(
            self.options.repair_source,
            keys,
            self.options.ttl_tolerance_ms,
            cancel,
        )?;
        page.repaired += (keys.len() - left.len()) as u64;
        page.repair_failed += left.len() as u64;
        Ok(())
    }

    fn find_only_on_primary(&self, keys: &[Vec<u8>], cancel: &CancelToken) -> Result<VerifyReport> {
        let mut page = VerifyReport::default();
        if keys.is_empty() {
            return Ok(page);
        }
        let on_secondary = copy::exists_each(self.secondary, keys, cancel)?;
        let mut only = Vec::new();
        for (key, reply) in keys.iter().zip(on_secondary) {
            match reply {
                Reply::Integer(0) => only.push(key.clone()),
                Reply::Integer(_) => {}
                _ => {
                    page.unreadable += 1;
                    only.push(key.clone());
                }
            }
        }
        // Written through dual-write to both stores since the primary was listed: not only
        // on the primary after all.
        let only = copy::still_different(
            self.primary,
            self.secondary,
            &only,
            self.options.ttl_tolerance_ms,
            cancel,
        )?;
        page.only_on_primary += only.len() as u64;
        if self.options.repair && !only.is_empty() {
            self.repair(&only, &mut page, cancel)?;
        }
        Ok(page)
    }
}
