//! Config tests: the documented example, the defaults, and the message of each kind of mistake.

use super::*;
use crate::policy::KeyPattern;

/// A full config, with accounts that exist on every test
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
            signing_key_file: p("/srv/keyward/state/signing.key").into(),
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
            evidence_quorum: 1,
            schedule: Default::default(),
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
                evidence_quorum: None,
                schedule: Default::default(),
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
                evidence_quorum: None,
                schedule: Default::default(),
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
            signing_key_file: dir.join("signing.key"),
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

mod alerts;
mod audit_segments;
mod backend;
mod grants;
mod limits;
mod rotation;
mod sockets;
