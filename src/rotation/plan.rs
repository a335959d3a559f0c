//! The rotation job's plan: from a job's memory and what the agent observes
//! now, the next action. Pure; the agent's job task (`agent::jobs`) gathers
//! the observations, performs the action, and asks again.
//!
//! The sequence: **stage** (a new key as fallback) → **propagate** (every
//! live subscriber, and in fleet mode every live agent, has the staged
//! generation) → **promote** → **grace** (rolled back when the failure
//! threshold of reports against the new primary is reached) → **evidence**
//! (use of the new primary reported by `evidence_quorum` distinct callers
//! served it, or the validator run after promotion accepted it) →
//! **retire** (the revoker, then the old key dropped) → done.
//!
//! Without evidence by the end of the grace the job waits, PROMOTED (both
//! keys valid), and says so; it never retires on silence. The key's stored
//! state is the truth: the job only remembers which version it staged,
//! whether it rolled back, and the validator's verdict after promotion, so
//! a job resumed after a crash picks up wherever the key stands.

use std::fmt;
use std::time::Duration;

use crate::keyset::{KeySetState, RotationState};

/// What started a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// `StartRotation` (`keyward rotate`).
    Manual,
    /// `[rotation] every`.
    Schedule,
}

impl Trigger {
    /// As metrics and messages spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Manual => "manual",
            Trigger::Schedule => "schedule",
        }
    }
}

/// Where a job stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Until {
    /// Once the new key is staged and every subscriber has it.
    Staged,
    /// Once it is promoted.
    Promoted,
    /// The whole sequence.
    Retired,
}

/// How a job ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobResult {
    /// It reached its `until`.
    Ok,
    /// Failures against the new primary (or the validator after promotion)
    /// rolled it back.
    RolledBack,
    /// `CancelRotation` stopped it.
    Cancelled,
    /// A step could not be taken (a hook refused, subscribers did not take
    /// the staged key, the key changed under it).
    Failed,
}

impl JobResult {
    /// As metrics spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobResult::Ok => "ok",
            JobResult::RolledBack => "rolled_back",
            JobResult::Cancelled => "cancelled",
            JobResult::Failed => "failed",
        }
    }

    /// Every result, for metrics.
    pub const ALL: [JobResult; 4] = [
        JobResult::Ok,
        JobResult::RolledBack,
        JobResult::Cancelled,
        JobResult::Failed,
    ];
}

/// The job's step, as `GetRotationStatus` and the step gauge show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Making and staging the new key.
    Stage,
    /// Waiting for subscribers (and fleet agents) to have it.
    Propagate,
    /// Promoting it.
    Promote,
    /// The grace period after promotion.
    Grace,
    /// Waiting for evidence that the new primary works.
    Evidence,
    /// Revoking and dropping the old key.
    Retire,
    /// Finished.
    Done,
}

impl Step {
    /// As the status spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Stage => "stage",
            Step::Propagate => "propagate",
            Step::Promote => "promote",
            Step::Grace => "grace",
            Step::Evidence => "evidence",
            Step::Retire => "retire",
            Step::Done => "done",
        }
    }

    /// Its number for the step gauge (1 = stage … 7 = done).
    pub fn number(self) -> i64 {
        self as i64 + 1
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a job remembers between steps (persisted by the agent).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Memory {
    /// What started it.
    pub trigger: Trigger,
    /// Where it stops.
    pub until: Until,
    /// The version it staged (none before staging).
    pub new_version: Option<u64>,
    /// It rolled the new key back.
    pub rolled_back: bool,
    /// The validator's verdict on the new primary, run after promotion.
    pub validated: Option<bool>,
    /// Also wait for every live fleet agent.
    pub fleet: bool,
    /// Cancel was asked for.
    pub cancel: bool,
}

/// What the agent sees now, for one job.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Subscribers still without the key's current generation, named
    /// ("uid 1001 pid 42 (billing.service)").
    pub lagging: Vec<String>,
    /// Fleet agents that do not serve the current generation yet (empty
    /// when all do, or not in fleet mode).
    pub fleet_lagging: Vec<String>,
    /// How long the job has waited at this gate.
    pub waited: Duration,
    /// How long it may wait for subscribers (propagation timeout, plus a
    /// margin for the agent's eviction of those that take nothing).
    pub propagation_limit: Duration,
    /// How long it may wait for fleet agents.
    pub fleet_limit: Duration,
    /// Auth failures against the current primary since its promotion, and
    /// how many distinct reporters sent them.
    pub failures: u64,
    /// See `failures`.
    pub reporters: u64,
    /// Reporters needed (already capped by the reporters served it).
    pub quorum: u64,
    /// Failures that roll back.
    pub failure_threshold: u64,
    /// Grace left (zero once over).
    pub grace_left: Duration,
    /// Distinct callers served the primary that reported using it
    /// successfully since its promotion.
    pub users: u64,
    /// How many are needed.
    pub evidence_quorum: u64,
    /// Callers served it that did not report (named), for the wait's text.
    pub unreported: Vec<String>,
    /// A validator is configured.
    pub has_validator: bool,
    /// Fleet mode: the members whose callers' reports cannot all be
    /// counted yet, and why (see [`super::RetireGate::members_incomplete`]).
    pub members_incomplete: Vec<String>,
}

/// Why a job waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// For subscribers to be sent the staged generation.
    Propagation,
    /// For fleet agents to serve it.
    Fleet,
    /// For the grace period to pass.
    Grace,
    /// For evidence that the new primary works.
    Evidence,
    /// For every fleet agent's reports about the new primary to be
    /// complete.
    Members,
}

impl Gate {
    /// What must hold for the job to go on, for the status.
    pub fn describe(self) -> &'static str {
        match self {
            Gate::Propagation => "every live subscriber has the staged generation",
            Gate::Fleet => "every live fleet agent serves the new generation",
            Gate::Grace => "the grace period after promotion is over",
            Gate::Evidence => {
                "use of the new primary reported by evidence_quorum callers, or the validator accepts it after promotion"
            }
            Gate::Members => {
                "every fleet agent that counts reports about the new primary has counted them for the whole grace period"
            }
        }
    }
}

/// The next thing a job does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Make (or take) the new key and stage it.
    Stage,
    /// Nothing yet: `gate` is closed, `why`.
    Wait {
        /// Which gate.
        gate: Gate,
        /// What it waits for, for the status.
        why: String,
    },
    /// Promote the staged key.
    Promote,
    /// Run the validator on the new primary.
    Validate,
    /// Roll back to the old primary.
    Rollback {
        /// What made it.
        why: String,
    },
    /// Drop the staged key (after a scheduled job rolled back: its next
    /// attempt makes a fresh one).
    Abort,
    /// Revoke and drop the old key.
    Retire,
    /// End the job.
    Finish {
        /// How.
        result: JobResult,
        /// What happened and what to do next.
        message: String,
    },
}

fn finish(result: JobResult, message: String) -> Action {
    Action::Finish { result, message }
}

/// The step a job is at, from the key's state and what it remembers.
pub fn step_of(memory: &Memory, state: Option<&KeySetState>, action: &Action) -> Step {
    match action {
        Action::Stage => Step::Stage,
        Action::Wait {
            gate: Gate::Propagation | Gate::Fleet,
            ..
        } if state.is_some_and(|s| s.state == RotationState::Staged) => Step::Propagate,
        Action::Wait { gate: Gate::Fleet, .. } if state.is_some_and(|s| s.state == RotationState::Steady) => {
            Step::Retire
        }
        Action::Promote => Step::Promote,
        Action::Wait {
            gate: Gate::Evidence, ..
        }
        | Action::Validate => Step::Evidence,
        Action::Wait { .. } | Action::Rollback { .. } | Action::Abort => {
            if memory.new_version.is_none() {
                Step::Stage
            } else {
                Step::Grace
            }
        }
        Action::Retire => Step::Retire,
        Action::Finish { .. } => Step::Done,
    }
}

/// The next action of a job with `memory` on a key now in `state` (`None`:
/// deleted), given what the agent observes.
pub fn next(memory: &Memory, state: Option<&KeySetState>, seen: &Observed) -> Action {
    let Some(state) = state else {
        return finish(JobResult::Failed, "the key was deleted during its rotation".to_owned());
    };
    let k = &state.key;
    if memory.cancel {
        return finish(
            JobResult::Cancelled,
            format!(
                "cancelled; {k} stays {} ({}); {}",
                state.state.as_str(),
                what_serves(state),
                super::next_step(state)
            ),
        );
    }
    let Some(new) = memory.new_version else {
        return match state.state {
            RotationState::Steady => Action::Stage,
            // A job always learns the version it staged; a key staged or
            // promoted under a job that never staged was changed by hand.
            _ => finish(
                JobResult::Failed,
                format!(
                    "{k} was {} by another command before this job staged a key: nothing was done; {}",
                    state.state.as_str(),
                    super::next_step(state)
                ),
            ),
        };
    };
    let fallback = state.fallback.as_ref().map(|f| f.number);
    match state.state {
        RotationState::Steady if state.primary.number == new => {
            // Fleet: done once every live agent serves the retire too.
            if memory.fleet && !seen.fleet_lagging.is_empty() {
                return retired_in_fleet(state, seen);
            }
            finish(
                JobResult::Ok,
                format!("v{new} is the primary of {k}; the old key is retired"),
            )
        }
        RotationState::Steady if memory.rolled_back => finish(
            JobResult::RolledBack,
            format!(
                "v{new} was refused after promotion: rolled back and dropped; v{} stays primary",
                state.primary.number
            ),
        ),
        RotationState::Steady => finish(
            JobResult::Failed,
            format!(
                "the staged v{new} of {k} was dropped by another command (abort or put): v{} stays primary",
                state.primary.number
            ),
        ),
        RotationState::Staged if fallback != Some(new) => replaced(state, new),
        RotationState::Staged if memory.rolled_back => match memory.trigger {
            Trigger::Schedule => Action::Abort,
            Trigger::Manual => finish(
                JobResult::RolledBack,
                format!(
                    "rolled back: v{} is primary again and the refused v{new} stays staged as fallback; investigate, then `keyward abort {k}`, or `keyward rotate {k}` to promote it again",
                    state.primary.number
                ),
            ),
        },
        RotationState::Staged => {
            if let Some(wait) = propagation(state, seen, memory.fleet) {
                return wait;
            }
            if memory.until == Until::Staged {
                return finish(
                    JobResult::Ok,
                    format!("v{new} is staged and every subscriber has it (until staged); resume with `keyward rotate {k}`"),
                );
            }
            Action::Promote
        }
        RotationState::Promoted if state.primary.number != new => replaced(state, new),
        RotationState::Promoted => promoted(memory, state, seen, new),
    }
}

fn replaced(state: &KeySetState, new: u64) -> Action {
    finish(
        JobResult::Failed,
        format!(
            "v{new} is no longer the key this job rotates to: {} was changed by another command (now {}, {}); {}",
            state.key,
            state.state.as_str(),
            what_serves(state),
            super::next_step(state)
        ),
    )
}

fn what_serves(state: &KeySetState) -> String {
    match &state.fallback {
        Some(f) => format!("primary v{}, fallback v{}", state.primary.number, f.number),
        None => format!("primary v{}", state.primary.number),
    }
}

/// The propagation gates (subscribers, then the fleet): a wait, a
/// failure past their limits, or `None` when open.
fn propagation(state: &KeySetState, seen: &Observed, fleet: bool) -> Option<Action> {
    let k = &state.key;
    let g = state.generation;
    if !seen.lagging.is_empty() {
        if seen.waited > seen.propagation_limit {
            return Some(finish(
                JobResult::Failed,
                format!(
                    "{} subscriber(s) did not receive generation {g} within {}: {}; {k} stays {} (safe: every holder of a key can still use it). Run `keyward rotate {k}` again to resume",
                    seen.lagging.len(),
                    humantime::format_duration(seen.propagation_limit),
                    seen.lagging.join("; "),
                    state.state.as_str()
                ),
            ));
        }
        return Some(Action::Wait {
            gate: Gate::Propagation,
            why: format!(
                "{} subscriber(s) do not have generation {g} yet: {}",
                seen.lagging.len(),
                seen.lagging.join("; ")
            ),
        });
    }
    if fleet && !seen.fleet_lagging.is_empty() {
        if seen.waited > seen.fleet_limit {
            return Some(finish(
                JobResult::Failed,
                format!(
                    "not every live agent serves generation {g} of {k} after {}: {}; it stays {}. Check those agents (`keyward fleet status {k}`), then run `keyward rotate --fleet {k}` again to resume",
                    humantime::format_duration(seen.fleet_limit),
                    seen.fleet_lagging.join("; "),
                    state.state.as_str()
                ),
            ));
        }
        return Some(Action::Wait {
            gate: Gate::Fleet,
            why: format!(
                "fleet agents that do not serve generation {g} yet: {}",
                seen.fleet_lagging.join("; ")
            ),
        });
    }
    None
}

/// After the retire, with `--fleet`: waits for the lagging agents, or says
/// they still serve the old key as fallback.
fn retired_in_fleet(state: &KeySetState, seen: &Observed) -> Action {
    let (k, g) = (&state.key, state.generation);
    if seen.waited > seen.fleet_limit {
        return finish(
            JobResult::Failed,
            format!(
                "not every live agent serves generation {g} of {k} after {}: {}; the old key is retired here and in the backend, and the lagging agents serve it as fallback until they sync (`keyward fleet status {k}`)",
                humantime::format_duration(seen.fleet_limit),
                seen.fleet_lagging.join("; ")
            ),
        );
    }
    Action::Wait {
        gate: Gate::Fleet,
        why: format!(
            "fleet agents that do not serve generation {g} (the retire) yet: {}",
            seen.fleet_lagging.join("; ")
        ),
    }
}

fn promoted(memory: &Memory, state: &KeySetState, seen: &Observed, new: u64) -> Action {
    let k = &state.key;
    if seen.failure_threshold > 0 && seen.failures >= seen.failure_threshold && seen.reporters >= seen.quorum.max(1) {
        return Action::Rollback {
            why: format!(
                "{} auth failure(s) against the new primary v{new} from {} distinct reporter(s) (threshold {}, quorum {})",
                seen.failures,
                seen.reporters,
                seen.failure_threshold,
                seen.quorum.max(1)
            ),
        };
    }
    if memory.validated == Some(false) {
        return Action::Rollback {
            why: format!("the validator refused the new primary v{new} after its promotion"),
        };
    }
    if let Some(wait) = propagation(state, seen, memory.fleet) {
        return wait;
    }
    if memory.until == Until::Promoted {
        return finish(
            JobResult::Ok,
            format!(
                "v{new} is promoted, the old key stays as fallback (until promoted); resume with `keyward rotate {k}`"
            ),
        );
    }
    if !seen.grace_left.is_zero() {
        return Action::Wait {
            gate: Gate::Grace,
            why: format!(
                "the grace period has {} left; rolling back if {} auth failures from {} reporter(s) arrive",
                humantime::format_duration(Duration::from_secs(seen.grace_left.as_secs().max(1))),
                seen.failure_threshold,
                seen.quorum.max(1)
            ),
        };
    }
    if !seen.members_incomplete.is_empty() {
        return Action::Wait {
            gate: Gate::Members,
            why: format!(
                "what callers reported to other fleet agents cannot all be counted yet: {}. Both keys stay valid; the job waits (and rolls back if failures arrive), or `keyward retire --force {k}`",
                seen.members_incomplete.join("; ")
            ),
        };
    }
    if seen.has_validator && memory.validated.is_none() {
        return Action::Validate;
    }
    let gate = super::RetireGate {
        users: seen.users,
        evidence_quorum: seen.evidence_quorum,
        validated: memory.validated == Some(true),
        ..Default::default()
    };
    if super::has_evidence(&gate) {
        return Action::Retire;
    }
    let unreported = if seen.unreported.is_empty() {
        "no caller was served it yet".to_owned()
    } else {
        format!("served it, never reported use: {}", seen.unreported.join(", "))
    };
    Action::Wait {
        gate: Gate::Evidence,
        why: format!(
            "no evidence that v{new} works: use reported by {} of {} caller(s) needed, and no validator ran after promotion ({unreported}). Both keys stay valid; the job waits (and rolls back if failures arrive). Check the consumers, or `keyward retire --force {k}`",
            seen.users,
            seen.evidence_quorum.max(1)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyset::Version;
    use crate::rotation::{apply, stage, Command, RetireGate};
    use crate::secret::Secret;
    use std::time::SystemTime;

    fn version(s: &str) -> Version {
        Version {
            number: 0,
            secret: Secret::copy_from(s.as_bytes()),
            fingerprint: format!("fp-{s}"),
            created_at: SystemTime::UNIX_EPOCH,
            expires_at: None,
            promoted_at: None,
        }
    }

    fn steady() -> KeySetState {
        let mut v = version("old");
        v.number = 1;
        KeySetState::create("prod/api".parse().unwrap(), v)
    }

    fn staged() -> KeySetState {
        stage(&steady(), version("new"), false, SystemTime::UNIX_EPOCH).unwrap()
    }

    fn promoted() -> KeySetState {
        apply(
            &staged(),
            Command::Promote,
            RetireGate::default(),
            SystemTime::UNIX_EPOCH,
        )
        .unwrap()
    }

    /// Retired, on the evidence of one user of the new key.
    fn retired() -> KeySetState {
        apply(
            &promoted(),
            Command::Retire,
            RetireGate {
                users: 1,
                ..Default::default()
            },
            SystemTime::UNIX_EPOCH,
        )
        .unwrap()
    }

    fn memory() -> Memory {
        Memory {
            trigger: Trigger::Manual,
            until: Until::Retired,
            new_version: None,
            rolled_back: false,
            validated: None,
            fleet: false,
            cancel: false,
        }
    }

    fn with_new() -> Memory {
        Memory {
            new_version: Some(2),
            ..memory()
        }
    }

    fn seen() -> Observed {
        Observed {
            propagation_limit: Duration::from_secs(30),
            fleet_limit: Duration::from_secs(120),
            quorum: 1,
            failure_threshold: 3,
            evidence_quorum: 1,
            ..Default::default()
        }
    }

    /// What `a`, a wait at `want`, says; panics otherwise.
    fn wait_text(a: Action, want: Gate) -> String {
        match a {
            Action::Wait { gate, why } if gate == want => why,
            other => panic!("not a wait at {want:?}: {other:?}"),
        }
    }

    /// With `seen` and 3 failures from a reporter on top, a promoted key's
    /// job rolls back.
    fn rolls_back_on_failures(seen: Observed) {
        let failing = Observed {
            failures: 3,
            reporters: 1,
            ..seen
        };
        assert!(matches!(
            next(&with_new(), Some(&promoted()), &failing),
            Action::Rollback { .. }
        ));
    }

    fn is_wait(a: &Action, want: Gate) -> bool {
        matches!(a, Action::Wait { gate, .. } if *gate == want)
    }

    #[test]
    fn the_whole_sequence() {
        assert_eq!(next(&memory(), Some(&steady()), &seen()), Action::Stage);
        let lagging = Observed {
            lagging: vec!["uid 1 pid 2".into()],
            ..seen()
        };
        assert!(is_wait(
            &next(&with_new(), Some(&staged()), &lagging),
            Gate::Propagation
        ));
        assert_eq!(next(&with_new(), Some(&staged()), &seen()), Action::Promote);
        let in_grace = Observed {
            grace_left: Duration::from_secs(5),
            ..seen()
        };
        assert!(is_wait(&next(&with_new(), Some(&promoted()), &in_grace), Gate::Grace));
        let used = Observed { users: 1, ..seen() };
        assert_eq!(next(&with_new(), Some(&promoted()), &used), Action::Retire);
        let retired = retired();
        assert!(matches!(
            next(&with_new(), Some(&retired), &seen()),
            Action::Finish {
                result: JobResult::Ok,
                ..
            }
        ));
    }

    /// A fleet member whose reports cannot all be counted holds the
    /// retire once the grace is over, with evidence in hand; failures
    /// still roll back meanwhile.
    #[test]
    fn an_incomplete_member_holds_the_retire_but_not_a_rollback() {
        let behind = Observed {
            users: 1,
            members_incomplete: vec!["agent host-b published reports about it and its status is now missing".into()],
            ..seen()
        };
        let a = next(&with_new(), Some(&promoted()), &behind);
        let why = wait_text(a, Gate::Members);
        assert!(why.contains("host-b") && why.contains("retire --force"), "{why}");
        let in_grace = Observed {
            grace_left: Duration::from_secs(5),
            ..behind.clone()
        };
        assert!(is_wait(&next(&with_new(), Some(&promoted()), &in_grace), Gate::Grace));
        rolls_back_on_failures(behind);
    }

    /// The case that retired on silence: nobody reports, no validator.
    #[test]
    fn no_evidence_never_retires() {
        let quiet = Observed {
            unreported: vec!["uid 1001 (a.service)".into()],
            ..seen()
        };
        let a = next(&with_new(), Some(&promoted()), &quiet);
        let why = wait_text(a, Gate::Evidence);
        assert!(
            why.contains("uid 1001 (a.service)") && why.contains("Both keys stay valid"),
            "{why}"
        );
        // Below the evidence quorum, still no.
        let one = Observed {
            users: 1,
            evidence_quorum: 2,
            ..seen()
        };
        assert!(is_wait(&next(&with_new(), Some(&promoted()), &one), Gate::Evidence));
        // Failures while waiting roll back.
        rolls_back_on_failures(quiet);
    }

    #[test]
    fn the_validator_after_promotion_decides_without_reports() {
        let v = Observed {
            has_validator: true,
            ..seen()
        };
        assert_eq!(next(&with_new(), Some(&promoted()), &v), Action::Validate);
        let ok = Memory {
            validated: Some(true),
            ..with_new()
        };
        assert_eq!(next(&ok, Some(&promoted()), &v), Action::Retire);
        let refused = Memory {
            validated: Some(false),
            ..with_new()
        };
        assert!(matches!(next(&refused, Some(&promoted()), &v), Action::Rollback { .. }));
    }

    #[test]
    fn rollback_then_manual_stops_and_schedule_drops_the_key() {
        let back = apply(
            &promoted(),
            Command::Rollback,
            RetireGate::default(),
            SystemTime::UNIX_EPOCH,
        )
        .unwrap();
        let rolled = Memory {
            rolled_back: true,
            ..with_new()
        };
        assert!(matches!(
            next(&rolled, Some(&back), &seen()),
            Action::Finish {
                result: JobResult::RolledBack,
                ..
            }
        ));
        let scheduled = Memory {
            trigger: Trigger::Schedule,
            ..rolled.clone()
        };
        assert_eq!(next(&scheduled, Some(&back), &seen()), Action::Abort);
        let aborted = apply(&back, Command::Abort, RetireGate::default(), SystemTime::UNIX_EPOCH).unwrap();
        assert!(matches!(
            next(&scheduled, Some(&aborted), &seen()),
            Action::Finish {
                result: JobResult::RolledBack,
                ..
            }
        ));
    }

    #[test]
    fn changes_by_hand_and_cancel_end_the_job_without_a_step() {
        // Someone replaced the staged key, or aborted it.
        let mut other = with_new();
        other.new_version = Some(7);
        for state in [staged(), promoted(), steady()] {
            let a = next(&other, Some(&state), &seen());
            assert!(
                matches!(
                    a,
                    Action::Finish {
                        result: JobResult::Failed,
                        ..
                    }
                ),
                "{a:?}"
            );
        }
        let cancelled = Memory {
            cancel: true,
            ..with_new()
        };
        let a = next(&cancelled, Some(&promoted()), &seen());
        let Action::Finish {
            result: JobResult::Cancelled,
            message,
        } = a
        else {
            panic!("{a:?}")
        };
        assert!(
            message.contains("stays promoted") && message.contains("keyward retire"),
            "{message}"
        );
        assert!(matches!(
            next(&with_new(), None, &seen()),
            Action::Finish {
                result: JobResult::Failed,
                ..
            }
        ));
    }

    #[test]
    fn propagation_fails_only_past_its_limit_and_until_stops() {
        let late = Observed {
            lagging: vec!["uid 1 pid 2".into()],
            waited: Duration::from_secs(31),
            ..seen()
        };
        let a = next(&with_new(), Some(&staged()), &late);
        let Action::Finish {
            result: JobResult::Failed,
            message,
        } = a
        else {
            panic!("{a:?}")
        };
        assert!(
            message.contains("stays staged") && message.contains("uid 1 pid 2"),
            "{message}"
        );
        let staged_only = Memory {
            until: Until::Staged,
            ..with_new()
        };
        assert!(matches!(
            next(&staged_only, Some(&staged()), &seen()),
            Action::Finish {
                result: JobResult::Ok,
                ..
            }
        ));
        let fleet = Memory {
            fleet: true,
            ..with_new()
        };
        let behind = Observed {
            fleet_lagging: vec!["host-b".into()],
            ..seen()
        };
        assert!(is_wait(&next(&fleet, Some(&staged()), &behind), Gate::Fleet));
        assert!(is_wait(&next(&fleet, Some(&promoted()), &behind), Gate::Fleet));
        // After the retire too: done once every live agent has it.
        let retired = retired();
        assert!(is_wait(&next(&fleet, Some(&retired), &behind), Gate::Fleet));
        assert!(matches!(
            next(&fleet, Some(&retired), &seen()),
            Action::Finish {
                result: JobResult::Ok,
                ..
            }
        ));
    }
}
