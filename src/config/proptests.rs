//! Property tests of the config parser (issue 7, adversarial input).
//!
//! Whatever text reaches [`Config::parse`] (random bytes, TOML-ish lines
//! built from the real keys, random mutations of the documented full
//! example), it returns a [`Config`] or an error; it never panics, and every
//! error names the file and a line that exists in the text.

use proptest::prelude::*;

use super::*;

/// Cases per property.
const CASES: u32 = 512;

/// The module docs' full example, with accounts every test machine has
/// (root), inline tokens instead of token files, and the OpenBao backend
/// that the docs only show commented out, so that it is valid and
/// mutations reach every step of validation.
const FULL: &str = r#"# /etc/keyward/keyward.toml
state_dir = "/var/lib/keyward"
runtime_dir = "/run/keyward"
audit_file = "/var/log/keyward/audit.jsonl"
lock_memory = true
shutdown_grace = "10s"
extra_recipients = ["age15rsdur5qqy7q5ks8ca47aegza8r5qtnymaqxd90yp758z4ulfsqq76tn2d"]

[sockets]
service_group = "root"
service_mode = "0660"
admin_group = "root"
credentials = false

[audit]
durability = "write"
fsync_interval = "1s"
max_batch = 256

[limits]
max_secret_bytes = 65536
max_message_bytes = 1048576
max_connections_per_uid = 64
max_connections = 4096

[rotation]
grace = "10m"
hook_timeout = "30s"
propagation_timeout = "30s"
failure_threshold = 3

[environments.prod]
on_audit_failure = "fail-closed"
grace = "1h"
[environments.staging]
[environments.dev]

[[key]]
keys = ["prod/billing-api"]
generator = ["/usr/local/bin/new-billing-key", "--env", "prod"]
validator = ["/usr/local/bin/check-billing-key"]
revoker = ["/usr/local/bin/revoke-billing-key"]
grace = "15m"
hook_timeout = "20s"
propagation_timeout = "30s"
failure_threshold = 5
alerts = { spike_threshold = 10, max_age = "90d" }

[alerts]
agent_host = "app-1.example.com"
repeat_interval = "30m"
report_rate = 20
report_burst = 100

[alerts.detect]
window = "60s"
spike_threshold = 5
rising_windows = 3
rising_min = 10
expiry_lead = "7d"
max_age = "90d"

[[alerts.sink]]
kind = "webhook"
url = "https://hooks.example.com/keyward"
headers = { Authorization = "Bearer t0ken" }
[[alerts.sink]]
kind = "slack"
url = "https://hooks.slack.com/services/T/B/x"
min_severity = "warning"
[[alerts.sink]]
kind = "pagerduty"
routing_key = "r0uting"
min_severity = "critical"
[[alerts.sink]]
kind = "smtp"
host = "smtp.example.com"
port = 587
tls = "starttls"
username = "keyward"
password = "pa55"
from = "keyward@example.com"
to = ["oncall@example.com"]
[[alerts.sink]]
kind = "exec"
command = ["/usr/local/bin/page-oncall", "--team", "payments"]
[[alerts.sink]]
kind = "log"

[metrics]
listen = "127.0.0.1:9464"

[backend]
kind = "openbao"
address = "https://openbao.internal:8200"
mount = "secret"
prefix = "keyward"
token_file = "/etc/keyward/openbao.token"
recipients = ["age15rsdur5qqy7q5ks8ca47aegza8r5qtnymaqxd90yp758z4ulfsqq76tn2d"]
agent_id = "app-1"
poll_interval = "500ms"
status_ttl = "30s"

[[grant]]
users = ["root"]
uids = [1001]
groups = ["root"]
gids = [1001]
executables = ["/usr/local/bin/billing-worker"]
units = ["billing-worker.service"]
keys = ["prod/billing-*", "*/crm-api"]
"#;

/// Keys and values the file really uses, for TOML-ish noise that gets past
/// the TOML parser often enough to reach validation.
const KEYS: &[&str] = &[
    "state_dir",
    "runtime_dir",
    "audit_file",
    "lock_memory",
    "shutdown_grace",
    "extra_recipients",
    "service_group",
    "service_mode",
    "admin_group",
    "credentials",
    "durability",
    "fsync_interval",
    "max_batch",
    "max_secret_bytes",
    "max_message_bytes",
    "max_connections_per_uid",
    "max_connections",
    "grace",
    "hook_timeout",
    "propagation_timeout",
    "failure_threshold",
    "on_audit_failure",
    "keys",
    "generator",
    "validator",
    "revoker",
    "users",
    "uids",
    "groups",
    "gids",
    "executables",
    "units",
    "kind",
    "url",
    "listen",
    "window",
    "spike_threshold",
    "agent_host",
    "report_rate",
    "alerts",
    "address",
    "mount",
    "prefix",
    "token_file",
    "recipients",
    "agent_id",
    "poll_interval",
    "status_ttl",
    "bogus",
];

const TABLES: &[&str] = &[
    "[sockets]",
    "[audit]",
    "[limits]",
    "[rotation]",
    "[environments.prod]",
    "[environments.\"Bad Env\"]",
    "[environments]",
    "[[key]]",
    "[[grant]]",
    "[alerts]",
    "[alerts.detect]",
    "[[alerts.sink]]",
    "[metrics]",
    "[backend]",
    "[nope]",
];

const VALUES: &[&str] = &[
    "0",
    "1",
    "-1",
    "18446744073709551616",
    "4294967296",
    "1.5",
    "true",
    "\"\"",
    "\"0s\"",
    "\"10s\"",
    "\"1e9h\"",
    "\"18446744073709551615s\"",
    "\"0600\"",
    "\"0777\"",
    "\"root\"",
    "\"no-such-user-kw\"",
    "\"/\"",
    "\"relative/path\"",
    "\"../etc/shadow\"",
    "\"fail-open\"",
    "\"fsync\"",
    "\"log\"",
    "\"webhook\"",
    "\"openbao\"",
    "\"https://openbao.internal:8200\"",
    "[\"age15rsdur5qqy7q5ks8ca47aegza8r5qtnymaqxd90yp758z4ulfsqq76tn2d\"]",
    "\"http://x\"",
    "\"unix:relative.sock\"",
    "\"0.0.0.0:80\"",
    "[]",
    "[\"prod/*\"]",
    "[\"*/*\"]",
    "[\"PROD/*\"]",
    "[\"prod/../x\"]",
    "[\"prod\"]",
    "[\"/bin/true\"]",
    "[\"true\"]",
    "[0, 65534]",
    "[\"root\", \"root\"]",
    "{}",
    "{ spike_threshold = 0 }",
    "\"\\u0000\"",
    "\"a\\nb\"",
];

/// One TOML-ish line: a table header, `key = value`, a comment or junk.
fn toml_ish_line() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (prop::sample::select(KEYS), prop::sample::select(VALUES)).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => prop::sample::select(TABLES).prop_map(str::to_owned),
        1 => Just("# comment".to_owned()),
        1 => Just(String::new()),
        1 => "[ -~]{0,30}",
    ]
}

/// A mutation of the full example.
#[derive(Clone, Debug)]
enum Mutation {
    /// Replace a byte.
    Byte(prop::sample::Index, u8),
    /// Insert a byte.
    Insert(prop::sample::Index, u8),
    /// Remove a run of bytes.
    Cut(prop::sample::Index, usize),
    /// Remove a line.
    DropLine(prop::sample::Index),
    /// Repeat a line.
    DupLine(prop::sample::Index),
    /// Replace a line's value with another value.
    Value(prop::sample::Index, &'static str),
    /// Truncate the file.
    Truncate(prop::sample::Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let idx = any::<prop::sample::Index>;
    prop_oneof![
        3 => (idx(), any::<u8>()).prop_map(|(i, b)| Mutation::Byte(i, b)),
        2 => (idx(), prop_oneof![any::<u8>(), Just(b'"'), Just(b'['), Just(b'='), Just(b'\n'), Just(b'*')])
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (idx(), 1usize..20).prop_map(|(i, n)| Mutation::Cut(i, n)),
        2 => idx().prop_map(Mutation::DropLine),
        1 => idx().prop_map(Mutation::DupLine),
        3 => (idx(), prop::sample::select(VALUES)).prop_map(|(i, v)| Mutation::Value(i, v)),
        1 => idx().prop_map(Mutation::Truncate),
    ]
}

fn mutate(text: &str, mutations: &[Mutation]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for m in mutations {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let lines: Vec<&str> = text.split('\n').collect();
        match *m {
            Mutation::Byte(i, b) if !bytes.is_empty() => {
                let at = i.index(bytes.len());
                bytes[at] = b;
            }
            Mutation::Insert(i, b) => bytes.insert(i.index(bytes.len() + 1), b),
            Mutation::Cut(i, n) if !bytes.is_empty() => {
                let at = i.index(bytes.len());
                bytes.drain(at..(at + n).min(bytes.len()));
            }
            Mutation::DropLine(i) => {
                let at = i.index(lines.len());
                let kept: Vec<&str> = lines
                    .iter()
                    .enumerate()
                    .filter(|(n, _)| *n != at)
                    .map(|(_, l)| *l)
                    .collect();
                bytes = kept.join("\n").into_bytes();
            }
            Mutation::DupLine(i) => {
                let at = i.index(lines.len());
                let mut out = lines.clone();
                out.insert(at, lines[at]);
                bytes = out.join("\n").into_bytes();
            }
            Mutation::Value(i, v) => {
                let at = i.index(lines.len());
                let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
                if let Some((k, _)) = out[at].split_once(" = ") {
                    out[at] = format!("{k} = {v}");
                }
                bytes = out.join("\n").into_bytes();
            }
            Mutation::Truncate(i) => bytes.truncate(i.index(bytes.len() + 1)),
            _ => {}
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Parses `text`; an error must carry a line that exists in the text and
/// name the file in its message.
fn check(text: &str) -> Result<(), TestCaseError> {
    let lines = text.split('\n').count();
    match Config::parse(text, "keyward.toml") {
        Ok(_) => {}
        Err(ConfigError::Parse {
            origin,
            line,
            column,
            message,
        }) => {
            prop_assert_eq!(origin, "keyward.toml");
            prop_assert!((1..=lines).contains(&line), "line {} of {}: {}", line, lines, message);
            prop_assert!(column >= 1);
            prop_assert!(
                !message.is_empty(),
                "empty message at {}:{} in:\n{}",
                line,
                column,
                text
            );
        }
        Err(ConfigError::Invalid { origin, line, message }) => {
            prop_assert_eq!(origin, "keyward.toml");
            prop_assert!((1..=lines).contains(&line), "line {} of {}: {}", line, lines, message);
            prop_assert!(
                message.contains("keyward.toml:") || message.contains("keyward.toml line "),
                "the message does not say where: {}",
                message
            );
        }
        Err(e @ (ConfigError::NotFound { .. } | ConfigError::Read { .. })) => {
            prop_assert!(false, "parse cannot fail to read: {}", e);
        }
    }
    Ok(())
}

#[test]
fn the_full_example_is_valid() {
    let config = Config::parse(FULL, "keyward.toml").unwrap();
    assert_eq!(config.policy.grants.len(), 1);
    assert_eq!(config.alerts.sinks.len(), 6);
    let backend::BackendConfig::OpenBao(bao) = &config.backend else {
        panic!("the full example's backend is OpenBao: {:?}", config.backend);
    };
    assert_eq!(bao.address, "https://openbao.internal:8200");
    assert_eq!(bao.prefix, "keyward");
    assert_eq!(bao.agent_id, "app-1");
    assert_eq!(bao.recipients.len(), 1);
    assert_eq!(
        bao.auth,
        backend::OpenBaoAuth::TokenFile("/etc/keyward/openbao.token".into())
    );
}

/// toml gives no message for a value cut off at the end of the file; the
/// error must still say what is wrong (found by `mutations_of_the_full_example`).
#[test]
fn a_value_cut_off_at_the_end_of_the_file_is_explained() {
    for text in ["x = ", "[limits]\nmax_connections = ", "[[grant]]\nkeys = "] {
        let err = Config::parse(text, "keyward.toml").unwrap_err().to_string();
        assert!(err.contains("incomplete TOML"), "{text:?}: {err}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(crate::proptest_cases(CASES)))]

    /// Random mutations (1 to 4) of the full example.
    #[test]
    fn mutations_of_the_full_example(mutations in prop::collection::vec(mutation(), 1..5)) {
        check(&mutate(FULL, &mutations))?;
    }

    /// TOML-ish lines built from the real keys, tables and hostile values.
    #[test]
    fn toml_ish_lines(lines in prop::collection::vec(toml_ish_line(), 0..25)) {
        check(&lines.join("\n"))?;
    }

    /// Arbitrary text.
    #[test]
    fn arbitrary_text(text in any::<String>()) {
        check(&text)?;
    }
}
