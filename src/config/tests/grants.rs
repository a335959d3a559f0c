//! `[[grant]]` and `[environments]`: names resolved, selectors and key patterns checked, warnings.

use super::*;

#[test]
fn environments_are_validated() {
    let c = parse("[environments.qa]\n").unwrap();
    assert_eq!(c.environments.keys().collect::<Vec<_>>(), ["qa"]);
    let e = parse_err("lock_memory = true\n[environments.Prod]\n");
    assert_has(&e, &["keyward.toml:2", "lowercase"]);
    let e = parse_err("[environments]\n");
    assert_has(&e, &["keyward.toml:1", "no environment"]);
    let e = parse_err("[environments.dev]\non_audit_failure = \"fail-opn\"\n");
    assert_has(&e, &["keyward.toml:2:", "fail-open"]);
}

#[test]
fn unknown_user() {
    let text = "[[grant]]\nuids = [1]\nusers = [\n  \"root\",\n  \"bilin-no-such-user\",\n]\nkeys = [\"dev/*\"]\n";
    let e = parse_err(text);
    assert_eq!(
        e,
        "unknown user 'bilin-no-such-user' in grant at keyward.toml:5: create the user or fix the name"
    );
    let e = parse_err("[[grant]]\nusers = [\"1001\"]\nkeys = [\"dev/*\"]\n");
    assert_has(&e, &["uids = [1001]"]);
    let e = parse_err("[[grant]]\ngroups = [\"no-such-group-kw\"]\nkeys = [\"dev/*\"]\n");
    assert_has(&e, &["unknown group 'no-such-group-kw' in grant at keyward.toml:2"]);
}

#[test]
fn bad_pattern_names_its_line() {
    let cases: &[(&str, &str)] = &[
        ("\"prod\"", "ENV/NAME"),
        ("\"prod/a/b\"", "more than one '/'"),
        ("\"Prod/*\"", "lowercase"),
        ("\"prod/x?\"", "only wildcard"),
        ("\"prod/\"", "empty name part"),
    ];
    for (pattern, want) in cases {
        let text = format!("[[grant]]\nuids = [1]\nkeys = [\n  \"dev/*\",\n  {pattern},\n]\n");
        let e = parse_err(&text);
        assert_has(&e, &["grant at keyward.toml:5: key pattern", want]);
    }
}

#[test]
fn grants_must_name_callers_and_keys() {
    let e = parse_err("lock_memory = true\n\n[[grant]]\nkeys = [\"dev/*\"]\n");
    assert_has(&e, &["grant at keyward.toml:3 names no caller", "users, uids, groups"]);
    let e = parse_err("[[grant]]\nuids = [1]\n");
    assert_has(&e, &["grant at keyward.toml:1 gives no keys", "keys = ["]);
    for key in ["users", "uids", "groups", "gids", "executables", "units", "keys"] {
        let e = parse_err(&format!("[[grant]]\nuids = [1]\n{key} = []\nkeys = [\"dev/x\"]\n"));
        // "keys" appears twice: the duplicate is a TOML error instead.
        if key == "keys" || key == "uids" {
            assert!(e.starts_with("keyward.toml:"), "{e}");
        } else {
            assert_has(&e, &[&format!("{key} = [] in grant at keyward.toml:1 is empty")]);
        }
    }
    let e = parse_err("[[grant]]\nuids = [1]\nkeys = []\n");
    assert_has(&e, &["keys = [] in grant at keyward.toml:1 is empty"]);
}

#[test]
fn grant_env_must_be_configured() {
    let text = "[environments.prod]\n[[grant]]\nuids = [1]\nkeys = [\"*/x\", \"prd/billing\"]\n";
    let e = parse_err(text);
    assert_has(
        &e,
        &["keyward.toml:4", "'prd'", "[environments.prd]", "configured: prod"],
    );
    // Default environments count; globs are not checked but warned about.
    let c = parse("[[grant]]\nuids = [1]\nkeys = [\"staging/x\", \"q*/y\"]\n").unwrap();
    assert_eq!(c.policy.grants[0].keys.len(), 2);
    let w = c.warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert_has(&w[0], &["q*/y", "keyward.toml line 1"]);
}

#[test]
fn executables_units_and_paths() {
    let e = parse_err("[[grant]]\nuids = [1]\nexecutables = [\"bin/worker\"]\nkeys = [\"dev/*\"]\n");
    assert_has(&e, &["keyward.toml:3", "absolute"]);
    let e = parse_err("[[grant]]\nuids = [1]\nexecutables = [\"/usr/bin/../x\"]\nkeys = [\"dev/*\"]\n");
    assert_has(&e, &["keyward.toml:3", "'..'"]);
    let e = parse_err("[[grant]]\nunits = [\"billing\"]\nkeys = [\"dev/*\"]\n");
    assert_has(&e, &["keyward.toml:2", "billing.service"]);
    let e = parse_err("[[grant]]\nunits = [\"a b.service\"]\nkeys = [\"dev/*\"]\n");
    assert_has(&e, &["keyward.toml:2", "not a systemd unit"]);
    // A unit's cgroup may stand for the unit.
    let c = parse("[[grant]]\nuids = [1]\nunits = [\"/system.slice/billing.service\"]\nkeys = [\"dev/*\"]\n").unwrap();
    assert_eq!(c.policy.grants[0].units, ["/system.slice/billing.service"]);
    for bad in [
        "/system.slice/../x.service",
        "/system.slice//x.service",
        "/system.slice/x",
    ] {
        let e = parse_err(&format!(
            "[[grant]]\nuids = [1]\nunits = [\"{bad}\"]\nkeys = [\"dev/*\"]\n"
        ));
        assert_has(&e, &["keyward.toml:3", bad]);
    }
    for key in ["state_dir", "runtime_dir", "audit_file"] {
        let e = parse_err(&format!("\n{key} = \"relative/dir\"\n"));
        assert_has(&e, &[key, "keyward.toml:2", "absolute"]);
    }
}

/// Executables narrow a principal: alone they are refused, with the reason.
/// Units alone make a credentials grant, which the load says applies to
/// creds.sock only.
#[test]
fn executables_need_a_principal_and_units_alone_are_for_credentials() {
    let e = parse_err("[[grant]]\nexecutables = [\"/usr/bin/worker\"]\nkeys = [\"dev/*\"]\n");
    assert_has(
        &e,
        &[
            "grant at keyward.toml:1 lists executables but no users, uids, groups or gids",
            "users = [",
        ],
    );
    let e = parse_err("[[grant]]\nexecutables = [\"/usr/bin/worker\"]\nunits = [\"a.service\"]\nkeys = [\"dev/*\"]\n");
    assert_has(&e, &["lists executables but no users"]);
    for (sockets, extra) in [("", "credentials is off"), ("[sockets]\ncredentials = true\n", "")] {
        let c = parse(&format!(
            "{sockets}[[grant]]\nunits = [\"a.service\"]\nkeys = [\"dev/*\"]\n"
        ))
        .unwrap();
        assert!(c.policy.grants[0].is_credentials_grant());
        let w = c.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert_has(
            &w[0],
            &[
                "names units but no users",
                "only to LoadCredential=",
                "no caller on keys.sock",
                extra,
            ],
        );
    }
    // With a principal, nothing to say.
    let c = parse("[[grant]]\ngids = [5]\nunits = [\"a.service\"]\nkeys = [\"dev/*\"]\n").unwrap();
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
}

#[test]
fn report_is_on_unless_withheld() {
    let c =
        parse("[[grant]]\nuids = [1]\nkeys = [\"dev/*\"]\n[[grant]]\nuids = [2]\nreport = false\nkeys = [\"dev/*\"]\n")
            .unwrap();
    assert!(c.policy.grants[0].report);
    assert!(!c.policy.grants[1].report);
    let e = parse_err("[[grant]]\nuids = [1]\nreport = \"no\"\nkeys = [\"dev/*\"]\n");
    assert_has(&e, &["keyward.toml:3"]);
}

/// A grant's executable that a non-root user can change is warned about
/// (it can never match: such code never counts as the program).
#[test]
fn an_executable_others_can_change_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("worker");
    std::fs::write(&exe, b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o757)).unwrap();
    let text = format!(
        "[[grant]]\nuids = [1]\nexecutables = [\"{}\"]\nkeys = [\"dev/*\"]\n",
        exe.display()
    );
    let w = parse(&text).unwrap().warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert_has(&w[0], &["a non-root user can change it", "chmod go-w"]);
}
