//! The agent's side of alerting: feeds the detectors, limits reports per
//! caller, hands notifications to the sinks, and evaluates the timed
//! signals (expiry, resolution, repeats) on a tick.
//!
//! Invariants: nothing here awaits a sink. A report's evaluation runs under
//! one short mutex and ends in [`Dispatcher::send`], which only queues; a
//! slow, down or hanging sink costs the fetch path nothing. Over-limit
//! reports are refused, counted per uid (metrics), and summed up in the log
//! and the audit every [`DROP_SUMMARY_EVERY`].
//!
//! The open alerts outlive the process: they are saved before any
//! notification is queued, and taken back at start (see
//! [`super::alert_state`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use super::alert_state::AlertFile;
use super::Agent;
use crate::alerts::detect::{Detectors, Now, Report, Subject};
use crate::alerts::sinks::Dispatcher;
use crate::alerts::{Alert, AlertsConfig, Severity};
use crate::audit::{AuditError, AuditEvent, AuditObserver};
use crate::audit::{Event, Outcome};
use crate::config::Config;
use crate::keyset::KeySetState;
use crate::metrics::Metrics;

/// How often dropped-report counts are written to the log and the audit.
pub const DROP_SUMMARY_EVERY: Duration = Duration::from_secs(10);
/// How long queued notifications get to be delivered when the agent stops
/// or the sinks are replaced.
pub const SINK_DRAIN_GRACE: Duration = Duration::from_secs(5);

/// A token bucket per caller uid.
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The alerting state the services share.
pub struct Alerting {
    detectors: Mutex<Detectors>,
    dispatcher: Mutex<Option<Dispatcher>>,
    buckets: Mutex<HashMap<u32, Bucket>>,
    /// Over-limit reports per uid since the last summary.
    dropped: Mutex<HashMap<u32, u64>>,
    /// The `[alerts]` settings in force (replaced on reload).
    settings: Mutex<Arc<AlertsConfig>>,
    /// The counters behind the metrics listener.
    pub metrics: Arc<Metrics>,
    /// Where the open alerts are saved (set by [`Alerting::adopt_saved`]).
    file: OnceLock<AlertFile>,
    /// Why the saved alerts could not be taken back, raised as an
    /// agent-health alert once the sinks run.
    load_problem: Mutex<Option<String>>,
}

/// The current time on both clocks, for the detectors.
fn now() -> Now {
    Now {
        wall: SystemTime::now(),
        mono: Instant::now(),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Alerting {
    /// No sinks yet ([`Alerting::start_sinks`] starts them inside the
    /// runtime).
    pub fn new(config: &AlertsConfig, metrics: Arc<Metrics>) -> Alerting {
        Alerting {
            detectors: Mutex::new(Detectors::new(config.agent_host.clone(), Instant::now())),
            dispatcher: Mutex::new(None),
            buckets: Mutex::new(HashMap::new()),
            dropped: Mutex::new(HashMap::new()),
            settings: Mutex::new(Arc::new(config.clone())),
            metrics,
            file: OnceLock::new(),
            load_problem: Mutex::new(None),
        }
    }

    /// Takes back the alerts open when the agent last stopped (saved in
    /// `state_dir`), and saves them there from now on. Call once, before
    /// the first evaluation: an adopted alert is not sent again as new,
    /// and what cleared while the agent was down resolves at the first
    /// tick.
    pub fn adopt_saved(&self, state_dir: &std::path::Path) {
        let file = AlertFile::new(state_dir);
        match file.load() {
            Ok(None) => {}
            Ok(Some(saved)) => {
                let window = lock(&self.settings).detect.window;
                let (adopted, dropped) = lock(&self.detectors).adopt(saved, now(), window);
                if adopted > 0 {
                    tracing::info!(alerts = adopted, path = ?file.path(), "open alerts taken back from before the restart");
                }
                for d in dropped {
                    tracing::warn!(alert = %d, "a saved alert was not taken back");
                }
            }
            Err(problem) => {
                tracing::warn!("{problem}");
                *lock(&self.load_problem) = Some(problem);
            }
        }
        let _ = self.file.set(file);
    }

    /// Saves the open alerts (see [`super::alert_state`]).
    fn save(&self) {
        if let Some(file) = self.file.get() {
            file.save(|| lock(&self.detectors).snapshot(now()));
        }
    }

    /// Starts the configured sinks (replacing, and draining in the
    /// background, any running ones). Needs a tokio runtime.
    pub fn start_sinks(&self, config: &AlertsConfig) {
        *lock(&self.settings) = Arc::new(config.clone());
        let names: Vec<String> = config
            .sinks
            .iter()
            .map(|s| format!("{} ({})", s.name, s.kind.as_str()))
            .collect();
        let new = Dispatcher::start(config.sinks.clone());
        let old = lock(&self.dispatcher).replace(new);
        tracing::info!(sinks = %names.join(", "), "alert sinks ready");
        if let Some(old) = old {
            tokio::spawn(old.close(SINK_DRAIN_GRACE));
        }
        let problem = lock(&self.load_problem).take();
        if let Some(problem) = problem {
            self.health(Subject::Agent("alert_state"), Severity::Warning, problem);
        }
    }

    /// Stops the sinks, giving queued notifications a few seconds.
    pub async fn stop_sinks(&self) {
        // The last word on when each open signal was active.
        self.save();
        let old = lock(&self.dispatcher).take();
        if let Some(old) = old {
            old.close(SINK_DRAIN_GRACE).await;
        }
    }

    /// Delivery counters of the running sinks.
    pub fn sink_stats(&self) -> Vec<crate::alerts::SinkStats> {
        lock(&self.dispatcher)
            .as_ref()
            .map(Dispatcher::stats)
            .unwrap_or_default()
    }

    /// The open alerts, (signal, severity) each.
    pub fn open_alerts(&self) -> Vec<(crate::alerts::Signal, Severity)> {
        lock(&self.detectors).open_alerts()
    }

    /// The open alerts, as last sent, oldest first.
    pub fn open_alert_list(&self) -> Vec<Alert> {
        lock(&self.detectors).open_alert_list()
    }

    /// Takes one report token for `uid`; `false` (and counted) when the uid
    /// is over `[alerts] report_rate` / `report_burst`.
    pub fn admit_report(&self, uid: u32) -> bool {
        let settings = lock(&self.settings).clone();
        let (rate, burst) = (f64::from(settings.report_rate), f64::from(settings.report_burst));
        let now = Instant::now();
        let admitted = {
            let mut buckets = lock(&self.buckets);
            let b = buckets.entry(uid).or_insert(Bucket { tokens: burst, at: now });
            b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst);
            b.at = now;
            if b.tokens >= 1.0 {
                b.tokens -= 1.0;
                true
            } else {
                false
            }
        };
        if !admitted {
            *lock(&self.dropped).entry(uid).or_default() += 1;
            self.metrics.report_dropped(uid);
        }
        admitted
    }

    /// Feeds one accepted report to the detectors and sends what it opens.
    pub fn on_report(&self, config: &Config, state: &KeySetState, report: Report) {
        let settings = config.detect_for(&state.key);
        // The report's arrival (monotonic) is the evaluation's time.
        let now = Now {
            wall: SystemTime::now(),
            mono: report.at,
        };
        let alerts = {
            let mut d = lock(&self.detectors);
            d.report(&state.key, report, &settings);
            d.evaluate(
                now,
                [(state, settings)],
                false,
                config.alerts.repeat_interval,
                config.alerts.detect.window,
            )
        };
        self.dispatch(alerts);
    }

    /// The agent failed at something of its own (`subject`): opens or
    /// refreshes an agent-health alert.
    pub fn health(&self, subject: Subject, severity: Severity, message: String) {
        let settings = lock(&self.settings).clone();
        let now = now();
        let alerts = {
            let mut d = lock(&self.detectors);
            d.health(subject, now, severity, message);
            d.evaluate(
                now,
                std::iter::empty(),
                false,
                settings.repeat_interval,
                settings.detect.window,
            )
        };
        self.dispatch(alerts);
    }

    /// A rotation job's condition about `key` (`no_evidence`,
    /// `rotation_failed`) holds: its alert opens now, or is refreshed.
    pub fn set_condition(
        &self,
        key: &crate::secret::KeyRef,
        signal: crate::alerts::Signal,
        severity: Severity,
        summary: String,
        details: std::collections::BTreeMap<String, String>,
    ) {
        let settings = lock(&self.settings).clone();
        let subject = Subject::Key(key.clone());
        let now = now();
        let alerts = {
            let mut d = lock(&self.detectors);
            let unchanged = d.has_condition(&subject, signal, severity, &summary);
            d.set_condition(subject, signal, severity, summary, details);
            if unchanged {
                return;
            }
            d.evaluate_conditions(now, key, settings.repeat_interval)
        };
        self.dispatch(alerts);
    }

    /// The condition is over: its alert resolves at the next tick.
    pub fn clear_condition(&self, key: &crate::secret::KeyRef, signal: crate::alerts::Signal) {
        lock(&self.detectors).clear_condition(&Subject::Key(key.clone()), signal);
    }

    /// The failure about `subject` is over (e.g. the audit disk has room
    /// again): its alert resolves at the next tick.
    pub fn clear_health(&self, subject: &Subject) {
        lock(&self.detectors).clear_health(subject);
    }

    /// Evaluates every key (expiry, max age, repeats, resolutions).
    pub fn tick(&self, agent: &Agent) {
        let config = agent.config();
        let states = agent.store.list(None);
        let now = now();
        let alerts = lock(&self.detectors).evaluate_all(
            now,
            &states,
            |k| config.detect_for(k),
            config.alerts.repeat_interval,
            config.alerts.detect.window,
        );
        let refresh = alerts.is_empty()
            && self.file.get().is_some_and(AlertFile::refresh_due)
            && !lock(&self.detectors).open_alerts().is_empty();
        if refresh {
            self.save();
        }
        self.dispatch(alerts);
        // Buckets that are full again hold nothing worth keeping.
        let burst = f64::from(config.alerts.report_burst);
        let rate = f64::from(config.alerts.report_rate);
        let at = Instant::now();
        lock(&self.buckets).retain(|_, b| b.tokens + at.duration_since(b.at).as_secs_f64() * rate < burst);
    }

    /// Takes the over-limit counts since the last call.
    pub fn take_dropped(&self) -> Vec<(u32, u64)> {
        let mut d = lock(&self.dropped);
        let mut out: Vec<(u32, u64)> = d.drain().collect();
        out.sort_unstable();
        out
    }

    fn dispatch(&self, alerts: Vec<Alert>) {
        if alerts.is_empty() {
            return;
        }
        // Saved first: a restart must know of every alert a sink was told of.
        self.save();
        let dispatcher = lock(&self.dispatcher);
        for alert in alerts {
            self.metrics.alert(alert.signal, alert.status);
            tracing::info!(alert = %alert.dedup_key, status = alert.status.as_str(),
                severity = alert.severity.as_str(), "alert {}", alert.status.as_str());
            if let Some(d) = dispatcher.as_ref() {
                d.send(Arc::new(alert));
            }
        }
    }
}

/// Told of every audit record: latency to the metrics, failures to the
/// agent-health detector.
pub struct AuditWatch(pub Arc<Alerting>);

impl AuditObserver for AuditWatch {
    fn written(&self, latency: Duration) {
        self.0.metrics.audit_write(latency);
    }

    fn failed(&self, error: &AuditError) {
        self.0.metrics.audit_failure();
        self.0.health(
            Subject::Agent("audit"),
            Severity::Critical,
            format!("an audit record could not be written ({error}): fail-closed environments are refusing fetches; check the audit disk"),
        );
    }
}

/// Runs [`Alerting::tick`] (after checking the audit disk's free space,
/// see [`super::audit_disk`]) until `stop`, and writes the over-limit
/// summary.
pub async fn run_ticks(agent: Arc<Agent>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut last_summary = Instant::now();
    loop {
        let window = agent.config().alerts.detect.window;
        let tick = (window / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        agent.audit_disk.check(&agent);
        agent.alerting.tick(&agent);
        if last_summary.elapsed() >= DROP_SUMMARY_EVERY {
            last_summary = Instant::now();
            let rate = agent.config().alerts.report_rate;
            for (uid, n) in agent.alerting.take_dropped() {
                let detail = format!(
                    "uid {uid}: {n} auth-failure reports over the limit of {rate}/s refused in the last {}s",
                    DROP_SUMMARY_EVERY.as_secs()
                );
                tracing::warn!("{detail}: fix the client's retry loop, or raise [alerts] report_rate");
                let _ = agent
                    .audit
                    .record(AuditEvent {
                        detail: Some(detail),
                        ..AuditEvent::new(Event::AuthFailureDropped, Outcome::Dropped)
                    })
                    .await;
            }
        }
    }
}
