//! Writer tests: restart, torn tails, failed writes and the head file, against real logs in a temp dir.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::super::tests::{all_lines, fetch, fill_to_a_seal, lines, opts, tear, write_lines, write_log, KEY};
use super::super::{verify, Audit, ProblemKind};
use super::*;
use crate::audit::segments::list_segments;
use crate::audit::Durability;

#[tokio::test]
async fn chain_continues_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    let opts = opts(dir.path(), Durability::Fsync);
    assert_eq!(write_log(&opts, 3).await, [1, 2, 3]);
    assert_eq!(write_log(&opts, 2).await, [4, 5]);

    let report = verify(&opts.path, &KEY).unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!((report.records_checked, report.last_seq), (5, 5));
    assert!(report.notes.is_empty(), "{report}");
    let mode = std::fs::metadata(&opts.path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let mode = std::fs::metadata(head_path(&opts.path)).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn torn_tail_is_kept_marked_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let opts = opts(dir.path(), Durability::Fsync);
    write_log(&opts, 3).await;
    let before = std::fs::read(&opts.path).unwrap();
    let fragment = b"{\"time\":\"2025-01-02T03:04:05.000000Z\",\"seq\":4,\"ev";
    let mut torn = before.clone();
    torn.extend_from_slice(fragment);
    std::fs::write(&opts.path, &torn).unwrap();

    let audit = Audit::start(opts.clone()).unwrap();
    // The recovery record took seq 4.
    assert_eq!(audit.status().sequence, 4);
    assert_eq!(audit.record(fetch(9)).await.unwrap(), 5);
    audit.close().await;

    // Nothing was deleted: the fragment is still there, on its own line.
    let after = std::fs::read(&opts.path).unwrap();
    assert!(after.starts_with(&torn));
    assert_eq!(after[torn.len()], b'\n');
    let lines = lines(&opts.path);
    assert!(lines[4].contains("\"event\":\"audit_recovered\""), "{}", lines[4]);
    assert!(lines[4].contains("\"outcome\":\"torn_tail\""), "{}", lines[4]);
    let detail = torn_detail(before.len() as u64, fragment.len() as u64);
    assert!(lines[4].contains(&detail), "{}", lines[4]);

    let report = verify(&opts.path, &KEY).unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.last_seq, 5);
    assert_eq!(report.notes.len(), 1, "{report}");
    assert!(report.notes[0].starts_with("line 4: a torn fragment"), "{report}");
}

#[tokio::test]
async fn torn_tail_from_a_crash_during_recovery_verifies() {
    // A crash during the recovery write itself: the fragment got its
    // `\n`, then the recovery record was torn too.
    let dir = tempfile::tempdir().unwrap();
    let opts = opts(dir.path(), Durability::Fsync);
    write_log(&opts, 2).await;
    let good = std::fs::read(&opts.path).unwrap();
    let mut torn = good.clone();
    torn.extend_from_slice(b"{\"time\":\"2025\n{\"time\":\"2025-01-02T03:04:05");
    std::fs::write(&opts.path, &torn).unwrap();
    write_log(&opts, 1).await;

    let report = verify(&opts.path, &KEY).unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.last_seq, 4);
    assert!(report.notes[0].starts_with("lines 3-4: a torn fragment"), "{report}");
}

#[tokio::test]
async fn verify_notes_an_unmarked_torn_tail_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let opts = opts(dir.path(), Durability::Fsync);
    write_log(&opts, 2).await;
    tear(&opts.path);
    let report = verify(&opts.path, &KEY).unwrap();
    assert!(report.is_ok(), "{report}");
    assert!(report.notes[0].contains("will mark it"), "{report}");
}

#[tokio::test]
async fn a_whole_record_without_its_newline_is_kept_in_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let opts = opts(dir.path(), Durability::Fsync);
    write_log(&opts, 3).await;
    let mut bytes = std::fs::read(&opts.path).unwrap();
    bytes.pop();
    std::fs::write(&opts.path, &bytes).unwrap();
    assert_eq!(write_log(&opts, 1).await, [4]);
    let report = verify(&opts.path, &KEY).unwrap();
    assert!(report.is_ok() && report.notes.is_empty(), "{report}");
    assert_eq!(report.records_checked, 4);
}

#[tokio::test]
async fn a_tail_cut_while_stopped_is_recorded_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let opts = opts(dir.path(), Durability::Fsync);
    write_log(&opts, 5).await;
    let kept = lines(&opts.path)[..3].to_vec();
    write_lines(&opts.path, &kept);
    // The agent restarts and moves the head on; the evidence stays in
    // the log.
    assert_eq!(write_log(&opts, 1).await, [5]);
    let report = verify(&opts.path, &KEY).unwrap();
    assert_eq!(report.problems.len(), 1, "{report}");
    let p = &report.problems[0];
    assert_eq!((p.kind, p.line, p.seq), (ProblemKind::CutTail, 4, Some(4)));
    assert!(p.message.contains("records 4..5 are missing"), "{report}");
}

#[tokio::test]
async fn start_refuses_a_symlink_and_a_wrong_key() {
    let dir = tempfile::tempdir().unwrap();
    let opts = opts(dir.path(), Durability::Fsync);
    write_log(&opts, 1).await;

    let link = dir.path().join("link.jsonl");
    std::os::unix::fs::symlink(&opts.path, &link).unwrap();
    let err = Audit::start(AuditOptions {
        path: link,
        ..opts.clone()
    })
    .err()
    .unwrap();
    assert!(err.to_string().contains("symbolic link"), "{err}");

    let err = Audit::start(AuditOptions {
        key: [8; 32],
        ..opts.clone()
    })
    .err()
    .unwrap();
    assert!(err.to_string().contains("audit key"), "{err}");
}

/// A log file whose writes (and cut-backs) can be made to fail, as on a
/// full disk: a failing append writes half the buffer first. So can the
/// link and the rename of its seal.
struct Flaky {
    file: File,
    faults: Arc<Faults>,
}

/// What a [`Flaky`] file fails.
#[derive(Default)]
struct Faults {
    append: Fail,
    truncate: Fail,
    link: Fail,
    rename: Fail,
}

/// How many of the next calls fail ([`Fail::ALWAYS`]: every one).
#[derive(Default)]
struct Fail(AtomicUsize);

impl Fail {
    const ALWAYS: usize = usize::MAX;

    fn set(&self, calls: usize) {
        self.0.store(calls, Ordering::SeqCst);
    }

    /// Whether this call fails.
    fn now(&self) -> bool {
        self.0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| match n {
                0 => None,
                Fail::ALWAYS => Some(Fail::ALWAYS),
                n => Some(n - 1),
            })
            .is_ok()
    }
}

impl LogFile for Flaky {
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.faults.append.now() {
            self.file.append(&buf[..buf.len() / 2])?;
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.file.append(buf)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.file.sync()
    }
    fn len(&self) -> io::Result<u64> {
        LogFile::len(&self.file)
    }
    fn truncate(&mut self, len: u64) -> io::Result<()> {
        if self.faults.truncate.now() {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.file.truncate(len)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        LogFile::read_at(&self.file, buf, offset)
    }
    fn try_clone(&self) -> io::Result<Box<dyn LogFile>> {
        LogFile::try_clone(&self.file)
    }
    fn link_as(&self, path: &Path, name: &Path) -> io::Result<()> {
        if self.faults.link.now() {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.file.link_as(path, name)
    }
    fn replace_with(&self, next: &Path, path: &Path) -> io::Result<()> {
        if self.faults.rename.now() {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.file.replace_with(next, path)
    }
}

fn start_flaky(opts: &AuditOptions) -> (Audit, Arc<Faults>) {
    let faults = Arc::new(Faults::default());
    let shared = Arc::clone(&faults);
    let audit = Audit::start_with(opts.clone(), move |file| {
        Box::new(Flaky {
            file,
            faults: Arc::clone(&shared),
        })
    })
    .unwrap();
    (audit, faults)
}

#[tokio::test]
async fn a_failed_write_is_refused_cut_back_and_retried() {
    for durability in [Durability::Fsync, Durability::Write] {
        let dir = tempfile::tempdir().unwrap();
        let opts = opts(dir.path(), durability);
        let (audit, faults) = start_flaky(&opts);
        let fail_append = &faults.append;
        assert_eq!(audit.record(fetch(1)).await.unwrap(), 1);
        let len = std::fs::metadata(&opts.path).unwrap().len();

        fail_append.set(Fail::ALWAYS);
        let err = audit.record(fetch(2)).await.unwrap_err();
        match &err {
            AuditError::Io { source, .. } => {
                assert_eq!(source.raw_os_error(), Some(libc::ENOSPC))
            }
            other => panic!("{other}"),
        }
        let status = audit.status();
        assert_eq!(status.sequence, 1);
        assert!(status.error.unwrap().contains("No space left"));
        // The half-written record was cut back off.
        assert_eq!(std::fs::metadata(&opts.path).unwrap().len(), len);

        fail_append.set(0);
        assert_eq!(audit.record(fetch(3)).await.unwrap(), 2);
        assert_eq!(audit.status().error, None);
        audit.close().await;
        let report = verify(&opts.path, &KEY).unwrap();
        assert!(report.is_ok() && report.notes.is_empty(), "{report}");
        assert_eq!(report.last_seq, 2);
    }
}

/// What the agent's health service follows: `writable()` turns false
/// with the failed write, before its caller has its error back, and true
/// with the next good write; a follower is woken each time.
#[tokio::test]
async fn writable_follows_a_failed_write_and_the_next_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let opts = opts(dir.path(), Durability::Fsync);
    let (audit, faults) = start_flaky(&opts);
    let fail_append = &faults.append;
    let mut writable = audit.writable();
    assert!(*writable.borrow_and_update());
    audit.record(fetch(1)).await.unwrap();
    assert!(!writable.has_changed().unwrap(), "a good write changes nothing");

    fail_append.set(Fail::ALWAYS);
    audit.record(fetch(2)).await.unwrap_err();
    assert!(writable.has_changed().unwrap());
    assert!(!*writable.borrow_and_update());
    audit.record(fetch(3)).await.unwrap_err();
    assert!(!writable.has_changed().unwrap(), "still failing: no news");

    fail_append.set(0);
    audit.record(fetch(4)).await.unwrap();
    assert!(writable.has_changed().unwrap());
    assert!(*writable.borrow_and_update());
    assert_eq!(audit.status().error, None);
    audit.close().await;
}

#[tokio::test]
async fn nothing_is_written_after_a_half_record_until_it_is_cut_back() {
    let dir = tempfile::tempdir().unwrap();
    let opts = opts(dir.path(), Durability::Fsync);
    let (audit, faults) = start_flaky(&opts);
    let (fail_append, fail_truncate) = (&faults.append, &faults.truncate);
    audit.record(fetch(1)).await.unwrap();
    let len = std::fs::metadata(&opts.path).unwrap().len();

    fail_append.set(Fail::ALWAYS);
    fail_truncate.set(Fail::ALWAYS);
    audit.record(fetch(2)).await.unwrap_err();
    let dirty = std::fs::metadata(&opts.path).unwrap().len();
    assert!(dirty > len);
    // Writes work again, but the half record cannot be cut back yet.
    fail_append.set(0);
    audit.record(fetch(3)).await.unwrap_err();
    assert_eq!(std::fs::metadata(&opts.path).unwrap().len(), dirty);
    assert!(audit.status().error.is_some());

    fail_truncate.set(0);
    assert_eq!(audit.record(fetch(4)).await.unwrap(), 2);
    audit.close().await;
    let report = verify(&opts.path, &KEY).unwrap();
    assert!(report.is_ok() && report.notes.is_empty(), "{report}");
}

/// In a directory others may write, another user could rename the live
/// file away, plant the next one (`audit.jsonl.new`) or remove segments:
/// the log does not start there, and says what to run.
#[test]
fn a_log_in_a_directory_others_can_write_does_not_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let opts = opts(&shared, Durability::Write);
    let err = Audit::start(opts.clone()).err().expect("refused").to_string();
    assert!(
        err.contains("writable by its group or others") && err.contains("chmod go-w"),
        "{err}"
    );
    assert!(!opts.path.exists(), "nothing was created there");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o700)).unwrap();
    let audit = Audit::start(opts).unwrap();
    drop(audit);
}

#[tokio::test]
async fn nothing_is_written_after_a_half_seal_record_until_it_is_cut_back() {
    for durability in [Durability::Fsync, Durability::Write] {
        let dir = tempfile::tempdir().unwrap();
        let opts = AuditOptions {
            segment_size: 1024,
            ..opts(dir.path(), durability)
        };
        let (audit, faults) = start_flaky(&opts);
        let (fail_append, fail_truncate) = (&faults.append, &faults.truncate);
        let mut answered = fill_to_a_seal(&audit, &opts).await;
        // The next batch seals the file first: its seal record is cut short
        // (disk full) and cannot be cut back off (EIO), so the batch must
        // not go after it.
        fail_append.set(1);
        fail_truncate.set(1);
        audit.record(fetch(100)).await.unwrap_err();
        assert!(audit.status().error.is_some());
        // The next batch cuts the half record off, seals, and goes on.
        answered.push(audit.record(fetch(101)).await.unwrap());
        answered.push(audit.record(fetch(102)).await.unwrap());
        audit.close().await;

        verifies_with(&opts, &answered, &format!("{durability:?}"));
    }
}

/// The log at `opts` verifies, and holds every record in `answered`.
fn verifies_with(opts: &AuditOptions, answered: &[u64], what: &str) {
    let report = verify(&opts.path, &KEY).unwrap();
    assert!(report.is_ok(), "{what}: {report}");
    let seqs: Vec<u64> = all_lines(&opts.path)
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    for seq in answered {
        assert!(
            seqs.contains(seq),
            "{what}: record {seq} was answered but is not in the log"
        );
    }
}

/// A seal whose record is written but whose link, or rename, then fails:
/// nothing is written after the seal record (the batch is refused), the
/// next batch finishes the seal, every segment ends with its seal record,
/// each file has one segment name, and the log verifies.
#[tokio::test]
async fn a_seal_that_cannot_be_finished_is_finished_before_anything_follows_its_record() {
    for (step, durability) in [("link", Durability::Fsync), ("rename", Durability::Write)] {
        let dir = tempfile::tempdir().unwrap();
        let opts = AuditOptions {
            segment_size: 1024,
            ..opts(dir.path(), durability)
        };
        let (audit, faults) = start_flaky(&opts);
        let mut answered = fill_to_a_seal(&audit, &opts).await;
        if step == "link" {
            faults.link.set(1);
        } else {
            faults.rename.set(1);
        }
        let refused = audit.record(fetch(100)).await.unwrap_err().to_string();
        assert!(
            refused.contains("seal record") && refused.contains("Input/output error"),
            "{step}: {refused}"
        );
        assert!(audit.status().error.is_some(), "{step}");
        let live = lines(&opts.path);
        assert!(
            live.last().unwrap().contains("\"event\":\"audit_segment_sealed\""),
            "{step}: nothing after the seal record"
        );
        for i in 101..110 {
            answered.push(audit.record(fetch(i)).await.unwrap());
        }
        audit.close().await;

        let segments = list_segments(&opts.path).unwrap();
        assert!(segments.len() >= 2, "{step}: {segments:?}");
        for pair in segments.windows(2) {
            assert_eq!(
                pair[0].last + 1,
                pair[1].first,
                "{step}: one name per file: {segments:?}"
            );
        }
        for seg in &segments {
            let sealed = lines(&seg.path);
            let last = sealed.last().unwrap();
            assert!(last.contains("\"event\":\"audit_segment_sealed\""), "{step}: {last}");
            assert!(last.contains(&format!("\"seq\":{}", seg.last)), "{step}: {last}");
        }
        verifies_with(&opts, &answered, step);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_gives_1000_concurrent_records_distinct_seqs() {
    for durability in [Durability::Fsync, Durability::Write] {
        let dir = tempfile::tempdir().unwrap();
        let opts = opts(dir.path(), durability);
        let audit = Audit::start(opts.clone()).unwrap();
        let tasks: Vec<_> = (0..1000)
            .map(|i| {
                let audit = audit.clone();
                tokio::spawn(async move { audit.record(fetch(i)).await.unwrap() })
            })
            .collect();
        let mut seqs = Vec::new();
        for t in tasks {
            seqs.push(t.await.unwrap());
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=1000).collect::<Vec<u64>>());
        audit.close().await;
        let report = verify(&opts.path, &KEY).unwrap();
        assert!(report.is_ok(), "{report}");
        assert_eq!((report.records_checked, report.last_seq), (1000, 1000));
    }
}

#[tokio::test]
async fn close_writes_what_is_queued_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let opts = opts(dir.path(), Durability::Write);
    let audit = Audit::start(opts.clone()).unwrap();
    let pending: Vec<_> = (0..50)
        .map(|i| {
            let audit = audit.clone();
            tokio::spawn(async move { audit.record(fetch(i)).await })
        })
        .collect();
    tokio::task::yield_now().await;
    let (a, b) = (audit.clone(), audit.clone());
    tokio::join!(a.close(), b.close());
    audit.close().await;
    // Every record got an answer: written, or refused as closed.
    let mut written = 0;
    for t in pending {
        match t.await.unwrap() {
            Ok(_) => written += 1,
            Err(AuditError::Closed) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert!(matches!(audit.record(fetch(99)).await, Err(AuditError::Closed)));
    assert_eq!(audit.status().sequence, written);
    // The head file names the last record.
    let report = verify(&opts.path, &KEY).unwrap();
    assert!(report.is_ok() && report.notes.is_empty(), "{report}");
    assert_eq!(report.last_seq, written);
}

#[test]
fn works_without_a_runtime_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let opts = opts(dir.path(), Durability::Fsync);
    let audit = Audit::start(opts.clone()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        assert_eq!(audit.record(fetch(1)).await.unwrap(), 1);
        audit.close().await;
    });
    assert!(verify(&opts.path, &KEY).unwrap().is_ok());
}

#[tokio::test]
async fn write_mode_syncs_and_moves_the_head_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let opts = opts(dir.path(), Durability::Write);
    let audit = Audit::start(opts.clone()).unwrap();
    for i in 0..3 {
        audit.record(fetch(i)).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let bytes = std::fs::read(head_path(&opts.path)).unwrap();
        let head = super::super::head::decode_head(&KEY, &bytes).unwrap();
        if head.is_some_and(|h| h.seq == 3) {
            break;
        }
        assert!(Instant::now() < deadline, "the head never reached seq 3");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        audit.status().head,
        lines(&opts.path)[2][lines(&opts.path)[2].len() - 66..][..64]
    );
    audit.close().await;
}
