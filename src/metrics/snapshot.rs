//! The metrics read from the agent's state at scrape time: live watchers
//! and connections, open alerts, per-key gauges and the alert sinks'
//! delivery counters.
//!
//! Invariant: what is exposed is exactly the [`Snapshot`] passed in, built
//! fresh on every scrape. Nothing is remembered between scrapes, so a key
//! deleted (or a sink removed by a config reload) since the last scrape is
//! simply absent from the next one rather than frozen at its last value.
//! Duplicate entries, which would make Prometheus reject the whole scrape,
//! are merged: open-alert counts are summed, and for a key or a sink listed
//! twice the last entry wins.

use std::collections::BTreeMap;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::alerts::{Severity, Signal, SinkStats};

/// The agent's state at one scrape, for [`super::Metrics::render`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Live `WatchKeys` subscribers (`keyward_watchers`).
    pub watchers: u64,
    /// Open connections on the service and admin sockets
    /// (`keyward_connections`).
    pub connections: u64,
    /// Open alerts by signal and severity (`keyward_alerts_open`). Pairs
    /// left out are not exposed; pass 0 for a pair to expose it as 0.
    pub open_alerts: Vec<(Signal, Severity, u64)>,
    /// One entry per key the agent serves now (`keyward_key_*`).
    pub keys: Vec<KeyGauges>,
    /// Each configured alert sink's counters (`keyward_alert_deliveries_total`,
    /// `keyward_alert_delivery_retries_total`, `keyward_alert_queue`).
    pub sinks: Vec<SinkStats>,
    /// Fleet mode: the backend's health (`keyward_backend_*`); `None` with
    /// the local backend.
    pub backend: Option<BackendGauges>,
    /// Free bytes on the audit log's filesystem at the last check
    /// (`keyward_audit_disk_free_bytes`); `None` before the first.
    pub audit_disk_free_bytes: Option<u64>,
}

/// The shared backend's health, in fleet mode.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendGauges {
    /// The last attempt to sync succeeded.
    pub up: bool,
    /// When the last successful sync ended (unix seconds), if ever.
    pub last_sync_timestamp_seconds: Option<f64>,
    /// Seconds since then (NaN if never).
    pub stale_seconds: f64,
    /// Over `stale_after`.
    pub stale: bool,
    /// Backend records this agent could not apply.
    pub problems: u64,
}

/// The gauges of one key.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyGauges {
    /// The key's environment (`prod`).
    pub environment: String,
    /// The key's name (`billing-api`).
    pub key: String,
    /// Seconds since the primary was promoted (or created, if it never was).
    pub age_seconds: f64,
    /// Seconds until the primary expires, negative once it has; `None` for
    /// a primary without an expiry (then no sample is exposed).
    pub expires_in_seconds: Option<f64>,
    /// The key's generation (bumped on every change).
    pub generation: u64,
    /// The step number of its running rotation job (0: none).
    pub job_step: i64,
}

/// Encodes one [`Snapshot`]; registered in a per-scrape registry.
#[derive(Debug)]
pub(crate) struct SnapshotCollector(pub(crate) Snapshot);

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = &self.0;
        gauge(
            &mut encoder,
            "keyward_watchers",
            "Live WatchKeys subscribers.",
            [(NO_LABELS, snapshot.watchers)],
        )?;
        gauge(
            &mut encoder,
            "keyward_connections",
            "Open connections on the service and admin sockets.",
            [(NO_LABELS, snapshot.connections)],
        )?;

        let mut open = BTreeMap::new();
        for &(signal, severity, count) in &snapshot.open_alerts {
            *open.entry((signal, severity)).or_insert(0) += count;
        }
        gauge(
            &mut encoder,
            "keyward_alerts_open",
            "Open alerts, by signal and severity.",
            open.iter().map(|(&(signal, severity), &count)| {
                ([("signal", signal.as_str()), ("severity", severity.as_str())], count)
            }),
        )?;

        let keys: BTreeMap<_, _> = snapshot
            .keys
            .iter()
            .map(|k| ((k.environment.as_str(), k.key.as_str()), k))
            .collect();
        gauge(
            &mut encoder,
            "keyward_key_age_seconds",
            "Seconds since the key's primary was promoted (or created).",
            keys.iter().map(|(&name, k)| (key_labels(name), k.age_seconds)),
        )?;
        gauge(
            &mut encoder,
            "keyward_key_expires_in_seconds",
            "Seconds until the key's primary expires; negative once expired. Only keys with an expiry.",
            keys.iter()
                .filter_map(|(&name, k)| Some((key_labels(name), k.expires_in_seconds?))),
        )?;
        gauge(
            &mut encoder,
            "keyward_key_generation",
            "The key's generation, bumped on every change.",
            keys.iter().map(|(&name, k)| (key_labels(name), k.generation)),
        )?;
        gauge(
            &mut encoder,
            "keyward_rotation_job_step",
            "The step of the key's running rotation job: 1 stage, 2 propagate, 3 promote, 4 grace, 5 evidence, 6 retire; 0 when none runs.",
            keys.iter().map(|(&name, k)| (key_labels(name), k.job_step)),
        )?;

        let sinks: BTreeMap<_, _> = snapshot.sinks.iter().map(|s| ((s.name.as_str(), s.kind), s)).collect();
        family(
            &mut encoder,
            "keyward_alert_deliveries",
            "Alert notifications by sink and result: delivered, failed after every retry, or dropped on a full queue.",
            MetricType::Counter,
            sinks.iter().flat_map(|(&name, s)| {
                let [sink, kind] = sink_labels(name);
                [("delivered", s.delivered), ("failed", s.failed), ("dropped", s.dropped)]
                    .map(|(result, n)| ([sink, kind, ("result", result)], ConstCounter::new(n)))
            }),
        )?;
        family(
            &mut encoder,
            "keyward_alert_delivery_retries",
            "Alert delivery attempts that failed and were retried, by sink.",
            MetricType::Counter,
            sinks
                .iter()
                .map(|(&name, s)| (sink_labels(name), ConstCounter::new(s.retries))),
        )?;
        gauge(
            &mut encoder,
            "keyward_alert_queue",
            "Alert notifications waiting for delivery, by sink.",
            sinks.iter().map(|(&name, s)| (sink_labels(name), s.queued)),
        )?;
        gauge(
            &mut encoder,
            "keyward_audit_disk_free_bytes",
            "Free bytes on the audit log's filesystem (for an unprivileged writer), at the last check.",
            snapshot.audit_disk_free_bytes.map(|b| (NO_LABELS, b)),
        )?;

        if let Some(b) = &snapshot.backend {
            gauge(
                &mut encoder,
                "keyward_backend_up",
                "1 when the last sync with the fleet's backend (OpenBao) succeeded.",
                [(NO_LABELS, u64::from(b.up))],
            )?;
            gauge(
                &mut encoder,
                "keyward_backend_last_sync_timestamp_seconds",
                "When the last successful sync with the backend ended (unix time).",
                b.last_sync_timestamp_seconds.map(|t| (NO_LABELS, t)),
            )?;
            gauge(
                &mut encoder,
                "keyward_backend_stale_seconds",
                "Seconds since the last successful sync with the backend.",
                (!b.stale_seconds.is_nan()).then_some((NO_LABELS, b.stale_seconds)),
            )?;
            gauge(
                &mut encoder,
                "keyward_backend_stale",
                "1 when the agent has not synced within stale_after: it serves a local copy that may be behind the fleet.",
                [(NO_LABELS, u64::from(b.stale))],
            )?;
            gauge(
                &mut encoder,
                "keyward_backend_problems",
                "Backend records this agent could not apply (see keyward status).",
                [(NO_LABELS, b.problems)],
            )?;
        }
        Ok(())
    }
}

fn key_labels<'a>((environment, key): (&'a str, &'a str)) -> [(&'static str, &'a str); 2] {
    [("environment", environment), ("key", key)]
}

fn sink_labels<'a>((sink, kind): (&'a str, &'static str)) -> [(&'static str, &'a str); 2] {
    [("sink", sink), ("kind", kind)]
}

/// Encodes a gauge family from `(labels, value)` pairs.
fn gauge<L: EncodeLabelSet, V: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, V)>,
) -> Result<(), std::fmt::Error> {
    family(
        encoder,
        name,
        help,
        MetricType::Gauge,
        samples.into_iter().map(|(labels, v)| (labels, ConstGauge::new(v))),
    )
}

/// Encodes one family; nothing at all (not even HELP and TYPE) when it has
/// no samples, as the registry does for an empty `Family`.
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    samples: impl IntoIterator<Item = (L, M)>,
) -> Result<(), std::fmt::Error> {
    let mut samples = samples.into_iter().peekable();
    if samples.peek().is_none() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, value) in samples {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The label set of a gauge without labels (encoded as no braces at all).
const NO_LABELS: [(&str, &str); 0] = [];
