//! Copying the keys dual-writes never touch. During dual-write, only keys written since the
//! flag flipped reach the primary; a key that is only read (or has a long TTL) would be lost at
//! the switch. A backfill walks the secondary with SCAN and copies each key the primary lacks:
//!
//! - PEXPIRETIME + DUMP on the secondary, RESTORE on the primary *without* REPLACE: a key written
//!   through dual-write since is newer and wins (BUSYKEY counts as "already present");
//! - the expiry is copied as an absolute time (see `copy.rs`), so the copy expires with the
//!   original; a key that expires meanwhile is skipped;
//! - a key deleted through the MultiStore while it was being copied must not come back: a
//!   restored key the secondary no longer has is deleted from the primary again, while the
//!   primary still holds exactly the copy — checked right away, and once more after a settle
//!   delay (1 s), when a delete that was in flight during the copy has landed on both stores;
//! - a write that changes a key in place (EXPIRE, PERSIST, HDEL, HINCRBY …) and is dual-written
//!   between the DUMP and the RESTORE does nothing on the primary (the key is not there yet) and
//!   is then overwritten by the stale snapshot: at the second look each restored key is read
//!   again on the secondary (DUMP, one pipeline), and one that changed since its copy is
//!   compared with the primary and, while the secondary is the default store, copied again
//!   (REPLACE) until both agree;
//! - an error reply (an ACL refusing DUMP or EXISTS) is a failed key, never "expired" or
//!   "already present".
//!
//! Streaming: one SCAN page in memory at a time (plus the keys restored during the last settle
//! delay), whatever the size of the store.

use crate::backend::store::Store;
use crate::error::{Error, Result};
use crate::migration::copy::{self, DirectCopy, Fingerprint, Reconciler, Snapshot};
use crate::migration::scan_lanes::{estimated_keys, scan_page, Lane, Lanes};
use crate::protocol::command::Command;
use crate::protocol::reply::Reply;
use crate::routing::Role;
use crate::transport::cancel::CancelToken;
use crate::transport::in_doubt::WAIT_BEFORE_COMPARING;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackfillReport {
    pub scanned: u64,
    pub copied: u64,
    pub already_present: u64,
    pub expired: u64,
    pub failed: u64,
    /// Copied keys deleted again because the secondary lost them during the copy.
    pub undone: u64,
    /// Copied keys that a write changed in place during the copy, copied again.
    pub recopied: u64,
    /// Copied keys that still differ from the secondary after the second look (a write kept
    /// changing them, or the primary is the default store, whose data is not overwritten):
    /// verify reports them.
    pub left_different: u64,
    /// Keys on the secondary when the backfill started (DBSIZE), for progress.
    pub total: u64,
    pub done: bool,
}

/// A key copied, with a fingerprint of what was copied.
type Copied = (Vec<u8>, Fingerprint);

/// Where a backfill stands, to continue it in another process after a crash or a kill
/// (`Backfill::resume`): the SCAN cursor of the next page, the counters, and the keys copied
/// whose second look is still due, with a fingerprint of what was copied. A resumed backfill
/// scans again at most the page that was being copied; the keys of that page it had copied
/// are then already on the primary, and a backfill never overwrites those.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkpoint {
    pub cursor: Vec<u8>,
    pub report: BackfillReport,
    pub pending: Vec<(Vec<u8>, [u8; 20])>,
}

pub struct Backfill {
    primary: Arc<Store>,
    secondary: Arc<Store>,
    pattern: Option<Vec<u8>>,
    count: usize,
    /// Where the scan of the secondary stands, once the first step knows its lanes (one per
    /// master of a cluster); until then, the position a resumed backfill starts from.
    lanes: Option<Lanes<ReadPage>>,
    resume_from: Option<Vec<u8>>,
    started: bool,
    /// Pages of restored keys waiting for their second look, oldest first, each key with a
    /// fingerprint of what was copied (the value itself is not kept: a second of copying may be
    /// gigabytes).
    recheck: VecDeque<(Instant, Vec<Copied>)>,
    settle_delay: Duration,
    /// The secondary is the default store: its data is the truth, and a copy that a write made
    /// stale may be overwritten from it.
    secondary_is_default: bool,
    /// How stale copies are copied again (see `copy::Reconciler`).
    reconciler: Arc<dyn Reconciler>,
    report: BackfillReport,
}

/// How long a restored key waits for its second look: a delete sent through the MultiStore
/// while the key was being copied has reached both stores by then unless one of them stalled
/// longer (verify finds such a key as "only on the primary").
pub const DEFAULT_SETTLE_DELAY: Duration = Duration::from_secs(1);

/// Once every page is copied, a step waits at most this long for the last second looks to be
/// due: a switch of the default store meanwhile is then seen before they are made.
const LONGEST_FINAL_WAIT: Duration = Duration::from_millis(200);

impl Backfill {
    pub fn new(
        primary: Arc<Store>,
        secondary: Arc<Store>,
        pattern: Option<Vec<u8>>,
        count: usize,
    ) -> Self {
        let reconciler = Arc::new(DirectCopy::new(&primary, &secondary));
        Backfill {
            primary,
            secondary,
            pattern,
            count: count.max(1),
            lanes: None,
            resume_from: None,
            started: false,
            recheck: VecDeque::new(),
            settle_delay: DEFAULT_SETTLE_DELAY,
            secondary_is_default: true,
            reconciler,
            report: BackfillReport::default(),
        }
    }

    /// Which store callers are answered from while the backfill runs (the secondary by default).
    pub fn with_default_store(mut self, default: Role) -> Self {
        self.secondary_is_default = default == Role::Secondary;
        self
    }

    /// The store callers are answered from now (the flags may change while a backfill runs).
    pub fn set_default_store(&mut self, default: Role) {
        self.secondary_is_default = default == Role::Secondary;
    }

    /// Copies stale copies again through `reconciler` (a MultiStore's re-sync).
    pub fn with_reconciler(mut self, reconciler: Arc<dyn Reconciler>) -> Self {
        self.reconciler = reconciler;
        self
    }

    pub fn with_settle_delay(mut self, delay: Duration) -> Self {
        self.settle_delay = delay;
        self
    }

    pub fn report(&self) -> &BackfillReport {
        &self.report
    }

    /// What `resume` needs to continue from here.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            cursor: match &self.lanes {
                Some(lanes) => lanes.saved(),
                None => self.resume_from.clone().unwrap_or_else(|| b"0".to_vec()),
            },
            report: self.report.clone(),
            pending: self
                .recheck
                .iter()
                .flat_map(|(_, keys)| keys.iter().cloned())
                .collect(),
        }
    }

    /// Continues a backfill from a checkpoint: from its cursor, with its counters, the second
    /// look of the keys it had copied due at once (the settle delay has passed since).
    pub fn resume(mut self, checkpoint: Checkpoint) -> Self {
        self.lanes = None;
        self.resume_from = Some(checkpoint.cursor);
        self.report = checkpoint.report;
        self.report.done = false;
        if !checkpoint.pending.is_empty() {
            let due = Instant::now()
                .checked_sub(self.settle_delay)
                .unwrap_or_else(Instant::now);
            self.recheck.push_back((due, checkpoint.pending));
        }
        self
    }

    /// Copies one SCAN page -- of each of up to `scan_lanes::WORKERS` masters at once, when the
    /// secondary is a cluster -- and looks a second time at pages copied a settle delay ago.
    /// Once every page is copied, the steps left wait for and make the last second looks: each
    /// step gets the flags anew (a switch still stops the backfill) and a checkpoint after it
    /// holds what is left to look at. Call until the report says `done`.
    ///
    /// A step that fails hands the keys still waiting for their second look to the re-sync
    /// (see `Reconciler::hand_over`), so that a backfill given up on leaves no copy unchecked.
    pub fn step(&mut self, cancel: &CancelToken) -> Result<&BackfillReport> {
        if let Err(error) = self.advance(cancel) {
            let keys: Vec<Vec<u8>> = self
                .recheck
                .iter()
                .flat_map(|(_, keys)| keys.iter().map(|(key, _)| key.clone()))
                .collect();
            if !keys.is_empty() {
                // Copies from the secondary, while it is the default store, may be stale or
                // deleted since; once the primary is the default, which store is behind depends on
                // what was written since.
                let lagging = self.secondary_is_default.then_some(Role::Primary);
                self.reconciler.hand_over(&keys, lagging);
            }
            return Err(error);
        }
        Ok(&self.report)
    }

    fn advance(&mut self, cancel: &CancelToken) -> Result<()> {
        if self.report.done {
            return Ok(());
        }
        if !self.started {
            // Commands that timed out earlier may still land on either store: compared (or
            // copied) before they land, a key would look right and then differ.
            for store in [&self.primary, &self.secondary] {
                store.settle_requests_in_doubt(WAIT_BEFORE_COMPARING, cancel)?;
            }
            self.report.total = estimated_keys(&self.secondary, cancel)?;
            self.started = true;
        }
        let lanes = match &mut self.lanes {
            Some(lanes) => lanes,
            None => self.lanes.insert(Lanes::of(
                &self.secondary,
                self.resume_from.as_deref(),
                cancel,
            )?),
        };
        let copier = Copier {
            primary: &self.primary,
            secondary: &self.secondary,
            pattern: self.pattern.as_deref(),
            count: self.count,
            reconciler: self.reconciler.as_ref(),
        };
        let secondary_is_default = self.secondary_is_default;
        let copying = !lanes.done();
        if !copying {
            // Only second looks are left: wait for them to be due -- in short steps, each of
            // which the caller follows with the flags as they are then -- and make together
            // those due within one such step.
            let remaining = |at: &Instant| self.settle_delay.saturating_sub(at.elapsed());
            if let Some((at, _)) = self.recheck.front() {
                let first = remaining(at);
                let wait = if first > LONGEST_FINAL_WAIT {
                    LONGEST_FINAL_WAIT
                } else {
                    self.recheck
                        .iter()
                        .map(|(at, _)| remaining(at))
                        .take_while(|wait| *wait <= LONGEST_FINAL_WAIT)
                        .max()
                        .unwrap_or(first)
                };
                if !wait.is_zero() && !crate::transport::cancel::pause(cancel, wait) {
                    return Err(Error::Interrupted);
                }
                if first > LONGEST_FINAL_WAIT {
                    return Ok(());
                }
            }
        }
        // The second look of pages whose settle delay has passed reads the secondary while
        // this step's pages are copied: the secondary, which does most of a backfill's work,
        // is kept busy rather than waiting for one or the other.
        let mut due = Vec::new();
        while let Some((at, _)) = self.recheck.front() {
            if at.elapsed() < self.settle_delay {
                break;
            }
            if let Some((_, keys)) = self.recheck.pop_front() {
                due.extend(keys);
            }
        }
        let look = |cancel: &CancelToken| copier.second_look(&due, secondary_is_default, cancel);
        let (pages, looked) = if !copying {
            (Vec::new(), look(cancel))
        } else {
            // Masters copied side by side already overlap reading with writing.
            let read_ahead = lanes.count() == 1;
            let mut copy_pages = |cancel: &CancelToken| {
                lanes.run(cancel, |lane, cancel| {
                    copier.lane_page(lane, read_ahead, cancel)
                })
            };
            if due.is_empty() {
                (copy_pages(cancel), Ok(BackfillReport::default()))
            } else {
                let (pages, looked) = crate::transport::cancel::both(cancel, copy_pages, look);
                let panicked = || Error::Protocol("a backfill worker panicked".into());
                (
                    pages.unwrap_or_else(|| vec![Err(panicked())]),
                    looked.unwrap_or_else(|| Err(panicked())),
                )
            }
        };
        let copied_all = lanes.done();
        let mut failed = None;
        match looked {
            Ok(counts) => self.report.add_second_look(&counts),
            Err(error) => {
                // Looked at again by the next step (or a resumed run): a key is never left
                // without its second look.
                let overdue = Instant::now()
                    .checked_sub(self.settle_delay)
                    .unwrap_or_else(Instant::now);
                self.recheck.push_front((overdue, due));
                failed = Some(error);
            }
        }
        for page in pages {
            match page {
                Ok(written) => {
                    self.report.add(&written.counts);
                    // A first look right away caught the deletes that landed during the copy;
                    // the second, once the settle delay has passed, catches those in flight.
                    if !written.restored.is_empty() {
                        self.recheck.push_back((Instant::now(), written.restored));
                    }
                    if let Some(error) = written.failure {
                        failed = failed.or(Some(error));
                    }
                }
                Err(error) => failed = failed.or(Some(error)),
            }
        }
        if let Some(error) = failed {
            return Err(error);
        }
        self.report.done = copied_all && self.recheck.is_empty();
        Ok(())
    }
}

impl BackfillReport {
    /// Adds the counters of a second look: the keys it deleted had been counted as copied.
    fn add_second_look(&mut self, look: &BackfillReport) {
        self.add(look);
        self.copied = self.copied.saturating_sub(look.undone);
    }

    /// Adds the counters of a page.
    fn add(&mut self, page: &BackfillReport) {
        self.scanned += page.scanned;
        self.copied += page.copied;
        self.already_present += page.already_present;
        self.expired += page.expired;
        self.failed += page.failed;
        self.undone += page.undone;
        self.recopied += page.recopied;
        self.left_different += page.left_different;
    }
}

/// A page read from the secondary and not yet written to the primary: the RESTOREs of the keys
/// the primary lacked, and the counters of what the reading found. Counted only once written,
/// so a page read ahead and then lost to a kill is counted once, when scanned again.
pub struct ReadPage {
    /// Where the lane continues after this page (`None`: the lane is done).
    next: Option<Vec<u8>>,
    restores: Vec<Command>,
    restoring: Vec<Copied>,
    counts: BackfillReport,
}

/// A page written: the keys restored and kept, and the page's counters.
struct Written {
    restored: Vec<Copied>,
    counts: BackfillReport,
    /// The RESTOREs, or the first look after them, failed: the step fails once the keys are
    /// queued for their second look.
    failure: Option<Error>,
}

/// The copying of pages, shared by the lanes' workers.
struct Copier<'b> {
    primary: &'b Store,
    secondary: &'b Store,
    pattern: Option<&'b [u8]>,
    count: usize,
    reconciler: &'b dyn Reconciler,
}

impl Copier<'_> {
    /// One page of a lane: the page read ahead, or read now; written to the primary while (with
    /// `read_ahead`) the lane's next page is read from the secondary. The lane moves on only once
    /// its page is written, so a checkpoint never skips a page that was read but not written.
    fn lane_page(
        &self,
        lane: &mut Lane<ReadPage>,
        read_ahead: bool,
        cancel: &CancelToken,
    ) -> Result<Written> {
        let (index, lanes) = lane.position();
        let page = match lane.prefetched.take() {
            Some(page) => page,
            None => self.read(lane.cursor(), index, lanes, cancel)?,
        };
        let next = page.next.clone();
        let (written, ahead) = match next.as_deref().filter(|_| read_ahead) {
            Some(cursor) => {
                let (written, ahead) = crate::transport::cancel::both(
                    cancel,
                    |cancel| self.write(page, cancel),
                    |cancel| self.read(cursor, index, lanes, cancel),
                );
                let panicked = || Err(Error::Protocol("a backfill worker panicked".into()));
                // A read ahead that failed is simply read again by the next step.
                (written.unwrap_or_else(panicked), ahead.and_then(Result::ok))
            }
            None => (self.write(page, cancel), None),
        };
        let written = written?;
        lane.advance(next);
        lane.prefetched = ahead;
        Ok(written)
    }

    /// SCANs a page at `cursor` and reads (DUMP) the keys the primary lacks.
    fn read(
        &self,
        cursor: &[u8],
        lane: usize,
        lanes: usize,
        cancel: &CancelToken,
    ) -> Result<ReadPage> {
        let (returned, keys) = scan_page(self.secondary, cursor, self.pattern, self.count, cancel)?;
        let mut page = ReadPage {
            next: crate::migration::scan_lanes::next_cursor(lane, lanes, &returned),
            restores: Vec::new(),
            restoring: Vec::new(),
            counts: BackfillReport {
                scanned: keys.len() as u64,
                ..BackfillReport::default()
            },
        };
        if keys.is_empty() {
            return Ok(page);
        }
        let on_primary = copy::exists_each(self.primary, &keys, cancel)?;
        let mut missing = Vec::with_capacity(keys.len());
        for (key, reply) in keys.into_iter().zip(&on_primary) {
            match reply {
                Reply::Integer(0) => missing.push(key),
                Reply::Integer(_) => page.counts.already_present += 1,
                _ => page.counts.failed += 1,
            }
        }
        if missing.is_empty() {
            return Ok(page);
        }
        let snapshots = copy::read(self.secondary, &missing, cancel)?;
        for (key, snapshot) in missing.into_iter().zip(snapshots) {
            match snapshot {
                Snapshot::Value { expiry, .. } if expiry.is_past() => page.counts.expired += 1,
                Snapshot::Value { payload, expiry } => {
                    // No REPLACE: a key written through dual-write since is newer and wins.
                    page.restores
                        .push(copy::restore(&key, &payload, expiry, false));
                    page.restoring
                        .push((key, copy::fingerprint(&payload, expiry)));
                }
                Snapshot::Missing => page.counts.expired += 1,
                Snapshot::Failed(error) => {
                    page.counts.failed += 1;
                    tracing::debug!(error = %error, "backfill could not read a key");
                }
            }
        }
        Ok(page)
    }

    /// RESTOREs a page on the primary, then takes back what the secondary lost meanwhile.
    fn write(&self, page: ReadPage, cancel: &CancelToken) -> Result<Written> {
        let mut counts = page.counts;
        if page.restores.is_empty() {
            return Ok(Written {
                restored: Vec::new(),
                counts,
                failure: None,
            });
        }
        // The flags made the primary the only store written since the page began (looked at as
        // late as can be; a backfill also stops before its next page): keys deleted there since
        // would come back.
        if self.reconciler.written_alone(Role::Primary) {
            return Err(Error::SoleStore("primary"));
        }
        let results = match self.primary.pipeline(&page.restores, cancel) {
            Ok(results) => results,
            // Some RESTOREs may have landed: every key of the page gets its second look, which
            // deletes what the secondary lost and copies again what differs.
            Err(error) => {
                return Ok(Written {
                    restored: page.restoring,
                    counts,
                    failure: Some(error),
                })
            }
        };
        let mut restored = Vec::with_capacity(page.restoring.len());
        for (copied, result) in page.restoring.into_iter().zip(results) {
            match result {
                Reply::Status(_) => {
                    counts.copied += 1;
                    restored.push(copied);
                }
                Reply::Error(line) if line.starts_with(b"BUSYKEY") => counts.already_present += 1,
                _ => counts.failed += 1,
            }
        }
        let (kept, undone, left) = match self.undo_lost(&restored, cancel) {
            Ok(looked) => looked,
            // Not looked at now: the second look will.
            Err(error) => {
                return Ok(Written {
                    restored,
                    counts,
                    failure: Some(error),
                })
            }
        };
        counts.undone += undone;
        counts.left_different += left;
        counts.copied = counts.copied.saturating_sub(undone);
        let kept: HashSet<Vec<u8>> = kept.into_iter().collect();
        restored.retain(|(key, _)| kept.contains(key));
        Ok(Written {
            restored,
            counts,
            failure: None,
        })
    }

    /// Takes back from the primary the restored keys the secondary no longer has: they were
    /// deleted (or expired) while being copied, and must not be resurrected. Returns the keys
    /// kept, how many were taken back, and how many were left (see `take_back`).
    fn undo_lost(
        &self,
        restored: &[Copied],
        cancel: &CancelToken,
    ) -> Result<(Vec<Vec<u8>>, u64, u64)> {
        if restored.is_empty() {
            return Ok((Vec::new(), 0, 0));
        }
        let names: Vec<Vec<u8>> = restored.iter().map(|(key, _)| key.clone()).collect();
        let on_secondary = copy::exists_each(self.secondary, &names, cancel)?;
        let (lost, kept): (Vec<_>, Vec<_>) = restored
            .iter()
            .zip(on_secondary)
            .partition(|(_, reply)| *reply == Reply::Integer(0));
        let lost: Vec<Copied> = lost.into_iter().map(|(copied, _)| copied.clone()).collect();
        let (undone, left) = self.take_back(&lost, cancel)?;
        Ok((
            kept.into_iter().map(|((key, _), _)| key.clone()).collect(),
            undone,
            left,
        ))
    }

    /// The second look at restored keys, once a delete or write that was in flight during the
    /// copy has landed on both stores. Each key is read again on the secondary: gone, it is
    /// taken back from the primary (see `take_back`); changed since it was copied (a write that changed it in place
    /// between the DUMP and the RESTORE did nothing on the primary, where the key was not yet),
    /// it is compared with the primary and, while the secondary is the default store, copied
    /// again until both agree.
    fn second_look(
        &self,
        copied: &[Copied],
        secondary_is_default: bool,
        cancel: &CancelToken,
    ) -> Result<BackfillReport> {
        // A page at a time: the looks due at the end are a second's worth of pages, whose
        // values read at once would be that much memory.
        let mut counts = BackfillReport::default();
        for page in copied.chunks(self.count.max(1)) {
            let looked = self.second_look_at(page, secondary_is_default, cancel)?;
            counts.add(&looked);
        }
        Ok(counts)
    }

    fn second_look_at(
        &self,
        copied: &[Copied],
        secondary_is_default: bool,
        cancel: &CancelToken,
    ) -> Result<BackfillReport> {
        let mut counts = BackfillReport::default();
        let names: Vec<Vec<u8>> = copied.iter().map(|(key, _)| key.clone()).collect();
        let now = copy::read(self.secondary, &names, cancel)?;
        // Deleting or copying onto a primary the flags made the only store written would undo
        // the application's writes there.
        if self.reconciler.written_alone(Role::Primary) {
            return Err(Error::SoleStore("primary"));
        }
        let mut lost = Vec::new();
        let mut changed = Vec::new();
        for ((key, fingerprint), snapshot) in copied.iter().zip(now) {
            match snapshot {
                Snapshot::Missing => lost.push((key.clone(), *fingerprint)),
                Snapshot::Value { payload, expiry } => {
                    if copy::fingerprint(&payload, expiry) != *fingerprint {
                        changed.push(key.clone());
                    }
                }
                Snapshot::Failed(_) => changed.push(key.clone()),
            }
        }
        (counts.undone, counts.left_different) = self.take_back(&lost, cancel)?;
        let tolerance = crate::migration::key_state::DEFAULT_TTL_TOLERANCE_MS;
        // Changed through dual-write on both stores since: nothing to do for those.
        let different =
            copy::still_different(self.secondary, self.primary, &changed, tolerance, cancel)?;
        if different.is_empty() {
            return Ok(counts);
        }
        if !secondary_is_default {
            counts.left_different += different.len() as u64;
            return Ok(counts);
        }
        let left = self
            .reconciler
            .reconcile(Role::Secondary, &different, tolerance, cancel)?;
        counts.recopied = (different.len() - left.len()) as u64;
        counts.left_different += left.len() as u64;
        Ok(counts)
    }

    /// Deletes from the primary the copies of keys the secondary lost -- only where the primary
    /// still holds exactly the copy. A key written there since is newer than the loss: written
    /// by a process whose flags already made the primary the store written alone (a switch
    /// this backfill has not seen yet), it must be kept. Such a key is left and counted as left
    /// different, for verify to judge; so is a copy the primary holds in another encoding than
    /// the DUMP (which can happen for a collection shrunk on the secondary). Returns how many
    /// copies are gone from the primary (deleted here, or already) and how many were left.
    fn take_back(&self, lost: &[Copied], cancel: &CancelToken) -> Result<(u64, u64)> {
        if lost.is_empty() {
            return Ok((0, 0));
        }
        let names: Vec<Vec<u8>> = lost.iter().map(|(key, _)| key.clone()).collect();
        let on_primary = copy::read(self.primary, &names, cancel)?;
        let mut ours = Vec::new();
        let (mut gone, mut left) = (0, 0);
        for ((key, fingerprint), snapshot) in lost.iter().zip(on_primary) {
            match snapshot {
                Snapshot::Value { payload, expiry }
                    if copy::fingerprint(&payload, expiry) == *fingerprint =>
                {
                    ours.push(Command::from_args([&b"DEL"[..], key]))
                }
                Snapshot::Missing => gone += 1,
                _ => left += 1,
            }
        }
        if !ours.is_empty() {
            for reply in self.primary.pipeline(&ours, cancel)? {
                match reply {
                    Reply::Integer(_) => gone += 1,
                    _ => left += 1,
                }
            }
        }
        Ok((gone, left))
    }
}
