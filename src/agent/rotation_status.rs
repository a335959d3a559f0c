//! What the admin socket shows of a key's rotation: `GetRotationStatus`
//! (the gate, subscribers and what they were sent, the job, the evidence,
//! the schedule) and the next scheduled rotation in each key's metadata.

use std::time::SystemTime;

use super::error::ApiError;
use super::jobs;
use super::rotate::{existing, GateFacts};
use super::Agent;
use crate::keyset::KeySetState;
use crate::proto;
use crate::rotation::{self, Command};
use crate::wire::{timestamp, ToInfo};

/// A key's metadata for the admin socket, with its next scheduled
/// rotation.
pub fn key_info(agent: &Agent, state: &KeySetState) -> proto::KeyInfo {
    let mut info = state.to_info();
    if let Some((at, schedule)) = jobs::next_rotation(agent, state) {
        info.next_rotation = Some(timestamp(at));
        info.schedule = schedule;
    }
    info
}

/// `GetRotationStatus`.
pub fn status(agent: &Agent, key: Option<&proto::KeyRef>) -> Result<proto::RotationStatus, ApiError> {
    let key = agent.key_ref(key)?;
    let settings = agent.config().rotation_for(&key);
    let current = existing(agent, &key)?;
    let facts = GateFacts::of(agent, &current, &settings);
    let (evidence, fallback_failures) = (&facts.evidence, facts.fallback_failures);
    let now = SystemTime::now();
    let gate = facts.gate(settings.grace, false);
    let (retire_allowed, retire_blocked_reason) = match rotation::apply(&current, Command::Retire, gate, now) {
        Ok(_) => (true, String::new()),
        Err(e) => (false, e.to_string()),
    };
    let users = agent.uses.users(&key, current.primary.number);
    let job = agent.jobs.job(&key);
    let next = jobs::next_rotation(agent, &current);
    Ok(proto::RotationStatus {
        key: Some(key_info(agent, &current)),
        users: users.iter().map(ToString::to_string).collect(),
        evidence_quorum: settings.evidence_quorum,
        unreported: jobs::unreported(agent, &current),
        validated_after_promotion: agent.jobs.validated(&key, current.primary.number),
        schedule: next.as_ref().map(|(_, s)| s.clone()).unwrap_or_default(),
        next_rotation: next.map(|(t, _)| timestamp(t)),
        job,
        subscribers: agent
            .watchers
            .subscribers(&key)
            .into_iter()
            .map(|s| proto::Subscriber {
                uid: s.uid,
                pid: s.pid,
                exe: s.exe.unwrap_or_default(),
                unit: s.unit.unwrap_or_default(),
                delivered_generation: s.delivered_generation,
                kind: s.kind.as_str().to_owned(),
                reported_use: users.iter().any(|u| u.uid == s.uid),
            })
            .collect(),
        evicted: agent
            .watchers
            .recent_evictions(&key)
            .into_iter()
            .map(|e| proto::EvictedSubscriber {
                subscriber: Some(proto::Subscriber {
                    uid: e.who.uid,
                    pid: e.who.pid,
                    exe: e.who.exe.clone().unwrap_or_default(),
                    unit: e.who.unit.clone().unwrap_or_default(),
                    delivered_generation: e.delivered_generation,
                    kind: String::new(),
                    reported_use: users.iter().any(|u| u.uid == e.who.uid),
                }),
                waiting_generation: e.waiting_generation.unwrap_or(0),
                waited_ms: e.waited.as_millis() as u64,
                evicted_at: Some(timestamp(e.at)),
            })
            .collect(),
        failures_since_promotion: evidence.failures,
        fallback_failures_since_promotion: fallback_failures,
        failure_reporters: gate.reporters,
        report_quorum: gate.quorum,
        reporters: evidence.reporters.iter().map(ToString::to_string).collect(),
        grace_seconds: settings.grace.as_secs(),
        // Rounded up: 0 only once the grace period is really over.
        grace_left_seconds: {
            let left = rotation::grace_left(&current, &gate, now);
            left.as_secs() + u64::from(left.subsec_nanos() > 0)
        },
        retire_allowed,
        retire_blocked_reason,
        has_generator: settings.generator.is_some(),
        has_validator: settings.validator.is_some(),
        has_revoker: settings.revoker.is_some(),
        propagation_timeout_seconds: settings.propagation_timeout.as_secs(),
        failure_threshold: settings.failure_threshold,
    })
}
