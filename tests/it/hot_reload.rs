//! Hot reload: key files written into the store by other tools, against a
//! real agent. Files are encrypted with the real `age` crate to the agent's
//! recipient, as `age -r` would.

use crate::common;

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use keyward::keyset::{KeySetState, RotationState, Version};
use keyward::proto;
use keyward::secret::Secret;
use serde_json::Value;
use tonic::Code;

/// How long a reload may take before a test gives up (the debounce is
/// 100 ms; the slack is for a loaded test machine).
const DEADLINE: Duration = Duration::from_secs(5);

fn key_file(agent: &TestAgent, env: &str, name: &str) -> PathBuf {
    agent.dir.join("store").join(env).join(format!("{name}.age"))
}

/// Writes `bytes` to `path` as a careful tool does: a temp file (0600) in
/// the same directory, then a rename.
fn write_atomically(path: &Path, bytes: &[u8]) {
    let tmp = path.with_file_name(format!(".{}.tool-tmp", path.file_name().unwrap().to_str().unwrap()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
    drop(f);
    std::fs::rename(&tmp, path).unwrap();
}

fn primary_secret(set: &proto::KeySet) -> Vec<u8> {
    set.primary.as_ref().unwrap().secret.to_vec()
}

/// Polls GetKey until its primary is `want`.
async fn wait_for_primary(agent: &TestAgent, env: &str, name: &str, want: &[u8]) -> proto::KeySet {
    let start = Instant::now();
    loop {
        if let Ok(set) = agent.fetch(env, name).await {
            if primary_secret(&set) == want {
                return set;
            }
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{env}/{name} not reloaded within {DEADLINE:?}; agent log:\n{}",
            agent.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn reload_records(agent: &TestAgent) -> Vec<Value> {
    agent
        .audit_lines()
        .into_iter()
        .filter(|r| r["event"] == "reload")
        .collect()
}

/// Polls the audit log until it has `n` reload records with `outcome`.
async fn wait_for_reloads(agent: &TestAgent, outcome: &str, n: usize) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let found: Vec<Value> = reload_records(agent)
            .into_iter()
            .filter(|r| r["outcome"] == outcome)
            .collect();
        if found.len() >= n {
            return found;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no {n} reload records with outcome {outcome}; audit: {:?}\nlog:\n{}",
            reload_records(agent),
            agent.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The log lines that mention `needle`.
fn log_lines_with(agent: &TestAgent, needle: &str) -> Vec<String> {
    agent
        .logs()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// Polls the agent's output (read by a thread, so it may lag the audit
/// log) until at least `n` lines mention `needle`; returns them.
async fn wait_for_log(agent: &TestAgent, needle: &str, n: usize) -> Vec<String> {
    let start = Instant::now();
    loop {
        let lines = log_lines_with(agent, needle);
        if lines.len() >= n || start.elapsed() > DEADLINE {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn raw_secret_written_by_a_tool_is_applied() {
    let agent = TestAgent::start();
    agent.put("prod/crm", "sk_old_crm");
    let path = key_file(&agent, "prod", "crm");
    let started = Instant::now();
    // `printf %s sk_new | age -r $(recipient) > tmp && mv tmp prod/crm.age`
    write_atomically(&path, &encrypt_to(&agent.recipient(), b"sk_new_crm"));

    let set = wait_for_primary(&agent, "prod", "crm", b"sk_new_crm").await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(set.generation, 2);
    assert_eq!(set.primary.as_ref().unwrap().version, 2);
    assert!(set.fallback.is_none());

    let ok = wait_for_reloads(&agent, "ok", 1).await;
    assert_eq!(ok.len(), 1, "{ok:?}");
    let r = &ok[0];
    assert_eq!(r["key"], "prod/crm");
    assert_eq!(r["generation_before"], 1);
    assert_eq!(r["generation_after"], 2);
    assert_eq!(r["versions"][0]["version"], 2);
    assert_eq!(
        r["versions"][0]["fingerprint"],
        set.primary.as_ref().unwrap().fingerprint.as_str()
    );
    let detail = r["detail"].as_str().unwrap();
    assert!(detail.contains("raw secret") && detail.contains("crm.age"), "{detail}");
    let applied = wait_for_log(&agent, "crm.age: applied", 1).await;
    assert!(applied.iter().any(|l| l.contains("crm.age")), "{}", agent.logs());

    // The file is now in keyward's own format: its rewrite was not a
    // second reload, and a new key arrives the same way.
    write_atomically(
        &key_file(&agent, "prod", "brand-new"),
        &encrypt_to(&agent.recipient(), b"sk_brand_new\n"),
    );
    let set = wait_for_primary(&agent, "prod", "brand-new", b"sk_brand_new").await;
    assert_eq!(set.generation, 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(wait_for_reloads(&agent, "ok", 2).await.len(), 2);
    assert_no_secret(
        "agent log",
        agent.logs().as_bytes(),
        &["sk_new_crm", "sk_brand_new", "sk_old_crm"],
    );
    assert_no_secret(
        "audit log",
        &std::fs::read(agent.audit_file()).unwrap(),
        &["sk_new_crm", "sk_brand_new"],
    );
}

#[tokio::test]
async fn record_written_by_a_tool_gets_the_next_generation() {
    let agent = TestAgent::start();
    agent.put("prod/billing-api", "sk_one");
    for s in ["sk_two", "sk_three"] {
        let out = agent.cli(&["put", "--overwrite", "prod/billing-api"], Some(s.as_bytes()));
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let before = agent.fetch("prod", "billing-api").await.unwrap();
    assert_eq!(before.generation, 3);

    // A full record from another tool, with a lower generation than ours.
    let secret = Secret::copy_from(b"sk_from_record");
    let state = KeySetState {
        key: "prod/billing-api".parse().unwrap(),
        generation: 1,
        state: RotationState::Steady,
        primary: Version {
            number: 10,
            secret,
            fingerprint: String::new(),
            created_at: SystemTime::now(),
            expires_at: None,
            promoted_at: None,
        },
        fallback: None,
        history: vec![],
        backend_version: None,
    };
    let plaintext = keyward::store::record::encode(&state).unwrap();
    write_atomically(
        &key_file(&agent, "prod", "billing-api"),
        &encrypt_to(&agent.recipient(), &plaintext),
    );

    let set = wait_for_primary(&agent, "prod", "billing-api", b"sk_from_record").await;
    assert_eq!(set.generation, 4, "current + 1, never the file's (lower) generation");
    assert_eq!(set.primary.as_ref().unwrap().version, 10);
    let ok = wait_for_reloads(&agent, "ok", 1).await;
    assert_eq!(ok[0]["generation_before"], 3);
    assert_eq!(ok[0]["generation_after"], 4);
    assert!(
        ok[0]["detail"].as_str().unwrap().contains("keyward record"),
        "{:?}",
        ok[0]
    );
}

#[tokio::test]
async fn invalid_files_are_rejected_and_left_alone() {
    let agent = TestAgent::start();
    agent.put("prod/crm", "sk_good");
    let path = key_file(&agent, "prod", "crm");
    let stranger = age::x25519::Identity::generate().to_public();
    let bad_files: [(&str, Vec<u8>); 2] = [
        ("garbage", b"this is not an age file at all".to_vec()),
        (
            "encrypted to another identity",
            encrypt_to(&stranger, b"sk_for_someone_else"),
        ),
    ];
    for (n, (what, bytes)) in bad_files.iter().enumerate() {
        write_atomically(&path, bytes);
        let rejected = wait_for_reloads(&agent, "rejected", n + 1).await;
        let r = &rejected[n];
        assert_eq!(r["key"], "prod/crm", "{what}");
        assert_eq!(r["generation_after"], 1, "{what}");
        assert!(
            r["detail"].as_str().unwrap().contains("cannot decrypt"),
            "{what}: {r:?}"
        );

        // The last good state keeps serving; the file is not touched.
        let set = agent.fetch("prod", "crm").await.unwrap();
        assert_eq!(primary_secret(&set), b"sk_good", "{what}");
        assert_eq!(set.generation, 1, "{what}");
        assert_eq!(&std::fs::read(&path).unwrap(), bytes, "{what}: the file was rewritten");
    }
    // One clear line per file, at error level, naming the file, the reason
    // and the recipient to encrypt to.
    let lines = wait_for_log(&agent, "not applied", 2).await;
    assert_eq!(lines.len(), 2, "{lines:?}");
    let me = agent.recipient().to_string();
    for line in &lines {
        assert!(line.contains("ERROR"), "{line}");
        assert!(line.contains(&path.display().to_string()), "{line}");
        assert!(line.contains("cannot decrypt it with the agent identity"), "{line}");
        assert!(line.contains(&me), "{line}");
        assert!(line.contains("still serving generation 1"), "{line}");
    }
    assert_eq!(
        reload_records(&agent).iter().filter(|r| r["outcome"] == "ok").count(),
        0
    );

    // A file whose name is not a key: one warning, however often it changes.
    let bad_name = agent.dir.join("store/prod/Not A Key.age");
    for _ in 0..2 {
        write_atomically(&bad_name, &encrypt_to(&agent.recipient(), b"sk_x"));
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let warned = wait_for_log(&agent, "Not A Key.age", 1).await;
    assert_eq!(warned.len(), 1, "{}", agent.logs());
    assert!(
        warned[0].contains("WARN") && warned[0].contains("not a valid key"),
        "{}",
        warned[0]
    );
    assert!(bad_name.exists());
}

#[tokio::test]
async fn half_written_file_is_rejected_then_applied_when_complete() {
    let agent = TestAgent::start();
    agent.put("prod/crm", "sk_before");
    let path = key_file(&agent, "prod", "crm");
    let full = encrypt_to(&agent.recipient(), b"sk_after_slow_write");
    let (first, rest) = full.split_at(full.len() / 2);

    // A tool writing in place, slowly.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .unwrap();
    f.set_permissions(std::fs::Permissions::from_mode(0o600)).unwrap();
    f.write_all(first).unwrap();
    f.flush().unwrap();
    let rejected = wait_for_reloads(&agent, "rejected", 1).await;
    assert_eq!(rejected[0]["key"], "prod/crm");
    let set = agent.fetch("prod", "crm").await.unwrap();
    assert_eq!(primary_secret(&set), b"sk_before");
    assert_eq!(set.generation, 1);
    assert!(
        wait_for_log(&agent, "not applied", 1)
            .await
            .iter()
            .any(|l| l.contains("crm.age")),
        "{}",
        agent.logs()
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    f.write_all(rest).unwrap();
    drop(f);
    let set = wait_for_primary(&agent, "prod", "crm", b"sk_after_slow_write").await;
    assert_eq!(set.generation, 2);
    assert_eq!(wait_for_reloads(&agent, "ok", 1).await[0]["generation_after"], 2);
}

#[tokio::test]
async fn the_agents_own_writes_do_not_reload() {
    let agent = TestAgent::start();
    agent.put("prod/busy", "sk_0");
    for i in 1..20 {
        let out = agent.cli(&["put", "--overwrite", "prod/busy"], Some(format!("sk_{i}").as_bytes()));
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    // A key deleted through keyward is not "removed outside keyward".
    agent.put("prod/doomed", "sk_doomed");
    let out = agent.cli(&["delete", "--yes", "prod/doomed"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));

    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(reload_records(&agent), Vec::<Value>::new());
    assert!(
        log_lines_with(&agent, "removed outside keyward").is_empty(),
        "{}",
        agent.logs()
    );
    let set = agent.fetch("prod", "busy").await.unwrap();
    assert_eq!(set.generation, 20);
    assert_eq!(primary_secret(&set), b"sk_19");
}

#[tokio::test]
async fn generation_survives_a_restart_after_a_reload() {
    let mut agent = TestAgent::start();
    agent.put("prod/crm", "sk_one");
    write_atomically(
        &key_file(&agent, "prod", "crm"),
        &encrypt_to(&agent.recipient(), b"sk_two"),
    );
    let set = wait_for_primary(&agent, "prod", "crm", b"sk_two").await;
    assert_eq!(set.generation, 2);
    // Let the rewrite settle, then restart.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(agent.stop().success());
    agent.spawn().unwrap();

    let set = agent.fetch("prod", "crm").await.unwrap();
    assert_eq!(primary_secret(&set), b"sk_two");
    assert_eq!(set.generation, 2, "the generation went backwards over a restart");
    let out = agent.cli(&["put", "--overwrite", "prod/crm"], Some(b"sk_three"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(agent.fetch("prod", "crm").await.unwrap().generation, 3);
}

#[tokio::test]
async fn symlink_in_the_store_is_not_followed() {
    let agent = TestAgent::start();
    // A valid key file outside the store, and a link to it inside.
    let target = agent.dir.parent().unwrap().join("planted.age");
    let bytes = encrypt_to(&agent.recipient(), b"sk_planted");
    std::fs::write(&target, &bytes).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
    let link = key_file(&agent, "prod", "evil");
    std::os::unix::fs::symlink(&target, &link).unwrap();

    let rejected = wait_for_reloads(&agent, "rejected", 1).await;
    assert_eq!(rejected[0]["key"], "prod/evil");
    assert!(
        rejected[0]["detail"].as_str().unwrap().contains("symlink"),
        "{:?}",
        rejected[0]
    );
    let err = agent.fetch("prod", "evil").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let lines = wait_for_log(&agent, "not applied", 1).await;
    assert!(
        lines.iter().any(|l| l.contains("evil.age") && l.contains("symlink")),
        "{}",
        agent.logs()
    );
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read(&target).unwrap(), bytes, "the target was touched");
}

#[tokio::test]
async fn a_file_removed_outside_keyward_keeps_serving() {
    let agent = TestAgent::start();
    agent.put("prod/crm", "sk_kept");
    std::fs::remove_file(key_file(&agent, "prod", "crm")).unwrap();
    let ignored = wait_for_reloads(&agent, "ignored", 1).await;
    assert_eq!(ignored[0]["key"], "prod/crm");
    assert_eq!(primary_secret(&agent.fetch("prod", "crm").await.unwrap()), b"sk_kept");
    let lines = wait_for_log(&agent, "removed outside keyward", 1).await;
    assert!(
        lines.iter().any(|l| l.contains("keyward delete prod/crm")),
        "{}",
        agent.logs()
    );
}

#[tokio::test]
async fn raw_secret_is_refused_mid_rotation() {
    let agent = TestAgent::start();
    agent.put("prod/crm", "sk_current");
    let out = agent.cli(&["stage", "prod/crm"], Some(b"sk_staged"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let path = key_file(&agent, "prod", "crm");
    let bytes = encrypt_to(&agent.recipient(), b"sk_sneaky");
    write_atomically(&path, &bytes);
    let rejected = wait_for_reloads(&agent, "rejected", 1).await;
    let detail = rejected[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("mid-rotation") && detail.contains("finish or abort"),
        "{detail}"
    );
    let set = agent.fetch("prod", "crm").await.unwrap();
    assert_eq!(primary_secret(&set), b"sk_current");
    assert_eq!(set.fallback.unwrap().secret.to_vec(), b"sk_staged");
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

#[tokio::test]
async fn watchers_get_the_reloaded_state() {
    let agent = TestAgent::start();
    agent.put("prod/crm", "sk_watched_old");
    let request = proto::WatchKeysRequest {
        keys: vec![key("prod", "crm").unwrap()],
    };
    let mut stream = agent.keys().await.watch_keys(request).await.unwrap().into_inner();
    let first = tokio::time::timeout(DEADLINE, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.key_set.unwrap().generation, 1);
    write_atomically(
        &key_file(&agent, "prod", "crm"),
        &encrypt_to(&agent.recipient(), b"sk_watched_new"),
    );
    let event = tokio::time::timeout(DEADLINE, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.reason, "reloaded");
    let set = event.key_set.unwrap();
    assert_eq!(set.generation, 2);
    assert_eq!(primary_secret(&set), b"sk_watched_new");
}
