//! Prometheus metrics of every MultiStore in the process, in one registry. Operators watch
//! these to decide when to flip the next flag. Label values are resolved once per instance
//! (`InstanceMetrics`), so counting on the hot path is one atomic add.

use prometheus::{Encoder, IntCounter, IntCounterVec, Opts, Registry, TextEncoder};
use std::sync::OnceLock;

pub struct Metrics {
    registry: Registry,
    read_fallback: IntCounterVec,
    method_missing: IntCounterVec,
    pipelined_diff: IntCounterVec,
    non_default_write_failures: IntCounterVec,
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
                &["instance_name", "reason"],
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
                "Pipelines whose results differed between the two stores",
                &["instance_name"],
            )?,
            non_default_write_failures: counter(
                &registry,
                "gitlab_redis_multi_store_non_default_write_failures_total",
                "Writes that failed on the non-default store (reported, not raised)",
                &["instance_name"],
            )?,
            registry,
        })
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

/// One MultiStore's counters, labels resolved up front.
#[derive(Clone, Default)]
pub struct InstanceMetrics {
    instance_name: String,
    read_fallback_miss: Option<IntCounter>,
    read_fallback_error: Option<IntCounter>,
    pipelined_diff: Option<IntCounter>,
    non_default_write_failures: Option<IntCounter>,
}

impl InstanceMetrics {
    pub fn new(instance_name: &str) -> Self {
        let Some(m) = global() else {
            return Self::default();
        };
        InstanceMetrics {
            instance_name: instance_name.to_string(),
            read_fallback_miss: Some(m.read_fallback.with_label_values(&[instance_name, "miss"])),
            read_fallback_error: Some(m.read_fallback.with_label_values(&[instance_name, "error"])),
            pipelined_diff: Some(m.pipelined_diff.with_label_values(&[instance_name])),
            non_default_write_failures: Some(
                m.non_default_write_failures
                    .with_label_values(&[instance_name]),
            ),
        }
    }

    pub fn read_fallback_miss(&self) {
        inc(&self.read_fallback_miss);
    }

    pub fn read_fallback_error(&self) {
        inc(&self.read_fallback_error);
    }

    pub fn pipelined_diff(&self) {
        inc(&self.pipelined_diff);
    }

    pub fn non_default_write_failure(&self) {
        inc(&self.non_default_write_failures);
    }

    /// Unknown commands are rare by nature, so their label is resolved when they happen.
    pub fn method_missing(&self, command: &str) {
        if let Some(m) = global() {
            m.method_missing
                .with_label_values(&[&self.instance_name, command])
                .inc();
        }
    }
}

fn inc(counter: &Option<IntCounter>) {
    if let Some(counter) = counter {
        counter.inc();
    }
}
