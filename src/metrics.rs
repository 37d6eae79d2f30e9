//! Prometheus metrics of every MultiStore in the process, in one registry. Operators watch
//! these to decide when to flip the next flag. Label values are resolved once per instance
//! (`InstanceMetrics`), so counting on the hot path is one atomic add.

use crate::routing::{PerRole, Role};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

pub struct Metrics {
    registry: Registry,
    read_fallback: IntCounterVec,
    method_missing: IntCounterVec,
    pipelined_diff: IntCounterVec,
    non_default_write_failures: IntCounterVec,
    requests: IntCounterVec,
    duration: HistogramVec,
    journal_keys: IntGaugeVec,
    resynced: IntCounterVec,
    journal_overflows: IntCounterVec,
    breaker_opened: IntCounterVec,
    breaker_skipped: IntCounterVec,
    store_resets: IntCounterVec,
}

static METRICS: OnceLock<Option<Metrics>> = OnceLock::new();

fn counter(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let vec = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(vec.clone()))?;
    Ok(vec)
}

impl Metrics {
    fn build() -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        Ok(Metrics {
            read_fallback: counter(
                &registry,
                "gitlab_redis_multi_store_read_fallback_total",
                "Reads the primary store could not answer (reason: miss or error) that fell back to the secondary",
                &["instance_name", "command", "reason"],
            )?,
            method_missing: counter(
                &registry,
                "gitlab_redis_multi_store_method_missing_total",
                "Commands not in the command table, sent to the default store only",
                &["instance_name", "command"],
            )?,
            pipelined_diff: counter(
                &registry,
                "gitlab_redis_multi_store_pipelined_diff_error_total",
                "Pipelines (command: pipelined) and transactions (multi) whose results differed between the two stores",
                &["instance_name", "command"],
            )?,
            non_default_write_failures: counter(
                &registry,
                "gitlab_redis_multi_store_non_default_write_failures_total",
                "Writes that failed on the non-default store (reported, not raised)",
                &["instance_name"],
            )?,
            requests: counter(
                &registry,
                "gitlab_redis_multi_store_requests_total",
                "Round trips to each store, by kind of command (read, write, other, pipeline)",
                &["instance_name", "store", "kind"],
            )?,
            duration: {
                let opts = HistogramOpts::new(
                    "gitlab_redis_multi_store_duration_seconds",
                    "Time of round trips to each store",
                )
                .buckets(vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]);
                let vec = HistogramVec::new(opts, &["instance_name", "store"])?;
                registry.register(Box::new(vec.clone()))?;
                vec
            },
            journal_keys: {
                let vec = IntGaugeVec::new(
                    Opts::new(
                        "gitlab_redis_multi_store_journal_keys",
                        "Keys the non-default store missed, waiting for re-sync",
                    ),
                    &["instance_name"],
                )?;
                registry.register(Box::new(vec.clone()))?;
                vec
            },
            resynced: counter(
                &registry,
                "gitlab_redis_multi_store_resynced_keys_total",
                "Journaled keys copied to the store that missed them, and equal on both stores since",
                &["instance_name"],
            )?,
            journal_overflows: counter(
                &registry,
                "gitlab_redis_multi_store_journal_overflow_total",
                "Missed keys that could not be journaled (journal full): a full verify is needed",
                &["instance_name"],
            )?,
            breaker_opened: counter(
                &registry,
                "gitlab_redis_multi_store_breaker_opened_total",
                "Times the circuit breaker of a store opened after repeated failures",
                &["instance_name", "store"],
            )?,
            breaker_skipped: counter(
                &registry,
                "gitlab_redis_multi_store_breaker_skipped_total",
                "Writes not sent to the non-default store because its circuit breaker was open",
                &["instance_name"],
            )?,
            store_resets: counter(
                &registry,
                "gitlab_redis_multi_store_store_reset_total",
                "Stores seen restarted (run_id changed): their data may be gone, backfill again",
                &["instance_name", "store"],
            )?,
            registry,
        })
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

thread_local! {
    // Samples of the calls made on this thread, handed to the host application when the
    // binding has the GVL again (the core records them without it).
    static PENDING: RefCell<Vec<Sample>> = const { RefCell::new(Vec::new()) };
}

/// Starts (or stops) recording samples for `take_samples`.
pub fn set_hook_enabled(enabled: bool) {
    HOOK.store(enabled, Ordering::Relaxed);
}

pub fn hook_enabled() -> bool {
    HOOK.load(Ordering::Relaxed)
}

/// The samples recorded on this thread since the last call.
pub fn take_samples() -> Vec<Sample> {
    PENDING.with(|pending| std::mem::take(&mut *pending.borrow_mut()))
}

fn record(name: &'static str, labels: impl FnOnce() -> Vec<(&'static str, String)>, value: f64) {
    if hook_enabled() {
        let sample = Sample {
            name,
            labels: labels(),
            value,
        };
        PENDING.with(|pending| pending.borrow_mut().push(sample));
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

/// Per-store handles of one instance: [primary, secondary].
#[derive(Clone, Default)]
struct StoreHandles {
    requests: Vec<IntCounter>,
    duration: Option<Histogram>,
}

/// One MultiStore's counters, labels resolved up front.
#[derive(Clone, Default)]
pub struct InstanceMetrics {
    instance_name: String,
    non_default_write_failures: Option<IntCounter>,
    stores: PerRole<StoreHandles>,
}

impl InstanceMetrics {
    pub fn new(instance_name: &str) -> Self {
        let Some(m) = global() else {
            return Self::default();
        };
        // Every series whose labels are known now starts at 0: a counter first scraped at 1
        // shows no increase, and an alert on `increase()` would miss the first failure.
        let _ = m.journal_overflows.with_label_values(&[instance_name]);
        let _ = m.breaker_skipped.with_label_values(&[instance_name]);
        let _ = m.resynced.with_label_values(&[instance_name]);
        let _ = m.journal_keys.with_label_values(&[instance_name]);
        for store in [Role::Primary, Role::Secondary] {
            let _ = m
                .breaker_opened
                .with_label_values(&[instance_name, store.name()]);
            let _ = m
                .store_resets
                .with_label_values(&[instance_name, store.name()]);
        }
        for batch in ["pipelined", "multi"] {
            let _ = m.pipelined_diff.with_label_values(&[instance_name, batch]);
        }
        InstanceMetrics {
            instance_name: instance_name.to_string(),
            non_default_write_failures: Some(
                m.non_default_write_failures
                    .with_label_values(&[instance_name]),
            ),
            stores: PerRole::from_fn(|role| StoreHandles {
                requests: RequestKind::ALL
                    .iter()
                    .map(|kind| {
                        m.requests
                            .with_label_values(&[instance_name, role.name(), kind.label()])
                    })
                    .collect(),
                duration: Some(m.duration.with_label_values(&[instance_name, role.name()])),
            }),
        }
    }

    /// Counts one round trip to a store and its duration.
    pub fn request(&self, role: Role, kind: RequestKind, started: Instant) {
        if !REQUEST_METRICS.load(Ordering::Relaxed) {
            return;
        }
        let seconds = started.elapsed().as_secs_f64();
        let handles = &self.stores[role];
        if let Some(counter) = handles.requests.get(kind as usize) {
            counter.inc();
        }
        if let Some(histogram) = &handles.duration {
            histogram.observe(seconds);
        }
        let labels = || {
            vec![
                ("instance_name", self.instance_name.clone()),
                ("store", role.name().to_string()),
            ]
        };
        record(
            "gitlab_redis_multi_store_requests_total",
            || {
                let mut l = labels();
                l.push(("kind", kind.label().to_string()));
                l
            },
            1.0,
        );
        record("gitlab_redis_multi_store_duration_seconds", labels, seconds);
    }

    /// A read answered by the secondary after the primary missed, labelled with the command as
    /// GitLab's dashboards query it (`pipelined` / `multi` for a batch). Not on the hot path: a
    /// fallback already cost a second round trip.
    pub fn read_fallback_miss(&self, command: &str) {
        self.read_fallback(command, "miss");
    }

    pub fn read_fallback_error(&self, command: &str) {
        self.read_fallback(command, "error");
    }

    fn read_fallback(&self, command: &str, reason: &'static str) {
        self.inc_labelled(
            |m| &m.read_fallback,
            "gitlab_redis_multi_store_read_fallback_total",
            &[("command", command), ("reason", reason)],
        );
    }

    /// `command`: `pipelined` or `multi`.
    pub fn pipelined_diff(&self, command: &str) {
        self.inc_labelled(
            |m| &m.pipelined_diff,
            "gitlab_redis_multi_store_pipelined_diff_error_total",
            &[("command", command)],
        );
    }

    /// Counts one on the series of `instance_name` and `labels` (in the counter's label order).
    fn inc_labelled(
        &self,
        counter: impl FnOnce(&Metrics) -> &IntCounterVec,
        name: &'static str,
        labels: &[(&'static str, &str)],
    ) {
        if let Some(m) = global() {
            let mut values = vec![self.instance_name.as_str()];
            values.extend(labels.iter().map(|(_, value)| *value));
            counter(m).with_label_values(&values).inc();
        }
        record(
            name,
            || {
                let mut all = vec![("instance_name", self.instance_name.clone())];
                all.extend(labels.iter().map(|(k, v)| (*k, v.to_string())));
                all
            },
            1.0,
        );
    }

    pub fn non_default_write_failure(&self) {
        self.inc(
            &self.non_default_write_failures,
            "gitlab_redis_multi_store_non_default_write_failures_total",
            None,
        );
    }

    pub fn journal_size(&self, keys: usize) {
        if let Some(m) = global() {
            m.journal_keys
                .with_label_values(&[&self.instance_name])
                .set(keys as i64);
        }
    }

    pub fn resynced(&self, keys: u64) {
        if let Some(m) = global() {
            m.resynced
                .with_label_values(&[&self.instance_name])
                .inc_by(keys);
        }
    }

    pub fn journal_overflow(&self, keys: u64) {
        if let Some(m) = global() {
            m.journal_overflows
                .with_label_values(&[&self.instance_name])
                .inc_by(keys);
        }
    }

    pub fn breaker_opened(&self, role: Role) {
        if let Some(m) = global() {
            m.breaker_opened
                .with_label_values(&[&self.instance_name, role.name()])
                .inc();
        }
    }

    pub fn breaker_skipped(&self) {
        if let Some(m) = global() {
            m.breaker_skipped
                .with_label_values(&[&self.instance_name])
                .inc();
        }
    }

    pub fn store_reset(&self, role: Role) {
        if let Some(m) = global() {
            m.store_resets
                .with_label_values(&[&self.instance_name, role.name()])
                .inc();
        }
    }

    /// Unknown commands are rare by nature, so their label is resolved when they happen.
    pub fn method_missing(&self, command: &str) {
        if let Some(m) = global() {
            m.method_missing
                .with_label_values(&[&self.instance_name, command])
                .inc();
        }
        record(
            "gitlab_redis_multi_store_method_missing_total",
            || {
                vec![
                    ("instance_name", self.instance_name.clone()),
                    ("command", command.to_string()),
                ]
            },
            1.0,
        );
    }

    fn inc(
        &self,
        counter: &Option<IntCounter>,
        name: &'static str,
        extra: Option<(&'static str, &str)>,
    ) {
        if let Some(counter) = counter {
            counter.inc();
        }
        record(
            name,
            || {
                let mut labels = vec![("instance_name", self.instance_name.clone())];
                labels.extend(extra.map(|(k, v)| (k, v.to_string())));
                labels
            },
            1.0,
        );
    }
}
