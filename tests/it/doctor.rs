//! `keyward doctor` against a real dev-mode agent: a good install passes,
//! and each kind of breakage gives its own FAIL (or WARN) and fix.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::*;

/// Runs `keyward doctor`; returns the exit code and stdout.
fn doctor(agent: &TestAgent) -> (Option<i32>, String) {
    let out = agent.cli(&["doctor"], None);
    (out.status.code(), text(&out.stdout))
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The report's line for `check` that starts with `status` and mentions
/// `needle`, with its fix line.
fn finding<'a>(report: &'a str, status: &str, check: &str, needle: &str) -> (&'a str, &'a str) {
    let lines: Vec<&str> = report.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with(status) && line.contains(&format!("  {check}: ")) && line.contains(needle) {
            let fix = lines.get(i + 1).copied().unwrap_or_default();
            assert!(
                fix.trim_start().starts_with("fix: "),
                "{status} has a fix line: {report}"
            );
            return (line, fix);
        }
    }
    panic!("no {status} {check} line mentioning {needle:?} in:\n{report}");
}

#[test]
fn a_good_dev_install_passes_every_check() {
    let agent = TestAgent::start();
    agent.put("dev/good", "s3cret-doctor-good");
    let (code, report) = doctor(&agent);
    assert_eq!(code, Some(0), "{report}");
    for line in report.lines().filter(|l| !l.starts_with("      fix: ")) {
        assert!(
            line.starts_with("OK    ") || line.starts_with("WARN  "),
            "{line}\n{report}"
        );
    }
    for check in [
        "config",
        "identity",
        "install key",
        "store",
        "key files",
        "sockets",
        "audit",
        "clock",
        "agent",
        "keys",
    ] {
        assert!(report.contains(&format!("  {check}: ")), "checks {check}: {report}");
    }
    assert!(report.contains("1 key files, all 0600 and decryptable"), "{report}");
    assert_no_secret("doctor output", report.as_bytes(), &["s3cret-doctor-good"]);

    let out = agent.cli(&["doctor", "--json"], None);
    assert_eq!(out.status.code(), Some(0));
    let doc: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        doc.iter().any(|f| f["check"] == "audit" && f["status"] == "ok"),
        "{doc:?}"
    );
    assert!(
        doc.iter().all(|f| f["status"] == "ok" || f["status"] == "warn"),
        "{doc:?}"
    );
}

#[test]
fn an_identity_readable_by_others_fails_with_the_chmod() {
    let agent = TestAgent::start();
    let identity = agent.dir.join("identity.txt");
    chmod(&identity, 0o644);
    let (code, report) = doctor(&agent);
    assert_eq!(code, Some(1), "{report}");
    let (line, fix) = finding(&report, "FAIL", "identity", "0644");
    assert!(line.contains("not 0600"), "{line}");
    assert!(fix.contains(&format!("chmod 600 {}", identity.display())), "{fix}");
}

#[test]
fn a_key_file_readable_by_others_fails_with_the_chmod() {
    let agent = TestAgent::start();
    agent.put("prod/billing", "s3cret-doctor-billing");
    let file = agent.dir.join("store/prod/billing.age");
    chmod(&file, 0o644);
    let (code, report) = doctor(&agent);
    assert_eq!(code, Some(1), "{report}");
    let (_, fix) = finding(&report, "FAIL", "key files", "billing.age");
    assert!(fix.contains(&format!("chmod 600 {}", file.display())), "{fix}");
    assert_no_secret("doctor output", report.as_bytes(), &["s3cret-doctor-billing"]);
}

#[test]
fn an_edited_audit_record_fails_the_chain_naming_its_line() {
    let mut agent = TestAgent::start();
    agent.put("dev/one", "s3cret-one");
    agent.put("dev/two", "s3cret-two");
    agent.stop();
    let file = agent.audit_file();
    let log = std::fs::read_to_string(&file).unwrap();
    let mut lines: Vec<String> = log.lines().map(str::to_owned).collect();
    assert!(lines.len() >= 3, "{log}");
    // The first put's record (after its intent record).
    let i = lines
        .iter()
        .position(|l| l.contains("\"event\":\"put\"") && l.contains("\"outcome\":\"ok\""))
        .unwrap();
    lines[i] = lines[i].replacen("\"outcome\":\"ok\"", "\"outcome\":\"oK\"", 1);
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();

    let (code, report) = doctor(&agent);
    assert_eq!(code, Some(1), "{report}");
    let (line, _) = finding(&report, "FAIL", "audit", "hash chain broken");
    assert!(line.contains(&format!("first bad: line {}", i + 1)), "{line}");
}

#[test]
fn a_socket_wider_than_configured_fails() {
    let agent = TestAgent::start();
    chmod(&agent.keys_sock(), 0o666);
    let (code, report) = doctor(&agent);
    assert_eq!(code, Some(1), "{report}");
    let (line, fix) = finding(&report, "FAIL", "sockets", "keys.sock");
    assert!(
        line.contains("0666") && line.contains("wider than the configured 0660"),
        "{line}"
    );
    assert!(fix.contains("chmod 660"), "{fix}");
}

#[test]
fn a_key_expiring_in_two_days_is_a_warning() {
    let agent = TestAgent::start();
    let expires = SystemTime::now() + Duration::from_secs(2 * 24 * 3600);
    let expires = humantime::format_rfc3339_seconds(expires).to_string();
    let out = agent.cli(&["put", "staging/soon", "--expires", &expires], Some(b"s3cret-soon"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (code, report) = doctor(&agent);
    assert_eq!(code, Some(0), "warnings only: {report}");
    let (line, fix) = finding(&report, "WARN", "keys", "staging/soon");
    assert!(line.contains("expires at"), "{line}");
    assert!(fix.contains("keyward rotate staging/soon"), "{fix}");
}

/// An expired primary is being refused by its provider now: a failure
/// (exit 1), as its alert is critical, not a warning.
#[test]
fn an_expired_primary_fails() {
    let agent = TestAgent::start();
    let expires = SystemTime::now() + Duration::from_secs(2);
    let expires = humantime::format_rfc3339_seconds(expires).to_string();
    let out = agent.cli(&["put", "staging/gone", "--expires", &expires], Some(b"s3cret-gone"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Wait for the expiry (RFC 3339 seconds: up to 2 s away).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (code, report) = loop {
        let (code, report) = doctor(&agent);
        if report.contains("primary expired at") || std::time::Instant::now() > deadline {
            break (code, report);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(code, Some(1), "{report}");
    let (line, fix) = finding(&report, "FAIL", "keys", "staging/gone");
    assert!(line.contains("primary expired at"), "{line}");
    assert!(fix.contains("keyward rotate staging/gone"), "{fix}");
}

#[test]
fn a_grant_naming_a_missing_uid_or_executable_is_a_warning() {
    let agent = TestAgent::start_with_config(
        "[[grant]]\nuids = [54321]\nexecutables = [\"/no/such/keyward-exe\"]\nkeys = [\"dev/*\"]\n",
    );
    let out = agent.cli(
        &[
            "doctor",
            "--config",
            agent.dir.parent().unwrap().join("keyward.toml").to_str().unwrap(),
        ],
        None,
    );
    let report = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{report}");
    finding(&report, "WARN", "grants", "uid 54321");
    let (line, _) = finding(&report, "WARN", "config", "/no/such/keyward-exe");
    assert!(line.contains("matches no caller until it exists"), "{line}");
}

#[test]
fn a_primary_older_than_max_age_is_a_warning() {
    let agent = TestAgent::start_with_config("[alerts.detect]\nmax_age = \"1s\"\n");
    agent.put("dev/old", "s3cret-doctor-old");
    std::thread::sleep(Duration::from_millis(1500));
    let config = agent.dir.parent().unwrap().join("keyward.toml");
    let out = agent.cli(&["doctor", "--config", config.to_str().unwrap()], None);
    let (code, report) = (out.status.code(), text(&out.stdout));
    assert_eq!(code, Some(0), "warnings only: {report}");
    let (line, fix) = finding(&report, "WARN", "keys", "dev/old");
    assert!(line.contains("older than max_age 1s"), "{line}");
    assert!(fix.contains("keyward rotate dev/old"), "{fix}");
}

/// The audit log's last record is later than the system clock: the clock
/// was set back (or the log came from elsewhere). Expiry and grace depend on
/// the clock, so it is a FAIL.
#[test]
fn an_audit_record_from_the_future_fails_the_clock_check() {
    let mut agent = TestAgent::start();
    agent.put("dev/clock", "s3cret-clock");
    agent.stop();
    let file = agent.audit_file();
    let log = std::fs::read_to_string(&file).unwrap();
    let last = log.lines().last().unwrap();
    let record: serde_json::Value = serde_json::from_str(last).unwrap();
    let time = record["time"].as_str().unwrap();
    let future = humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(86_400)).to_string();
    std::fs::write(&file, log.replacen(time, &future, 1)).unwrap();

    let (code, report) = doctor(&agent);
    assert_eq!(code, Some(1), "{report}");
    let (line, fix) = finding(&report, "FAIL", "clock", "clock went backwards");
    assert!(line.contains(&future), "{line}");
    assert!(fix.contains("timedatectl set-ntp true"), "{fix}");
}

/// An agent that cannot write its audit log (the file may not grow, as on a
/// full disk) withholds keys; doctor reports that as a FAIL, and the
/// agent-health alert it raised as an open alert.
#[tokio::test]
async fn an_agent_that_cannot_write_its_audit_log_fails_and_its_alert_is_listed() {
    let mut agent = TestAgent::start();
    agent.put("prod/full", "s3cret-doctor-full");
    agent.stop();
    let used = std::fs::metadata(agent.audit_file()).unwrap().len();
    let mut cmd = std::process::Command::new("prlimit");
    cmd.arg(format!("--fsize={}", used + 4000)).arg("--").arg(KEYWARDD);
    cmd.args(agent.command().get_args());
    agent.spawn_with(cmd).unwrap();
    let mut failed = false;
    for _ in 0..100 {
        if agent.fetch("prod", "full").await.is_err() {
            failed = true;
            break;
        }
    }
    assert!(failed, "fetches fail once the audit file cannot grow");

    let (code, report) = doctor(&agent);
    assert_eq!(code, Some(1), "{report}");
    let (_, fix) = finding(&report, "FAIL", "agent", "cannot write its audit log");
    assert!(fix.contains("free space"), "{fix}");
    finding(&report, "WARN", "alerts", "open alert");
    assert_no_secret("doctor output", report.as_bytes(), &["s3cret-doctor-full"]);
}

/// A key file that decrypts with the identity but holds no keyward record
/// (random bytes encrypted to the agent): the agent skips it, so doctor
/// fails it, with the decode error and the fix, instead of calling it
/// decryptable. A file named after no valid key is skipped too.
#[test]
fn a_key_file_that_decrypts_but_is_not_a_record_fails() {
    let agent = TestAgent::start();
    agent.put("prod/real", "s3cret-doctor-real");
    let planted = agent.dir.join("store/prod/planted.age");
    std::fs::write(&planted, encrypt_to(&agent.recipient(), &rand::random::<[u8; 32]>())).unwrap();
    chmod(&planted, 0o600);
    let misnamed = agent.dir.join("store/prod/Not A Key.age");
    std::fs::write(&misnamed, encrypt_to(&agent.recipient(), b"whatever")).unwrap();
    chmod(&misnamed, 0o600);

    let (code, report) = doctor(&agent);
    assert_eq!(code, Some(1), "{report}");
    let (line, fix) = finding(&report, "FAIL", "key files", "planted.age");
    assert!(
        line.contains("not a valid key record") && line.contains("not a keyward record"),
        "says why, with the decode error: {line}"
    );
    assert!(fix.contains("restore it from a backup"), "{fix}");
    let (_, fix) = finding(&report, "FAIL", "key files", "Not A Key.age");
    assert!(fix.contains("rename it to NAME.age"), "{fix}");
    assert!(
        !report.contains("decryptable"),
        "no OK line for the key files: {report}"
    );
    assert_no_secret("doctor output", report.as_bytes(), &["s3cret-doctor-real"]);
}

/// An install key that does not load is reported once, under "install
/// key"; the audit check says it could not verify the chain without it.
#[test]
fn a_bad_install_key_is_reported_once() {
    let agent = TestAgent::start();
    let key = agent.dir.join("install.key");
    std::fs::write(&key, "not hex\n").unwrap();
    chmod(&key, 0o600);
    let (code, report) = doctor(&agent);
    assert_eq!(code, Some(1), "{report}");
    let (line, fix) = finding(&report, "FAIL", "install key", "is not an install key");
    assert!(line.contains("64 hex digits"), "{line}");
    assert!(fix.contains("restore the install key"), "{fix}");
    assert_eq!(
        report.matches("is not an install key").count(),
        1,
        "reported once: {report}"
    );
    let (_, fix) = finding(&report, "WARN", "audit", "hash chain not verified");
    assert!(fix.contains("fix the install key"), "{fix}");
}

/// The agent warns about an audit file open to its group or others (and
/// keeps running): doctor warns on the same rule, with the chmod.
#[test]
fn an_audit_file_open_to_the_group_is_a_warning() {
    let agent = TestAgent::start();
    agent.put("dev/audit-mode", "s3cret-doctor-audit");
    let file = agent.audit_file();
    chmod(&file, 0o640);
    let (code, report) = doctor(&agent);
    assert_eq!(code, Some(0), "warnings only: {report}");
    let (line, fix) = finding(&report, "WARN", "audit", "0640");
    assert!(line.contains("open to group or others"), "{line}");
    assert!(fix.contains(&format!("chmod 600 {}", file.display())), "{fix}");
}

/// `--admin-socket` (and `KEYWARD_ADMIN_SOCKET`) name the socket doctor
/// asks the agent on, as for every other command.
#[test]
fn doctor_asks_the_agent_on_the_admin_socket_it_is_given() {
    let agent = TestAgent::start();
    let elsewhere = agent.dir.parent().unwrap().join("elsewhere.sock");
    let out = run_cli(
        std::process::Command::new(KEYWARD)
            .arg("--dev")
            .arg(&agent.dir)
            .arg("--admin-socket")
            .arg(&elsewhere)
            .arg("doctor"),
        None,
    );
    let report = text(&out.stdout);
    let (line, _) = finding(&report, "WARN", "agent", "not reachable");
    assert!(line.contains(&elsewhere.display().to_string()), "{line}");

    let out = run_cli(
        std::process::Command::new(KEYWARD)
            .arg("--dev")
            .arg(agent.dir.parent().unwrap())
            .env("KEYWARD_ADMIN_SOCKET", agent.admin_sock())
            .arg("doctor"),
        None,
    );
    let report = text(&out.stdout);
    assert!(
        report.lines().any(|l| l.starts_with("OK    agent: keywardd ")),
        "reached the agent through KEYWARD_ADMIN_SOCKET: {report}"
    );
}

/// Without a store directory there are no key files to count: the store
/// warning stands alone, with no "OK key files: 0 key files".
#[test]
fn a_missing_store_is_not_also_zero_key_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_cli(
        std::process::Command::new(KEYWARD)
            .arg("--dev")
            .arg(dir.path())
            .arg("doctor"),
        None,
    );
    let report = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "no identity: {report}");
    finding(&report, "WARN", "store", "does not exist yet");
    assert!(!report.contains("  key files: "), "{report}");
}
