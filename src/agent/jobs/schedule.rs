//! Scheduled rotation: which keys are due, checked every half second: a
//! key whose primary has served its `every` (plus its jitter), inside its
//! window, unless a job runs or a failed one's backoff has not passed.
//!
//! A key that is mid-rotation by hand (STAGED or PROMOTED without a
//! scheduled job behind it) is left alone; one left mid-rotation by a
//! failed scheduled job is resumed by the next attempt.

use std::time::{Duration, SystemTime};

use jiff::tz::TimeZone;

use crate::agent::Agent;
use crate::keyset::{KeySetState, RotationState};
use crate::rotation::schedule::{may_start, next_due};

/// How often the schedule is checked.
pub const CHECK_EVERY: Duration = Duration::from_millis(500);

/// The agent's time zone: the system's (`TZ`, `/etc/localtime`), or UTC
/// when it cannot be found.
pub fn time_zone() -> TimeZone {
    TimeZone::try_system().unwrap_or(TimeZone::UTC)
}

/// When `state` rotates next, and its schedule as text (`None`: it has no
/// schedule). A failed attempt's backoff counts.
pub fn next_rotation(agent: &Agent, state: &KeySetState) -> Option<(SystemTime, String)> {
    let schedule = agent.config().rotation_for(&state.key).schedule?;
    let mut at = next_due(state, &schedule, agent.recipient.as_bytes(), &time_zone());
    if let Some(retry) = agent.jobs.retry_at(&state.key) {
        at = at.max(retry);
    }
    Some((at, schedule.to_string()))
}

/// The keys due for a scheduled rotation now, each with why.
pub fn due(agent: &Agent) -> Vec<(crate::secret::KeyRef, String)> {
    let config = agent.config();
    let tz = time_zone();
    let now = SystemTime::now();
    let mut out = Vec::new();
    for state in agent.store.list(None) {
        let key = &state.key;
        let settings = config.rotation_for(key);
        let Some(schedule) = &settings.schedule else { continue };
        // Reported at start and reload; a key without a generator cannot
        // be rotated by the agent.
        if settings.generator.is_none() || agent.jobs.active(key) {
            continue;
        }
        if state.state != RotationState::Steady && !agent.jobs.last_was_scheduled(key) {
            continue;
        }
        if agent.jobs.retry_at(key).is_some_and(|t| now < t) {
            continue;
        }
        let due = next_due(&state, schedule, agent.recipient.as_bytes(), &tz);
        if !may_start(due, schedule, now, &tz) {
            continue;
        }
        let why = format!(
            "its primary v{} is due ({schedule}; due {})",
            state.primary.number,
            humantime::format_rfc3339_seconds(due)
        );
        out.push((key.clone(), why));
    }
    out
}
