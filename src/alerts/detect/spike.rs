//! `spike`: at least `spike_threshold` reports against the current primary
//! in the last window. The key is probably revoked or expired at the
//! provider.

use super::finding::{named, services, statuses, Finding, KeyView};
use super::window::Classification;
use crate::config::alerts::Severity;

/// Active from the counts alone.
pub(super) fn active(v: &KeyView<'_>) -> Option<Severity> {
    (v.count(Classification::Primary) >= v.settings.spike_threshold).then_some(Severity::Critical)
}

/// What the alert says: the callers and statuses of the window's reports.
pub(super) fn finding(v: &KeyView<'_>) -> Option<Finding> {
    let (key, state, s) = (&v.state.key, v.state, v.settings);
    let primary = v.of(|c| c == Classification::Primary);
    if (primary.len() as u64) < s.spike_threshold {
        return None;
    }
    let window = v.window();
    let mut details = v.details(primary.len());
    details.insert("threshold".to_owned(), s.spike_threshold.to_string());
    details.insert("callers".to_owned(), named(primary.iter().map(|r| r.caller.as_str())));
    Some(Finding {
        severity: Severity::Critical,
        version: Some(state.primary.number),
        service: services(&primary),
        summary: format!(
            "{key}: {} auth failures against the current primary (v{}) in the last {window}: the key is probably revoked or expired at the provider; rotate it with `keyward rotate {key}`",
            primary.len(),
            state.primary.number
        ),
        error: format!("{} on primary v{}", statuses(primary.iter().copied()), state.primary.number),
        details,
    })
}
