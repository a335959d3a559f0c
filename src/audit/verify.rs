//! The offline verifier behind `keyward audit verify`: reads the log line
//! by line and checks every MAC, the seq/prev chain and the head file.
//!
//! It trusts nothing in the file: a line is only a record if its MAC
//! verifies under the install key. It never stops at the first problem, so
//! one report shows everything, first bad record first. It keeps only a few
//! small values per line it cannot place yet (gaps in the seq, runs of
//! unparseable lines), so a long log is checked in constant memory.

mod continuity;
mod report;
pub mod set;

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use super::error::AuditError;
use super::head::{decode_head, Head};
use super::line::{
    check_line, torn_detail, CheckedLine, LineError, EVENT_RECOVERED, OUTCOME_HEAD_INVALID, OUTCOME_HEAD_MISMATCH,
    OUTCOME_MISSING_TAIL, OUTCOME_TORN, ZERO_HASH,
};
pub use report::{ProblemKind, VerifyProblem, VerifyReport};

/// Longest line the verifier reads whole; a longer one is malformed.
const MAX_LINE: usize = 16 << 20;
/// Unparseable lines held while waiting to see whether an
/// `audit_recovered` record marks them as a torn fragment.
const MAX_PENDING: usize = 10_000;

/// Feeds every line of the file at `path` to `checker`; returns how many
/// lines it had.
fn check_file(path: &Path, checker: &mut Checker<'_>) -> Result<usize, AuditError> {
    let io_err = |e| AuditError::io(path, e);
    let mut reader = BufReader::with_capacity(1 << 16, File::open(path).map_err(io_err)?);
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
    Ok(no)
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
    /// Where the chain crosses files, and the anchors (`continuity.rs`).
    files: continuity::Files,
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
    fn new(key: &'k [u8; 32], head: HeadState, files: continuity::Files) -> Checker<'k> {
        Checker {
            key,
            files,
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

    fn record(&mut self, no: usize, rec: CheckedLine) {
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
        if self.crossing(no, &rec) {
            self.advance(&rec);
        } else if seq == self.last_seq.saturating_add(1) {
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
        } else if seq > self.last_seq.saturating_add(1) {
            self.gaps.push(Gap {
                from: self.last_seq + 1,
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

    fn advance(&mut self, rec: &CheckedLine) {
        self.last_seq = rec.seq;
        self.last_hash.clone_from(&rec.hash);
    }

    fn finish(mut self, lines: usize) -> VerifyReport {
        self.finish_files();
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
        if self.files.multi {
            // Lines of different files: keep the order found (stable).
            self.report.problems.sort_by_key(|p| p.line == 0);
        } else {
            self.report.problems.sort_by_key(|p| (p.line == 0, p.line));
        }
        self.report
    }
}

#[cfg(test)]
mod tests;
