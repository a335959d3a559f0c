//! Ownership and mode checks on the agent's state, as ssh does for its keys.
//!
//! Invariant: keyward reads no secret file and writes into no directory that
//! another user could have written or swapped, and it never follows a
//! symlink inside its state. Every refusal names the path and the command
//! that fixes it.

use std::fs::{DirBuilder, Metadata};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::Path;

use super::error::StoreError;

/// What a path is expected to be.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A secret file: no group or other bits at all.
    File,
    /// A directory of state: no group or other write bits.
    Dir,
}

impl Kind {
    fn noun(self) -> &'static str {
        match self {
            Kind::File => "a regular file",
            Kind::Dir => "a directory",
        }
    }

    /// Mode bits that must be clear.
    fn forbidden_bits(self) -> u32 {
        match self {
            Kind::File => 0o077,
            Kind::Dir => 0o022,
        }
    }

    fn chmod(self) -> &'static str {
        match self {
            Kind::File => "600",
            Kind::Dir => "700",
        }
    }
}

/// The effective uid of this process: the owner every state file must have.
pub(crate) fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Checks that `path` is a regular file (not a symlink), owned by the
/// effective uid, with no group or other permission bits (`mode & 0o077 == 0`).
///
/// Errors: [`StoreError::Invalid`] for a symlink or a non-regular file,
/// [`StoreError::Permissions`] (with the `chmod`/`chown` to run) for a wrong
/// owner or loose mode, [`StoreError::Io`] if it cannot be examined.
pub fn check_private(path: &Path) -> Result<(), StoreError> {
    check_path(path, Kind::File)
}

/// Checks that `path` is a directory (not a symlink), owned by the effective
/// uid, with no group or other write bits (`mode & 0o022 == 0`).
///
/// Errors as for [`check_private`]; the suggested fix is `chmod 700`.
pub fn check_private_dir(path: &Path) -> Result<(), StoreError> {
    check_path(path, Kind::Dir)
}

fn check_path(path: &Path, kind: Kind) -> Result<(), StoreError> {
    let meta = std::fs::symlink_metadata(path).map_err(|source| StoreError::Io {
        path: path.to_owned(),
        source,
    })?;
    check_metadata(path, &meta, kind)
}

/// The checks of [`check_private`] / [`check_private_dir`] on metadata already
/// in hand (from `symlink_metadata`, or `fstat` of a file opened with
/// `O_NOFOLLOW`, so the check applies to the very file that is read).
pub(crate) fn check_metadata(path: &Path, meta: &Metadata, kind: Kind) -> Result<(), StoreError> {
    let ft = meta.file_type();
    if ft.is_symlink() {
        return Err(symlink_error(path));
    }
    let right_type = match kind {
        Kind::File => ft.is_file(),
        Kind::Dir => ft.is_dir(),
    };
    if !right_type {
        return Err(StoreError::Invalid(format!(
            "{} is not {}; keyward expects {} there: move it away",
            path.display(),
            kind.noun(),
            kind.noun()
        )));
    }
    let mode = meta.mode() & 0o7777;
    let uid = meta.uid();
    let me = euid();
    let loose = mode & kind.forbidden_bits() != 0;
    let fix = match (uid != me, loose) {
        (false, false) => return Ok(()),
        (true, false) => format!("run `chown {me} {}`", path.display()),
        (false, true) => format!("run `chmod {} {}`", kind.chmod(), path.display()),
        (true, true) => format!(
            "run `chown {me} {p} && chmod {m} {p}`",
            p = path.display(),
            m = kind.chmod()
        ),
    };
    Err(StoreError::Permissions {
        path: path.to_owned(),
        mode,
        uid,
        fix,
    })
}

/// The refusal for a symlink inside the state.
pub(crate) fn symlink_error(path: &Path) -> StoreError {
    StoreError::Invalid(format!(
        "{} is a symlink; keyward never follows symlinks in its state: replace it with the file itself",
        path.display()
    ))
}

/// Creates `path` (and missing parents) with mode 0700 if it does not exist,
/// then checks it with [`check_private_dir`].
pub(crate) fn ensure_private_dir(path: &Path) -> Result<(), StoreError> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .map_err(|source| StoreError::Io {
                    path: path.to_owned(),
                    source,
                })?;
            tracing::info!(path = %path.display(), "created directory (mode 0700)");
        }
        Err(source) => {
            return Err(StoreError::Io {
                path: path.to_owned(),
                source,
            })
        }
    }
    check_private_dir(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{self, Permissions};
    use std::os::unix::fs::PermissionsExt;

    fn chmod(p: &Path, mode: u32) {
        fs::set_permissions(p, Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn file_modes() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        fs::write(&f, b"x").unwrap();
        for (mode, ok) in [
            (0o600, true),
            (0o400, true),
            (0o700, true),
            (0o640, false),
            (0o604, false),
            (0o644, false),
        ] {
            chmod(&f, mode);
            let r = check_private(&f);
            assert_eq!(r.is_ok(), ok, "{mode:o}");
            if let Err(e) = r {
                let msg = e.to_string();
                assert!(
                    msg.contains("chmod 600") && msg.contains(&f.display().to_string()),
                    "{msg}"
                );
            }
        }
    }

    #[test]
    fn dir_modes() {
        let d = tempfile::tempdir().unwrap();
        let sub = d.path().join("sub");
        ensure_private_dir(&sub).unwrap();
        assert_eq!(fs::metadata(&sub).unwrap().mode() & 0o777, 0o700);
        chmod(&sub, 0o755);
        check_private_dir(&sub).unwrap();
        chmod(&sub, 0o775);
        let msg = check_private_dir(&sub).unwrap_err().to_string();
        assert!(msg.contains("chmod 700"), "{msg}");
        // A file is not a directory, and a directory is not a file.
        assert!(matches!(check_private(&sub), Err(StoreError::Invalid(_))));
    }

    #[test]
    fn wrong_owner_says_chown() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        fs::write(&f, b"x").unwrap();
        chmod(&f, 0o600);
        let other = if euid() == 0 { 1 } else { euid() + 1 };
        if nix::unistd::chown(&f, Some(nix::unistd::Uid::from_raw(other)), None).is_err() {
            return; // not root: cannot give a file away; nothing to test
        }
        let msg = check_private(&f).unwrap_err().to_string();
        assert!(msg.contains(&format!("chown {}", euid())), "{msg}");
    }

    #[test]
    fn symlinks_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        fs::write(&f, b"x").unwrap();
        chmod(&f, 0o600);
        let l = d.path().join("l");
        std::os::unix::fs::symlink(&f, &l).unwrap();
        let msg = check_private(&l).unwrap_err().to_string();
        assert!(msg.contains("is a symlink"), "{msg}");
        let ld = d.path().join("ld");
        std::os::unix::fs::symlink(d.path(), &ld).unwrap();
        assert!(check_private_dir(&ld).unwrap_err().to_string().contains("symlink"));
    }
}
