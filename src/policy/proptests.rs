//! Property tests of the policy matcher (issue 7, adversarial input).
//!
//! A reference model written for clarity rather than speed (a recursive
//! glob matcher, selectors checked kind by kind) must agree with
//! [`KeyPattern::matches`], [`Grant::applies_to`] and [`Policy::grant_for`]
//! on random patterns, keys, grants and callers. Small alphabets keep
//! matches frequent, so both outcomes are exercised.

use std::path::PathBuf;

use proptest::prelude::*;

use super::*;

/// Cases per property.
const CASES: u32 = 1000;

/// `*` is any run of characters (possibly none), everything else literal.
fn model_glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|i| model_glob(rest, &text[i..])),
        Some((c, rest)) => text.first() == Some(c) && model_glob(rest, &text[1..]),
    }
}

/// One side of a pattern over a small alphabet (runs of `*` included).
fn glob_side() -> impl Strategy<Value = String> {
    "[ab0*][ab0*.-]{0,7}"
}

/// One side of a key over the same alphabet.
fn name_side() -> impl Strategy<Value = String> {
    "[ab0][ab0.-]{0,9}"
}

/// A caller's identity with small domains, so that grants often apply.
#[derive(Clone, Debug)]
struct Who {
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    /// The configured paths its image was verified to be.
    exes: Vec<PathBuf>,
    unit: Option<String>,
}

impl Who {
    fn principal(&self) -> Principal<'_> {
        Principal {
            uid: self.uid,
            gid: self.gid,
            groups: &self.groups,
            executables: &self.exes,
            unit: self.unit.as_deref().map(|name| Unit {
                name,
                cgroup: "/system.slice/x",
            }),
        }
    }
}

const EXES: [&str; 3] = ["/usr/bin/a", "/usr/bin/b", "/usr/bin/c"];
const UNITS: [&str; 3] = ["a.service", "b.service", "c.service"];

fn who() -> impl Strategy<Value = Who> {
    (
        0u32..4,
        0u32..4,
        prop::collection::vec(0u32..4, 0..3),
        prop::collection::vec(prop::sample::select(&EXES[..]), 0..2),
        prop::option::of(prop::sample::select(&UNITS[..])),
    )
        .prop_map(|(uid, gid, groups, exes, unit)| Who {
            uid,
            gid,
            groups,
            exes: exes.into_iter().map(PathBuf::from).collect(),
            unit: unit.map(str::to_owned),
        })
}

fn grant(origin: usize) -> impl Strategy<Value = Grant> {
    (
        prop::collection::vec(0u32..4, 0..3),
        prop::collection::vec(0u32..4, 0..3),
        prop::collection::vec(prop::sample::select(&EXES[..2]), 0..2),
        prop::collection::vec(prop::sample::select(&UNITS[..2]), 0..2),
        prop::collection::vec((glob_side(), glob_side()), 1..3),
        any::<bool>(),
    )
        .prop_map(move |(uids, gids, exes, units, keys, report)| Grant {
            uids,
            gids,
            executables: exes.into_iter().map(PathBuf::from).collect(),
            units: units.into_iter().map(str::to_owned).collect(),
            keys: keys
                .iter()
                .map(|(e, n)| KeyPattern::parse(&format!("{e}/{n}")).expect("generated patterns are valid"))
                .collect(),
            report,
            origin: origin.to_string(),
        })
}

fn policy() -> impl Strategy<Value = Policy> {
    (0usize..5)
        .prop_flat_map(|n| (0..n).map(grant).collect::<Vec<_>>())
        .prop_map(Policy::new)
}

/// The selector rule, kind by kind: every listed kind must match, any value
/// within a kind will do, and a grant that lists neither uids nor groups
/// (no principal) applies to nobody on keys.sock.
fn model_applies(g: &Grant, w: &Who) -> bool {
    let kinds = [
        (!g.uids.is_empty()).then(|| g.uids.contains(&w.uid)),
        (!g.gids.is_empty()).then(|| g.gids.iter().any(|x| *x == w.gid || w.groups.contains(x))),
        (!g.executables.is_empty()).then(|| g.executables.iter().any(|e| w.exes.contains(e))),
        (!g.units.is_empty()).then(|| w.unit.as_ref().is_some_and(|u| g.units.contains(u))),
    ];
    (kinds[0].is_some() || kinds[1].is_some()) && kinds.iter().flatten().all(|ok| *ok)
}

fn model_covers(g: &Grant, key: &KeyRef) -> bool {
    g.keys.iter().any(|p| {
        model_glob(p.env_glob().as_bytes(), key.env().as_bytes())
            && model_glob(p.name_glob().as_bytes(), key.name().as_bytes())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(crate::proptest_cases(CASES)))]

    /// A pattern matches a key exactly when the model says so, before and
    /// after a Display/parse round trip (which collapses `**`).
    #[test]
    fn pattern_matches_iff_the_model_does(
        pe in glob_side(), pn in glob_side(), ke in name_side(), kn in name_side(),
    ) {
        let pattern = KeyPattern::parse(&format!("{pe}/{pn}")).unwrap();
        let key = KeyRef::new(&ke, &kn).unwrap();
        let want = model_glob(pe.as_bytes(), ke.as_bytes()) && model_glob(pn.as_bytes(), kn.as_bytes());
        prop_assert_eq!(pattern.matches(&key), want, "{} vs {}", pattern, key);
        let again = KeyPattern::parse(&pattern.to_string()).unwrap();
        prop_assert_eq!(&again, &pattern);
        prop_assert_eq!(again.matches(&key), want);
        prop_assert_eq!(pattern.matches_env(&ke), model_glob(pe.as_bytes(), ke.as_bytes()));
        prop_assert_eq!(pattern.literal_env().is_some(), !pe.contains('*'));
    }

    /// A literal pattern (no `*`) matches only its own key.
    #[test]
    fn literal_pattern_matches_only_itself(ke in name_side(), kn in name_side(), oe in name_side(), on in name_side()) {
        let pattern = KeyPattern::parse(&format!("{ke}/{kn}")).unwrap();
        let other = KeyRef::new(&oe, &on).unwrap();
        prop_assert_eq!(pattern.matches(&other), oe == ke && on == kn);
    }

    /// Pattern parsing of any string never panics; what it accepts
    /// round-trips, what it refuses is explained with the input escaped.
    #[test]
    fn pattern_parse_of_any_string(s in prop_oneof![any::<String>(), "[ab*/.A? -]{0,12}"]) {
        match KeyPattern::parse(&s) {
            Ok(p) => {
                prop_assert_eq!(s.matches('/').count(), 1);
                prop_assert_eq!(KeyPattern::parse(&p.to_string()).unwrap(), p);
            }
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(msg.contains(&format!("{s:?}")), "{}", msg);
                prop_assert!(!msg.contains('\n') && !msg.contains('\0'), "{:?}", msg);
            }
        }
    }

    /// A grant applies to a caller exactly when the selector model says so.
    #[test]
    fn grant_applies_iff_the_model_does(g in grant(0), w in who()) {
        prop_assert_eq!(g.applies_to(&w.principal()), model_applies(&g, &w), "{:?} vs {:?}", g, w);
    }

    /// The policy lets a caller read a key exactly when some grant applies
    /// and covers it, and reports the first such grant in file order.
    #[test]
    fn policy_allows_iff_the_model_does(p in policy(), w in who(), ke in name_side(), kn in name_side()) {
        let key = KeyRef::new(&ke, &kn).unwrap();
        let want = p.grants.iter().position(|g| model_applies(g, &w) && model_covers(g, &key));
        // Each grant's origin is its index in the policy.
        let got = p.grant_for(&w.principal(), &key).map(|g| g.origin.parse::<usize>().unwrap());
        prop_assert_eq!(got, want, "{:?} {:?} {}", p, w, key);
        prop_assert_eq!(p.allows(&w.principal(), &key), want.is_some());
    }
}
