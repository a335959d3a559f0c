//! What `keyward audit verify` reports: every problem found, first bad
//! record first, and the summary a person reads.

use std::fmt;

/// Problems kept in a report; the rest are only counted.
const MAX_PROBLEMS: usize = 1000;

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
    /// Records are missing where one file ends and the next begins: a
    /// segment was removed or replaced.
    MissingSegment,
    /// The chain starts past seq 1 and retention does not explain it.
    MissingPrefix,
    /// The live file was truncated under the agent (logrotate
    /// copytruncate) and records were lost.
    CopyTruncate,
    /// An anchor names a record the log has with another hash, or lacks.
    AnchorMismatch,
}

/// One thing wrong with the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyProblem {
    /// The file, when several were checked.
    pub file: Option<String>,
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
        if let Some(file) = &self.file {
            write!(f, "{file} ")?;
        }
        match (self.line, self.seq) {
            (0, Some(seq)) => write!(f, "seq {seq}: {}", self.message),
            (0, None) => write!(f, "head file: {}", self.message),
            (line, Some(seq)) => write!(f, "line {line} (seq {seq}): {}", self.message),
            (line, None) => write!(f, "line {line}: {}", self.message),
        }
    }
}

/// The result of [`verify`](crate::audit::verify()).
#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    /// Lines that parsed as records (whether or not they verified).
    pub records_checked: u64,
    /// The highest seq in the chain (0: no records).
    pub last_seq: u64,
    /// The seq the chain starts at (past 1 after retention).
    pub first_seq: u64,
    /// The files read, in order.
    pub files: Vec<std::path::PathBuf>,
    /// The file problems are being found in (several files only).
    pub(super) current_file: Option<String>,
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

    pub(super) fn problem(&mut self, line: usize, seq: Option<u64>, kind: ProblemKind, message: String) {
        if self.problems.len() < MAX_PROBLEMS {
            let file = if line == 0 { None } else { self.current_file.clone() };
            self.problems.push(VerifyProblem {
                file,
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
            if self.files.len() > 1 {
                writeln!(
                    f,
                    "{} files, seqs {}..{}",
                    self.files.len(),
                    self.first_seq,
                    self.last_seq
                )?;
            }
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
