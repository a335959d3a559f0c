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
            "{key}: {} auth failures against the current primary (v{}) in the last {window}: the key is probably revoked or expired at the provider; {}",
            primary.len(),
            state.primary.number,
            advice(state)
        ),
        error: format!("{} on primary v{}", statuses(primary.iter().copied()), state.primary.number),
        details,
    })
}

/// What to do about a refused primary, from where the key's rotation
/// stands: a staged key is promoted (it is ready), a promoted one rolled
/// back (the new key is the one refused), a steady one rotated.
fn advice(state: &crate::keyset::KeySetState) -> String {
    use crate::keyset::RotationState;
    let key = &state.key;
    match (state.state, &state.fallback) {
        (RotationState::Staged, Some(f)) => format!(
            "a new key (v{}) is staged: promote it with `keyward promote {key}` (or let its rotation job go on: `keyward rotate {key}`)",
            f.number
        ),
        (RotationState::Promoted, Some(f)) => format!(
            "it was promoted recently: roll back to v{} with `keyward rollback {key}` and check the new key",
            f.number
        ),
        _ => format!("rotate it with `keyward rotate {key}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyset::{KeySetState, RotationState, Version};

    #[test]
    fn the_advice_follows_the_rotation_state() {
        let v = |n| Version {
            number: n,
            secret: crate::secret::Secret::copy_from(b"x"),
            fingerprint: String::new(),
            created_at: std::time::SystemTime::UNIX_EPOCH,
            expires_at: None,
            promoted_at: None,
        };
        let mut s = KeySetState::create("prod/a".parse().unwrap(), v(1));
        assert!(advice(&s).contains("keyward rotate prod/a"));
        s.fallback = Some(v(2));
        s.state = RotationState::Staged;
        let staged = advice(&s);
        assert!(
            staged.contains("keyward promote prod/a") && !staged.starts_with("rotate"),
            "{staged}"
        );
        s.state = RotationState::Promoted;
        assert!(advice(&s).contains("keyward rollback prod/a"));
    }
}
