//! Crash-safe file replacement and symlink-proof reads.
//!
//! Invariant: a crash during a write leaves the old file or the new one,
//! never a torn one. The new content goes to a temp file in the same
//! directory (`.<name>.tmp-<random>`, created 0600 with `O_EXCL`), is fsynced,
//! renamed over the target, and the directory is fsynced so the rename
//! itself is durable. On any error the temp file is removed and the target
//! is untouched.

use std::fs::{Metadata, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use zeroize::Zeroizing;

use super::error::StoreError;
use super::perms::{self, Kind};

/// Infix of every temp file name; a file named `.<name>.age<TEMP_INFIX>…` is
/// never a committed state.
pub(crate) const TEMP_INFIX: &str = ".tmp-";

/// Whether an existing target may be replaced.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Rename over the target (`rename(2)`).
    Replace,
    /// Fail with `AlreadyExists` if the target exists (link + unlink).
    CreateNew,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `contents` to `dir/file_name` atomically with mode 0600.
pub(crate) fn write_file(dir: &Path, file_name: &str, contents: &[u8], mode: Mode) -> Result<(), StoreError> {
    let prefix = format!(".{file_name}{TEMP_INFIX}");
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix("")
        .rand_bytes(12)
        .permissions(Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(io_err(dir))?;
    // From here on, dropping `tmp` (on any early return) removes the file.
    tmp.write_all(contents).map_err(io_err(tmp.path()))?;
    tmp.as_file().sync_all().map_err(io_err(tmp.path()))?;
    let target = dir.join(file_name);
    let persisted = match mode {
        Mode::Replace => tmp.persist(&target),
        Mode::CreateNew => tmp.persist_noclobber(&target),
    };
    // A `PersistError` owns the temp file; dropping it removes the file.
    persisted.map_err(|e| StoreError::Io {
        path: target.clone(),
        source: e.error,
    })?;
    sync_dir(dir)
}

/// Removes `path` and makes the removal durable.
pub(crate) fn remove_file(path: &Path) -> Result<(), StoreError> {
    std::fs::remove_file(path).map_err(io_err(path))?;
    match path.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

/// Fsyncs a directory, so renames and unlinks in it survive a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Reads a private regular file without following a symlink at its last
/// component, checking the opened file itself (`fstat`) with
/// [`perms::check_private`]'s rules. Refuses files over `max_len` bytes.
///
/// The buffer is zeroizing: callers read identities and keys with it.
pub(crate) fn read_private(path: &Path, max_len: u64) -> Result<(Metadata, Zeroizing<Vec<u8>>), StoreError> {
    // O_NONBLOCK: a FIFO planted in the state cannot hang the agent at open.
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| match source.raw_os_error() {
            Some(libc::ELOOP) => perms::symlink_error(path),
            _ => StoreError::Io {
                path: path.to_owned(),
                source,
            },
        })?;
    let meta = file.metadata().map_err(io_err(path))?;
    perms::check_metadata(path, &meta, Kind::File)?;
    if meta.len() > max_len {
        return Err(StoreError::Invalid(format!(
            "{} is {} bytes; keyward reads at most {max_len} bytes there: is it the right file?",
            path.display(),
            meta.len()
        )));
    }
    let bytes = read_to_end_zeroizing(&mut file, meta.len() as usize).map_err(io_err(path))?;
    Ok((meta, bytes))
}

/// Reads all of `r`, expecting at most `expected` bytes, into a zeroizing
/// buffer allocated once (a growing `Vec` would leave copies of the secret
/// in freed memory).
pub(crate) fn read_to_end_zeroizing(r: &mut impl Read, expected: usize) -> io::Result<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(vec![0u8; expected + 1]);
    let mut n = 0;
    loop {
        if n == buf.len() {
            return Err(io::Error::other(format!(
                "more than the expected {expected} bytes (did the file change while it was read?)"
            )));
        }
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(n);
    Ok(buf)
}

/// Whether `file_name` is one of our temp files for a `.age` file.
pub(crate) fn is_temp_key_file(file_name: &str) -> bool {
    file_name
        .strip_prefix('.')
        .and_then(|rest| rest.split_once(&format!(".age{TEMP_INFIX}")))
        .is_some_and(|(stem, _)| !stem.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn replace_and_create_new() {
        let d = tempfile::tempdir().unwrap();
        write_file(d.path(), "a.age", b"one", Mode::Replace).unwrap();
        write_file(d.path(), "a.age", b"two", Mode::Replace).unwrap();
        let p = d.path().join("a.age");
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        let e = write_file(d.path(), "a.age", b"three", Mode::CreateNew).unwrap_err();
        assert!(matches!(e, StoreError::Io { ref source, .. } if source.kind() == io::ErrorKind::AlreadyExists));
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(entries(d.path()), ["a.age"]);
    }

    #[test]
    fn failed_rename_leaves_no_temp_file() {
        let d = tempfile::tempdir().unwrap();
        // A non-empty directory where the file should go: rename(2) fails.
        std::fs::create_dir_all(d.path().join("a.age/x")).unwrap();
        assert!(write_file(d.path(), "a.age", b"one", Mode::Replace).is_err());
        assert_eq!(entries(d.path()), ["a.age"]);
    }

    #[test]
    fn temp_names() {
        assert!(is_temp_key_file(".billing-api.age.tmp-abc123"));
        assert!(is_temp_key_file(".a.age.tmp-"));
        assert!(!is_temp_key_file("billing-api.age"));
        assert!(!is_temp_key_file(".age.tmp-x"));
        assert!(!is_temp_key_file(".billing-api.age"));
    }

    #[test]
    fn read_private_refuses_symlinks_and_big_files() {
        let d = tempfile::tempdir().unwrap();
        write_file(d.path(), "f", b"hello", Mode::Replace).unwrap();
        let f = d.path().join("f");
        let (_, bytes) = read_private(&f, 100).unwrap();
        assert_eq!(&bytes[..], b"hello");
        assert!(read_private(&f, 4).is_err());
        let l = d.path().join("l");
        std::os::unix::fs::symlink(&f, &l).unwrap();
        let msg = read_private(&l, 100).unwrap_err().to_string();
        assert!(msg.contains("symlink"), "{msg}");
    }
}
