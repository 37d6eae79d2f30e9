//! Prometheus metrics of every MultiStore in the process, in one registry. Operators watch
//! these to decide when to flip the next flag. Label values are resolved once per instance
//! (`InstanceMetrics`), so counting on the hot path is one atomic add.

use crate::fork::ForkSafeMutex;
use crate::routing::{PerRole, Role};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{LazyLock, OnceLock};
use std::time::Instant;

/// A metric, defined once: what the registry exposes and what `on_metric` receives are named
/// and labelled from here.
#[derive(Debug)]
pub struct Family {
    pub name: &'static str,
    help: &'static str,
    /// Label names, `instance_name` first.
    labels: &'static [&'static str],
    pub kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `on_metric` gets each increment.
    Counter,
    /// `on_metric` gets each new value.
    Gauge,
    /// `on_metric` gets each observation (seconds).
    Histogram,
}

pub const READ_FALLBACK: Family = Family {
    name: "gitlab_redis_multi_store_read_fallback_total",
    help: "Reads the primary store could not answer (reason: miss or error) that fell back to the secondary",
    labels: &["instance_name", "command", "reason"],
    kind: Kind::Counter,
};
pub const METHOD_MISSING: Family = Family {
    name: "gitlab_redis_multi_store_method_missing_total",
    help: "Commands not in the command table, sent to the default store only",
    labels: &["instance_name", "command"],
    kind: Kind::Counter,
};
pub const PIPELINED_DIFF: Family = Family {
    name: "gitlab_redis_multi_store_pipelined_diff_error_total",
    help: "Pipelines (command: pipelined) and transactions (multi) whose results differed between the two stores",
    labels: &["instance_name", "command"],
    kind: Kind::Counter,
};
pub const NON_DEFAULT_WRITE_FAILURES: Family = Family {
    name: "gitlab_redis_multi_store_non_default_write_failures_total",
    help: "Writes that failed on the non-default store (reported, not raised)",
    labels: &["instance_name"],
    kind: Kind::Counter,
};
pub const REQUESTS: Family = Family {
    name: "gitlab_redis_multi_store_requests_total",
    help: "Round trips to each store, by kind of command (read, write, other, pipeline)",
    labels: &["instance_name", "store", "kind"],
    kind: Kind::Counter,
};
pub const DURATION: Family = Family {
    name: "gitlab_redis_multi_store_duration_seconds",
    help: "Time of round trips to each store",
    labels: &["instance_name", "store"],
    kind: Kind::Histogram,
};
pub const JOURNAL_KEYS: Family = Family {
    name: "gitlab_redis_multi_store_journal_keys",
    help: "Keys the non-default store missed, waiting for re-sync",
    labels: &["instance_name"],
    kind: Kind::Gauge,
};
pub const RESYNCED: Family = Family {
    name: "gitlab_redis_multi_store_resynced_keys_total",
    help: "Journaled keys copied to the store that missed them, and equal on both stores since",
    labels: &["instance_name"],
    kind: Kind::Counter,
};
pub const JOURNAL_OVERFLOWS: Family = Family {
    name: "gitlab_redis_multi_store_journal_overflow_total",
    help: "Missed keys that could not be journaled (journal full): a full verify is needed",
    labels: &["instance_name"],
    kind: Kind::Counter,
};
pub const BREAKER_OPENED: Family = Family {
    name: "gitlab_redis_multi_store_breaker_opened_total",
    help: "Times the circuit breaker of a store opened after repeated failures",
    labels: &["instance_name", "store"],
    kind: Kind::Counter,
};
pub const BREAKER_SKIPPED: Family = Family {
    name: "gitlab_redis_multi_store_breaker_skipped_total",
    help: "Writes not sent to the non-default store because its circuit breaker was open",
    labels: &["instance_name"],
    kind: Kind::Counter,
};
pub const STORE_RESETS: Family = Family {
    name: "gitlab_redis_multi_store_store_reset_total",
    help: "Stores seen restarted (run_id changed): their data may be gone, backfill again",
    labels: &["instance_name", "store"],
    kind: Kind::Counter,
};

/// Every metric, in the order the registry holds them.
pub const FAMILIES: [&Family; 12] = [
    &READ_FALLBACK,
    &METHOD_MISSING,
    &PIPELINED_DIFF,
    &NON_DEFAULT_WRITE_FAILURES,
    &REQUESTS,
    &DURATION,
    &JOURNAL_KEYS,
    &RESYNCED,
    &JOURNAL_OVERFLOWS,
    &BREAKER_OPENED,
    &BREAKER_SKIPPED,
    &STORE_RESETS,
];

const DURATION_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

enum Collector {
    Counter(IntCounterVec),
    Gauge(IntGaugeVec),
    Histogram(HistogramVec),
}

pub struct Metrics {
    registry: Registry,
    /// One per family, in `FAMILIES` order.
    collectors: Vec<Collector>,
}

static METRICS: OnceLock<Option<Metrics>> = OnceLock::new();

impl Metrics {
    fn build() -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let mut collectors = Vec::with_capacity(FAMILIES.len());
        for family in FAMILIES {
            let opts = Opts::new(family.name, family.help);
            let collector = match family.kind {
                Kind::Counter => Collector::Counter(IntCounterVec::new(opts, family.labels)?),
                Kind::Gauge => Collector::Gauge(IntGaugeVec::new(opts, family.labels)?),
                Kind::Histogram => Collector::Histogram(HistogramVec::new(
                    HistogramOpts::from(opts).buckets(DURATION_BUCKETS.to_vec()),
                    family.labels,
                )?),
            };
            match &collector {
                Collector::Counter(vec) => registry.register(Box::new(vec.clone()))?,
                Collector::Gauge(vec) => registry.register(Box::new(vec.clone()))?,
                Collector::Histogram(vec) => registry.register(Box::new(vec.clone()))?,
            }
            collectors.push(collector);
        }
        Ok(Metrics {
            registry,
            collectors,
        })
    }

    fn collector(&self, family: &Family) -> Option<&Collector> {
        let index = FAMILIES.iter().position(|f| f.name == family.name)?;
        self.collectors.get(index)
    }
}

/// One series of a family -- its labels resolved once -- that counts in the registry and hands
/// the same sample to `on_metric`.
#[derive(Clone)]
pub struct Series {
    family: &'static Family,
    labels: Vec<String>,
    handle: Option<Handle>,
}

#[derive(Clone)]
enum Handle {
    Counter(IntCounter),
    Gauge(IntGauge),
    Histogram(Histogram),
}

impl Series {
    /// The series of `family` with these label values (in the family's label order). A series
    /// is exported from the moment it is resolved, at 0: a counter first scraped at 1 shows no
    /// increase, and an alert on `increase()` would miss the first failure.
    pub fn of(family: &'static Family, labels: &[&str]) -> Series {
        let handle =
            global()
                .and_then(|m| m.collector(family))
                .and_then(|collector| match collector {
                    Collector::Counter(vec) => vec
                        .get_metric_with_label_values(labels)
                        .ok()
                        .map(Handle::Counter),
                    Collector::Gauge(vec) => vec
                        .get_metric_with_label_values(labels)
                        .ok()
                        .map(Handle::Gauge),
                    Collector::Histogram(vec) => vec
                        .get_metric_with_label_values(labels)
                        .ok()
                        .map(Handle::Histogram),
                });
        Series {
            family,
            labels: labels.iter().map(|value| value.to_string()).collect(),
            handle,
        }
    }

    /// Counts `value` (a counter), sets it (a gauge), or observes it (a histogram).
    pub fn add(&self, value: f64) {
        match &self.handle {
            Some(Handle::Counter(counter)) => counter.inc_by(value as u64),
            Some(Handle::Gauge(gauge)) => gauge.set(value as i64),
            Some(Handle::Histogram(histogram)) => histogram.observe(value),
            None => {}
        }
        if hook_enabled() {
            record(Sample {
                name: self.family.name,
                labels: self
                    .family
                    .labels
                    .iter()
                    .copied()
                    .zip(self.labels.iter().cloned())
                    .collect(),
                value,
            });
        }
    }

    pub fn inc(&self) {
        self.add(1.0);
    }
}

/// Off switch for the per-request metrics (requests, duration), for benchmarks and for
/// applications that do not scrape them. The GitLab counters stay on: they are rare and they
/// are what an operator decides a migration step with.
static REQUEST_METRICS: AtomicBool = AtomicBool::new(true);

pub fn set_request_metrics_enabled(enabled: bool) {
    REQUEST_METRICS.store(enabled, Ordering::Relaxed);
}

/// One increment or observation, for the host application's own metrics client.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

static HOOK: AtomicBool = AtomicBool::new(false);

/// Samples recorded on threads no caller drains -- the re-sync thread, copy workers, a store's
/// restart noticed there -- for the next caller to hand over. Bounded: with no caller for a
/// long while, the oldest are dropped rather than memory grown. Stamped with the fork
/// generation they were recorded in: a forked child hands over none of its parent's (the parent
/// does), and with the order they were recorded in, so a gauge's last value is its last.
static SHARED: LazyLock<ForkSafeMutex<VecDeque<(u64, Sample)>>> =
    LazyLock::new(|| ForkSafeMutex::new(VecDeque::new()));
const SHARED_CAPACITY: usize = 10_000;
static RECORDED: AtomicU64 = AtomicU64::new(0);

thread_local! {
    // Samples of the calls made on this thread, handed to the host application when the
    // binding has the GVL again (the core records them without it), each with its place in
    // the order samples were recorded.
    static PENDING: RefCell<Vec<(u64, Sample)>> = const { RefCell::new(Vec::new()) };
    // Set once the thread has drained its samples: a caller's thread, which keeps its own.
    static DRAINED_HERE: Cell<bool> = const { Cell::new(false) };
}

/// Starts (or stops) recording samples for `take_samples`.
pub fn set_hook_enabled(enabled: bool) {
    HOOK.store(enabled, Ordering::Relaxed);
}

pub fn hook_enabled() -> bool {
    HOOK.load(Ordering::Relaxed)
}

/// The samples recorded on this thread since the last call, and those of the core's own
/// threads, in the order they were recorded.
pub fn take_samples() -> Vec<Sample> {
    DRAINED_HERE.with(|drained| drained.set(true));
    let mut samples = PENDING.with(|pending| std::mem::take(&mut *pending.borrow_mut()));
    let generation = crate::fork::generation();
    {
        let mut shared = SHARED.lock();
        if !shared.is_empty() {
            samples.extend(
                shared
                    .drain(..)
                    .filter(|(recorded, _)| recorded >> 48 == generation),
            );
            samples.sort_by_key(|(recorded, _)| *recorded);
        }
    }
    samples.into_iter().map(|(_, sample)| sample).collect()
}

fn record(sample: Sample) {
    // The fork generation in the high bits, the order within it below.
    let order = RECORDED.fetch_add(1, Ordering::Relaxed) & ((1 << 48) - 1);
    let stamped = ((crate::fork::generation() << 48) | order, sample);
    if DRAINED_HERE.with(Cell::get) {
        PENDING.with(|pending| pending.borrow_mut().push(stamped));
    } else {
        let mut shared = SHARED.lock();
        if shared.len() >= SHARED_CAPACITY {
            shared.pop_front();
        }
        shared.push_back(stamped);
    }
}

/// The process-wide metrics, or `None` if they could not be registered (which would be a bug in
/// the names above; the store keeps working without metrics rather than failing).
pub fn global() -> Option<&'static Metrics> {
    METRICS
        .get_or_init(|| match Metrics::build() {
            Ok(metrics) => Some(metrics),
            Err(err) => {
                tracing::error!(error = %err, "could not register gitlab_multistore metrics");
                None
            }
        })
        .as_ref()
}

/// All metrics in the Prometheus text exposition format 0.0.4.
pub fn text() -> String {
    let Some(metrics) = global() else {
        return String::new();
    };
    let mut out = Vec::new();
    if let Err(err) = TextEncoder::new().encode(&metrics.registry.gather(), &mut out) {
        tracing::error!(error = %err, "could not encode gitlab_multistore metrics");
    }
    String::from_utf8(out).unwrap_or_default()
}

/// The `kind` label of a round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Read = 0,
    Write = 1,
    Other = 2,
    Pipeline = 3,
}

impl RequestKind {
    const ALL: [RequestKind; 4] = [
        RequestKind::Read,
        RequestKind::Write,
        RequestKind::Other,
        RequestKind::Pipeline,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RequestKind::Read => "read",
            RequestKind::Write => "write",
            RequestKind::Other => "other",
            RequestKind::Pipeline => "pipeline",
        }
    }
}

/// One MultiStore's series, labels resolved up front; those labelled with a command name are
/// resolved when they happen (fallbacks and unknown commands are rare, a diff rarer).
#[derive(Clone, Default)]
pub struct InstanceMetrics {
    instance_name: String,
    series: Option<Box<InstanceSeries>>,
}

#[derive(Clone)]
struct InstanceSeries {
    requests: PerRole<[Series; RequestKind::ALL.len()]>,
    duration: PerRole<Series>,
    non_default_write_failures: Series,
    journal_keys: Series,
    resynced: Series,
    journal_overflows: Series,
    breaker_opened: PerRole<Series>,
    breaker_skipped: Series,
    store_resets: PerRole<Series>,
}

impl InstanceMetrics {
    pub fn new(instance_name: &str) -> Self {
        let name = instance_name;
        let per_store =
            |family| PerRole::from_fn(|role: Role| Series::of(family, &[name, role.name()]));
        for batch in ["pipelined", "multi"] {
            let _ = Series::of(&PIPELINED_DIFF, &[name, batch]);
        }
        let series = InstanceSeries {
            requests: PerRole::from_fn(|role: Role| {
                RequestKind::ALL
                    .map(|kind| Series::of(&REQUESTS, &[name, role.name(), kind.label()]))
            }),
            duration: per_store(&DURATION),
            non_default_write_failures: Series::of(&NON_DEFAULT_WRITE_FAILURES, &[name]),
            journal_keys: Series::of(&JOURNAL_KEYS, &[name]),
            resynced: Series::of(&RESYNCED, &[name]),
            journal_overflows: Series::of(&JOURNAL_OVERFLOWS, &[name]),
            breaker_opened: per_store(&BREAKER_OPENED),
            breaker_skipped: Series::of(&BREAKER_SKIPPED, &[name]),
            store_resets: per_store(&STORE_RESETS),
        };
        InstanceMetrics {
            instance_name: instance_name.to_string(),
            series: Some(Box::new(series)),
        }
    }

    fn with(&self, f: impl FnOnce(&InstanceSeries)) {
        if let Some(series) = &self.series {
            f(series);
        }
    }

    /// Counts one round trip to a store and its duration.
    pub fn request(&self, role: Role, kind: RequestKind, started: Instant) {
        if !REQUEST_METRICS.load(Ordering::Relaxed) {
            return;
        }
        let seconds = started.elapsed().as_secs_f64();
        self.with(|s| {
            s.requests[role][kind as usize].inc();
            s.duration[role].add(seconds);
        });
    }

    /// A read answered by the secondary after the primary missed, labelled with the command as
    /// GitLab's dashboards query it (`pipelined` / `multi` for a batch).
    pub fn read_fallback_miss(&self, command: &str) {
        Series::of(&READ_FALLBACK, &[&self.instance_name, command, "miss"]).inc();
    }

    pub fn read_fallback_error(&self, command: &str) {
        Series::of(&READ_FALLBACK, &[&self.instance_name, command, "error"]).inc();
    }

    /// `command`: `pipelined` or `multi`.
    pub fn pipelined_diff(&self, command: &str) {
        Series::of(&PIPELINED_DIFF, &[&self.instance_name, command]).inc();
    }

    pub fn method_missing(&self, command: &str) {
        Series::of(&METHOD_MISSING, &[&self.instance_name, command]).inc();
    }

    pub fn non_default_write_failure(&self) {
        self.with(|s| s.non_default_write_failures.inc());
    }

    pub fn journal_size(&self, keys: usize) {
        self.with(|s| s.journal_keys.add(keys as f64));
    }

    pub fn resynced(&self, keys: u64) {
        self.with(|s| s.resynced.add(keys as f64));
    }

    pub fn journal_overflow(&self, keys: u64) {
        self.with(|s| s.journal_overflows.add(keys as f64));
    }

    pub fn breaker_opened(&self, role: Role) {
        self.with(|s| s.breaker_opened[role].inc());
    }

    pub fn breaker_skipped(&self) {
        self.with(|s| s.breaker_skipped.inc());
    }

    pub fn store_reset(&self, role: Role) {
        self.with(|s| s.store_resets[role].inc());
    }
}
