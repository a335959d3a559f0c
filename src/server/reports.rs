//! Auth-failure reports from clients (`ReportAuthFailure`): checked against
//! the policy, classified against the key's state, audited and counted.
//!
//! The counts feed the retire gate and `keyward rotate`'s automatic
//! rollback: a failure reported against the current primary since its
//! promotion keeps the old key from being retired. Every accepted report
//! also feeds the alert detectors ([`super::alerting`]). Reports are
//! limited per caller uid (`[alerts] report_rate`, `report_burst`) before
//! anything else, so that a client stuck in a retry loop can neither flood
//! the audit log nor the detectors; refused ones are counted.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use super::error::ApiError;
use super::peer::Caller;
use super::Agent;
use crate::alerts::detect::Report;
use crate::audit::{AuditEvent, VersionRecord};
use crate::keyset::KeySetState;
use crate::proto;
use crate::secret::KeyRef;

/// How many report times are kept per (key, version): enough for the gate,
/// bounded so that a flood cannot grow memory.
const KEPT_PER_VERSION: usize = 4096;

/// Longest `service` or `detail` text kept from a report.
const MAX_TEXT: usize = 256;

pub use crate::alerts::detect::Classification;

/// Report times per (key, version), and when this process promoted each
/// version.
///
/// The times are monotonic (`Instant`), never the wall clock: "reported
/// since the promotion" must not depend on a clock that can jump. After a
/// jump back (NTP, a resumed VM) a failure reported after the promotion
/// would carry an earlier wall time than the promotion's and be missed, and
/// the retire gate would open on a new key that is being refused.
#[derive(Default)]
pub struct FailureLog {
    times: Mutex<HashMap<(KeyRef, u64), VecDeque<Instant>>>,
    promotions: Mutex<HashMap<(KeyRef, u64), Instant>>,
}

impl FailureLog {
    /// Records one report.
    pub fn record(&self, key: &KeyRef, version: u64, at: Instant) {
        let mut map = self.times.lock().unwrap_or_else(PoisonError::into_inner);
        let times = map.entry((key.clone(), version)).or_default();
        if times.len() == KEPT_PER_VERSION {
            times.pop_front();
        }
        times.push_back(at);
    }

    /// Notes that this process promoted `version` of `key` at `at`.
    pub fn promoted(&self, key: &KeyRef, version: u64, at: Instant) {
        self.promotions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((key.clone(), version), at);
    }

    /// How long ago this process promoted the current primary of `state`
    /// (`None` if it did not: promoted before the process started).
    pub fn promoted_ago(&self, state: &KeySetState) -> Option<std::time::Duration> {
        state.primary.promoted_at?;
        self.promotions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(state.key.clone(), state.primary.number))
            .map(Instant::elapsed)
    }

    /// Reports against `version` of `key` at or after `since` (all of them
    /// without `since`).
    pub fn count_since(&self, key: &KeyRef, version: u64, since: Option<Instant>) -> u64 {
        let map = self.times.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(&(key.clone(), version)).map_or(0, |t| {
            t.iter().filter(|&&at| since.is_none_or(|s| at >= s)).count() as u64
        })
    }

    /// Reports against the current primary and fallback since the primary
    /// was promoted (or created, for a key never rotated). The log only
    /// holds this process's reports: if the promotion happened before it
    /// started, every one of them came after.
    pub fn since_promotion(&self, state: &KeySetState) -> (u64, u64) {
        let since = state.primary.promoted_at.and_then(|_| {
            self.promotions
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&(state.key.clone(), state.primary.number))
                .copied()
        });
        let primary = self.count_since(&state.key, state.primary.number, since);
        let fallback = state
            .fallback
            .as_ref()
            .map_or(0, |f| self.count_since(&state.key, f.number, since));
        (primary, fallback)
    }
}

fn bounded(s: &str) -> String {
    let mut end = s.len().min(MAX_TEXT);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].chars().filter(|c| !c.is_control()).collect()
}

/// Handles one report.
pub async fn report(agent: &Arc<Agent>, caller: &Caller, r: &proto::AuthFailureReport) -> Result<(), ApiError> {
    if let Some(limit) = &caller.over_limit {
        return Err(ApiError::ResourceExhausted(limit.clone()));
    }
    if !agent.alerting.admit_report(caller.uid) {
        let config = agent.config();
        return Err(ApiError::ResourceExhausted(format!(
            "uid {} sent more than {} auth-failure reports per second (burst {}): this one was counted but not processed; report each failed request once, or raise [alerts] report_rate",
            caller.uid, config.alerts.report_rate, config.alerts.report_burst
        )));
    }
    let key = agent.key_ref(r.key.as_ref())?;
    agent.check_read("auth_failure", caller, &key).await?;
    let Some(state) = agent.store.get(&key) else {
        return Err(ApiError::NotFound(format!("key {key} does not exist")));
    };
    let class = Classification::of(&state, r.version);
    let fingerprint = [Some(&state.primary), state.fallback.as_ref()]
        .into_iter()
        .flatten()
        .find(|v| v.number == r.version)
        .map(|v| v.fingerprint.clone())
        .unwrap_or_default();
    let now = Instant::now();
    agent.failures.record(&key, r.version, now);
    agent.metrics().report(key.env(), key.name(), class.as_str());
    agent.alerting.on_report(
        &agent.config(),
        &state,
        Report {
            at: now,
            class,
            version: r.version,
            status_code: r.status_code,
            caller: caller.describe(),
            service: bounded(&r.service),
        },
    );
    let detail = format!(
        "status {} on {} version {} from service {:?}: {}",
        r.status_code,
        class.as_str(),
        r.version,
        bounded(&r.service),
        bounded(&r.detail)
    );
    tracing::debug!(key = %key, version = r.version, class = class.as_str(), status = r.status_code,
        caller = %caller.describe(), "auth failure reported");
    agent
        .audit
        .record(AuditEvent {
            event: "auth_failure",
            caller: Some(caller.record.clone()),
            key: Some(key.to_string()),
            versions: vec![VersionRecord {
                role: class.as_str(),
                version: r.version,
                fingerprint,
            }],
            generation_after: Some(state.generation),
            outcome: "reported",
            detail: Some(detail),
            ..Default::default()
        })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyset::Version;
    use crate::secret::Secret;
    use std::time::{Duration, SystemTime};

    fn state() -> KeySetState {
        let v = |n| Version {
            number: n,
            secret: Secret::copy_from(b"s"),
            fingerprint: String::new(),
            created_at: SystemTime::UNIX_EPOCH,
            expires_at: None,
            promoted_at: None,
        };
        let mut s = KeySetState::create("prod/a".parse().unwrap(), v(3));
        s.primary.promoted_at = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(100));
        s.fallback = Some(v(2));
        s.state = crate::keyset::RotationState::Promoted;
        s.history.push(v(1).meta());
        s
    }

    #[test]
    fn counts_only_reports_since_promotion() {
        let s = state();
        let log = FailureLog::default();
        let t0 = Instant::now();
        log.record(&s.key, 3, t0);
        log.promoted(&s.key, 3, t0 + Duration::from_secs(100));
        log.record(&s.key, 3, t0 + Duration::from_secs(150));
        log.record(&s.key, 2, t0 + Duration::from_secs(160));
        assert_eq!(log.since_promotion(&s), (1, 1));
    }

    #[test]
    fn a_promotion_before_this_process_counts_every_report() {
        let s = state();
        let log = FailureLog::default();
        log.record(&s.key, 3, Instant::now());
        log.record(&s.key, 3, Instant::now());
        log.record(&s.key, 1, Instant::now());
        assert_eq!(log.since_promotion(&s), (2, 0));
    }

    #[test]
    fn report_text_is_bounded_and_printable() {
        let long = "x".repeat(1000) + "\n\u{1b}[31m";
        let b = bounded(&long);
        assert!(b.len() <= MAX_TEXT);
        assert!(!bounded("a\nb\u{1b}c").contains('\n'));
    }
}
