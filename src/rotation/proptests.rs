//! Property tests of the rotation state machine against a model (issue 7).
//!
//! Random sequences of stage, promote, rollback, abort, retire (with and
//! without force, failures and grace), put (an explicit overwrite,
//! [`KeySetState::overwrite`]) and clock ticks run on the real pure
//! functions and on a small model that keeps only version numbers. After
//! every command they must agree on what was accepted, the state, the
//! primary, the fallback and the history; and the invariants of the module
//! docs must hold: a refused order changes nothing, the generation grows by
//! exactly one per accepted order and never goes backwards, version numbers
//! are never reused, the serving primary is never dropped by a rotation
//! command, each version keeps its own secret, the history stays bounded.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use proptest::prelude::*;

use super::*;
use crate::secret::{KeyRef, Secret};

/// Sequences per property.
const CASES: u32 = 512;
/// Longest sequence; long enough to overflow the history (32) now and then.
const MAX_STEPS: usize = 120;

#[derive(Clone, Copy, Debug)]
enum Op {
    Stage { replace: bool },
    Promote,
    Rollback,
    Abort,
    Retire { force: bool, failures: u64 },
    Put,
    Tick { secs: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any::<bool>().prop_map(|replace| Op::Stage { replace }),
        3 => Just(Op::Promote),
        2 => Just(Op::Rollback),
        2 => Just(Op::Abort),
        3 => (any::<bool>(), prop_oneof![3 => Just(0u64), 1 => 1u64..5])
            .prop_map(|(force, failures)| Op::Retire { force, failures }),
        1 => Just(Op::Put),
        2 => (0u64..40).prop_map(|secs| Op::Tick { secs }),
    ]
}

/// The model: version numbers only, plus when each was created and last
/// promoted (for retire's grace).
#[derive(Clone, Debug, PartialEq)]
struct Model {
    state: RotationState,
    generation: u64,
    primary: u64,
    fallback: Option<u64>,
    /// Dropped versions, newest first.
    history: Vec<u64>,
    /// Highest version number ever used.
    max_version: u64,
    /// Per version: (created, last promoted), in seconds since the epoch.
    times: BTreeMap<u64, (u64, Option<u64>)>,
}

impl Model {
    fn new(now: u64) -> Model {
        Model {
            state: RotationState::Steady,
            generation: 1,
            primary: 1,
            fallback: None,
            history: Vec::new(),
            max_version: 1,
            times: BTreeMap::from([(1, (now, None))]),
        }
    }

    fn drop_version(&mut self, n: u64) {
        self.history.insert(0, n);
        self.history.truncate(HISTORY_LIMIT);
    }

    /// Applies `op` at `now`; false when the real machine must refuse it.
    fn apply(&mut self, op: Op, now: u64, grace: u64) -> bool {
        use RotationState::*;
        match (op, self.state) {
            (Op::Stage { .. }, Steady) | (Op::Stage { replace: true }, Staged) => {
                if self.state == Staged {
                    let old = self.fallback.unwrap();
                    self.drop_version(old);
                }
                self.max_version += 1;
                self.fallback = Some(self.max_version);
                self.times.insert(self.max_version, (now, None));
                self.state = Staged;
            }
            (Op::Promote, Staged) => {
                let new = self.fallback.replace(self.primary).unwrap();
                self.primary = new;
                self.times.get_mut(&new).unwrap().1 = Some(now);
                self.state = Promoted;
            }
            (Op::Rollback, Promoted) => {
                let old = self.fallback.replace(self.primary).unwrap();
                self.primary = old;
                self.state = Staged;
            }
            (Op::Abort, Staged) => {
                let staged = self.fallback.take().unwrap();
                self.drop_version(staged);
                self.state = Steady;
            }
            (Op::Retire { force, failures }, Promoted) => {
                let (created, promoted) = self.times[&self.primary];
                let since = promoted.unwrap_or(created);
                let open = failures == 0 && now.saturating_sub(since) >= grace;
                if !(force || open) {
                    return false;
                }
                let old = self.fallback.take().unwrap();
                self.drop_version(old);
                self.state = Steady;
            }
            (Op::Put, Steady) => {
                // Overwrite: primary then fallback go to the front of the
                // history, in that order.
                let mut dropped = vec![self.primary];
                dropped.extend(self.fallback.take());
                dropped.append(&mut self.history);
                dropped.truncate(HISTORY_LIMIT);
                self.history = dropped;
                self.max_version += 1;
                self.primary = self.max_version;
                self.times.insert(self.max_version, (now, None));
                self.state = Steady;
            }
            (Op::Tick { .. }, _) => return true,
            _ => return false,
        }
        self.generation += 1;
        true
    }
}

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

/// A version whose secret names the number it is expected to get, so a
/// secret that ends up under another number is caught.
fn version(number_expected: u64, now: u64) -> Version {
    Version {
        number: 0,
        secret: Secret::copy_from(format!("sk_v{number_expected}").as_bytes()),
        fingerprint: format!("fp{number_expected}"),
        created_at: at(now),
        expires_at: None,
        promoted_at: None,
    }
}

/// Runs `op` on the real machine.
fn run(state: &KeySetState, op: Op, now: u64, grace: u64) -> Option<Result<KeySetState, RotationError>> {
    let gate = |force, failures| RetireGate {
        grace: Duration::from_secs(grace),
        failures_since_promotion: failures,
        reporters: u64::from(failures > 0),
        quorum: 1,
        reported_by: "",
        force,
        promoted_ago: None,
        // Evidence is tested on its own (rotation::tests); here use was
        // always reported.
        users: 1,
        evidence_quorum: 1,
        validated: false,
        // The fleet's members are tested on their own too.
        members_incomplete: &[],
    };
    let next = state.max_version() + 1;
    Some(match op {
        Op::Stage { replace } => stage(state, version(next, now), replace, at(now)),
        Op::Promote => apply(state, Command::Promote, gate(false, 0), at(now)),
        Op::Rollback => apply(state, Command::Rollback, gate(false, 0), at(now)),
        Op::Abort => apply(state, Command::Abort, gate(false, 0), at(now)),
        Op::Retire { force, failures } => apply(state, Command::Retire, gate(force, failures), at(now)),
        Op::Put => overwrite(state, version(next, now), at(now)),
        Op::Tick { .. } => return None,
    })
}

/// The invariants every state must keep, whatever led to it.
fn check_invariants(s: &KeySetState) -> Result<(), TestCaseError> {
    prop_assert_eq!(s.fallback.is_none(), s.state == RotationState::Steady, "{:?}", s);
    for v in std::iter::once(&s.primary).chain(s.fallback.as_ref()) {
        let want = format!("sk_v{}", v.number);
        prop_assert_eq!(v.secret.expose_secret(), want.as_bytes());
        prop_assert_eq!(&v.fingerprint, &format!("fp{}", v.number));
    }
    let mut numbers: Vec<u64> = s.history.iter().map(|h| h.number).collect();
    numbers.push(s.primary.number);
    numbers.extend(s.fallback.as_ref().map(|f| f.number));
    let count = numbers.len();
    numbers.sort_unstable();
    numbers.dedup();
    prop_assert_eq!(numbers.len(), count, "a version number appears twice: {:?}", s);
    prop_assert!(s.history.len() <= HISTORY_LIMIT);
    prop_assert!(s.history.iter().all(|h| h.retired_at.is_some()));
    match s.state {
        RotationState::Promoted => prop_assert!(s.primary.promoted_at.is_some()),
        RotationState::Staged => prop_assert!(s.fallback.as_ref().unwrap().number != s.primary.number),
        RotationState::Steady => {}
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(crate::proptest_cases(CASES)))]

    #[test]
    fn random_command_sequences_follow_the_model(
        ops in prop::collection::vec(op(), 1..MAX_STEPS),
        grace in prop_oneof![Just(0u64), 1u64..120],
    ) {
        let mut now = 1_000;
        let key: KeyRef = "prod/billing-api".parse().unwrap();
        let mut state = KeySetState::create(key, Version { number: 1, ..version(1, now) });
        let mut model = Model::new(now);
        let mut seen = vec![1u64];
        let mut max_version = 1;
        for (step, op) in ops.into_iter().enumerate() {
            if let Op::Tick { secs } = op {
                now += secs;
                continue;
            }
            let accepted = model.apply(op, now, grace);
            let result = run(&state, op, now, grace).unwrap();
            match result {
                Ok(next) => {
                    prop_assert!(accepted, "step {}: {:?} accepted in {:?}", step, op, state);
                    prop_assert_eq!(next.generation, state.generation + 1, "step {}: {:?}", step, op);
                    let old_primary = state.primary.number;
                    let kept = next.primary.number == old_primary
                        || next.fallback.as_ref().is_some_and(|f| f.number == old_primary);
                    if !matches!(op, Op::Put) {
                        prop_assert!(kept, "step {}: {:?} dropped the serving primary v{}", step, op, old_primary);
                    }
                    if matches!(op, Op::Stage { .. } | Op::Put) {
                        let new = if matches!(op, Op::Put) { &next.primary } else { next.fallback.as_ref().unwrap() };
                        prop_assert!(!seen.contains(&new.number), "version {} reused", new.number);
                        seen.push(new.number);
                    }
                    state = next;
                }
                Err(e) => {
                    prop_assert!(!accepted, "step {}: {:?} refused in {:?}: {}", step, op, state, e);
                    let msg = e.to_string();
                    let explained = match &e {
                        RotationError::WrongState { state: s, .. } => {
                            msg.contains(s) && msg.contains("next step")
                        }
                        RotationError::GateClosed { .. } => {
                            msg.contains("--force") && (msg.contains("grace") || msg.contains("auth failure"))
                        }
                        RotationError::MidRotation { state: s, .. } => {
                            msg.contains(s) && msg.contains("nothing was changed")
                        }
                        RotationError::SameAsPrimary { .. } => msg.contains("same as its current primary"),
                    };
                    prop_assert!(explained, "{}", msg);
                    prop_assert!(!msg.contains("sk_v"), "a refusal shows a secret: {}", msg);
                }
            }
            prop_assert_eq!(state.generation, model.generation, "step {}: {:?}", step, op);
            prop_assert_eq!(state.state, model.state, "step {}: {:?}", step, op);
            prop_assert_eq!(state.primary.number, model.primary, "step {}: {:?}", step, op);
            prop_assert_eq!(state.fallback.as_ref().map(|f| f.number), model.fallback, "step {}: {:?}", step, op);
            let history: Vec<u64> = state.history.iter().map(|h| h.number).collect();
            prop_assert_eq!(&history, &model.history, "step {}: {:?}", step, op);
            prop_assert!(state.max_version() >= max_version, "the version counter went backwards");
            max_version = state.max_version();
            check_invariants(&state)?;
        }
    }
}
