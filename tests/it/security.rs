//! Who may read what, startup refusals, limits and secret hygiene.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

use common::*;
use keyward::proto;
use tonic::Code;

const NOBODY: u32 = 65534;

/// A config that lets uid 65534 connect (socket group 65534) but grants it
/// nothing; dev mode adds the test's own uid.
const NOBODY_CAN_CONNECT: &str = r#"
[sockets]
service_group = "65534"
service_mode = "0660"
"#;

#[tokio::test]
async fn another_uid_is_denied_and_the_denial_is_audited() {
    let agent = TestAgent::start_with_config(NOBODY_CAN_CONNECT);
    agent.put("prod/billing-api", "sk_live_denied_1");
    let cli = cli_for_other_users(agent.dir.parent().unwrap());

    let out = run_cli(
        Command::new(&cli)
            .args(["--socket"])
            .arg(agent.keys_sock())
            .args(["get", "prod/billing-api"])
            .uid(NOBODY)
            .gid(NOBODY),
        None,
    );
    assert!(!out.status.success());
    let msg = text(&out.stderr);
    assert!(msg.contains("PermissionDenied"), "{msg}");
    assert!(
        msg.contains("uid 65534") && msg.contains("may not read prod/billing-api"),
        "{msg}"
    );
    assert_no_secret(
        "denied client output",
        &[out.stdout, out.stderr].concat(),
        &["sk_live_denied_1"],
    );

    let denial = agent
        .audit_lines()
        .into_iter()
        .find(|r| r["outcome"] == "denied")
        .expect("denial audited");
    assert_eq!(denial["event"], "fetch");
    assert_eq!(denial["caller"]["uid"], NOBODY);
    assert_eq!(denial["key"], "prod/billing-api");
    assert!(denial.get("versions").is_none(), "nothing served: {denial}");

    // The admin socket is 0600 root: uid 65534 cannot even connect.
    let out = run_cli(
        Command::new(&cli)
            .arg("--admin-socket")
            .arg(agent.admin_sock())
            .arg("list")
            .uid(NOBODY)
            .gid(NOBODY),
        None,
    );
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("permission denied"), "{}", text(&out.stderr));

    // The owner still reads the key.
    let got = agent.cli(&["get", "--primary", "prod/billing-api"], None);
    assert_eq!(text(&got.stdout), "sk_live_denied_1\n");
}

#[tokio::test]
async fn a_grant_by_uid_lets_that_uid_read_only_matching_keys() {
    let agent = TestAgent::start_with_config(&format!(
        "{NOBODY_CAN_CONNECT}\n[[grant]]\nuids = [{NOBODY}]\nkeys = [\"staging/crm-*\"]\n"
    ));
    agent.put("staging/crm-api", "sk_granted_crm");
    agent.put("staging/billing", "sk_not_granted");
    let cli = cli_for_other_users(agent.dir.parent().unwrap());
    let as_nobody = |key: &str| {
        run_cli(
            Command::new(&cli)
                .arg("--socket")
                .arg(agent.keys_sock())
                .args(["get", "--primary", key])
                .uid(NOBODY)
                .gid(NOBODY),
            None,
        )
    };
    let ok = as_nobody("staging/crm-api");
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert_eq!(text(&ok.stdout), "sk_granted_crm\n");
    let denied = as_nobody("staging/billing");
    assert!(
        text(&denied.stderr).contains("PermissionDenied"),
        "{}",
        text(&denied.stderr)
    );
}

#[test]
fn agent_refuses_to_start_on_loose_identity_permissions() {
    let mut agent = TestAgent::start();
    agent.stop();
    let identity = agent.dir.join("identity.txt");
    std::fs::set_permissions(&identity, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = agent.spawn().unwrap_err();
    assert!(err.contains(&identity.display().to_string()), "{err}");
    assert!(err.contains("chmod 600"), "{err}");
    assert!(!agent.keys_sock().exists(), "no socket left behind");

    std::fs::set_permissions(&identity, std::fs::Permissions::from_mode(0o600)).unwrap();
    agent.spawn().unwrap();
    agent.put("prod/x", "sk_perm_test");
    agent.stop();
    let key_file = agent.dir.join("store/prod/x.age");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = agent.spawn().unwrap_err();
    assert!(err.contains(&key_file.display().to_string()), "{err}");
}

#[test]
fn a_second_agent_on_the_same_state_refuses_to_start() {
    let agent = TestAgent::start();
    let out = agent.command().output().unwrap();
    assert!(!out.status.success());
    let msg = text(&out.stderr);
    assert!(msg.contains("another keywardd"), "{msg}");
    // The first agent's socket was not touched and still answers.
    assert!(agent.cli(&["status"], None).status.success());
}

#[test]
fn sockets_have_the_configured_modes_and_vanish_on_shutdown() {
    let mut agent = TestAgent::start_with_config(NOBODY_CAN_CONNECT);
    use std::os::unix::fs::MetadataExt;
    let keys = std::fs::metadata(agent.keys_sock()).unwrap();
    assert_eq!(keys.mode() & 0o777, 0o660);
    assert_eq!(keys.gid(), NOBODY);
    let admin = std::fs::metadata(agent.admin_sock()).unwrap();
    assert_eq!(admin.mode() & 0o777, 0o600);
    assert!(agent.stop().success());
    assert!(!agent.keys_sock().exists() && !agent.admin_sock().exists());
    assert!(agent.logs().contains("stopped"), "{}", agent.logs());
}

#[test]
fn core_dumps_are_disabled_in_the_agent() {
    let agent = TestAgent::start();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", agent.pid())).unwrap();
    let core = limits.lines().find(|l| l.starts_with("Max core file size")).unwrap();
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(&fields[4..6], ["0", "0"], "{core}");
}

#[tokio::test]
async fn connections_over_the_per_uid_limit_get_a_clear_error_and_others_keep_working() {
    let agent = TestAgent::start_with_config("[limits]\nmax_connections_per_uid = 4\n");
    agent.put("dev/limited", "sk_limit_test");
    // The CLI's connection counts until the agent sees it close: wait for
    // that on one admin connection, which stays open as the first of the 4.
    let mut admin = agent.admin().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while admin
        .get_status(proto::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .connections
        > 1
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the CLI's connection was never released"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(agent.keys().await);
    }
    let mut extra = agent.keys().await;
    let err = extra
        .get_key(proto::GetKeyRequest {
            key: key("dev", "limited"),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("max_connections_per_uid"), "{}", err.message());
    for c in &mut clients {
        c.get_key(proto::GetKeyRequest {
            key: key("dev", "limited"),
        })
        .await
        .unwrap();
    }
    admin.get_status(proto::GetStatusRequest {}).await.unwrap();
    drop(extra);
    drop(clients);
    drop(admin);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    agent.fetch("dev", "limited").await.unwrap();
}

/// Secrets put, fetched, refused and overwritten never show up in the
/// agent's output, the audit log, the store files, or argv/environ.
#[tokio::test]
async fn no_test_secret_reaches_logs_audit_disk_or_argv() {
    let mut agent = TestAgent::start();
    let secrets = [
        "sk_live_LEAKCHECK_one",
        "sk_live_LEAKCHECK_two",
        "sk_live_LEAKCHECK_three",
    ];
    agent.put("prod/leak-a", secrets[0]);
    agent.put("staging/leak-b", secrets[1]);
    let out = agent.cli(&["put", "--overwrite", "prod/leak-a"], Some(secrets[2].as_bytes()));
    assert!(out.status.success());
    let refused = agent.cli(&["put", "prod/leak-a"], Some(secrets[0].as_bytes()));
    assert!(!refused.status.success());
    assert_no_secret(
        "refused put's output",
        &[refused.stdout, refused.stderr].concat(),
        &secrets,
    );
    let mut keys = agent.keys().await;
    for _ in 0..20 {
        keys.get_key(proto::GetKeyRequest {
            key: key("prod", "leak-a"),
        })
        .await
        .unwrap();
    }
    let _ = keys
        .get_key(proto::GetKeyRequest {
            key: key("prod", "Leak"),
        })
        .await;
    let pid = agent.pid();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert_no_secret("agent cmdline", &cmdline, &secrets);
    assert_no_secret("agent environ", &environ, &secrets);
    agent.stop();

    assert_no_secret("agent output", agent.logs().as_bytes(), &secrets);
    assert!(
        agent.logs().contains("DEBUG") || agent.logs().contains("INFO"),
        "debug logging was on"
    );
    assert_no_secret("audit log", &std::fs::read(agent.audit_file()).unwrap(), &secrets);
    let files = files_under(&agent.dir);
    assert!(!files.is_empty(), "no file under {}", agent.dir.display());
    for entry in files {
        assert_no_secret(
            &entry.display().to_string(),
            &std::fs::read(&entry).unwrap_or_default(),
            &secrets,
        );
    }
}

/// The packaged unit leaves CAP_SYS_PTRACE out, and without it the agent
/// cannot inspect other users' callers, so `executables` (and `units`)
/// grants deny them. The agent says so at start and on every reload that
/// keeps such a grant, and says nothing when it has the capability.
#[test]
fn executable_grants_without_cap_sys_ptrace_are_warned_about() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to drop a capability from a root agent");
        return;
    }
    const WARNING: &str = "lacks CAP_SYS_PTRACE";
    let grant = "[[grant]]\nuids = [0]\nexecutables = [\"/usr/bin/true\"]\nkeys = [\"prod/*\"]\n";
    let mut agent = TestAgent::start_system(grant);
    // Once stopped, everything it printed is in its logs.
    agent.stop();
    assert!(!agent.logs().contains(WARNING), "{}", agent.logs());

    let mut cmd = Command::new("setpriv");
    cmd.arg("--bounding-set=-sys_ptrace").arg("--").arg(KEYWARDD);
    cmd.arg("--config")
        .arg(agent.dir.parent().unwrap().join("keyward.toml"));
    agent.spawn_with(cmd).expect("the agent starts without CAP_SYS_PTRACE");
    // stderr is read by its own thread: wait for the line to arrive.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let wait_for_warnings = |agent: &TestAgent, n: usize, what: &str| {
        while agent.logs().matches(WARNING).count() < n {
            assert!(std::time::Instant::now() < deadline, "{what}: {}", agent.logs());
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    wait_for_warnings(&agent, 1, "no warning at start");
    assert!(
        agent.logs().contains("CapabilityBoundingSet=CAP_SYS_PTRACE"),
        "{}",
        agent.logs()
    );

    agent.sighup();
    wait_for_warnings(&agent, 2, "no warning on reload");

    // A reload to a policy without executable grants is not warned about.
    agent.rewrite_config("[[grant]]\nuids = [0]\nkeys = [\"prod/*\"]\n");
    agent.sighup();
    let reloads = |a: &TestAgent| {
        a.audit_lines()
            .iter()
            .filter(|r| r["event"] == "config_reload" && r["outcome"] == "ok")
            .count()
    };
    while reloads(&agent) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no second reload: {}",
            agent.logs()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // The warning would come before the reload's audit record: once the
    // agent has stopped (and its output is all read), a third is not late.
    agent.stop();
    assert_eq!(agent.logs().matches(WARNING).count(), 2, "{}", agent.logs());
}

/// A caller controls its executable's path, which the agent logs with each
/// auth-failure report: a newline in it must not start a log line of its
/// own (a forged ERROR under journald, say).
#[test]
fn a_newline_in_a_callers_path_cannot_forge_a_log_line() {
    let agent = TestAgent::start();
    agent.put("prod/forge", "sk_forge_test");
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("kw\nERROR keywardd: forged line");
    std::fs::copy(KEYWARD, &exe).unwrap();
    // Reports count only on versions the reporter was served.
    assert!(agent.cli(&["get", "prod/forge"], None).status.success());
    let out = run_cli(
        Command::new(&exe).arg("--dev").arg(&agent.dir).args([
            "report",
            "prod/forge",
            "--version",
            "1",
            "--status",
            "401",
            "--service",
            "svc\nERROR keywardd: forged service",
        ]),
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !agent.logs().contains("auth failure reported") {
        assert!(std::time::Instant::now() < deadline, "{}", agent.logs());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let logs = agent.logs();
    assert!(logs.contains(r"kw\nERROR keywardd: forged line"), "{logs}");
    for line in logs.lines() {
        assert!(!line.starts_with("ERROR keywardd: forged"), "a forged line: {logs}");
    }
}
