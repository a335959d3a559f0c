//! The offline verifier behind `keyward audit verify`: reads the log line
//! by line and checks every MAC, the seq/prev chain and the head file.
//!
//! It trusts nothing in the file: a line is only a record if its MAC
//! verifies under the install key. It never stops at the first problem, so
//! one report shows everything, first bad record first. It keeps only a few
//! small values per line it cannot place yet (gaps in the seq, runs of
//! unparseable lines), so a long log is checked in constant memory.

use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use super::{
    check_line, decode_head, head_path, torn_detail, AuditError, Head, LineError, EVENT_RECOVERED,
    OUTCOME_HEAD_INVALID, OUTCOME_HEAD_MISMATCH, OUTCOME_MISSING_TAIL, OUTCOME_TORN, ZERO_HASH,
};

/// Longest line the verifier reads whole; a longer one is malformed.
const MAX_LINE: usize = 16 << 20;
/// Problems kept in a report; the rest are only counted.
const MAX_PROBLEMS: usize = 1000;
/// Unparseable lines held while waiting to see whether an
/// `audit_recovered` record marks them as a torn fragment.
const MAX_PENDING: usize = 10_000;

/// What kind of damage a [`VerifyProblem`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    /// The record's hash does not match its bytes: it was edited (or the key
    /// is wrong).
    Edited,
    /// Records are missing here (a seq gap), or `prev` does not name the
    /// record before.
    Missing,
    /// A record appears after records with higher seqs.
    Reordered,
    /// A seq appears twice.
    Duplicate,
    /// The line is not valid JSON, or lacks a field a record must have.
    Malformed,
    /// Records are missing from the end of the log (the head file, or the
    /// agent at start, saw more).
    CutTail,
    /// The head file names a record the log has with another hash.
    HeadMismatch,
    /// The head file is unreadable or its MAC is wrong.
    HeadInvalid,
}

/// One thing wrong with the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyProblem {
    /// 1-based line in the log; 0 for a problem with the head file itself.
    pub line: usize,
    /// The seq of the record on that line, if known.
    pub seq: Option<u64>,
    /// What kind of problem.
    pub kind: ProblemKind,
    /// What is wrong, for a human.
    pub message: String,
}

impl fmt::Display for VerifyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.seq) {
            (0, _) => write!(f, "head file: {}", self.message),
            (line, Some(seq)) => write!(f, "line {line} (seq {seq}): {}", self.message),
            (line, None) => write!(f, "line {line}: {}", self.message),
        }
    }
}

/// The result of [`verify`].
#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    /// Lines that parsed as records (whether or not they verified).
    pub records_checked: u64,
    /// The highest seq in the chain (0: no records).
    pub last_seq: u64,
    /// Everything wrong, by line (head file problems last); at most 1000.
    pub problems: Vec<VerifyProblem>,
    /// Problems found beyond those in `problems`.
    pub problems_omitted: u64,
    /// Things worth knowing that are not failures (a marked torn fragment,
    /// no head file).
    pub notes: Vec<String>,
}

impl VerifyReport {
    /// True if nothing is wrong (notes aside).
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty() && self.problems_omitted == 0
    }

    fn problem(&mut self, line: usize, seq: Option<u64>, kind: ProblemKind, message: String) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(VerifyProblem {
                line,
                seq,
                kind,
                message,
            });
        } else {
            self.problems_omitted += 1;
        }
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.problems.len() as u64 + self.problems_omitted;
        if total == 0 {
            writeln!(
                f,
                "audit log OK: {} records, last seq {}",
                self.records_checked, self.last_seq
            )?;
        } else {
            writeln!(
                f,
                "audit log FAILED: {} records checked, last seq {}, {} problem{}",
                self.records_checked,
                self.last_seq,
                total,
                if total == 1 { "" } else { "s" }
            )?;
            if let Some(first) = self.problems.first() {
                writeln!(f, "first bad: {first}")?;
            }
            if total > 1 {
                writeln!(f, "all problems:")?;
                for p in &self.problems {
                    writeln!(f, "  {p}")?;
                }
                if self.problems_omitted > 0 {
                    writeln!(f, "  … and {} more", self.problems_omitted)?;
                }
            }
        }
        for note in &self.notes {
            writeln!(f, "note: {note}")?;
        }
        Ok(())
    }
}

/// Checks the log at `path` and its head file (`<path>.head`, if present)
/// under the install's audit `key`. `Err` only if the log cannot be read;
/// everything wrong with its content is in the report.
pub fn verify(path: &Path, key: &[u8; 32]) -> Result<VerifyReport, AuditError> {
    let io_err = |e| AuditError::io(path, e);
    let head = read_head(&head_path(path), key);
    let mut reader = BufReader::with_capacity(1 << 16, File::open(path).map_err(io_err)?);
    let mut checker = Checker::new(key, head);
    let mut buf = Vec::new();
    let mut offset = 0;
    let mut no = 0;
    loop {
        let line = read_line(&mut reader, &mut buf).map_err(io_err)?;
        if line.consumed == 0 {
            break;
        }
        no += 1;
        checker.line(no, offset, &buf, &line);
        offset += line.consumed;
    }
    Ok(checker.finish(no))
}

/// What the head file holds.
enum HeadState {
    Absent(String),
    Empty,
    Invalid(String),
    Valid(Head),
}

fn read_head(path: &Path, key: &[u8; 32]) -> HeadState {
    let mut bytes = Vec::new();
    let read = File::open(path).and_then(|f| f.take(64 * 1024).read_to_end(&mut bytes));
    match read {
        Err(e) if e.kind() == io::ErrorKind::NotFound => HeadState::Absent(format!(
            "there is no head file {}: a tail cut off the log cannot be detected",
            path.display()
        )),
        Err(e) => HeadState::Invalid(format!("cannot read {}: {e}", path.display())),
        Ok(_) => match decode_head(key, &bytes) {
            Ok(None) => HeadState::Empty,
            Ok(Some(head)) => HeadState::Valid(head),
            Err(message) => HeadState::Invalid(message),
        },
    }
}

/// How a line was read.
struct LineInfo {
    /// Bytes consumed, with the `\n`.
    consumed: u64,
    /// Ended by `\n` (only the last line of a file may not be).
    terminated: bool,
    /// Longer than [`MAX_LINE`]; `buf` holds its start only.
    too_long: bool,
}

/// Reads one line into `buf` (without its `\n`), keeping at most
/// [`MAX_LINE`] bytes of it.
fn read_line(r: &mut impl BufRead, buf: &mut Vec<u8>) -> io::Result<LineInfo> {
    buf.clear();
    let mut info = LineInfo {
        consumed: 0,
        terminated: false,
        too_long: false,
    };
    while !info.terminated {
        let avail = match r.fill_buf() {
            Ok(avail) => avail,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            break;
        }
        let (take, keep) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => {
                info.terminated = true;
                (i + 1, i)
            }
            None => (avail.len(), avail.len()),
        };
        let room = MAX_LINE - buf.len();
        info.too_long |= keep > room;
        buf.extend_from_slice(&avail[..keep.min(room)]);
        info.consumed += take as u64;
        r.consume(take);
    }
    Ok(info)
}

/// A seq gap: records `from..=to` were not where they belong (before
/// `line`). Reordered records found later fill it in.
struct Gap {
    from: u64,
    to: u64,
    line: usize,
    seq: u64,
}

/// A line that is not a record, waiting to learn whether it is part of a
/// marked torn fragment.
struct Pending {
    line: usize,
    offset: u64,
    message: String,
}

struct Checker<'k> {
    key: &'k [u8; 32],
    report: VerifyReport,
    last_seq: u64,
    last_hash: String,
    gaps: Vec<Gap>,
    pending: VecDeque<Pending>,
    last_terminated: bool,
    head: HeadState,
    /// The hash of the record the head file names, once seen.
    head_record_hash: Option<String>,
    edited: u64,
}

impl<'k> Checker<'k> {
    fn new(key: &'k [u8; 32], head: HeadState) -> Checker<'k> {
        Checker {
            key,
            report: VerifyReport::default(),
            last_seq: 0,
            last_hash: ZERO_HASH.to_owned(),
            gaps: Vec::new(),
            pending: VecDeque::new(),
            last_terminated: true,
            head,
            head_record_hash: None,
            edited: 0,
        }
    }

    fn line(&mut self, no: usize, offset: u64, bytes: &[u8], info: &LineInfo) {
        self.last_terminated = info.terminated;
        let rec = if info.too_long {
            Err(format!("the line is longer than {MAX_LINE} bytes"))
        } else {
            check_line(self.key, bytes).map_err(|e| match e {
                LineError::NotJson(e) => format!("not valid JSON: {e}"),
                LineError::BadFields(e) => format!("not a valid audit record: {e}"),
            })
        };
        let rec = match rec {
            Ok(rec) => rec,
            Err(message) => {
                if self.pending.len() == MAX_PENDING {
                    let p = self.pending.pop_front().expect("full");
                    self.report.problem(p.line, None, ProblemKind::Malformed, p.message);
                }
                self.pending.push_back(Pending {
                    line: no,
                    offset,
                    message,
                });
                return;
            }
        };
        if rec.event == EVENT_RECOVERED && rec.outcome == OUTCOME_TORN {
            if self.marks_pending(offset, rec.detail.as_deref()) {
                let first = &self.pending[0];
                let lines = match self.pending.len() {
                    1 => format!("line {}", first.line),
                    n => format!("lines {}-{}", first.line, first.line + n - 1),
                };
                self.report.notes.push(format!(
                    "{lines}: a torn fragment of {} bytes at byte offset {} (a write cut short by a crash), marked by the audit_recovered record at line {no}; it is not a record and nothing is missing",
                    offset - 1 - first.offset,
                    first.offset
                ));
                self.pending.clear();
            } else {
                self.flush_pending();
                self.report.problem(
                    no,
                    Some(rec.seq),
                    ProblemKind::Missing,
                    format!(
                        "this audit_recovered record names a torn fragment ({}) that is not the line before it: the log was edited around it",
                        rec.detail.as_deref().unwrap_or("no detail")
                    ),
                );
            }
        } else {
            self.flush_pending();
        }
        self.record(no, rec);
    }

    /// Whether an `audit_recovered`/`torn_tail` record at `offset` marks
    /// exactly the pending lines (they end with the `\n` just before it).
    fn marks_pending(&self, offset: u64, detail: Option<&str>) -> bool {
        match (self.pending.front(), detail) {
            (Some(first), Some(detail)) => detail == torn_detail(first.offset, offset - 1 - first.offset),
            _ => false,
        }
    }

    fn flush_pending(&mut self) {
        for p in self.pending.drain(..) {
            self.report.problem(p.line, None, ProblemKind::Malformed, p.message);
        }
    }

    fn record(&mut self, no: usize, rec: super::CheckedLine) {
        let seq = rec.seq;
        self.report.records_checked += 1;
        if !rec.mac_ok {
            self.edited += 1;
            self.report.problem(
                no,
                Some(seq),
                ProblemKind::Edited,
                "the record was edited: its hash does not match its contents".into(),
            );
        }
        let expected = self.last_seq.saturating_add(1);
        if seq == expected {
            if rec.prev != self.last_hash {
                let before = match self.last_seq {
                    0 => "the start of the chain (64 zeros)".to_owned(),
                    n => format!("the hash of record {n} before it"),
                };
                self.report.problem(
                    no,
                    Some(seq),
                    ProblemKind::Missing,
                    format!("prev is not {before}: records were removed or replaced here"),
                );
            }
            self.advance(&rec);
        } else if seq > expected {
            self.gaps.push(Gap {
                from: expected,
                to: seq - 1,
                line: no,
                seq,
            });
            self.advance(&rec);
        } else if let Some(i) = self.gaps.iter().position(|g| (g.from..=g.to).contains(&seq)) {
            let gap = &self.gaps[i];
            let message = format!(
                "seq {seq} is out of order: it comes after seq {}, but belongs before line {}: records were reordered",
                self.last_seq, gap.line
            );
            // Fill the hole in the gap.
            let (from, to, line, gap_seq) = (gap.from, gap.to, gap.line, gap.seq);
            self.gaps.remove(i);
            for (from, to) in [(from, seq - 1), (seq + 1, to)] {
                if from <= to {
                    self.gaps.push(Gap {
                        from,
                        to,
                        line,
                        seq: gap_seq,
                    });
                }
            }
            self.report.problem(no, Some(seq), ProblemKind::Reordered, message);
        } else {
            self.report.problem(
                no,
                Some(seq),
                ProblemKind::Duplicate,
                format!(
                    "seq {seq} appears again after seq {}: a duplicated or replayed record",
                    self.last_seq
                ),
            );
        }
        if let HeadState::Valid(head) = &self.head {
            if head.seq == seq && self.head_record_hash.is_none() {
                self.head_record_hash = Some(rec.hash.clone());
            }
        }
        if rec.event == EVENT_RECOVERED {
            let kind = match rec.outcome.as_str() {
                OUTCOME_MISSING_TAIL => Some(ProblemKind::CutTail),
                OUTCOME_HEAD_MISMATCH => Some(ProblemKind::HeadMismatch),
                OUTCOME_HEAD_INVALID => Some(ProblemKind::HeadInvalid),
                _ => None,
            };
            if let Some(kind) = kind {
                self.report.problem(
                    no,
                    Some(seq),
                    kind,
                    format!(
                        "when the agent started, it found that {}",
                        rec.detail.as_deref().unwrap_or("the head file did not match the log")
                    ),
                );
            }
        }
    }

    fn advance(&mut self, rec: &super::CheckedLine) {
        self.last_seq = rec.seq;
        self.last_hash.clone_from(&rec.hash);
    }

    fn finish(mut self, lines: usize) -> VerifyReport {
        if !self.pending.is_empty() {
            if self.last_terminated {
                self.flush_pending();
            } else {
                // A crash cut the last write short; the agent marks it
                // when it next starts.
                let first = &self.pending[0];
                self.report.notes.push(format!(
                    "line {}: the log ends with a torn fragment at byte offset {} (a write cut short by a crash); the agent will mark it when it next starts",
                    first.line, first.offset
                ));
            }
        }
        for gap in std::mem::take(&mut self.gaps) {
            let what = if gap.from == gap.to {
                format!("record {} is", gap.from)
            } else {
                format!("records {}..{} are", gap.from, gap.to)
            };
            self.report.problem(
                gap.line,
                Some(gap.seq),
                ProblemKind::Missing,
                format!("{what} missing before this line: removed from the log"),
            );
        }
        match std::mem::replace(&mut self.head, HeadState::Empty) {
            HeadState::Absent(note) => self.report.notes.push(note),
            HeadState::Empty => self.report.notes.push(
                "the head file is empty: a tail cut off the log cannot be detected".into(),
            ),
            HeadState::Invalid(message) => {
                self.report
                    .problem(0, None, ProblemKind::HeadInvalid, message)
            }
            HeadState::Valid(head) if head.seq > self.last_seq => self.report.problem(
                lines + 1,
                Some(self.last_seq + 1),
                ProblemKind::CutTail,
                format!(
                    "records {}..{} are missing from the end of the log: the head file says it reached seq {}, the log ends at seq {}",
                    self.last_seq + 1,
                    head.seq,
                    head.seq,
                    self.last_seq
                ),
            ),
            HeadState::Valid(head) => {
                if let Some(hash) = &self.head_record_hash {
                    if *hash != head.hash {
                        self.report.problem(
                            0,
                            Some(head.seq),
                            ProblemKind::HeadMismatch,
                            format!(
                                "the head file names record {} with hash {}, but the log's record {} has hash {}: the log was replaced from there on",
                                head.seq, head.hash, head.seq, hash
                            ),
                        );
                    }
                }
            }
        }
        if self.edited > 1 && self.edited == self.report.records_checked {
            self.report
                .notes
                .push("no record verified: is this the right install key (the agent's install.key)?".into());
        }
        self.report.last_seq = self.last_seq;
        self.report.problems.sort_by_key(|p| (p.line == 0, p.line));
        self.report
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{lines, opts, write_lines, write_log, KEY};
    use super::super::Durability;
    use super::*;

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
            event: "fetch",
            caller: super::super::tests::fetch(0).caller,
            key: key.map(str::to_owned),
            outcome: "denied",
            detail: Some("uid 1001 may not read prod/billing-api: add a [[grant]]".into()),
            coalesced: count.map(|count| super::super::Coalesced {
                count,
                first: t0,
                last: t0 + std::time::Duration::from_millis(3_250),
                distinct_keys,
            }),
            ..Default::default()
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
}
