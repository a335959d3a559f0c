//! `[rotation]` and `[[key]]`: defaults, precedence, hooks and thresholds.

use super::*;

#[test]
fn rotation_defaults() {
    let c = parse("").unwrap();
    assert_eq!(
        c.rotation_for(&"prod/billing-api".parse().unwrap()),
        KeyRotation {
            grace: Duration::from_secs(600),
            hook_timeout: Duration::from_secs(30),
            propagation_timeout: Duration::from_secs(30),
            failure_threshold: 3,
            report_quorum: 2,
            generator: None,
            validator: None,
            revoker: None,
            evidence_quorum: 1,
            schedule: None,
        }
    );
}

#[test]
fn rotation_for_precedence() {
    let c = parse(EXAMPLE).unwrap();
    let for_key = |k: &str| c.rotation_for(&k.parse().unwrap());
    let s = |secs| Duration::from_secs(secs);

    // The first [[key]] entry sets everything but propagation_timeout.
    let r = for_key("prod/billing-api");
    assert_eq!(
        (r.grace, r.hook_timeout, r.propagation_timeout, r.failure_threshold),
        (s(900), s(20), s(60), 5)
    );
    let generator = r.generator.unwrap();
    assert_eq!(generator.argv, ["/usr/local/bin/new-billing-key", "--env", "prod"]);
    assert!(generator
        .env
        .contains(&("KEYWARD_KEY".into(), "prod/billing-api".into())));
    assert_eq!(r.validator.unwrap().program(), "/usr/local/bin/check-billing-key");
    assert_eq!(r.revoker.unwrap().program(), "/usr/local/bin/revoke-billing-key");

    // Second entry: grace from [environments.prod], the rest from
    // [rotation], no hooks it does not name.
    let r = for_key("prod/billing-ledger");
    assert_eq!(
        (r.grace, r.hook_timeout, r.propagation_timeout, r.failure_threshold),
        (s(3600), s(45), s(10), 4)
    );
    assert_eq!((r.generator, r.validator), (None, None));
    let revoker = r.revoker.unwrap();
    assert_eq!(revoker.program(), "/usr/local/bin/revoke-generic");
    assert!(revoker.env.contains(&("KEYWARD_NAME".into(), "billing-ledger".into())));

    // Second entry in an environment without its own grace.
    let r = for_key("staging/crm-api");
    assert_eq!((r.grace, r.propagation_timeout), (s(300), s(10)));
    assert!(r.revoker.is_some());

    // No entry: the environment's grace, else [rotation].
    let r = for_key("prod/other");
    assert_eq!((r.grace, r.hook_timeout, r.revoker), (s(3600), s(45), None));
    let r = for_key("dev/other");
    assert_eq!(
        (r.grace, r.hook_timeout, r.propagation_timeout, r.failure_threshold),
        (s(300), s(45), s(60), 4)
    );

    // The first matching entry wins, even one that sets nothing.
    let c = parse(
        "[[key]]\nkeys = [\"prod/*\"]\n[[key]]\nkeys = [\"prod/a\"]\ngenerator = [\"/bin/gen\"]\ngrace = \"0s\"\n",
    )
    .unwrap();
    let r = c.rotation_for(&"prod/a".parse().unwrap());
    assert_eq!((r.generator, r.grace), (None, DEFAULT_GRACE));
    let r = c.rotation_for(&"dev/a".parse().unwrap());
    assert_eq!(r.generator, None);
}

#[test]
fn hook_paths_must_be_absolute() {
    let e = parse_err("[[key]]\nkeys = [\"prod/x\"]\n\nvalidator = [\"check-key\", \"--strict\"]\n");
    assert_has(
        &e,
        &[
            "validator in [[key]] at keyward.toml:4",
            "\"check-key\"",
            "absolute path",
            "root",
            "PATH",
        ],
    );
    let e = parse_err("[[key]]\nkeys = [\"prod/x\"]\nrevoker = [\n  \"./revoke\",\n]\n");
    assert_has(&e, &["revoker in [[key]] at keyward.toml:4", "absolute path"]);
    let e = parse_err("[[key]]\nkeys = [\"prod/x\"]\ngenerator = []\n");
    assert_has(
        &e,
        &[
            "generator in [[key]] at keyward.toml:3 is empty",
            "[\"/usr/local/bin/new-key\"",
        ],
    );
    let e = parse_err("[[key]]\nkeys = [\"prod/x\"]\ngenerator = \"/bin/gen --env prod\"\n");
    assert!(e.starts_with("keyward.toml:3:"), "{e}");
    let e = parse_err("[[key]]\nkeys = [\"prod/x\"]\ngenerator = [\"/bin/gen\",\n \"a\\u0000b\"]\n");
    assert_has(&e, &["keyward.toml:4", "NUL"]);
}

#[test]
fn key_entries_need_valid_keys() {
    let e = parse_err("lock_memory = true\n[[key]]\ngrace = \"1m\"\n");
    assert_has(&e, &["[[key]] at keyward.toml:2 names no keys", "keys = ["]);
    let e = parse_err("[[key]]\nkeys = []\n");
    assert_has(&e, &["keys = [] in [[key]] at keyward.toml:1 is empty"]);
    let e = parse_err("[[key]]\nkeys = [\n\"prd/x\"]\n");
    assert_has(
        &e,
        &[
            "key pattern \"prd/x\" in [[key]] at keyward.toml:3",
            "[environments.prd]",
        ],
    );
    let e = parse_err("[[key]]\nkeys = [\"prod\"]\n");
    assert_has(&e, &["[[key]] at keyward.toml:2", "ENV/NAME"]);
    let c = parse("[[key]]\nkeys = [\"q*/x\"]\n").unwrap();
    let w = c.warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert_has(&w[0], &["q*/x", "[[key]] at keyward.toml line 1"]);
}

#[test]
fn report_quorum_is_at_least_one() {
    let e = parse_err("[rotation]\nreport_quorum = 0\n");
    assert_has(&e, &["report_quorum at keyward.toml:2 is 0", "at least 1"]);
    let e = parse_err("[[key]]\nkeys = [\"dev/*\"]\nreport_quorum = 0\n");
    assert_has(&e, &["keyward.toml:3"]);
    let c = parse("[rotation]\nreport_quorum = 3\n[[key]]\nkeys = [\"dev/x\"]\nreport_quorum = 1\n").unwrap();
    assert_eq!(c.rotation_for(&"dev/x".parse().unwrap()).report_quorum, 1);
    assert_eq!(c.rotation_for(&"dev/y".parse().unwrap()).report_quorum, 3);
}

#[test]
fn rotation_durations_and_thresholds() {
    for (text, key, line) in [
        ("[rotation]\nhook_timeout = \"0s\"\n", "hook_timeout", 2),
        ("[rotation]\npropagation_timeout = \"0ms\"\n", "propagation_timeout", 2),
        (
            "[[key]]\nkeys = [\"dev/x\"]\nhook_timeout = \"0s\"\n",
            "hook_timeout",
            3,
        ),
        (
            "[[key]]\nkeys = [\"dev/x\"]\npropagation_timeout = \"0s\"\n",
            "propagation_timeout",
            3,
        ),
    ] {
        let e = parse_err(text);
        assert_has(&e, &[&format!("{key} at keyward.toml:{line} is zero"), "positive"]);
    }
    for text in [
        "[rotation]\nfailure_threshold = 0\n",
        "[[key]]\nkeys = [\"dev/x\"]\n\nfailure_threshold = 0\n",
    ] {
        let e = parse_err(text);
        assert_has(&e, &["failure_threshold at keyward.toml:", "is 0", "at least 1"]);
    }
    let e = parse_err("[rotation]\nfailure_threshold = -1\n");
    assert!(e.starts_with("keyward.toml:2:"), "{e}");
    for (text, line) in [
        ("[rotation]\ngrace = \"soon\"\n", 2),
        ("[environments.prod]\n\ngrace = \"1 fortnight\"\n", 3),
        ("[[key]]\nkeys = [\"dev/x\"]\ngrace = \"10\"\n", 3),
        ("[[key]]\nkeys = [\"dev/x\"]\nhook_timeout = \"x\"\n", 3),
    ] {
        let e = parse_err(text);
        assert_has(&e, &[&format!("keyward.toml:{line}"), "not a duration"]);
    }
    // A zero grace is allowed everywhere (tests rotate quickly).
    let c = parse(
        "[rotation]\ngrace = \"0s\"\n[environments.dev]\ngrace = \"0s\"\n[[key]]\nkeys = [\"dev/x\"]\ngrace = \"0s\"\n",
    )
    .unwrap();
    assert_eq!(c.rotation.defaults.grace, Duration::ZERO);
    assert_eq!(c.environments["dev"].grace, Some(Duration::ZERO));
    assert_eq!(c.rotation_for(&"dev/x".parse().unwrap()).grace, Duration::ZERO);
}

#[test]
fn schedules_resolve_per_key_then_environment_then_rotation() {
    let c = parse(
        "[rotation]\nevery = \"30d\"\njitter = \"1h\"\n[environments.prod]\nevery = \"7d\"\nwindow = \"Mon-Fri 09:00-16:00\"\n[environments.dev]\n[[key]]\nkeys = [\"prod/fast\"]\ngenerator = [\"/bin/gen\"]\nevery = \"1d\"\n[[key]]\nkeys = [\"prod/manual\"]\nevery = \"off\"\n",
    )
    .unwrap();
    let for_key = |k: &str| c.rotation_for(&k.parse().unwrap()).schedule;
    let fast = for_key("prod/fast").unwrap();
    assert_eq!(fast.every, Duration::from_secs(86400));
    assert_eq!(fast.window.unwrap().to_string(), "Mon-Fri 09:00-16:00");
    assert_eq!(fast.jitter, Duration::from_secs(3600));
    assert_eq!(for_key("prod/other").unwrap().every, Duration::from_secs(7 * 86400));
    assert_eq!(for_key("dev/x").unwrap().every, Duration::from_secs(30 * 86400));
    assert!(for_key("dev/x").unwrap().window.is_none());
    assert_eq!(for_key("prod/manual"), None, "every = \"off\" turns it off");
    // A schedule without a generator is named, key by key.
    let problem = c.schedule_problem(&"prod/other".parse().unwrap()).unwrap();
    assert!(
        problem.contains("prod/other") && problem.contains("generator"),
        "{problem}"
    );
    assert!(c.schedule_problem(&"prod/fast".parse().unwrap()).is_none());
    assert!(c.schedule_problem(&"prod/manual".parse().unwrap()).is_none());
}

#[test]
fn schedule_errors_name_what_is_wrong() {
    for (text, says) in [
        ("[[key]]\nkeys = [\"prod/a\"]\nevery = \"30d\"\n", "no generator"),
        ("[rotation]\nevery = \"soon\"\n", "every"),
        ("[rotation]\nevery = \"1d\"\nwindow = \"Mon-Fry\"\n", "not a day"),
        ("[rotation]\nevidence_quorum = 0\n", "evidence_quorum"),
    ] {
        let e = parse(text).unwrap_err().to_string();
        assert!(e.contains(says), "{text}: {e}");
    }
}
