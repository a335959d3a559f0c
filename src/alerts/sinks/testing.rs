//! Alerts and sink settings for the unit tests.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::alerts::{Alert, AlertStatus, Severity, Signal, SinkConfig, SinkKind};
use crate::secret::KeyRef;

/// 2025-01-31T08:15:00Z.
pub(crate) const SENT: u64 = 1_738_311_300;
/// 2025-01-31T08:10:00Z.
pub(crate) const OPENED: u64 = 1_738_311_000;

/// A critical spike on prod/billing-api, just opened.
pub(crate) fn alert() -> Alert {
    let mut details = BTreeMap::new();
    details.insert("callers".to_owned(), "billing-worker (uid 1001)".to_owned());
    details.insert("reports".to_owned(), "7".to_owned());
    Alert {
        dedup_key: "keyward/web-1/prod/billing-api/spike".to_owned(),
        signal: Signal::Spike,
        severity: Severity::Critical,
        status: AlertStatus::Firing,
        key: Some(KeyRef::new("prod", "billing-api").unwrap()),
        environment: Some("prod".to_owned()),
        version: Some(3),
        service: "billing".to_owned(),
        summary: "prod/billing-api v3 is refused: rotate it now (keyward rotate prod/billing-api)".to_owned(),
        error: "HTTP 401 on primary v3 (7 reports in 1m)".to_owned(),
        details,
        timestamp: UNIX_EPOCH + Duration::from_secs(SENT),
        opened_at: UNIX_EPOCH + Duration::from_secs(OPENED),
        repeat: 0,
        agent_host: "web-1".to_owned(),
    }
}

/// The same alert, resolved.
pub(crate) fn resolved() -> Alert {
    Alert {
        status: AlertStatus::Resolved,
        summary: "prod/billing-api: no more failures".to_owned(),
        repeat: 2,
        timestamp: SystemTime::UNIX_EPOCH + Duration::from_secs(SENT + 600),
        ..alert()
    }
}

/// A sink of `kind` with quick limits.
pub(crate) fn sink(name: &str, kind: SinkKind) -> SinkConfig {
    SinkConfig {
        name: name.to_owned(),
        kind,
        min_severity: Severity::Info,
        signals: Vec::new(),
        queue: 16,
        timeout: Duration::from_secs(2),
        retries: 0,
        backoff: Duration::from_millis(10),
    }
}
