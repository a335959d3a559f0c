//! Property tests of the name parser (issue 7, adversarial input).
//!
//! The rule `[a-z0-9][a-z0-9._-]{0,127}` is written a second time here, as
//! plainly as possible, and [`validate_name`] and `ENV/NAME` parsing must
//! agree with it on every string, valid or hostile, without panicking. What
//! the rule is *for* is checked too: an accepted name is always one plain
//! path component, so no name can reach outside the store directory.

use std::ffi::OsStr;
use std::path::{Component, Path};

use proptest::prelude::*;

use super::*;
use crate::wire::{FromWire, ToWire};

/// Cases per property: enough to hit every forbidden class many times
/// over, few enough to keep `cargo test --lib` quick.
const CASES: u32 = 1000;

/// The rule, spelled out independently of [`validate_name`].
fn model_valid(s: &str) -> bool {
    let b = s.as_bytes();
    let in_alphabet = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-');
    !b.is_empty()
        && b.len() <= MAX_NAME_LEN
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(in_alphabet)
}

/// A valid name.
fn valid_name() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9._-]{0,127}"
}

/// A character no name may contain, one per malformed class: separators,
/// NUL and control characters, uppercase, shell and glob metacharacters,
/// non-ASCII (including look-alikes and a right-to-left override).
fn forbidden_char() -> impl Strategy<Value = char> {
    prop_oneof![
        Just('/'),
        Just('\\'),
        Just('\0'),
        Just('\n'),
        Just('\r'),
        Just('\t'),
        Just(' '),
        Just(':'),
        Just('*'),
        Just('?'),
        Just('$'),
        Just('%'),
        Just('~'),
        Just('\u{7f}'),
        Just('é'),
        Just('ı'),
        Just('\u{2215}'), // division slash, looks like '/'
        Just('\u{ff0e}'), // fullwidth full stop, looks like '.'
        Just('\u{202e}'), // right-to-left override
        Just('😀'),
        proptest::char::range('A', 'Z'),
        proptest::char::range('\u{1}', '\u{1f}'),
        any::<char>().prop_filter("outside the name alphabet", |c| !c.is_ascii()),
    ]
}

/// Strings from a small alphabet weighted towards the edges of the rule
/// (dots, slashes, dashes, a few bad characters), so that near misses are
/// common.
fn near_miss() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            4 => proptest::char::range('a', 'c'),
            2 => Just('.'),
            2 => Just('/'),
            1 => Just('-'),
            1 => Just('_'),
            1 => Just('0'),
            1 => forbidden_char(),
        ],
        0..12,
    )
    .prop_map(|cs| cs.into_iter().collect())
}

/// True when `s` contains no character that would break a log line.
fn printable(s: &str) -> bool {
    !s.chars()
        .any(|c| c == '\0' || c == '\n' || c == '\r' || c == '\u{202e}')
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(crate::proptest_cases(CASES)))]

    /// Valid names round-trip through `KeyRef`, `Display`, `FromStr` and
    /// the wire form, and each is one plain path component.
    #[test]
    fn valid_names_round_trip(env in valid_name(), name in valid_name()) {
        let key = KeyRef::new(&env, &name).unwrap();
        let shown = key.to_string();
        prop_assert_eq!(&shown, &format!("{env}/{name}"));
        let parsed: KeyRef = shown.parse().unwrap();
        prop_assert_eq!(&parsed, &key);
        prop_assert_eq!(KeyRef::from_proto(Some(&key.to_proto())).unwrap(), key);
        for part in [&env, &name] {
            let file = format!("{part}.age");
            let components: Vec<Component<'_>> = Path::new(part.as_str()).components().collect();
            prop_assert_eq!(components, vec![Component::Normal(OsStr::new(part.as_str()))]);
            let file_components: Vec<Component<'_>> = Path::new(&file).components().collect();
            prop_assert_eq!(file_components, vec![Component::Normal(OsStr::new(file.as_str()))]);
        }
    }

    /// Any string at all: accepted exactly when the rule says so, never a
    /// panic, and an error message that escapes what it shows.
    #[test]
    fn any_string_is_judged_by_the_rule(s in any::<String>()) {
        check_name(&s)?;
    }

    /// Near misses: names built from the edges of the alphabet.
    #[test]
    fn near_misses_are_judged_by_the_rule(s in near_miss()) {
        check_name(&s)?;
    }

    /// A valid name with one forbidden character put anywhere is refused.
    #[test]
    fn one_forbidden_character_anywhere_is_refused(
        name in valid_name(),
        bad in forbidden_char(),
        at in any::<prop::sample::Index>(),
    ) {
        let mut chars: Vec<char> = name.chars().collect();
        chars.insert(at.index(chars.len() + 1), bad);
        let s: String = chars.into_iter().collect();
        prop_assert!(validate_name("key name", &s).is_err(), "{:?} accepted", s);
        prop_assert!(KeyRef::new("prod", &s).is_err());
        prop_assert!(KeyRef::new(&s, "x").is_err());
    }

    /// A name starting with '.', '_' or '-' is refused (no `.`, `..` or
    /// hidden temp-file names).
    #[test]
    fn a_bad_first_character_is_refused(first in "[._-]", rest in "[a-z0-9._-]{0,127}") {
        let s = format!("{first}{rest}");
        let err = validate_name("key name", &s).unwrap_err();
        prop_assert!(matches!(err, NameError::BadCharacter { .. }), "{:?}", err);
    }

    /// Over the length limit is refused, whatever the characters.
    #[test]
    fn too_long_is_refused(s in "[a-z0-9][a-z0-9._-]{128,400}") {
        let err = validate_name("key name", &s).unwrap_err();
        prop_assert_eq!(err, NameError::TooLong { what: "key name", len: s.len() });
    }

    /// `ENV/NAME` parsing of any string: accepted exactly when there is one
    /// '/' with a valid name on each side, and then it round-trips.
    #[test]
    fn env_slash_name_parsing_follows_the_rule(
        s in prop_oneof![any::<String>(), near_miss(), (valid_name(), valid_name()).prop_map(|(e, n)| format!("{e}/{n}"))],
    ) {
        let parts: Vec<&str> = s.split('/').collect();
        let want = parts.len() == 2 && model_valid(parts[0]) && model_valid(parts[1]);
        match s.parse::<KeyRef>() {
            Ok(k) => {
                prop_assert!(want, "{:?} accepted", s);
                prop_assert_eq!(k.to_string(), s);
            }
            Err(e) => {
                prop_assert!(!want, "{:?} refused: {}", s, e);
                let msg = e.to_string();
                prop_assert!(!msg.is_empty() && printable(&msg), "{:?}", msg);
            }
        }
    }
}

/// One string against the model; the refusal message must be non-empty and
/// safe to print on one log line.
fn check_name(s: &str) -> Result<(), TestCaseError> {
    let got = validate_name("key name", s);
    prop_assert_eq!(got.is_ok(), model_valid(s), "{:?}: {:?}", s, got);
    if let Err(e) = got {
        let msg = e.to_string();
        prop_assert!(!msg.is_empty() && printable(&msg), "{:?}", msg);
        prop_assert!(msg.contains("key name"), "{}", msg);
    }
    let wire = crate::proto::KeyRef {
        environment: "prod".to_owned(),
        name: s.to_owned(),
    };
    prop_assert_eq!(KeyRef::from_proto(Some(&wire)).is_ok(), model_valid(s));
    Ok(())
}
