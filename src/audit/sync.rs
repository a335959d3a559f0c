//! The sync thread: fdatasyncs what has been written (on its own handle of
//! the log, without any lock held) and only then moves the head file to
//! it, so a power loss never makes an honest log look cut.
//!
//! With [`super::Durability::Write`] it runs every `fsync_interval`. With
//! [`super::Durability::Fsync`] it runs on demand: a record is answered
//! once a sync covers it ([`Demand`]), and a sync starts as soon as the one
//! before it ends if records were written meanwhile. So one fdatasync
//! serves every record written while the previous one ran, however many
//! callers wrote them, and writing the next batch never waits for a sync.
//! (The group commit of PostgreSQL's WAL flush and InnoDB's log writer:
//! writers append, one flusher makes durable up to the written end.)
//!
//! Files sealed into segments or moved away since the last round
//! (`SyncFiles::retired`) are synced first, with their directory, so the
//! head never names a record in the new file while the end of the old one
//! is still only in the page cache.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use super::error::AuditError;
use super::head::HeadFile;
use super::writer::{report_failure, SyncFiles};
use super::{lock, AuditOptions, StatusCell};

/// How far the log is durable, as the sync thread publishes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Durable {
    /// Every record up to this seq is on disk.
    pub(super) synced: u64,
    /// A sync meant to cover records up to this seq failed: those past
    /// `synced` are answered with an error.
    pub(super) failed_through: u64,
}

/// What callers waiting for a record to be durable and the sync thread
/// share: every record in [`super::Durability::Fsync`] mode, a deletion's
/// record before retention removes its segment in either mode.
pub(super) struct Demand {
    state: Mutex<Wanted>,
    wake: Condvar,
    durable: watch::Sender<Durable>,
}

struct Wanted {
    /// The highest seq a caller waits to see durable.
    seq: u64,
    /// The thread waits on the condvar (so a new want must wake it).
    idle: bool,
    stop: bool,
}

/// What a record whose sync failed is answered with.
const SYNC_FAILED: &str = "fdatasync of the audit log failed, so the record may not be on disk: `keyward status` shows the error (check the disk); the next record tries again";

impl Demand {
    pub(super) fn new(synced: u64) -> Arc<Demand> {
        Arc::new(Demand {
            state: Mutex::new(Wanted {
                seq: synced,
                idle: false,
                stop: false,
            }),
            wake: Condvar::new(),
            durable: watch::Sender::new(Durable {
                synced,
                failed_through: 0,
            }),
        })
    }

    /// Waits until record `seq` (written) is durable; an error if the sync
    /// meant to cover it failed.
    pub(super) async fn wait(&self, seq: u64, path: &std::path::Path) -> Result<(), AuditError> {
        let mut rx = self.durable.subscribe();
        {
            let mut st = lock(&self.state);
            if seq > st.seq {
                st.seq = seq;
                if st.idle {
                    st.idle = false;
                    self.wake.notify_one();
                }
            }
        }
        let durable = *rx
            .wait_for(|d| d.synced >= seq || d.failed_through >= seq)
            .await
            .map_err(|_| AuditError::Closed)?;
        if durable.synced >= seq {
            Ok(())
        } else {
            Err(AuditError::io(path, std::io::Error::other(SYNC_FAILED)))
        }
    }
}

impl Demand {
    /// At close, after the sync thread stopped: `seq` was synced (`ok`) or
    /// the final sync failed.
    pub(super) fn settle(&self, seq: u64, ok: bool) {
        self.durable.send_modify(|d| match ok {
            true => d.synced = d.synced.max(seq),
            false => d.failed_through = seq,
        });
    }
}

/// The sync thread. Dropped without [`Syncer::stop`] (every handle on the
/// log dropped without `close`), it still tells the thread to stop.
pub(super) struct Syncer {
    demand: StopOnDrop,
    /// Sent as the thread's very last act.
    done: oneshot::Receiver<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Syncer {
    pub(super) fn start(
        files: Arc<Mutex<SyncFiles>>,
        synced: u64,
        interval: Option<Duration>,
        demand: Arc<Demand>,
        opts: &AuditOptions,
        status: Arc<StatusCell>,
        head: Arc<Mutex<HeadFile>>,
    ) -> Result<Syncer, AuditError> {
        let (done_tx, done) = oneshot::channel();
        let path = opts.path.clone();
        let shared = Arc::clone(&demand);
        let thread = std::thread::Builder::new()
            .name("keyward-audit-sync".into())
            // It only syncs and writes the head file: a small stack, which
            // matters because the agent's memory is locked (all resident).
            .stack_size(256 * 1024)
            .spawn(move || {
                let mut synced = synced;
                // After a failed sync, the next one waits for a new record
                // (which it covers too) rather than retrying at once.
                let mut failed = 0;
                while next_round(&shared, interval, synced.max(failed)) {
                    match sync_once(&files, synced, &status, &head, &path) {
                        Ok(seq) => {
                            if seq > synced {
                                synced = seq;
                                shared.durable.send_modify(|d| d.synced = seq);
                            }
                        }
                        Err(tried) => {
                            failed = tried;
                            shared.durable.send_modify(|d| d.failed_through = tried);
                        }
                    }
                }
                let _ = done_tx.send(());
            })
            .map_err(|e| AuditError::io(&opts.path, e))?;
        Ok(Syncer {
            demand: StopOnDrop(demand),
            done,
            thread,
        })
    }

    /// Stops the thread and waits for it, without blocking the runtime on a
    /// sync in progress.
    pub(super) async fn stop(self) {
        self.demand.stop();
        // Err only if the thread is already gone.
        let _ = self.done.await;
        if self.thread.join().is_err() {
            tracing::error!("the audit sync thread panicked");
        }
    }
}

/// Tells the sync thread to stop when dropped (or asked).
struct StopOnDrop(Arc<Demand>);

impl StopOnDrop {
    fn stop(&self) {
        lock(&self.0.state).stop = true;
        self.0.wake.notify_one();
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits for the next round: the interval, or a record past `done` (synced,
/// or tried and failed) that waits. False: stop.
fn next_round(demand: &Demand, interval: Option<Duration>, done: u64) -> bool {
    let mut st = lock(&demand.state);
    match interval {
        Some(interval) => {
            if !st.stop && st.seq <= done {
                // Woken early by a caller waiting for a record.
                st.idle = true;
                st = demand
                    .wake
                    .wait_timeout(st, interval)
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .0;
                st.idle = false;
            }
        }
        None => {
            while !st.stop && st.seq <= done {
                st.idle = true;
                st = demand.wake.wait(st).unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            st.idle = false;
        }
    }
    !st.stop
}

/// One sync: if records were written since `synced`, fdatasync them and
/// move the head; returns the seq now durable, or the seq a failed sync
/// meant to cover.
fn sync_once(
    files: &Mutex<SyncFiles>,
    synced: u64,
    status: &StatusCell,
    head: &Mutex<HeadFile>,
    path: &std::path::Path,
) -> Result<u64, u64> {
    // Everything up to this seq was written before the sync starts, so the
    // sync covers it.
    let (seq, hash) = {
        let status = status.lock();
        (status.sequence, status.head.clone())
    };
    let log = {
        let files = lock(files);
        if seq == synced && files.retired.is_empty() {
            return Ok(synced);
        }
        files.current.try_clone()
    };
    let mut log = match log {
        Ok(log) => log,
        Err(e) => {
            report_failure(status, path, "sync", &e, 0);
            return Err(seq);
        }
    };
    if let Err(e) = SyncFiles::sync_retired(files, path) {
        report_failure(status, path, "sync", &e, 0);
        return Err(seq);
    }
    match log.sync() {
        Ok(()) => {
            lock(head).advance(seq, &hash);
            Ok(seq)
        }
        Err(e) => {
            report_failure(status, path, "sync", &e, 0);
            Err(seq)
        }
    }
}
