//! `agent_health`: the agent reported a failure of its own (an audit
//! write, a rejected store reload, a failed rotation step or hook) within
//! the last window. Unlike the key signals it resolves as soon as it is
//! clear: it has no hold.

use std::collections::BTreeMap;
use std::fmt;

use super::finding::Finding;
use super::window::Now;
use crate::config::alerts::Severity;

/// The last failure about one part of the agent.
pub(super) struct Health {
    pub(super) at: Now,
    pub(super) severity: Severity,
    pub(super) message: String,
}

/// What the alert says about `subject`: the failure and when it was last
/// seen.
pub(super) fn finding(subject: &impl fmt::Display, h: &Health) -> Finding {
    let mut details = BTreeMap::new();
    details.insert(
        "last_failure_at".to_owned(),
        humantime::format_rfc3339_seconds(h.at.wall).to_string(),
    );
    Finding {
        severity: h.severity,
        version: None,
        service: "keywardd".to_owned(),
        summary: format!("{subject}: the agent is failing: {}", h.message),
        error: h.message.clone(),
        details,
    }
}
