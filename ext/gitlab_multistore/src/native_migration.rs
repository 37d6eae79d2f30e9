//! `GitlabMultistore::NativeBackfill` and `NativeVerify`: a backfill or a verification in
//! progress, advanced one SCAN page per `_step` call (each without the GVL), so the Ruby side
//! can yield progress, honour a rate limit and be interrupted between pages. Both run on the
//! MultiStore's own stores, so a store restart they run into is the MultiStore's to know.

use crate::convert::symbol_hash;
use crate::error::to_ruby_error;
use crate::native_store::NativeStore;
use crate::nogvl::{cancel_token, without_gvl};
use gitlab_multistore::migration::backfill::{Backfill, BackfillReport, Checkpoint};
use gitlab_multistore::migration::verify::{Verify, VerifyCheckpoint, VerifyOptions, VerifyReport};
use gitlab_multistore::routing::default_role;
use gitlab_multistore::{Flags, Store};
use magnus::{
    function, method, prelude::*, Error, IntoValue, RArray, RHash, RModule, RString, Ruby,
    TryConvert,
};
use parking_lot::Mutex;
use std::sync::Arc;

fn stores(store: &NativeStore) -> (Arc<Store>, Arc<Store>) {
    let core = store.core();
    (Arc::clone(core.primary()), Arc::clone(core.secondary()))
}

/// See `MultiStore::check_namespaces_apart` (which may connect to learn the servers' run_ids).
fn namespaces_apart(ruby: &Ruby, store: &NativeStore, flags: u32) -> Result<(), Error> {
    let cancel = cancel_token();
    let core = store.core();
    without_gvl(ruby, || {
        core.check_namespaces_apart(Flags::from_bits(flags), &cancel)
    })
    .and_then(|checked| checked.map_err(|e| to_ruby_error(ruby, e)))
}

/// A glob is bytes, like the keys it matches: binary patterns are fine.
fn glob_bytes(pattern: RString) -> Vec<u8> {
    // SAFETY: copied at once, before any other Ruby code runs.
    unsafe { pattern.as_slice() }.to_vec()
}

#[magnus::wrap(class = "GitlabMultistore::NativeBackfill", free_immediately, size)]
pub struct NativeBackfill {
    // Locked only without the GVL.
    inner: Mutex<Backfill>,
}

impl NativeBackfill {
    fn new(
        ruby: &Ruby,
        store: &NativeStore,
        pattern: Option<RString>,
        count: usize,
        flags: u32,
        checkpoint: Option<RHash>,
    ) -> Result<Self, Error> {
        store.core().copying_between_stores(Flags::from_bits(flags));
        namespaces_apart(ruby, store, flags)?;
        let (primary, secondary) = stores(store);
        let mut backfill = Backfill::new(primary, secondary, pattern.map(glob_bytes), count)
            .with_default_store(default_role(Flags::from_bits(flags)))
            .with_reconciler(store.core().reconciler());
        if let Some(checkpoint) = checkpoint {
            backfill = backfill.resume(checkpoint_from_ruby(ruby, checkpoint)?);
        }
        Ok(NativeBackfill {
            inner: Mutex::new(backfill),
        })
    }

    /// One page, with the flags as they are now: the store callers are answered from decides
    /// whether a stale copy may be copied again.
    fn step(ruby: &Ruby, rb_self: &Self, store: &NativeStore, flags: u32) -> Result<RHash, Error> {
        let flags = Flags::from_bits(flags);
        store.core().copying_between_stores(flags);
        let cancel = cancel_token();
        let report = without_gvl(ruby, || {
            let mut backfill = rb_self.inner.lock();
            backfill.set_default_store(default_role(flags));
            backfill.step(&cancel).cloned()
        })?;
        backfill_hash(ruby, &report.map_err(|e| to_ruby_error(ruby, e))?)
    }
}

impl NativeBackfill {
    /// `{ cursor:, report: {…}, pending: [[key, fingerprint], …] }`, binary strings.
    fn checkpoint(ruby: &Ruby, rb_self: &Self) -> Result<RHash, Error> {
        let checkpoint = rb_self.inner.lock().checkpoint();
        let pending = ruby.ary_from_iter(checkpoint.pending.iter().map(|(key, fingerprint)| {
            ruby.ary_from_iter([ruby.str_from_slice(key), ruby.str_from_slice(fingerprint)])
        }));
        symbol_hash(
            ruby,
            &[
                ("cursor", ruby.str_from_slice(&checkpoint.cursor).as_value()),
                (
                    "report",
                    backfill_hash(ruby, &checkpoint.report)?.as_value(),
                ),
                ("pending", pending.as_value()),
            ],
        )
    }
}

/// Reads a checkpoint Hash handed back from Ruby (see `Checkpoint` on the Ruby side).
struct Fields<'r> {
    ruby: &'r Ruby,
    hash: RHash,
}

impl<'r> Fields<'r> {
    fn get(&self, key: &str) -> Result<magnus::Value, Error> {
        self.hash.get(self.ruby.to_symbol(key)).ok_or_else(|| {
            Error::new(
                self.ruby.exception_arg_error(),
                format!("checkpoint without {key}"),
            )
        })
    }

    fn nested(&self, key: &str) -> Result<Fields<'r>, Error> {
        Ok(Fields {
            ruby: self.ruby,
            hash: RHash::try_convert(self.get(key)?)?,
        })
    }

    fn count(&self, key: &str) -> Result<u64, Error> {
        u64::try_convert(self.get(key)?)
    }

    fn bytes(&self, key: &str) -> Result<Vec<u8>, Error> {
        bytes(self.get(key)?)
    }
}

fn bytes(value: magnus::Value) -> Result<Vec<u8>, Error> {
    let string = RString::try_convert(value)?;
    // SAFETY: copied at once.
    Ok(unsafe { string.as_slice() }.to_vec())
}

fn checkpoint_from_ruby(ruby: &Ruby, hash: RHash) -> Result<Checkpoint, Error> {
    let fields = Fields { ruby, hash };
    let counts = fields.nested("report")?;
    let report = BackfillReport {
        scanned: counts.count("scanned")?,
        copied: counts.count("copied")?,
        already_present: counts.count("already_present")?,
        expired: counts.count("expired")?,
        failed: counts.count("failed")?,
        undone: counts.count("undone")?,
        recopied: counts.count("recopied")?,
        left_different: counts.count("left_different")?,
        total: counts.count("total")?,
        done: false,
    };
    let mut pending = Vec::new();
    for entry in RArray::try_convert(fields.get("pending")?)?.into_iter() {
        let pair = RArray::try_convert(entry)?;
        let key = bytes(pair.entry(0)?)?;
        let fingerprint: [u8; 20] = bytes(pair.entry(1)?)?.try_into().map_err(|_| {
            Error::new(
                ruby.exception_arg_error(),
                "a checkpoint fingerprint is 20 bytes",
            )
        })?;
        pending.push((key, fingerprint));
    }
    Ok(Checkpoint {
        cursor: fields.bytes("cursor")?,
        report,
        pending,
    })
}

fn backfill_hash(ruby: &Ruby, report: &BackfillReport) -> Result<RHash, Error> {
    let v = |value: u64| value.into_value_with(ruby);
    symbol_hash(
        ruby,
        &[
            ("scanned", v(report.scanned)),
            ("copied", v(report.copied)),
            ("already_present", v(report.already_present)),
            ("expired", v(report.expired)),
            ("failed", v(report.failed)),
            ("undone", v(report.undone)),
            ("recopied", v(report.recopied)),
            ("left_different", v(report.left_different)),
            ("total", v(report.total)),
            ("done", report.done.into_value_with(ruby)),
        ],
    )
}

#[magnus::wrap(class = "GitlabMultistore::NativeVerify", free_immediately, size)]
pub struct NativeVerify {
    inner: Mutex<Verify>,
}

impl NativeVerify {
    // The arguments of the Ruby constructor, one by one, as magnus passes them.
    #[allow(clippy::too_many_arguments)]
    fn new(
        ruby: &Ruby,
        store: &NativeStore,
        pattern: Option<RString>,
        count: usize,
        sample: Option<u64>,
        repair: bool,
        flags: u32,
        checkpoint: Option<RHash>,
    ) -> Result<Self, Error> {
        if repair {
            store.core().copying_between_stores(Flags::from_bits(flags));
        }
        namespaces_apart(ruby, store, flags)?;
        if sample.is_some() && store.core().secondary().config().namespace.is_some() {
            return Err(Error::new(
                ruby.exception_arg_error(),
                "verify(sample:) draws its keys with RANDOMKEY, which cannot keep to a namespace: \
                 verify the namespaced store in full (or with match:)",
            ));
        }
        let (primary, secondary) = stores(store);
        let options = VerifyOptions {
            pattern: pattern.map(glob_bytes),
            count: count.max(1),
            sample,
            repair,
            repair_source: store.core().source_of_truth(Flags::from_bits(flags)),
            ..VerifyOptions::default()
        };
        let mut verify =
            Verify::new(primary, secondary, options).with_reconciler(store.core().reconciler());
        if let Some(checkpoint) = checkpoint {
            verify = verify.resume(verify_checkpoint_from_ruby(ruby, checkpoint)?);
        }
        Ok(NativeVerify {
            inner: Mutex::new(verify),
        })
    }

    /// One page, with the flags as they are now: a repair copies from the store that holds
    /// every write at this moment, never from one the flags have since stopped writing.
    fn step(ruby: &Ruby, rb_self: &Self, store: &NativeStore, flags: u32) -> Result<RHash, Error> {
        let flags = Flags::from_bits(flags);
        store.core().copying_between_stores(flags);
        let source = store.core().source_of_truth(flags);
        let cancel = cancel_token();
        let report = without_gvl(ruby, || {
            let mut verify = rb_self.inner.lock();
            verify.set_repair_source(source);
            verify.step(&cancel).cloned()
        })?;
        verify_hash(ruby, &report.map_err(|e| to_ruby_error(ruby, e))?)
    }
}

impl NativeVerify {
    /// `{ cursor:, scanning_primary:, report: {…} }`.
    fn checkpoint(ruby: &Ruby, rb_self: &Self) -> Result<RHash, Error> {
        let checkpoint = rb_self.inner.lock().checkpoint();
        symbol_hash(
            ruby,
            &[
                ("cursor", ruby.str_from_slice(&checkpoint.cursor).as_value()),
                (
                    "scanning_primary",
                    checkpoint.scanning_primary.into_value_with(ruby),
                ),
                (
                    "report",
                    verify_counters(ruby, &checkpoint.report)?.as_value(),
                ),
            ],
        )
    }
}

/// The counters alone (no derived readiness), as a checkpoint keeps them.
fn verify_counters(ruby: &Ruby, report: &VerifyReport) -> Result<RHash, Error> {
    let v = |value: u64| value.into_value_with(ruby);
    symbol_hash(
        ruby,
        &[
            ("checked", v(report.checked)),
            ("agree", v(report.agree)),
            ("missing_on_primary", v(report.missing_on_primary)),
            ("different", v(report.different)),
            ("only_on_primary", v(report.only_on_primary)),
            ("repaired", v(report.repaired)),
            ("repair_failed", v(report.repair_failed)),
            ("unreadable", v(report.unreadable)),
            ("total", v(report.total)),
        ],
    )
}

fn verify_checkpoint_from_ruby(ruby: &Ruby, hash: RHash) -> Result<VerifyCheckpoint, Error> {
    let fields = Fields { ruby, hash };
    let counts = fields.nested("report")?;
    Ok(VerifyCheckpoint {
        scanning_primary: bool::try_convert(fields.get("scanning_primary")?)?,
        cursor: fields.bytes("cursor")?,
        report: VerifyReport {
            checked: counts.count("checked")?,
            agree: counts.count("agree")?,
            missing_on_primary: counts.count("missing_on_primary")?,
            different: counts.count("different")?,
            only_on_primary: counts.count("only_on_primary")?,
            repaired: counts.count("repaired")?,
            repair_failed: counts.count("repair_failed")?,
            unreadable: counts.count("unreadable")?,
            total: counts.count("total")?,
            done: false,
        },
    })
}

fn verify_hash(ruby: &Ruby, report: &VerifyReport) -> Result<RHash, Error> {
    let hash = verify_counters(ruby, report)?;
    hash.aset(ruby.to_symbol("readiness"), report.readiness())?;
    hash.aset(ruby.to_symbol("in_agreement"), report.in_agreement())?;
    hash.aset(ruby.to_symbol("done"), report.done)?;
    Ok(hash)
}

pub fn init(ruby: &Ruby, module: RModule) -> Result<(), Error> {
    let backfill = module.define_class("NativeBackfill", ruby.class_object())?;
    backfill.define_singleton_method("new", function!(NativeBackfill::new, 5))?;
    backfill.define_method("_step", method!(NativeBackfill::step, 2))?;
    backfill.define_method("_checkpoint", method!(NativeBackfill::checkpoint, 0))?;
    let verify = module.define_class("NativeVerify", ruby.class_object())?;
    verify.define_singleton_method("new", function!(NativeVerify::new, 7))?;
    verify.define_method("_step", method!(NativeVerify::step, 2))?;
    verify.define_method("_checkpoint", method!(NativeVerify::checkpoint, 0))?;
    Ok(())
}
