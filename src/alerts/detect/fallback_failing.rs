//! `fallback_failing`: reports against the primary and against the
//! fallback in the same window. Both keys are refused: an outage.

use super::finding::{services, statuses, Finding, KeyView};
use super::window::Classification;
use crate::config::alerts::Severity;

/// Active from the counts alone.
pub(super) fn active(v: &KeyView<'_>) -> Option<Severity> {
    let both = v.count(Classification::Primary) > 0 && v.count(Classification::Fallback) > 0;
    both.then_some(Severity::Critical)
}

/// What the alert says: how many failures on each key.
pub(super) fn finding(v: &KeyView<'_>) -> Option<Finding> {
    let (key, state) = (&v.state.key, v.state);
    let primary = v.of(|c| c == Classification::Primary);
    let fallback = v.of(|c| c == Classification::Fallback);
    if primary.is_empty() || fallback.is_empty() {
        return None;
    }
    let window = v.window();
    let fb = fallback[0].version;
    let mut details = v.details(primary.len() + fallback.len());
    details.insert("primary_reports".to_owned(), primary.len().to_string());
    details.insert("fallback_reports".to_owned(), fallback.len().to_string());
    let both: Vec<_> = primary.iter().chain(fallback.iter()).copied().collect();
    Some(Finding {
        severity: Severity::Critical,
        version: Some(fb),
        service: services(&both),
        summary: format!(
            "{key}: both keys are refused: {} failures on the primary (v{}) and {} on the fallback (v{fb}) in the last {window}: callers have no working key; check the provider account, then put a fresh key with `keyward rotate {key}`",
            primary.len(),
            state.primary.number,
            fallback.len()
        ),
        error: format!("{} on primary and fallback", statuses(both.iter().copied())),
        details,
    })
}
