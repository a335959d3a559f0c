//! Group commit tests: concurrent and cancelled callers, hand-over of the lead, and closing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::super::tests::{fetch, opts, KEY};
use super::super::writer::LogFile;
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

/// The `LogFile` methods a test wrapper passes straight to its `file`.
macro_rules! delegate_to_file {
    () => {
        fn len(&self) -> std::io::Result<u64> {
            LogFile::len(&self.file)
        }
        fn truncate(&mut self, len: u64) -> std::io::Result<()> {
            self.file.truncate(len)
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
            LogFile::read_at(&self.file, buf, offset)
        }
    };
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
    delegate_to_file!();
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
    let status = Arc::clone(&audit.inner.status);
    drop(audit);
    // The sync thread stops too (it held the last other reference).
    let deadline = Instant::now() + Duration::from_secs(10);
    while Arc::strong_count(&status) > 1 {
        assert!(Instant::now() < deadline, "the sync thread outlived the log");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let head = std::fs::read(super::super::head::head_path(&opts.path)).unwrap();
    let head = super::super::head::decode_head(&KEY, &head).unwrap().unwrap();
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

/// What a [`Synced`] log file's syncs saw, shared by its clones (the sync
/// thread syncs a clone).
#[derive(Default)]
struct SyncLog {
    syncs: AtomicU64,
    /// The file's length when the last successful sync started: every
    /// byte before it is on disk.
    durable_len: AtomicU64,
    /// Each sync takes this long, as a disk's flush does.
    delay_ms: AtomicU64,
    fail: std::sync::atomic::AtomicBool,
}

/// A log file whose syncs are slow (and can fail), counted and noted.
struct Synced {
    file: std::fs::File,
    log: Arc<SyncLog>,
}

impl LogFile for Synced {
    fn append(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.file.append(buf)
    }
    fn sync(&mut self) -> std::io::Result<()> {
        let len = LogFile::len(&self.file)?;
        std::thread::sleep(Duration::from_millis(self.log.delay_ms.load(Ordering::SeqCst)));
        if self.log.fail.load(Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        self.file.sync()?;
        self.log.syncs.fetch_add(1, Ordering::SeqCst);
        self.log.durable_len.fetch_max(len, Ordering::SeqCst);
        Ok(())
    }
    delegate_to_file!();
    fn try_clone(&self) -> std::io::Result<Box<dyn LogFile>> {
        Ok(Box::new(Synced {
            file: self.file.try_clone()?,
            log: Arc::clone(&self.log),
        }))
    }
}

fn start_synced(opts: &AuditOptions, delay_ms: u64) -> (Audit, Arc<SyncLog>) {
    let log = Arc::new(SyncLog::default());
    log.delay_ms.store(delay_ms, Ordering::SeqCst);
    let l = Arc::clone(&log);
    let audit = Audit::start_with(opts.clone(), move |file| Box::new(Synced { file, log: l })).unwrap();
    (audit, log)
}

/// A file sealed since the sync thread's last round is synced, with its
/// directory, before close moves the head past it: with a long
/// `fsync_interval` the thread never ran, and close used to sync only the
/// new live file, leaving the sealed file's last records and its seal only
/// in the page cache while the head named records after them.
#[tokio::test]
async fn close_syncs_a_file_sealed_since_the_last_round_before_moving_the_head() {
    let dir = tempfile::tempdir().unwrap();
    let opts = AuditOptions {
        fsync_interval: Duration::from_secs(3600),
        segment_size: 1024,
        ..opts(dir.path(), Durability::Write)
    };
    let (audit, log) = start_synced(&opts, 0);
    let mut i = 0;
    while crate::audit::segments::list_segments(&opts.path).unwrap().is_empty() {
        audit.record(fetch(i)).await.unwrap();
        i += 1;
    }
    audit.close().await;
    let sealed = &crate::audit::segments::list_segments(&opts.path).unwrap()[0].path;
    assert_eq!(
        log.durable_len.load(Ordering::SeqCst),
        std::fs::metadata(sealed).unwrap().len(),
        "the sealed file was synced through its seal record"
    );
}

/// How many whole records the first `len` bytes of the log hold.
fn records_in(path: &std::path::Path, len: u64) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    bytes[..len as usize].iter().filter(|b| **b == b'\n').count() as u64
}

/// Power-safe mode's group commit: a record is answered only once a sync
/// covers it, and one sync covers every record written while the one
/// before it ran. On a current-thread runtime, a leader that synced its
/// own batch would block the only thread, so nobody could queue behind it
/// and every record would cost its own sync (320 here); with the sync on
/// its own thread, the 16 callers share them (about 50 here: a sync starts
/// as soon as the one before ends, often with only the first few callers
/// back, and the next takes the rest).
#[tokio::test(flavor = "current_thread")]
async fn one_sync_serves_every_record_written_while_the_one_before_ran() {
    let dir = tempfile::tempdir().unwrap();
    let opts = opts(dir.path(), Durability::Fsync);
    let (audit, syncs) = start_synced(&opts, 5);
    let path = opts.path.clone();
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let (audit, syncs, path) = (audit.clone(), Arc::clone(&syncs), path.clone());
            tokio::spawn(async move {
                for i in 0..20 {
                    let seq = audit.record(fetch(t * 100 + i)).await.unwrap();
                    // Answered only once it is on disk.
                    let durable = syncs.durable_len.load(Ordering::SeqCst);
                    assert!(
                        records_in(&path, durable) >= seq,
                        "record {seq} answered before a sync covered it"
                    );
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let n = syncs.syncs.load(Ordering::SeqCst);
    assert!(n <= 80, "320 records took {n} syncs: callers did not share them");
    audit.close().await;
    let report = verify(&opts.path, &KEY).unwrap();
    assert!(report.is_ok() && report.notes.is_empty(), "{report}");
    assert_eq!(report.last_seq, 320);
    // The head names the last record (moved only after a sync).
    let head = std::fs::read(super::super::head::head_path(&opts.path)).unwrap();
    assert_eq!(super::super::head::decode_head(&KEY, &head).unwrap().unwrap().seq, 320);
}

/// A sync that fails refuses the records waiting for it (the fetch fails
/// closed) and says so in the status; the next record is synced again and
/// answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sync_refuses_the_records_it_was_to_cover() {
    let dir = tempfile::tempdir().unwrap();
    let opts = opts(dir.path(), Durability::Fsync);
    let (audit, syncs) = start_synced(&opts, 0);
    assert_eq!(audit.record(fetch(1)).await.unwrap(), 1);
    syncs.fail.store(true, Ordering::SeqCst);
    let err = audit.record(fetch(2)).await.unwrap_err();
    assert!(matches!(err, AuditError::Io { .. }), "{err}");
    assert!(audit.status().error.unwrap().contains("sync failed"));
    syncs.fail.store(false, Ordering::SeqCst);
    assert_eq!(audit.record(fetch(3)).await.unwrap(), 3);
    audit.close().await;
    let report = verify(&opts.path, &KEY).unwrap();
    assert!(report.is_ok(), "{report}");
}
