//! Which files `verify` reads, in which order: each path given, after the
//! sealed segments beside it (`<path>.<first>-<last>`), so that the live
//! file's path alone verifies every retained segment; several paths (a file
//! logrotate moved away, then the live one) are read with their segments
//! in chain order, by the seq each file starts at.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::continuity::Files;
use super::{check_file, read_head, Checker, VerifyReport};
use crate::audit::anchor::{install_id, AnchorCheck, AnchorHead};
use crate::audit::error::AuditError;
use crate::audit::head::head_path;
use crate::audit::segments::{first_record_seq, list_segments, FIRST_WINDOW};

/// What [`verify_set`] checks.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// The files, oldest first; each preceded by its sealed segments. The
    /// head file is the last path's.
    pub paths: Vec<PathBuf>,
    /// Anchors kept outside the host: each must be in the log.
    pub anchors: Vec<AnchorHead>,
    /// Records missing before the first file are a note, not a problem.
    pub allow_prefix: bool,
}

/// Checks every file `opts` names as one chain. `Err` only if a file
/// cannot be read.
pub fn verify_set(opts: &VerifyOptions, key: &[u8; 32]) -> Result<VerifyReport, AuditError> {
    // Each file with the seq its chain starts at: a segment's from its
    // name, a given file's from its first record (one with none keeps its
    // place after the file before it).
    let mut keyed: Vec<(u64, PathBuf)> = Vec::new();
    for path in &opts.paths {
        let segments = list_segments(path).unwrap_or_default();
        keyed.extend(segments.into_iter().map(|s| (s.first, s.path)));
        if path.exists() || keyed.is_empty() {
            let before = keyed.last().map_or(0, |(seq, _)| *seq);
            keyed.push((first_seq(path).unwrap_or(before), path.clone()));
        }
    }
    // Chain order: a file logrotate moved away comes between the segments
    // sealed before it and those sealed after the reopen.
    keyed.sort_by_key(|(seq, _)| *seq);
    let mut files: Vec<PathBuf> = keyed.into_iter().map(|(_, path)| path).collect();
    files.dedup();
    let last = opts.paths.last().cloned().unwrap_or_default();
    let head = read_head(&head_path(&last), key);
    let continuity = Files {
        multi: files.len() > 1,
        anchors: AnchorCheck::new(&opts.anchors, &install_id(key)),
        allow_prefix: opts.allow_prefix,
        ..Files::default()
    };
    let mut checker = Checker::new(key, head, continuity);
    let mut lines = 0;
    for file in &files {
        checker.start_file(display_name(file));
        lines = check_file(file, &mut checker)?;
    }
    let mut report = checker.finish(lines);
    for path in opts.paths.iter().filter(|p| !p.exists() && !files.contains(p)) {
        report.notes.push(format!(
            "{} does not exist: only the segments sealed beside it were checked (records written after the last of them are not)",
            path.display()
        ));
    }
    report.files = files;
    Ok(report)
}

/// The seq of the first record in the file at `path`.
fn first_seq(path: &Path) -> Option<u64> {
    let mut start = Vec::new();
    File::open(path).ok()?.take(FIRST_WINDOW).read_to_end(&mut start).ok()?;
    first_record_seq(&start)
}

fn display_name(path: &Path) -> String {
    path.file_name()
        .map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// Reads an anchors file (JSON lines) for `--anchors`.
pub fn read_anchors(path: &Path) -> Result<Vec<AnchorHead>, String> {
    let mut text = String::new();
    File::open(path)
        .and_then(|f| f.take(256 << 20).read_to_string(&mut text))
        .map_err(|e| format!("cannot read the anchors file {}: {e}", path.display()))?;
    crate::audit::anchor::parse_anchors(&text).map_err(|e| format!("{}: {e}", path.display()))
}
/// Checks the log at `path`, every sealed segment beside it (in chain
/// order, before it) and its head file (`<path>.head`, if present) under
/// the install's audit `key`. `Err` only if a file cannot be read;
/// everything wrong with their content is in the report.
pub fn verify(path: &Path, key: &[u8; 32]) -> Result<VerifyReport, AuditError> {
    verify_set(
        &VerifyOptions {
            paths: vec![path.to_path_buf()],
            ..VerifyOptions::default()
        },
        key,
    )
}
