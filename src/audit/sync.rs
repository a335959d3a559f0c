//! The background sync of [`super::Durability::Write`]: a thread that, every
//! `fsync_interval`, fdatasyncs what has been written and only then moves
//! the head file to it, so a power loss never makes an honest log look cut.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::error::AuditError;
use super::head::HeadFile;
use super::writer::{report_failure, LogFile};
use super::{lock, AuditOptions, AuditStatus};

/// The background sync thread of [`super::Durability::Write`]: every
/// `fsync_interval`, fdatasyncs what has been written (on its own handle
/// of the log, without any lock held), then moves the head to it.
pub(super) struct Syncer {
    /// Dropped or sent to: stop.
    stop: mpsc::Sender<()>,
    /// Sent as the thread's very last act.
    done: oneshot::Receiver<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Syncer {
    pub(super) fn start(
        mut log: Box<dyn LogFile>,
        synced: u64,
        opts: &AuditOptions,
        status: Arc<Mutex<AuditStatus>>,
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
                    synced = sync_once(&mut *log, synced, &status, &head, &path);
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
    log: &mut dyn LogFile,
    synced: u64,
    status: &Mutex<AuditStatus>,
    head: &Mutex<HeadFile>,
    path: &std::path::Path,
) -> u64 {
    // Everything up to this seq was written before the sync starts, so the
    // sync covers it.
    let (seq, hash) = {
        let status = lock(status);
        (status.sequence, status.head.clone())
    };
    if seq == synced {
        return synced;
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
