//! What a user sees when something is wrong before any key is touched: a bad
//! config, no agent running.

use crate::common;

use std::process::Command;

use common::*;

#[test]
fn a_bad_config_is_refused_with_its_line_and_exit_code_64() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keyward.toml");
    std::fs::write(
        &config,
        "[limits]\nmax_secret_bytes = 100\nmax_conections_per_uid = 3\n",
    )
    .unwrap();
    let out = Command::new(KEYWARDD)
        .arg("--dev")
        .arg(dir.path().join("state"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let msg = text(&out.stderr);
    assert!(msg.contains("keyward.toml:3"), "names the line: {msg}");
    assert!(msg.contains("max_conections_per_uid"), "{msg}");
    assert!(!dir.path().join("state").exists(), "nothing created on a bad config");

    std::fs::write(
        &config,
        "[[grant]]\nusers = [\"no-such-user-kw\"]\nkeys = [\"prod/*\"]\n",
    )
    .unwrap();
    let out = Command::new(KEYWARDD)
        .arg("--config")
        .arg(&config)
        .arg("--check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(text(&out.stderr).contains("no-such-user-kw"), "{}", text(&out.stderr));

    std::fs::write(&config, "[[grant]]\nuids = [0]\nkeys = [\"prod/*\"]\n").unwrap();
    let out = Command::new(KEYWARDD)
        .arg("--config")
        .arg(&config)
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("1 grants"), "{}", text(&out.stdout));
}

#[test]
fn a_missing_config_says_where_it_looked_and_what_to_do() {
    let out = Command::new(KEYWARDD)
        .args(["--config", "/nonexistent/keyward.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let msg = text(&out.stderr);
    assert!(
        msg.contains("/nonexistent/keyward.toml") && msg.contains("--dev"),
        "{msg}"
    );
}

#[test]
fn the_cli_explains_when_no_agent_is_running() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_cli(
        Command::new(KEYWARD)
            .arg("--dev")
            .arg(dir.path())
            .args(["get", "prod/x"]),
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let msg = text(&out.stderr);
    assert!(
        msg.contains("no keyward agent socket") && msg.contains("start keywardd"),
        "{msg}"
    );

    // A stale socket file: "not listening", not a hang.
    let stale = dir.path().join("keys.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let out = run_cli(
        Command::new(KEYWARD)
            .arg("--socket")
            .arg(&stale)
            .args(["get", "prod/x"]),
        None,
    );
    assert!(
        text(&out.stderr).contains("no keyward agent is listening"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn put_never_takes_a_secret_from_argv_and_refuses_empty_input() {
    let agent = TestAgent::start();
    let out = agent.cli(&["put", "prod/empty"], Some(b""));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("no secret given"), "{}", text(&out.stderr));
    // An extra positional argument (a secret typed on the command line) is a
    // usage error, not a value.
    let out = agent.cli(&["put", "prod/argv", "sk_live_on_argv"], Some(b"x"));
    assert_eq!(out.status.code(), Some(2));
    let out = agent.cli(&["get", "prod/argv"], None);
    assert!(!out.status.success(), "nothing was stored");
    // --file works and keeps the bytes.
    let f = agent.dir.parent().unwrap().join("secret.txt");
    std::fs::write(&f, "sk_from_file\n").unwrap();
    let out = agent.cli(&["put", "--raw", "--file", f.to_str().unwrap(), "prod/from-file"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got = agent.cli(&["get", "--primary", "prod/from-file"], None);
    assert_eq!(text(&got.stdout), "sk_from_file\n\n");
}

/// `keyward audit verify` with neither a path nor `--dev`, where no system
/// install is: it says to pass one, not to restore a key from backup.
#[test]
fn audit_verify_without_a_path_or_an_install_says_what_to_pass() {
    if std::path::Path::new("/var/log/keyward/audit.jsonl").exists() {
        return common::system::skip("a system install's audit log exists on this machine");
    }
    let out = Command::new(KEYWARD).args(["audit", "verify"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("there is no audit log at /var/log/keyward/audit.jsonl")
            && err.contains("keyward audit verify PATH")
            && err.contains("keyward --dev DIR audit verify")
            && !err.contains("backup"),
        "{err}"
    );
}

/// `keywardd --check-config` shows what the config sets up (the file, the
/// metrics listener, the sinks by name and kind, the schedules, each
/// [[key]]'s hooks), never a sink's URL or token; the ready banner names
/// the config file and the metrics listener.
#[test]
fn check_config_and_the_banner_show_what_the_config_sets_up() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keyward.toml");
    std::fs::write(
        &file,
        "[rotation]\nevery = \"30d\"\njitter = \"1h\"\n[environments.dev]\nevery = \"off\"\n[environments.prod]\n\
         [[key]]\nkeys = [\"prod/billing-api\"]\ngenerator = [\"/usr/local/bin/gen\", \"--env\", \"prod\"]\nwindow = \"Mon-Fri 09:00-16:00\"\n\
         [metrics]\nlisten = \"127.0.0.1:9464\"\n\
         [[alerts.sink]]\nkind = \"webhook\"\nname = \"ops\"\nurl = \"https://hooks.example/tok-c0nf1g-5ecret\"\n",
    )
    .unwrap();
    let out = Command::new(KEYWARDD)
        .arg("--config")
        .arg(&file)
        .arg("--check-config")
        .output()
        .unwrap();
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{shown}{}", text(&out.stderr));
    for line in [
        format!("config file: {}", file.display()),
        "metrics listener: 127.0.0.1:9464".to_owned(),
        "alert sinks: ops (webhook)".to_owned(),
        "schedule [rotation]: every 30days, jitter 1h".to_owned(),
        "schedule [environments.dev]: every off".to_owned(),
        "[[key]] prod/billing-api".to_owned(),
        "hooks generator /usr/local/bin/gen --env prod".to_owned(),
        "schedule window Mon-Fri 09:00-16:00".to_owned(),
    ] {
        assert!(shown.contains(&line), "{line}: {shown}");
    }
    assert!(!shown.contains("tok-c0nf1g-5ecret"), "a sink's URL is shown: {shown}");

    let agent = TestAgent::start_with_config("[rotation]\ngrace = \"1m\"\n");
    let config = agent.tmp().join("keyward.toml");
    let banner = |logs: &str| {
        logs.contains(&format!("  config file:    {}", config.display())) && logs.contains("  metrics:        off")
    };
    // The banner's lines follow "ready", which is what start waits for.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !banner(&agent.logs()) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(banner(&agent.logs()), "{}", agent.logs());
}
