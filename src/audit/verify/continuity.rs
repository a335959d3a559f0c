//! The chain across files: where one file ends and the next begins, a
//! prefix deleted by retention, a file truncated under the agent
//! (copytruncate), and the anchors kept outside the host.
//!
//! A seq gap where a file begins is a missing *segment* (its range is
//! named); one explained by an `audit_segment_opened`/`truncated` record is
//! copytruncate's loss; a chain that starts past seq 1 is accepted only if
//! an `audit_segment_deleted` record names the segment just before it,
//! with the hash the first retained record chains to.

use std::collections::HashMap;

use super::{Checker, ProblemKind};
use crate::audit::anchor::{AnchorCheck, AnchorFinding};
use crate::audit::kind::{Event, Outcome};
use crate::audit::line::CheckedLine;
use crate::audit::segments::parse_deleted;

/// What the checker keeps about files and anchors.
#[derive(Default)]
pub(super) struct Files {
    /// More than one file is checked: problems name theirs.
    pub(super) multi: bool,
    /// The name of the file being read, and of the one before.
    pub(super) current: String,
    pub(super) previous: String,
    /// The next record is the first of its file.
    pub(super) at_file_start: bool,
    /// The chain starts past seq 1: (seq, its prev, line, file, truncated).
    pub(super) prefix: Option<(u64, String, usize, String, bool)>,
    /// Segments deleted by retention: last seq → last hash.
    pub(super) deleted: HashMap<u64, String>,
    /// Seqs of `truncated` records not yet explained as a loss.
    pub(super) truncations: Vec<u64>,
    /// The anchors to check.
    pub(super) anchors: AnchorCheck,
    /// A prefix removed by hand is a note, not a problem.
    pub(super) allow_prefix: bool,
}

impl Checker<'_> {
    /// The next lines are those of file `name`.
    pub(super) fn start_file(&mut self, name: String) {
        self.files.previous = std::mem::replace(&mut self.files.current, name);
        self.files.at_file_start = true;
        self.report.current_file = self.files.multi.then(|| self.files.current.clone());
    }

    /// Places a record that starts the chain or a file past the next seq;
    /// true if it did (the caller then moves the chain's tip to it).
    pub(super) fn crossing(&mut self, no: usize, rec: &CheckedLine) -> bool {
        let first_in_file = std::mem::take(&mut self.files.at_file_start);
        let truncated =
            rec.mac_ok && rec.event == Event::AuditSegmentOpened.as_str() && rec.outcome == Outcome::Truncated.as_str();
        if rec.mac_ok {
            self.files.anchors.observe(rec.seq, &rec.hash);
            if rec.event == Event::AuditSegmentDeleted.as_str() && rec.outcome == Outcome::Ok.as_str() {
                if let Some((_, last, hash)) = rec.detail.as_deref().and_then(parse_deleted) {
                    self.files.deleted.insert(last, hash);
                }
            }
            if truncated {
                self.files.truncations.push(rec.seq);
            }
        }
        if self.report.records_checked == 1 && self.last_seq == 0 {
            self.report.first_seq = rec.seq;
            if rec.seq > 1 {
                let file = self.files.current.clone();
                self.files.prefix = Some((rec.seq, rec.prev.clone(), no, file, truncated));
                return true;
            }
            return false;
        }
        if !first_in_file || rec.seq <= self.last_seq.saturating_add(1) {
            return false;
        }
        let (from, to) = (self.last_seq + 1, rec.seq - 1);
        if truncated {
            self.files.truncations.retain(|&s| s != rec.seq);
            self.report.problem(
                no,
                Some(rec.seq),
                ProblemKind::CopyTruncate,
                format!(
                    "records {from}..{to} are in neither {} nor {}: the live file was truncated under the agent (logrotate copytruncate, which is not supported) and they were written between its copy and its truncation; use logrotate's `create` mode with SIGHUP",
                    self.files.previous, self.files.current
                ),
            );
        } else {
            self.report.problem(
                no,
                Some(rec.seq),
                ProblemKind::MissingSegment,
                format!(
                    "records {from}..{to} are missing between {} and {}: a segment holding them was removed or replaced (tampering, unless the file was left out of the command)",
                    self.files.previous, self.files.current
                ),
            );
        }
        true
    }

    /// Judges the start of the chain, copytruncate notes and the anchors.
    pub(super) fn finish_files(&mut self) {
        self.report.current_file = None;
        if let Some((seq, prev, line, file, truncated)) = self.files.prefix.take() {
            let explained = self.files.deleted.get(&(seq - 1)) == Some(&prev);
            let note_file = if self.files.multi {
                format!("{file} ")
            } else {
                String::new()
            };
            if explained {
                self.report.notes.push(format!(
                    "records 1..{} were deleted by [audit] retain (audit_segment_deleted records name them); the retained chain starts at seq {seq} and verifies from there",
                    seq - 1
                ));
            } else if truncated {
                self.files.truncations.retain(|&s| s != seq);
                self.report.problem(
                    line,
                    Some(seq),
                    ProblemKind::CopyTruncate,
                    format!("{note_file}starts after the live file was truncated under the agent (logrotate copytruncate, which is not supported): records 1..{} are not here; pass the copy first (keyward audit verify COPY LIVE)", seq - 1),
                );
            } else if self.files.allow_prefix {
                self.report.notes.push(format!(
                    "records 1..{} are not in these files (--allow-prefix): the chain is verified from seq {seq}",
                    seq - 1
                ));
            } else {
                self.report.problem(
                    line,
                    Some(seq),
                    ProblemKind::MissingPrefix,
                    format!(
                        "{note_file}records 1..{} are missing from the start, and no audit_segment_deleted record says [audit] retain deleted them: the oldest file was removed or the log replaced (if you removed old files yourself, e.g. logrotate's rotate count, pass them or --allow-prefix)",
                        seq - 1
                    ),
                );
            }
        }
        for seq in std::mem::take(&mut self.files.truncations) {
            self.report.notes.push(format!(
                "seq {seq}: the live file was truncated under the agent (logrotate copytruncate, which is not supported); no record is missing around it in these files"
            ));
        }
        let (first, last) = (self.report.first_seq, self.last_seq);
        for finding in std::mem::take(&mut self.files.anchors).finish(first, last) {
            match finding {
                AnchorFinding::Rewritten { seq, anchored, found } => self.report.problem(
                    0,
                    Some(seq),
                    ProblemKind::AnchorMismatch,
                    match found {
                        Some(found) => format!("an anchor says record {seq} had hash {anchored}, the log's has {found}: the history was rewritten"),
                        None => format!("an anchor says record {seq} had hash {anchored}, and the log has no valid record {seq}: the history was rewritten"),
                    },
                ),
                AnchorFinding::BeyondEnd { seq, last } => self.report.problem(
                    0,
                    Some(seq),
                    ProblemKind::CutTail,
                    format!("an anchor names record {seq}, past the log's last record {last}: records {}..{seq} were cut off the end", last + 1),
                ),
                AnchorFinding::BeforeStart { seq } => self.report.notes.push(format!(
                    "the anchor of record {seq} is before the retained records; it cannot be checked"
                )),
                AnchorFinding::OtherInstall { seq, install_id } => self.report.notes.push(format!(
                    "the anchor of record {seq} is of another install ({install_id}); it was not checked"
                )),
            }
        }
    }
}
