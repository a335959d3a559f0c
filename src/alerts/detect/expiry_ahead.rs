//! `expiry_ahead`: the primary's `expires_at` is less than `expiry_lead`
//! away (a warning), or has passed (critical). Compared with the wall
//! clock, as `expires_at` is a real time.

use super::finding::{human, Finding, KeyView};
use crate::config::alerts::Severity;

/// Active while the primary expires within the lead, critical once expired.
pub(super) fn active(v: &KeyView<'_>) -> Option<Severity> {
    let expires = v.state.primary.expires_at?;
    match expires.duration_since(v.now.wall) {
        Err(_) => Some(Severity::Critical),
        Ok(left) if left < v.settings.expiry_lead => Some(Severity::Warning),
        Ok(_) => None,
    }
}

/// What the alert says: when the primary expires, and how soon.
pub(super) fn finding(v: &KeyView<'_>) -> Option<Finding> {
    let (key, state) = (&v.state.key, v.state);
    let expires = state.primary.expires_at?;
    let left = expires.duration_since(v.now.wall);
    let expired = left.is_err();
    if !(expired || left.as_ref().is_ok_and(|l| *l < v.settings.expiry_lead)) {
        return None;
    }
    let when = humantime::format_rfc3339_seconds(expires).to_string();
    let mut details = v.details(v.recent().len());
    details.insert("expires_at".to_owned(), when.clone());
    let (severity, summary, error) = if expired {
        (
            Severity::Critical,
            format!(
                "{key}: the primary (v{}) expired at {when}: rotate it now with `keyward rotate {key}`",
                state.primary.number
            ),
            format!("primary v{} expired", state.primary.number),
        )
    } else {
        let left = human(left.unwrap_or_default());
        (
            Severity::Warning,
            format!(
                "{key}: the primary (v{}) expires in {left} (at {when}): rotate it before then with `keyward rotate {key}`",
                state.primary.number
            ),
            format!("primary v{} expires in {left}", state.primary.number),
        )
    };
    Some(Finding {
        severity,
        version: Some(state.primary.number),
        service: "keywardd".to_owned(),
        summary,
        error,
        details,
    })
}
