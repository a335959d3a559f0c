//! WatchKeys against a real agent: the initial state and every change after
//! it, latest-value delivery to slow subscribers, refusals at subscribe,
//! a config reload (SIGHUP) that removes access, the audit of every
//! delivery, delivery tracking for rotation, and shutdown.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use keyward::proto::{self, KeyEvent, RotationState};
use tonic::{Code, Streaming};

const WAIT: Duration = Duration::from_secs(10);

async fn watch(agent: &TestAgent, keys: &[(&str, &str)]) -> Result<Streaming<KeyEvent>, tonic::Status> {
    let req = proto::WatchKeysRequest {
        keys: keys.iter().map(|(e, n)| key(e, n).unwrap()).collect(),
    };
    agent.keys().await.watch_keys(req).await.map(|r| r.into_inner())
}

async fn next(stream: &mut Streaming<KeyEvent>) -> Result<KeyEvent, tonic::Status> {
    match tokio::time::timeout(WAIT, stream.message()).await {
        Ok(Ok(Some(ev))) => Ok(ev),
        Ok(Ok(None)) => panic!("the stream ended without a status"),
        Ok(Err(status)) => Err(status),
        Err(_) => panic!("no event within {WAIT:?}"),
    }
}

async fn next_ok(stream: &mut Streaming<KeyEvent>) -> KeyEvent {
    next(stream)
        .await
        .unwrap_or_else(|s| panic!("stream failed: {:?} {}", s.code(), s.message()))
}

/// Asserts that nothing arrives for a while.
async fn quiet(stream: &mut Streaming<KeyEvent>) {
    if let Ok(r) = tokio::time::timeout(Duration::from_millis(300), stream.message()).await {
        panic!(
            "unexpected: {:?}",
            r.map(|m| m.map(|e| (e.reason, e.key_set.map(|k| k.generation))))
        );
    }
}

fn name_of(ev: &KeyEvent) -> String {
    let k = ev.key_set.as_ref().unwrap().key.as_ref().unwrap();
    format!("{}/{}", k.environment, k.name)
}

fn generation(ev: &KeyEvent) -> u64 {
    ev.key_set.as_ref().unwrap().generation
}

fn primary(ev: &KeyEvent) -> String {
    text(&ev.key_set.as_ref().unwrap().primary.as_ref().unwrap().secret)
}

fn fallback(ev: &KeyEvent) -> Option<String> {
    ev.key_set.as_ref().unwrap().fallback.as_ref().map(|f| text(&f.secret))
}

fn state(ev: &KeyEvent) -> RotationState {
    RotationState::try_from(ev.key_set.as_ref().unwrap().state).unwrap()
}

async fn put(agent: &TestAgent, env: &str, name: &str, secret: &[u8], overwrite: bool) {
    keep_for_leak_scan("secrets", secret);
    agent
        .admin()
        .await
        .put_key(proto::PutKeyRequest {
            key: key(env, name),
            secret: bytes::Bytes::copy_from_slice(secret),
            overwrite,
            ..Default::default()
        })
        .await
        .unwrap();
}

/// This process's `watch` audit records with outcome `outcome`.
fn watch_records(agent: &TestAgent, outcome: &str) -> Vec<serde_json::Value> {
    let me = std::process::id() as i64;
    agent
        .audit_lines()
        .into_iter()
        .filter(|r| r["event"] == "watch" && r["outcome"] == outcome && r["caller"]["pid"].as_i64() == Some(me))
        .collect()
}

async fn subscribers(agent: &TestAgent, env: &str, name: &str) -> Vec<proto::Subscriber> {
    agent
        .admin()
        .await
        .get_rotation_status(proto::RotationStatusRequest { key: key(env, name) })
        .await
        .unwrap()
        .into_inner()
        .subscribers
}

/// Polls `f` until it is true or `limit` passes.
async fn eventually(limit: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

#[tokio::test]
async fn initial_state_then_every_change_with_its_reason() {
    let agent = TestAgent::start();
    agent.put("prod/a", "sk_watch_a1");
    agent.put("staging/b", "sk_watch_b1");

    // A key named twice is watched once.
    let mut s = watch(&agent, &[("prod", "a"), ("staging", "b"), ("prod", "a")])
        .await
        .unwrap();
    let a = next_ok(&mut s).await;
    let b = next_ok(&mut s).await;
    assert_eq!((a.reason.as_str(), name_of(&a).as_str()), ("initial", "prod/a"));
    assert_eq!((b.reason.as_str(), name_of(&b).as_str()), ("initial", "staging/b"));
    assert_eq!(
        (generation(&a), primary(&a), fallback(&a)),
        (1, "sk_watch_a1".into(), None)
    );
    assert_eq!(state(&a), RotationState::Steady);
    let v = a.key_set.as_ref().unwrap().primary.as_ref().unwrap();
    assert_eq!(v.version, 1);
    assert!(!v.fingerprint.is_empty() && v.created_at.is_some());
    assert_eq!(primary(&b), "sk_watch_b1");
    quiet(&mut s).await;

    put(&agent, "prod", "a", b"sk_watch_a2", true).await;
    let ev = next_ok(&mut s).await;
    assert_eq!((ev.reason.as_str(), name_of(&ev).as_str()), ("put", "prod/a"));
    assert_eq!((generation(&ev), primary(&ev)), (2, "sk_watch_a2".into()));

    agent
        .admin()
        .await
        .delete_key(proto::DeleteKeyRequest {
            key: key("prod", "a"),
            expected_generation: None,
        })
        .await
        .unwrap();
    let ev = next_ok(&mut s).await;
    assert_eq!((ev.reason.as_str(), name_of(&ev).as_str()), ("deleted", "prod/a"));
    let set = ev.key_set.unwrap();
    assert_eq!((set.generation, set.primary, set.fallback), (0, None, None));

    // The watch goes on: the key created again is sent.
    put(&agent, "prod", "a", b"sk_watch_a3", false).await;
    let ev = next_ok(&mut s).await;
    assert_eq!(
        (ev.reason.as_str(), generation(&ev), primary(&ev)),
        ("put", 1, "sk_watch_a3".into())
    );
    put(&agent, "staging", "b", b"sk_watch_b2", true).await;
    let ev = next_ok(&mut s).await;
    assert_eq!(
        (name_of(&ev), generation(&ev), primary(&ev)),
        ("staging/b".into(), 2, "sk_watch_b2".into())
    );
    quiet(&mut s).await;

    // Every delivery has its audit record, in order, with what was served.
    let records = watch_records(&agent, "ok");
    let seen: Vec<(&str, &str, Option<u64>)> = records
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap(),
                r["detail"].as_str().unwrap(),
                r["generation_after"].as_u64(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("prod/a", "initial", Some(1)),
            ("staging/b", "initial", Some(1)),
            ("prod/a", "put", Some(2)),
            ("prod/a", "deleted", None),
            ("prod/a", "put", Some(1)),
            ("staging/b", "put", Some(2)),
        ]
    );
    assert_eq!(records[0]["versions"][0]["role"], "primary");
    assert!(records[0]["versions"][0]["fingerprint"].is_string());
    assert_no_secret(
        "audit log",
        agent
            .audit_lines()
            .iter()
            .map(|r| r.to_string())
            .collect::<String>()
            .as_bytes(),
        &["sk_watch_a1", "sk_watch_a2", "sk_watch_b2"],
    );
}

#[tokio::test]
async fn bad_unknown_and_empty_requests_are_refused_at_subscribe_and_audited() {
    let agent = TestAgent::start();
    agent.put("prod/here", "sk_here");
    let e = watch(&agent, &[("prod", "here"), ("prod", "nope")]).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{}", e.message());
    assert!(
        e.message().contains("prod/nope") && e.message().contains("keyward put"),
        "{}",
        e.message()
    );
    let e = watch(&agent, &[("prod", "Bad Name")]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    let e = watch(&agent, &[("qa", "x")]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("not configured"), "{}", e.message());
    let e = watch(&agent, &[]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("at least") || e.message().contains("1 to"),
        "{}",
        e.message()
    );

    assert_eq!(watch_records(&agent, "not_found").len(), 1);
    assert_eq!(watch_records(&agent, "invalid_argument").len(), 3);
    assert!(watch_records(&agent, "ok").is_empty(), "nothing was delivered");
    // A refused watch leaves no subscriber behind.
    assert!(subscribers(&agent, "prod", "here").await.is_empty());
}

#[tokio::test]
async fn a_slow_subscriber_skips_to_the_latest_state_and_a_fast_one_keeps_up() {
    let agent = TestAgent::start();
    // Big secrets fill the HTTP/2 windows quickly, so the slow subscriber's
    // stream really stops being read while the key keeps changing.
    let secret = |i: usize| {
        let mut s = format!("sk_slow_{i:04}_").into_bytes();
        s.resize(60_000, b'x');
        s
    };
    put(&agent, "prod", "s", &secret(0), false).await;
    let mut slow = watch(&agent, &[("prod", "s")]).await.unwrap();
    let mut fast = watch(&agent, &[("prod", "s")]).await.unwrap();
    assert_eq!(generation(&next_ok(&mut slow).await), 1);
    assert_eq!(generation(&next_ok(&mut fast).await), 1);

    const PUTS: u64 = 120;
    let fast_task = tokio::spawn(async move {
        let mut gens = Vec::new();
        while gens.last() != Some(&(PUTS + 1)) {
            let ev = next_ok(&mut fast).await;
            assert_eq!(primary(&ev)[..13], format!("sk_slow_{:04}_", generation(&ev) - 1));
            gens.push(generation(&ev));
        }
        (gens, fast)
    });
    for i in 1..=PUTS as usize {
        put(&agent, "prod", "s", &secret(i), true).await;
    }
    let (fast_gens, mut fast) = tokio::time::timeout(WAIT, fast_task).await.unwrap().unwrap();

    let mut slow_gens = Vec::new();
    while slow_gens.last() != Some(&(PUTS + 1)) {
        let ev = next_ok(&mut slow).await;
        assert_eq!(ev.reason, "put");
        // The KeySet is always whole and consistent.
        assert_eq!(primary(&ev)[..13], format!("sk_slow_{:04}_", generation(&ev) - 1));
        slow_gens.push(generation(&ev));
    }
    for gens in [&fast_gens, &slow_gens] {
        assert!(
            gens.windows(2).all(|w| w[0] < w[1]),
            "strictly increasing, never a repeat: {gens:?}"
        );
    }
    assert!(
        (slow_gens.len() as u64) < PUTS,
        "the slow subscriber skipped intermediate states: got {} of {PUTS}",
        slow_gens.len()
    );
    quiet(&mut slow).await;
    quiet(&mut fast).await;

    // Both are recorded as having the latest generation; every delivery was
    // audited.
    let subs = subscribers(&agent, "prod", "s").await;
    assert_eq!(subs.len(), 2);
    assert!(subs.iter().all(|s| s.delivered_generation == PUTS + 1), "{subs:?}");
    assert_eq!(
        watch_records(&agent, "ok").len(),
        2 + fast_gens.len() + slow_gens.len(),
        "one record per delivery"
    );
}

#[tokio::test]
async fn rotation_steps_reach_watchers_in_order_and_are_tracked_as_delivered() {
    let agent = TestAgent::start_with_config("[rotation]\ngrace = \"0s\"\n");
    agent.put("prod/r", "sk_rot_old");
    let mut s = watch(&agent, &[("prod", "r")]).await.unwrap();
    assert_eq!(generation(&next_ok(&mut s).await), 1);
    let subs = subscribers(&agent, "prod", "r").await;
    assert_eq!(subs.len(), 1);
    assert_eq!(subs[0].pid, std::process::id() as i32);
    assert_eq!(subs[0].uid, nix::unistd::geteuid().as_raw());
    assert_eq!(subs[0].delivered_generation, 1);

    let mut admin = agent.admin().await;
    keep_for_leak_scan("secrets", b"sk_rot_new");
    admin
        .stage_key(proto::StageKeyRequest {
            key: key("prod", "r"),
            secret: bytes::Bytes::from_static(b"sk_rot_new"),
            ..Default::default()
        })
        .await
        .unwrap();
    let ev = next_ok(&mut s).await;
    assert_eq!(
        (ev.reason.as_str(), generation(&ev), state(&ev)),
        ("staged", 2, RotationState::Staged)
    );
    assert_eq!(
        (primary(&ev), fallback(&ev)),
        ("sk_rot_old".into(), Some("sk_rot_new".into()))
    );
    // What `keyward rotate` waits for before promoting.
    assert_eq!(subscribers(&agent, "prod", "r").await[0].delivered_generation, 2);

    let step = || proto::RotationRequest {
        key: key("prod", "r"),
        expected_generation: None,
    };
    admin.promote_key(step()).await.unwrap();
    let ev = next_ok(&mut s).await;
    assert_eq!(
        (ev.reason.as_str(), generation(&ev), state(&ev)),
        ("promoted", 3, RotationState::Promoted)
    );
    assert_eq!(
        (primary(&ev), fallback(&ev)),
        ("sk_rot_new".into(), Some("sk_rot_old".into()))
    );
    admin.rollback_key(step()).await.unwrap();
    let ev = next_ok(&mut s).await;
    assert_eq!(
        (ev.reason.as_str(), generation(&ev), state(&ev)),
        ("rolled_back", 4, RotationState::Staged)
    );
    admin.promote_key(step()).await.unwrap();
    assert_eq!(next_ok(&mut s).await.reason, "promoted");
    admin
        .retire_key(proto::RetireKeyRequest {
            key: key("prod", "r"),
            expected_generation: None,
            force: true,
        })
        .await
        .unwrap();
    let ev = next_ok(&mut s).await;
    assert_eq!(
        (ev.reason.as_str(), generation(&ev), state(&ev)),
        ("retired", 6, RotationState::Steady)
    );
    assert_eq!((primary(&ev), fallback(&ev)), ("sk_rot_new".into(), None));
    quiet(&mut s).await;

    // The client goes away: so does its registration.
    drop(s);
    assert!(
        eventually(WAIT, async || subscribers(&agent, "prod", "r").await.is_empty()).await,
        "subscriber still listed after the client left"
    );
}

#[tokio::test]
async fn a_reload_that_removes_access_ends_the_watch_and_a_bad_config_changes_nothing() {
    let uid = nix::unistd::geteuid().as_raw();
    let grant = |pattern: &str| format!("[[grant]]\nuids = [{uid}]\nkeys = [\"{pattern}\"]\n");
    let agent = TestAgent::start_system(&grant("prod/*"));
    put(&agent, "prod", "a", b"sk_sys_a", false).await;
    put(&agent, "staging", "x", b"sk_sys_x", false).await;

    // No grant: refused at subscribe, and audited like a fetch denial.
    let e = watch(&agent, &[("prod", "a"), ("staging", "x")]).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{}", e.message());
    assert!(
        e.message().contains("staging/x") && e.message().contains("[[grant]]"),
        "{}",
        e.message()
    );
    assert_eq!(watch_records(&agent, "denied").len(), 1);

    let mut s = watch(&agent, &[("prod", "a")]).await.unwrap();
    assert_eq!(primary(&next_ok(&mut s).await), "sk_sys_a");
    let reloads = |agent: &TestAgent, outcome: &str| {
        agent
            .audit_lines()
            .iter()
            .filter(|r| r["event"] == "config_reload" && r["outcome"] == outcome)
            .count()
    };

    // The grant moves to staging: the prod watch ends.
    agent.rewrite_config(&grant("staging/*"));
    agent.sighup();
    let e = next(&mut s).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{}", e.message());
    assert!(
        e.message().contains("access to prod/a was removed by a config reload"),
        "{}",
        e.message()
    );
    // The stream ends as the new config is swapped in; the reload's own
    // record follows.
    assert!(eventually(WAIT, async || reloads(&agent, "ok") == 1).await);
    assert_eq!(watch_records(&agent, "denied").len(), 2);
    let mut keys = agent.keys().await;
    let e = keys
        .get_key(proto::GetKeyRequest { key: key("prod", "a") })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let mut x = watch(&agent, &[("staging", "x")]).await.unwrap();
    assert_eq!(primary(&next_ok(&mut x).await), "sk_sys_x");

    // An invalid file is rejected and the running policy stays.
    agent.rewrite_config(&format!("{}bogus_setting = 1\n", grant("prod/*")));
    agent.sighup();
    assert!(
        eventually(WAIT, async || reloads(&agent, "rejected") == 1).await,
        "{}",
        agent.logs()
    );
    assert!(agent.logs().contains("config reload rejected"), "{}", agent.logs());
    assert!(agent.logs().contains("bogus_setting"), "{}", agent.logs());
    keys.get_key(proto::GetKeyRequest {
        key: key("staging", "x"),
    })
    .await
    .unwrap();
    quiet(&mut x).await;

    // A start-only setting is kept and reported as needing a restart.
    agent.rewrite_config(&format!("{}[limits]\nmax_connections = 100\n", grant("staging/*")));
    agent.sighup();
    assert!(
        eventually(WAIT, async || reloads(&agent, "ok") == 2).await,
        "{}",
        agent.logs()
    );
    assert!(
        agent.logs().contains("[limits]") && agent.logs().contains("restart"),
        "{}",
        agent.logs()
    );
    quiet(&mut x).await;
    keys.get_key(proto::GetKeyRequest {
        key: key("staging", "x"),
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_watch_event_that_cannot_be_audited_is_not_sent() {
    let mut agent = TestAgent::start();
    agent.put("prod/full", "sk_full_0");
    agent.stop();
    let used = std::fs::metadata(agent.audit_file()).unwrap().len();
    // Room for a few more records, then writes fail with EFBIG.
    let mut cmd = std::process::Command::new("prlimit");
    cmd.arg(format!("--fsize={}", used + 3000)).arg("--").arg(KEYWARDD);
    cmd.args(agent.command().get_args());
    cmd.env("KEYWARD_LOG", "debug");
    agent.spawn_with(cmd).unwrap();

    let mut s = watch(&agent, &[("prod", "full")]).await.unwrap();
    let mut received = vec![primary(&next_ok(&mut s).await)];
    let mut ended = None;
    for i in 1..100 {
        let secret = format!("sk_full_{i}");
        keep_for_leak_scan("secrets", secret.as_bytes());
        // The put's own audit record may fail too; the change is made anyway.
        let _ = agent
            .admin()
            .await
            .put_key(proto::PutKeyRequest {
                key: key("prod", "full"),
                secret: bytes::Bytes::from(secret.clone().into_bytes()),
                overwrite: true,
                ..Default::default()
            })
            .await;
        match next(&mut s).await {
            Ok(ev) => {
                assert_eq!(primary(&ev), secret);
                received.push(secret);
            }
            Err(status) => {
                ended = Some((status, secret));
                break;
            }
        }
    }
    let (status, withheld) = ended.expect("the watch ends once its records cannot be written");
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    assert!(status.message().contains("audit"), "{}", status.message());
    assert_no_secret("the status", status.message().as_bytes(), &[&withheld]);
    // Exactly the deliveries that were sent have records.
    assert_eq!(watch_records(&agent, "ok").len(), received.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_ends_live_watches_without_waiting_for_the_grace_period() {
    let mut agent = TestAgent::start();
    agent.put("prod/w", "sk_shutdown");
    let mut s = watch(&agent, &[("prod", "w")]).await.unwrap();
    next_ok(&mut s).await;
    let started = Instant::now();
    // The client's connection must keep running meanwhile: it answers the
    // agent's graceful-shutdown PING.
    assert!(tokio::task::block_in_place(|| agent.stop()).success());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopping took {:?} (grace is 10s)",
        started.elapsed()
    );
    match tokio::time::timeout(WAIT, s.message()).await.unwrap() {
        Err(status) => assert!(
            matches!(status.code(), Code::Unavailable | Code::Cancelled | Code::Unknown),
            "{status:?}"
        ),
        Ok(None) => {}
        Ok(Some(ev)) => panic!("unexpected event {}", ev.reason),
    }
}
