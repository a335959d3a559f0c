//! The writer state: continues the chain from the log's tail at start,
//! appends batches for whichever caller is leading (see `commit.rs`), and
//! keeps the head file.
//!
//! Invariant: the log only ever grows by whole batches. A batch whose write
//! fails is cut back off (ftruncate to the length before it), its
//! callers all get an error, and the chain does not advance; if the cut
//! itself fails, nothing more is written until it succeeds, so a half
//! record is never followed by new ones.
//!
//! Sealing the live file into a segment, reopening it on SIGHUP and noticing
//! that it shrank are in `roll.rs`: each happens at the start of a batch,
//! in the leader, and costs a few metadata syscalls (no fsync: the sync
//! thread covers the old file).
//!
//! The writer never syncs on the commit path: the sync thread (`sync.rs`)
//! does, on its own handle of the live file (`SyncFiles`).

mod log_file;
mod roll;
mod tail;

pub(super) use log_file::LogFile;
use tail::scan_tail;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use super::head::{decode_head, head_path, HeadFile, HEAD_LEN};
use super::kind::{Event, Outcome};
use super::line::{encode_record, hash_str, hmac, torn_detail, AuditEvent, HashHex, HmacSha256, TimeText};
use super::segments::log_dir;
use super::{lock, AuditError, AuditOptions, AuditStatus, StatusCell};

/// Opens the log and its head, recovers the tail, and writes the notices
/// about what it found (and syncs) before any caller's record, so that a
/// `verify` right after start already sees them. A failure of that first
/// write is not fatal: the notices stay pending for the next batch, and
/// `status()` reports the error.
pub(super) fn open(
    opts: &AuditOptions,
    wrap: impl FnOnce(File) -> Box<dyn LogFile>,
    status: Arc<StatusCell>,
    signals: &super::Signals,
) -> Result<(Writer, Arc<Mutex<HeadFile>>), AuditError> {
    let path = opts.path.clone();
    let io_err = |e| AuditError::io(&path, e);
    check_dir(&path).map_err(io_err)?;
    let log = wrap(open_private(&path, true).map_err(io_err)?);
    let head_file = open_private(&head_path(&path), false).map_err(io_err)?;

    let mut tail = scan_tail(&*log, &opts.key).map_err(io_err)?;
    // An empty live file beside sealed segments: a crash between a seal's
    // rename and the first record of the new file. The chain goes on from
    // the seal, as it would have.
    let continued = match tail.len {
        0 => roll::newest_seal(&path, &opts.key).map_err(io_err)?,
        _ => None,
    };
    if let Some((_, seal)) = &continued {
        tracing::warn!(path = %path.display(), seq = seal.seq,
            "the live audit file is empty after a seal (a crash before its first record); continuing the chain from the sealed segment");
        tail.seq = seal.seq;
        tail.hash = seal.hash.clone();
    }
    let mut notices = Vec::new();
    if let Some(torn) = &tail.torn {
        tracing::warn!(path = %path.display(), offset = torn.offset, len = torn.len,
            "the audit log ends with a torn fragment (a crash during a write); keeping it and marking it");
        notices.push(notice(Outcome::TornTail, torn_detail(torn.offset, torn.len)));
    }
    let mut head_bytes = vec![0; HEAD_LEN];
    let head_read = read_prefix(&head_file, &mut head_bytes).map_err(io_err)?;
    let found = decode_head(&opts.key, &head_bytes[..head_read]);
    match &found {
        Ok(None) => {}
        Ok(Some(head)) if head.seq > tail.seq => notices.push(notice(
            Outcome::MissingTail,
            format!(
                "the head file says the log reached seq {} but it ends at seq {}: records {}..{} are missing from the end (if the log was moved away while the agent was stopped, they are in the moved file: check both in order with `keyward audit verify MOVED-FILE {}`; otherwise they were cut off)",
                head.seq,
                tail.seq,
                tail.seq + 1,
                head.seq,
                path.display()
            ),
        )),
        Ok(Some(head)) if head.seq == tail.seq && head.hash != tail.hash => notices.push(notice(
            Outcome::HeadMismatch,
            format!(
                "the head file names seq {} with hash {}, but the log's record {} has hash {}: the end of the log was replaced",
                head.seq, head.hash, tail.seq, tail.hash
            ),
        )),
        Ok(Some(_)) => {}
        Err(message) => notices.push(notice(Outcome::HeadInvalid, message.clone())),
    }
    for n in &notices[usize::from(tail.torn.is_some())..] {
        tracing::error!(path = %path.display(), detail = n.detail.as_deref().unwrap_or(""),
            "the audit log's head file does not match the log");
    }
    if let Some((segment, seal)) = continued {
        // The new file's first record, as the seal would have written it.
        notices.insert(
            0,
            roll::opened_notice(segment.first, seal.seq, &seal.hash, &segment.path),
        );
    }

    // While notices are pending, the head stays as found (it is evidence)
    // until a seq past the tail, i.e. past the notices, is durable.
    let (names, durable) = match found {
        _ if !notices.is_empty() => (Some(tail.seq), None),
        Ok(Some(head)) => (Some(head.seq), Some((head.seq, head.hash))),
        Ok(None) | Err(_) => (None, None),
    };
    let head = Arc::new(Mutex::new(HeadFile {
        file: head_file,
        key: opts.key,
        path: head_path(&path),
        names,
        durable,
    }));
    status.update(|s| {
        *s = AuditStatus {
            sequence: tail.seq,
            head: tail.hash.clone(),
            error: None,
        }
    });
    let mut hash = [0; 64];
    hash.copy_from_slice(tail.hash.as_bytes());
    let segment_first = roll::first_seq(&*log).map_err(io_err)?.unwrap_or(tail.seq + 1);
    let sync_files = Arc::new(Mutex::new(SyncFiles {
        current: log.try_clone().map_err(io_err)?,
        retired: Vec::new(),
    }));
    let mut writer = Writer {
        segments: roll::SegmentState {
            first: segment_first,
            started: Instant::now(),
            size: opts.segment_size,
            age: opts.segment_age,
            seal_pending: tail.sealed,
            retry_after: None,
        },
        reopen: Arc::clone(&signals.reopen),
        seals: Arc::clone(&signals.seals),
        sync_files,
        log,
        mac: hmac(&opts.key),
        path,
        seq: tail.seq,
        hash,
        len: tail.len,
        cut_back_pending: false,
        needs_newline: tail.needs_newline,
        notices,
        buf: Vec::new(),
        status,
        head: Arc::clone(&head),
    };
    if let Err(e) = writer.write_batch(std::iter::empty()) {
        writer.failed("write", &e, 0);
    } else {
        writer.sync_and_move_head();
    }
    Ok((writer, head))
}

/// Opens `path` for reading and writing (appending if `append`), creating
/// it 0600; refuses a symlink (O_NOFOLLOW) or anything but a regular file.
pub(super) fn open_private(path: &Path, append: bool) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true).create(true).mode(0o600);
    if append {
        o.append(true);
    } else {
        o.write(true);
    }
    let file = o
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                io::Error::new(
                    e.kind(),
                    format!(
                        "{} is a symbolic link; refusing to follow it (point the config at the real file)",
                        path.display()
                    ),
                )
            } else {
                e
            }
        })?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is not a regular file: move it away, and the agent creates the file",
                path.display()
            ),
        ));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} belongs to uid {}, who could edit or cut the audit log: run `chown {me} {}` if it is the agent's, or move it away",
                path.display(),
                meta.uid(),
                path.display()
            ),
        ));
    }
    if meta.permissions().mode() & 0o022 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is writable by its group or others (mode {:o}), who could edit or cut the audit log: run `chmod go-w {}`",
                path.display(),
                meta.permissions().mode() & 0o777,
                path.display()
            ),
        ));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(path = %path.display(), mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "audit file is readable by others; chmod 600 it");
    }
    Ok(file)
}

/// The log's directory: only the agent's user (or root) may add, replace
/// or remove files in it, where the live file, its head, its segments and
/// the next live file (`.new`) are created and renamed.
fn check_dir(path: &Path) -> io::Result<()> {
    let dir = log_dir(path);
    let meta = std::fs::metadata(dir)?;
    let me = nix::unistd::geteuid().as_raw();
    let problem = if meta.uid() != me && meta.uid() != 0 {
        format!("belongs to uid {}", meta.uid())
    } else if meta.mode() & 0o022 != 0 {
        format!("is writable by its group or others (mode {:o})", meta.mode() & 0o7777)
    } else {
        return Ok(());
    };
    Err(io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "the audit log's directory {} {problem}: another user could replace, cut or remove the log and its segments there; run `chown {me} {} && chmod go-w {}`, or set audit_file in a directory only the agent's user can write",
            dir.display(),
            dir.display(),
            dir.display()
        ),
    ))
}

/// Reads up to `buf.len()` bytes from the start of `file`.
fn read_prefix(file: &File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match FileExt::read_at(file, &mut buf[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn notice(outcome: Outcome, detail: String) -> AuditEvent {
    notice_of(Event::AuditRecovered, outcome, detail)
}

/// A record about the log itself.
fn notice_of(event: Event, outcome: Outcome, detail: String) -> AuditEvent {
    AuditEvent {
        detail: Some(detail),
        ..AuditEvent::new(event, outcome)
    }
}

/// The writer state: the log and the tip of its chain. Held by one leader
/// at a time (see `commit.rs`), never shared.
pub(super) struct Writer {
    log: Box<dyn LogFile>,
    /// HMAC-SHA256 keyed with the install's audit key, cloned per record.
    mac: HmacSha256,
    path: PathBuf,
    /// The chain's tip: seq and hash of the last record written.
    seq: u64,
    hash: HashHex,
    /// File length after the last good write.
    len: u64,
    /// A failed batch could not be cut back off yet.
    cut_back_pending: bool,
    /// The file ends in a torn fragment without its `\n`.
    needs_newline: bool,
    /// Records about the log itself, written before the next batch.
    notices: Vec<AuditEvent>,
    /// The batch being written, reused from one batch to the next.
    buf: Vec<u8>,
    status: Arc<StatusCell>,
    head: Arc<Mutex<HeadFile>>,
    /// The live file as a segment: when it is sealed.
    segments: roll::SegmentState,
    /// Set on SIGHUP: check whether the path still names the live file.
    reopen: Arc<AtomicBool>,
    /// Bumped after each seal (the anchor and retention tasks wait on it).
    seals: Arc<tokio::sync::watch::Sender<u64>>,
    /// The files the sync thread covers.
    sync_files: Arc<Mutex<SyncFiles>>,
}

/// The files the background sync of [`Durability::Write`] fdatasyncs: the
/// live one, and those sealed or moved away since its last round (their
/// last records are not durable yet).
pub(super) struct SyncFiles {
    pub(super) current: Box<dyn LogFile>,
    pub(super) retired: Vec<Box<dyn LogFile>>,
}

impl SyncFiles {
    /// fdatasyncs the files sealed or moved away since the last round, then
    /// their directory (for the seal's link and rename). On failure they
    /// stay, to be synced by the next round.
    pub(super) fn sync_retired(files: &Mutex<SyncFiles>, path: &Path) -> io::Result<()> {
        let mut retired = std::mem::take(&mut lock(files).retired);
        if retired.is_empty() {
            return Ok(());
        }
        let dir = log_dir(path);
        let synced = retired
            .iter_mut()
            .try_for_each(|f| f.sync())
            .and_then(|()| File::open(dir)?.sync_all());
        if synced.is_err() {
            lock(files).retired.append(&mut retired);
        }
        synced
    }
}

/// Most bytes the batch buffer keeps between batches.
const KEEP_BUF: usize = 1 << 20;

impl Writer {
    /// The files the sync thread covers.
    pub(super) fn sync_files(&self) -> Arc<Mutex<SyncFiles>> {
        Arc::clone(&self.sync_files)
    }

    /// The seq of the last record written.
    pub(super) fn seq(&self) -> u64 {
        self.seq
    }

    /// Appends pending notices and `events` as one write; returns the seq
    /// of the first of `events`. On failure, cuts the batch back off and
    /// leaves the chain where it was.
    pub(super) fn write_batch<'e>(&mut self, events: impl Iterator<Item = &'e AuditEvent>) -> io::Result<u64> {
        if self.cut_back_pending {
            self.log.truncate(self.len)?;
            self.cut_back_pending = false;
        }
        // One time for the batch: its records are committed together.
        let time = TimeText::new(SystemTime::now());
        self.before_batch(&time)?;
        if self.cut_back_pending {
            // A seal record was cut short and could not be cut back off:
            // nothing goes after it until it is (at the next batch).
            return Err(io::Error::other(
                "a segment seal record was cut short and could not be removed yet; the next record tries again",
            ));
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        if self.needs_newline {
            buf.push(b'\n');
        }
        let (mut seq, mut hash) = (self.seq, self.hash);
        for ev in &self.notices {
            seq += 1;
            hash = encode_record(&mut buf, &self.mac, seq, hash_str(&hash), ev, &time);
        }
        for ev in events {
            seq += 1;
            hash = encode_record(&mut buf, &self.mac, seq, hash_str(&hash), ev, &time);
        }
        let result = self.append(&buf);
        let written = buf.len() as u64;
        if buf.capacity() <= KEEP_BUF {
            self.buf = buf;
        }
        result?;
        if written == 0 {
            return Ok(seq + 1);
        }
        let first = self.seq + self.notices.len() as u64 + 1;
        self.len += written;
        self.seq = seq;
        self.hash = hash;
        self.needs_newline = false;
        self.notices.clear();
        self.status.update(|status| {
            status.sequence = self.seq;
            status.head.clear();
            status.head.push_str(hash_str(&self.hash));
            status.error = None;
        });
        Ok(first)
    }

    /// Appends `buf`; on failure
    /// cuts it back off, or remembers that it must be.
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let written = self.log.append(buf);
        if written.is_err() && self.log.truncate(self.len).is_err() {
            self.cut_back_pending = true;
        }
        written
    }

    /// fdatasyncs the log, then moves the head to the now durable tip.
    /// Failures are reported in the status.
    pub(super) fn sync_and_move_head(&mut self) -> bool {
        // Files sealed or moved away since the sync thread's last round
        // first: the head must not name a record past their ends before
        // those are on disk.
        if let Err(e) = SyncFiles::sync_retired(&self.sync_files, &self.path) {
            self.failed("sync", &e, 0);
            return false;
        }
        if let Err(e) = self.log.sync() {
            self.failed("sync", &e, 0);
            return false;
        }
        if self.notices.is_empty() {
            lock(&self.head).advance(self.seq, hash_str(&self.hash));
        }
        true
    }

    /// Reports a failed write or sync; `refused`: records answered with an
    /// error.
    pub(super) fn failed(&self, what: &str, e: &io::Error, refused: usize) {
        report_failure(&self.status, &self.path, what, e, refused);
    }
}

/// Logs a failed write or sync and puts it in the status, where it stays
/// until the next successful write.
pub(super) fn report_failure(status: &StatusCell, path: &Path, what: &str, e: &io::Error, refused: usize) {
    let message = format!("{what} failed: {}", AuditError::io_copy(path, e));
    tracing::error!(error = %message, refused, "audit log {what} failed");
    status.update(|s| s.error = Some(message));
}

#[cfg(test)]
mod tests;
