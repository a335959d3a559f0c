//! The background sync of [`super::Durability::Write`]: a thread that, every
//! `fsync_interval`, fdatasyncs what has been written and only then moves
//! the head file to it, so a power loss never makes an honest log look cut.
//!
//! Files sealed into segments or moved away since the last round
//! (`SyncFiles::retired`) are synced first, with their directory, so the
//! head never names a record in the new file while the end of the old one
//! is still only in the page cache.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::error::AuditError;
use super::head::HeadFile;
use super::writer::{report_failure, SyncFiles};
use super::{lock, AuditOptions, StatusCell};

/// The background sync thread of [`super::Durability::Write`]: every
/// `fsync_interval`, fdatasyncs what has been written (on its own handle
/// of the log, without any lock held), then moves the head to it.
/// (`files` is shared with the writer, which swaps the live file in it at
/// a seal or a reopen.)
pub(super) struct Syncer {
    /// Dropped or sent to: stop.
    stop: mpsc::Sender<()>,
    /// Sent as the thread's very last act.
    done: oneshot::Receiver<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Syncer {
    pub(super) fn start(
        files: Arc<Mutex<SyncFiles>>,
        synced: u64,
        opts: &AuditOptions,
        status: Arc<StatusCell>,
        head: Arc<Mutex<HeadFile>>,
    ) -> Result<Syncer, AuditError> {
        let (stop, stopped) = mpsc::channel();
        let (done_tx, done) = oneshot::channel();
        let (interval, path) = (opts.fsync_interval, opts.path.clone());
        let thread = std::thread::Builder::new()
            .name("keyward-audit-sync".into())
            // It only syncs and writes the head file: a small stack, which
            // matters because the agent's memory is locked (all resident).
            .stack_size(256 * 1024)
            .spawn(move || {
                let mut synced = synced;
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    synced = sync_once(&files, synced, &status, &head, &path);
                }
                let _ = done_tx.send(());
            })
            .map_err(|e| AuditError::io(&opts.path, e))?;
        Ok(Syncer { stop, done, thread })
    }

    /// Stops the thread and waits for it, without blocking the runtime on a
    /// sync in progress.
    pub(super) async fn stop(self) {
        let _ = self.stop.send(());
        // Err only if the thread is already gone.
        let _ = self.done.await;
        if self.thread.join().is_err() {
            tracing::error!("the audit sync thread panicked");
        }
    }
}

/// One background sync: if records were written since `synced`, fdatasync
/// them and move the head; returns the seq now durable.
fn sync_once(
    files: &Mutex<SyncFiles>,
    synced: u64,
    status: &StatusCell,
    head: &Mutex<HeadFile>,
    path: &std::path::Path,
) -> u64 {
    // Everything up to this seq was written before the sync starts, so the
    // sync covers it.
    let (seq, hash) = {
        let status = status.lock();
        (status.sequence, status.head.clone())
    };
    let (mut retired, log) = {
        let mut files = lock(files);
        if seq == synced && files.retired.is_empty() {
            return synced;
        }
        (std::mem::take(&mut files.retired), files.current.try_clone())
    };
    let mut log = match log {
        Ok(log) => log,
        Err(e) => {
            report_failure(status, path, "sync", &e, 0);
            lock(files).retired.append(&mut retired);
            return synced;
        }
    };
    if !retired.is_empty() {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        let dir = dir.unwrap_or(std::path::Path::new("."));
        let old = retired
            .iter_mut()
            .try_for_each(|f| f.sync())
            .and_then(|()| std::fs::File::open(dir)?.sync_all());
        if let Err(e) = old {
            report_failure(status, path, "sync", &e, 0);
            lock(files).retired.append(&mut retired);
            return synced;
        }
    }
    match log.sync() {
        Ok(()) => {
            lock(head).advance(seq, &hash);
            seq
        }
        Err(e) => {
            report_failure(status, path, "sync", &e, 0);
            synced
        }
    }
}
