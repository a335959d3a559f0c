//! Rotation against a real agent: every transition and refusal, CAS,
//! restarts in each state, the retire gate, hooks, `keyward rotate`
//! (resume, automatic rollback, kill -9 at each step) and the no-gap
//! property under load.

use crate::common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use keyward::proto::{self, RotationState};
use tonic::Code;

const GRACE_ZERO: &str = "[rotation]\ngrace = \"0s\"\n";

fn stage_req(name: &str, secret: &str) -> proto::StageKeyRequest {
    keep_for_leak_scan("secrets", secret.as_bytes());
    proto::StageKeyRequest {
        key: key("prod", name),
        secret: bytes::Bytes::from(secret.as_bytes().to_vec()),
        ..Default::default()
    }
}

fn step(name: &str) -> proto::RotationRequest {
    proto::RotationRequest {
        key: key("prod", name),
        expected_generation: None,
    }
}

fn retire(name: &str, force: bool) -> proto::RetireKeyRequest {
    proto::RetireKeyRequest {
        key: key("prod", name),
        expected_generation: None,
        force,
    }
}

async fn get(agent: &TestAgent, name: &str) -> proto::KeySet {
    agent.fetch("prod", name).await.unwrap()
}

fn secrets(set: &proto::KeySet) -> (String, Option<String>) {
    (
        text(&set.primary.as_ref().unwrap().secret),
        set.fallback.as_ref().map(|f| text(&f.secret)),
    )
}

#[tokio::test]
async fn every_transition_and_every_refusal() {
    let agent = TestAgent::start_with_config(GRACE_ZERO);
    agent.put("prod/api", "sk_v1");
    let mut admin = agent.admin().await;

    // STEADY: only stage.
    for (what, err) in [
        ("promote", admin.promote_key(step("api")).await.unwrap_err()),
        ("rollback", admin.rollback_key(step("api")).await.unwrap_err()),
        ("abort", admin.abort_key(step("api")).await.unwrap_err()),
        ("retire", admin.retire_key(retire("api", true)).await.unwrap_err()),
    ] {
        assert_eq!(err.code(), Code::FailedPrecondition, "{what}");
        assert!(
            err.message().contains("steady") && err.message().contains("keyward stage"),
            "{what}: {}",
            err.message()
        );
    }
    admin.stage_key(stage_req("api", "sk_v2")).await.unwrap();
    assert_eq!(
        secrets(&get(&agent, "api").await),
        ("sk_v1".into(), Some("sk_v2".into()))
    );

    // STAGED: promote or abort; stage again only with replace.
    let e = admin.stage_key(stage_req("api", "sk_v3")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("staged") && e.message().contains("keyward promote"),
        "{}",
        e.message()
    );
    for (what, err) in [
        ("rollback", admin.rollback_key(step("api")).await.unwrap_err()),
        ("retire", admin.retire_key(retire("api", true)).await.unwrap_err()),
    ] {
        assert_eq!(err.code(), Code::FailedPrecondition, "{what}");
    }
    let replaced = admin
        .stage_key(proto::StageKeyRequest {
            replace: true,
            ..stage_req("api", "sk_v3")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replaced.key.unwrap().fallback.unwrap().version, 3);
    admin.abort_key(step("api")).await.unwrap();
    let set = get(&agent, "api").await;
    assert_eq!(secrets(&set), ("sk_v1".into(), None));
    assert_eq!(set.state, RotationState::Steady as i32);

    admin.stage_key(stage_req("api", "sk_v4")).await.unwrap();
    admin.promote_key(step("api")).await.unwrap();
    let set = get(&agent, "api").await;
    assert_eq!(secrets(&set), ("sk_v4".into(), Some("sk_v1".into())));
    assert_eq!(set.state, RotationState::Promoted as i32);

    // PROMOTED: rollback or retire.
    for (what, err) in [
        ("stage", admin.stage_key(stage_req("api", "sk_v5")).await.unwrap_err()),
        ("promote", admin.promote_key(step("api")).await.unwrap_err()),
        ("abort", admin.abort_key(step("api")).await.unwrap_err()),
    ] {
        assert_eq!(err.code(), Code::FailedPrecondition, "{what}");
        assert!(err.message().contains("promoted"), "{what}: {}", err.message());
    }
    admin.rollback_key(step("api")).await.unwrap();
    assert_eq!(
        secrets(&get(&agent, "api").await),
        ("sk_v1".into(), Some("sk_v4".into()))
    );
    admin.promote_key(step("api")).await.unwrap();
    // Not without evidence that the new key works: use reported.
    let e = admin.retire_key(retire("api", false)).await.unwrap_err();
    assert!(
        e.message().contains("nothing shows that the new primary"),
        "{}",
        e.message()
    );
    get(&agent, "api").await;
    agent
        .keys()
        .await
        .report_key_use(proto::KeyUseReport {
            key: key("prod", "api"),
            version: 4,
            service: "test".into(),
            successes: 1,
        })
        .await
        .unwrap();
    admin.retire_key(retire("api", false)).await.unwrap();
    let set = get(&agent, "api").await;
    assert_eq!(secrets(&set), ("sk_v4".into(), None));
    // put(1) stage abort stage promote rollback promote retire + stage-replace = generation 9.
    assert_eq!(set.generation, 9);

    // Each change was audited with generations before and after.
    let lines = agent.audit_lines();
    for event in ["stage", "promote", "rollback", "abort", "retire"] {
        let r = lines
            .iter()
            .find(|r| r["event"] == event)
            .unwrap_or_else(|| panic!("{event} audited"));
        assert!(r["generation_before"].as_u64().unwrap() + 1 == r["generation_after"].as_u64().unwrap());
    }
    let audit = std::fs::read_to_string(agent.audit_file()).unwrap();
    assert_no_secret("audit log", audit.as_bytes(), &["sk_v1", "sk_v2", "sk_v3", "sk_v4"]);
}

#[tokio::test]
async fn compare_and_swap_conflicts_are_aborted_with_the_current_generation() {
    let agent = TestAgent::start_with_config(GRACE_ZERO);
    agent.put("prod/cas", "sk_cas_1");
    let mut admin = agent.admin().await;
    let e = admin
        .stage_key(proto::StageKeyRequest {
            expected_generation: Some(5),
            ..stage_req("cas", "sk_cas_2")
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Aborted);
    assert!(e.message().contains("generation 1, not 5"), "{}", e.message());
    admin
        .stage_key(proto::StageKeyRequest {
            expected_generation: Some(1),
            ..stage_req("cas", "sk_cas_2")
        })
        .await
        .unwrap();
    let e = admin
        .promote_key(proto::RotationRequest {
            key: key("prod", "cas"),
            expected_generation: Some(1),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Aborted);
    assert!(e.message().contains("generation 2, not 1"), "{}", e.message());
}

#[tokio::test]
async fn restart_in_each_state_keeps_state_and_generation() {
    let mut agent = TestAgent::start_with_config(GRACE_ZERO);
    agent.put("prod/r", "sk_r1");
    let steps: Vec<(&str, RotationState)> = vec![
        ("stage", RotationState::Staged),
        ("promote", RotationState::Promoted),
        ("retire", RotationState::Steady),
    ];
    for (what, want) in steps {
        {
            let mut admin = agent.admin().await;
            match what {
                "stage" => drop(admin.stage_key(stage_req("r", "sk_r2")).await.unwrap()),
                "promote" => drop(admin.promote_key(step("r")).await.unwrap()),
                _ => drop(admin.retire_key(retire("r", true)).await.unwrap()),
            }
        }
        let before = get(&agent, "r").await;
        assert_eq!(before.state, want as i32);
        agent.stop();
        agent.spawn().unwrap();
        let after = get(&agent, "r").await;
        assert_eq!(
            (after.generation, after.state),
            (before.generation, before.state),
            "after {what}"
        );
        assert_eq!(secrets(&after), secrets(&before));
    }
}

#[tokio::test]
async fn retire_is_gated_by_grace_and_failures_unless_forced() {
    let agent = TestAgent::start_with_config("[rotation]\ngrace = \"1h\"\n");
    agent.put("prod/g", "sk_g1");
    let mut admin = agent.admin().await;
    admin.stage_key(stage_req("g", "sk_g2")).await.unwrap();
    admin.promote_key(step("g")).await.unwrap();
    let e = admin.retire_key(retire("g", false)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("grace period") && e.message().contains("--force"),
        "{}",
        e.message()
    );
    let out = agent.cli(&["rotation-status", "prod/g"], None);
    assert!(text(&out.stdout).contains("retire: refused"), "{}", text(&out.stdout));

    // A client reports the new primary refused: the gate names it.
    let set = get(&agent, "g").await;
    agent
        .keys()
        .await
        .report_auth_failure(proto::AuthFailureReport {
            key: key("prod", "g"),
            version: set.primary.unwrap().version,
            status_code: 401,
            service: "billing-worker".into(),
            detail: "HTTP 401 from the provider".into(),
            misdirected_to: String::new(),
        })
        .await
        .unwrap();
    let status = admin
        .get_rotation_status(proto::RotationStatusRequest { key: key("prod", "g") })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.failures_since_promotion, 1);
    let e = admin.retire_key(retire("g", false)).await.unwrap_err();
    assert!(e.message().contains("auth failure"), "{}", e.message());

    let out = agent.cli(&["retire", "--force", "prod/g"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let forced = agent
        .audit_lines()
        .into_iter()
        .find(|r| r["event"] == "retire")
        .unwrap();
    assert!(forced["detail"].as_str().unwrap().contains("forced"), "{forced}");
    assert_eq!(secrets(&get(&agent, "g").await), ("sk_g2".into(), None));
}

/// A shell hook (argv[0] must be absolute).
fn hook(dir: &std::path::Path, name: &str, script: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

struct Hooks {
    dir: tempfile::TempDir,
}

impl Hooks {
    /// generator prints sk_gen_<counter>; validator accepts anything but
    /// "sk_bad"; revoker appends what it gets to revoked.txt.
    fn new() -> Hooks {
        Hooks {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn config(&self, grace: &str, extra: &str) -> String {
        let d = self.dir.path();
        let counter = d.join("counter");
        let generator = hook(
            d,
            "gen",
            &format!(
                "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; printf 'sk_gen_%s' $n",
                c = counter.display()
            ),
        );
        let validator = hook(
            d,
            "val",
            "s=$(cat); [ \"$s\" != sk_bad ] || { echo 'provider says: key invalid' >&2; exit 1; }",
        );
        let revoker = hook(
            d,
            "rev",
            &format!(
                "cat >> {}; echo >> {}; echo revoked",
                self.revoked().display(),
                self.revoked().display()
            ),
        );
        format!(
            "[rotation]\ngrace = \"{grace}\"\nhook_timeout = \"10s\"\npropagation_timeout = \"5s\"\nfailure_threshold = 2\n{extra}\n[[key]]\nkeys = [\"prod/*\"]\ngenerator = [\"{generator}\"]\nvalidator = [\"{validator}\"]\nrevoker = [\"{revoker}\"]\n"
        )
    }
    fn revoked(&self) -> std::path::PathBuf {
        self.dir.path().join("revoked.txt")
    }
}

#[tokio::test]
async fn hooks_generate_validate_and_revoke_with_secrets_only_on_stdin() {
    let hooks = Hooks::new();
    let agent = TestAgent::start_with_config(&hooks.config("0s", ""));
    agent.put("prod/h", "sk_h_orig");
    // The validator refuses a bad key: nothing staged, its stderr in the message.
    let out = agent.cli(&["stage", "prod/h"], Some(b"sk_bad"));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("provider says: key invalid"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(get(&agent, "h").await.state, RotationState::Steady as i32);

    let out = agent.cli(&["stage", "--generate", "prod/h"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        secrets(&get(&agent, "h").await),
        ("sk_h_orig".into(), Some("sk_gen_1".into()))
    );
    assert!(agent.cli(&["promote", "prod/h"], None).status.success());
    // Retire needs evidence that the new key works: a caller served it
    // reports using it.
    let out = agent.cli(&["retire", "prod/h"], None);
    assert!(
        text(&out.stderr).contains("nothing shows that the new primary v2 works"),
        "{}",
        text(&out.stderr)
    );
    agent.ok(
        &["report", "prod/h", "--version", "2", "--service", "test", "--used"],
        None,
    );
    let out = agent.cli(&["retire", "prod/h"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("revoked"), "{}", text(&out.stdout));
    assert_eq!(std::fs::read_to_string(hooks.revoked()).unwrap(), "sk_h_orig\n");
    assert_no_secret("agent output", agent.logs().as_bytes(), &["sk_h_orig", "sk_gen_1"]);
}

#[tokio::test]
async fn rotate_runs_the_whole_sequence_stops_early_and_resumes() {
    let hooks = Hooks::new();
    let agent = TestAgent::start_with_config(&hooks.config("1s", ""));
    agent.put("prod/rot", "sk_rot_orig");
    let out = agent.cli(&["rotate", "prod/rot", "--until", "staged"], None);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(get(&agent, "rot").await.state, RotationState::Staged as i32);
    // Resume: propagate, promote, 1 s grace, retire, revoke.
    let started = Instant::now();
    let out = agent.cli(&["rotate", "prod/rot"], None);
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{shown}{}", text(&out.stderr));
    // The job's steps as it takes them: promote, the validator after the
    // grace (the evidence: no client reports here), retire and revoke.
    for step in [
        "resuming the rotation to v2",
        "promote: now promoted",
        "waiting (grace)",
        "the validator accepted the promoted v2",
        "retire: now steady",
        "revoker: revoked",
        "ok: v2 is the primary",
    ] {
        assert!(shown.contains(step), "{step}: {shown}");
    }
    assert!(started.elapsed() >= Duration::from_secs(1), "waited the grace period");
    assert_eq!(secrets(&get(&agent, "rot").await), ("sk_gen_1".into(), None));
    assert_eq!(std::fs::read_to_string(hooks.revoked()).unwrap(), "sk_rot_orig\n");
    // A second full run from STEADY.
    let out = agent.cli(&["rotate", "prod/rot"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(secrets(&get(&agent, "rot").await), ("sk_gen_2".into(), None));
}

#[tokio::test]
async fn rotate_rolls_back_when_the_new_primary_is_refused_during_grace() {
    let hooks = Hooks::new();
    let agent = TestAgent::start_with_config(&hooks.config("30s", ""));
    agent.put("prod/rb", "sk_rb_orig");
    let mut rotate = std::process::Command::new(KEYWARD)
        .arg("--dev")
        .arg(&agent.dir)
        .args(["rotate", "prod/rb", "--poll", "50ms"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the promotion, then report two failures on the new primary.
    let deadline = Instant::now() + Duration::from_secs(20);
    let new_version = loop {
        let set = get(&agent, "rb").await;
        if set.state == RotationState::Promoted as i32 {
            break set.primary.unwrap().version;
        }
        assert!(Instant::now() < deadline, "rotate never promoted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut keys = agent.keys().await;
    for _ in 0..2 {
        keys.report_auth_failure(proto::AuthFailureReport {
            key: key("prod", "rb"),
            version: new_version,
            status_code: 403,
            service: "crm-sync".into(),
            detail: String::new(),
            misdirected_to: String::new(),
        })
        .await
        .unwrap();
    }
    let status = wait_timeout(&mut rotate, Duration::from_secs(20)).expect("rotate ends");
    let out = rotate.wait_with_output().unwrap();
    assert!(!status.success());
    let shown = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(shown.contains("rolled_back: rolled back"), "{shown}");
    assert!(shown.contains("2 auth failure(s) against the new primary"), "{shown}");
    let set = get(&agent, "rb").await;
    assert_eq!(set.state, RotationState::Staged as i32);
    assert_eq!(secrets(&set), ("sk_rb_orig".into(), Some("sk_gen_1".into())));
    assert!(!hooks.revoked().exists(), "nothing revoked");
}

/// kill -9 of the agent at each step of `keyward rotate` leaves a key in a
/// consistent state that serves a valid primary, and `rotate` resumes it.
/// The kill points are found by watching the agent, not by timing: inside
/// the generator, with the key STAGED (rotate stopped there), inside the
/// grace period (PROMOTED), and inside the revoker.
#[tokio::test]
async fn kill_9_at_each_rotate_step_leaves_a_resumable_key() {
    let hooks = Hooks::new();
    let d = hooks.dir.path();
    let marker = |name: &str| d.join(name);
    // Slow hooks that say when they start, so the kill lands inside them.
    let slow_gen = hook(
        d,
        "slowgen",
        &format!("touch {}; sleep 1; printf sk_slow_$$", marker("gen.started").display()),
    );
    let slow_rev = hook(
        d,
        "slowrev",
        &format!(
            "touch {}; sleep 1; cat >> {r}; echo >> {r}",
            marker("rev.started").display(),
            r = hooks.revoked().display()
        ),
    );
    // The validator after promotion is the evidence that lets it retire.
    let ok = hook(d, "ok", "cat >/dev/null");
    let config = format!(
        "[rotation]\ngrace = \"2s\"\nhook_timeout = \"10s\"\npropagation_timeout = \"5s\"\n[[key]]\nkeys = [\"prod/*\"]\ngenerator = [\"{slow_gen}\"]\nvalidator = [\"{ok}\"]\nrevoker = [\"{slow_rev}\"]\n"
    );
    let mut agent = TestAgent::start_with_config(&config);
    agent.put("prod/crash", "sk_crash_orig");

    #[derive(Debug, Clone, Copy)]
    enum KillAt {
        InGenerator,
        Staged,
        InGrace,
        InRevoker,
    }
    for kill_at in [KillAt::InGenerator, KillAt::Staged, KillAt::InGrace, KillAt::InRevoker] {
        for m in ["gen.started", "rev.started"] {
            let _ = std::fs::remove_file(marker(m));
        }
        let until = if matches!(kill_at, KillAt::Staged) {
            "staged"
        } else {
            "retired"
        };
        let mut rotate = std::process::Command::new(KEYWARD)
            .arg("--dev")
            .arg(&agent.dir)
            .args(["rotate", "prod/crash", "--poll", "20ms", "--until", until])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let reached = match kill_at {
                KillAt::InGenerator => marker("gen.started").exists(),
                KillAt::Staged => get(&agent, "crash").await.state == RotationState::Staged as i32,
                KillAt::InGrace => get(&agent, "crash").await.state == RotationState::Promoted as i32,
                KillAt::InRevoker => marker("rev.started").exists(),
            };
            if reached {
                break;
            }
            assert!(Instant::now() < deadline, "never reached {kill_at:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let before = get(&agent, "crash").await;
        agent.kill9();
        let _ = wait_timeout(&mut rotate, Duration::from_secs(10));
        let _ = rotate.kill();
        let _ = rotate.wait();
        agent.spawn().expect("restarts");
        let set = get(&agent, "crash").await;
        let consistent = match RotationState::try_from(set.state).unwrap() {
            RotationState::Steady => set.fallback.is_none(),
            RotationState::Staged | RotationState::Promoted => set.fallback.is_some(),
            _ => false,
        };
        assert!(
            consistent,
            "{kill_at:?}: state {} with fallback {:?}",
            set.state,
            set.fallback.is_some()
        );
        assert!(
            set.generation >= before.generation,
            "{kill_at:?}: generation went backwards"
        );
        // The primary served before the kill is still primary or fallback.
        let served = [set.primary.as_ref(), set.fallback.as_ref()];
        assert!(
            served
                .iter()
                .flatten()
                .any(|v| v.version == before.primary.as_ref().unwrap().version),
            "{kill_at:?}: the primary in use before the kill is gone"
        );
        // rotate resumes from wherever it stands and finishes.
        let out = agent.cli(&["rotate", "prod/crash", "--poll", "20ms"], None);
        assert!(
            out.status.success(),
            "resume after {kill_at:?}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        let done = get(&agent, "crash").await;
        assert_eq!(done.state, RotationState::Steady as i32, "{kill_at:?}");
        assert!(done.fallback.is_none());
    }
    agent.stop();
    let out = agent.cli(&["audit", "verify"], None);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
}

/// Each secret's validity window: from just before it is staged until its
/// retire returns (open while it is still in use).
type Validity = HashMap<String, (Instant, Option<Instant>)>;

/// 64 clients fetch in a loop while 50 full rotations run: every response
/// has a primary, and its primary or fallback is a key that was valid at
/// that moment (valid from just before it is staged until its retire
/// returns).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_gap_while_64_clients_fetch_during_50_rotations() {
    let agent = TestAgent::start_with_config(&format!("{GRACE_ZERO}\n[limits]\nmax_connections_per_uid = 128\n"));
    agent.put("prod/hot", "sk_hot_0");
    // secret -> (valid from, valid until)
    let validity: Arc<Mutex<Validity>> = Arc::default();
    validity
        .lock()
        .unwrap()
        .insert("sk_hot_0".into(), (Instant::now(), None));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..64 {
        let mut keys = agent.keys().await;
        let (validity, stop) = (validity.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut checked = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let sent = Instant::now();
                let set = keys
                    .get_key(proto::GetKeyRequest {
                        key: key("prod", "hot"),
                    })
                    .await
                    .unwrap()
                    .into_inner();
                let received = Instant::now();
                let primary = text(&set.primary.as_ref().expect("every response has a primary").secret);
                let fallback = set.fallback.as_ref().map(|f| text(&f.secret));
                let v = validity.lock().unwrap();
                let valid = |s: &str| {
                    v.get(s)
                        .is_some_and(|(from, until)| *from <= received && until.is_none_or(|u| u >= sent))
                };
                assert!(
                    valid(&primary) || fallback.as_deref().is_some_and(valid),
                    "neither {primary} nor {fallback:?} was valid"
                );
                checked += 1;
            }
            checked
        }));
    }
    let mut admin = agent.admin().await;
    let started = Instant::now();
    for i in 1..=50 {
        let new = format!("sk_hot_{i}");
        validity.lock().unwrap().insert(new.clone(), (Instant::now(), None));
        admin.stage_key(stage_req("hot", &new)).await.unwrap();
        admin.promote_key(step("hot")).await.unwrap();
        // Forced: no client reports use here (the evidence gate is tested
        // in rotation_jobs); what is measured is the gap.
        admin.retire_key(retire("hot", true)).await.unwrap();
        let old = format!("sk_hot_{}", i - 1);
        validity.lock().unwrap().get_mut(&old).unwrap().1 = Some(Instant::now());
    }
    let rotations = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for c in clients {
        total += c.await.unwrap();
    }
    eprintln!("50 rotations in {rotations:?} with 64 clients; {total} responses checked");
    assert!(total > 64 * 10, "the clients made progress: {total}");
    assert_eq!(secrets(&get(&agent, "hot").await), ("sk_hot_50".into(), None));
}

/// Ctrl-C of `keyward rotate` (SIGINT to the CLI) inside the generator:
/// the CLI stops following and says so, and the agent's job goes on: the
/// generator finishes, and the job runs to the end without the CLI.
#[tokio::test]
async fn ctrl_c_of_rotate_inside_the_generator_leaves_the_job_running() {
    let hooks = Hooks::new();
    let d = hooks.dir.path();
    let started = d.join("gen.started");
    let slow_gen = hook(
        d,
        "slowgen",
        &format!("touch {}; sleep 1; printf sk_ctrl_c_$$", started.display()),
    );
    let ok = hook(d, "ok", "cat >/dev/null");
    let config = format!(
        "[rotation]\ngrace = \"1s\"\nhook_timeout = \"10s\"\npropagation_timeout = \"5s\"\n[[key]]\nkeys = [\"prod/*\"]\ngenerator = [\"{slow_gen}\"]\nvalidator = [\"{ok}\"]\n"
    );
    let agent = TestAgent::start_with_config(&config);
    agent.put("prod/intr", "sk_intr_orig");
    let mut cli = std::process::Command::new(KEYWARD)
        .arg("--dev")
        .arg(&agent.dir)
        .args(["rotate", "prod/intr", "--poll", "20ms"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !started.exists() {
        assert!(Instant::now() < deadline, "the generator never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(cli.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    wait_timeout(&mut cli, Duration::from_secs(10)).expect("rotate exits on Ctrl-C");
    let out = cli.wait_with_output().unwrap();
    assert!(
        text(&out.stderr).contains("goes on in the agent"),
        "{}",
        text(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let set = get(&agent, "intr").await;
        if set.state == RotationState::Steady as i32 && set.primary.as_ref().unwrap().version == 2 {
            assert!(text(&set.primary.unwrap().secret).starts_with("sk_ctrl_c_"));
            break;
        }
        assert!(Instant::now() < deadline, "the job did not finish without its CLI");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A version that would be expired already is refused, with the reason,
/// by put, stage and StartRotation alike, and nothing changes.
#[tokio::test]
async fn an_expiry_in_the_past_is_refused_and_changes_nothing() {
    let agent = TestAgent::start();
    let past = humantime::format_rfc3339_seconds(std::time::SystemTime::now() - Duration::from_secs(3600)).to_string();
    let out = agent.cli(&["put", "prod/exp", "--expires", &past], Some(b"sk_exp_1"));
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("is not in the future") && err.contains("nothing was stored"),
        "{err}"
    );
    assert_eq!(agent.fetch("prod", "exp").await.unwrap_err().code(), Code::NotFound);
    agent.put("prod/exp", "sk_exp_1");
    let out = agent.cli(&["stage", "prod/exp", "--expires", &past], Some(b"sk_exp_2"));
    let err = text(&out.stderr);
    assert!(!out.status.success() && err.contains("nothing was staged"), "{err}");
    let mut admin = agent.admin().await;
    let past_ts = Some(keyward::wire::timestamp(
        std::time::SystemTime::now() - Duration::from_secs(60),
    ));
    let e = admin
        .start_rotation(proto::StartRotationRequest {
            key: key("prod", "exp"),
            secret: bytes::Bytes::from_static(b"sk_exp_3"),
            expires_at: past_ts,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    let set = get(&agent, "exp").await;
    assert_eq!((set.generation, set.fallback.is_none()), (1, true));
}
