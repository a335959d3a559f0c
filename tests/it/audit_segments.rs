//! The audit log over a long life: segments rolled under load, a removed
//! middle segment, retention, logrotate's `create` (SIGHUP reopen) and
//! `copytruncate`, and anchors kept outside the host catching a rewritten
//! history.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::receiver::Receiver;
use common::*;
use keyward::audit::segments::list_segments;
use keyward::proto;

/// `keyward audit verify` with the agent's install key and `args` (paths,
/// flags); (passed, output).
fn verify(agent: &TestAgent, args: &[&Path]) -> (bool, String) {
    let out = Command::new(KEYWARD)
        .args(["audit", "verify"])
        .args(args)
        .arg("--key")
        .arg(agent.dir.join("install.key"))
        .output()
        .unwrap();
    (out.status.success(), text(&[out.stdout, out.stderr].concat()))
}

/// `n` fetches of prod/seg from each of `tasks` concurrent tasks.
async fn fetch_concurrently(agent: &TestAgent, tasks: usize, n: usize) {
    let keys = agent.keys().await;
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let mut keys = keys.clone();
            tokio::spawn(async move {
                for _ in 0..n {
                    keys.get_key(proto::GetKeyRequest {
                        key: key("prod", "seg"),
                    })
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
}

/// Every line of the sealed segments and the live file, parsed.
fn all_records(live: &Path) -> Vec<serde_json::Value> {
    let mut files: Vec<PathBuf> = list_segments(live).unwrap().into_iter().map(|s| s.path).collect();
    files.push(live.to_path_buf());
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect()
}

fn count(records: &[serde_json::Value], event: &str) -> usize {
    records.iter().filter(|r| r["event"] == event).count()
}

/// Writes an executable shell script into `dir`.
fn script(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn segments_rolled_under_concurrent_fetches_verify_and_a_removed_middle_one_is_named() {
    let mut agent = TestAgent::start_with_config("[audit]\nsegment_size = \"4KiB\"\n");
    agent.put("prod/seg", "sk_segments_under_load");
    fetch_concurrently(&agent, 8, 100).await;
    assert!(agent.stop().success());

    let live = agent.audit_file();
    let segments = list_segments(&live).unwrap();
    assert!(segments.len() >= 20, "{} segments", segments.len());
    let records = all_records(&live);
    assert_eq!(
        count(&records, "fetch"),
        800,
        "every fetch has its record in some segment"
    );
    assert_eq!(count(&records, "audit_segment_sealed"), segments.len());
    let (ok, report) = verify(&agent, &[&live]);
    assert!(ok, "{report}");
    assert!(report.contains(&format!("{} files", segments.len() + 1)), "{report}");

    let gone = &segments[segments.len() / 2];
    std::fs::remove_file(&gone.path).unwrap();
    let (ok, report) = verify(&agent, &[&live]);
    assert!(!ok, "{report}");
    assert!(
        report.contains(&format!("records {}..{} are missing between", gone.first, gone.last)),
        "names the missing segment's range: {report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_the_oldest_segments_with_a_record_and_verify_accepts_the_prefix() {
    let mut agent = TestAgent::start_with_config("[audit]\nsegment_size = \"2KiB\"\nretain = 2\n");
    agent.put("prod/seg", "sk_segments_retained");
    fetch_concurrently(&agent, 2, 60).await;
    let live = agent.audit_file();
    // Each deletion waits for its record to be on disk, so the passes can
    // trail the seals: wait until they caught up with the last one.
    eventually(Duration::from_secs(10), || {
        (count(&all_records(&live), "audit_segment_deleted") >= 3 && list_segments(&live).unwrap().len() <= 3)
            .then_some(())
    })
    .await
    .expect("retention deletes segments");
    assert!(agent.stop().success());

    // Two kept, and perhaps one sealed after the last retention pass.
    let kept = list_segments(&live).unwrap();
    assert!((2..=3).contains(&kept.len()), "{kept:?}");
    // The record of the segment just before the first kept one is kept.
    let upto = kept[0].first - 1;
    let records = all_records(&live);
    let named = records.iter().any(|r| {
        r["event"] == "audit_segment_deleted"
            && r["detail"].as_str().unwrap().contains(&format!("..{upto} (last hash "))
    });
    assert!(named, "a record names the deletion of the segment ending at {upto}");
    let (ok, report) = verify(&agent, &[&live]);
    assert!(ok, "{report}");
    assert!(
        report.contains(&format!("records 1..{upto} were deleted by [audit] retain")),
        "says up to which seq: {report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reopens_a_log_moved_away_and_the_chain_verifies_across_both_files() {
    let mut agent = TestAgent::start();
    agent.put("prod/seg", "sk_segments_reopened");
    fetch_concurrently(&agent, 1, 3).await;
    let live = agent.audit_file();
    let moved = agent.dir.join("audit.jsonl.1");
    std::fs::rename(&live, &moved).unwrap();
    fetch_concurrently(&agent, 1, 2).await;
    agent.sighup();
    let reopened = eventually(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&live).ok()?;
        text.contains("\"outcome\":\"reopened\"").then_some(text)
    })
    .await
    .unwrap_or_else(|| panic!("the agent reopens its log on SIGHUP: {}", agent.logs()));
    assert!(reopened.starts_with("{\"time\""), "{reopened}");
    fetch_concurrently(&agent, 1, 3).await;
    assert!(agent.stop().success());

    let moved_text = std::fs::read_to_string(&moved).unwrap();
    assert_eq!(moved_text.matches("\"event\":\"fetch\"").count(), 5, "{moved_text}");
    let (ok, report) = verify(&agent, &[&moved, &live]);
    assert!(ok, "{report}");
    let (ok, report) = verify(&agent, &[&live]);
    assert!(!ok && report.contains("missing from the start"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copytruncate_is_detected_by_the_agent_and_reported_as_such_by_verify() {
    let mut agent = TestAgent::start();
    agent.put("prod/seg", "sk_segments_truncated");
    fetch_concurrently(&agent, 1, 3).await;
    let live = agent.audit_file();
    let copy = agent.dir.join("audit.jsonl.1");
    std::fs::copy(&live, &copy).unwrap();
    fetch_concurrently(&agent, 1, 2).await;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&live)
        .unwrap()
        .set_len(0)
        .unwrap();
    fetch_concurrently(&agent, 1, 3).await;
    assert!(agent.stop().success());

    assert!(agent.logs().contains("copytruncate"), "{}", agent.logs());
    let text = std::fs::read_to_string(&live).unwrap();
    assert!(text.starts_with("{\"time\""), "no hole at the start: {text:?}");
    assert!(
        text.lines().next().unwrap().contains("\"outcome\":\"truncated\""),
        "{text}"
    );
    let (ok, report) = verify(&agent, &[&copy, &live]);
    assert!(!ok, "{report}");
    assert!(report.contains("copytruncate"), "{report}");
    assert!(
        !report.contains("edited") && !report.contains("not valid JSON"),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anchors_from_an_exec_hook_and_a_webhook_catch_a_rewritten_history() {
    let receiver = Receiver::start();
    let tmp = tempfile::tempdir().unwrap();
    let exec_file = tmp.path().join("exec-anchors.jsonl");
    let hook = script(tmp.path(), "keep-anchor", &format!("cat >> {}", exec_file.display()));
    let mut agent = TestAgent::start_with_config(&format!(
        "[audit]\nanchor_interval = \"1s\"\n\
         [[audit.anchor]]\nkind = \"exec\"\ncommand = [\"{hook}\"]\n\
         [[audit.anchor]]\nkind = \"webhook\"\nurl = \"{}\"\nheaders = {{ Authorization = \"Bearer anchor-t0ken\" }}\n",
        receiver.url("/anchors")
    ));
    agent.put("prod/seg", "sk_segments_anchored");
    for _ in 0..3 {
        fetch_concurrently(&agent, 2, 10).await;
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    let received = receiver.wait_for_async(2, Duration::from_secs(10)).await;
    assert!(received.len() >= 2, "the webhook gets anchors");
    assert_eq!(received[0].header("authorization"), Some("Bearer anchor-t0ken"));
    let exec_lines = eventually(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&exec_file).ok()?;
        (text.lines().count() >= 2).then_some(text)
    })
    .await
    .expect("the exec hook gets anchors");
    assert!(agent.stop().success());
    assert!(!agent.logs().contains("anchor-t0ken"), "no token in the logs");

    // As the receiver stored them: one JSON object per line.
    let webhook_file = tmp.path().join("webhook-anchors.jsonl");
    let stored: String = receiver.received().iter().map(|r| format!("{}\n", r.raw)).collect();
    std::fs::write(&webhook_file, &stored).unwrap();
    let first: serde_json::Value = serde_json::from_str(exec_lines.lines().next().unwrap()).unwrap();
    for field in ["seq", "hash", "time", "install_id"] {
        assert!(!first[field].is_null(), "{field} in {first}");
    }
    let live = agent.audit_file();
    for anchors in [&exec_file, &webhook_file] {
        let (ok, report) = verify(&agent, &[Path::new("--anchors"), anchors, &live]);
        assert!(ok, "{report}");
    }

    // A local root deletes the log and its head and lets a new agent on the
    // same state write a fresh, self-consistent chain, longer than before.
    std::fs::remove_file(&live).unwrap();
    std::fs::remove_file(agent.dir.join("audit.jsonl.head")).unwrap();
    agent.spawn().expect("a new agent starts");
    fetch_concurrently(&agent, 2, 60).await;
    assert!(agent.stop().success());
    let (ok, report) = verify(&agent, &[&live]);
    assert!(ok, "alone, the rewritten log verifies: {report}");
    for anchors in [&exec_file, &webhook_file] {
        let (ok, report) = verify(&agent, &[Path::new("--anchors"), anchors, &live]);
        assert!(!ok, "the anchors catch the rewrite: {report}");
        assert!(report.contains("the history was rewritten"), "{report}");
    }
}

/// An anchor names only a record on disk. With `durability = "write"` the
/// last `fsync_interval` of records is still in the page cache, and a
/// power loss takes it back: the agent then writes other records at those
/// seqs, and an anchor naming one of the lost ones would make the honest
/// log look rewritten. Here nothing is synced after the start (a 1 h
/// interval) while seals, each publishing, come and go: every anchor names
/// at most the record the head file names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anchors_name_only_records_on_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let exec_file = tmp.path().join("exec-anchors.jsonl");
    let hook = script(tmp.path(), "keep-anchor", &format!("cat >> {}", exec_file.display()));
    let mut agent = TestAgent::start_with_config(&format!(
        "[audit]\nfsync_interval = \"1h\"\nsegment_size = \"2KiB\"\nanchor_interval = \"1s\"\n\
         [[audit.anchor]]\nkind = \"exec\"\ncommand = [\"{hook}\"]\n"
    ));
    agent.put("prod/seg", "sk_segments_durable_anchor");
    // A clean stop syncs: the next start begins with a record on disk.
    assert!(agent.stop().success());
    agent.spawn().expect("the agent starts again");
    fetch_concurrently(&agent, 2, 40).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let live = agent.audit_file();
    assert!(list_segments(&live).unwrap().len() >= 2, "seals published anchors");
    let head: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(agent.dir.join("audit.jsonl.head"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    let on_disk = head["seq"].as_u64().unwrap();
    let anchored: Vec<u64> = std::fs::read_to_string(&exec_file)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(!anchored.is_empty(), "the exec hook gets an anchor");
    assert!(
        anchored.iter().all(|&seq| seq <= on_disk),
        "anchors {anchored:?} name records past {on_disk}, the last one on disk"
    );
    assert!(agent.stop().success());
}
