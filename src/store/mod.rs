//! The key store: one age-encrypted file per key, `<dir>/<env>/<name>.age`,
//! and the in-memory view the fetch path reads. Files written into the store
//! by other tools are applied by [`reload`].
//!
//! Invariants:
//! - A commit is durable before it is visible: the file is replaced
//!   atomically (see `store::atomic`) and only then is the in-memory entry
//!   swapped. A failed commit changes neither.
//! - The store never follows a symlink, never reads a file another user
//!   could have written, and never deletes a file it cannot read: a bad file
//!   is reported as a [`LoadProblem`] and left for the operator. Loose
//!   permissions on a key file are fatal at open, as ssh does.
//! - [`Store::get`] is one read lock and an `Arc` clone.
//! - Every file the store writes decodes back to exactly the state that was
//!   committed (times are kept in whole milliseconds, see [`record`]).

mod atomic;
mod error;
pub mod identity;
mod perms;
pub mod record;
pub mod reload;
mod seal;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{self, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::SystemTime;

use age::x25519;

use crate::keyset::{KeySetState, Version};
use crate::secret::{validate_name, Fingerprinter, KeyRef, Secret};
use atomic::Mode;
pub use error::StoreError;
use perms::Kind;

/// Largest key file read, in bytes.
const MAX_KEY_FILE: u64 = 16 * 1024 * 1024;

/// A file the store skipped at open. The agent logs it and keeps running;
/// the file is left on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadProblem {
    /// The skipped file.
    pub path: PathBuf,
    /// Why it was skipped and what to do.
    pub reason: String,
}

impl fmt::Display for LoadProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

/// What [`Store::open`] needs.
pub struct StoreOptions {
    /// The store directory, holding one directory per environment.
    pub dir: PathBuf,
    /// The agent identity: every file is encrypted to it and read with it.
    pub identity: identity::AgentIdentity,
    /// More `age1…` recipients every file is also encrypted to (break-glass).
    pub extra_recipients: Vec<String>,
    /// The configured environments.
    pub environments: Vec<String>,
    /// Computes the fingerprints of loaded and new versions.
    pub fingerprinter: Fingerprinter,
}

/// The key store.
pub struct Store {
    dir: PathBuf,
    identity: identity::AgentIdentity,
    /// The identity's own recipient first, then the extra ones.
    recipients: Vec<x25519::Recipient>,
    environments: BTreeSet<String>,
    fingerprinter: Fingerprinter,
    keys: RwLock<BTreeMap<KeyRef, Arc<KeySetState>>>,
    /// When [`Store::open`] started reading the files.
    opened_at: SystemTime,
}

impl Store {
    /// Opens the store: checks (or creates, 0700) the store directory and
    /// every configured environment's directory, removes leftover temp files,
    /// and loads every `*.age` file.
    ///
    /// Files that cannot be loaded are skipped and returned as
    /// [`LoadProblem`]s. Fails on a bad option, a directory that is not
    /// private, or a key file with loose permissions.
    pub fn open(opts: StoreOptions) -> Result<(Store, Vec<LoadProblem>), StoreError> {
        let StoreOptions {
            dir,
            identity,
            extra_recipients,
            environments,
            fingerprinter,
        } = opts;
        let mut recipients = vec![identity.age_recipient().clone()];
        for r in &extra_recipients {
            let parsed = x25519::Recipient::from_str(r.trim()).map_err(|e| {
                StoreError::Invalid(format!(
                    "extra recipient {r:?} is not an age X25519 public key ({e}): use the `age1…` line that `age-keygen -y` prints"
                ))
            })?;
            recipients.push(parsed);
        }
        let mut envs = BTreeSet::new();
        for env in environments {
            validate_name("environment", &env).map_err(|e| StoreError::Invalid(format!("configured {e}")))?;
            envs.insert(env);
        }

        perms::ensure_private_dir(&dir)?;
        for env in &envs {
            perms::ensure_private_dir(&dir.join(env))?;
        }
        warn_unknown_dirs(&dir, &envs);

        let store = Store {
            opened_at: SystemTime::now(),
            dir,
            identity,
            recipients,
            environments: envs,
            fingerprinter,
            keys: RwLock::new(BTreeMap::new()),
        };
        let mut problems = Vec::new();
        let mut keys = BTreeMap::new();
        for env in &store.environments {
            store.load_env(env, &mut keys, &mut problems)?;
        }
        for p in &problems {
            tracing::warn!(path = ?p.path, reason = %p.reason, "skipped a key file");
        }
        tracing::info!(dir = %store.dir.display(), keys = keys.len(), skipped = problems.len(), "key store opened");
        *store.keys.write().unwrap_or_else(PoisonError::into_inner) = keys;
        Ok((store, problems))
    }

    /// The current state of `key`. The fetch path: one read lock, one clone.
    pub fn get(&self, key: &KeyRef) -> Option<Arc<KeySetState>> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    /// Every key (of `env`, if given), sorted by key.
    pub fn list(&self, env: Option<&str>) -> Vec<Arc<KeySetState>> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|s| env.is_none_or(|e| s.key.env() == e))
            .cloned()
            .collect()
    }

    /// How many keys are loaded.
    pub fn len(&self) -> usize {
        self.keys.read().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// True when no key is loaded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A new version with its fingerprint (times kept to the millisecond, as
    /// stored).
    pub fn new_version(
        &self,
        number: u64,
        secret: Secret,
        created_at: SystemTime,
        expires_at: Option<SystemTime>,
    ) -> Version {
        Version {
            number,
            fingerprint: self.fingerprinter.fingerprint(&secret),
            secret,
            created_at: record::truncate_to_millis(created_at),
            expires_at: expires_at.map(record::truncate_to_millis),
            promoted_at: None,
        }
    }

    /// Writes `next` to its file atomically, then makes it the current state
    /// of its key. On error, neither the file nor the current state changed
    /// (except that if only the final directory fsync fails, the new file may
    /// be on disk while memory keeps the old state).
    ///
    /// Safe to call concurrently for different keys; commits of one key must
    /// be serialized by the caller (the admin lock does).
    ///
    /// A key the store did not load whose file exists is refused
    /// ([`StoreError::Unloaded`]): that file may be the only copy of a
    /// secret (encrypted to a lost identity, a bad record).
    pub fn commit(&self, next: KeySetState) -> Result<Arc<KeySetState>, StoreError> {
        self.check_loaded(&next.key)?;
        self.write_state(next)
    }

    /// [`StoreError::Unloaded`] when `key` has a file the store did not
    /// load: nothing may replace or remove it (it may be the only copy of a
    /// secret). Checked by [`Store::commit`], and by fleet mode before it
    /// writes to OpenBao or over the local copy.
    pub fn check_loaded(&self, key: &KeyRef) -> Result<(), StoreError> {
        let path = self.key_path(key);
        if self.get(key).is_none() && std::fs::symlink_metadata(&path).is_ok() {
            return Err(StoreError::Unloaded {
                key: key.to_string(),
                path,
            });
        }
        Ok(())
    }

    /// Fleet mode: makes a state read from (or just written to) the shared
    /// backend this agent's local copy, replacing whatever file the key had:
    /// the backend is the source of truth, the file only its cache.
    pub fn replace(&self, next: KeySetState) -> Result<Arc<KeySetState>, StoreError> {
        self.write_state(next)
    }

    /// [`Store::commit`] without the check for a key file the store did not
    /// load: for hot reload, which commits what it just read from that
    /// very file.
    fn write_state(&self, mut next: KeySetState) -> Result<Arc<KeySetState>, StoreError> {
        let key = next.key.clone();
        if !self.environments.contains(key.env()) {
            return Err(StoreError::Invalid(format!(
                "environment {:?} of key {key} is not configured (configured: {}): add it to the config's environments",
                key.env(),
                self.environments.iter().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        let path = self.key_path(&key);
        record::normalize_times(&mut next);
        let plaintext = record::encode(&next).map_err(|e| StoreError::Invalid(format!("cannot store {key}: {e}")))?;
        let ciphertext = self.encrypt(&plaintext, &path)?;
        drop(plaintext);
        let env_dir = self.dir.join(key.env());
        ensure_env_dir_for_write(&env_dir)?;
        atomic::write_file(&env_dir, &file_name(&key), &ciphertext, Mode::Replace)?;

        let next = Arc::new(next);
        self.keys
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, Arc::clone(&next));
        tracing::debug!(key = %next.key, generation = next.generation, "committed");
        Ok(next)
    }

    /// Removes `key`'s file (durably) and its entry; returns the removed
    /// state. [`StoreError::NotFound`] if the key is not loaded.
    pub fn delete(&self, key: &KeyRef) -> Result<Arc<KeySetState>, StoreError> {
        let not_found = || StoreError::NotFound { key: key.to_string() };
        if self.get(key).is_none() {
            return Err(not_found());
        }
        let path = self.key_path(key);
        match atomic::remove_file(&path) {
            Ok(()) => {}
            Err(StoreError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                tracing::warn!(path = %path.display(), "key file already gone; removing the key from memory");
            }
            Err(e) => return Err(e),
        }
        let removed = self
            .keys
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key)
            .ok_or_else(not_found)?;
        tracing::debug!(key = %key, "deleted");
        Ok(removed)
    }

    /// When [`Store::open`] started reading the key files: a file changed
    /// after this may not be what was loaded.
    pub fn opened_at(&self) -> SystemTime {
        self.opened_at
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file that holds `key`: `<dir>/<env>/<name>.age`.
    pub fn key_path(&self, key: &KeyRef) -> PathBuf {
        self.dir.join(key.env()).join(file_name(key))
    }

    /// The configured environments, sorted.
    pub fn environments(&self) -> impl Iterator<Item = &str> {
        self.environments.iter().map(String::as_str)
    }

    /// Loads every key file of one environment into `keys`.
    fn load_env(
        &self,
        env: &str,
        keys: &mut BTreeMap<KeyRef, Arc<KeySetState>>,
        problems: &mut Vec<LoadProblem>,
    ) -> Result<(), StoreError> {
        let env_dir = self.dir.join(env);
        let io_err = |source| StoreError::Io {
            path: env_dir.clone(),
            source,
        };
        let mut names = std::fs::read_dir(&env_dir)
            .map_err(io_err)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(io_err)?;
        names.sort();
        for name in names {
            let path = env_dir.join(&name);
            let Some(name) = name.to_str() else {
                tracing::warn!(path = ?path, "ignoring a file whose name is not UTF-8");
                continue;
            };
            let mut skip = |reason: String| {
                problems.push(LoadProblem {
                    path: path.clone(),
                    reason,
                })
            };
            if atomic::is_temp_key_file(name) {
                remove_leftover_temp(&path);
                continue;
            }
            let Some(stem) = name.strip_suffix(".age") else {
                tracing::warn!(path = ?path, "ignoring a file that is not a key file (*.age)");
                continue;
            };
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) => {
                    skip(format!("cannot examine it: {e}"));
                    continue;
                }
            };
            if meta.file_type().is_symlink() {
                skip(perms::symlink_error(&path).to_string());
                continue;
            }
            if !meta.file_type().is_file() {
                skip("not a regular file: key files are regular files; move it away".to_owned());
                continue;
            }
            let key = match KeyRef::new(env, stem) {
                Ok(k) => k,
                Err(e) => {
                    skip(format!("the file name is not a valid key: {e}; rename it to NAME.age"));
                    continue;
                }
            };
            // Loose permissions are fatal, not skipped: refuse to start.
            perms::check_metadata(&path, &meta, Kind::File)?;
            match self.read_key_file(&path, key.clone()) {
                Ok(state) => {
                    keys.insert(key, Arc::new(state));
                }
                Err(e @ StoreError::Permissions { .. }) => return Err(e),
                Err(e) => skip(e.to_string()),
            }
        }
        Ok(())
    }

    /// Reads, decrypts and decodes one key file.
    fn read_key_file(&self, path: &Path, key: KeyRef) -> Result<KeySetState, StoreError> {
        let (_, ciphertext) = atomic::read_private(path, MAX_KEY_FILE)?;
        self.decrypt_decode(key, &ciphertext, |e| {
            format!(
                "cannot decrypt it with the agent identity ({e}): encrypt it to {} (e.g. `age -r {}`)",
                self.identity.recipient(),
                self.identity.recipient()
            )
        })
    }

    /// Decrypts `ciphertext` with the agent identity and decodes it as the
    /// state of `key`; `explain` turns age's error into the message.
    fn decrypt_decode(
        &self,
        key: KeyRef,
        ciphertext: &[u8],
        explain: impl FnOnce(String) -> String,
    ) -> Result<KeySetState, StoreError> {
        let plaintext = self.identity.decrypt(ciphertext).map_err(|e| {
            // age's messages may span lines (a hint after the error): keep one log line.
            StoreError::Invalid(explain(e.to_string().replace('\n', " ")))
        })?;
        record::decode(key, &plaintext, &self.fingerprinter).map_err(|e| StoreError::Invalid(e.to_string()))
    }

    /// Encrypts to the agent identity and the extra recipients.
    fn encrypt(&self, plaintext: &[u8], path: &Path) -> Result<Vec<u8>, StoreError> {
        encrypt_to(self.recipients.iter(), plaintext, false).map_err(|source| StoreError::Io {
            path: path.to_owned(),
            source,
        })
    }
}

/// `plaintext` as an age file to `recipients`, ASCII-armored or binary.
fn encrypt_to<'a>(
    recipients: impl Iterator<Item = &'a x25519::Recipient>,
    plaintext: &[u8],
    armor: bool,
) -> io::Result<Vec<u8>> {
    let encryptor =
        age::Encryptor::with_recipients(recipients.map(|r| r as &dyn age::Recipient)).map_err(io::Error::other)?;
    let mut out = Vec::with_capacity(plaintext.len() * if armor { 2 } else { 1 } + 1024);
    let format = if armor {
        age::armor::Format::AsciiArmor
    } else {
        age::armor::Format::Binary
    };
    let mut writer = encryptor.wrap_output(age::armor::ArmoredWriter::wrap_output(&mut out, format)?)?;
    writer.write_all(plaintext)?;
    writer.finish()?.finish()?;
    Ok(out)
}

/// `<name>.age`.
fn file_name(key: &KeyRef) -> String {
    format!("{}.age", key.name())
}

/// Before a write: creates the environment's directory (0700) if it is
/// missing, and refuses one that is not a private directory. A directory
/// swapped for something else is an I/O failure of the store, not a bad
/// request.
fn ensure_env_dir_for_write(env_dir: &Path) -> Result<(), StoreError> {
    let io_err = |source| StoreError::Io {
        path: env_dir.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(env_dir) {
        Ok(meta) if meta.file_type().is_dir() => perms::check_metadata(env_dir, &meta, Kind::Dir),
        Ok(_) => Err(io_err(io::Error::new(
            io::ErrorKind::NotADirectory,
            "not a directory (or a symlink, which keyward never follows): move it away so keyward can recreate it",
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new().mode(0o700).create(env_dir).map_err(io_err)?;
            atomic::sync_dir(env_dir.parent().unwrap_or(Path::new(".")))
        }
        Err(e) => Err(io_err(e)),
    }
}

/// Removes a temp file left by a crash: it is never a committed state.
fn remove_leftover_temp(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_dir() => match std::fs::remove_file(path) {
            Ok(()) => {
                tracing::info!(path = ?path, "removed a temp file left by an interrupted write")
            }
            Err(e) => {
                tracing::warn!(path = ?path, error = %e, "cannot remove a leftover temp file")
            }
        },
        _ => tracing::warn!(path = ?path, "ignoring a directory named like a temp file"),
    }
}

/// Logs directories of the store that belong to no configured environment.
fn warn_unknown_dirs(dir: &Path, envs: &BTreeSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        let known = entry.file_name().to_str().is_some_and(|n| envs.contains(n));
        if is_dir && !known {
            tracing::warn!(
                path = ?entry.path(),
                "ignoring a directory for an environment that is not configured"
            );
        }
    }
}

/// Writes one of the agent's private state files, `dir/name`, as the key
/// files are written: mode 0600, atomically (a temp file renamed over it)
/// and durably (file and directory fsynced).
pub fn write_state_file(dir: &Path, name: &str, contents: &[u8]) -> Result<(), StoreError> {
    atomic::write_file(dir, name, contents, atomic::Mode::Replace)
}

/// Removes the temp files a crash left while writing the state file
/// `dir/name` (`.NAME.tmp-*`, see [`write_state_file`]): never a committed
/// state.
pub fn remove_state_file_temps(dir: &Path, name: &str) {
    let prefix = format!(".{name}{}", atomic::TEMP_INFIX);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_str().is_some_and(|n| n.starts_with(&prefix)) {
            remove_leftover_temp(&entry.path());
        }
    }
}

/// Reads one of the agent's private state files as the key files are read
/// (no symlink, owned by the agent's user, not writable by group or
/// others, at most `max_len` bytes); `None` when it does not exist.
pub fn read_state_file(path: &Path, max_len: u64) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>, StoreError> {
    match atomic::read_private(path, max_len) {
        Ok((_, bytes)) => Ok(Some(bytes)),
        Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests;
