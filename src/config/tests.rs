//! Config tests: the documented example, the defaults, and the message of each kind of mistake.

use super::*;
use crate::policy::KeyPattern;

/// The module docs' example, with accounts that exist on every test
/// machine (root) in place of billing and keyward.
const EXAMPLE: &str = r#"# /etc/keyward/keyward.toml
state_dir = "/srv/keyward/state"
runtime_dir = "/srv/keyward/run"
audit_file = "/srv/keyward/audit.jsonl"
lock_memory = false
shutdown_grace = "2500ms"
extra_recipients = ["age15rsdur5qqy7q5ks8ca47aegza8r5qtnymaqxd90yp758z4ulfsqq76tn2d"]

[sockets]
service_group = "root"
service_mode = "0600"
admin_group = 4242

[audit]
durability = "fsync"
fsync_interval = "2s"
max_batch = 64

[limits]
max_secret_bytes = 1024
max_message_bytes = 17408
max_connections_per_uid = 8
max_connections = 100

[rotation]
grace = "5m"
hook_timeout = "45s"
propagation_timeout = "1m"
failure_threshold = 4

[environments.prod]
on_audit_failure = "fail-open"
grace = "1h"
[environments.staging]
on_audit_failure = "fail-closed"
[environments.dev]

[[grant]]
users = ["root"]
uids = [1001]
groups = ["root"]
gids = [1001]
executables = ["/usr/local/bin/billing-worker"]
units = ["billing-worker.service"]
keys = ["prod/billing-*", "*/crm-api"]

[[grant]]
gids = [2000]
keys = ["staging/*"]

[[key]]
keys = ["prod/billing-api"]
generator = ["/usr/local/bin/new-billing-key", "--env", "prod"]
validator = ["/usr/local/bin/check-billing-key"]
revoker = ["/usr/local/bin/revoke-billing-key"]
grace = "15m"
hook_timeout = "20s"
failure_threshold = 5
report_quorum = 1

[[key]]
keys = ["prod/billing-*", "*/crm-api"]
revoker = ["/usr/local/bin/revoke-generic"]
propagation_timeout = "10s"
"#;

pub(super) fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, "keyward.toml")
}

pub(super) fn parse_err(text: &str) -> String {
    match parse(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

pub(super) fn assert_has(msg: &str, needles: &[&str]) {
    for n in needles {
        assert!(msg.contains(n), "{n:?} not in: {msg}");
    }
}

#[test]
fn full_example_parses() {
    let c = parse(EXAMPLE).unwrap();
    let p = Path::new;
    assert_eq!(
        c.paths,
        Paths {
            state_dir: p("/srv/keyward/state").into(),
            store_dir: p("/srv/keyward/state/store").into(),
            identity_file: p("/srv/keyward/state/identity.txt").into(),
            install_key_file: p("/srv/keyward/state/install.key").into(),
            lock_file: p("/srv/keyward/state/keywardd.lock").into(),
            credentials_socket: p("/srv/keyward/run/creds.sock").into(),
            service_socket: p("/srv/keyward/run/keys.sock").into(),
            admin_socket: p("/srv/keyward/run/admin.sock").into(),
            audit_file: p("/srv/keyward/audit.jsonl").into(),
        }
    );
    assert!(!c.lock_memory);
    assert_eq!(c.shutdown_grace, Duration::from_millis(2500));
    assert_eq!(c.extra_recipients.len(), 1);
    assert_eq!(c.service_socket_group, Some(0));
    assert_eq!(c.service_socket_mode, 0o600);
    assert_eq!(c.admin_group, Some(4242));
    assert_eq!(
        c.audit,
        AuditSettings {
            durability: Durability::Fsync,
            fsync_interval: Duration::from_secs(2),
            max_batch: 64,
            ..AuditSettings::default()
        }
    );
    assert_eq!(
        c.limits,
        Limits {
            max_secret_bytes: 1024,
            max_message_bytes: 17408,
            max_connections_per_uid: 8,
            max_connections: 100,
            ..Limits::default()
        }
    );
    let envs: Vec<(&str, AuditFailureMode)> = c
        .environments
        .iter()
        .map(|(k, v)| (k.as_str(), v.on_audit_failure))
        .collect();
    assert_eq!(
        envs,
        [
            ("dev", AuditFailureMode::FailClosed),
            ("prod", AuditFailureMode::FailOpen),
            ("staging", AuditFailureMode::FailClosed),
        ]
    );
    assert_eq!(c.policy.grants.len(), 2);
    let g = &c.policy.grants[0];
    assert_eq!(g.uids, [0, 1001]);
    assert_eq!(g.gids, [0, 1001]);
    assert_eq!(g.executables, [PathBuf::from("/usr/local/bin/billing-worker")]);
    assert_eq!(g.units, ["billing-worker.service"]);
    let keys: Vec<String> = g.keys.iter().map(ToString::to_string).collect();
    assert_eq!(keys, ["prod/billing-*", "*/crm-api"]);
    assert_eq!(g.origin, "keyward.toml line 38");
    assert_eq!(c.policy.grants[1].origin, "keyward.toml line 47");
    assert_eq!(c.environments["prod"].grace, Some(Duration::from_secs(3600)));
    assert_eq!(c.environments["dev"].grace, None);
    assert_eq!(
        c.rotation.defaults,
        RotationDefaults {
            grace: Duration::from_secs(300),
            hook_timeout: Duration::from_secs(45),
            propagation_timeout: Duration::from_secs(60),
            failure_threshold: 4,
            report_quorum: 2,
        }
    );
    let argv = |a: &[&str]| Some(HookCommand::new(a.iter().map(ToString::to_string).collect()).unwrap());
    assert_eq!(
        c.rotation.keys,
        [
            KeyEntry {
                keys: vec![KeyPattern::parse("prod/billing-api").unwrap()],
                generator: argv(&["/usr/local/bin/new-billing-key", "--env", "prod"]),
                validator: argv(&["/usr/local/bin/check-billing-key"]),
                revoker: argv(&["/usr/local/bin/revoke-billing-key"]),
                grace: Some(Duration::from_secs(900)),
                hook_timeout: Some(Duration::from_secs(20)),
                propagation_timeout: None,
                failure_threshold: Some(5),
                report_quorum: Some(1),
                detect: Default::default(),
                origin: "keyward.toml line 51".to_owned(),
            },
            KeyEntry {
                keys: vec![
                    KeyPattern::parse("prod/billing-*").unwrap(),
                    KeyPattern::parse("*/crm-api").unwrap()
                ],
                generator: None,
                validator: None,
                revoker: argv(&["/usr/local/bin/revoke-generic"]),
                grace: None,
                hook_timeout: None,
                propagation_timeout: Some(Duration::from_secs(10)),
                failure_threshold: None,
                report_quorum: None,
                detect: Default::default(),
                origin: "keyward.toml line 61".to_owned(),
            },
        ]
    );
    assert!(!c.dev_mode);
    // The example's program is not installed here: the grant matches no
    // caller until it is, and the warning says so.
    let w = c.warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert_has(
        &w[0],
        &[
            "/usr/local/bin/billing-worker",
            "keyward.toml line 38",
            "matches no caller until it exists",
        ],
    );
    let w = c.warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert_has(
        &w[0],
        &[
            "/usr/local/bin/billing-worker",
            "keyward.toml line 38",
            "matches no caller until it exists",
        ],
    );
}

#[test]
fn empty_file_gives_defaults() {
    let c = parse("").unwrap();
    assert_eq!(c.paths, Paths::default());
    assert_eq!(c.paths.service_socket, Path::new("/run/keyward/keys.sock"));
    assert_eq!(c.paths.store_dir, Path::new("/var/lib/keyward/store"));
    assert_eq!(c.paths.audit_file, Path::new("/var/log/keyward/audit.jsonl"));
    assert_eq!(c.service_socket_group, None);
    assert_eq!(c.service_socket_mode, 0o660);
    assert_eq!(c.admin_group, None);
    assert!(!c.credentials_socket, "creds.sock is opt-in");
    assert!(c.lock_memory);
    assert_eq!(c.shutdown_grace, Duration::from_secs(10));
    assert!(c.extra_recipients.is_empty());
    assert_eq!(c.audit, AuditSettings::default());
    assert_eq!(c.audit.durability, Durability::Write);
    assert_eq!(c.audit.fsync_interval, Duration::from_secs(1));
    assert_eq!(c.audit.max_batch, 256);
    assert_eq!(c.audit.coalesce_window, Duration::from_secs(60));
    assert_eq!(c.audit.min_free, size::MinFree::Bytes(256 << 20));
    assert_eq!(c.limits, Limits::default());
    assert_eq!(c.limits.max_message_bytes, 1_048_576);
    assert_eq!(c.environments, default_environments());
    assert_eq!(c.environments.keys().collect::<Vec<_>>(), ["dev", "prod", "staging"]);
    assert!(c.policy.grants.is_empty());
    assert!(!c.dev_mode);
    assert_eq!(c.rotation, RotationConfig::default());
    // Empty tables are the defaults too.
    let c = parse("[sockets]\n[audit]\n[limits]\n[rotation]\n").unwrap();
    assert_eq!(c.service_socket_mode, 0o660);
    assert_eq!(c.limits, Limits::default());
    assert_eq!(c.rotation, RotationConfig::default());
}

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
fn unknown_field_is_rejected_with_line() {
    let cases: &[(&str, &str)] = &[
        ("lock_memroy = true\n", "keyward.toml:1:1: unknown field `lock_memroy`"),
        (
            "\n[sockets]\nservice_mod = \"0660\"\n",
            "keyward.toml:3:1: unknown field `service_mod`",
        ),
        (
            "[audit]\n\nmax_bach = 1\n",
            "keyward.toml:3:1: unknown field `max_bach`",
        ),
        ("[limits]\nmax_secrets = 1\n", "keyward.toml:2:1: unknown field"),
        (
            "[environments.prod]\nfail = 1\n",
            "keyward.toml:2:1: unknown field `fail`",
        ),
        (
            "[[grant]]\nuids = [1]\nkeys = [\"dev/*\"]\nuser = [\"x\"]\n",
            "keyward.toml:4:1: unknown field `user`",
        ),
        (
            "[rotation]\ngrace_period = \"1m\"\n",
            "keyward.toml:2:1: unknown field `grace_period`",
        ),
        (
            "[[key]]\nkeys = [\"dev/*\"]\ngenrator = [\"/bin/x\"]\n",
            "keyward.toml:3:1: unknown field `genrator`",
        ),
        ("[[keys]]\nkeys = [\"dev/*\"]\n", "keyward.toml:1:"),
        ("[[grants]]\nuids = [1]\n", "keyward.toml:1:"),
        ("[socket]\n", "keyward.toml:1:"),
    ];
    for (text, want) in cases {
        let e = parse_err(text);
        assert!(e.starts_with(want), "{text:?}: {e}");
        assert!(e.contains("fix the spelling"), "{e}");
    }
}

#[test]
fn syntax_and_type_errors_name_line_and_column() {
    let e = parse_err("lock_memory = true\nstate_dir = \"/x\n");
    assert!(e.starts_with("keyward.toml:2:"), "{e}");
    let e = parse_err("# é\nlock_memory = \"yes\"\n");
    assert!(e.starts_with("keyward.toml:2:15:"), "{e}");
    let e = parse_err("[[grant]]\nuids = [-1]\nkeys = [\"dev/*\"]\n");
    assert!(e.starts_with("keyward.toml:2:"), "{e}");
}

#[test]
fn line_col_counts_characters() {
    let src = Source {
        text: "ab\né x\n",
        origin: "f",
    };
    assert_eq!(src.line_col(0), (1, 1));
    assert_eq!(src.line_col(2), (1, 3));
    assert_eq!(src.line_col(3), (2, 1));
    assert_eq!(src.line_col(4), (2, 1)); // inside 'é'
    assert_eq!(src.line_col(6), (2, 3));
    assert_eq!(src.line_col(100), (3, 1));
}

#[test]
fn bad_duration() {
    for (text, line) in [
        ("shutdown_grace = \"ten\"\n", 1),
        ("\nshutdown_grace = \"10\"\n", 2),
        ("[audit]\nfsync_interval = \"1 fortnight\"\n", 2),
    ] {
        let e = parse_err(text);
        assert_has(&e, &[&format!("keyward.toml:{line}"), "not a duration", "\"10s\""]);
    }
    let e = parse_err("[audit]\nfsync_interval = \"0s\"\n");
    assert_has(&e, &["keyward.toml:2", "zero"]);
    let e = parse_err("shutdown_grace = 10\n");
    assert!(e.starts_with("keyward.toml:1:"), "{e}");
    let c = parse("shutdown_grace = \"1m 30s\"\n").unwrap();
    assert_eq!(c.shutdown_grace, Duration::from_secs(90));
}

#[test]
fn audit_coalescing_and_free_space_settings() {
    let c = parse("[audit]\ncoalesce_window = \"0s\"\nmin_free = \"0\"\n").unwrap();
    assert_eq!(c.audit.coalesce_window, Duration::ZERO, "0s records every refusal");
    assert!(c.audit.min_free.is_off());
    let c = parse("[audit]\nmin_free = \"1.5 GiB\"\n").unwrap();
    assert_eq!(c.audit.min_free, size::MinFree::Bytes(3 << 29));
    let c = parse("[audit]\ncoalesce_window = \"5m\"\nmin_free = \"5%\"\n").unwrap();
    assert_eq!(c.audit.coalesce_window, Duration::from_secs(300));
    assert_eq!(c.audit.min_free, size::MinFree::Percent(500));

    let e = parse_err("[audit]\n\ncoalesce_window = \"a minute\"\n");
    assert_has(&e, &["keyward.toml:3", "coalesce_window", "not a duration", "\"10s\""]);
    for (value, why) in [
        ("256M", "unknown unit \"M\""),
        ("lots", "does not start with a number"),
        ("150%", "below 100%"),
    ] {
        let e = parse_err(&format!("[audit]\nmin_free = \"{value}\"\n"));
        assert_has(
            &e,
            &[
                "keyward.toml:2",
                &format!("min_free = \"{value}\""),
                "is not a size or a percentage",
                why,
                "\"256MiB\", \"1GB\" or \"5%\"",
            ],
        );
    }
    let e = parse_err("[audit]\nmin_free = 256\n");
    assert!(e.starts_with("keyward.toml:2:"), "{e}");
}

#[test]
fn service_mode_table() {
    let cases: &[(&str, Option<u32>)] = &[
        ("\"0660\"", Some(0o660)),
        ("\"0600\"", Some(0o600)),
        ("\"0666\"", Some(0o666)),
        ("\"660\"", Some(0o660)),
        ("\"0o660\"", Some(0o660)),
        ("0o660", Some(0o660)),
        ("\"0755\"", None),
        ("\"0670\"", None),
        ("\"0662\"", None),
        ("\"0640\"", None),
        ("\"04660\"", None),
        ("\"0777\"", None),
        ("\"rw-rw----\"", None),
        ("\"\"", None),
        ("\"0o\"", None),
        ("\"0000660\"", None),
        ("660", None),
        ("-1", None),
    ];
    for (value, want) in cases {
        let text = format!("[sockets]\nservice_mode = {value}\n");
        match (parse(&text), want) {
            (Ok(c), Some(m)) => assert_eq!(c.service_socket_mode, *m, "{value}"),
            (Err(e), None) => assert_has(&e.to_string(), &["keyward.toml:2", "service_mode", "\"0660\""]),
            (got, _) => panic!("{value}: {:?}", got.map(|c| c.service_socket_mode)),
        }
    }
    let c = parse("[sockets]\nservice_mode = \"0666\"\n").unwrap();
    assert_eq!(c.warnings().len(), 1);
    assert_has(&c.warnings()[0], &["0666", "0660"]);
}

#[test]
fn credentials_socket_is_opt_in() {
    assert!(parse("[sockets]\ncredentials = true\n").unwrap().credentials_socket);
    assert!(!parse("[sockets]\n").unwrap().credentials_socket);
    let e = parse_err("[sockets]\ncredentials = \"yes\"\n");
    assert_has(&e, &["keyward.toml:2", "expected a boolean"]);
}

#[test]
fn socket_groups() {
    let c = parse("[sockets]\nservice_group = \"root\"\nadmin_group = \"77\"\n").unwrap();
    assert_eq!((c.service_socket_group, c.admin_group), (Some(0), Some(77)));
    let c = parse("[sockets]\nservice_group = 1234\n").unwrap();
    assert_eq!(c.service_socket_group, Some(1234));
    let e = parse_err("[sockets]\n\nadmin_group = \"no-such-group-kw\"\n");
    assert_has(
        &e,
        &[
            "unknown group 'no-such-group-kw'",
            "admin_group at keyward.toml:3",
            "groupadd",
        ],
    );
    let e = parse_err("[sockets]\nservice_group = -5\n");
    assert_has(&e, &["keyward.toml:2", "not a gid"]);
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

#[test]
fn stream_and_watch_limits_parse() {
    let c = parse(
        "[limits]\nmax_streams_per_connection = 32\nmax_streams_per_uid = 20\nmax_watches_per_uid = 10\nmax_watches = 50\nkeepalive_interval = \"45s\"\nkeepalive_timeout = \"5s\"\nidle_timeout = \"2m\"\n",
    )
    .unwrap();
    assert_eq!(
        c.limits,
        Limits {
            max_streams_per_connection: 32,
            max_streams_per_uid: 20,
            max_watches_per_uid: 10,
            max_watches: 50,
            keepalive_interval: Duration::from_secs(45),
            keepalive_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(120),
            ..Limits::default()
        }
    );
    let d = Limits::default();
    assert_eq!(
        (
            d.max_streams_per_connection,
            d.max_streams_per_uid,
            d.max_watches_per_uid,
            d.max_watches
        ),
        (64, 2048, 1024, 16384)
    );
    assert_eq!(
        (d.keepalive_interval, d.keepalive_timeout, d.idle_timeout),
        (
            Duration::from_secs(60),
            Duration::from_secs(20),
            Duration::from_secs(600)
        )
    );
}

#[test]
fn limits_are_checked() {
    let e = parse_err("[limits]\nmax_secret_bytes = 65536\nmax_message_bytes = 70000\n");
    assert_has(&e, &["keyward.toml:3", "at least 81920"]);
    // Raising only the secret limit is caught too.
    let e = parse_err("[limits]\nmax_secret_bytes = 2000000\n");
    assert_has(&e, &["keyward.toml:2", "max_message_bytes", "at least 2016384"]);
    let e = parse_err("[limits]\nmax_connections = 0\n");
    assert_has(&e, &["max_connections at keyward.toml:2 is 0"]);
    let e = parse_err("[audit]\nmax_batch = 0\n");
    assert_has(&e, &["max_batch at keyward.toml:2 is 0"]);
    let e = parse_err("[limits]\nmax_streams_per_connection = 4\n");
    assert_has(&e, &["max_streams_per_connection at keyward.toml:2 is 4", "at least 8"]);
    let e = parse_err("[limits]\nmax_streams_per_uid = 0\n");
    assert_has(&e, &["max_streams_per_uid at keyward.toml:2 is 0"]);
    let e = parse_err("[limits]\nmax_watches_per_uid = 0\n");
    assert_has(&e, &["max_watches_per_uid at keyward.toml:2 is 0"]);
    let e = parse_err("[limits]\nmax_watches = 0\n");
    assert_has(&e, &["max_watches at keyward.toml:2 is 0"]);
    let e = parse_err("[limits]\nidle_timeout = \"0s\"\n");
    assert_has(&e, &["idle_timeout at keyward.toml:2 is zero"]);
    let e = parse_err("[limits]\nkeepalive_interval = \"soon\"\n");
    assert_has(
        &e,
        &["keepalive_interval = \"soon\" at keyward.toml:2 is not a duration"],
    );
    let e = parse_err("[limits]\nmax_connections = -3\n");
    assert!(e.starts_with("keyward.toml:2:"), "{e}");
}

#[test]
fn bad_recipient() {
    for (value, want) in [
        ("ssh-ed25519 AAAA", "does not start with \"age1\""),
        ("age1notavalidkey", "not a valid age recipient"),
    ] {
        let e = parse_err(&format!("\nextra_recipients = [\n \"{value}\"]\n"));
        assert_has(&e, &["keyward.toml:3", want, "age-keygen"]);
    }
}

#[test]
fn dev_config() {
    let dir = Path::new("/tmp/kw-dev");
    let c = Config::dev(dir, 1000);
    assert_eq!(
        c.paths,
        Paths {
            state_dir: dir.into(),
            store_dir: dir.join("store"),
            identity_file: dir.join("identity.txt"),
            install_key_file: dir.join("install.key"),
            lock_file: dir.join("keywardd.lock"),
            service_socket: dir.join("keys.sock"),
            admin_socket: dir.join("admin.sock"),
            credentials_socket: dir.join("creds.sock"),
            audit_file: dir.join("audit.jsonl"),
        }
    );
    assert!(c.dev_mode);
    assert!(c.lock_memory);
    assert_eq!(c.service_socket_group, None);
    assert_eq!(c.service_socket_mode, 0o660);
    assert_eq!(c.environments, default_environments());
    assert_eq!(c.policy, Policy::allow_all_for_uid(1000));
    assert_eq!(c.limits, Limits::default());
    assert_eq!(c.audit, AuditSettings::default());
    assert_eq!(c.shutdown_grace, Duration::from_secs(10));
    assert_eq!(c.rotation, RotationConfig::default());
    let r = c.rotation_for(&"prod/x".parse().unwrap());
    assert_eq!((r.grace, r.hook_timeout), (DEFAULT_GRACE, DEFAULT_HOOK_TIMEOUT));
}

#[test]
fn into_dev_keeps_file_settings() {
    let dir = Path::new("/tmp/kw-dev2");
    let file = parse(EXAMPLE).unwrap();
    let c = file.clone().into_dev(dir, 1000);
    assert_eq!(c.paths, Paths::dev(dir));
    assert!(c.dev_mode);
    assert_eq!(c.policy.grants.len(), 3);
    assert_eq!(c.policy.grants[..2], file.policy.grants[..]);
    assert_eq!(c.policy.grants[2], Grant::allow_all_for_uid(1000));
    assert_eq!(c.limits, file.limits);
    assert_eq!(c.environments, file.environments);
    assert_eq!(c.service_socket_group, file.service_socket_group);
    assert_eq!(c.service_socket_mode, file.service_socket_mode);
    assert_eq!(c.admin_group, file.admin_group);
    assert_eq!(c.audit, file.audit);
    assert_eq!(c.rotation, file.rotation);
}

#[test]
fn load_reads_the_file_and_explains_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyward.toml");
    let e = Config::load(&path).unwrap_err();
    assert!(matches!(e, ConfigError::NotFound { .. }), "{e:?}");
    assert_has(&e.to_string(), &[&path.display().to_string(), "--config", "--dev DIR"]);
    std::fs::write(&path, "shutdown_grace = \"3s\"\nbogus = 1\n").unwrap();
    let e = Config::load(&path).unwrap_err().to_string();
    assert!(e.starts_with(&format!("{}:2:1: unknown field", path.display())), "{e}");
    std::fs::write(&path, "shutdown_grace = \"3s\"\n").unwrap();
    let c = Config::load(&path).unwrap();
    assert_eq!(c.shutdown_grace, Duration::from_secs(3));
}

const RECIPIENT: &str = "age15rsdur5qqy7q5ks8ca47aegza8r5qtnymaqxd90yp758z4ulfsqq76tn2d";

#[test]
fn backend_defaults_to_local_and_openbao_takes_its_settings() {
    assert_eq!(parse("").unwrap().backend, backend::BackendConfig::Local);
    let c = parse(&format!(
        "[backend]\nkind = \"openbao\"\naddress = \"https://bao.internal:8200/\"\nprefix = \"/teams/keyward/\"\ntoken_file = \"/etc/keyward/bao.token\"\nrecipients = [\"{RECIPIENT}\", \"{RECIPIENT}\"]\nagent_id = \"web-1\"\npoll_interval = \"250ms\"\n"
    ))
    .unwrap();
    let backend::BackendConfig::OpenBao(b) = c.backend else {
        panic!("openbao")
    };
    assert_eq!(b.address, "https://bao.internal:8200");
    assert_eq!(b.mount, "secret");
    assert_eq!(b.prefix, "teams/keyward");
    assert_eq!(b.recipients, [RECIPIENT], "duplicates are dropped");
    assert_eq!(b.agent_id, "web-1");
    assert_eq!(b.poll_interval, Duration::from_millis(250));
    assert_eq!(b.status_ttl, backend::DEFAULT_STATUS_TTL);
    assert_eq!(b.auth, backend::OpenBaoAuth::TokenFile("/etc/keyward/bao.token".into()));
    let c = parse(
        "[backend]\nkind = \"openbao\"\naddress = \"http://127.0.0.1:8200\"\napprole = { role_id_file = \"/r\", secret_id_file = \"/s\" }\n",
    )
    .unwrap();
    let backend::BackendConfig::OpenBao(b) = c.backend else {
        panic!("openbao")
    };
    assert_eq!(
        b.auth,
        backend::OpenBaoAuth::AppRole {
            mount: "approle".into(),
            role_id_file: "/r".into(),
            secret_id_file: "/s".into()
        }
    );
}

#[test]
fn backend_mistakes_are_explained() {
    let base = "[backend]\nkind = \"openbao\"\naddress = \"http://127.0.0.1:8200\"\n";
    let cases = [
        ("[backend]\nkind = \"consul\"\n", "is not a backend keyward knows"),
        ("[backend]\nkind = \"openbao\"\ntoken_file = \"/t\"\n", "needs address"),
        (
            "[backend]\nkind = \"openbao\"\naddress = \"bao:8200\"\ntoken_file = \"/t\"\n",
            "not http or https",
        ),
        (
            "[backend]\nkind = \"openbao\"\naddress = \"https://u:pw-secret@bao:99999\"\ntoken_file = \"/t\"\n",
            "user or password",
        ),
        (base, "needs a login"),
        (&format!("{base}token_file = \"t\"\n"), "is not an absolute path"),
        (
            &format!("{base}token_file = \"/t\"\napprole = {{ role_id_file = \"/r\", secret_id_file = \"/s\" }}\n"),
            "keep one",
        ),
        (
            &format!("{base}token_file = \"/t\"\nprefix = \"a/../b\"\n"),
            "contains \"..\"",
        ),
        (
            &format!("{base}token_file = \"/t\"\nprefix = \"a..b\"\n"),
            "contains \"..\"",
        ),
        (
            &format!("{base}token_file = \"/t\"\nagent_id = \"web..1\"\n"),
            "is not 1 to 128 letters",
        ),
        (
            &format!("{base}token_file = \"/t\"\nrecipients = [\"age1nope\"]\n"),
            "is not an age X25519 public key",
        ),
        (
            &format!("{base}token_file = \"/t\"\nagent_id = \"web 1\"\n"),
            "is not 1 to 128 letters",
        ),
        (
            &format!("{base}token_file = \"/t\"\nstatus_ttl = \"1s\"\n"),
            "shorter than 2s",
        ),
        (
            &format!("{base}token_file = \"/t\"\npoll_interval = \"soon\"\n"),
            "poll_interval",
        ),
        (
            &format!("{base}token_file = \"/t\"\ncolour = \"red\"\n"),
            "unknown field",
        ),
        (
            "[backend]\nkind = \"local\"\naddress = \"http://x\"\n",
            "takes no OpenBao settings",
        ),
    ];
    for (text, want) in cases {
        let err = parse_err(text);
        assert!(err.contains(want), "{text}\n=> {err}");
        assert!(
            !err.contains("pw-secret"),
            "a password in the address is never echoed: {err}"
        );
    }
}
