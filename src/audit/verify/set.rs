//! Which files `verify` reads, in which order: each path given, after the
//! sealed segments beside it (`<path>.<first>-<last>`), so that the live
//! file's path alone verifies every retained segment; several paths (a file
//! logrotate moved away, then the live one) are read in the order given.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::continuity::Files;
use super::{check_file, read_head, Checker, VerifyReport};
use crate::audit::anchor::{install_id, AnchorCheck, AnchorHead};
use crate::audit::error::AuditError;
use crate::audit::head::head_path;
use crate::audit::segments::list_segments;

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
    let mut files = Vec::new();
    for path in &opts.paths {
        let segments = list_segments(path).unwrap_or_default();
        files.extend(segments.into_iter().map(|s| s.path));
        if path.exists() || files.is_empty() {
            files.push(path.clone());
        }
    }
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
    report.files = files;
    Ok(report)
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
