//! Hot reload, the store's side: what a key file written into the store by
//! another tool (config management, `age -e`, a fleet sync) means for its
//! key. The watcher and the debounce live in `server::reload`; this module
//! reads one file, decides, and commits.
//!
//! Invariants:
//! - A rejected file changes nothing: not memory, and nothing on disk is
//!   deleted or rewritten. The last good state keeps serving.
//! - A file that decodes to exactly the state in memory (generation,
//!   rotation state, versions and history) is the agent's own write and is
//!   a no-op. The file is read and compared with memory under the lock that
//!   serializes commits, so whatever order (or how late) the events of a
//!   commit arrive in, the file and memory are seen at one consistent point.
//! - A key's generation never goes backwards: a file applied to a loaded key
//!   gives the current generation + 1; a new key keeps its file's generation
//!   (at least 1).
//! - An applied file goes through [`Store::commit`], so it is rewritten in
//!   the agent's record format with its new generation: the generation
//!   survives a restart, and the rewrite's own events are no-ops.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use super::perms::{self, Kind};
use super::{atomic, record, Store, MAX_KEY_FILE};
use crate::keyset::{KeySetState, Version};
use crate::rotation::next_step;
use crate::secret::{KeyRef, Secret};

/// What a path seen by the watcher is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathClass {
    /// The file of this key.
    Key(KeyRef),
    /// Not a key file: a temp file (`.`-prefixed, `*.tmp*`), another
    /// extension, or outside the configured environments' directories.
    Ignored,
    /// A `*.age` file whose name is not a valid key name; the reason says
    /// what to do.
    BadName(String),
}

/// What an applied file held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A full keyward record (`keyward-keyset v1`), with the generation it
    /// carried.
    Record {
        /// The generation written in the file (not the one applied).
        file_generation: u64,
    },
    /// A bare secret (e.g. from `age -e`), applied as a new primary.
    RawSecret,
}

impl FileKind {
    /// "keyward record" or "raw secret", for logs and the audit.
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::Record { .. } => "keyward record",
            FileKind::RawSecret => "raw secret",
        }
    }
}

/// What [`Store::reload_file`] did.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// The file holds the state already in memory: the agent's own write.
    Unchanged,
    /// No file and no key: the key was deleted through keyward (or never
    /// existed). Nothing to do.
    Gone,
    /// A directory with a key file's name: not a key file, ignored.
    NotAFile,
    /// The file is gone but the key is loaded: it was removed outside
    /// keyward. Memory keeps serving `current`.
    RemovedOutside {
        /// What keeps serving.
        current: Arc<KeySetState>,
    },
    /// The file was applied and rewritten in the record format.
    Applied {
        /// The state before (none for a new key).
        before: Option<Arc<KeySetState>>,
        /// The state now serving.
        after: Arc<KeySetState>,
        /// What the file held.
        kind: FileKind,
    },
    /// A raw secret equal to the current primary: no new version; the file
    /// was rewritten in the record format (so a restart loads it) with the
    /// state and generation unchanged.
    Normalized {
        /// The state, unchanged.
        current: Arc<KeySetState>,
    },
    /// The file was not applied; memory and disk are unchanged.
    Rejected {
        /// What keeps serving, if the key is loaded.
        current: Option<Arc<KeySetState>>,
        /// Why, and what to do.
        reason: String,
    },
}

/// A key file's decrypted content.
pub enum FileContent {
    /// A decoded, validated record.
    Record(Box<KeySetState>),
    /// A bare secret, as a version (its number is assigned by [`plan`]).
    Raw(Version),
}

/// What to do with a file's content, given the key's current state.
#[derive(Debug)]
pub enum Plan {
    /// It is exactly the current state.
    Unchanged,
    /// A raw secret equal to the current primary: rewrite the current state.
    Rewrite,
    /// Commit this state.
    Apply(Box<KeySetState>, FileKind),
}

/// Decides what `content`, read from `key`'s file, does to the key whose
/// current state is `current`. Pure: no I/O. `Err` is the reason the file is
/// rejected.
pub fn plan(
    key: &KeyRef,
    current: Option<&KeySetState>,
    content: FileContent,
    now: SystemTime,
) -> Result<Plan, String> {
    match content {
        FileContent::Record(mut file) => {
            let file_generation = file.generation;
            let kind = FileKind::Record { file_generation };
            match current {
                None => {
                    file.generation = file_generation.max(1);
                    Ok(Plan::Apply(file, kind))
                }
                Some(cur) if same_state(cur, &file) => Ok(Plan::Unchanged),
                Some(cur) => {
                    check_no_reuse(cur, &file)?;
                    file.generation = cur.generation + 1;
                    Ok(Plan::Apply(file, kind))
                }
            }
        }
        FileContent::Raw(mut version) => match current {
            None => {
                version.number = 1;
                Ok(Plan::Apply(
                    Box::new(KeySetState::create(key.clone(), version)),
                    FileKind::RawSecret,
                ))
            }
            Some(cur) if cur.primary.fingerprint == version.fingerprint => Ok(Plan::Rewrite),
            Some(cur) => match crate::rotation::overwrite(cur, version, now) {
                Ok(next) => Ok(Plan::Apply(Box::new(next), FileKind::RawSecret)),
                Err(_) => Err(format!(
                    "{} is mid-rotation ({}); finish or abort the rotation first: a raw secret would replace both its keys ({})",
                    cur.key,
                    cur.state.as_str(),
                    next_step(cur)
                )),
            },
        },
    }
}

/// Whether two states are the same committed state: what a file the agent
/// wrote decodes to (see the store's invariant on times).
pub(crate) fn same_state(a: &KeySetState, b: &KeySetState) -> bool {
    a.generation == b.generation
        && a.state == b.state
        && a.primary.meta() == b.primary.meta()
        && a.fallback.as_ref().map(Version::meta) == b.fallback.as_ref().map(Version::meta)
        && a.history == b.history
}

/// Version numbers are never reused within a key: a live version of the
/// file that has the number of a version the key has (or had) must hold the
/// same secret.
pub(crate) fn check_no_reuse(current: &KeySetState, file: &KeySetState) -> Result<(), String> {
    let known = std::iter::once(current.primary.meta())
        .chain(current.fallback.as_ref().map(Version::meta))
        .chain(current.history.iter().cloned());
    for old in known {
        for new in std::iter::once(&file.primary).chain(file.fallback.as_ref()) {
            if new.number == old.number && new.fingerprint != old.fingerprint {
                return Err(format!(
                    "version {} in the file holds a different secret than version {} of {} (fingerprint {} in the file, {} in the agent): version numbers are never reused; give the new secret a new number, or write it as a raw secret",
                    new.number, old.number, current.key, new.fingerprint, old.fingerprint
                ));
            }
        }
    }
    Ok(())
}

/// How the file at a path was found.
enum Found {
    Missing,
    Directory,
    Content(Box<FileContent>),
}

impl Store {
    /// What the watcher's `path` is: a key file of a configured environment,
    /// a file to ignore, or a `*.age` file with a bad name.
    ///
    /// Temp files are every `.`-prefixed name and every name containing
    /// `.tmp` (so a tool's `x.age.tmp` or `.x.age.swp` never counts).
    pub fn classify_path(&self, path: &Path) -> PathClass {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return PathClass::Ignored;
        };
        let Some(env) = self.environments.iter().find(|env| parent == self.dir.join(env)) else {
            return PathClass::Ignored;
        };
        let Some(name) = name.to_str() else {
            use std::os::unix::ffi::OsStrExt;
            if name.as_bytes().ends_with(b".age") && !name.as_bytes().starts_with(b".") {
                return PathClass::BadName("its name is not UTF-8; rename it to NAME.age".to_owned());
            }
            return PathClass::Ignored;
        };
        if name.starts_with('.') || name.contains(".tmp") {
            return PathClass::Ignored;
        }
        let Some(stem) = name.strip_suffix(".age") else {
            return PathClass::Ignored;
        };
        match KeyRef::new(env, stem) {
            Ok(key) => PathClass::Key(key),
            Err(e) => PathClass::BadName(format!("the file name is not a valid key: {e}; rename it to NAME.age")),
        }
    }

    /// Reads `key`'s file as another tool left it and applies it (see the
    /// module docs), committing it like [`Store::commit`] does.
    ///
    /// The caller must hold the lock that serializes commits (the agent's
    /// admin lock) for the whole call: the no-op check compares the file
    /// with memory and relies on no commit running in between.
    pub fn reload_file(&self, key: &KeyRef, max_secret_bytes: usize) -> ReloadOutcome {
        let current = self.get(key);
        let reject = |reason: String| ReloadOutcome::Rejected {
            current: current.clone(),
            reason,
        };
        let now = SystemTime::now();
        let content = match self.read_changed_file(key, max_secret_bytes, now) {
            Ok(Found::Content(c)) => *c,
            Ok(Found::Directory) => return ReloadOutcome::NotAFile,
            Ok(Found::Missing) => {
                return match current.clone() {
                    Some(current) => ReloadOutcome::RemovedOutside { current },
                    None => ReloadOutcome::Gone,
                }
            }
            Err(reason) => return reject(reason),
        };
        match plan(key, current.as_deref(), content, now) {
            Ok(Plan::Unchanged) => ReloadOutcome::Unchanged,
            Ok(Plan::Rewrite) => {
                let Some(cur) = current.clone() else {
                    return ReloadOutcome::Unchanged;
                };
                match self.write_state((*cur).clone()) {
                    Ok(current) => ReloadOutcome::Normalized { current },
                    Err(e) => reject(format!("cannot rewrite it in keyward's record format: {e}")),
                }
            }
            Ok(Plan::Apply(next, kind)) => self.apply(current.clone(), *next, kind),
            Err(reason) => reject(reason),
        }
    }

    fn apply(&self, before: Option<Arc<KeySetState>>, next: KeySetState, kind: FileKind) -> ReloadOutcome {
        match self.write_state(next) {
            Ok(after) => ReloadOutcome::Applied { before, after, kind },
            Err(e) => ReloadOutcome::Rejected {
                current: before,
                reason: format!("cannot commit it (the file is left as it was): {e}"),
            },
        }
    }

    /// Reads, checks, decrypts and decodes `key`'s file. `Err` is the
    /// reason it is rejected. Never follows a symlink, never reads a file
    /// with loose permissions or another owner.
    fn read_changed_file(&self, key: &KeyRef, max_secret_bytes: usize, now: SystemTime) -> Result<Found, String> {
        let path = self.key_path(key);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Missing),
            Err(e) => return Err(format!("cannot examine it: {e}")),
        };
        let file_type = meta.file_type();
        if file_type.is_symlink() {
            return Err(perms::symlink_error(&path).to_string());
        }
        if file_type.is_dir() {
            return Ok(Found::Directory);
        }
        perms::check_metadata(&path, &meta, Kind::File).map_err(|e| e.to_string())?;
        // Bounded before decryption: two secrets, the metadata line and
        // age's framing (16 bytes per 64 KiB chunk, plus a header).
        let plain_max = 2 * max_secret_bytes as u64 + record::MAX_META_LEN as u64 + record::HEADER.len() as u64;
        let file_max = (plain_max + plain_max / 4096 + 64 * 1024).min(MAX_KEY_FILE);
        // read_private re-checks the opened file itself (O_NOFOLLOW, fstat).
        let (_, ciphertext) = atomic::read_private(&path, file_max).map_err(|e| e.to_string())?;
        let recipient = self.identity.recipient();
        let mut plaintext = self.identity.decrypt(&ciphertext).map_err(|e| {
            // age's messages may span lines (a hint after the error): keep one log line.
            let e = e.to_string().replace('\n', " ");
            format!("cannot decrypt it with the agent identity ({e}): is it encrypted to {recipient}? (`age -r {recipient}`); a file still being written is retried when the write completes")
        })?;
        drop(ciphertext);
        if plaintext.starts_with(record::HEADER) {
            let state = record::decode(key.clone(), &plaintext, &self.fingerprinter)
                .map_err(|e| format!("it is not a valid keyward record: {e}"))?;
            for v in std::iter::once(&state.primary).chain(state.fallback.as_ref()) {
                check_secret_len(v.secret.len(), max_secret_bytes, &format!("version {}", v.number))?;
            }
            return Ok(Found::Content(Box::new(FileContent::Record(Box::new(state)))));
        }
        // A bare secret, as `keyward put` takes it: one trailing newline
        // (from `echo … | age`) is not part of the key.
        let trim = if plaintext.ends_with(b"\r\n") {
            2
        } else {
            usize::from(plaintext.ends_with(b"\n"))
        };
        let len = plaintext.len() - trim;
        plaintext.truncate(len);
        check_secret_len(len, max_secret_bytes, "the secret")?;
        let secret = Secret::new(plaintext);
        let version = self.new_version(0, secret, now, None);
        Ok(Found::Content(Box::new(FileContent::Raw(version))))
    }
}

fn check_secret_len(len: usize, limit: usize, what: &str) -> Result<(), String> {
    if len == 0 {
        return Err(format!(
            "{what} in it is empty: write the key itself (e.g. `printf %s \"$KEY\" | age -r …`)"
        ));
    }
    if len > limit {
        return Err(format!(
            "{what} in it is {len} bytes; the limit is {limit} bytes (limits.max_secret_bytes)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_kind_names() {
        assert_eq!(FileKind::RawSecret.as_str(), "raw secret");
        assert_eq!(FileKind::Record { file_generation: 3 }.as_str(), "keyward record");
    }
}
