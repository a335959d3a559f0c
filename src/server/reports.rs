//! Auth-failure reports from clients (`ReportAuthFailure`): checked against
//! the policy, classified against the key's state, audited and counted.
//!
//! The counts feed the retire gate and `keyward rotate`'s automatic
//! rollback: a failure reported against the current primary since its
//! promotion keeps the old key from being retired. Alert detectors and
//! sinks build on the same reports.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use super::error::ApiError;
use super::peer::Caller;
use super::Agent;
use crate::audit::{AuditEvent, VersionRecord};
use crate::keyset::KeySetState;
use crate::proto;
use crate::secret::KeyRef;

/// How many report times are kept per (key, version): enough for the gate,
/// bounded so that a flood cannot grow memory.
const KEPT_PER_VERSION: usize = 4096;

/// Longest `service` or `detail` text kept from a report.
const MAX_TEXT: usize = 256;

/// What the reported version is to the key now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Classification {
    /// The current primary.
    Primary,
    /// The current fallback.
    Fallback,
    /// A version the key no longer serves (a client missed a rotation).
    Stale,
    /// A version the key never had.
    Unknown,
}

impl Classification {
    /// For the audit and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Classification::Primary => "primary",
            Classification::Fallback => "fallback",
            Classification::Stale => "stale",
            Classification::Unknown => "unknown",
        }
    }

    /// Classifies `version` against `state`.
    pub fn of(state: &KeySetState, version: u64) -> Classification {
        if state.primary.number == version {
            Classification::Primary
        } else if state.fallback.as_ref().is_some_and(|f| f.number == version) {
            Classification::Fallback
        } else if version != 0 && version <= state.max_version() {
            Classification::Stale
        } else {
            Classification::Unknown
        }
    }
}

/// Report times per (key, version).
#[derive(Default)]
pub struct FailureLog {
    times: Mutex<HashMap<(KeyRef, u64), VecDeque<SystemTime>>>,
}

impl FailureLog {
    /// Records one report.
    pub fn record(&self, key: &KeyRef, version: u64, at: SystemTime) {
        let mut map = self.times.lock().unwrap_or_else(PoisonError::into_inner);
        let times = map.entry((key.clone(), version)).or_default();
        if times.len() == KEPT_PER_VERSION {
            times.pop_front();
        }
        times.push_back(at);
    }

    /// Reports against `version` of `key` at or after `since`.
    pub fn count_since(&self, key: &KeyRef, version: u64, since: SystemTime) -> u64 {
        let map = self.times.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(&(key.clone(), version))
            .map_or(0, |t| t.iter().filter(|&&at| at >= since).count() as u64)
    }

    /// Reports against the current primary and fallback since the primary
    /// was promoted (or created, for a key never rotated).
    pub fn since_promotion(&self, state: &KeySetState) -> (u64, u64) {
        let since = state.primary.promoted_at.unwrap_or(state.primary.created_at);
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
    agent.failures.record(&key, r.version, SystemTime::now());
    let detail = format!(
        "status {} on {} version {} from service {:?}: {}",
        r.status_code,
        class.as_str(),
        r.version,
        bounded(&r.service),
        bounded(&r.detail)
    );
    tracing::warn!(key = %key, version = r.version, class = class.as_str(), status = r.status_code,
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
    use std::time::Duration;

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
    fn classification_table() {
        let s = state();
        assert_eq!(Classification::of(&s, 3), Classification::Primary);
        assert_eq!(Classification::of(&s, 2), Classification::Fallback);
        assert_eq!(Classification::of(&s, 1), Classification::Stale);
        assert_eq!(Classification::of(&s, 9), Classification::Unknown);
        assert_eq!(Classification::of(&s, 0), Classification::Unknown);
    }

    #[test]
    fn counts_only_reports_since_promotion() {
        let s = state();
        let log = FailureLog::default();
        log.record(&s.key, 3, SystemTime::UNIX_EPOCH + Duration::from_secs(50));
        log.record(&s.key, 3, SystemTime::UNIX_EPOCH + Duration::from_secs(150));
        log.record(&s.key, 2, SystemTime::UNIX_EPOCH + Duration::from_secs(160));
        assert_eq!(log.since_promotion(&s), (1, 1));
    }

    #[test]
    fn report_text_is_bounded_and_printable() {
        let long = "x".repeat(1000) + "\n\u{1b}[31m";
        let b = bounded(&long);
        assert!(b.len() <= MAX_TEXT);
        assert!(!bounded("a\nb\u{1b}c").contains('\n'));
    }
}
