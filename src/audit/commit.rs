//! Group commit without a writer thread: the leader/follower scheme of
//! RocksDB's write groups and MySQL's binlog group commit.
//!
//! A caller of `record` queues its event under [`Shared::state`]. If nobody
//! is leading, it becomes the leader: it takes the [`Writer`] and the
//! queue, lets go of the lock, and writes the batch on its own thread; then
//! it takes whatever was queued meanwhile and writes again, until the queue
//! is empty. A caller that finds a leader at work is a follower and waits
//! on a oneshot for its answer. Uncontended, a record is therefore one
//! `write(2)` on the caller's thread, with no thread wake-up at all.
//!
//! With [`Durability::Fsync`] the answer then waits for durability: the
//! caller tells the sync thread ([`Demand`]) how far it needs the log
//! synced and awaits the seq it publishes. The leader never syncs, so it
//! never holds the writer through an fdatasync, and records written during
//! a sync are all covered by the next one, whatever the runtime is doing
//! (a busy or single-threaded runtime cannot delay a sync).
//!
//! Invariants:
//!
//! - At most one leader at a time (`State::leading`); only the leader holds
//!   the writer state, so records are chained in the order they are
//!   written, which is the order they were queued.
//! - Between taking the writer and putting it back the leader never
//!   awaits. A future can only be dropped at an await point, so a leader
//!   cannot be cancelled halfway through a batch; a cancelled follower
//!   (see [`Following`]) leaves its record in the queue, where it is
//!   written like any other, and passes on the lead if it had just been
//!   handed it.
//! - A leader whose own record is written and who has already written
//!   [`MAX_ROUNDS`] batches hands the lead to the first waiting follower, so
//!   no caller serves others for ever.
//! - Every queued record is answered: with its seq, an error for its batch,
//!   or `Closed` if a leader panicked (which closes the log).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{oneshot, Notify};

use super::head::HeadFile;
use super::sync::{Demand, Syncer};
use super::writer::Writer;
use super::{lock, AuditError, AuditEvent, AuditOptions, Durability, StatusCell};

/// Batches a leader writes before it hands the lead on (once its own
/// record is written and a follower is waiting).
const MAX_ROUNDS: usize = 4;

/// What a follower is told.
enum Reply {
    /// Your record was written with this seq (or not, and why).
    Done(Result<u64, AuditError>),
    /// The leader handed you the lead: your record is still queued, the
    /// writer is parked in the state; write the queue.
    Lead,
}

/// Who waits for a queued record's answer.
enum Waiter {
    /// The current leader (it keeps its own answer).
    Leader,
    /// A follower, on this oneshot.
    Follower(oneshot::Sender<Reply>),
    /// Nobody: the caller was cancelled. The record is still written.
    Gone,
}

/// What the queue mutex guards.
struct State {
    /// Records waiting for a leader, in the order they will be chained.
    queue: Vec<(AuditEvent, Waiter)>,
    /// An empty vector that the leader swaps with `queue`, kept between
    /// leaders so that queueing a record does not allocate.
    spare: Vec<(AuditEvent, Waiter)>,
    /// Someone holds (or has been handed) the lead.
    leading: bool,
    /// The writer, while no leader holds it.
    writer: Option<Box<Writer>>,
    /// `close` has begun: `record` refuses new records.
    closed: bool,
    /// `close` has written, synced and stopped (or a leader panicked).
    finished: bool,
}

/// Everything behind an [`super::Audit`] handle.
pub(super) struct Shared {
    state: Mutex<State>,
    /// Woken when a leader lets go after `close` has begun.
    released: Notify,
    /// Seq, head hash and error, for `status()` and the background sync.
    pub(super) status: Arc<StatusCell>,
    head: Arc<Mutex<HeadFile>>,
    path: PathBuf,
    /// Most records in one write, the first one aside.
    max_batch: usize,
    /// The sync thread, until `close` stops it (a tokio mutex: a second
    /// `close` waits while the first stops the thread).
    syncer: tokio::sync::Mutex<Option<Syncer>>,
    /// How far the log is durable: what a record waits on until a sync
    /// covers it (every record with [`Durability::Fsync`]; one a caller
    /// asks for, [`Shared::wait_durable`], in either mode).
    durable: Arc<Demand>,
    /// [`Durability::Fsync`]: every record waits.
    power_safe: bool,
}

impl Shared {
    /// The shared state around a freshly opened `writer`; with
    /// [`Durability::Write`], starts the background sync thread.
    pub(super) fn start(
        opts: &AuditOptions,
        writer: Writer,
        head: Arc<Mutex<HeadFile>>,
        status: Arc<StatusCell>,
    ) -> Result<Shared, AuditError> {
        let durable = Demand::new(writer.seq());
        let power_safe = opts.durability == Durability::Fsync;
        // Write mode also syncs every interval; fsync mode only on demand.
        let interval = (!power_safe).then_some(opts.fsync_interval);
        let syncer = Syncer::start(
            writer.sync_files(),
            writer.seq(),
            interval,
            Arc::clone(&durable),
            opts,
            Arc::clone(&status),
            Arc::clone(&head),
        )?;
        Ok(Shared {
            state: Mutex::new(State {
                queue: Vec::new(),
                spare: Vec::new(),
                leading: false,
                writer: Some(Box::new(writer)),
                closed: false,
                finished: false,
            }),
            released: Notify::new(),
            status,
            head,
            path: opts.path.clone(),
            max_batch: opts.max_batch,
            syncer: tokio::sync::Mutex::new(Some(syncer)),
            durable,
            power_safe,
        })
    }

    /// Waits until record `seq` (written) is on disk: at once in
    /// [`Durability::Fsync`] mode, after a sync started now in
    /// [`Durability::Write`] mode.
    pub(super) async fn wait_durable(&self, seq: u64) -> Result<(), AuditError> {
        self.durable.wait(seq, &self.path).await
    }

    /// See [`super::Audit::durable_head`].
    pub(super) fn durable_head(&self) -> Option<(u64, String)> {
        lock(&self.head).durable.clone()
    }

    /// See [`super::Audit::record`].
    pub(super) async fn record(&self, event: AuditEvent) -> Result<u64, AuditError> {
        let seq = self.write(event).await?;
        if self.power_safe {
            self.durable.wait(seq, &self.path).await?;
        }
        Ok(seq)
    }

    /// Writes `event` (group-committed) and returns its seq.
    async fn write(&self, event: AuditEvent) -> Result<u64, AuditError> {
        let rx = {
            let mut st = lock(&self.state);
            if st.closed {
                return Err(AuditError::Closed);
            }
            if !st.leading {
                st.leading = true;
                st.queue.push((event, Waiter::Leader));
                drop(st);
                return self.lead();
            }
            let (tx, rx) = oneshot::channel();
            st.queue.push((event, Waiter::Follower(tx)));
            rx
        };
        let mut following = Following {
            rx,
            shared: self,
            answered: false,
        };
        let reply = (&mut following.rx).await;
        following.answered = true;
        match reply {
            Ok(Reply::Done(result)) => result,
            Ok(Reply::Lead) => self.lead(),
            // The leader panicked and the log is closed.
            Err(_) => Err(AuditError::Closed),
        }
    }

    /// Leads: writes the queue, which holds this caller's record, and
    /// returns that record's answer. Called with `leading` set (by us, or
    /// by the leader that handed us the lead).
    fn lead(&self) -> Result<u64, AuditError> {
        let _guard = PanicGuard(self);
        let writer = lock(&self.state)
            .writer
            .take()
            .expect("the writer is parked while nobody leads");
        let mut own = None;
        if let Some((mut st, writer)) = self.drain(writer, true, &mut own) {
            st.writer = Some(writer);
            st.leading = false;
            let closed = st.closed;
            drop(st);
            if closed {
                self.released.notify_waiters();
            }
        }
        own.expect("the leader's own record is written before it lets go")
    }

    /// Writes queued records in batches of at most `max_batch + 1` until
    /// the queue is empty, answering each batch's followers as it goes, and
    /// returns the (locked) state with the queue empty and the writer.
    /// `bounded`: once the leader's own record is written and
    /// [`MAX_ROUNDS`] batches are, hand the lead to a waiting follower
    /// instead (parking the writer) and return `None`.
    fn drain(
        &self,
        mut writer: Box<Writer>,
        bounded: bool,
        own: &mut Option<Result<u64, AuditError>>,
    ) -> Option<(MutexGuard<'_, State>, Box<Writer>)> {
        let mut rounds = 0;
        let mut st = lock(&self.state);
        let mut batch = std::mem::take(&mut st.spare);
        loop {
            let take = st.queue.len().min(self.max_batch.saturating_add(1));
            if take == st.queue.len() {
                std::mem::swap(&mut batch, &mut st.queue);
            } else {
                batch.extend(st.queue.drain(..take));
            }
            drop(st);

            let written = writer.write_batch(batch.iter().map(|(ev, _)| ev));
            if let Err(e) = &written {
                writer.failed("write", e, batch.len());
            }
            for (i, (_, waiter)) in batch.drain(..).enumerate() {
                let answer = match &written {
                    Ok(first) => Ok(first + i as u64),
                    Err(e) => Err(AuditError::io_copy(&self.path, e)),
                };
                match waiter {
                    Waiter::Leader => *own = Some(answer),
                    // The follower may have been cancelled since.
                    Waiter::Follower(tx) => {
                        let _ = tx.send(Reply::Done(answer));
                    }
                    Waiter::Gone => {}
                }
            }
            rounds += 1;

            st = lock(&self.state);
            if st.queue.is_empty() {
                st.spare = batch;
                return Some((st, writer));
            }
            if bounded && own.is_some() && rounds >= MAX_ROUNDS {
                st.writer = Some(writer);
                if pass_on(&mut st) {
                    st.spare = batch;
                    return None;
                }
                writer = st.writer.take().expect("just parked");
            }
        }
    }

    /// See [`super::Audit::close`].
    pub(super) async fn close(&self) {
        lock(&self.state).closed = true;
        // Stop the background sync first, so that from here on only this
        // call touches the log and the head.
        let mut syncer = self.syncer.lock().await;
        if let Some(syncer) = syncer.take() {
            syncer.stop().await;
        }
        drop(syncer);
        // Take the lead once the current leader (if any) lets go. No record
        // can queue now, so nobody else will take it.
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            {
                let mut st = lock(&self.state);
                if !st.leading {
                    st.leading = true;
                    break;
                }
            }
            released.await;
        }
        // From here to the end, no await: close cannot be cancelled while
        // it holds the lead.
        blocking(|| {
            let _guard = PanicGuard(self);
            let mut st = lock(&self.state);
            if !st.finished {
                let writer = st.writer.take().expect("the writer is parked while nobody leads");
                drop(st);
                let mut unused = None;
                let (again, mut writer) = self.drain(writer, false, &mut unused).expect("unbounded drain");
                drop(again);
                let synced = writer.sync_and_move_head();
                lock(&self.head).sync();
                self.durable.settle(writer.seq(), synced);
                st = lock(&self.state);
                st.writer = Some(writer);
                st.finished = true;
            }
            st.leading = false;
        });
        self.released.notify_waiters();
    }

    /// A leader panicked: its writer state is gone. Close the log, so that
    /// every record is refused rather than queued for ever, and answer the
    /// queued ones (dropping their senders answers `Closed`).
    fn abandon(&self) {
        let queue = {
            let mut st = lock(&self.state);
            st.closed = true;
            st.finished = true;
            st.leading = false;
            std::mem::take(&mut st.queue)
        };
        drop(queue);
        self.status
            .update(|s| s.error = Some("the audit writer panicked; restart the agent".into()));
        self.released.notify_waiters();
    }
}

impl Drop for Shared {
    /// Every handle is gone without `close`: as `close` would, write what
    /// cancelled callers left queued, sync, and move the head.
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        if st.finished {
            return;
        }
        let Some(mut writer) = st.writer.take() else {
            return;
        };
        let queue = std::mem::take(&mut st.queue);
        if !queue.is_empty() {
            if let Err(e) = writer.write_batch(queue.iter().map(|(ev, _)| ev)) {
                writer.failed("write", &e, queue.len());
            }
        }
        let _ = writer.sync_and_move_head();
    }
}

/// Hands the lead to the first follower still waiting: its record becomes
/// the leader's own, and it is woken with [`Reply::Lead`] to take the
/// writer parked in `st`. False if no follower is waiting.
fn pass_on(st: &mut State) -> bool {
    for (_, waiter) in st.queue.iter_mut() {
        if !matches!(waiter, Waiter::Follower(_)) {
            continue;
        }
        let Waiter::Follower(tx) = std::mem::replace(waiter, Waiter::Leader) else {
            unreachable!("matched above")
        };
        if tx.send(Reply::Lead).is_ok() {
            return true;
        }
        // Cancelled just now.
        *waiter = Waiter::Gone;
    }
    false
}

/// A follower's wait. Dropped unanswered (the `record` future was
/// cancelled), it makes sure a lead it was handed is not lost.
struct Following<'a> {
    rx: oneshot::Receiver<Reply>,
    shared: &'a Shared,
    answered: bool,
}

impl Drop for Following<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        // After close(), no leader can send: either the lead reached us
        // before, and try_recv sees it, or the leader's send fails and it
        // looks further.
        self.rx.close();
        if let Ok(Reply::Lead) = self.rx.try_recv() {
            let mut st = lock(&self.shared.state);
            if let Some((_, waiter)) = st.queue.iter_mut().find(|(_, w)| matches!(w, Waiter::Leader)) {
                *waiter = Waiter::Gone;
            }
            if !pass_on(&mut st) {
                // Nobody is waiting: the records left (all cancelled) are
                // written by the next leader, or by close.
                st.leading = false;
                let closed = st.closed;
                drop(st);
                if closed {
                    self.shared.released.notify_waiters();
                }
            }
        }
    }
}

/// Closes the log if a leader panics while holding the writer.
struct PanicGuard<'a>(&'a Shared);

impl Drop for PanicGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.abandon();
        }
    }
}

/// Runs `f`, which blocks on the disk (close's final sync): inside
/// `block_in_place` on a multi-thread runtime (other tasks move to another
/// thread meanwhile), inline elsewhere (a current-thread runtime, or no
/// runtime).
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) if rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

#[cfg(test)]
mod tests;
