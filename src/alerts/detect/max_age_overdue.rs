//! `max_age_overdue`: the primary has served longer than the key's
//! `max_age` rotation policy (none by default). Measured on the wall clock
//! from its promotion (or creation).

use std::time::Duration;

use super::finding::{human, Finding, KeyView};
use crate::config::alerts::Severity;

/// How long the primary has served, and the policy, if it is overdue.
fn overdue(v: &KeyView<'_>) -> Option<(Duration, Duration)> {
    let max_age = v.settings.max_age?;
    let primary = &v.state.primary;
    let since = primary.promoted_at.unwrap_or(primary.created_at);
    let age = v.now.wall.duration_since(since).unwrap_or_default();
    (age > max_age).then_some((age, max_age))
}

/// Active while the primary is older than `max_age`.
pub(super) fn active(v: &KeyView<'_>) -> Option<Severity> {
    overdue(v).map(|_| Severity::Warning)
}

/// What the alert says: the primary's age and the policy.
pub(super) fn finding(v: &KeyView<'_>) -> Option<Finding> {
    let (key, state) = (&v.state.key, v.state);
    let (age, max_age) = overdue(v)?;
    let mut details = v.details(v.recent().len());
    details.insert("age".to_owned(), human(age));
    details.insert("max_age".to_owned(), human(max_age));
    Some(Finding {
        severity: Severity::Warning,
        version: Some(state.primary.number),
        service: "keywardd".to_owned(),
        summary: format!(
            "{key}: the primary (v{}) has served for {}, longer than the rotation policy's max_age of {}: rotate it with `keyward rotate {key}`",
            state.primary.number,
            human(age),
            human(max_age)
        ),
        error: format!("rotation overdue by {}", human(age - max_age)),
        details,
    })
}
