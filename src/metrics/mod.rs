//! Prometheus metrics of the agent: counters kept as events happen, gauges
//! read from the agent's state at scrape time, and the HTTP endpoint that
//! serves them ([`http`]).
//!
//! - [`Metrics`] holds the counters and the histogram. Recording is cheap
//!   enough for the fetch path: label values are `&'static str` or small
//!   `Copy` values, and a fetch of a key already seen allocates nothing
//!   (`keyed`).
//! - [`Snapshot`] is what the agent reads from its state for each scrape
//!   (`snapshot`); [`Metrics::render`] encodes the counters and the
//!   snapshot together, in the Prometheus text format 0.0.4
//!   ([`CONTENT_TYPE`]).
//! - [`http`]: the listener (`127.0.0.1:9464` or `unix:/path`) and
//!   [`http::serve`].
//!
//! Nothing here ever holds a secret: labels are environment, key, sink and
//! signal names, and values are counts, times and generations.
//!
//! # Metrics
//!
//! Counters, counted as events happen:
//!
//! | name | labels | what |
//! |---|---|---|
//! | `keyward_fetches_total` | `environment`, `key`, `outcome` | `GetKey` calls; `outcome` is one of [`FETCH_OUTCOMES`] |
//! | `keyward_denials_total` | `socket`, `event` | refused calls; `socket` is `service` or `admin`, `event` what was refused (`get_key`, `watch_keys`, `auth_failure`, …) |
//! | `keyward_auth_failure_reports_total` | `environment`, `key`, `class` | accepted `ReportAuthFailure` reports; `class` is one of [`REPORT_CLASSES`] |
//! | `keyward_auth_failure_reports_dropped_total` | `uid` | reports refused by the per-caller rate limit |
//! | `keyward_alert_notifications_total` | `signal`, `status` | alert notifications made; `status` is `firing`, `repeat` or `resolved` |
//! | `keyward_rotation_steps_total` | `step`, `result` | rotation steps; `step` is one of [`ROTATION_STEPS`], `result` one of [`ROTATION_RESULTS`] |
//! | `keyward_rotations_total` | `result`, `trigger` | rotation jobs ended; `result` is `ok`, `rolled_back`, `cancelled` or `failed`, `trigger` `manual` or `schedule` |
//! | `keyward_key_use_reports_total` | `environment`, `key`, `class` | accepted `ReportKeyUse` reports; `class` as for failure reports |
//! | `keyward_audit_write_failures_total` | — | audit records that could not be written |
//!
//! A histogram: `keyward_audit_write_seconds` (`_bucket{le}`, `_sum`,
//! `_count`), the latency of audit writes, in exponential buckets from 10 µs
//! to 1.3 s.
//!
//! Read from the [`Snapshot`] at each scrape:
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `keyward_watchers` | gauge | — | live `WatchKeys` subscribers |
//! | `keyward_connections` | gauge | — | open connections |
//! | `keyward_alerts_open` | gauge | `signal`, `severity` | open alerts |
//! | `keyward_alert_deliveries_total` | counter | `sink`, `kind`, `result` | notifications `delivered`, `failed` (after every retry) or `dropped` (queue full) |
//! | `keyward_alert_delivery_retries_total` | counter | `sink`, `kind` | failed attempts that were retried |
//! | `keyward_alert_queue` | gauge | `sink`, `kind` | notifications waiting |
//! | `keyward_key_age_seconds` | gauge | `environment`, `key` | seconds since the primary was promoted (or created) |
//! | `keyward_key_expires_in_seconds` | gauge | `environment`, `key` | seconds until the primary expires, negative once expired; only keys with an expiry |
//! | `keyward_key_generation` | gauge | `environment`, `key` | the key's generation |
//! | `keyward_rotation_job_step` | gauge | `environment`, `key` | the step of the key's running rotation job: 1 stage, 2 propagate, 3 promote, 4 grace, 5 evidence, 6 retire; 0 when none runs |
//! | `keyward_audit_disk_free_bytes` | gauge | — | free bytes on the audit log's filesystem at the agent's last check (each tick); see `[audit] min_free` |
//!
//! The sinks' counters are owned by the alert dispatcher ([`SinkStats`]);
//! they are exposed as counters whose value is read from it, so they start
//! at 0 with the agent like every other counter here.
//!
//! Constant: `keyward_agent_start_time_seconds` (gauge, Unix time at which
//! [`Metrics`] was created, i.e. the agent started) and
//! `keyward_build_info{version}` (gauge, always 1).
//!
//! A family with no samples yet (no denial so far, no key with an expiry)
//! is left out entirely, HELP and TYPE included. The alert notification
//! and rotation counters are created at 0 for every signal × status and
//! step × result, so that `increase()` sees their first event.
//!
//! # Cardinality
//!
//! Every label value is a name the agent knows, never a string a caller
//! made up: the caller of [`Metrics::fetch`] and [`Metrics::report`] passes
//! `key = ""` for a key that does not exist (and `environment = ""` for an
//! environment that is not configured), so that requests for random names
//! cannot create series. As a backstop, beyond 10 000 label sets per family
//! new ones are counted under `environment="", key=""`. Per-key gauges
//! exist only for the keys in the snapshot, and vanish with them.
//!
//! [`SinkStats`]: crate::alerts::SinkStats

pub mod http;
mod keyed;
mod listen;
mod snapshot;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::{prometheus_text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::alerts::{AlertStatus, Signal};
use keyed::KeyedCounters;
pub use snapshot::{BackendGauges, KeyGauges, Snapshot};

/// The `Content-Type` of [`Metrics::render`]'s output: the Prometheus text
/// format, version 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// The `outcome` values of `keyward_fetches_total`.
pub const FETCH_OUTCOMES: [&str; 6] = ["ok", "denied", "not_found", "invalid", "unavailable", "over_limit"];

/// The `class` values of `keyward_auth_failure_reports_total`: what the
/// reported version is to the key.
pub const REPORT_CLASSES: [&str; 4] = ["primary", "fallback", "stale", "unknown"];

/// The `step` values of `keyward_rotations_total`.
pub const ROTATION_STEPS: [&str; 6] = ["stage", "promote", "rollback", "abort", "retire", "rotate"];

/// The `result` values of `keyward_rotation_steps_total`.
pub const ROTATION_RESULTS: [&str; 3] = ["ok", "refused", "failed"];

const ALERT_STATUSES: [AlertStatus; 3] = [AlertStatus::Firing, AlertStatus::Repeat, AlertStatus::Resolved];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DenialLabels {
    socket: &'static str,
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DroppedLabels {
    uid: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlertLabels {
    signal: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RotationLabels {
    step: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    result: &'static str,
    trigger: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// The agent's counters. Shared by reference (`Arc<Metrics>`); every
/// method takes `&self` and is safe to call from any task.
#[derive(Debug)]
pub struct Metrics {
    /// Everything counted as it happens, plus the constant gauges.
    registry: Registry,
    fetches: Arc<KeyedCounters>,
    reports: Arc<KeyedCounters>,
    uses: Arc<KeyedCounters>,
    denials: Family<DenialLabels, Counter>,
    reports_dropped: Family<DroppedLabels, Counter>,
    alerts: Family<AlertLabels, Counter>,
    rotations: Family<RotationLabels, Counter>,
    jobs: Family<JobLabels, Counter>,
    audit_write: Histogram,
    audit_failures: Counter,
    anchors: Family<AnchorLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AnchorLabels {
    anchor: String,
    result: &'static str,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// All counters at 0; the start time is now.
    pub fn new() -> Metrics {
        let fetches = Arc::new(KeyedCounters::new(
            "keyward_fetches",
            "GetKey calls, by key and outcome.",
            "outcome",
        ));
        let reports = Arc::new(KeyedCounters::new(
            "keyward_auth_failure_reports",
            "Auth-failure reports accepted, by key and what the reported version is to the key.",
            "class",
        ));
        let uses = Arc::new(KeyedCounters::new(
            "keyward_key_use_reports",
            "Key-use reports accepted, by key and what the reported version is to the key.",
            "class",
        ));
        let metrics = Metrics {
            registry: Registry::default(),
            fetches,
            reports,
            uses,
            denials: Family::default(),
            reports_dropped: Family::default(),
            alerts: Family::default(),
            rotations: Family::default(),
            jobs: Family::default(),
            audit_write: Histogram::new(exponential_buckets(0.000_01, 2.0, 18)),
            audit_failures: Counter::default(),
            anchors: Family::default(),
        };
        for signal in Signal::ALL {
            for status in ALERT_STATUSES {
                let _ = metrics.alerts.get_or_create(&alert_labels(signal, status));
            }
        }
        // The denials a dashboard shows first, at 0 until one happens.
        for (socket, event) in [("service", "fetch"), ("admin", "admin")] {
            let _ = metrics.denials.get_or_create(&DenialLabels { socket, event });
        }
        for step in ROTATION_STEPS {
            for result in ROTATION_RESULTS {
                let _ = metrics.rotations.get_or_create(&RotationLabels { step, result });
            }
        }
        for result in crate::rotation::plan::JobResult::ALL {
            for trigger in [
                crate::rotation::plan::Trigger::Manual,
                crate::rotation::plan::Trigger::Schedule,
            ] {
                let _ = metrics.jobs.get_or_create(&JobLabels {
                    result: result.as_str(),
                    trigger: trigger.as_str(),
                });
            }
        }
        metrics.register()
    }

    fn register(mut self) -> Metrics {
        let started = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let r = &mut self.registry;
        r.register(
            "keyward_agent_start_time_seconds",
            "Unix time at which the agent started",
            ConstGauge::new(started.as_secs_f64()),
        );
        r.register(
            "keyward_build",
            "The agent's version; always 1",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        r.register(
            "keyward_denials",
            "Refused calls, by socket and what was refused",
            self.denials.clone(),
        );
        r.register(
            "keyward_auth_failure_reports_dropped",
            "Auth-failure reports refused by the per-caller rate limit, by caller uid",
            self.reports_dropped.clone(),
        );
        r.register(
            "keyward_alert_notifications",
            "Alert notifications made, by signal and status",
            self.alerts.clone(),
        );
        r.register(
            "keyward_rotation_steps",
            "Rotation steps, by step and result",
            self.rotations.clone(),
        );
        r.register(
            "keyward_rotations",
            "Rotation jobs ended, by result and what started them",
            self.jobs.clone(),
        );
        r.register(
            "keyward_audit_write_seconds",
            "Latency of audit record writes",
            self.audit_write.clone(),
        );
        r.register(
            "keyward_audit_write_failures",
            "Audit records that could not be written",
            self.audit_failures.clone(),
        );
        r.register(
            "keyward_audit_anchor_publications",
            "Publications of the audit chain head to [[audit.anchor]], by anchor and result (ok, failed)",
            self.anchors.clone(),
        );
        r.register_collector(Box::new(self.fetches.clone()));
        r.register_collector(Box::new(self.reports.clone()));
        r.register_collector(Box::new(self.uses.clone()));
        self
    }

    /// Sets the publication counters of `anchors` at 0 (so dashboards see
    /// them before the first publication).
    pub fn anchors_configured<'a>(&self, anchors: impl IntoIterator<Item = &'a str>) {
        for anchor in anchors {
            for result in ["ok", "failed"] {
                let _ = self.anchors.get_or_create(&AnchorLabels {
                    anchor: anchor.to_owned(),
                    result,
                });
            }
        }
    }

    /// Counts a publication of the chain head to `anchor`.
    pub fn anchor_published(&self, anchor: &str, ok: bool) {
        self.anchors
            .get_or_create(&AnchorLabels {
                anchor: anchor.to_owned(),
                result: if ok { "ok" } else { "failed" },
            })
            .inc();
    }

    /// Counts a `GetKey` call. `outcome` is one of [`FETCH_OUTCOMES`];
    /// `key` is `""` unless the key exists (see the cardinality rule).
    pub fn fetch(&self, environment: &str, key: &str, outcome: &'static str) {
        debug_assert!(FETCH_OUTCOMES.contains(&outcome), "unknown fetch outcome {outcome}");
        self.fetches.inc(environment, key, outcome);
    }

    /// Counts a refused call: `socket` is `service` or `admin`, `event`
    /// what was refused (`get_key`, `watch_keys`, `auth_failure`, …).
    pub fn denial(&self, socket: &'static str, event: &'static str) {
        debug_assert!(matches!(socket, "service" | "admin"), "unknown socket {socket}");
        self.denials.get_or_create(&DenialLabels { socket, event }).inc();
    }

    /// Counts an accepted auth-failure report. `class` is one of
    /// [`REPORT_CLASSES`]; `key` is `""` unless the key exists.
    pub fn report(&self, environment: &str, key: &str, class: &'static str) {
        debug_assert!(REPORT_CLASSES.contains(&class), "unknown report class {class}");
        self.reports.inc(environment, key, class);
    }

    /// Counts an accepted key-use report (`class` as for
    /// [`Metrics::report`]).
    pub fn key_use(&self, environment: &str, key: &str, class: &'static str) {
        self.uses.inc(environment, key, class);
    }

    /// Counts a rotation job that ended.
    pub fn rotation_job(&self, result: crate::rotation::plan::JobResult, trigger: crate::rotation::plan::Trigger) {
        self.jobs
            .get_or_create(&JobLabels {
                result: result.as_str(),
                trigger: trigger.as_str(),
            })
            .inc();
    }

    /// Counts a report refused by the per-caller rate limit.
    pub fn report_dropped(&self, uid: u32) {
        self.reports_dropped.get_or_create(&DroppedLabels { uid }).inc();
    }

    /// Counts an alert notification.
    pub fn alert(&self, signal: Signal, status: AlertStatus) {
        self.alerts.get_or_create(&alert_labels(signal, status)).inc();
    }

    /// Counts a rotation step: `step` one of [`ROTATION_STEPS`], `result`
    /// one of [`ROTATION_RESULTS`].
    pub fn rotation(&self, step: &'static str, result: &'static str) {
        debug_assert!(ROTATION_STEPS.contains(&step), "unknown rotation step {step}");
        debug_assert!(ROTATION_RESULTS.contains(&result), "unknown rotation result {result}");
        self.rotations.get_or_create(&RotationLabels { step, result }).inc();
    }

    /// Records how long an audit write took.
    pub fn audit_write(&self, latency: Duration) {
        self.audit_write.observe(latency.as_secs_f64());
    }

    /// Counts an audit write that failed.
    pub fn audit_failure(&self) {
        self.audit_failures.inc();
    }

    /// The whole exposition: counters plus the gauges of `snapshot`.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        // Every key served has its counters from the start, at 0: a
        // dashboard's rate over a series that does not exist yet shows "No
        // data" after each restart.
        for k in &snapshot.keys {
            self.fetches.touch(&k.environment, &k.key, "ok");
            self.reports.touch(&k.environment, &k.key, "primary");
            self.uses.touch(&k.environment, &k.key, "primary");
        }
        // The snapshot's metrics go through a registry of their own, made
        // for this scrape only, so nothing of an earlier snapshot survives.
        let mut scrape = Registry::default();
        scrape.register_collector(Box::new(snapshot::SnapshotCollector(snapshot.clone())));
        let mut out = String::with_capacity(8 * 1024);
        let encoded =
            prometheus_text::encode(&mut out, &self.registry).and_then(|()| prometheus_text::encode(&mut out, &scrape));
        if encoded.is_err() {
            // Writing to a String cannot fail, and our encoders return no
            // errors of their own; should one ever, serve what was encoded.
            tracing::error!("encoding metrics failed; the exposition is incomplete");
        }
        out
    }
}

fn alert_labels(signal: Signal, status: AlertStatus) -> AlertLabels {
    AlertLabels {
        signal: signal.as_str(),
        status: status.as_str(),
    }
}
