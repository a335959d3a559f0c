//! Finding where the chain stands at the end of the log: the last valid
//! record, and any torn fragment after it.

use std::io;

use super::log_file::LogFile;
use crate::audit::kind::Event;
use crate::audit::line::{check_line, CheckedLine, LineError, ZERO_HASH};

/// How much of the log's end `open` reads first to find the last record.
const TAIL_WINDOW: u64 = 64 * 1024;

/// Where the chain stands at the end of the log.
#[derive(Debug, PartialEq, Eq)]
pub(in crate::audit) struct Tail {
    /// Seq and hash of the last record (0 and zeros if none).
    pub seq: u64,
    pub hash: String,
    /// File length.
    pub len: u64,
    /// The file does not end in `\n`.
    pub needs_newline: bool,
    /// Bytes after the last record that are not records.
    pub torn: Option<Torn>,
    /// The last record seals the file: a roll was cut short by a crash
    /// before the rename.
    pub sealed: bool,
}

/// A torn fragment: `len` bytes at `offset`, not counting the `\n` that
/// ends it (there, or to be appended).
#[derive(Debug, PartialEq, Eq)]
pub(in crate::audit) struct Torn {
    pub offset: u64,
    pub len: u64,
}

/// Finds the last record at the end of the log, reading backwards from the
/// end (64 KiB first, more only if a record is longer).
///
/// Lines after the last record that are not JSON are a torn fragment: a
/// crash cut a write short (possibly twice, so it may span lines). A line
/// that is a record but fails its MAC stops the agent from starting: it
/// means a wrong install key or an edited log, and the chain cannot
/// honestly continue from it.
pub(in crate::audit) fn scan_tail(log: &dyn LogFile, key: &[u8; 32]) -> io::Result<Tail> {
    let len = log.len()?;
    let mut window = TAIL_WINDOW.min(len);
    loop {
        let start = len - window;
        let mut buf = vec![0; window as usize];
        log.read_at(&mut buf, start)?;
        match last_record(&buf, start, key)? {
            // The last record (or the torn run after it) begins before the
            // window: look further back.
            None => window = (window * 2).min(len),
            Some(last) => {
                let needs_newline = buf.last().is_some_and(|&b| b != b'\n');
                let (seq, hash, after, sealed) = match last {
                    Some((rec, line_end)) => (
                        rec.seq,
                        rec.hash,
                        (line_end + 1).min(len),
                        rec.event == Event::AuditSegmentSealed.as_str(),
                    ),
                    None => (0, ZERO_HASH.to_owned(), 0, false),
                };
                // Everything after the last record is torn; its length does
                // not count the `\n` that ends it (there, or to be added).
                let torn = (after < len).then(|| Torn {
                    offset: after,
                    len: len - after - u64::from(!needs_newline),
                });
                return Ok(Tail {
                    seq,
                    hash,
                    len,
                    needs_newline,
                    torn,
                    sealed,
                });
            }
        }
    }
}

/// Walks the lines of `buf` (the log from byte `start` to its end)
/// backwards to the last valid record. `Ok(None)`: the window is too short;
/// `Ok(Some(None))`: the log holds no record at all; `Ok(Some(Some((record,
/// offset one past its last byte))))`.
#[allow(clippy::type_complexity)]
fn last_record(buf: &[u8], start: u64, key: &[u8; 32]) -> io::Result<Option<Option<(CheckedLine, u64)>>> {
    // `end`: one past the current line's last byte.
    let mut end = match buf.last() {
        Some(b'\n') => buf.len() - 1,
        _ => buf.len(),
    };
    loop {
        let line_start = match buf[..end].iter().rposition(|&b| b == b'\n') {
            Some(i) => i + 1,
            None if start == 0 => 0,
            None => return Ok(None),
        };
        match check_line(key, &buf[line_start..end]) {
            Ok(rec) if rec.mac_ok => return Ok(Some(Some((rec, start + end as u64)))),
            Ok(rec) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the record at byte offset {} (seq {}) does not verify under this install's audit key: the key changed or the log was edited. Run `keyward audit verify`; to start a new log, move the file and its .head aside",
                        start + line_start as u64,
                        rec.seq
                    ),
                ));
            }
            Err(LineError::NotJson(_) | LineError::BadFields(_)) => {
                if line_start == 0 {
                    return Ok(Some(None));
                }
                end = line_start - 1;
            }
        }
    }
}
