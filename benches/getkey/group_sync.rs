//! The reference for `durability = "fsync"`: the least any server can do to
//! answer a call only once a record of it is on disk. Each GetKey appends a
//! 450-byte record and waits until an fdatasync that began after the write
//! has ended; one thread runs the fdatasyncs back to back while records
//! wait, so one sync serves every record written before it began (group
//! commit). Nothing else: no chain, no MAC, no head file, no recovery.
//!
//! The layouts ([`Layout`]): records appended to a growing file, as the
//! audit log is; written in place into a file zeroed beforehand, whose size
//! never changes (a write-ahead log's layout), so an fdatasync need not
//! write the file's size; or gathered in memory and written by the sync
//! thread with O_DIRECT|O_DSYNC (one write per group, no page cache), by
//! one thread or by two whose writes overlap. They tell what a different
//! storage design for the audit log could gain on the same disk.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

use tokio::sync::oneshot;

/// Bytes per record: about the size of keywardd's fetch records in this
/// bench (452 on average).
const RECORD: usize = 450;
/// The pre-zeroed file's size; records wrap around in it.
const PREZEROED: u64 = 256 << 20;

/// Where records go.
#[derive(Clone, Copy)]
pub enum Layout {
    Append,
    Prezeroed,
    /// Records gathered in memory; a sync thread writes each group with
    /// O_DIRECT|O_DSYNC at the next 4 KiB block of a pre-zeroed file. With
    /// more than one thread, a group can start while another is written.
    Direct {
        threads: usize,
    },
}

/// The sync threads' shared account.
#[derive(Default)]
struct Groups {
    /// Records up to this one were taken by a sync.
    taken: u64,
    /// Records up to this one are on disk.
    durable: u64,
    /// Groups on disk past `durable`: first record → last.
    done: std::collections::BTreeMap<u64, u64>,
    /// [`Layout::Direct`]: where the next group is written.
    at: u64,
}

pub struct GroupSync {
    layout: Layout,
    /// The file, and how many records were written to it.
    file: Mutex<(File, u64)>,
    /// [`Layout::Direct`]: the records not written yet.
    pending: Mutex<Vec<u8>>,
    /// Which records the sync threads took and wrote.
    groups: Mutex<Groups>,
    /// Records waiting for a sync: their number, and who to tell.
    waiting: Mutex<Vec<(u64, oneshot::Sender<()>)>>,
    wake: Condvar,
}

impl GroupSync {
    /// Creates `path` and starts the sync thread.
    pub fn start(path: &Path, layout: Layout) -> Arc<GroupSync> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(matches!(layout, Layout::Prezeroed))
            .read(true)
            .write(true)
            .append(matches!(layout, Layout::Append))
            .open(path)
            .unwrap();
        if let Layout::Prezeroed | Layout::Direct { .. } = layout {
            let zeros = vec![0; 1 << 20];
            for mib in 0..PREZEROED >> 20 {
                file.write_all_at(&zeros, mib << 20).unwrap();
            }
            file.sync_all().unwrap();
        }
        let sync_handle = match layout {
            Layout::Direct { .. } => {
                use std::os::unix::fs::OpenOptionsExt;
                OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
                    .open(path)
                    .unwrap()
            }
            _ => file.try_clone().unwrap(),
        };
        let g = Arc::new(GroupSync {
            layout,
            file: Mutex::new((file, 0)),
            pending: Mutex::new(Vec::new()),
            groups: Mutex::new(Groups::default()),
            waiting: Mutex::new(Vec::new()),
            wake: Condvar::new(),
        });
        let threads = match layout {
            Layout::Direct { threads } => threads,
            _ => 1,
        };
        for _ in 0..threads {
            let t = Arc::clone(&g);
            let handle = sync_handle.try_clone().unwrap();
            std::thread::spawn(move || t.sync_thread(&handle));
        }
        g
    }

    /// Runs syncs while records wait for one.
    fn sync_thread(&self, handle: &File) {
        let mut block = AlignedBlocks::new(64);
        loop {
            // The records this sync covers: every one written by now and
            // not taken by another thread.
            let (from, to, at, bytes) = {
                let mut groups = self.groups.lock().unwrap();
                loop {
                    let written = self.file.lock().unwrap().1;
                    if written > groups.taken {
                        break;
                    }
                    groups = self.wake.wait(groups).unwrap();
                }
                let (written, bytes) = {
                    let f = self.file.lock().unwrap();
                    (f.1, std::mem::take(&mut *self.pending.lock().unwrap()))
                };
                let len = bytes.len().div_ceil(AlignedBlocks::BLOCK) as u64 * AlignedBlocks::BLOCK as u64;
                if groups.at + len > PREZEROED {
                    groups.at = 0;
                }
                let at = groups.at;
                groups.at += len;
                let from = groups.taken + 1;
                groups.taken = written;
                (from, written, at, bytes)
            };
            match self.layout {
                Layout::Direct { .. } => handle.write_all_at(block.fill(&bytes), at).unwrap(),
                _ => handle.sync_data().unwrap(),
            }
            // Answered in order: a record only once every record before it
            // is on disk too (as a chained log needs).
            let durable = {
                let mut groups = self.groups.lock().unwrap();
                groups.done.insert(from, to);
                loop {
                    let next = groups.durable + 1;
                    match groups.done.remove(&next) {
                        Some(to) => groups.durable = to,
                        None => break,
                    }
                }
                groups.durable
            };
            let done: Vec<_> = {
                let mut waiting = self.waiting.lock().unwrap();
                let (done, rest) = std::mem::take(&mut *waiting).into_iter().partition(|w| w.0 <= durable);
                *waiting = rest;
                done
            };
            for (_, tx) in done {
                let _ = tx.send(());
            }
        }
    }

    /// Writes one record and returns once it is on disk.
    pub async fn record(&self) {
        let mut rec = [b'x'; RECORD];
        rec[RECORD - 1] = b'\n';
        let n = {
            let mut f = self.file.lock().unwrap();
            match self.layout {
                Layout::Append => f.0.write_all(&rec).unwrap(),
                Layout::Prezeroed => {
                    let at = (f.1 * RECORD as u64) % (PREZEROED - RECORD as u64);
                    f.0.write_all_at(&rec, at).unwrap();
                }
                Layout::Direct { .. } => self.pending.lock().unwrap().extend_from_slice(&rec),
            }
            f.1 += 1;
            f.1
        };
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().unwrap().push((n, tx));
        // Under the lock the threads wait with, so the wake is not lost.
        drop(self.groups.lock().unwrap());
        self.wake.notify_one();
        rx.await.unwrap();
    }
}

/// A 4 KiB-aligned buffer for O_DIRECT writes.
struct AlignedBlocks {
    ptr: *mut u8,
    cap: usize,
}

// The buffer is owned by the one sync thread.
unsafe impl Send for AlignedBlocks {}

impl AlignedBlocks {
    const BLOCK: usize = 4096;

    fn new(blocks: usize) -> AlignedBlocks {
        let cap = blocks * Self::BLOCK;
        let layout = std::alloc::Layout::from_size_align(cap, Self::BLOCK).unwrap();
        // SAFETY: the layout's size is not zero.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        AlignedBlocks { ptr, cap }
    }

    /// `bytes`, padded with zeros to whole blocks, as an aligned slice.
    fn fill(&mut self, bytes: &[u8]) -> &[u8] {
        let len = bytes.len().div_ceil(Self::BLOCK).max(1) * Self::BLOCK;
        assert!(len <= self.cap, "a group of records larger than the buffer");
        // SAFETY: `ptr` is valid for `cap` bytes, owned by `self`, and
        // `bytes` is not inside it.
        let buf = unsafe { std::slice::from_raw_parts_mut(self.ptr, len) };
        buf[..bytes.len()].copy_from_slice(bytes);
        buf[bytes.len()..].fill(0);
        buf
    }
}

impl Drop for AlignedBlocks {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.cap, Self::BLOCK).unwrap();
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, layout) };
    }
}
