//! The audit chain under tampering, a full audit disk, and kill -9 during
//! writes.

use crate::common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use keyward::proto;
use tonic::Code;

/// Runs the agent through some traffic and returns it stopped, with its
/// audit log complete.
async fn agent_with_history() -> TestAgent {
    let mut agent = TestAgent::start();
    agent.put("prod/audited", "sk_audit_chain");
    let mut keys = agent.keys().await;
    for _ in 0..6 {
        keys.get_key(proto::GetKeyRequest {
            key: key("prod", "audited"),
        })
        .await
        .unwrap();
    }
    drop(keys);
    assert!(agent.stop().success());
    agent
}

fn verify(agent: &TestAgent, file: &std::path::Path) -> (bool, String) {
    let out = Command::new(KEYWARD)
        .args(["audit", "verify"])
        .arg(file)
        .arg("--key")
        .arg(agent.dir.join("install.key"))
        .output()
        .unwrap();
    (out.status.success(), text(&[out.stdout, out.stderr].concat()))
}

#[tokio::test]
async fn audit_verify_passes_untouched_and_catches_each_tampering_kind() {
    let agent = agent_with_history().await;
    let original = std::fs::read_to_string(agent.audit_file()).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    assert!(lines.len() >= 9, "{original}");

    let (ok, report) = verify(&agent, &agent.audit_file());
    assert!(ok, "untouched log verifies: {report}");
    // Default file and key with --dev.
    let out = agent.cli(&["audit", "verify"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let tamper = |name: &str, new_lines: Vec<String>| {
        let path = agent.dir.join(format!("tampered-{name}.jsonl"));
        std::fs::write(&path, new_lines.join("\n") + "\n").unwrap();
        // The head file travels with the log it describes.
        std::fs::copy(
            agent.dir.join("audit.jsonl.head"),
            agent.dir.join(format!("tampered-{name}.jsonl.head")),
        )
        .unwrap();
        verify(&agent, &path)
    };
    let owned: Vec<String> = lines.iter().map(|s| s.to_string()).collect();

    // Edited: a fetch made to look denied.
    let mut edited = owned.clone();
    let i = edited.iter().position(|l| l.contains("\"event\":\"fetch\"")).unwrap();
    edited[i] = edited[i].replace("\"outcome\":\"ok\"", "\"outcome\":\"denied\"");
    let (ok, report) = tamper("edited", edited);
    assert!(!ok, "edit detected");
    assert!(
        report.contains(&format!("line {}", i + 1)),
        "names the edited line {}: {report}",
        i + 1
    );

    // Removed: a middle record deleted.
    let mut removed = owned.clone();
    removed.remove(4);
    let (ok, report) = tamper("removed", removed);
    assert!(!ok, "removal detected: {report}");
    assert!(report.contains("line 5"), "{report}");

    // Reordered: two records swapped.
    let mut swapped = owned.clone();
    swapped.swap(3, 4);
    let (ok, report) = tamper("reordered", swapped);
    assert!(!ok, "reorder detected: {report}");
    assert!(report.contains("line 4"), "{report}");

    // Cut: the last two records removed (the head file still names them).
    let mut cut = owned.clone();
    cut.truncate(cut.len() - 2);
    let (ok, report) = tamper("cut", cut);
    assert!(!ok, "cut tail detected: {report}");
    assert!(report.to_lowercase().contains("missing"), "{report}");

    // A record forged without the install key.
    let mut forged = owned.clone();
    forged.push(owned.last().unwrap().replace("\"seq\":", "\"seq\":1"));
    let (ok, _) = tamper("forged", forged);
    assert!(!ok, "forged record detected");

    // A wrong key fails everything.
    let other = tempfile::tempdir().unwrap();
    let out = Command::new(KEYWARD)
        .args(["init", "--state-dir"])
        .arg(other.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = Command::new(KEYWARD)
        .args(["audit", "verify"])
        .arg(agent.audit_file())
        .arg("--key")
        .arg(other.path().join("install.key"))
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[tokio::test]
async fn a_full_audit_disk_withholds_keys_with_unavailable_and_the_agent_keeps_running() {
    let mut agent = TestAgent::start();
    agent.put("prod/full", "sk_audit_full");
    agent.stop();
    let used = std::fs::metadata(agent.audit_file()).unwrap().len();
    // Room for a handful more records, then writes fail with EFBIG.
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--fsize={}", used + 4000)).arg("--").arg(KEYWARDD);
    cmd.args(agent.command().get_args());
    cmd.env("KEYWARD_LOG", "debug");
    agent.spawn_with(cmd).unwrap();

    let mut keys = agent.keys().await;
    let mut unavailable = None;
    for _ in 0..100 {
        match keys
            .get_key(proto::GetKeyRequest {
                key: key("prod", "full"),
            })
            .await
        {
            Ok(_) => continue,
            Err(e) => {
                unavailable = Some(e);
                break;
            }
        }
    }
    let err = unavailable.expect("fetches fail once the audit file cannot grow");
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
    assert!(err.message().contains("audit"), "{}", err.message());
    assert_no_secret("error message", err.message().as_bytes(), &["sk_audit_full"]);
    // Still running and answering: status reports the audit error.
    let out = agent.cli(&["status"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("AUDIT ERROR"), "{}", text(&out.stdout));
    let again = keys
        .get_key(proto::GetKeyRequest {
            key: key("prod", "full"),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::Unavailable);
    agent.kill9();
    // What was written still verifies.
    let out = agent.cli(&["audit", "verify"], None);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
}

/// kill -9 while puts are in flight: every put the agent acknowledged is
/// there after a restart, the store loads, and the audit chain verifies.
#[tokio::test]
async fn kill_9_during_puts_loses_no_acknowledged_write() {
    let mut agent = TestAgent::start();
    let mut acknowledged: Vec<(String, String)> = Vec::new();
    for round in 0..5u32 {
        let admin = agent.admin().await;
        let stop_at = Instant::now() + Duration::from_millis(150 + 70 * round as u64);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for w in 0..4 {
            let mut admin = admin.clone();
            let tx = tx.clone();
            // Every secret of this writer begins so: one entry for all.
            keep_for_leak_scan("secrets", format!("sk_crash_{round}_{w}_").as_bytes());
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    let name = format!("k-{round}-{w}-{i}");
                    let secret = format!("sk_crash_{round}_{w}_{i}");
                    let r = admin
                        .put_key(proto::PutKeyRequest {
                            key: key("prod", &name),
                            secret: bytes::Bytes::from(secret.clone().into_bytes()),
                            ..Default::default()
                        })
                        .await;
                    match r {
                        Ok(_) => tx.send((name, secret)).unwrap(),
                        Err(_) => break,
                    }
                }
            }));
        }
        drop(tx);
        tokio::time::sleep_until(stop_at.into()).await;
        agent.kill9();
        for t in tasks {
            let _ = t.await;
        }
        while let Some(ack) = rx.recv().await {
            acknowledged.push(ack);
        }
        agent.spawn().expect("restarts after kill -9");
        let mut keys = agent.keys().await;
        for (name, secret) in &acknowledged {
            let set = keys
                .get_key(proto::GetKeyRequest { key: key("prod", name) })
                .await
                .unwrap_or_else(|e| panic!("acknowledged put of prod/{name} lost after kill -9: {e}"))
                .into_inner();
            let served = set.primary.unwrap().secret;
            assert!(
                served == secret.as_bytes(),
                "prod/{name} serves {} after kill -9, not the acknowledged {}",
                fingerprint(&served),
                fingerprint(secret.as_bytes())
            );
        }
        let leftovers: Vec<_> = std::fs::read_dir(agent.dir.join("store/prod"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    }
    assert!(
        acknowledged.len() > 20,
        "the loop made progress: {}",
        acknowledged.len()
    );
    agent.stop();
    let out = agent.cli(&["audit", "verify"], None);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
}

/// Changes left in doubt by a crash (noted in `intents.json`, as a kill
/// between the store write and the change's record leaves them) are
/// recorded at the next start, before anything is served: the one the
/// store holds as `ok`, the one it does not as `not_applied`; the log
/// still verifies, and the note is gone.
#[tokio::test]
async fn changes_in_doubt_at_a_crash_are_recorded_at_start() {
    let mut agent = TestAgent::start();
    agent.put("prod/held", "sk_doubt_held");
    agent.put("prod/lost", "sk_doubt_lost");
    agent.kill9();
    // As a crash leaves it: `held` at generation 1 was written, `lost`'s
    // overwrite (1 -> 2) was not.
    let file = agent.dir.join("intents.json");
    std::fs::write(
        &file,
        r#"{"version":1,"intents":[
            {"id":7,"key":"prod/held","event":"put","generation_before":null,"generation_after":1},
            {"id":8,"key":"prod/lost","event":"put","generation_before":1,"generation_after":2}]}"#,
    )
    .unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    agent.spawn().expect("restarts");
    // Answered only once the agent serves (after it settled the notes).
    agent.fetch("prod", "held").await.unwrap();
    let lines = agent.audit_lines();
    let start = lines.iter().rposition(|l| l["event"] == "agent_start").unwrap();
    let settled: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["detail"].as_str().is_some_and(|d| d.starts_with("recorded at start")))
        .collect();
    assert_eq!(settled.len(), 2, "{settled:?}\n{}", agent.logs());
    let held = settled.iter().find(|l| l["key"] == "prod/held").unwrap();
    assert_eq!(
        (held["event"].as_str(), held["outcome"].as_str()),
        (Some("put"), Some("ok"))
    );
    assert_eq!(held["generation_after"], 1);
    let lost = settled.iter().find(|l| l["key"] == "prod/lost").unwrap();
    assert_eq!(lost["outcome"], "not_applied");
    assert!(
        lines.iter().position(|l| std::ptr::eq(l, *lost)).unwrap() < start,
        "recorded before serving"
    );
    assert!(!file.exists(), "the notes are settled");
    agent.stop();
    let (ok, report) = verify(&agent, &agent.audit_file());
    assert!(ok, "{report}");
}

/// A put is preceded by its `intent` record, naming the generation it
/// will produce, and leaves no note behind.
#[tokio::test]
async fn a_change_is_preceded_by_its_intent_record() {
    let mut agent = TestAgent::start();
    agent.put("prod/intended", "sk_intent_1");
    let lines = agent.audit_lines();
    let of_key: Vec<(&str, &str, u64)> = lines
        .iter()
        .filter(|l| l["key"] == "prod/intended")
        .map(|l| {
            (
                l["event"].as_str().unwrap(),
                l["outcome"].as_str().unwrap(),
                l["generation_after"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(of_key, [("put", "intent", 1), ("put", "ok", 1)]);
    assert!(!agent.dir.join("intents.json").exists());
    agent.stop();
    let (ok, report) = verify(&agent, &agent.audit_file());
    assert!(ok, "{report}");
}

/// A key file another tool wrote while the agent was down (here an old
/// copy put back, as a backup restore does; or one hot reload had taken in
/// when the agent was killed before its record) is on record, with the
/// generation and fingerprints served, before its first fetch.
#[tokio::test]
async fn a_key_file_written_while_the_agent_was_down_is_on_record_before_it_is_served() {
    let mut agent = TestAgent::start();
    agent.put("prod/offline", "sk_offline_before_1f2e");
    let file = agent.dir.join("store/prod/offline.age");
    let old = std::fs::read(&file).unwrap();
    agent.ok(&["put", "--overwrite", "prod/offline"], Some(b"sk_offline_after_9c3d"));
    agent.stop();
    std::fs::write(&file, old).unwrap();
    agent.spawn().unwrap();
    let served = agent.fetch("prod", "offline").await.unwrap();
    let primary = served.primary.as_ref().unwrap();
    assert_eq!(
        (&primary.secret[..], served.generation),
        (&b"sk_offline_before_1f2e"[..], 1)
    );
    let lines = agent.audit_lines();
    let fetch = lines
        .iter()
        .rposition(|l| l["event"] == "fetch" && l["key"] == "prod/offline")
        .expect("the fetch's record");
    let loaded = lines[..fetch]
        .iter()
        .rposition(|l| l["event"] == "key_loaded" && l["key"] == "prod/offline")
        .unwrap_or_else(|| {
            panic!(
                "no key_loaded record before the fetch: {:#?}",
                &lines[fetch.saturating_sub(6)..=fetch]
            )
        });
    let record = &lines[loaded];
    assert_eq!(record["generation_after"], served.generation, "{record}");
    assert_eq!(
        record["versions"][0]["fingerprint"],
        primary.fingerprint.as_str(),
        "{record}"
    );
    let (ok, report) = verify(&agent, &agent.audit_file());
    assert!(ok, "{report}");
}

/// The audit log itself, or its head, owned by another uid (here 65534,
/// who could then cut or edit the records the agent appends) or writable
/// by others stops the agent with the fix to run, and the log is left as
/// it was. Before, the agent only warned and went on writing into it.
#[test]
fn an_audit_log_another_uid_could_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    if !nix::unistd::geteuid().is_root() {
        return common::system::skip("chowns a file to another uid");
    }
    let mut agent = TestAgent::start();
    agent.put("prod/held", "sk_audit_planted");
    agent.stop();
    for name in ["audit.jsonl", "audit.jsonl.head"] {
        let file = agent.dir.join(name);
        let before = std::fs::read(&file).unwrap();
        std::os::unix::fs::chown(&file, Some(65534), Some(65534)).unwrap();
        let err = agent.spawn().unwrap_err();
        assert!(
            err.contains(name) && err.contains("uid 65534") && err.contains("chown"),
            "{err}"
        );
        std::os::unix::fs::chown(&file, Some(0), Some(0)).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        let err = agent.spawn().unwrap_err();
        assert!(err.contains(name) && err.contains("chmod go-w"), "{err}");
        assert_eq!(std::fs::read(&file).unwrap(), before, "{name} was changed");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    agent.spawn().expect("starts once both are the agent's alone");
    assert!(agent.stop().success());
}

/// The intents file decides what the audit log says at start ("recorded
/// at start: applied"), so one that another uid owns (here 65534, as if it
/// had planted notes of changes that never happened), or that others may
/// write, stops the agent with the fix to run, writes no record from it,
/// and is left as it was.
#[test]
fn an_intents_file_another_uid_could_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    if !nix::unistd::geteuid().is_root() {
        return common::system::skip("chowns a file to another uid");
    }
    let mut agent = TestAgent::start();
    agent.put("prod/held", "sk_intents_planted");
    agent.stop();
    let records = agent.audit_lines().len();
    let file = agent.dir.join("intents.json");
    let planted = br#"{"version":1,"intents":[{"id":1,"key":"prod/held","event":"delete","generation_before":1,"generation_after":null}]}"#;
    std::fs::write(&file, planted).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&file, Some(65534), Some(65534)).unwrap();
    let err = agent.spawn().unwrap_err();
    assert!(err.contains("intents.json") && err.contains("chown"), "{err}");
    std::os::unix::fs::chown(&file, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    let err = agent.spawn().unwrap_err();
    assert!(err.contains("intents.json") && err.contains("chmod"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), planted, "the file was changed");
    assert_eq!(
        agent.audit_lines().len(),
        records,
        "a record was written from the planted notes"
    );
}
