//! `tracing` events of the core, delivered to the application's Ruby Logger
//! (`Gitlab::Redis::MultiStore.logger`). Events happen where Ruby cannot be called (without
//! the GVL, or on a thread Ruby does not know), so they are queued here and written by the
//! Ruby thread that next comes back from a native call, with the GVL held.

use gitlab_multistore::fork::ForkSafeMutex;
use magnus::{prelude::*, Error, RArray, RModule, Ruby};
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::LazyLock;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

/// Bounded, so a logger that is never drained (no calls for a while) cannot grow memory.
const MAX_QUEUED: usize = 10_000;

/// Fork-safe: a thread queueing a line when the process forks must not leave it locked in the
/// child.
static QUEUE: LazyLock<ForkSafeMutex<VecDeque<(u8, String)>>> =
    LazyLock::new(|| ForkSafeMutex::new(VecDeque::new()));
static PENDING: AtomicBool = AtomicBool::new(false);
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Ruby Logger severities: 0 debug, 1 info, 2 warn, 3 error. Events below are not even formatted.
static MIN_SEVERITY: AtomicU8 = AtomicU8::new(2);

fn severity(level: &Level) -> u8 {
    match *level {
        Level::TRACE | Level::DEBUG => 0,
        Level::INFO => 1,
        Level::WARN => 2,
        Level::ERROR => 3,
    }
}

struct RubyLoggerLayer;

impl<S: Subscriber> Layer<S> for RubyLoggerLayer {
    fn enabled(&self, metadata: &tracing::Metadata<'_>, _ctx: Context<'_, S>) -> bool {
        severity(metadata.level()) >= MIN_SEVERITY.load(Ordering::Relaxed)
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut line = LineVisitor::default();
        event.record(&mut line);
        let mut queue = QUEUE.lock();
        if queue.len() >= MAX_QUEUED {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        queue.push_back((severity(event.metadata().level()), line.finish()));
        PENDING.store(true, Ordering::Release);
    }
}

/// `message key=value key=value`: one structured line per event.
#[derive(Default)]
struct LineVisitor {
    message: String,
    fields: String,
}

impl LineVisitor {
    fn finish(self) -> String {
        format!("gitlab_multistore: {}{}", self.message, self.fields)
    }
}

impl Visit for LineVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={}", field.name(), value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={:?}", field.name(), value);
        }
    }
}

/// Installs the forwarding subscriber, unless the process already has a global one (another
/// Rust extension may have installed its own); the core's events then go there instead.
pub fn init() {
    let subscriber = tracing_subscriber::registry().with(RubyLoggerLayer);
    let _ = tracing::subscriber::set_global_default(subscriber);
}

/// Sets the lowest severity forwarded, as a Ruby Logger level (0 debug … 3 error).
pub fn set_level(level: u8) {
    MIN_SEVERITY.store(level.min(3), Ordering::Relaxed);
    tracing::callsite::rebuild_interest_cache();
}

/// Writes the queued lines to `Gitlab::Redis::MultiStore.logger`. Cheap when nothing is queued.
pub fn deliver(ruby: &Ruby) -> Result<(), Error> {
    if !PENDING.swap(false, Ordering::AcqRel) {
        return Ok(());
    }
    let lines: Vec<(u8, String)> = QUEUE.lock().drain(..).collect();
    let dropped = DROPPED.swap(0, Ordering::Relaxed);
    let rows = ruby.ary_new_capa(lines.len() + 1);
    for (severity, line) in lines {
        rows.push((severity, line))?;
    }
    if dropped > 0 {
        rows.push((
            2u8,
            format!("gitlab_multistore: {dropped} log lines dropped (queue full)"),
        ))?;
    }
    native_events(ruby)?.funcall::<_, _, magnus::Value>("deliver_logs", (rows,))?;
    Ok(())
}

/// The Ruby side that writes logs and metric samples: `Gitlab::Redis::MultiStore::NativeEvents`.
pub fn native_events(ruby: &Ruby) -> Result<RModule, Error> {
    let gitlab: RModule = ruby.class_object().const_get("Gitlab")?;
    let redis: RModule = gitlab.const_get("Redis")?;
    let multi_store: magnus::RClass = redis.const_get("MultiStore")?;
    multi_store.const_get("NativeEvents")
}

/// Hands the metric samples recorded on this thread to the application's `on_metric`.
pub fn deliver_samples(ruby: &Ruby) -> Result<(), Error> {
    if !gitlab_multistore::metrics::hook_enabled() {
        return Ok(());
    }
    let samples = gitlab_multistore::metrics::take_samples();
    if samples.is_empty() {
        return Ok(());
    }
    let rows: RArray = ruby.ary_new_capa(samples.len());
    for sample in samples {
        let labels = ruby.hash_new();
        for (key, value) in sample.labels {
            labels.aset(ruby.to_symbol(key), value)?;
        }
        rows.push((ruby.to_symbol(sample.name), labels, sample.value))?;
    }
    native_events(ruby)?.funcall::<_, _, magnus::Value>("deliver_samples", (rows,))?;
    Ok(())
}
