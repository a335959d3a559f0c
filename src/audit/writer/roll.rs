//! What the leader checks at the start of each batch, before it encodes
//! anything: whether the live file shrank under it (logrotate's
//! `copytruncate`), whether SIGHUP asked to reopen it (logrotate's
//! `create`), and whether it is due to be sealed into a segment.
//!
//! A seal is: the `audit_segment_sealed` record appended to the live file,
//! a hard link of the live file under its segment name, and the next live
//! file (opened beforehand as `<log>.new`) renamed over the path. The path
//! always names a file, and a crash at any step leaves a state the next
//! start finishes (see [`SegmentState::seal_pending`]). The new file's
//! first record, `audit_segment_opened`, names the sealed one; its `prev`
//! is the seal's hash, so the chain simply continues.
//!
//! None of this fsyncs: the old file goes to the sync thread, which syncs
//! it and the directory before the head moves past it (and, in
//! [`crate::audit::Durability::Fsync`] mode, before any record of the new
//! file is answered). So a roll costs the leader one extra small write, an
//! open, a link and a rename: far less than a commit's fdatasync.

use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::tail::{scan_tail, Tail};
use super::{encode_record, hash_str, lock, notice_of, open_private, LogFile, Writer};
use crate::audit::kind::{Event, Outcome};
use crate::audit::line::AuditEvent;
use crate::audit::line::TimeText;
use crate::audit::segments::{
    first_record_seq, list_segments, opened_detail, sealed_detail, segment_path, Segment, FIRST_WINDOW,
};

/// After a failed seal, how long the writer keeps the live file before
/// trying again.
const ROLL_RETRY: Duration = Duration::from_secs(10);

/// The live file as a segment.
pub(in crate::audit) struct SegmentState {
    /// The seq of its first record.
    pub(in crate::audit) first: u64,
    /// When it was opened (by this process).
    pub(in crate::audit) started: Instant,
    /// Sealed at this many bytes.
    pub(in crate::audit) size: u64,
    /// ... or at this age.
    pub(in crate::audit) age: Option<Duration>,
    /// The file ends with its seal record but was not renamed yet (a
    /// crash, or a failed rename): finish the seal without a new record.
    pub(in crate::audit) seal_pending: bool,
    /// A failed seal is not tried again before this.
    pub(in crate::audit) retry_after: Option<Instant>,
}

/// The seq of the first record in `log`, if it holds one (MACs are checked
/// by the tail scan and the verifier, not here).
pub(super) fn first_seq(log: &dyn LogFile) -> io::Result<Option<u64>> {
    let len = log.len()?.min(FIRST_WINDOW);
    let mut buf = vec![0; len as usize];
    log.read_at(&mut buf, 0)?;
    Ok(first_record_seq(&buf))
}

/// `<log>.new`: where the next live file is created before it is renamed
/// over the path.
fn next_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".new");
    PathBuf::from(s)
}

impl Writer {
    /// Runs before each batch is encoded: copytruncate, reopen, seal.
    /// Failures are logged and do not fail the batch (the records go on
    /// into the file that is open), but one: a seal whose record is written
    /// and which cannot be finished (`Err`): nothing may follow the record.
    pub(super) fn before_batch(&mut self, time: &TimeText) -> io::Result<()> {
        if let Err(e) = self.check_shrunk() {
            tracing::error!(path = %self.path.display(), error = %e, "cannot stat the audit log");
        }
        if self.reopen.swap(false, Ordering::Relaxed) {
            if let Err(e) = self.reopen_if_moved() {
                tracing::error!(path = %self.path.display(), error = %e,
                    "could not reopen the audit log; records go on into the file that is open");
            }
        }
        let s = &self.segments;
        let due = s.seal_pending
            || (self.len > 0 && (self.len >= s.size || s.age.is_some_and(|age| s.started.elapsed() >= age)));
        // Records about this file (a torn fragment found at start, say) go
        // in it before it is sealed; a seal cut short before its rename has
        // its record already.
        let notices_first = !s.seal_pending && !self.notices.is_empty();
        // A seal whose record is written is tried again at every batch.
        let later = !s.seal_pending && s.retry_after.is_some_and(|t| Instant::now() < t);
        if !due || notices_first || later || self.cut_back_pending {
            return Ok(());
        }
        match self.seal(time) {
            Ok(()) => Ok(()),
            // The file ends with its seal record: a record after it would
            // be in the sealed segment, and the next try would link the
            // file under a second segment name.
            Err(e) if self.segments.seal_pending => {
                tracing::error!(path = %self.path.display(), error = %e,
                    "could not finish sealing the audit log into a segment; nothing is written after its seal record until it is, and the next record tries again");
                Err(io::Error::new(
                    e.kind(),
                    format!("the audit log ends with a segment's seal record, and the seal cannot be finished ({e}); nothing is written after it until it is: the next record tries again"),
                ))
            }
            Err(e) => {
                self.segments.retry_after = Some(Instant::now() + ROLL_RETRY);
                tracing::error!(path = %self.path.display(), error = %e,
                    "could not seal the audit log into a segment; records go on into the live file, and the seal is tried again in 10s");
                Ok(())
            }
        }
    }

    /// Before a seal record is written: whether the link and the rename
    /// that follow it can be done. A file at the segment's name that is not
    /// this one, or a live file that is append-only or immutable (`chattr`:
    /// neither linked nor renamed over), would leave the file ending with a
    /// seal it cannot finish; found here, the file goes on unsealed.
    fn check_can_seal(&self, sealed: &Path) -> io::Result<()> {
        match std::fs::symlink_metadata(sealed) {
            Ok(_) if !same_file(&self.path, sealed)? => return Err(foreign_segment(sealed)),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let flags = rustix::fs::ioctl_getflags(&open_read(&self.path)?);
        match flags {
            Ok(f) if f.intersects(rustix::fs::IFlags::APPEND | rustix::fs::IFlags::IMMUTABLE) => Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} is append-only or immutable (chattr +a or +i), so it can be neither linked under a segment name nor renamed over: remove the attribute (`chattr -a -i {}`) to have it sealed",
                    self.path.display(),
                    self.path.display()
                ),
            )),
            // A file system without inode flags has neither attribute.
            Ok(_) | Err(_) => Ok(()),
        }
    }

    /// The live file shrank under the agent: someone truncated it (logrotate
    /// `copytruncate`, which is not supported). Records are appended
    /// (O_APPEND), so nothing is written at a hole; the file starts afresh
    /// as a new segment whose first record says what happened.
    fn check_shrunk(&mut self) -> io::Result<()> {
        let actual = self.log.len()?;
        if actual >= self.len {
            return Ok(());
        }
        tracing::error!(path = %self.path.display(), was = self.len, now = actual,
            "the audit log shrank under the agent (logrotate copytruncate?): that is not supported, records written between the copy and the truncation are lost; use logrotate's `create` mode with a SIGHUP postrotate, or [audit] segment_size");
        let detail = format!(
            "the live file shrank from {} to {actual} bytes under the agent, after seq {}: logrotate copytruncate is not supported (records written between its copy and its truncation are lost); use `create` mode with SIGHUP, or [audit] segment_size",
            self.len, self.seq
        );
        self.start_segment(actual)?;
        self.notices
            .push(notice_of(Event::AuditSegmentOpened, Outcome::Truncated, detail));
        Ok(())
    }

    /// SIGHUP: if the path no longer names the open file (moved away or
    /// removed, as logrotate's `create` mode does), open the path (creating
    /// it) and go on there, first with a record naming where the previous
    /// file ended.
    fn reopen_if_moved(&mut self) -> io::Result<()> {
        let open_id = self.log.id()?;
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == open_id => {
                tracing::info!(path = %self.path.display(), "SIGHUP: the audit log was not moved; nothing to reopen");
                return Ok(());
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let next = open_private(&self.path, true)?;
        let len = next.metadata()?.len();
        self.replace_log(Box::new(next))?;
        self.start_segment(len)?;
        tracing::info!(path = %self.path.display(), seq = self.seq,
            "SIGHUP: the audit log was moved away or removed; writing to a new file at its path");
        self.notices.push(notice_of(
            Event::AuditSegmentOpened,
            Outcome::Reopened,
            format!(
                "the previous live file was moved away or removed (logrotate create?) and ends at seq {} with hash {}; verify both in order: keyward audit verify OLD-FILE {}",
                self.seq,
                hash_str(&self.hash),
                self.path.display()
            ),
        ));
        Ok(())
    }

    /// Seals the live file: its seal record, the link under the segment's
    /// name, the next file renamed over the path.
    fn seal(&mut self, time: &TimeText) -> io::Result<()> {
        let pending = self.segments.seal_pending;
        let (first, last) = (self.segments.first, if pending { self.seq } else { self.seq + 1 });
        let sealed = segment_path(&self.path, first, last);
        let next_path = next_path(&self.path);
        if !pending {
            self.check_can_seal(&sealed)?;
        }
        match std::fs::remove_file(&next_path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let next = open_private(&next_path, true)?;
        if !pending {
            let mut buf = Vec::new();
            if self.needs_newline {
                buf.push(b'\n');
            }
            let ev = notice_of(
                Event::AuditSegmentSealed,
                Outcome::Ok,
                sealed_detail(first, last, &sealed),
            );
            let hash = encode_record(&mut buf, &self.mac, last, hash_str(&self.hash), &ev, time);
            if let Err(e) = self.append(&buf) {
                let _ = std::fs::remove_file(&next_path);
                return Err(e);
            }
            self.len += buf.len() as u64;
            self.seq = last;
            self.hash = hash;
            self.needs_newline = false;
            self.segments.seal_pending = true;
        }
        match self.log.link_as(&self.path, &sealed) {
            Ok(()) => {}
            // A seal cut short after the link: the name already is ours.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && same_file(&self.path, &sealed)? => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(foreign_segment(&sealed)),
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot link the live file as {}: {e}", sealed.display()),
                ))
            }
        }
        self.log.replace_with(&next_path, &self.path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot rename {} over {}: {e}",
                    next_path.display(),
                    self.path.display()
                ),
            )
        })?;
        self.segments.seal_pending = false;
        self.replace_log(Box::new(next))?;
        self.start_segment(0)?;
        self.notices
            .push(opened_notice(first, last, hash_str(&self.hash), &sealed));
        tracing::info!(segment = %sealed.display(), first, last, "audit log sealed into a segment");
        self.seals.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Makes `next` the live file; the old one goes to the sync thread.
    fn replace_log(&mut self, next: Box<dyn LogFile>) -> io::Result<()> {
        let current = next.try_clone()?;
        // The old handle is closed here; the sync thread's own handle on
        // the same file is what gets synced.
        drop(std::mem::replace(&mut self.log, next));
        let mut files = lock(&self.sync_files);
        let old = std::mem::replace(&mut files.current, current);
        files.retired.push(old);
        Ok(())
    }

    /// The live file is a new segment of `len` bytes (its next record is
    /// its first).
    fn start_segment(&mut self, len: u64) -> io::Result<()> {
        self.len = len;
        self.needs_newline = false;
        if len > 0 {
            let mut last = [0];
            self.log.read_at(&mut last, len - 1)?;
            self.needs_newline = last[0] != b'\n';
        }
        self.segments.first = self.seq + 1;
        self.segments.started = Instant::now();
        self.segments.retry_after = None;
        Ok(())
    }
}

/// The first record of the file after a seal: where the chain's seqs
/// `first..=last` went.
pub(super) fn opened_notice(first: u64, last: u64, hash: &str, sealed: &Path) -> AuditEvent {
    notice_of(
        Event::AuditSegmentOpened,
        Outcome::Ok,
        opened_detail(first, last, hash, sealed),
    )
}

/// The newest sealed segment of the live file `path`, and its last record,
/// if that record is its seal (its MAC checked, like the live file's tail).
pub(super) fn newest_seal(path: &Path, key: &[u8; 32]) -> io::Result<Option<(Segment, Tail)>> {
    let Some(segment) = list_segments(path)?.pop() else {
        return Ok(None);
    };
    let tail = scan_tail(&open_read(&segment.path)?, key)?;
    Ok(tail.sealed.then_some((segment, tail)))
}

/// Opens `path` to read, not following a symlink.
fn open_read(path: &Path) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// A file at a segment's name that is not the live file.
fn foreign_segment(sealed: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!(
            "{} exists and is not this log's segment: move it away",
            sealed.display()
        ),
    )
}

/// Whether `a` and `b` name the same file.
fn same_file(a: &Path, b: &Path) -> io::Result<bool> {
    let (a, b) = (std::fs::metadata(a)?, std::fs::metadata(b)?);
    Ok((a.dev(), a.ino()) == (b.dev(), b.ino()))
}

#[cfg(test)]
mod tests;
