//! The rotation state machine: pure functions over [`KeySetState`], no I/O.
//!
//! | from \ command | stage | promote | rollback | abort | retire |
//! |---|---|---|---|---|---|
//! | STEADY | → STAGED (new = fallback) | refused | refused | refused | refused |
//! | STAGED | refused (or replace the staged key when asked) | → PROMOTED | refused | → STEADY (new dropped) | refused |
//! | PROMOTED | refused | refused | → STAGED (old = primary again) | refused | → STEADY (old dropped), gated |
//!
//! Invariants: every transition bumps the generation by one; the version
//! serving as primary is never dropped by any command (abort drops the
//! staged fallback, retire the old fallback, and nothing else); version
//! numbers are never reused; dropped versions keep their metadata in the
//! bounded history. Retire is refused while its gate is closed (grace
//! period not over, auth failures reported against the new primary since
//! promotion, or no evidence that the new primary works) unless forced.

use std::time::{Duration, SystemTime};

pub mod plan;
pub mod schedule;

use crate::keyset::{KeySetState, RotationState, Version, VersionMeta, HISTORY_LIMIT};

/// A rotation command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Add a new key as the fallback.
    Stage,
    /// Make the staged key the primary.
    Promote,
    /// Make the old key the primary again.
    Rollback,
    /// Drop the staged key.
    Abort,
    /// Drop the old key after promotion.
    Retire,
}

impl Command {
    /// The command's name as the CLI spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Stage => "stage",
            Command::Promote => "promote",
            Command::Rollback => "rollback",
            Command::Abort => "abort",
            Command::Retire => "retire",
        }
    }

    /// Every command, for tables.
    pub const ALL: [Command; 5] = [
        Command::Stage,
        Command::Promote,
        Command::Rollback,
        Command::Abort,
        Command::Retire,
    ];
}

/// What retire checks before it drops the old key.
///
/// Auth failures reported against the new primary close the gate only when
/// `quorum` distinct reporters (uids, told apart by their verified unit or
/// program) reported them: one reader alone cannot keep a (possibly leaked)
/// old key alive unless it is the only one that may report.
#[derive(Clone, Copy, Debug, Default)]
pub struct RetireGate<'a> {
    /// How long after promotion the old key must be kept.
    pub grace: Duration,
    /// Auth failures reported against the current primary since it was
    /// promoted.
    pub failures_since_promotion: u64,
    /// How many distinct reporters sent them.
    pub reporters: u64,
    /// Distinct reporters that close the gate (0 counts as 1).
    pub quorum: u64,
    /// Who they are, for the message (e.g. "uid 1001 (billing.service)").
    pub reported_by: &'a str,
    /// Retire anyway (audited as forced).
    pub force: bool,
    /// Distinct callers served the primary that reported using it
    /// successfully.
    pub users: u64,
    /// How many such callers are evidence enough (0 counts as 1).
    pub evidence_quorum: u64,
    /// A validator run after the promotion accepted the primary.
    pub validated: bool,
    /// How long ago this process promoted the primary, on the monotonic
    /// clock. The grace is measured with it when known, so that a clock set
    /// right (or wrong) after the promotion neither ends it early nor
    /// stretches it; `None` (promoted before the process started) falls
    /// back to the stored wall-clock `promoted_at`.
    pub promoted_ago: Option<Duration>,
    /// Fleet mode: why what other members' callers reported cannot all be
    /// counted yet (a member that has counted for less than the grace, or
    /// whose status went missing), one text per member; empty when it can.
    pub members_incomplete: &'a [String],
}

/// Why a command was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RotationError {
    /// The command does not apply in this state.
    #[error("cannot {command} {key}: it is {state}; {next}")]
    WrongState {
        /// The key.
        key: String,
        /// The refused command.
        command: &'static str,
        /// Its state.
        state: &'static str,
        /// What to do instead.
        next: String,
    },
    /// Overwriting would replace the staged or old key of a rotation under
    /// way.
    #[error(
        "key {key} is mid-rotation ({state}): finish the rotation or abort it before overwriting; nothing was changed"
    )]
    MidRotation {
        /// The key.
        key: String,
        /// Its state.
        state: &'static str,
    },
    /// The new key is the one serving as primary.
    #[error(
        "the new key for {key} is the same as its current primary (fingerprint {fingerprint}): give a different key"
    )]
    SameAsPrimary {
        /// The key.
        key: String,
        /// The primary's fingerprint.
        fingerprint: String,
    },
    /// Retire's gate is closed.
    #[error("cannot retire the old key of {key} yet: {reason}; wait, investigate or roll back (`keyward rollback {key}`), or pass --force to retire anyway")]
    GateClosed {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
}

/// What to do next from `state`, for messages.
pub fn next_step(state: &KeySetState) -> String {
    let k = &state.key;
    match state.state {
        RotationState::Steady => format!("the next step is `keyward stage {k}` (or `keyward rotate {k}`)"),
        RotationState::Staged => {
            format!("the next step is `keyward promote {k}` (or drop the staged key with `keyward abort {k}`)")
        }
        RotationState::Promoted => {
            format!("the next step is `keyward retire {k}` (or go back with `keyward rollback {k}`)")
        }
    }
}

fn refuse(state: &KeySetState, command: Command) -> RotationError {
    RotationError::WrongState {
        key: state.key.to_string(),
        command: command.as_str(),
        state: state.state.as_str(),
        next: next_step(state),
    }
}

fn dropped(v: &Version, now: SystemTime) -> VersionMeta {
    VersionMeta {
        retired_at: Some(now),
        ..v.meta()
    }
}

fn push_history(history: &mut Vec<VersionMeta>, meta: VersionMeta) {
    history.insert(0, meta);
    history.truncate(HISTORY_LIMIT);
}

/// Whether a key in `state` may be staged (`replace`: its staged key
/// replaced), before anything is prepared for it.
pub fn may_stage(state: &KeySetState, replace: bool) -> Result<(), RotationError> {
    match state.state {
        RotationState::Steady => Ok(()),
        RotationState::Staged if replace => Ok(()),
        _ => Err(refuse(state, Command::Stage)),
    }
}

/// The key `new` may be staged for `state`: it is not the primary.
pub fn must_differ(state: &KeySetState, new_fingerprint: &str) -> Result<(), RotationError> {
    if new_fingerprint == state.primary.fingerprint {
        return Err(RotationError::SameAsPrimary {
            key: state.key.to_string(),
            fingerprint: new_fingerprint.to_owned(),
        });
    }
    Ok(())
}

/// Replaces both keys of `state` by `new` (`put --overwrite`, a raw secret
/// written to the key file): only while no rotation is under way, since it
/// would also replace the staged or the old key.
pub fn overwrite(state: &KeySetState, new: Version, now: SystemTime) -> Result<KeySetState, RotationError> {
    if state.state != RotationState::Steady {
        return Err(RotationError::MidRotation {
            key: state.key.to_string(),
            state: state.state.as_str(),
        });
    }
    Ok(state.overwrite(new, now))
}

/// Stages `new` as the fallback. `new.number` is replaced by the next free
/// version number. With `replace`, a key that is already staged gets its
/// staged key replaced (the old staged key goes to history).
pub fn stage(
    state: &KeySetState,
    mut new: Version,
    replace: bool,
    now: SystemTime,
) -> Result<KeySetState, RotationError> {
    may_stage(state, replace)?;
    must_differ(state, &new.fingerprint)?;
    let mut next = state.clone();
    if state.state == RotationState::Staged {
        if let Some(old_staged) = &state.fallback {
            push_history(&mut next.history, dropped(old_staged, now));
        }
    }
    new.number = state.max_version() + 1;
    new.promoted_at = None;
    next.fallback = Some(new);
    next.state = RotationState::Staged;
    next.generation += 1;
    Ok(next)
}

/// Applies promote, rollback, abort or retire.
pub fn apply(
    state: &KeySetState,
    command: Command,
    gate: RetireGate<'_>,
    now: SystemTime,
) -> Result<KeySetState, RotationError> {
    let mut next = state.clone();
    match (state.state, command, &state.fallback) {
        (RotationState::Staged, Command::Promote, Some(new)) => {
            let mut new = new.clone();
            new.promoted_at = Some(now);
            next.fallback = Some(state.primary.clone());
            next.primary = new;
            next.state = RotationState::Promoted;
        }
        (RotationState::Promoted, Command::Rollback, Some(old)) => {
            next.fallback = Some(state.primary.clone());
            next.primary = old.clone();
            next.state = RotationState::Staged;
        }
        (RotationState::Staged, Command::Abort, Some(staged)) => {
            push_history(&mut next.history, dropped(staged, now));
            next.fallback = None;
            next.state = RotationState::Steady;
        }
        (RotationState::Promoted, Command::Retire, Some(old)) => {
            if !gate.force {
                check_gate(state, gate, now)?;
            }
            push_history(&mut next.history, dropped(old, now));
            next.fallback = None;
            next.state = RotationState::Steady;
        }
        _ => return Err(refuse(state, command)),
    }
    next.generation += 1;
    Ok(next)
}

fn check_gate(state: &KeySetState, gate: RetireGate<'_>, now: SystemTime) -> Result<(), RotationError> {
    let closed = |reason: String| RotationError::GateClosed {
        key: state.key.to_string(),
        reason,
    };
    if failures_close(&gate) {
        return Err(closed(format!(
            "{} auth failure(s) were reported against the new primary v{} since it was promoted, by {} distinct reporter(s) (quorum {}): {}",
            gate.failures_since_promotion,
            state.primary.number,
            gate.reporters,
            gate.quorum.max(1),
            gate.reported_by
        )));
    }
    let elapsed = since_promotion(state, gate.promoted_ago, now);
    if elapsed < gate.grace {
        let left = gate.grace - elapsed;
        return Err(closed(format!(
            "the grace period after promotion has {} left (grace {})",
            humantime::format_duration(Duration::from_secs(left.as_secs().max(1))),
            humantime::format_duration(gate.grace)
        )));
    }
    if !gate.members_incomplete.is_empty() {
        return Err(closed(format!(
            "not every fleet agent's reports about the new primary v{} can be counted yet: {}. Retire once they can, or with `--force` to retire without them",
            state.primary.number,
            gate.members_incomplete.join("; ")
        )));
    }
    if !has_evidence(&gate) {
        return Err(closed(format!(
            "nothing shows that the new primary v{} works: use reported by {} of {} caller(s) needed (client libraries report it), and no validator accepted it after promotion (`keyward rotate {}` runs the validator); retiring now could leave every consumer with a refused key",
            state.primary.number,
            gate.users,
            gate.evidence_quorum.max(1),
            state.key
        )));
    }
    Ok(())
}

/// Whether the gate has evidence that the new primary works: use reported
/// by the quorum of callers served it, or the validator's acceptance after
/// promotion.
pub fn has_evidence(gate: &RetireGate<'_>) -> bool {
    gate.validated || gate.users >= gate.evidence_quorum.max(1)
}

/// Whether the reported failures close the gate: some, from at least the
/// quorum of distinct reporters.
pub fn failures_close(gate: &RetireGate<'_>) -> bool {
    gate.failures_since_promotion > 0 && gate.reporters >= gate.quorum.max(1)
}

/// How long the primary has served: `promoted_ago` when this process saw
/// the promotion, else by the wall clock since `promoted_at` (zero if that
/// is in the future).
fn since_promotion(state: &KeySetState, promoted_ago: Option<Duration>, now: SystemTime) -> Duration {
    promoted_ago.unwrap_or_else(|| {
        let promoted = state.primary.promoted_at.unwrap_or(state.primary.created_at);
        now.duration_since(promoted).unwrap_or_default()
    })
}

/// Grace left before retire is allowed (zero when it is), measured as in
/// [`RetireGate::promoted_ago`].
pub fn grace_left(state: &KeySetState, gate: &RetireGate<'_>, now: SystemTime) -> Duration {
    if state.state != RotationState::Promoted {
        return Duration::ZERO;
    }
    gate.grace
        .saturating_sub(since_promotion(state, gate.promoted_ago, now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn version(n: u64, s: &str) -> Version {
        Version {
            number: n,
            secret: Secret::copy_from(s.as_bytes()),
            fingerprint: format!("fp-{s}"),
            created_at: SystemTime::UNIX_EPOCH,
            expires_at: None,
            promoted_at: None,
        }
    }

    #[test]
    fn stage_and_overwrite_rules() {
        // (state, replace) → may stage
        let staged = stage(&steady(), version(0, "new"), false, SystemTime::UNIX_EPOCH).unwrap();
        let promoted = apply(&staged, Command::Promote, RetireGate::default(), SystemTime::UNIX_EPOCH).unwrap();
        let cases = [
            (&steady(), false, true),
            (&steady(), true, true),
            (&staged, false, false),
            (&staged, true, true),
            (&promoted, false, false),
            (&promoted, true, false),
        ];
        for (state, replace, want) in cases {
            assert_eq!(
                may_stage(state, replace).is_ok(),
                want,
                "{:?} replace {replace}",
                state.state
            );
        }
        // The new key must not be the primary, in any state.
        for state in [&steady(), &staged, &promoted] {
            let same = version(0, "x");
            let same = Version {
                fingerprint: state.primary.fingerprint.clone(),
                ..same
            };
            let e = must_differ(state, &same.fingerprint).unwrap_err();
            assert!(e.to_string().contains("same as its current primary"), "{e}");
            assert!(must_differ(state, "fp-other").is_ok());
            assert!(stage(state, same, true, SystemTime::UNIX_EPOCH).is_err());
        }
        // Overwrite only while steady: mid-rotation it would drop a key.
        assert!(overwrite(&steady(), version(0, "x"), SystemTime::UNIX_EPOCH).is_ok());
        for state in [&staged, &promoted] {
            let e = overwrite(state, version(0, "x"), SystemTime::UNIX_EPOCH).unwrap_err();
            assert!(matches!(e, RotationError::MidRotation { .. }), "{e}");
            assert!(e.to_string().contains("nothing was changed"), "{e}");
        }
    }

    fn steady() -> KeySetState {
        KeySetState::create("prod/api".parse().unwrap(), version(1, "old"))
    }

    fn staged() -> KeySetState {
        stage(&steady(), version(0, "new"), false, SystemTime::UNIX_EPOCH).unwrap()
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

    fn secret_of(v: &Version) -> &[u8] {
        v.secret.expose_secret()
    }

    /// A gate with evidence and nothing else: retire passes it.
    fn used() -> RetireGate<'static> {
        RetireGate {
            users: 1,
            ..Default::default()
        }
    }

    fn run(state: &KeySetState, command: Command) -> Result<KeySetState, RotationError> {
        match command {
            Command::Stage => stage(state, version(0, "newer"), false, SystemTime::UNIX_EPOCH),
            c => apply(state, c, used(), SystemTime::UNIX_EPOCH),
        }
    }

    /// Every (state, command) pair: the resulting state, or refusal.
    #[test]
    fn transition_table() {
        use RotationState::*;
        let table: [(KeySetState, [Option<RotationState>; 5]); 3] = [
            (steady(), [Some(Staged), None, None, None, None]),
            (staged(), [None, Some(Promoted), None, Some(Steady), None]),
            (promoted(), [None, None, Some(Staged), None, Some(Steady)]),
        ];
        for (from, expected) in table {
            for (command, want) in Command::ALL.into_iter().zip(expected) {
                let got = run(&from, command);
                match want {
                    Some(to) => {
                        let next = got.unwrap_or_else(|e| panic!("{:?} {command:?}: {e}", from.state));
                        assert_eq!(next.state, to, "{:?} {command:?}", from.state);
                        assert_eq!(next.generation, from.generation + 1);
                    }
                    None => {
                        let err = got
                            .err()
                            .unwrap_or_else(|| panic!("{:?} {command:?} must be refused", from.state));
                        let msg = err.to_string();
                        assert!(msg.contains(from.state.as_str()) && msg.contains("next step"), "{msg}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_safe_sequence_moves_the_right_keys() {
        let s = staged();
        assert_eq!(
            (secret_of(&s.primary), s.fallback.as_ref().map(secret_of)),
            (&b"old"[..], Some(&b"new"[..]))
        );
        assert_eq!(s.fallback.as_ref().unwrap().number, 2);
        let p = promoted();
        assert_eq!(
            (secret_of(&p.primary), p.fallback.as_ref().map(secret_of)),
            (&b"new"[..], Some(&b"old"[..]))
        );
        assert!(p.primary.promoted_at.is_some());
        let back = apply(&p, Command::Rollback, RetireGate::default(), SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(
            (secret_of(&back.primary), back.fallback.as_ref().map(secret_of)),
            (&b"old"[..], Some(&b"new"[..]))
        );
        let retired = apply(&p, Command::Retire, used(), SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(secret_of(&retired.primary), b"new");
        assert!(retired.fallback.is_none());
        assert_eq!(retired.history[0].number, 1);
        assert!(retired.history[0].retired_at.is_some());
        let aborted = apply(&s, Command::Abort, RetireGate::default(), SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(secret_of(&aborted.primary), b"old");
        assert_eq!(aborted.history[0].number, 2);
    }

    #[test]
    fn staging_again_needs_replace_and_uses_a_fresh_number() {
        let s = staged();
        assert!(stage(&s, version(0, "x"), false, SystemTime::UNIX_EPOCH).is_err());
        let r = stage(&s, version(0, "x"), true, SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(r.fallback.as_ref().unwrap().number, 3);
        assert_eq!(secret_of(&r.primary), b"old");
        assert_eq!(r.history[0].number, 2);
        assert!(stage(&promoted(), version(0, "x"), true, SystemTime::UNIX_EPOCH).is_err());
    }

    #[test]
    fn retire_gate_grace_and_failures_and_force() {
        let promoted_at = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let p = apply(&staged(), Command::Promote, RetireGate::default(), promoted_at).unwrap();
        let gate = RetireGate {
            grace: Duration::from_secs(60),
            ..used()
        };
        let early = apply(&p, Command::Retire, gate, promoted_at + Duration::from_secs(10)).unwrap_err();
        assert!(early.to_string().contains("grace period"), "{early}");
        assert_eq!(
            grace_left(&p, &gate, promoted_at + Duration::from_secs(10)),
            Duration::from_secs(50)
        );
        // Seen by this process, the monotonic age decides, whatever the
        // wall clock says: set right an hour later, it does not end the
        // grace; set back, it does not stretch it.
        let seen = |ago: u64| RetireGate {
            promoted_ago: Some(Duration::from_secs(ago)),
            ..gate
        };
        let hour_later = promoted_at + Duration::from_secs(3600);
        assert!(apply(&p, Command::Retire, seen(10), hour_later).is_err());
        assert_eq!(grace_left(&p, &seen(10), hour_later), Duration::from_secs(50));
        apply(&p, Command::Retire, seen(61), promoted_at - Duration::from_secs(3600)).unwrap();
        apply(&p, Command::Retire, gate, promoted_at + Duration::from_secs(61)).unwrap();
        let failing = RetireGate {
            failures_since_promotion: 3,
            reporters: 2,
            quorum: 2,
            reported_by: "uid 1001 (a.service), uid 1002",
            ..gate
        };
        let e = apply(&p, Command::Retire, failing, promoted_at + Duration::from_secs(600)).unwrap_err();
        assert!(
            e.to_string().contains("3 auth failure") && e.to_string().contains("uid 1001 (a.service), uid 1002"),
            "{e}"
        );
        let forced = RetireGate { force: true, ..failing };
        apply(&p, Command::Retire, forced, promoted_at).unwrap();
        // Below the quorum, failures do not hold the old key.
        let one = RetireGate {
            reporters: 1,
            ..failing
        };
        apply(&p, Command::Retire, one, promoted_at + Duration::from_secs(600)).unwrap();
        // A quorum of 0 means 1: failures from anyone hold it.
        let any = RetireGate { quorum: 0, ..one };
        assert!(apply(&p, Command::Retire, any, promoted_at + Duration::from_secs(600)).is_err());
    }

    /// Fleet mode: a member whose callers' reports cannot all be counted
    /// holds the retire (named), after the grace and before the evidence;
    /// force opens it, and without such members the gate is as before.
    #[test]
    fn retire_waits_for_members_whose_reports_are_incomplete() {
        let p = promoted();
        let incomplete = ["agent host-b has counted them for 3s of the 30s grace".to_owned()];
        let gate = RetireGate {
            members_incomplete: &incomplete,
            ..used()
        };
        let e = apply(&p, Command::Retire, gate, SystemTime::now()).unwrap_err();
        assert!(
            e.to_string().contains("host-b has counted them for 3s") && e.to_string().contains("--force"),
            "{e}"
        );
        apply(
            &p,
            Command::Retire,
            RetireGate { force: true, ..gate },
            SystemTime::now(),
        )
        .unwrap();
        apply(&p, Command::Retire, used(), SystemTime::now()).unwrap();
    }

    /// Retire without evidence is refused however long ago the promotion
    /// was; the quorum, a validator's acceptance or force open it.
    #[test]
    fn retire_needs_evidence_that_the_new_primary_works() {
        let p = promoted();
        let silent = RetireGate::default();
        let e = apply(
            &p,
            Command::Retire,
            silent,
            SystemTime::UNIX_EPOCH + Duration::from_secs(86400),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("nothing shows that the new primary v2 works"),
            "{e}"
        );
        let short = RetireGate {
            users: 1,
            evidence_quorum: 2,
            ..silent
        };
        assert!(apply(&p, Command::Retire, short, SystemTime::UNIX_EPOCH).is_err());
        let two = RetireGate { users: 2, ..short };
        assert!(apply(&p, Command::Retire, two, SystemTime::UNIX_EPOCH).is_ok());
        let validated = RetireGate {
            validated: true,
            ..silent
        };
        assert!(apply(&p, Command::Retire, validated, SystemTime::UNIX_EPOCH).is_ok());
        let forced = RetireGate { force: true, ..silent };
        assert!(apply(&p, Command::Retire, forced, SystemTime::UNIX_EPOCH).is_ok());
    }

    /// Random command sequences (a deterministic generator, many seeds):
    /// the serving primary is never dropped, generations grow by one per
    /// accepted command, version numbers never repeat.
    #[test]
    fn random_sequences_never_drop_the_primary() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..2000 {
            let mut state = steady();
            let mut seen = vec![1u64];
            for _ in 0..40 {
                let command = Command::ALL[(rand() % 5) as usize];
                let replace = rand() % 2 == 0;
                let result = match command {
                    Command::Stage => stage(&state, version(0, "s"), replace, SystemTime::UNIX_EPOCH),
                    c => apply(&state, c, used(), SystemTime::UNIX_EPOCH),
                };
                let Ok(next) = result else { continue };
                assert_eq!(next.generation, state.generation + 1);
                // The old primary survives as primary or fallback, except
                // after promote+retire where the new primary replaced it.
                let old_primary = state.primary.number;
                let kept = next.primary.number == old_primary
                    || next.fallback.as_ref().is_some_and(|f| f.number == old_primary);
                assert!(kept, "{command:?} dropped the serving primary");
                if command == Command::Stage {
                    let n = next.fallback.as_ref().unwrap().number;
                    assert!(!seen.contains(&n), "version {n} reused");
                    seen.push(n);
                }
                assert!(next.history.len() <= HISTORY_LIMIT);
                state = next;
            }
        }
    }
}

#[cfg(test)]
mod proptests;
