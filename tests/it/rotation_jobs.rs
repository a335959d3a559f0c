//! The agent's rotation jobs against a real agent: resumed after kill -9 at
//! each step, independent of the CLI that started them, scheduled (and
//! held by a window), and never retiring without evidence that the new key
//! works.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::receiver::{Received, Receiver};
use common::*;
use keyward::proto;

const KEY: &str = "prod/jobs";

/// A hook script in `dir`: it appends its name to `calls`; if `hold-NAME`
/// exists and `release-NAME` does not, it touches `at-NAME` and waits for
/// `release-NAME` (60 s at most). The generator prints a fresh key; the
/// validator refuses the key when `refuse-validator` exists.
pub(crate) fn hook(dir: &Path) -> PathBuf {
    let path = dir.join("hook.sh");
    let script = format!(
        r#"#!/bin/sh
d={dir}
name="$1"
echo "$name" >> "$d/calls"
if [ -e "$d/hold-$name" ] && [ ! -e "$d/release-$name" ]; then
  touch "$d/at-$name"
  i=0
  while [ ! -e "$d/release-$name" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done
fi
case "$name" in
  generator) printf 'sk_job_%s' "$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')" ;;
  validator) cat >/dev/null; [ ! -e "$d/refuse-validator" ] ;;
  revoker) cat >/dev/null; echo revoked ;;
esac
"#,
        dir = dir.display()
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

/// Hooks for KEY (and `extra` lines in its [[key]] entry), in a fresh dir.
fn hooks_config(dir: &Path, hooks: &[&str], rotation: &str, extra: &str) -> String {
    let h = hook(dir);
    let argv = |name: &str| format!("{name} = [\"{}\", \"{name}\"]\n", h.display());
    let lines: String = hooks.iter().map(|n| argv(n)).collect();
    format!("[rotation]\n{rotation}\n[[key]]\nkeys = [\"{KEY}\"]\n{lines}{extra}\n")
}

pub(crate) fn calls(dir: &Path, name: &str) -> usize {
    std::fs::read_to_string(dir.join("calls"))
        .unwrap_or_default()
        .lines()
        .filter(|l| *l == name)
        .count()
}

async fn status(agent: &TestAgent) -> proto::RotationStatus {
    let (env, name) = KEY.split_once('/').unwrap();
    agent
        .admin()
        .await
        .get_rotation_status(proto::RotationStatusRequest { key: key(env, name) })
        .await
        .expect("rotation status")
        .into_inner()
}

async fn start_job(agent: &TestAgent) -> proto::RotationJob {
    let (env, name) = KEY.split_once('/').unwrap();
    agent
        .admin()
        .await
        .start_rotation(proto::StartRotationRequest {
            key: key(env, name),
            ..Default::default()
        })
        .await
        .expect("start rotation")
        .into_inner()
}

/// Waits (30 s at most) until the job's status satisfies `pred`.
async fn wait_job(
    agent: &TestAgent,
    what: &str,
    pred: impl Fn(&proto::RotationStatus) -> bool,
) -> proto::RotationStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(agent).await;
        if pred(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {s:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn job(s: &proto::RotationStatus) -> proto::RotationJob {
    s.job.clone().unwrap_or_default()
}

fn wait_file(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} did not appear", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn records(agent: &TestAgent, event: &str) -> Vec<serde_json::Value> {
    agent
        .audit_lines()
        .into_iter()
        .filter(|r| r["event"] == event && r["key"] == KEY && r["outcome"] == "ok")
        .collect()
}

/// kill -9 at each step: while the generator runs (nothing staged yet),
/// in the grace period, while the validator checks the promoted key, and
/// while the revoker runs (the old key not dropped yet). Each time the
/// agent restarts, the job resumes where it was and finishes: one stage,
/// one promote, one retire in the audit, generations only go up, the
/// chain verifies. The generator and the revoker, cut short, run again
/// (documented as retried); nothing else runs twice.
#[tokio::test]
async fn a_job_resumes_after_kill_9_at_each_step_and_finishes_once() {
    let hooks_dir = tempfile::tempdir().unwrap();
    let d = hooks_dir.path();
    let toml = hooks_config(d, &["generator", "validator", "revoker"], "grace = \"3s\"", "");
    let mut agent = TestAgent::start_with_config(&toml);
    agent.put(KEY, "sk_job_v1");
    let mut generations = vec![status(&agent).await.key.unwrap().generation];
    let seen = |s: &proto::RotationStatus, generations: &mut Vec<u64>| {
        let g = s.key.as_ref().unwrap().generation;
        assert!(
            g >= *generations.last().unwrap(),
            "generation went back: {generations:?} then {g}"
        );
        generations.push(g);
    };

    // 1. In the generator: nothing is staged yet.
    std::fs::write(d.join("hold-generator"), "").unwrap();
    start_job(&agent).await;
    wait_file(&d.join("at-generator"));
    agent.kill9();
    std::fs::write(d.join("release-generator"), "").unwrap();
    agent.spawn().expect("restarts");
    let s = wait_job(&agent, "the staged key, then the grace", |s| job(s).step == "grace").await;
    seen(&s, &mut generations);
    assert_eq!(calls(d, "generator"), 2, "the generator cut short ran again");

    // 2. In the grace period.
    agent.kill9();
    agent.spawn().expect("restarts");
    let s = wait_job(&agent, "the job resumed", |s| job(s).active).await;
    seen(&s, &mut generations);

    // 3. While the validator checks the promoted key.
    std::fs::write(d.join("hold-validator"), "").unwrap();
    wait_file(&d.join("at-validator"));
    agent.kill9();
    std::fs::write(d.join("release-validator"), "").unwrap();
    std::fs::write(d.join("hold-revoker"), "").unwrap();
    agent.spawn().expect("restarts");

    // 4. In the revoker: the old key is still there.
    wait_file(&d.join("at-revoker"));
    let s = status(&agent).await;
    assert_eq!(s.key.as_ref().unwrap().state, proto::RotationState::Promoted as i32);
    seen(&s, &mut generations);
    agent.kill9();
    std::fs::write(d.join("release-revoker"), "").unwrap();
    agent.spawn().expect("restarts");

    let s = wait_job(&agent, "the job's end", |s| !job(s).active).await;
    seen(&s, &mut generations);
    let j = job(&s);
    assert_eq!(j.result, "ok", "{j:#?}");
    let info = s.key.unwrap();
    assert_eq!(info.state, proto::RotationState::Steady as i32);
    assert_eq!(info.primary.unwrap().version, 2);
    assert!(info.fallback.is_none());
    for (event, n) in [("stage", 1), ("promote", 1), ("retire", 1), ("rollback", 0)] {
        assert_eq!(records(&agent, event).len(), n, "{event} records");
    }
    assert_eq!(
        calls(d, "revoker"),
        2,
        "the revoker cut short ran again (it is idempotent)"
    );
    // Stage-time check, then after promotion: cut short once, run again.
    assert_eq!(calls(d, "validator"), 3);
    let out = agent.cli(&["audit", "verify"], None);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
}

/// `keyward rotate` interrupted (SIGINT) or killed (SIGKILL) mid-job: the
/// job finishes on its own; the interrupted CLI says how to follow and
/// how to stop it.
#[tokio::test]
async fn the_job_finishes_when_its_cli_is_interrupted_or_killed() {
    for signal in [nix::sys::signal::Signal::SIGINT, nix::sys::signal::Signal::SIGKILL] {
        let hooks_dir = tempfile::tempdir().unwrap();
        let d = hooks_dir.path();
        let toml = hooks_config(d, &["generator", "validator"], "grace = \"2s\"", "");
        let agent = TestAgent::start_with_config(&toml);
        agent.put(KEY, "sk_job_v1");
        let cli = Command::new(common::KEYWARD)
            .arg("--dev")
            .arg(&agent.dir)
            .args(["rotate", KEY])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_job(&agent, "the grace", |s| job(s).step == "grace").await;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(cli.id() as i32), signal).unwrap();
        let out = cli.wait_with_output().unwrap();
        if signal == nix::sys::signal::Signal::SIGINT {
            assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
            let err = text(&out.stderr);
            assert!(
                err.contains("goes on in the agent")
                    && err.contains(&format!("keyward rotation-status {KEY} --follow"))
                    && err.contains(&format!("keyward rotate --cancel {KEY}")),
                "{err}"
            );
        }
        let s = wait_job(&agent, "the job's end", |s| !job(s).active).await;
        assert_eq!(job(&s).result, "ok", "{:#?}", job(&s));
        assert_eq!(s.key.unwrap().state, proto::RotationState::Steady as i32);
    }
}

/// Cancel stops the job between two steps and leaves the key where it
/// stands; the CLI that followed it reports the cancel.
#[tokio::test]
async fn cancel_stops_at_a_consistent_state() {
    let hooks_dir = tempfile::tempdir().unwrap();
    let d = hooks_dir.path();
    let toml = hooks_config(d, &["generator"], "grace = \"1h\"", "");
    let agent = TestAgent::start_with_config(&toml);
    agent.put(KEY, "sk_job_v1");
    start_job(&agent).await;
    wait_job(&agent, "the grace", |s| job(s).step == "grace").await;
    let out = agent.cli(&["rotate", "--cancel", KEY], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("stays promoted"), "{}", text(&out.stdout));
    let s = status(&agent).await;
    assert_eq!(job(&s).result, "cancelled");
    assert_eq!(s.key.unwrap().state, proto::RotationState::Promoted as i32);
    // Nothing runs: a second cancel says so.
    let out = agent.cli(&["rotate", "--cancel", KEY], None);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no rotation job runs"),
        "{}",
        text(&out.stderr)
    );
    // Starting again resumes from PROMOTED.
    let j = start_job(&agent).await;
    assert!(j.active && j.new_version == 2, "{j:#?}");
}

/// No use reported and no validator: the job stays PROMOTED past the grace
/// (both keys valid) and `no_evidence` reaches the webhook, naming the
/// caller that was served the key; one report of use and it retires.
#[tokio::test]
async fn without_evidence_the_job_waits_and_alerts_and_one_use_report_retires() {
    let hooks_dir = tempfile::tempdir().unwrap();
    let d = hooks_dir.path();
    let r = Receiver::start();
    let sink = format!("[[alerts.sink]]\nkind = \"webhook\"\nurl = \"{}\"\n", r.url("/hook"));
    let toml = format!("{}{sink}", hooks_config(d, &["generator"], "grace = \"1s\"", ""));
    let agent = TestAgent::start_with_config(&toml);
    agent.put(KEY, "sk_job_v1");
    start_job(&agent).await;
    // A reader is served the new primary, and says nothing.
    let s = wait_job(&agent, "the promotion", |s| {
        s.key.as_ref().unwrap().state == proto::RotationState::Promoted as i32
    })
    .await;
    let new = s.key.unwrap().primary.unwrap().version;
    let (env, name) = KEY.split_once('/').unwrap();
    agent.fetch(env, name).await.unwrap();
    let s = wait_job(&agent, "the evidence gate", |s| job(s).step == "evidence").await;
    assert!(job(&s).waiting.contains("no evidence"), "{:#?}", job(&s));
    assert!(
        job(&s)
            .next_gate
            .contains("use of the new primary reported by evidence_quorum callers"),
        "{:#?}",
        job(&s)
    );
    assert!(
        s.unreported
            .iter()
            .any(|u| u.contains(&format!("uid {}", nix::unistd::getuid()))),
        "{:?}",
        s.unreported
    );
    let alert = wait_for_webhook(&r, "no_evidence", "firing").await;
    assert!(alert["summary"].as_str().unwrap().contains("no evidence"), "{alert}");
    // Still both keys, well past the grace.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let set = agent.fetch(env, name).await.unwrap();
    assert_eq!(set.primary.unwrap().version, new);
    assert!(
        set.fallback.is_some(),
        "the old key must stay while nothing shows the new one works"
    );
    // A plain retire is refused for the same reason; --force still works.
    let out = agent.cli(&["retire", KEY], None);
    assert!(
        text(&out.stderr).contains("nothing shows that the new primary"),
        "{}",
        text(&out.stderr)
    );
    // One report of use: the job retires the old key.
    let out = agent.cli(
        &[
            "report",
            KEY,
            "--version",
            &new.to_string(),
            "--service",
            "test",
            "--used",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = wait_job(&agent, "the job's end", |s| !job(s).active).await;
    assert_eq!(job(&s).result, "ok", "{:#?}", job(&s));
    assert!(s.users.iter().any(|u| u.starts_with("uid ")), "{:?}", s.users);
    wait_for_webhook(&r, "no_evidence", "resolved").await;
    assert_eq!(agent.audit_records("key_use", "reported").len(), 1);
}

/// The case that retired on silence: the only consumers are programs
/// under `keyward run` (they cannot report), and the provider refuses the
/// new key for their calls. The job ends neither in `done` nor with a
/// revoked old key: both keys stay valid, and the alert names them.
#[tokio::test]
async fn keyward_run_consumers_alone_never_let_the_old_key_go() {
    let hooks_dir = tempfile::tempdir().unwrap();
    let d = hooks_dir.path();
    let r = Receiver::start();
    let sink = format!("[[alerts.sink]]\nkind = \"webhook\"\nurl = \"{}\"\n", r.url("/hook"));
    let toml = format!(
        "{}{sink}",
        hooks_config(d, &["generator", "revoker"], "grace = \"1s\"", "")
    );
    let agent = TestAgent::start_with_config(&toml);
    agent.put(KEY, "sk_job_v1");
    let starts = d.join("starts");
    let mut run = Command::new(common::KEYWARD)
        .arg("--dev")
        .arg(&agent.dir)
        .args(["run", "--key", &format!("{KEY}=JOB_KEY"), "--", "sh", "-c"])
        .arg(format!("echo start >> {}; exec sleep 600", starts.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_job_subscribers(&agent, 1).await;
    // `keyward rotate` says at the start that this consumer cannot report.
    let out = agent.cli(&["rotate", KEY, "--until", "staged"], None);
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{shown}{}", text(&out.stderr));
    assert!(
        shown.contains("warning: 1 subscriber(s) cannot report use of the new key")
            && shown.contains("(keyward run)")
            && shown.contains("the rotation stays PROMOTED"),
        "{shown}"
    );
    start_job(&agent).await;
    let s = wait_job(&agent, "the evidence gate", |s| job(s).step == "evidence").await;
    assert!(job(&s).active);
    let sub = &s.subscribers[0];
    assert_eq!(sub.kind, "run");
    assert!(!sub.reported_use);
    let alert = wait_for_webhook(&r, "no_evidence", "firing").await;
    assert!(
        alert["details"]["unreported"]
            .as_str()
            .unwrap_or("")
            .contains("keyward run"),
        "{alert}"
    );
    assert_eq!(calls(d, "revoker"), 0, "the old key was never revoked");
    let (env, name) = KEY.split_once('/').unwrap();
    assert!(agent.fetch(env, name).await.unwrap().fallback.is_some());
    // The command started once: the promote restarted it once more.
    let started = std::fs::read_to_string(&starts).unwrap_or_default().lines().count();
    assert_eq!(started, 2, "starts of the command under keyward run");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(run.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let _ = run.wait();
}

async fn wait_job_subscribers(agent: &TestAgent, n: usize) {
    wait_job(agent, "the subscribers", |s| s.subscribers.len() >= n).await;
}

async fn wait_for_webhook(r: &Receiver, signal: &str, status: &str) -> serde_json::Value {
    let find = |got: &[Received]| {
        got.iter()
            .map(|g| &g.body)
            .find(|b| b["signal"] == signal && b["status"] == status)
            .cloned()
    };
    let what = format!("a {signal} {status} webhook");
    let got = r
        .wait_until(&what, Duration::from_secs(20), |got| find(got).is_some())
        .await;
    find(&got).expect("waited for")
}

/// With a validator, it runs again after the promotion and its verdict
/// decides: accepted → retired; refused → rolled back (the job says so,
/// and `rotation_failed` fires).
#[tokio::test]
async fn the_validator_after_promotion_decides() {
    for refuse in [false, true] {
        let hooks_dir = tempfile::tempdir().unwrap();
        let d = hooks_dir.path();
        let toml = hooks_config(d, &["generator", "validator"], "grace = \"1s\"", "");
        let agent = TestAgent::start_with_config(&toml);
        agent.put(KEY, "sk_job_v1");
        start_job(&agent).await;
        if refuse {
            wait_job(&agent, "the grace", |s| job(s).step == "grace").await;
            std::fs::write(d.join("refuse-validator"), "").unwrap();
        }
        let s = wait_job(&agent, "the job's end", |s| !job(s).active).await;
        let j = job(&s);
        let info = s.key.unwrap();
        if refuse {
            assert_eq!(j.result, "rolled_back", "{j:#?}");
            assert!(j.message.contains("rolled back"), "{j:#?}");
            assert_eq!(info.state, proto::RotationState::Staged as i32);
            assert_eq!(info.primary.unwrap().version, 1);
            assert_eq!(agent.audit_records("validate", "rejected").len(), 1);
        } else {
            assert_eq!(j.result, "ok", "{j:#?}");
            assert_eq!(info.state, proto::RotationState::Steady as i32);
            assert_eq!(agent.audit_records("validate", "ok").len(), 1);
        }
        assert_eq!(calls(d, "validator"), 2, "once at stage, once after promotion");
    }
}

/// A schedule of a few seconds rotates the key again and again with no
/// CLI; a window that is not now rotates nothing, and `keyward list` shows
/// when the key rotates next.
#[tokio::test]
async fn a_schedule_rotates_on_its_own_and_a_closed_window_holds_it() {
    let hooks_dir = tempfile::tempdir().unwrap();
    let d = hooks_dir.path();
    let metrics = d.join("metrics.sock");
    let toml = format!(
        "{}[metrics]\nlisten = \"unix:{}\"\n",
        hooks_config(d, &["generator", "validator"], "grace = \"0s\"", "every = \"2s\"\n"),
        metrics.display()
    );
    let agent = TestAgent::start_with_config(&toml);
    agent.put(KEY, "sk_job_v1");
    let s = wait_job(&agent, "three scheduled rotations", |s| {
        s.key.as_ref().unwrap().primary.as_ref().unwrap().version >= 4 && !job(s).active
    })
    .await;
    assert_eq!(job(&s).trigger, "schedule");
    assert_eq!(job(&s).result, "ok");
    let text = scrape(&metrics);
    let ok_jobs = text
        .lines()
        .find_map(|l| l.strip_prefix("keyward_rotations_total{result=\"ok\",trigger=\"schedule\"} "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no scheduled ok count: {text}"));
    assert!(ok_jobs >= 3.0, "{ok_jobs}");
    assert!(
        text.contains("keyward_rotation_job_step{environment=\"prod\",key=\"jobs\"}"),
        "{text}"
    );
    let list = agent.ok(&["list"], None);
    assert!(list.contains("NEXT ROTATION"), "{list}");
    let shown = agent.ok(&["status"], None);
    assert!(
        shown.contains(&format!("next rotation   {KEY} at")) && shown.contains("(every 2s)"),
        "{shown}"
    );

    // Tomorrow only: nothing rotates today.
    let tomorrow = ["Tue", "Wed", "Thu", "Fri", "Sat", "Sun", "Mon"]
        [jiff::Zoned::now().weekday().to_monday_zero_offset() as usize];
    let hooks_dir = tempfile::tempdir().unwrap();
    let toml = hooks_config(
        hooks_dir.path(),
        &["generator"],
        "grace = \"0s\"",
        &format!("every = \"1s\"\nwindow = \"{tomorrow} 00:00-24:00\"\n"),
    );
    let agent = TestAgent::start_with_config(&toml);
    agent.put(KEY, "sk_job_v1");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let s = status(&agent).await;
    assert_eq!(s.key.as_ref().unwrap().generation, 1, "rotated outside its window");
    assert!(s.job.is_none());
    let next = s.next_rotation.and_then(|t| keyward::wire::from_timestamp(&t)).unwrap();
    assert!(
        next > std::time::SystemTime::now() + Duration::from_secs(60),
        "{next:?}"
    );
    assert!(
        s.schedule.contains(&format!("window {tomorrow} 00:00-24:00")),
        "{}",
        s.schedule
    );
}

/// A failed scheduled rotation (the generator fails) raises
/// `rotation_failed` and is tried again only after a backoff, not in a
/// tight loop.
#[tokio::test]
async fn a_failing_schedule_alerts_and_backs_off() {
    let hooks_dir = tempfile::tempdir().unwrap();
    let d = hooks_dir.path();
    let fail = d.join("fail.sh");
    std::fs::write(&fail, format!("#!/bin/sh\necho x >> {}/calls\nexit 3\n", d.display())).unwrap();
    std::fs::set_permissions(&fail, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let r = Receiver::start();
    let toml = format!(
        "[rotation]\ngrace = \"0s\"\n[[key]]\nkeys = [\"{KEY}\"]\ngenerator = [\"{}\"]\nevery = \"1s\"\n[[alerts.sink]]\nkind = \"webhook\"\nurl = \"{}\"\n",
        fail.display(),
        r.url("/hook")
    );
    let agent = TestAgent::start_with_config(&toml);
    agent.put(KEY, "sk_job_v1");
    let alert = wait_for_webhook(&r, "rotation_failed", "firing").await;
    assert!(
        alert["summary"].as_str().unwrap().contains("tries again after"),
        "{alert}"
    );
    // The first backoff is 5 s: within 3 s of the alert, no second try.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(calls(d, "x"), 1, "retried in a tight loop");
    let s = status(&agent).await;
    assert_eq!(job(&s).failed_attempts, 1);
    assert!(job(&s).retry_at.is_some());
    assert_eq!(s.key.unwrap().generation, 1, "a failed generator changes nothing");
}

/// A schedule without a generator is a config error naming the key.
#[test]
fn a_schedule_without_a_generator_is_refused_naming_the_key() {
    let mut agent = TestAgent::start();
    agent.put(KEY, "sk_job_v1");
    agent.stop();
    let config = agent.tmp().join("sched.toml");
    std::fs::write(&config, "[rotation]\nevery = \"30d\"\n").unwrap();
    let mut cmd = agent.command();
    cmd.arg("--config").arg(&config);
    let err = agent.spawn_with(cmd).unwrap_err();
    assert!(
        err.contains(&format!("key {KEY} is scheduled for rotation")) && err.contains("generator"),
        "{err}"
    );
}

/// A damaged jobs file stops the agent with a message that says what to
/// do, and is left as it was.
#[test]
fn a_damaged_jobs_file_is_named_and_left_alone() {
    let mut agent = TestAgent::start();
    agent.stop();
    let file = agent.dir.join("rotations.json");
    std::fs::write(&file, b"{not json").unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let err = agent.spawn().unwrap_err();
    assert!(
        err.contains("rotations.json") && err.contains("move the file aside") && err.contains("not a jobs file"),
        "{err}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"{not json");
}

/// The one crash the kill points above cannot land on: after a step was
/// committed to the store, before the job wrote that it was done. The
/// jobs file is left as such a crash leaves it (the intent to stage from
/// generation 1, the key already staged at generation 2): the restarted
/// agent sees the step was taken, adopts the staged key, and goes on
/// from there, without staging again; an intent to roll back that was
/// taken ends the job as rolled back instead of promoting again.
#[tokio::test]
async fn a_step_committed_just_before_a_crash_is_not_taken_again() {
    for (step, done_by_hand, generation_before, want) in [
        ("stage", vec![vec!["stage", KEY]], 1, "ok"),
        (
            "rollback",
            vec![vec!["stage", KEY], vec!["promote", KEY], vec!["rollback", KEY]],
            3,
            "rolled_back",
        ),
    ] {
        let hooks_dir = tempfile::tempdir().unwrap();
        let d = hooks_dir.path();
        let toml = hooks_config(d, &["generator", "validator"], "grace = \"0s\"", "");
        let mut agent = TestAgent::start_with_config(&toml);
        agent.put(KEY, "sk_job_v1");
        for args in &done_by_hand {
            let input = (args[0] == "stage").then_some(&b"sk_job_v2"[..]);
            agent.ok(args, input);
        }
        agent.stop();
        let new_version = if step == "stage" { "null" } else { "2" };
        let record = format!(
            r#"{{"version":1,"jobs":[{{"key":"{KEY}","trigger":"manual","until":"retired","new_version":{new_version},"rolled_back":false,"validated":null,"fleet":false,"fleet_timeout_secs":120,"cancel":false,"active":true,"result":null,"message":"","started_by":"uid 0","started_at":1,"updated_at":1,"step":"stage","generation":{generation_before},"intent":{{"step":"{step}","generation_before":{generation_before}}},"failed_attempts":0,"retry_at":null,"log":[]}}]}}"#
        );
        // As the agent writes it: private to its user.
        let file = agent.dir.join("rotations.json");
        std::fs::write(&file, record).unwrap();
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        agent.spawn().expect("restarts");
        let s = wait_job(&agent, "the job's end", |s| !job(s).active).await;
        let j = job(&s);
        assert_eq!(j.result, want, "{step}: {j:#?}");
        assert!(
            j.log
                .iter()
                .any(|l| l.contains(&format!("the {step} under way when the agent stopped was taken"))),
            "{j:#?}"
        );
        assert_eq!(calls(d, "generator"), 0, "{step}: nothing staged again");
        let stages = agent
            .audit_lines()
            .into_iter()
            .filter(|r| r["event"] == "stage" && r["outcome"] == "ok")
            .count();
        assert_eq!(stages, 1, "{step}");
    }
}

/// The jobs file decides which steps the agent takes after a restart, so
/// it is read as the key files are: one that another uid owns (here
/// 65534, as if it had planted it), or that others may write, stops the
/// agent with the fix to run, and is left as it was.
#[test]
fn a_jobs_file_another_uid_could_write_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        return common::system::skip("chowns a file to another uid");
    }
    let mut agent = TestAgent::start();
    agent.put(KEY, "sk_job_v1");
    // A job that ends at once (staged, from a given key) writes the file.
    let out = agent.cli(&["rotate", KEY, "--stdin", "--until", "staged"], Some(b"sk_job_v2"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    agent.stop();
    let file = agent.dir.join("rotations.json");
    let before = std::fs::read(&file).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::chown(&file, Some(65534), Some(65534)).unwrap();
    let err = agent.spawn().unwrap_err();
    assert!(err.contains("rotations.json") && err.contains("chown"), "{err}");
    std::os::unix::fs::chown(&file, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    let err = agent.spawn().unwrap_err();
    assert!(err.contains("rotations.json") && err.contains("chmod"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), before, "the file was changed");
}
