//! Verifier tests: each kind of damage is found and named, and an honest
//! log (torn tail, coalesced records) verifies.

use super::super::tests::{lines, opts, write_lines, write_log, KEY};
use super::super::Durability;
use super::set::verify;
use super::*;
use crate::audit::head::head_path;
use crate::audit::{AuditEvent, Event, Outcome};

/// A closed log of five records in a fresh directory.
async fn five_records() -> (tempfile::TempDir, std::path::PathBuf, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let opts = opts(dir.path(), Durability::Fsync);
    write_log(&opts, 5).await;
    let lines = lines(&opts.path);
    assert_eq!(lines.len(), 5);
    (dir, opts.path, lines)
}

fn only_problem(report: &VerifyReport) -> &VerifyProblem {
    assert_eq!(report.problems.len(), 1, "{report}");
    assert!(!report.is_ok());
    &report.problems[0]
}

#[tokio::test]
async fn an_edited_record_is_detected() {
    let (_dir, path, mut lines) = five_records().await;
    lines[2] = lines[2].replace("\"outcome\":\"ok\"", "\"outcome\":\"denied\"");
    write_lines(&path, &lines);
    let report = verify(&path, &KEY).unwrap();
    let p = only_problem(&report);
    assert_eq!((p.kind, p.line, p.seq), (ProblemKind::Edited, 3, Some(3)));
}

#[tokio::test]
async fn a_removed_record_is_detected() {
    let (_dir, path, mut lines) = five_records().await;
    lines.remove(2);
    write_lines(&path, &lines);
    let report = verify(&path, &KEY).unwrap();
    let p = only_problem(&report);
    assert_eq!((p.kind, p.line, p.seq), (ProblemKind::Missing, 3, Some(4)));
    assert!(p.message.contains("record 3 is missing"), "{report}");
}

#[tokio::test]
async fn swapped_records_are_detected() {
    let (_dir, path, mut lines) = five_records().await;
    lines.swap(1, 2);
    write_lines(&path, &lines);
    let report = verify(&path, &KEY).unwrap();
    let p = only_problem(&report);
    assert_eq!((p.kind, p.line, p.seq), (ProblemKind::Reordered, 3, Some(2)));
    assert!(p.message.contains("belongs before line 2"), "{report}");
}

#[tokio::test]
async fn a_cut_tail_is_detected_by_the_head() {
    let (_dir, path, lines) = five_records().await;
    write_lines(&path, &lines[..3]);
    let report = verify(&path, &KEY).unwrap();
    let p = only_problem(&report);
    assert_eq!((p.kind, p.line, p.seq), (ProblemKind::CutTail, 4, Some(4)));
    assert!(p.message.contains("records 4..5 are missing from the end"), "{report}");
    assert_eq!(report.last_seq, 3);
}

#[tokio::test]
async fn a_corrupt_head_is_detected() {
    let (_dir, path, _) = five_records().await;
    let head = head_path(&path);
    let text = std::fs::read_to_string(&head).unwrap();
    std::fs::write(&head, text.replace("\"seq\":5", "\"seq\":9")).unwrap();
    let report = verify(&path, &KEY).unwrap();
    let p = only_problem(&report);
    assert_eq!((p.kind, p.line, p.seq), (ProblemKind::HeadInvalid, 0, None));
    assert!(report.to_string().contains("head file: "), "{report}");
}

#[tokio::test]
async fn a_head_naming_another_record_is_detected() {
    let (dir, path, _) = five_records().await;
    // A head from another log under the same key.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let mut other_opts = opts(&other, Durability::Fsync);
    write_log(&other_opts, 5).await;
    other_opts.path = head_path(&other_opts.path);
    std::fs::copy(&other_opts.path, head_path(&path)).unwrap();
    let report = verify(&path, &KEY).unwrap();
    let p = only_problem(&report);
    assert_eq!((p.kind, p.seq), (ProblemKind::HeadMismatch, Some(5)));
}

#[tokio::test]
async fn malformed_lines_are_detected() {
    let (_dir, path, mut lines) = five_records().await;
    lines[1] = "not json at all".into();
    lines[3] = format!("{{\"time\":\"2025-01-02T03:04:05.000000Z\",\"seq\":4,\"prev\":\"{ZERO_HASH}\"}}");
    write_lines(&path, &lines);
    let report = verify(&path, &KEY).unwrap();
    let found: Vec<_> = report.problems.iter().map(|p| (p.kind, p.line)).collect();
    assert_eq!(
        found,
        [
            (ProblemKind::Malformed, 2),
            (ProblemKind::Missing, 3),
            (ProblemKind::Malformed, 4),
            (ProblemKind::Missing, 5),
        ],
        "{report}"
    );
    assert!(report.problems[0].message.contains("not valid JSON"), "{report}");
    assert!(report.problems[2].message.contains("missing field"), "{report}");
}

#[tokio::test]
async fn a_wrong_key_fails_every_record_and_says_so() {
    let (_dir, path, _) = five_records().await;
    let report = verify(&path, &[8; 32]).unwrap();
    assert_eq!(report.records_checked, 5);
    assert!(report.problems.iter().any(|p| p.kind == ProblemKind::Edited));
    assert!(report.notes.iter().any(|n| n.contains("right install key")), "{report}");
}

#[tokio::test]
async fn the_report_shows_the_first_bad_record_first() {
    let (_dir, path, mut lines) = five_records().await;
    lines[3] = lines[3].replace("\"outcome\":\"ok\"", "\"outcome\":\"denied\"");
    lines.remove(1);
    write_lines(&path, &lines[..3]);
    std::fs::remove_file(head_path(&path)).unwrap();
    let report = verify(&path, &KEY).unwrap();
    let text = report.to_string();
    assert!(
        text.starts_with("audit log FAILED: 3 records checked, last seq 4, 2 problems\nfirst bad: line 2 (seq 3): record 2 is missing"),
        "{text}"
    );
    assert!(text.contains("note: there is no head file"), "{text}");
}

#[tokio::test]
async fn a_good_log_reports_ok() {
    let (_dir, path, _) = five_records().await;
    let report = verify(&path, &KEY).unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.to_string(), "audit log OK: 5 records, last seq 5\n");
}

/// A refusal as the agent records it, coalesced when `count` is set.
fn refusal(key: Option<&str>, count: Option<u64>, distinct_keys: Option<u64>) -> super::super::AuditEvent {
    let t0 = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_750_000_000);
    super::super::AuditEvent {
        caller: super::super::tests::fetch(0).caller,
        key: key.map(str::to_owned),
        detail: Some("uid 1001 may not read prod/billing-api: add a [[grant]]".into()),
        coalesced: count.map(|count| super::super::Coalesced {
            count,
            first: t0,
            last: t0 + std::time::Duration::from_millis(3_250),
            distinct_keys,
        }),
        ..AuditEvent::new(Event::Fetch, Outcome::Denied)
    }
}

#[tokio::test]
async fn a_log_with_coalesced_records_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let opts = opts(dir.path(), Durability::Fsync);
    let audit = super::super::Audit::start(opts.clone()).unwrap();
    audit.record(super::super::tests::fetch(1)).await.unwrap();
    audit
        .record(refusal(Some("prod/billing-api"), None, None))
        .await
        .unwrap();
    audit
        .record(refusal(Some("prod/billing-api"), Some(39_999), None))
        .await
        .unwrap();
    audit.record(refusal(None, Some(250), Some(100))).await.unwrap();
    audit.record(super::super::tests::fetch(2)).await.unwrap();
    audit.close().await;

    let report = verify(&opts.path, &KEY).unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.to_string(), "audit log OK: 5 records, last seq 5\n");
    let lines = lines(&opts.path);
    let keyed: serde_json::Value = serde_json::from_str(&lines[2]).unwrap();
    assert_eq!(keyed["count"], 39_999);
    assert_eq!(keyed["first"], "2025-06-15T15:06:40.000000Z");
    assert_eq!(keyed["last"], "2025-06-15T15:06:43.250000Z");
    assert!(keyed.get("distinct_keys").is_none(), "{keyed}");
    let folded: serde_json::Value = serde_json::from_str(&lines[3]).unwrap();
    assert_eq!(
        (folded["count"].as_u64(), folded["distinct_keys"].as_u64()),
        (Some(250), Some(100))
    );
    assert!(folded.get("key").is_none(), "{folded}");
    // A plain refusal carries none of the coalesced fields.
    for field in ["count", "first", "last", "distinct_keys"] {
        assert!(!lines[1].contains(&format!("\"{field}\"")), "{field} in {}", lines[1]);
    }

    // Edited counts are caught like any other edit.
    let mut edited = lines.clone();
    edited[2] = edited[2].replace("\"count\":39999", "\"count\":3");
    write_lines(&opts.path, &edited);
    let report = verify(&opts.path, &KEY).unwrap();
    let p = only_problem(&report);
    assert_eq!((p.kind, p.line, p.seq), (ProblemKind::Edited, 3, Some(3)));
}

#[tokio::test]
async fn a_coalesced_record_with_inconsistent_fields_is_malformed() {
    let dir = tempfile::tempdir().unwrap();
    let opts = opts(dir.path(), Durability::Fsync);
    let audit = super::super::Audit::start(opts.clone()).unwrap();
    let mut zero = refusal(Some("prod/a"), Some(0), None);
    audit.record(zero.clone()).await.unwrap();
    if let Some(c) = zero.coalesced.as_mut() {
        c.count = 5;
        std::mem::swap(&mut c.first, &mut c.last);
    }
    audit.record(zero).await.unwrap();
    audit.record(refusal(Some("prod/a"), None, None)).await.unwrap();
    audit.close().await;
    // The writer MACs what it is given; the verifier still refuses
    // coalesced fields that do not make sense (seq 3 is fine).
    let mut lines = lines(&opts.path);
    let report = verify(&opts.path, &KEY).unwrap();
    let found: Vec<_> = report.problems.iter().map(|p| (p.kind, p.line)).collect();
    assert_eq!(
        found[..2],
        [(ProblemKind::Malformed, 1), (ProblemKind::Malformed, 2)],
        "{report}"
    );
    assert!(report.problems[0].message.contains("count is 0"), "{report}");
    assert!(report.problems[1].message.contains("is after last"), "{report}");
    // count without first and last.
    lines[2] = lines[2].replacen("\"outcome\":\"denied\"", "\"outcome\":\"denied\",\"count\":2", 1);
    write_lines(&opts.path, &lines);
    let report = verify(&opts.path, &KEY).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.line == 3 && p.message.contains("count, first and last together")),
        "{report}"
    );
}

#[test]
fn a_missing_log_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = verify(&dir.path().join("nope.jsonl"), &KEY).unwrap_err();
    assert!(matches!(err, AuditError::Io { .. }), "{err}");
}
