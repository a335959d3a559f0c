//! The audit log: append-only JSON Lines, each record chained to the one
//! before it by a keyed hash, committed in groups by whichever caller gets
//! there first, and checked offline by [`verify()`].
//!
//! # How records are committed
//!
//! There is no writer thread on the fetch path. [`Audit::record`] queues its
//! event under a mutex; if nobody is writing, the caller becomes the
//! *leader*: it takes the writer state and everything queued, serializes,
//! chains and appends that batch itself, on its own thread, and repeats
//! while more records arrived in the meantime. Callers that find a leader
//! at work are *followers*: they wait on a oneshot for their seq. This is
//! the leader/follower group commit of RocksDB's write groups and MySQL's
//! binlog, and it means an uncontended record costs one `write(2)` and no
//! thread wake-up. See `commit.rs`.
//!
//! Syncing is never the leader's job: one thread (`sync.rs`) fdatasyncs
//! the log and then moves the head file. With [`Durability::Write`] it runs
//! every `fsync_interval`; with [`Durability::Fsync`] a written record
//! waits until a sync covers it, and the thread starts the next sync as
//! soon as one ends if records were written meanwhile, so one fdatasync
//! serves every record written while the one before it ran.
//!
//! Invariants this module keeps:
//!
//! - One leader writes at a time, and the log grows by whole batches.
//! - With [`Durability::Fsync`], `record` answers only once the sync thread
//!   has synced past the record; if that sync fails, every record waiting
//!   for it gets an error (the fetch fails closed), though the records stay
//!   in the file, where a later sync may still make them durable.
//!   Records are chained in the order they are written, which is the order
//!   they were queued.
//! - The leader never awaits between taking the writer state and putting it
//!   back, so a cancelled `record` future can never strand a half-written
//!   batch or the writer state; a cancelled follower's record is still
//!   written.
//! - The agent never rewrites or deletes a record. The only bytes the writer
//!   ever removes are those of a batch whose write has just failed, so that
//!   a failed write leaves no half record behind; until they are gone, it
//!   writes nothing more.
//! - Record `seq` n+1 carries `prev` = the `hash` of record n (64 zeros for
//!   record 1), and `hash` = HMAC-SHA256 under the install's audit key of the
//!   line's own bytes up to `prev`. Editing, removing or reordering records
//!   is therefore detected without trusting the file.
//! - `<log>.head` ([`head_path`]) names the last record known to be on disk
//!   (seq and hash, under a MAC), so a tail cut off while the agent was
//!   stopped is detected too. It only moves once the records it names have
//!   been fdatasynced, so a power loss never makes an honest log look cut.
//! - A crash in the middle of a write leaves a torn fragment at the end. The
//!   next start ends it with a newline (keeping it as its own line) and
//!   writes an `audit_recovered` record naming its offset and length; the
//!   verifier then reports the fragment as a note, not a failure.
//! - No record ever holds secret material: [`AuditEvent`] has no field that
//!   could carry it.
//!
//! # Segments
//!
//! The live file is sealed into a segment (renamed
//! `<log>.<first seq>-<last seq>`, see [`segments`]) once it reaches
//! `segment_size` or `segment_age`, by the leader at the start of a batch;
//! the chain simply continues in the new live file, whose first record
//! (`audit_segment_opened`) names the sealed one. The head file stays
//! beside the live path and names the last record on disk, whichever
//! segment holds it. On SIGHUP the leader reopens the path if it names
//! another file (logrotate `create`); if the live file shrinks under it
//! (logrotate `copytruncate`, unsupported) it says so in a record and goes
//! on. [`Audit::enforce_retention`] deletes the oldest sealed segments,
//! each deletion recorded first. [`verify_set`] checks every file in order,
//! and against anchors ([`anchor`]) kept outside the host.
//!
//! # Layout
//!
//! [`line`](mod@line) holds a record's fields and its line codec (the record format
//! is described there), [`head`] the head file's codec and handle;
//! `commit.rs` the group commit, `writer.rs` the writer state (opening,
//! tail recovery, appending; sealing and reopening in `writer/roll.rs`),
//! [`segments`] segment names and retention choices, `retention.rs` the
//! deletion of old segments, [`anchor`] the published chain head and its
//! check, `sync.rs` the sync thread (on an
//! interval, or on demand), `verify.rs` the offline verifier, and `error.rs`
//! [`AuditError`]. This file is the facade: [`Audit`] and its options.

pub mod anchor;
mod commit;
mod error;
pub mod head;
mod kind;
pub mod line;
mod retention;
pub mod segments;
mod sync;
mod verify;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

pub use crate::config::audit::Durability;
pub use error::AuditError;
pub use head::head_path;
pub use kind::{Event, Outcome};
pub use line::{AuditEvent, CallerRecord, Coalesced, VersionRecord, DISTINCT_KEYS_COUNTED};
pub use segments::Deleted;
pub use verify::set::{read_anchors, verify, verify_set, VerifyOptions};
pub use verify::{ProblemKind, VerifyProblem, VerifyReport};

/// How to open the log.
#[derive(Clone)]
pub struct AuditOptions {
    /// The log file; created 0600 if missing, never followed if a symlink.
    pub path: PathBuf,
    /// The per-install key of the hash chain (HMAC-SHA256).
    pub key: [u8; 32],
    /// When a record counts as written.
    pub durability: Durability,
    /// With [`Durability::Write`], how often the log is fdatasynced.
    pub fsync_interval: Duration,
    /// Most records, beyond the first, committed together by one write.
    pub max_batch: usize,
    /// The live file is sealed into a segment at this size...
    pub segment_size: u64,
    /// ... or this age (none: size alone).
    pub segment_age: Option<Duration>,
}

/// What the writer is told, and tells, outside the records.
struct Signals {
    /// SIGHUP: reopen the path if it names another file now.
    reopen: Arc<AtomicBool>,
    /// Bumped after each seal.
    seals: Arc<tokio::sync::watch::Sender<u64>>,
}

/// The writer's state, for health checks and `keyward status`.
#[derive(Clone, Debug, Default)]
pub struct AuditStatus {
    /// Sequence number of the last record written (0: none yet).
    pub sequence: u64,
    /// Hash of that record (64 zeros: none yet).
    pub head: String,
    /// The last write or sync failure, cleared by the next successful write.
    pub error: Option<String>,
}

/// The writer's [`AuditStatus`], and whether it can write, for those who
/// follow that ([`Audit::writable`]). Every change of the error goes
/// through [`StatusCell::update`], which tells the followers while it
/// still holds the status: they never see an order of changes the status
/// did not go through.
pub(super) struct StatusCell {
    status: Mutex<AuditStatus>,
    writable: tokio::sync::watch::Sender<bool>,
}

impl StatusCell {
    fn new() -> StatusCell {
        StatusCell {
            status: Mutex::new(AuditStatus::default()),
            writable: tokio::sync::watch::Sender::new(true),
        }
    }

    /// The status, for reading.
    pub(super) fn lock(&self) -> MutexGuard<'_, AuditStatus> {
        lock(&self.status)
    }

    /// Changes the status with `change`; followers of
    /// [`Audit::writable`] are woken if the error came or went.
    pub(super) fn update(&self, change: impl FnOnce(&mut AuditStatus)) {
        let mut status = lock(&self.status);
        change(&mut status);
        let writable = status.error.is_none();
        self.writable
            .send_if_modified(|w| std::mem::replace(w, writable) != writable);
    }
}

/// A handle on the audit log. Cheap to clone; all clones share one queue
/// and one writer state.
#[derive(Clone)]
pub struct Audit {
    inner: Arc<commit::Shared>,
    observer: Arc<std::sync::OnceLock<Arc<dyn AuditObserver>>>,
    signals: Arc<Signals>,
    path: PathBuf,
    install_id: Arc<str>,
}

/// Told of every record's outcome (metrics and alerts). Called on the
/// writing task: must not block.
pub trait AuditObserver: Send + Sync {
    /// A record was written, `latency` after `record` was called.
    fn written(&self, latency: std::time::Duration);
    /// A record could not be written.
    fn failed(&self, error: &AuditError);
}

impl Audit {
    /// Opens (or creates) the log, continues its chain, marks a torn tail
    /// left by a crash, and (with [`Durability::Write`]) starts the thread
    /// that syncs it in the background.
    ///
    /// Works inside or outside a tokio runtime. Fails if the log or its head
    /// file cannot be opened, is a symlink or not a regular file, or if the
    /// last record in the log does not verify under `opts.key` (wrong
    /// install key, or an edited log).
    pub fn start(opts: AuditOptions) -> Result<Audit, AuditError> {
        Audit::start_with(opts, |file| Box::new(file))
    }

    /// [`Audit::start`], with the log file wrapped by `wrap` (tests inject
    /// failing writes through it).
    fn start_with(
        opts: AuditOptions,
        wrap: impl FnOnce(std::fs::File) -> Box<dyn writer::LogFile>,
    ) -> Result<Audit, AuditError> {
        let status = Arc::new(StatusCell::new());
        let signals = Signals {
            reopen: Arc::default(),
            seals: Arc::new(tokio::sync::watch::Sender::new(0)),
        };
        let (writer, head) = writer::open(&opts, wrap, Arc::clone(&status), &signals)?;
        Ok(Audit {
            inner: Arc::new(commit::Shared::start(&opts, writer, head, status)?),
            observer: Arc::default(),
            signals: Arc::new(signals),
            install_id: anchor::install_id(&opts.key).into(),
            path: opts.path,
        })
    }

    /// The install's public id, as anchors carry it.
    pub fn install_id(&self) -> &str {
        &self.install_id
    }

    /// The live file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// SIGHUP: before the next record, reopen the live file's path if it
    /// now names another file or none (logrotate `create` moved it away).
    /// The next record is the first in the new file.
    pub fn request_reopen(&self) {
        self.signals.reopen.store(true, Ordering::Relaxed);
    }

    /// Changes after each seal of a segment.
    pub fn seals(&self) -> tokio::sync::watch::Receiver<u64> {
        self.signals.seals.subscribe()
    }

    /// Writes `event` and returns its sequence number once it is written
    /// (per the [`Durability`] mode). Concurrent calls are committed
    /// together. After [`Audit::close`], returns [`AuditError::Closed`].
    ///
    /// Cancel-safe: dropping the future never loses or corrupts other
    /// records; the dropped call's own record may still be written.
    pub async fn record(&self, event: AuditEvent) -> Result<u64, AuditError> {
        let Some(observer) = self.observer.get() else {
            return self.inner.record(event).await;
        };
        let started = std::time::Instant::now();
        let result = self.inner.record(event).await;
        match &result {
            Ok(_) => observer.written(started.elapsed()),
            Err(AuditError::Closed) => {}
            Err(e) => observer.failed(e),
        }
        result
    }

    /// Sets the one observer of every record's outcome (later calls are
    /// ignored).
    pub fn observe(&self, observer: Arc<dyn AuditObserver>) {
        let _ = self.observer.set(observer);
    }

    /// The last record known to be on disk, as the head file names it
    /// (seq and hash): what may be anchored outside the host. The status's
    /// `sequence` can be past it by up to `fsync_interval` of records,
    /// which a power loss would take back.
    pub fn durable_head(&self) -> Option<(u64, String)> {
        self.inner.durable_head()
    }

    /// The last written seq and hash and the current error. Never waits on
    /// I/O.
    pub fn status(&self) -> AuditStatus {
        self.inner.status.lock().clone()
    }

    /// Whether the log can be written: false from a failed write or sync
    /// until the next successful write (while [`AuditStatus::error`] is
    /// set), and changes the moment either happens. Never waits on I/O.
    pub fn writable(&self) -> tokio::sync::watch::Receiver<bool> {
        self.inner.status.writable.subscribe()
    }

    /// Writes everything queued, fdatasyncs, updates the head file and stops
    /// the background sync thread. Idempotent; a second caller waits for the
    /// first to finish.
    pub async fn close(&self) {
        self.inner.close().await
    }
}

/// Locks `m`, even if a panicking thread poisoned it: the audit's mutexes
/// only guard state that is consistent between statements (a panicking
/// leader is handled by `commit.rs`, which closes the log).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    //! Helpers shared by the tests of the codecs, the writer and the
    //! verifier.

    use std::path::Path;

    use super::*;

    /// The audit key of every test log.
    pub(super) const KEY: [u8; 32] = [7; 32];

    /// Options for a log `audit.jsonl` in `dir`.
    pub(super) fn opts(dir: &Path, durability: Durability) -> AuditOptions {
        AuditOptions {
            path: dir.join("audit.jsonl"),
            key: KEY,
            durability,
            fsync_interval: Duration::from_millis(20),
            max_batch: 64,
            segment_size: 64 << 20,
            segment_age: None,
        }
    }

    /// A fetch as the server would record it.
    pub(super) fn fetch(i: u64) -> AuditEvent {
        AuditEvent {
            event: Event::Fetch,
            caller: Some(Arc::new(CallerRecord {
                uid: 1001,
                gid: 1001,
                pid: 4242,
                exe: Some("/usr/bin/billing".into()),
                unit: None,
            })),
            key: Some("prod/billing-api".into()),
            versions: vec![VersionRecord {
                role: "primary",
                version: 3,
                fingerprint: "9f86d081884c7d65".into(),
            }],
            generation_before: None,
            generation_after: Some(i),
            backend_version: None,
            outcome: Outcome::Ok,
            detail: None,
            coalesced: None,
        }
    }

    /// Starts the log, writes `n` fetches, closes it; returns their seqs.
    pub(super) async fn write_log(opts: &AuditOptions, n: u64) -> Vec<u64> {
        let audit = Audit::start(opts.clone()).unwrap();
        let mut seqs = Vec::new();
        for i in 0..n {
            seqs.push(audit.record(fetch(i)).await.unwrap());
        }
        audit.close().await;
        seqs
    }

    /// The log's lines, without their `\n`.
    pub(super) fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Every line of every segment of the live file `live`, then its own.
    pub(super) fn all_lines(live: &Path) -> Vec<String> {
        let mut files: Vec<std::path::PathBuf> = super::segments::list_segments(live)
            .unwrap()
            .into_iter()
            .map(|s| s.path)
            .collect();
        files.push(live.to_path_buf());
        files.iter().flat_map(|f| lines(f)).collect()
    }

    /// Records until the live file at `opts` is due for a seal (the next
    /// batch seals it); their seqs.
    pub(super) async fn fill_to_a_seal(audit: &Audit, opts: &AuditOptions) -> Vec<u64> {
        let mut answered = Vec::new();
        while std::fs::metadata(&opts.path).unwrap().len() < opts.segment_size {
            answered.push(audit.record(fetch(answered.len() as u64)).await.unwrap());
        }
        answered
    }

    /// Ends the log at `path` with the start of a record a crash cut short.
    pub(super) fn tear(path: &Path) {
        let mut torn = std::fs::read(path).unwrap();
        torn.extend_from_slice(b"{\"time\":");
        std::fs::write(path, torn).unwrap();
    }

    /// Replaces the log with `lines`, each ended by `\n`.
    pub(super) fn write_lines(path: &Path, lines: &[String]) {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(path, text).unwrap();
    }
}
