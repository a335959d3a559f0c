//! Segments against real logs in a temp dir: rolled under concurrent
//! records, a middle one removed, retention, a reopen after `mv`,
//! copytruncate, a seal cut short by a crash, and anchors.

use std::path::Path;

use crate::audit::anchor::AnchorHead;
use crate::audit::head_path;
use crate::audit::segments::{list_segments, Retain, Segment};
use crate::audit::tests::{all_lines, fetch, fill_to_a_seal, lines, opts, tear, write_log, KEY};
use crate::audit::{verify, verify_set, Audit, AuditOptions, Durability, ProblemKind, VerifyOptions};

/// Options with a tiny segment size.
fn small(dir: &Path, durability: Durability) -> AuditOptions {
    AuditOptions {
        segment_size: 2048,
        ..opts(dir, durability)
    }
}

fn set(paths: &[&Path]) -> VerifyOptions {
    VerifyOptions {
        paths: paths.iter().map(|p| p.to_path_buf()).collect(),
        ..VerifyOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn segments_rolled_under_concurrent_records_verify_as_one_chain() {
    for durability in [Durability::Write, Durability::Fsync] {
        let dir = tempfile::tempdir().unwrap();
        let opts = small(dir.path(), durability);
        let audit = Audit::start(opts.clone()).unwrap();
        let seals = audit.seals();
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let audit = audit.clone();
                tokio::spawn(async move {
                    for i in 0..100 {
                        audit.record(fetch(t * 1000 + i)).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        audit.close().await;
        assert!(seals.has_changed().unwrap(), "seals are signalled");

        let segments = list_segments(&opts.path).unwrap();
        assert!(segments.len() >= 10, "{} segments", segments.len());
        for pair in segments.windows(2) {
            assert_eq!(pair[0].last + 1, pair[1].first, "contiguous: {pair:?}");
        }
        let all = all_lines(&opts.path);
        let fetches = all.iter().filter(|l| l.contains("\"event\":\"fetch\"")).count();
        assert_eq!(fetches, 800, "every record is in some segment");
        // Each segment ends with its seal, and the next starts by naming it.
        for seg in &segments {
            let l = lines(&seg.path);
            let last = l.last().unwrap();
            assert!(last.contains("\"event\":\"audit_segment_sealed\""), "{last}");
            assert!(last.contains(&format!("\"seq\":{}", seg.last)), "{last}");
        }
        assert!(lines(&opts.path)[0].contains("\"event\":\"audit_segment_opened\""));

        let report = verify(&opts.path, &KEY).unwrap();
        assert!(report.is_ok(), "{durability:?}: {report}");
        assert_eq!(report.records_checked as usize, all.len());
        assert_eq!(report.files.len(), segments.len() + 1);
    }
}

#[tokio::test]
async fn a_removed_middle_segment_fails_with_its_seq_range() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small(dir.path(), Durability::Fsync);
    write_log(&opts, 100).await;
    let segments = list_segments(&opts.path).unwrap();
    assert!(segments.len() >= 3);
    let gone = &segments[1];
    std::fs::remove_file(&gone.path).unwrap();

    let report = verify(&opts.path, &KEY).unwrap();
    assert!(!report.is_ok());
    let p = &report.problems[0];
    assert_eq!(p.kind, ProblemKind::MissingSegment, "{report}");
    assert!(
        p.message
            .contains(&format!("records {}..{} are missing", gone.first, gone.last)),
        "{report}"
    );
    assert_eq!(report.problems.len(), 1, "{report}");
}

#[tokio::test]
async fn retention_deletes_the_oldest_records_it_and_verify_accepts_the_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small(dir.path(), Durability::Write);
    let audit = Audit::start(opts.clone()).unwrap();
    for i in 0..100 {
        audit.record(fetch(i)).await.unwrap();
    }
    let before = list_segments(&opts.path).unwrap();
    assert!(before.len() >= 4);
    let deleted = audit.enforce_retention(Retain::Count(2)).await.unwrap();
    assert_eq!(deleted.len(), before.len() - 2);
    audit.close().await;
    let after = list_segments(&opts.path).unwrap();
    // The newest two are kept (the deletion records may have sealed more).
    let range = |s: &[crate::audit::segments::Segment]| s.iter().map(|s| (s.first, s.last)).collect::<Vec<_>>();
    assert_eq!(range(&after[..2]), range(&before[before.len() - 2..]));
    let records: Vec<String> = all_lines(&opts.path)
        .into_iter()
        .filter(|l| l.contains("\"event\":\"audit_segment_deleted\""))
        .collect();
    assert_eq!(records.len(), deleted.len());
    assert!(records[0].contains(&format!("seqs {}..{}", before[0].first, before[0].last)));

    let report = verify(&opts.path, &KEY).unwrap();
    assert!(report.is_ok(), "{report}");
    let upto = after[0].first - 1;
    assert_eq!(report.first_seq, upto + 1);
    let expected = format!("records 1..{upto} were deleted by [audit] retain");
    assert!(report.notes.iter().any(|n| n.starts_with(&expected)), "{report}");

    // The oldest retained segment removed by hand: no record explains it.
    std::fs::remove_file(&after[0].path).unwrap();
    let report = verify(&opts.path, &KEY).unwrap();
    assert_eq!(report.problems[0].kind, ProblemKind::MissingPrefix, "{report}");
}

/// With `durability = "write"` a record is on disk only at the next sync,
/// up to `fsync_interval` later (here an hour): a segment deleted before
/// then could outlive its deletion record in a power loss, and verify would
/// report the missing prefix as tampering. Each record is on disk (the head
/// names it) before its segment goes.
#[tokio::test]
async fn retention_deletes_a_segment_only_once_its_deletion_record_is_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let opts = AuditOptions {
        fsync_interval: std::time::Duration::from_secs(3600),
        ..small(dir.path(), Durability::Write)
    };
    let audit = Audit::start(opts.clone()).unwrap();
    for i in 0..60 {
        audit.record(fetch(i)).await.unwrap();
    }
    let deleted = audit.enforce_retention(Retain::Count(1)).await.unwrap();
    assert!(!deleted.is_empty());
    let last_deletion = all_lines(&opts.path)
        .iter()
        .filter(|l| l.contains("\"event\":\"audit_segment_deleted\""))
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .max()
        .unwrap();
    let (on_disk, _) = audit.durable_head().expect("a record is on disk");
    assert!(
        on_disk >= last_deletion,
        "deleted with record {last_deletion} not on disk (the head names {on_disk})"
    );
    audit.close().await;
}

#[tokio::test]
async fn a_reopen_after_mv_continues_the_chain_in_a_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let opts = opts(dir.path(), Durability::Write);
    let audit = Audit::start(opts.clone()).unwrap();
    for i in 0..5 {
        audit.record(fetch(i)).await.unwrap();
    }
    let moved = dir.path().join("audit.jsonl.1");
    std::fs::rename(&opts.path, &moved).unwrap();
    // Until SIGHUP, records go on into the moved file.
    audit.record(fetch(5)).await.unwrap();
    audit.request_reopen();
    for i in 6..9 {
        audit.record(fetch(i)).await.unwrap();
    }
    // A second reopen with nothing moved changes nothing.
    audit.request_reopen();
    audit.record(fetch(9)).await.unwrap();
    audit.close().await;

    assert_eq!(lines(&moved).len(), 6);
    let live = lines(&opts.path);
    assert!(live[0].contains("\"outcome\":\"reopened\""), "{}", live[0]);
    assert_eq!(live.len(), 5);
    let report = verify_set(&set(&[&moved, &opts.path]), &KEY).unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.last_seq, 11);
    // The live file alone is missing its start, and says so.
    let report = verify(&opts.path, &KEY).unwrap();
    assert_eq!(report.problems[0].kind, ProblemKind::MissingPrefix, "{report}");
}

#[tokio::test]
async fn copytruncate_is_detected_and_reported_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let opts = opts(dir.path(), Durability::Write);
    let audit = Audit::start(opts.clone()).unwrap();
    for i in 0..5 {
        audit.record(fetch(i)).await.unwrap();
    }
    // logrotate copytruncate: copy, (records written meanwhile), truncate.
    let copy = dir.path().join("audit.jsonl.1");
    std::fs::copy(&opts.path, &copy).unwrap();
    audit.record(fetch(5)).await.unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&opts.path)
        .unwrap()
        .set_len(0)
        .unwrap();
    for i in 6..9 {
        audit.record(fetch(i)).await.unwrap();
    }
    audit.close().await;

    let live = lines(&opts.path);
    assert!(live[0].starts_with('{'), "no hole: {:?}", live[0]);
    assert!(live[0].contains("\"outcome\":\"truncated\""), "{}", live[0]);
    let report = verify_set(&set(&[&copy, &opts.path]), &KEY).unwrap();
    assert_eq!(report.problems.len(), 1, "{report}");
    let p = &report.problems[0];
    assert_eq!(p.kind, ProblemKind::CopyTruncate, "{report}");
    assert!(p.message.contains("records 6..6 are in neither"), "{report}");
    let report = verify(&opts.path, &KEY).unwrap();
    assert_eq!(report.problems[0].kind, ProblemKind::CopyTruncate, "{report}");
}

/// logrotate's `create` mode beside the agent's own segments: segments
/// sealed before the move, the moved file, and segments sealed after the
/// reopen. `verify MOVED LIVE` reads them all in chain order, not every
/// segment of the live path after the moved file.
#[tokio::test]
async fn a_file_moved_away_between_segments_verifies_in_chain_order() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small(dir.path(), Durability::Write);
    let audit = Audit::start(opts.clone()).unwrap();
    let mut i = 0;
    while list_segments(&opts.path).unwrap().is_empty() {
        audit.record(fetch(i)).await.unwrap();
        i += 1;
    }
    audit.record(fetch(i)).await.unwrap();
    let moved = dir.path().join("audit.jsonl.1");
    std::fs::rename(&opts.path, &moved).unwrap();
    audit.request_reopen();
    let sealed_before = list_segments(&opts.path).unwrap().len();
    while list_segments(&opts.path).unwrap().len() == sealed_before {
        i += 1;
        audit.record(fetch(i)).await.unwrap();
    }
    audit.close().await;

    let report = verify_set(&set(&[&moved, &opts.path]), &KEY).unwrap();
    assert!(report.is_ok(), "{report}");
    let names: Vec<String> = report
        .files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names.iter().position(|n| n == "audit.jsonl.1"),
        Some(sealed_before),
        "{names:?}"
    );
}

#[tokio::test]
async fn a_missing_live_file_beside_its_segments_is_noted() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small(dir.path(), Durability::Write);
    write_log(&opts, 40).await;
    std::fs::remove_file(&opts.path).unwrap();
    std::fs::remove_file(head_path(&opts.path)).unwrap();
    let report = verify(&opts.path, &KEY).unwrap();
    assert!(report.is_ok(), "{report}");
    assert!(report.notes.iter().any(|n| n.contains("does not exist")), "{report}");
}

#[tokio::test]
async fn a_seal_cut_short_by_a_crash_is_finished_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small(dir.path(), Durability::Fsync);
    write_log(&opts, 40).await;
    // Make the live file look like a crash hit between the link under the
    // segment name and the rename: the path names the sealed file too.
    let segments = list_segments(&opts.path).unwrap();
    let last = segments.last().unwrap().clone();
    std::fs::remove_file(&opts.path).unwrap();
    std::fs::hard_link(&last.path, &opts.path).unwrap();
    // The records after the seal went with the replaced live file, and so
    // did the head's claim to them.
    std::fs::remove_file(head_path(&opts.path)).unwrap();

    continues_after_the_seal(&opts, &last).await;
    let after = list_segments(&opts.path).unwrap();
    assert_eq!(after.len(), segments.len(), "no second name for the same file");
}

/// What would stop a seal after its record is written (a file at the
/// segment's name that is not this log's, or an append-only live file,
/// which can be neither linked nor renamed over) is found before the
/// record: the file goes on unsealed, with no seal record in it, and is
/// sealed once that is set right (here at the next start).
#[tokio::test]
async fn a_seal_that_could_not_be_finished_is_not_begun() {
    for case in ["foreign file", "append-only"] {
        if case == "append-only" && !nix::unistd::geteuid().is_root() {
            eprintln!("skipped the append-only case: chattr +a needs root (CI runs as root)");
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let opts = small(dir.path(), Durability::Fsync);
        let audit = Audit::start(opts.clone()).unwrap();
        fill_to_a_seal(&audit, &opts).await;
        // The next batch would seal seqs 1..=seq+1 (its seal record).
        let name = crate::audit::segments::segment_path(&opts.path, 1, audit.status().sequence + 1);
        let flag = |op: &str| {
            let ok = std::process::Command::new("chattr")
                .args([op, opts.path.to_str().unwrap()])
                .status()
                .unwrap();
            assert!(ok.success(), "chattr {op}");
        };
        if case == "foreign file" {
            std::fs::write(&name, "not a segment\n").unwrap();
        } else {
            flag("+a");
        }
        for i in 0..5 {
            audit.record(fetch(100 + i)).await.unwrap();
        }
        audit.close().await;
        let live = lines(&opts.path);
        assert!(
            !live.iter().any(|l| l.contains("\"event\":\"audit_segment_sealed\"")),
            "{case}: the live file has a seal record it could not finish"
        );
        if case == "foreign file" {
            assert_eq!(std::fs::read_to_string(&name).unwrap(), "not a segment\n");
            std::fs::remove_file(&name).unwrap();
        } else {
            flag("-a");
        }

        let audit = Audit::start(opts.clone()).unwrap();
        audit.record(fetch(200)).await.unwrap();
        audit.close().await;
        let segments = list_segments(&opts.path).unwrap();
        assert_eq!(segments.len(), 1, "{case}: {segments:?}");
        let sealed = lines(&segments[0].path);
        assert!(
            sealed.last().unwrap().contains("\"event\":\"audit_segment_sealed\""),
            "{case}"
        );
        assert_eq!(
            sealed
                .iter()
                .filter(|l| l.contains("\"event\":\"audit_segment_sealed\""))
                .count(),
            1,
            "{case}"
        );
        let report = verify(&opts.path, &KEY).unwrap();
        assert!(report.is_ok(), "{case}: {report}");
    }
}

/// Starts the log at `opts` again and records once: the live file begins
/// with the record that opens it after the `sealed` segment, next in the
/// chain, and the whole log verifies.
async fn continues_after_the_seal(opts: &AuditOptions, sealed: &Segment) {
    let audit = Audit::start(opts.clone()).unwrap();
    audit.record(fetch(99)).await.unwrap();
    audit.close().await;
    let live = lines(&opts.path);
    assert!(live[0].contains("\"event\":\"audit_segment_opened\""), "{}", live[0]);
    assert!(live[0].contains(&format!("\"seq\":{}", sealed.last + 1)), "{}", live[0]);
    let report = verify(&opts.path, &KEY).unwrap();
    assert!(report.is_ok(), "{:?}: {report}", opts.durability);
}

#[tokio::test]
async fn a_crash_between_the_rename_and_the_first_record_of_the_new_file_continues_the_chain() {
    for durability in [Durability::Fsync, Durability::Write] {
        let dir = tempfile::tempdir().unwrap();
        let opts = small(dir.path(), durability);
        write_log(&opts, 40).await;
        // The state a crash leaves right after a seal's rename: the path
        // names the new, still empty file, and the head names at most the
        // seal.
        let last = list_segments(&opts.path).unwrap().last().unwrap().clone();
        std::fs::write(&opts.path, "").unwrap();
        std::fs::remove_file(head_path(&opts.path)).unwrap();

        continues_after_the_seal(&opts, &last).await;
    }
}

#[tokio::test]
async fn a_torn_tail_found_at_start_is_marked_in_its_own_file_before_a_due_seal() {
    let dir = tempfile::tempdir().unwrap();
    let big = opts(dir.path(), Durability::Fsync);
    write_log(&big, 40).await;
    // A crash cut a write short, and the file is past the segment size the
    // agent starts with.
    tear(&big.path);

    let opts = small(dir.path(), Durability::Fsync);
    let audit = Audit::start(opts.clone()).unwrap();
    audit.record(fetch(99)).await.unwrap();
    audit.close().await;
    assert!(!list_segments(&opts.path).unwrap().is_empty(), "the file was sealed");
    let report = verify(&opts.path, &KEY).unwrap();
    assert!(report.is_ok(), "{report}");
}

#[tokio::test]
async fn anchors_catch_a_rewritten_history_and_a_cut_tail() {
    let dir = tempfile::tempdir().unwrap();
    let opts = opts(dir.path(), Durability::Fsync);
    let audit = Audit::start(opts.clone()).unwrap();
    for i in 0..5 {
        audit.record(fetch(i)).await.unwrap();
    }
    let status = audit.status();
    let anchor = AnchorHead {
        seq: status.sequence,
        hash: status.head.clone(),
        time: String::new(),
        install_id: audit.install_id().to_owned(),
    };
    for i in 5..8 {
        audit.record(fetch(i)).await.unwrap();
    }
    audit.close().await;
    let with = |paths: &[&Path]| VerifyOptions {
        anchors: vec![anchor.clone()],
        ..set(paths)
    };
    let report = verify_set(&with(&[&opts.path]), &KEY).unwrap();
    assert!(report.is_ok(), "{report}");

    // A local root with the key deletes log and head and writes a new,
    // self-consistent history: alone it verifies; the anchor catches it.
    std::fs::remove_file(&opts.path).unwrap();
    std::fs::remove_file(head_path(&opts.path)).unwrap();
    let audit = Audit::start(opts.clone()).unwrap();
    for i in 100..110 {
        audit.record(fetch(i)).await.unwrap();
    }
    audit.close().await;
    assert!(verify(&opts.path, &KEY).unwrap().is_ok());
    let report = verify_set(&with(&[&opts.path]), &KEY).unwrap();
    assert_eq!(report.problems.len(), 1, "{report}");
    assert_eq!(report.problems[0].kind, ProblemKind::AnchorMismatch, "{report}");

    // A shorter rewrite: the anchor is past its end.
    std::fs::remove_file(&opts.path).unwrap();
    std::fs::remove_file(head_path(&opts.path)).unwrap();
    write_log(&opts, 2).await;
    let report = verify_set(&with(&[&opts.path]), &KEY).unwrap();
    assert_eq!(report.problems[0].kind, ProblemKind::CutTail, "{report}");
}

#[tokio::test]
async fn a_reopen_uses_the_empty_file_logrotate_created_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let opts = opts(dir.path(), Durability::Fsync);
    let audit = Audit::start(opts.clone()).unwrap();
    audit.record(fetch(0)).await.unwrap();
    let moved = dir.path().join("audit.jsonl-20261207");
    std::fs::rename(&opts.path, &moved).unwrap();
    // logrotate `create 0600`: a new empty file at the path.
    std::fs::write(&opts.path, b"").unwrap();
    audit.request_reopen();
    audit.record(fetch(1)).await.unwrap();
    audit.close().await;
    let live = lines(&opts.path);
    assert!(live[0].contains("\"outcome\":\"reopened\""), "{}", live[0]);
    assert_eq!(lines(&moved).len(), 1);
    let report = verify_set(&set(&[&moved, &opts.path]), &KEY).unwrap();
    assert!(report.is_ok(), "{report}");
}
