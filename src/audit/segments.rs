//! Sealed segments: how they are named, found and chosen for deletion, and
//! the details of the records that seal, open and delete them.
//!
//! The live file `audit.jsonl` is sealed by renaming it to
//! `audit.jsonl.<first seq>-<last seq>`, both as 16 digits, so that a
//! directory listing sorts segments in chain order and a name says which
//! records it holds. Tailers that follow renames (Vector, Fluent Bit)
//! finish reading the sealed file by its inode and pick up the new live
//! file by its path.
//!
//! Invariants: retention only ever deletes a *prefix* of the sealed
//! segments (the oldest ones), never one in the middle, so what is left is
//! always a contiguous chain; and the records these details go into are the
//! only place the verifier learns why a prefix is missing.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

pub use crate::config::audit::Retain;

/// Digits of each seq in a segment's name.
const DIGITS: usize = 16;

/// One sealed segment found beside the live file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Its path.
    pub path: PathBuf,
    /// The seq of its first record.
    pub first: u64,
    /// The seq of its last record (its seal).
    pub last: u64,
    /// When it was last written (sealed).
    pub modified: SystemTime,
}

/// The name a segment of the live file `live` holding seqs `first..=last`
/// is sealed as: `audit.jsonl.0000000000000001-0000000000004242`.
pub fn segment_path(live: &Path, first: u64, last: u64) -> PathBuf {
    let mut s = live.as_os_str().to_owned();
    s.push(format!(".{first:0DIGITS$}-{last:0DIGITS$}"));
    PathBuf::from(s)
}

/// The seq range in a sealed segment's file name, if `name` is one of the
/// live file `live_name`'s segments.
pub fn parse_segment_name(live_name: &str, name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix(live_name)?.strip_prefix('.')?;
    let (first, last) = rest.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(first) || !digits(last) {
        return None;
    }
    let (first, last) = (first.parse().ok()?, last.parse().ok()?);
    (first <= last).then_some((first, last))
}

/// The directory of the live file `live` (`.` for a bare file name): where
/// its head, its segments and the next live file are.
pub(super) fn log_dir(live: &Path) -> &Path {
    match live.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// The sealed segments of the live file `live`, in chain order (by first
/// seq). A directory that cannot be read gives an error; entries that
/// vanish while listed are skipped.
pub fn list_segments(live: &Path) -> std::io::Result<Vec<Segment>> {
    let dir = log_dir(live);
    let Some(live_name) = live.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some((first, last)) = name.to_str().and_then(|n| parse_segment_name(live_name, n)) else {
            continue;
        };
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        found.push(Segment {
            path: dir.join(&name),
            first,
            last,
            modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        });
    }
    found.sort_by_key(|s| (s.first, s.last));
    Ok(found)
}

/// How many of `segments` (in chain order) `retain` deletes at `now`: always
/// the oldest ones. By count, all but the newest `n`; by age, the oldest
/// while they were sealed more than the age ago (a younger one stops it, so
/// no hole is ever made in the middle).
pub fn expired(segments: &[Segment], retain: Retain, now: SystemTime) -> usize {
    match retain {
        Retain::Count(n) => segments.len().saturating_sub(n),
        Retain::Age(age) => segments
            .iter()
            .take_while(|s| now.duration_since(s.modified).unwrap_or(Duration::ZERO) > age)
            .count(),
    }
}

/// Detail of the `audit_segment_sealed` record, the last of a segment.
pub(super) fn sealed_detail(first: u64, last: u64, sealed: &Path) -> String {
    format!("seqs {first}..{last} sealed as {}", file_name(sealed))
}

/// Detail of the `audit_segment_opened` record that starts a new live file
/// after a roll.
pub(super) fn opened_detail(first: u64, last: u64, hash: &str, sealed: &Path) -> String {
    format!(
        "seqs {first}..{last} (last hash {hash}) are in {}; this file continues the chain",
        file_name(sealed)
    )
}

/// Detail of the `audit_segment_deleted` record of a segment deleted by
/// retention. The verifier reads the range and hash back
/// ([`parse_deleted`]).
pub(super) fn deleted_detail(first: u64, last: u64, hash: &str, path: &Path, retain: Retain) -> String {
    let retain = match retain {
        Retain::Count(n) => format!("{n}"),
        Retain::Age(d) => format!("\"{}\"", humantime::format_duration(d)),
    };
    format!(
        "seqs {first}..{last} (last hash {hash}) deleted with {} by [audit] retain = {retain}",
        file_name(path)
    )
}

/// The seq range and last hash an `audit_segment_deleted` record names.
pub(super) fn parse_deleted(detail: &str) -> Option<(u64, u64, String)> {
    let rest = detail.strip_prefix("seqs ")?;
    let (first, rest) = rest.split_once("..")?;
    let (last, rest) = rest.split_once(" (last hash ")?;
    let (hash, _) = rest.split_once(')')?;
    Some((first.parse().ok()?, last.parse().ok()?, hash.to_owned()))
}

/// How much of a log file's start [`first_record_seq`] is given: a first
/// record is far shorter.
pub(super) const FIRST_WINDOW: u64 = 64 * 1024;

/// The seq of the first record among the lines of `start`, a log file's
/// first bytes (its MAC is checked when the file is read in order, not
/// here).
pub(super) fn first_record_seq(start: &[u8]) -> Option<u64> {
    start
        .split(|&b| b == b'\n')
        .find_map(|line| super::line::check_line(&[0; 32], line).ok())
        .map(|rec| rec.seq)
}

/// The last non-empty line of `file` (within its last 1 MiB).
pub(super) fn last_line(file: &std::fs::File) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata()?.len();
    let window = len.min(1 << 20);
    let mut buf = vec![0; window as usize];
    file.read_exact_at(&mut buf, len - window)?;
    let trimmed = buf.trim_ascii_end();
    let start = trimmed.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    Ok(trimmed[start..].to_vec())
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// A segment deleted by retention.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deleted {
    /// Where it was.
    pub path: PathBuf,
    /// Its seq range.
    pub first: u64,
    /// Its last seq.
    pub last: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(first: u64, last: u64, age_secs: u64, now: SystemTime) -> Segment {
        Segment {
            path: segment_path(Path::new("/l/audit.jsonl"), first, last),
            first,
            last,
            modified: now - Duration::from_secs(age_secs),
        }
    }

    #[test]
    fn segment_names_sort_in_chain_order_and_parse_back() {
        let live = Path::new("/var/log/keyward/audit.jsonl");
        let a = segment_path(live, 1, 99);
        let b = segment_path(live, 100, 1_000_000);
        assert_eq!(
            a,
            Path::new("/var/log/keyward/audit.jsonl.0000000000000001-0000000000000099")
        );
        assert!(a.as_os_str() < b.as_os_str(), "lexical order is chain order");
        let name = b.file_name().unwrap().to_str().unwrap();
        assert_eq!(parse_segment_name("audit.jsonl", name), Some((100, 1_000_000)));
        for other in [
            "audit.jsonl",
            "audit.jsonl.head",
            "audit.jsonl.1",
            "audit.jsonl.12-",
            "audit.jsonl.5-3",
            "audit.jsonl.new",
            "audit.jsonlx.1-2",
            "other.jsonl.1-2",
        ] {
            assert_eq!(parse_segment_name("audit.jsonl", other), None, "{other}");
        }
    }

    #[test]
    fn segments_are_listed_in_chain_order_skipping_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("audit.jsonl");
        for (f, l) in [(101, 200), (1, 100), (201, 9_999_999_999)] {
            std::fs::write(segment_path(&live, f, l), "x").unwrap();
        }
        for other in ["audit.jsonl", "audit.jsonl.head", "audit.jsonl.1", "audit.jsonl.new"] {
            std::fs::write(dir.path().join(other), "x").unwrap();
        }
        let found: Vec<_> = list_segments(&live)
            .unwrap()
            .iter()
            .map(|s| (s.first, s.last))
            .collect();
        assert_eq!(found, [(1, 100), (101, 200), (201, 9_999_999_999)]);
    }

    #[test]
    fn retention_by_count_keeps_the_newest() {
        let now = SystemTime::now();
        let segs: Vec<_> = (0..5).map(|i| seg(i * 10 + 1, i * 10 + 10, 0, now)).collect();
        assert_eq!(expired(&segs, Retain::Count(3), now), 2);
        assert_eq!(expired(&segs, Retain::Count(5), now), 0);
        assert_eq!(expired(&segs, Retain::Count(9), now), 0);
        assert_eq!(expired(&[], Retain::Count(1), now), 0);
    }

    #[test]
    fn retention_by_age_deletes_only_an_old_prefix() {
        let now = SystemTime::now();
        let day = 86_400;
        // The third is young, the fourth old again (its mtime was touched
        // back): only the first two go, never a hole in the middle.
        let segs = [
            seg(1, 10, 10 * day, now),
            seg(11, 20, 9 * day, now),
            seg(21, 30, day, now),
            seg(31, 40, 10 * day, now),
        ];
        assert_eq!(expired(&segs, Retain::Age(Duration::from_secs(7 * day)), now), 2);
        assert_eq!(expired(&segs, Retain::Age(Duration::from_secs(30 * day)), now), 0);
    }

    #[test]
    fn a_deletion_detail_reads_back() {
        let hash = "ab".repeat(32);
        let d = deleted_detail(1, 42, &hash, Path::new("/x/audit.jsonl.1-42"), Retain::Count(3));
        assert_eq!(parse_deleted(&d), Some((1, 42, hash.clone())));
        let d = deleted_detail(43, 50, &hash, Path::new("a"), Retain::Age(Duration::from_secs(86_400)));
        assert!(d.ends_with("retain = \"1day\""), "{d}");
        assert_eq!(parse_deleted(&d), Some((43, 50, hash)));
        assert_eq!(parse_deleted("something else"), None);
    }
}
