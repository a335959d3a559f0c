//! The log file as the writer sees it ([`LogFile`]), so that tests can make
//! its writes, and the link and rename of a seal, fail.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The log file as the writer uses it: appends, syncs, cuts back a failed
/// batch, and reads its tail. A trait so tests can make writes fail.
pub(in crate::audit) trait LogFile: Send {
    /// Appends all of `buf` (the file is opened with O_APPEND).
    fn append(&mut self, buf: &[u8]) -> io::Result<()>;
    /// fdatasync.
    fn sync(&mut self) -> io::Result<()>;
    /// Current length.
    fn len(&self) -> io::Result<u64>;
    /// ftruncate.
    fn truncate(&mut self, len: u64) -> io::Result<()>;
    /// Fills `buf` from `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Another handle on the same open file, for the background sync.
    fn try_clone(&self) -> io::Result<Box<dyn LogFile>>;
    /// Device and inode, to tell whether the path still names this file.
    fn id(&self) -> io::Result<(u64, u64)> {
        Err(io::ErrorKind::Unsupported.into())
    }
    /// Gives this file, named `path`, the other name `name` (a hard link):
    /// a segment's name at its seal.
    fn link_as(&self, path: &Path, name: &Path) -> io::Result<()> {
        std::fs::hard_link(path, name)
    }
    /// Renames `next` over `path`, this file's name: the next live file
    /// takes its place at a seal.
    fn replace_with(&self, next: &Path, path: &Path) -> io::Result<()> {
        std::fs::rename(next, path)
    }
}

impl LogFile for File {
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        io::Write::write_all(self, buf)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.sync_data()
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.set_len(len)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read_exact_at(buf, offset)
    }
    fn try_clone(&self) -> io::Result<Box<dyn LogFile>> {
        Ok(Box::new(File::try_clone(self)?))
    }
    fn id(&self) -> io::Result<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let m = self.metadata()?;
        Ok((m.dev(), m.ino()))
    }
}
