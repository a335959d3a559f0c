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
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::runtime::RuntimeFlavor;
use tokio::sync::{oneshot, Notify};

use super::writer::{report_failure, HeadFile, LogFile, Writer};
use super::{lock, AuditError, AuditEvent, AuditOptions, AuditStatus, Durability};

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
    pub(super) status: Arc<Mutex<AuditStatus>>,
    head: Arc<Mutex<HeadFile>>,
    path: PathBuf,
    durability: Durability,
    /// Most records in one write, the first one aside.
    max_batch: usize,
    /// The background sync thread, until `close` stops it (a tokio mutex:
    /// a second `close` waits while the first stops the thread).
    syncer: tokio::sync::Mutex<Option<Syncer>>,
}

impl Shared {
    /// The shared state around a freshly opened `writer`; with
    /// [`Durability::Write`], starts the background sync thread.
    pub(super) fn start(
        opts: &AuditOptions,
        writer: Writer,
        head: Arc<Mutex<HeadFile>>,
        status: Arc<Mutex<AuditStatus>>,
    ) -> Result<Shared, AuditError> {
        let syncer = match opts.durability {
            Durability::Fsync => None,
            Durability::Write => Some(Syncer::start(
                writer.clone_log().map_err(|e| AuditError::io(&opts.path, e))?,
                writer.seq(),
                opts,
                Arc::clone(&status),
                Arc::clone(&head),
            )?),
        };
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
            durability: opts.durability,
            max_batch: opts.max_batch,
            syncer: tokio::sync::Mutex::new(syncer),
        })
    }

    /// See [`super::Audit::record`].
    pub(super) async fn record(&self, event: AuditEvent) -> Result<u64, AuditError> {
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
        let io = || {
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
        };
        // fdatasync can take milliseconds: move this worker's other tasks
        // to another thread first. A plain write takes microseconds, which
        // a worker can afford (and block_in_place would cost a thread
        // wake-up per batch, the very thing this scheme avoids).
        match self.durability {
            Durability::Fsync => blocking(io),
            Durability::Write => io(),
        }
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
                writer.sync_and_move_head();
                lock(&self.head).sync();
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
        lock(&self.status).error = Some("the audit writer panicked; restart the agent".into());
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
        writer.sync_and_move_head();
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

/// Runs `f`, which blocks on the disk: inside `block_in_place` on a
/// multi-thread runtime (other tasks move to another thread meanwhile),
/// inline elsewhere (a current-thread runtime, or no runtime).
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) if rt.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// The background sync thread of [`Durability::Write`]: every
/// `fsync_interval`, fdatasyncs what has been written (on its own handle
/// of the log, without any lock held), then moves the head to it.
struct Syncer {
    /// Dropped or sent to: stop.
    stop: mpsc::Sender<()>,
    /// Sent as the thread's very last act.
    done: oneshot::Receiver<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Syncer {
    fn start(
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
    async fn stop(self) {
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    use super::super::tests::{fetch, opts, KEY};
    use super::super::{verify, Audit};
    use super::*;

    /// Records every `n` of `tasks` tasks on the current (multi-thread)
    /// runtime; returns all seqs, sorted.
    async fn record_from_tasks(audit: &Audit, tasks: u64, n: u64) -> Vec<u64> {
        let handles: Vec<_> = (0..tasks)
            .map(|t| {
                let audit = audit.clone();
                tokio::spawn(async move {
                    let mut seqs = Vec::new();
                    for i in 0..n {
                        seqs.push(audit.record(fetch(t * n + i)).await.unwrap());
                    }
                    seqs
                })
            })
            .collect();
        let mut seqs = Vec::new();
        for h in handles {
            let mine = h.await.unwrap();
            // One task's records are chained in the order it made them.
            assert!(mine.windows(2).all(|w| w[0] < w[1]), "{mine:?}");
            seqs.extend(mine);
        }
        seqs.sort_unstable();
        seqs
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sixteen_tasks_of_500_records_get_distinct_seqs_and_verify() {
        for durability in [Durability::Write, Durability::Fsync] {
            let dir = tempfile::tempdir().unwrap();
            let opts = opts(dir.path(), durability);
            let audit = Audit::start(opts.clone()).unwrap();
            let seqs = record_from_tasks(&audit, 16, 500).await;
            assert_eq!(seqs, (1..=8000).collect::<Vec<u64>>(), "{durability:?}");
            audit.close().await;
            let report = verify(&opts.path, &KEY).unwrap();
            assert!(report.is_ok() && report.notes.is_empty(), "{durability:?}: {report}");
            assert_eq!((report.records_checked, report.last_seq), (8000, 8000));
        }
    }

    /// A log file whose appends can be held at a gate, so that a test can
    /// keep a leader busy while others queue behind it.
    struct Gated {
        file: std::fs::File,
        gate: Arc<Gate>,
    }

    #[derive(Default)]
    struct Gate {
        state: Mutex<GateState>,
        changed: std::sync::Condvar,
    }

    #[derive(Default)]
    struct GateState {
        /// Appends that reached the gate so far.
        arrived: u64,
        /// Appends from this one on (0: the first) wait.
        hold_from: Option<u64>,
        /// The append last held.
        held: Option<u64>,
    }

    impl Gate {
        /// Holds append `n` (counted from 0) and every later one.
        fn hold_from(&self, n: u64) {
            lock(&self.state).hold_from = Some(n);
            self.changed.notify_all();
        }
        fn release(&self) {
            lock(&self.state).hold_from = None;
            self.changed.notify_all();
        }
        /// Waits (on a blocking thread) until append `n` is held.
        async fn wait_held(self: &Arc<Self>, n: u64) {
            let gate = Arc::clone(self);
            tokio::task::spawn_blocking(move || {
                let mut st = lock(&gate.state);
                while st.held != Some(n) {
                    st = gate.changed.wait(st).unwrap();
                }
            })
            .await
            .unwrap();
        }
        fn pass(&self) {
            let mut st = lock(&self.state);
            let me = st.arrived;
            st.arrived += 1;
            while st.hold_from.is_some_and(|n| me >= n) {
                st.held = Some(me);
                self.changed.notify_all();
                st = self.changed.wait(st).unwrap();
            }
        }
    }

    impl LogFile for Gated {
        fn append(&mut self, buf: &[u8]) -> std::io::Result<()> {
            self.gate.pass();
            self.file.append(buf)
        }
        fn sync(&mut self) -> std::io::Result<()> {
            self.file.sync()
        }
        fn len(&self) -> std::io::Result<u64> {
            LogFile::len(&self.file)
        }
        fn truncate(&mut self, len: u64) -> std::io::Result<()> {
            self.file.truncate(len)
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
            LogFile::read_at(&self.file, buf, offset)
        }
        fn try_clone(&self) -> std::io::Result<Box<dyn LogFile>> {
            LogFile::try_clone(&self.file)
        }
    }

    /// Opens the gate when dropped, so that a failing test ends instead of
    /// leaving a worker thread held at the gate for ever.
    struct OpenOnDrop(Arc<Gate>);

    impl Drop for OpenOnDrop {
        fn drop(&mut self) {
            self.0.release();
        }
    }

    fn start_gated(opts: &AuditOptions) -> (Audit, Arc<Gate>, OpenOnDrop) {
        let gate = Arc::new(Gate::default());
        let g = Arc::clone(&gate);
        let audit = Audit::start_with(opts.clone(), move |file| Box::new(Gated { file, gate: g })).unwrap();
        let open = OpenOnDrop(Arc::clone(&gate));
        (audit, gate, open)
    }

    fn queued(audit: &Audit) -> usize {
        lock(&audit.inner.state).queue.len()
    }

    /// Waits (briefly, for real) until `n` records are queued.
    async fn until_queued(audit: &Audit, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while queued(audit) < n {
            assert!(Instant::now() < deadline, "never {n} queued");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_follower_loses_nothing_and_keeps_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let opts = opts(dir.path(), Durability::Write);
        let (audit, gate, _open) = start_gated(&opts);
        // A leader, held in the middle of its write.
        gate.hold_from(0);
        let leader = tokio::spawn({
            let audit = audit.clone();
            async move { audit.record(fetch(1)).await }
        });
        gate.wait_held(0).await;
        // A follower cancelled at once (timeout polls it once, so it
        // queues), and another cancelled through select!.
        let cancelled = tokio::time::timeout(Duration::ZERO, audit.record(fetch(2))).await;
        assert!(
            cancelled.is_err(),
            "the record cannot be written while the leader is held"
        );
        tokio::select! {
            biased;
            _ = audit.record(fetch(3)) => panic!("written while the leader is held"),
            () = std::future::ready(()) => {}
        }
        // A follower that waits.
        let follower = tokio::spawn({
            let audit = audit.clone();
            async move { audit.record(fetch(4)).await }
        });
        until_queued(&audit, 3).await;
        gate.release();

        assert_eq!(leader.await.unwrap().unwrap(), 1);
        // The cancelled records were written in their place in the chain.
        assert_eq!(follower.await.unwrap().unwrap(), 4);
        assert_eq!(audit.record(fetch(5)).await.unwrap(), 5);
        audit.close().await;
        let report = verify(&opts.path, &KEY).unwrap();
        assert!(report.is_ok() && report.notes.is_empty(), "{report}");
        assert_eq!((report.records_checked, report.last_seq), (5, 5));
    }

    #[tokio::test]
    async fn a_follower_cancelled_after_being_handed_the_lead_passes_it_on() {
        let dir = tempfile::tempdir().unwrap();
        let opts = opts(dir.path(), Durability::Fsync);
        let audit = Audit::start(opts.clone()).unwrap();
        // Pretend a leader is at work, so that the next records queue.
        lock(&audit.inner.state).leading = true;
        let mut first = Box::pin(audit.record(fetch(1)));
        let mut second = Box::pin(audit.record(fetch(2)));
        for f in [&mut first, &mut second] {
            assert!(tokio::time::timeout(Duration::ZERO, f).await.is_err());
        }
        assert_eq!(queued(&audit), 2);
        // The pretend leader hands the lead to the first follower, which
        // is cancelled before it takes it: the lead goes to the second.
        assert!(pass_on(&mut lock(&audit.inner.state)));
        drop(first);
        assert_eq!(second.await.unwrap(), 2);
        assert!(!lock(&audit.inner.state).leading);

        // Cancelled with nobody left to pass to: the lead is let go, and
        // the next record writes the one left behind.
        lock(&audit.inner.state).leading = true;
        let mut third = Box::pin(audit.record(fetch(3)));
        assert!(tokio::time::timeout(Duration::ZERO, &mut third).await.is_err());
        assert!(pass_on(&mut lock(&audit.inner.state)));
        drop(third);
        assert!(!lock(&audit.inner.state).leading);
        assert_eq!(audit.record(fetch(4)).await.unwrap(), 4);
        audit.close().await;
        let report = verify(&opts.path, &KEY).unwrap();
        assert!(report.is_ok() && report.notes.is_empty(), "{report}");
        assert_eq!(report.last_seq, 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_busy_leader_hands_the_lead_on() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = opts(dir.path(), Durability::Write);
        // One record per batch.
        opts.max_batch = 0;
        let (audit, gate, _open) = start_gated(&opts);
        gate.hold_from(0);
        let leader = tokio::spawn({
            let audit = audit.clone();
            async move { audit.record(fetch(0)).await }
        });
        gate.wait_held(0).await;
        let rounds = MAX_ROUNDS as u64;
        let followers: Vec<_> = (1..=2 * rounds)
            .map(|i| {
                let audit = audit.clone();
                tokio::spawn(async move { audit.record(fetch(i)).await })
            })
            .collect();
        until_queued(&audit, 2 * MAX_ROUNDS).await;
        // The first leader writes MAX_ROUNDS batches and returns; the next
        // batch is written by the follower it handed the lead to.
        gate.hold_from(rounds);
        let first = tokio::time::timeout(Duration::from_secs(10), leader).await;
        assert_eq!(first.expect("the first leader handed the lead on").unwrap().unwrap(), 1);
        gate.wait_held(rounds).await;
        assert_eq!(audit.status().sequence, rounds);
        assert!(lock(&audit.inner.state).leading);
        gate.release();
        let mut seqs = Vec::new();
        for f in followers {
            seqs.push(f.await.unwrap().unwrap());
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (2..=2 * rounds + 1).collect::<Vec<_>>());
        audit.close().await;
        let report = verify(&opts.path, &KEY).unwrap();
        assert!(report.is_ok() && report.notes.is_empty(), "{report}");
    }

    #[tokio::test]
    async fn dropping_every_handle_without_close_syncs_and_moves_the_head() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = opts(dir.path(), Durability::Write);
        opts.fsync_interval = Duration::from_secs(3600);
        let audit = Audit::start(opts.clone()).unwrap();
        for i in 0..3 {
            audit.record(fetch(i)).await.unwrap();
        }
        drop(audit);
        let head = std::fs::read(super::super::head_path(&opts.path)).unwrap();
        let head = super::super::decode_head(&KEY, &head).unwrap().unwrap();
        assert_eq!(head.seq, 3);
        let report = verify(&opts.path, &KEY).unwrap();
        assert!(report.is_ok() && report.notes.is_empty(), "{report}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn close_while_records_are_in_flight_leaves_a_verifying_log() {
        for durability in [Durability::Write, Durability::Fsync] {
            let dir = tempfile::tempdir().unwrap();
            let opts = opts(dir.path(), durability);
            let audit = Audit::start(opts.clone()).unwrap();
            let written = Arc::new(AtomicU64::new(0));
            let tasks: Vec<_> = (0..16)
                .map(|t| {
                    let (audit, written) = (audit.clone(), Arc::clone(&written));
                    tokio::spawn(async move {
                        let mut last = 0;
                        for i in 0.. {
                            match audit.record(fetch(t * 1_000_000 + i)).await {
                                Ok(seq) => {
                                    assert!(seq > last);
                                    last = seq;
                                    written.fetch_add(1, Ordering::SeqCst);
                                }
                                Err(AuditError::Closed) => return,
                                Err(e) => panic!("{e}"),
                            }
                        }
                    })
                })
                .collect();
            // Let records flow, then close in the middle of them (twice at
            // once: the second waits for the first).
            while written.load(Ordering::SeqCst) < 200 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let (a, b) = (audit.clone(), audit.clone());
            tokio::join!(a.close(), b.close());
            for t in tasks {
                t.await.unwrap();
            }
            let written = written.load(Ordering::SeqCst);
            assert!(matches!(audit.record(fetch(0)).await, Err(AuditError::Closed)));
            assert_eq!(audit.status().sequence, written);
            // Every answered record is there, nothing else, and the head
            // names the last one.
            let report = verify(&opts.path, &KEY).unwrap();
            assert!(report.is_ok() && report.notes.is_empty(), "{durability:?}: {report}");
            assert_eq!((report.records_checked, report.last_seq), (written, written));
        }
    }
}
