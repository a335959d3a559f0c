//! Faults (issue 7): what the agent does when its disks, files, clients or
//! clock misbehave, each against a real agent, each printing one line of
//! figures (`fault …: …`).
//!
//! - The audit file cannot grow (`RLIMIT_FSIZE`) or cannot be written
//!   (immutable): fetches get `UNAVAILABLE`, an `agent_health` alert reaches
//!   a webhook, and once the file can be written again fetches succeed
//!   without a restart (recovery time measured) and the alert resolves.
//!   Only the withholding itself and `keyward status` are already covered
//!   by `tests/audit_and_crash.rs`.
//! - The store directory becomes unreadable while the agent runs: keys keep
//!   being served from memory, changes are refused with `UNAVAILABLE` and
//!   change nothing, a restart is refused with a message naming the
//!   directory, and once it is fixed nothing is lost.
//! - The identity file is missing at start (system mode: a clear error, no
//!   socket, no new identity made) or deleted while the agent runs (it keeps
//!   serving and storing; the identity restored from backup reads
//!   everything).
//! - 1,000 watchers (Rust client key handles) while the agent restarts: they
//!   reconnect by themselves and converge on the next change.
//! - The wall clock jumps back an hour (libfaketime, agent process only):
//!   the agent keeps serving, the audit chain stays ordered by seq and
//!   verifies, and the retire gate stays closed (grace and reported
//!   failures).
//!
//! The tests run one at a time: they measure times, and the watcher test
//! is heavy. Running as root is assumed (as in CI): `chattr` and `setpriv`
//! need it; the clock test needs libfaketime (Debian: `apt-get install
//! faketime`) and fails, saying so, without it.
//!
//! The last three tests reproduce bugs these faults found, now fixed: the
//! retire grace ended at once when a clock that was behind at promotion was
//! set right; a key file the agent could not read at start was replaced by
//! a `put` of that key; reports from before the clock went back made a
//! false spike alert.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::receiver::{Received, Receiver};
use common::system::Immutable;
use common::*;
use keyward::proto;
use serde_json::Value;
use tonic::Code;

/// The tests of this file measure time: one at a time. (An async mutex:
/// each test holds it across awaits, on its own runtime.)
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().await
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// Runs `program args…` (a system tool) and returns its output; fails the
/// test, naming the tool, if it cannot be started.
fn tool(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (util-linux / e2fsprogs): {e}"))
}

/// A webhook sink to `r` and a one-second detector window (so that an
/// agent-health alert resolves a second after its cause is gone), with
/// `detect` added to `[alerts.detect]`.
fn webhook(r: &Receiver, detect: &str) -> String {
    format!(
        "[alerts.detect]\nwindow = \"1s\"\n{detect}[[alerts.sink]]\nkind = \"webhook\"\nurl = \"{}\"\nretries = 0\n",
        r.url("/webhook")
    )
}

fn webhook_with(got: &[Received], signal: &str, status: &str) -> Option<Value> {
    got.iter()
        .map(|r| r.body.clone())
        .find(|b| b["signal"] == signal && b["status"] == status)
}

/// Waits (at most `limit`) until `r` got a `signal` notification with
/// `status`; returns it and when it was seen.
async fn wait_alert(r: &Receiver, signal: &str, status: &str, limit: Duration) -> (Value, Instant) {
    let what = format!("a {signal} {status} alert");
    let got = r
        .wait_until(&what, limit, |got| webhook_with(got, signal, status).is_some())
        .await;
    let seen = Instant::now();
    (webhook_with(&got, signal, status).expect("waited for"), seen)
}

fn primary(set: &proto::KeySet) -> String {
    text(&set.primary.as_ref().unwrap().secret)
}

async fn put(agent: &TestAgent, name: &str, secret: &str, overwrite: bool) -> Result<proto::KeyInfo, tonic::Status> {
    keep_for_leak_scan("secrets", secret.as_bytes());
    agent
        .admin()
        .await
        .put_key(proto::PutKeyRequest {
            key: key("prod", name),
            secret: bytes::Bytes::from(secret.as_bytes().to_vec()),
            overwrite,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().key.unwrap())
}

async fn stage(agent: &TestAgent, name: &str, secret: &str) -> Result<proto::RotationResponse, tonic::Status> {
    keep_for_leak_scan("secrets", secret.as_bytes());
    agent
        .admin()
        .await
        .stage_key(proto::StageKeyRequest {
            key: key("prod", name),
            secret: bytes::Bytes::from(secret.as_bytes().to_vec()),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

async fn promote(agent: &TestAgent, name: &str) -> Result<proto::RotationResponse, tonic::Status> {
    agent
        .admin()
        .await
        .promote_key(proto::RotationRequest {
            key: key("prod", name),
            expected_generation: None,
        })
        .await
        .map(|r| r.into_inner())
}

async fn retire(agent: &TestAgent, name: &str) -> Result<proto::RotationResponse, tonic::Status> {
    agent
        .admin()
        .await
        .retire_key(proto::RetireKeyRequest {
            key: key("prod", name),
            expected_generation: None,
            force: false,
        })
        .await
        .map(|r| r.into_inner())
}

async fn rotation_status(agent: &TestAgent, name: &str) -> proto::RotationStatus {
    agent
        .admin()
        .await
        .get_rotation_status(proto::RotationStatusRequest { key: key("prod", name) })
        .await
        .unwrap()
        .into_inner()
}

fn verify_ok(agent: &TestAgent) {
    let out = agent.cli(&["audit", "verify"], None);
    assert!(
        out.status.success(),
        "keyward audit verify: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

// ---------------------------------------------------------------------------
// 1. The audit file cannot be written.

/// Shared by both audit faults: fetch until `UNAVAILABLE`, check the alert,
/// undo the fault with `fix`, and measure how long the agent takes to serve
/// again on its own (same process, no restart). Returns the figures.
async fn audit_fault_and_recovery(agent: &TestAgent, r: &Receiver, name: &str, fix: impl FnOnce()) -> String {
    let pid = agent.pid();
    let mut keys = agent.keys().await;
    let mut served = 0;
    let (err, failed_at) = loop {
        match keys.get_key(proto::GetKeyRequest { key: key("prod", name) }).await {
            Ok(_) => served += 1,
            Err(e) => break (e, Instant::now()),
        }
        assert!(served < 1000, "fetches kept succeeding: the fault did not take");
    };
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
    assert!(err.message().contains("audit"), "{}", err.message());

    // The alert.
    let (alert, alerted_at) = wait_alert(r, "agent_health", "firing", Duration::from_secs(10)).await;
    assert_eq!(alert["severity"], "critical", "{alert}");
    let said = format!("{} {}", alert["summary"], alert["error"]);
    assert!(said.contains("audit"), "the alert names the audit log: {alert}");
    // Still withheld while the fault lasts, and the agent says why.
    let again = keys
        .get_key(proto::GetKeyRequest { key: key("prod", name) })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::Unavailable);
    assert!(!agent.status().await.audit_error.is_empty());

    // Undo the fault; the agent must serve again by itself.
    fix();
    let fixed_at = Instant::now();
    let recovered_at = loop {
        match keys.get_key(proto::GetKeyRequest { key: key("prod", name) }).await {
            Ok(set) => {
                assert_eq!(set.into_inner().generation, 1);
                break Instant::now();
            }
            Err(e) => assert_eq!(e.code(), Code::Unavailable, "{}", e.message()),
        }
        assert!(
            fixed_at.elapsed() < Duration::from_secs(10),
            "fetches still fail 10 s after the audit file became writable again"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(agent.pid(), pid, "recovered without a restart");
    let s = agent.status().await;
    assert!(s.audit_error.is_empty(), "the audit error clears: {}", s.audit_error);
    assert_eq!(s.pid, pid);
    let (_, resolved_at) = wait_alert(r, "agent_health", "resolved", Duration::from_secs(10)).await;
    // What was written (before, and after the failed batches were cut back
    // off) is one unbroken chain.
    verify_ok(agent);
    format!(
        "served_before={served} alert_ms={} recovery_ms={} resolved_ms={}",
        ms(alerted_at - failed_at),
        ms(recovered_at - fixed_at),
        ms(resolved_at - fixed_at)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_file_that_cannot_grow_withholds_keys_alerts_and_recovers_without_restart() {
    let _serial = serial().await;
    let r = Receiver::start();
    let mut agent = TestAgent::start_with_config(&webhook(&r, ""));
    agent.put("prod/full", "sk_fault_fsize");
    agent.stop();
    let used = std::fs::metadata(agent.audit_file()).unwrap().len();
    // Room for a few records, then writes fail with EFBIG. Only the soft
    // limit: raising it back needs no CAP_SYS_RESOURCE.
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--fsize={}:unlimited", used + 3000))
        .arg("--")
        .arg(KEYWARDD);
    cmd.args(agent.command().get_args());
    cmd.env("KEYWARD_LOG", "debug");
    agent.spawn_with(cmd).unwrap();
    let pid = agent.pid().to_string();

    let figures = audit_fault_and_recovery(&agent, &r, "full", || {
        let out = tool("prlimit", &["--pid", &pid, "--fsize=unlimited:unlimited"]);
        assert!(out.status.success(), "prlimit --pid: {}", text(&out.stderr));
    })
    .await;
    println!("fault audit-file-size-limit: {figures}");
    assert_no_secret("agent log", agent.logs().as_bytes(), &["sk_fault_fsize"]);
    assert!(agent.stop().success());
}

/// "Unwritable" for a running agent: it opened its log once, at start, and
/// keeps that descriptor. `chmod 0400` on the file or its directory changes
/// nothing for an open descriptor (and nothing at all for root), and
/// remounting the file system read-only fails while a file on it is open
/// for writing. The immutable flag does apply to open descriptors: every
/// write(2) and ftruncate(2) on the log fails with EPERM, as on a file
/// system that went read-only under the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immutable_audit_file_withholds_keys_alerts_and_recovers_without_restart() {
    let _serial = serial().await;
    let r = Receiver::start();
    let agent = TestAgent::start_with_config(&webhook(&r, ""));
    agent.put("prod/frozen", "sk_fault_immutable");
    agent.fetch("prod", "frozen").await.unwrap();
    let before = std::fs::read(agent.audit_file()).unwrap();

    let mut guard = Some(Immutable::set(&agent.audit_file()));
    let figures = audit_fault_and_recovery(&agent, &r, "frozen", || drop(guard.take())).await;
    println!("fault audit-file-immutable: {figures}");
    // Nothing written before the fault was lost or rewritten.
    let after = std::fs::read(agent.audit_file()).unwrap();
    assert_eq!(&after[..before.len()], &before[..]);
}

// ---------------------------------------------------------------------------
// 2. The store directory becomes unreadable.

/// The agent started without `CAP_DAC_OVERRIDE` and `CAP_DAC_READ_SEARCH`,
/// like a service that runs as root without them (or as its own user): for
/// root with them, `chmod 000` changes nothing, so the fault would not be
/// a fault.
fn without_dac_override(agent: &TestAgent) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--bounding-set=-dac_override,-dac_read_search",
        "--inh-caps=-dac_override,-dac_read_search",
        "--",
    ])
    .arg(KEYWARDD)
    .args(agent.command().get_args());
    cmd.env("KEYWARD_LOG", "debug");
    cmd
}

/// Sets the mode of `path`.
fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_store_directory_keeps_serving_refuses_changes_and_loses_nothing() {
    let _serial = serial().await;
    let mut agent = TestAgent::start_with_config("[rotation]\ngrace = \"0s\"\n");
    agent.stop();
    agent.spawn_with(without_dac_override(&agent)).unwrap();
    let caps = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap();
    let eff = caps.lines().find(|l| l.starts_with("CapEff:")).unwrap();
    let eff = u64::from_str_radix(eff.split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert_eq!(eff & 0b110, 0, "the agent still has CAP_DAC_OVERRIDE/READ_SEARCH");

    put(&agent, "steady", "sk_store_a1", false).await.unwrap();
    put(&agent, "rotating", "sk_store_b1", false).await.unwrap();
    stage(&agent, "rotating", "sk_store_b2").await.unwrap();
    let prod = agent.dir.join("store/prod");
    // Let hot reload see the agent's own writes while it can still read.
    tokio::time::sleep(Duration::from_millis(300)).await;

    chmod(&prod, 0o000);
    let faulted = Instant::now();
    // Served from memory, unchanged.
    let a = agent.fetch("prod", "steady").await.unwrap();
    assert_eq!((primary(&a), a.generation), ("sk_store_a1".into(), 1));
    let b = agent.fetch("prod", "rotating").await.unwrap();
    assert_eq!(b.generation, 2);
    // Every change is refused, says what and where, and changes nothing.
    let refusals = [
        (
            "overwrite",
            put(&agent, "steady", "sk_store_a2", true).await.map(|_| ()),
        ),
        ("create", put(&agent, "new", "sk_store_c1", false).await.map(|_| ())),
        ("promote", promote(&agent, "rotating").await.map(|_| ())),
    ];
    for (what, result) in refusals {
        let e = result.expect_err(what);
        assert_eq!(e.code(), Code::Unavailable, "{what}: {}", e.message());
        for part in [
            prod.to_str().unwrap(),
            "Permission denied",
            "nothing was changed",
            "permissions",
        ] {
            assert!(e.message().contains(part), "{what}: {part:?} in {}", e.message());
        }
        assert_no_secret(
            "error",
            e.message().as_bytes(),
            &["sk_store_a2", "sk_store_c1", "sk_store_b2"],
        );
    }
    let a = agent.fetch("prod", "steady").await.unwrap();
    assert_eq!((primary(&a), a.generation), ("sk_store_a1".into(), 1));
    assert_eq!(agent.fetch("prod", "rotating").await.unwrap().generation, 2);
    assert_eq!(agent.fetch("prod", "new").await.unwrap_err().code(), Code::NotFound);
    let served_for = faulted.elapsed();

    // A restart while it is unreadable is refused, naming the directory.
    assert!(agent.stop().success());
    let out = without_dac_override(&agent).stdin(Stdio::null()).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let said = text(&out.stderr);
    assert!(
        said.contains(prod.to_str().unwrap()) && said.contains("Permission denied"),
        "{said}"
    );
    assert!(
        !agent.keys_sock().exists() && !agent.admin_sock().exists(),
        "no socket left"
    );

    // Fixed: everything is there, and changes work again.
    chmod(&prod, 0o700);
    agent.spawn_with(without_dac_override(&agent)).unwrap();
    let a = agent.fetch("prod", "steady").await.unwrap();
    assert_eq!((primary(&a), a.generation), ("sk_store_a1".into(), 1));
    let b = agent.fetch("prod", "rotating").await.unwrap();
    assert_eq!(
        (b.generation, text(&b.fallback.unwrap().secret)),
        (2, "sk_store_b2".into())
    );
    put(&agent, "steady", "sk_store_a2", true).await.unwrap();
    put(&agent, "new", "sk_store_c1", false).await.unwrap();
    promote(&agent, "rotating").await.unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(&prod)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    verify_ok(&agent);
    println!(
        "fault store-unreadable: served_from_memory_ms={} refused_changes=3 restart_refused=yes keys_after_fix=3 lost=0",
        ms(served_for)
    );
}

// ---------------------------------------------------------------------------
// 3. The identity file is missing.

/// A system-mode agent's policy: root (the test) reads the prod keys.
const ROOT_READS_PROD: &str = "[[grant]]\nuids = [0]\nkeys = [\"prod/*\"]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_identity_at_start_is_a_clear_error_and_leaves_no_socket() {
    let _serial = serial().await;
    let mut agent = TestAgent::start_system(ROOT_READS_PROD);
    agent.put("prod/id", "sk_identity_1");
    assert!(agent.stop().success());
    let identity = agent.dir.join("identity.txt");
    let backup = agent.dir.parent().unwrap().join("identity.backup");
    std::fs::rename(&identity, &backup).unwrap();

    let t = Instant::now();
    let out = agent.system_command().stdin(Stdio::null()).output().unwrap();
    let took = t.elapsed();
    let said = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit status: {said}");
    assert!(said.contains(identity.to_str().unwrap()), "names the file: {said}");
    assert!(
        said.contains("backup") && said.contains("keyward init"),
        "says what to do: {said}"
    );
    assert!(
        !agent.keys_sock().exists() && !agent.admin_sock().exists(),
        "no socket left"
    );
    assert!(
        !identity.exists(),
        "system mode never makes a new identity (it would orphan every key)"
    );

    std::fs::rename(&backup, &identity).unwrap();
    let cmd = agent.system_command();
    agent.spawn_with(cmd).unwrap();
    assert_eq!(primary(&agent.fetch("prod", "id").await.unwrap()), "sk_identity_1");
    println!(
        "fault identity-missing-at-start: exit=1 refused_in_ms={} sockets_left=0",
        ms(took)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_deleted_while_running_keeps_serving_and_storing() {
    let _serial = serial().await;
    let mut agent = TestAgent::start_system(&format!("[rotation]\ngrace = \"0s\"\n{ROOT_READS_PROD}"));
    agent.put("prod/before", "sk_identity_before");
    let identity = agent.dir.join("identity.txt");
    let backup = agent.dir.parent().unwrap().join("identity.backup");
    std::fs::copy(&identity, &backup).unwrap();
    std::fs::remove_file(&identity).unwrap();

    // The identity is held in memory: fetches, puts and rotations work.
    assert_eq!(
        primary(&agent.fetch("prod", "before").await.unwrap()),
        "sk_identity_before"
    );
    put(&agent, "during", "sk_identity_during", false).await.unwrap();
    stage(&agent, "before", "sk_identity_before2").await.unwrap();
    promote(&agent, "before").await.unwrap();
    assert_eq!(
        primary(&agent.fetch("prod", "during").await.unwrap()),
        "sk_identity_during"
    );
    assert!(!identity.exists(), "nothing recreated it behind the operator's back");

    // The next start needs the file; restored from the backup, it reads
    // what was stored while it was missing too.
    assert!(agent.stop().success());
    let out = agent.system_command().stdin(Stdio::null()).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    std::fs::copy(&backup, &identity).unwrap();
    let cmd = agent.system_command();
    agent.spawn_with(cmd).unwrap();
    assert_eq!(
        primary(&agent.fetch("prod", "during").await.unwrap()),
        "sk_identity_during"
    );
    let before = agent.fetch("prod", "before").await.unwrap();
    assert_eq!((primary(&before), before.generation), ("sk_identity_before2".into(), 3));
    println!("fault identity-deleted-at-runtime: served=yes changes_accepted=3 restart_without_it=refused lost_after_restore=0");
}

// ---------------------------------------------------------------------------
// 4. 1,000 watchers while the agent restarts.

/// 1,000 key handles of the Rust client (each a `WatchKeys` stream that
/// reconnects with backoff) over 25 connections, 40 streams each, as
/// services share one client per process: 25 descriptors, far from any fd
/// limit, and under the default per-uid connection limit (64).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_watchers_reconnect_after_a_restart_and_converge() {
    const WATCHERS: usize = 1000;
    const CONNECTIONS: usize = 25;
    const KEYS: [&str; 4] = ["prod/watched-0", "prod/watched-1", "prod/watched-2", "prod/watched-3"];
    let _serial = serial().await;
    let mut agent = TestAgent::start_with_config("[rotation]\ngrace = \"0s\"\n");
    for k in KEYS {
        agent.put(k, &format!("sk_watch_{k}_v1"));
    }
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(
            keyward_client::Client::connect_to(agent.keys_sock())
                .await
                .expect("connect"),
        );
    }
    let t = Instant::now();
    let mut pending = Vec::new();
    for i in 0..WATCHERS {
        let client = clients[i % CONNECTIONS].clone();
        let k = KEYS[i % KEYS.len()];
        pending.push(tokio::spawn(async move { client.handle(k).await.expect("handle") }));
    }
    let mut handles = Vec::new();
    for p in pending {
        handles.push(p.await.unwrap());
    }
    let subscribed = t.elapsed();
    assert!(handles.iter().all(|h| h.current().generation == 1));

    // Restart: SIGTERM ends every stream; the handles keep their last state
    // and reconnect with backoff.
    let t = Instant::now();
    assert!(agent.stop().success());
    assert!(
        handles.iter().all(|h| h.current().generation == 1),
        "a handle keeps serving its last state while the agent is away"
    );
    agent.spawn().unwrap();
    let down = t.elapsed();

    // A rotation step right after the restart: every watcher must get it,
    // whether its stream was back already or comes back later.
    let mut admin = agent.admin().await;
    let mut generations = Vec::new();
    for k in KEYS {
        let (env, name) = k.split_once('/').unwrap();
        let secret = format!("sk_watch_{k}_v2");
        keep_for_leak_scan("secrets", secret.as_bytes());
        let r = admin
            .stage_key(proto::StageKeyRequest {
                key: key(env, name),
                secret: bytes::Bytes::from(secret.into_bytes()),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        generations.push(r.key.unwrap().generation);
    }
    let staged = Instant::now();
    let converged = loop {
        let behind = handles
            .iter()
            .enumerate()
            .filter(|(i, h)| h.current().generation != generations[i % KEYS.len()])
            .count();
        if behind == 0 {
            break staged.elapsed();
        }
        assert!(
            staged.elapsed() < Duration::from_secs(30),
            "{behind} of {WATCHERS} watchers still behind 30 s after the change"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for (i, h) in handles.iter().enumerate() {
        let k = KEYS[i % KEYS.len()];
        let now = h.current();
        assert_eq!(now.state, keyward_client::RotationState::Staged);
        assert_eq!(
            now.fallback.as_ref().unwrap().secret.expose(),
            format!("sk_watch_{k}_v2").as_bytes()
        );
    }
    // And the agent sees them all as subscribers again.
    let mut subscribers = 0;
    for k in KEYS {
        subscribers += rotation_status(&agent, k.split_once('/').unwrap().1)
            .await
            .subscribers
            .len();
    }
    assert_eq!(subscribers, WATCHERS);
    println!(
        "fault restart-with-watchers: watchers={WATCHERS} connections={CONNECTIONS} subscribe_ms={} restart_ms={} converge_ms={} subscribers_after={subscribers}",
        ms(subscribed),
        ms(down),
        ms(converged)
    );
    drop(handles);
    agent.stop();
}

// ---------------------------------------------------------------------------
// 5. The clock jumps backwards.

/// libfaketime, which shifts the agent's wall clock (and only the agent's)
/// at run time. Debian: `apt-get install faketime` (the library is in the
/// `libfaketime` package it pulls in).
fn libfaketime() -> PathBuf {
    let candidates = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketimeMT.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ];
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "the clock-jump test needs libfaketime, which is not installed: run `apt-get install faketime` \
                 (Debian package faketime, which pulls in libfaketime: {})",
                candidates[0]
            )
        })
}

/// The agent's clock, shifted by what `file` says (`+0`, `-3600`...):
/// re-read on every call, monotonic clocks untouched (timers keep working).
fn with_fake_clock(mut cmd: Command, file: &Path) -> Command {
    cmd.env("LD_PRELOAD", libfaketime())
        .env("FAKETIME_TIMESTAMP_FILE", file)
        .env("FAKETIME_NO_CACHE", "1")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    cmd
}

/// The `time` of the last audit record, after a fetch of `name`.
async fn agent_time(agent: &TestAgent, name: &str) -> SystemTime {
    agent.fetch("prod", name).await.unwrap();
    let last = agent.audit_lines().pop().unwrap();
    humantime::parse_rfc3339(last["time"].as_str().unwrap()).unwrap()
}

/// Waits until the agent's clock reads at least `by` behind the real one.
async fn wait_for_jump(agent: &TestAgent, name: &str, by: Duration) -> Duration {
    let t = Instant::now();
    loop {
        let lag = SystemTime::now()
            .duration_since(agent_time(agent, name).await)
            .unwrap_or_default();
        if lag >= by {
            return t.elapsed();
        }
        assert!(t.elapsed() < Duration::from_secs(10), "the agent's clock did not move");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_jumping_back_keeps_serving_keeps_the_audit_ordered_and_the_retire_gate_closed() {
    let _serial = serial().await;
    let r = Receiver::start();
    let mut agent = TestAgent::start_with_config(&format!(
        "[rotation]\ngrace = \"0s\"\n[[key]]\nkeys = [\"prod/graced\"]\ngrace = \"10m\"\n{}",
        webhook(&r, "expiry_lead = \"1m\"\n")
    ));
    agent.stop();
    let clock = agent.dir.parent().unwrap().join("faketime");
    std::fs::write(&clock, "+0\n").unwrap();
    let cmd = with_fake_clock(agent.command(), &clock);
    agent.spawn_with(cmd).unwrap();

    // Two rotations promoted at the real time: one with no grace (only
    // reported failures keep its old key), one with ten minutes of grace.
    for name in ["gated", "graced"] {
        put(&agent, name, &format!("sk_clock_{name}_1"), false).await.unwrap();
        stage(&agent, name, &format!("sk_clock_{name}_2")).await.unwrap();
        promote(&agent, name).await.unwrap();
    }
    let expires = SystemTime::now() + 2 * HOUR;
    let out = agent.cli(
        &[
            "put",
            "prod/expiring",
            "--expires",
            &humantime::format_rfc3339_seconds(expires).to_string(),
        ],
        Some(b"sk_clock_expiring"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let before_jump = agent_time(&agent, "gated").await;

    // The jump: an hour back.
    std::fs::write(&clock, "-3600\n").unwrap();
    let seen_in = wait_for_jump(&agent, "gated", HOUR - Duration::from_secs(60)).await;

    // Still serving, still storing.
    assert_eq!(
        primary(&agent.fetch("prod", "gated").await.unwrap()),
        "sk_clock_gated_2"
    );
    put(&agent, "after", "sk_clock_after", false).await.unwrap();
    assert_eq!(primary(&agent.fetch("prod", "after").await.unwrap()), "sk_clock_after");
    assert_eq!(
        primary(&agent.fetch("prod", "expiring").await.unwrap()),
        "sk_clock_expiring"
    );

    // The grace period does not end early: the agent's clock now reads
    // before the promotion.
    let e = retire(&agent, "graced").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    assert!(e.message().contains("grace period"), "{}", e.message());

    // A failure reported against the new primary after the jump still
    // counts as "since promotion" and keeps the old key.
    let mut keys = agent.keys().await;
    keys.report_auth_failure(proto::AuthFailureReport {
        key: key("prod", "gated"),
        version: 2,
        status_code: 401,
        service: "clock-test".into(),
        detail: "the new key is refused".into(),
        misdirected_to: String::new(),
    })
    .await
    .unwrap();
    let s = rotation_status(&agent, "gated").await;
    assert_eq!(
        s.failures_since_promotion, 1,
        "a failure reported after the clock went back is not counted against the new primary"
    );
    assert!(!s.retire_allowed, "{s:?}");
    let e = retire(&agent, "gated").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    assert!(e.message().contains("auth failure"), "{}", e.message());
    let set = agent.fetch("prod", "gated").await.unwrap();
    assert_eq!(
        set.fallback.map(|f| text(&f.secret)),
        Some("sk_clock_gated_1".into()),
        "the old key is kept"
    );

    // The audit: ordered by seq, chained, and the jump is visible in it.
    let after_jump = agent_time(&agent, "gated").await;
    assert!(after_jump < before_jump, "the agent's clock went back");
    let lines = agent.audit_lines();
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "seq is 1, 2, 3…");
    let times: Vec<SystemTime> = lines
        .iter()
        .map(|l| humantime::parse_rfc3339(l["time"].as_str().unwrap()).unwrap())
        .collect();
    let backwards = times.windows(2).filter(|w| w[1] < w[0]).count();
    assert!(backwards >= 1, "no record's time went back");
    verify_ok(&agent);

    // No key was taken for expired, and nothing else misfired.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let alerts: Vec<(String, String)> = r
        .received()
        .iter()
        .map(|g| {
            (
                g.body["signal"].as_str().unwrap_or_default().to_owned(),
                g.body["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert!(
        !alerts.iter().any(|(s, _)| s == "expiry_ahead" || s == "agent_health"),
        "{alerts:?}"
    );
    assert!(agent.status().await.audit_error.is_empty());
    println!(
        "fault clock-back-1h: jump_seen_ms={} served=yes audit_verifies=yes records_with_earlier_time={backwards} grace_ended_early=no failure_counted=yes alerts={}",
        ms(seen_in),
        alerts.len()
    );
    agent.stop();
}

// ---------------------------------------------------------------------------
// Regressions: the three bugs these faults found (now fixed), each kept as a
// test of what must hold.

/// Waits until the agent's clock is within a minute of the real one.
async fn wait_for_real_clock(agent: &TestAgent, name: &str) {
    let t = Instant::now();
    loop {
        let agent_now = agent_time(agent, name).await;
        let off = SystemTime::now()
            .duration_since(agent_now)
            .unwrap_or_else(|e| e.duration());
        if off < Duration::from_secs(60) {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "the agent's clock did not move");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The clock is an hour behind when a key is promoted (a VM restored from
/// a snapshot, a wrong RTC at boot); NTP then sets it right. Measured on the
/// wall clock from the stored `promoted_at`, the ten minutes of grace were
/// over at once and the old key could be retired (and revoked) seconds
/// after the promotion; the agent now measures the grace of a promotion it
/// saw on the monotonic clock (`RetireGate::promoted_ago`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_does_not_end_early_when_a_clock_that_was_behind_is_set_right() {
    let _serial = serial().await;
    libfaketime();
    let mut agent = TestAgent::start_with_config("[rotation]\ngrace = \"10m\"\n");
    agent.stop();
    let clock = agent.dir.parent().unwrap().join("faketime");
    std::fs::write(&clock, "-3600\n").unwrap();
    let cmd = with_fake_clock(agent.command(), &clock);
    agent.spawn_with(cmd).unwrap();
    put(&agent, "late", "sk_late_1", false).await.unwrap();
    stage(&agent, "late", "sk_late_2").await.unwrap();
    promote(&agent, "late").await.unwrap();

    std::fs::write(&clock, "+0\n").unwrap();
    wait_for_real_clock(&agent, "late").await;
    let result = retire(&agent, "late").await;
    assert!(
        result.is_err(),
        "the old key was retired seconds after its promotion, with 10 minutes of grace configured"
    );
}

/// Dev mode makes a new identity when `identity.txt` is missing. The key
/// files encrypted to the lost one are reported and "left in place"; a
/// `keyward put` of such a key (the agent does not know it) used to replace
/// its file: the only copy of the old secret, which the identity restored
/// from a backup would still read. The store now refuses to write over a
/// key file it did not load (`StoreError::Unloaded`), with or without
/// `--overwrite`; the same holds for any key file skipped at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_file_the_agent_could_not_read_is_never_replaced() {
    let _serial = serial().await;
    let mut agent = TestAgent::start();
    agent.put("prod/a", "sk_lost_identity_old");
    assert!(agent.stop().success());
    let file = agent.dir.join("store/prod/a.age");
    let before = std::fs::read(&file).unwrap();
    std::fs::rename(agent.dir.join("identity.txt"), agent.dir.join("identity.lost")).unwrap();
    agent.spawn().unwrap();
    assert!(agent.logs().contains("key file not loaded"), "{}", agent.logs());

    for args in [&["put", "prod/a"][..], &["put", "--overwrite", "prod/a"][..]] {
        let out = agent.cli(args, Some(b"sk_lost_identity_new"));
        assert!(
            std::fs::read(&file).unwrap() == before,
            "the key file the agent could not read was replaced ({args:?} exited {:?}: {})",
            out.status.code(),
            text(&out.stdout)
        );
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = text(&out.stderr);
        assert!(err.contains("exists but the agent did not load it"), "{err}");
        assert!(err.contains("nothing was changed"), "{err}");
    }
}

/// Two reports, the clock set back an hour, then (a window later, in real
/// time) one more: no `spike` alert. This was a bug (fixed): the detectors
/// kept auth-failure reports by wall-clock time, so reports made before the
/// jump looked recent for another hour and added up with the new one into a
/// false critical spike ("3 auth failures … in the last 2s"). The detectors'
/// windows, buckets and alert timers now use the monotonic clock
/// (`alerts::detect::Now::mono`); only expiry, max age and the times written
/// into alerts use the wall clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_from_before_the_clock_went_back_do_not_make_a_spike() {
    let _serial = serial().await;
    let r = Receiver::start();
    let mut agent = TestAgent::start_with_config(&webhook(&r, "spike_threshold = 3\n").replace("\"1s\"", "\"2s\""));
    agent.stop();
    let clock = agent.dir.parent().unwrap().join("faketime");
    std::fs::write(&clock, "+0\n").unwrap();
    let cmd = with_fake_clock(agent.command(), &clock);
    agent.spawn_with(cmd).unwrap();
    put(&agent, "spiky", "sk_spiky", false).await.unwrap();
    // Reports count only on versions the reporter was served.
    agent.fetch("prod", "spiky").await.unwrap();
    let report = || async {
        agent
            .keys()
            .await
            .report_auth_failure(proto::AuthFailureReport {
                key: key("prod", "spiky"),
                version: 1,
                status_code: 401,
                service: "clock-test".into(),
                detail: String::new(),
                misdirected_to: String::new(),
            })
            .await
            .unwrap();
    };
    report().await;
    report().await;
    std::fs::write(&clock, "-3600\n").unwrap();
    wait_for_jump(&agent, "spiky", HOUR - Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    report().await;
    // The detectors count a report when it is made: a false spike would be
    // open now. The agent's own list says so without waiting for a sink.
    let open: Vec<String> = agent
        .status()
        .await
        .open_alerts
        .iter()
        .filter(|a| a.signal == "spike")
        .map(|a| format!("{} ({}): {}", a.dedup_key, a.severity, a.summary))
        .collect();
    assert!(open.is_empty(), "a false spike alert is open: {open:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let spikes: Vec<Value> = r
        .received()
        .into_iter()
        .map(|g| g.body)
        .filter(|b| b["signal"] == "spike")
        .collect();
    assert!(spikes.is_empty(), "a false spike alert: {spikes:?}");
}
