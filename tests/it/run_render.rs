//! `keyward run` and `keyward render` against a real agent: the child's
//! environment, restart and signal on rotation (once per rotation by
//! default, on every step with `--restart-on any`), the exit status, and
//! the rendered file.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const V1: &str = "sk_live_run_v1_e3b0c4";
const V2: &str = "sk_live_run_v2_98fc1c";

/// `keyward --dev DIR ARGS…` as a child process (stderr piped).
fn spawn_cli(agent: &TestAgent, args: &[&str]) -> Child {
    Command::new(KEYWARD)
        .arg("--dev")
        .arg(&agent.dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn rotate(agent: &TestAgent, key: &str) {
    for (args, input) in [(vec!["stage", key], Some(V2.as_bytes())), (vec!["promote", key], None)] {
        let out = agent.cli(&args, input);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    }
}

/// Waits until `pred` holds for the text of `path` (10 s at most).
fn wait_file(path: &Path, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let t = std::fs::read_to_string(path).unwrap_or_default();
        if pred(&t) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; {} holds {t:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn script(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

fn stderr_of(child: Child) -> String {
    text(&child.wait_with_output().unwrap().stderr)
}

#[test]
fn the_child_sees_the_keys_and_its_exit_status_comes_through() {
    let agent = TestAgent::start();
    agent.put("prod/api", V1);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("env");
    let child = script(
        tmp.path(),
        "child.sh",
        &format!(
            "printf '%s|%s|%s' \"$API_KEY\" \"$API_KEY_PRIMARY\" \"$API_KEY_FALLBACK\" > {}\nexit 7",
            out.display()
        ),
    );
    let run = spawn_cli(&agent, &["run", "--key", "prod/api=API_KEY", "--", &child]);
    let output = run.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(7), "{}", text(&output.stderr));
    // No fallback yet: _FALLBACK is the primary.
    assert_eq!(std::fs::read_to_string(&out).unwrap(), format!("{V1}|{V1}|{V1}"));
    assert_no_secret("keyward run's stderr", &output.stderr, &[V1]);
}

#[test]
fn the_child_is_restarted_with_the_new_keys_on_rotation() {
    let (agent, _tmp, log, mut run) = run_counting_starts(&["--on-rotate", "restart"]);
    rotate(&agent, "prod/api");
    // The promote restarts it (V2 primary, V1 fallback); the stage does
    // not (see the tests below).
    let starts = wait_file(&log, "a restart with the promoted key", |t| {
        t.lines().last() == Some(format!("{V2} {V1}").as_str())
    });
    assert!(starts.lines().next() == Some(format!("{V1} {V1}").as_str()), "{starts}");
    // SIGTERM to keyward run goes on to the command.
    let status = terminate(&mut run, Duration::from_secs(10)).expect("keyward run exits within 10 s of SIGTERM");
    // sleep killed by the forwarded SIGTERM: 128 + 15.
    assert_eq!(status.code(), Some(143));
    let err = stderr_of(run);
    assert!(err.contains("prod/api changed; restarting the command"), "{err}");
    assert_no_secret("keyward run's stderr", err.as_bytes(), &[V1, V2]);
}

/// Runs `keyward --dev DIR CLI_ARGS…` and asserts it worked.
fn step(agent: &TestAgent, args: &[&str], input: Option<&str>) {
    let out = agent.cli(args, input.map(str::as_bytes));
    assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
}

/// An agent whose retire gate opens at once (`grace = "0s"`), holding
/// `prod/api` = V1, and `keyward run --key prod/api=API_KEY RUN_ARGS… --
/// CHILD` where the child appends "$API_KEY_PRIMARY $API_KEY_FALLBACK" to
/// the returned file each time it starts.
fn run_counting_starts(run_args: &[&str]) -> (TestAgent, tempfile::TempDir, PathBuf, Child) {
    let agent = TestAgent::start_with_config("[rotation]\ngrace = \"0s\"\n");
    agent.put("prod/api", V1);
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("starts");
    let child = script(
        tmp.path(),
        "child.sh",
        &format!(
            "echo \"$API_KEY_PRIMARY $API_KEY_FALLBACK\" >> {}\nexec sleep 60",
            log.display()
        ),
    );
    let mut args = vec!["run", "--key", "prod/api=API_KEY", "--stop-timeout", "2s"];
    args.extend_from_slice(run_args);
    args.extend(["--", &child]);
    let run = spawn_cli(&agent, &args);
    wait_file(&log, "the first start", |t| t.lines().count() == 1);
    (agent, tmp, log, run)
}

/// After the last step: no start comes within 1.5 s of it (a bounded
/// wait for something that must not happen), and the starts are `want`.
fn assert_starts_settle_at(log: &Path, want: &[String]) {
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        let t = std::fs::read_to_string(log).unwrap_or_default();
        assert!(t.lines().count() <= want.len(), "more starts than {want:?}: {t:?}");
        std::thread::sleep(Duration::from_millis(25));
    }
    let t = std::fs::read_to_string(log).unwrap();
    assert_eq!(t.lines().collect::<Vec<_>>(), want, "the child's starts");
}

#[test]
fn by_default_a_full_rotation_restarts_the_child_once_at_promote() {
    let (agent, _tmp, log, mut run) = run_counting_starts(&[]);
    step(&agent, &["stage", "prod/api"], Some(V2));
    step(&agent, &["promote", "prod/api"], None);
    wait_file(&log, "the restart at promote", |t| t.lines().count() >= 2);
    step(&agent, &["retire", "--force", "prod/api"], None);
    // Stage and retire change only the fallback: no restart for them, and
    // the child keeps the fallback it got at promote (V1, now retired).
    assert_starts_settle_at(&log, &[format!("{V1} {V1}"), format!("{V2} {V1}")]);
    terminate(&mut run, Duration::from_secs(10)).expect("keyward run exits within 10 s of SIGTERM");
    let err = stderr_of(run);
    // The retire reached it and was let be (the stage may have come
    // together with the promote, so it is not looked for).
    assert!(
        err.contains("prod/api changed but not its primary (v2); --restart-on primary: the command keeps running"),
        "{err}"
    );
    assert_eq!(err.matches("restarting the command").count(), 1, "{err}");
    assert_no_secret("keyward run's stderr", err.as_bytes(), &[V1, V2]);
}

#[test]
fn restart_on_any_restarts_the_child_at_each_step() {
    let (agent, _tmp, log, mut run) = run_counting_starts(&["--restart-on", "any"]);
    for (n, args, input) in [
        (2, vec!["stage", "prod/api"], Some(V2)),
        (3, vec!["promote", "prod/api"], None),
        (4, vec!["retire", "--force", "prod/api"], None),
    ] {
        step(&agent, &args, input);
        wait_file(&log, &format!("the restart after {}", args[0]), |t| {
            t.lines().count() >= n
        });
    }
    assert_starts_settle_at(
        &log,
        &[
            format!("{V1} {V1}"),
            format!("{V1} {V2}"),
            format!("{V2} {V1}"),
            format!("{V2} {V2}"),
        ],
    );
    terminate(&mut run, Duration::from_secs(10)).expect("keyward run exits within 10 s of SIGTERM");
}

#[test]
fn the_child_is_signalled_on_rotation() {
    let agent = TestAgent::start();
    agent.put("prod/api", V1);
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("hups");
    let child = script(
        tmp.path(),
        "child.sh",
        &format!(
            "trap 'echo hup >> {}' HUP\necho ready >> {0}\nwhile :; do sleep 0.05; done",
            log.display()
        ),
    );
    let mut run = spawn_cli(
        &agent,
        &[
            "run",
            "--key",
            "prod/api=API_KEY",
            "--on-rotate",
            "signal:HUP",
            "--",
            &child,
        ],
    );
    wait_file(&log, "the child to start", |t| t.contains("ready"));
    rotate(&agent, "prod/api");
    let log_text = wait_file(&log, "SIGHUPs", |t| t.matches("hup").count() >= 1);
    assert_eq!(
        log_text.matches("ready").count(),
        1,
        "signalled, not restarted: {log_text}"
    );
    // SIGTERM, which keyward run passes on: a SIGKILL would leave the
    // command running, orphaned, after the test.
    terminate(&mut run, Duration::from_secs(10)).expect("keyward run exits within 10 s of SIGTERM");
}

#[test]
fn an_unreachable_agent_or_unknown_key_starts_nothing() {
    let agent = TestAgent::start();
    let tmp = tempfile::tempdir().unwrap();
    let marker = tmp.path().join("started");
    let child = script(tmp.path(), "child.sh", &format!("touch {}", marker.display()));
    let out = agent.cli(&["run", "--key", "prod/nope=X", "--", &child], None);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot fetch prod/nope") && err.contains("the command was not started"),
        "{err}"
    );
    let out = run_cli(
        Command::new(KEYWARD)
            .args(["--socket", "/nonexistent/keys.sock", "run", "--key", "prod/api=X", "--"])
            .arg(&child),
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("/nonexistent/keys.sock") && err.contains("not started"),
        "{err}"
    );
    assert!(!marker.exists(), "the command must not run without its keys");
    let out = agent.cli(&["run", "--key", "prod/api", "--", "/bin/true"], None);
    assert!(text(&out.stderr).contains("ENV/NAME=VARIABLE"), "{}", text(&out.stderr));
}

#[test]
fn render_writes_the_file_0600_and_again_on_rotation() {
    let agent = TestAgent::start();
    agent.put("prod/api", V1);
    let tmp = tempfile::tempdir().unwrap();
    let template = tmp.path().join("app.conf.tmpl");
    std::fs::write(
        &template,
        "api_key = \"{{ prod/api }}\"\nfallback = \"{{ prod/api.fallback }}\"\nversion = {{ prod/api.version }}\n",
    )
    .unwrap();
    let out = tmp.path().join("app.conf");
    let changes = tmp.path().join("changes");
    let mut render = spawn_cli(
        &agent,
        &[
            "render",
            "--template",
            template.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--on-change",
            &format!("echo changed >> {}", changes.display()),
        ],
    );
    let first = wait_file(&out, "the first render", |t| !t.is_empty());
    assert_eq!(first, format!("api_key = \"{V1}\"\nfallback = \"{V1}\"\nversion = 1\n"));
    assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
    rotate(&agent, "prod/api");
    wait_file(&out, "the promoted key", |t| {
        t == format!("api_key = \"{V2}\"\nfallback = \"{V1}\"\nversion = 2\n")
    });
    wait_file(&changes, "the on-change command", |t| t.lines().count() >= 1);
    let status = terminate(&mut render, Duration::from_secs(10)).expect("keyward render exits within 10 s of SIGTERM");
    assert!(status.success());
    let err = stderr_of(render);
    assert_no_secret("keyward render's stderr", err.as_bytes(), &[V1, V2]);
    // No temp file is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".keyward-render"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn render_once_and_template_errors() {
    let agent = TestAgent::start();
    agent.put("prod/api", V1);
    let tmp = tempfile::tempdir().unwrap();
    let template = tmp.path().join("t");
    std::fs::write(&template, "k={{ prod/api }}").unwrap();
    let out = tmp.path().join("o");
    let res = agent.cli(
        &[
            "render",
            "--once",
            "--mode",
            "0640",
            "--template",
            template.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        None,
    );
    assert!(res.status.success(), "{}", text(&res.stderr));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), format!("k={V1}"));
    assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o640);
    std::fs::write(&template, "a\nk={{ prod/api").unwrap();
    let res = agent.cli(
        &[
            "render",
            "--once",
            "--template",
            template.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        None,
    );
    assert!(!res.status.success());
    assert!(text(&res.stderr).contains(":2:"), "{}", text(&res.stderr));
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        format!("k={V1}"),
        "a failed render leaves the file"
    );
}
