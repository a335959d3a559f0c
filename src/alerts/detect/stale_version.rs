//! `stale_version`: any report in the window against a version the key no
//! longer serves (or never had). A client missed a rotation.

use std::collections::BTreeSet;

use super::finding::{named, services, statuses, Finding, KeyView};
use super::window::Classification;
use crate::config::alerts::Severity;

/// Whether a report's version is one the key does not serve.
fn not_served(c: Classification) -> bool {
    matches!(c, Classification::Stale | Classification::Unknown)
}

/// Active from the counts alone.
pub(super) fn active(v: &KeyView<'_>) -> Option<Severity> {
    let stale = v.count(Classification::Stale) + v.count(Classification::Unknown);
    (stale > 0).then_some(Severity::Warning)
}

/// What the alert says: the newest stale report's caller and version.
pub(super) fn finding(v: &KeyView<'_>) -> Option<Finding> {
    let (key, state) = (&v.state.key, v.state);
    let stale = v.of(not_served);
    let newest = *stale.last()?;
    let mut details = v.details(stale.len());
    details.insert("callers".to_owned(), named(stale.iter().map(|r| r.caller.as_str())));
    let versions: BTreeSet<u64> = stale.iter().map(|r| r.version).collect();
    details.insert(
        "versions".to_owned(),
        versions.iter().map(|v| format!("v{v}")).collect::<Vec<_>>().join(", "),
    );
    Some(Finding {
        severity: Severity::Warning,
        version: Some(newest.version),
        service: services(&stale),
        summary: format!(
            "{key}: {} ({}) still uses v{}, which the key no longer serves (primary is v{}): it missed a rotation; make it fetch or watch the key again (restart it if it caches the secret)",
            newest.caller,
            newest.service,
            newest.version,
            state.primary.number
        ),
        error: format!("{} on v{} (not served)", statuses(stale.iter().copied()), newest.version),
        details,
    })
}
