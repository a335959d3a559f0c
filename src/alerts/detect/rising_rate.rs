//! `rising_rate`: the last `rising_windows` whole windows each had more
//! reports than the one before, the last at least `rising_min`. Rate
//! limits or misuse at the provider.

use super::finding::{services, Finding, KeyView};
use crate::config::alerts::Severity;

/// Active from the per-window counts.
pub(super) fn active(v: &KeyView<'_>) -> Option<Severity> {
    v.rising_counts().map(|_| Severity::Warning)
}

/// What the alert says: the count of each window.
pub(super) fn finding(v: &KeyView<'_>) -> Option<Finding> {
    let key = &v.state.key;
    let counts = v.rising_counts()?;
    let window = v.window();
    let recent = v.recent();
    let k = counts.len();
    let mut details = v.details(recent.len());
    details.insert(
        "counts_per_window".to_owned(),
        counts.iter().map(u64::to_string).collect::<Vec<_>>().join(", "),
    );
    Some(Finding {
        severity: Severity::Warning,
        version: None,
        service: services(&recent),
        summary: format!(
            "{key}: auth failures rose for {k} windows of {window} in a row ({}): look for rate limiting or misuse at the provider",
            details["counts_per_window"]
        ),
        error: format!("failure rate rising: {} per {window}", details["counts_per_window"]),
        details,
    })
}
