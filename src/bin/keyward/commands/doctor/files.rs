//! The checks of what is on disk: identity and install key, store
//! directories, key files and sockets (the audit log: `audit.rs`).
//!
//! Files are inspected with `lstat` and never followed, created or
//! repaired. A key file is judged as the agent would load it: decrypted
//! once with the identity and decoded as a record, in memory; the plaintext
//! and the decoded state are dropped (and wiped) at once.

use std::ffi::OsStr;
use std::fs::{self, Metadata};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use keyward::config::{Config, Paths};
use keyward::secret::{Fingerprinter, KeyRef};
use keyward::store::identity::{AgentIdentity, InstallKey, SigningKey};
use keyward::store::record;
use nix::unistd::{Gid, Group, Uid, User};

use super::Finding;

/// The fix for a key file whose content the agent cannot load.
const RESTORE_KEY_FILE: &str = "restore it from a backup, or delete it and put the key again";

/// The identity and install key, each if it loaded: the later checks use
/// them (decrypting and decoding key files, verifying the audit chain)
/// without loading them again.
pub(super) struct Loaded {
    pub(super) identity: Option<AgentIdentity>,
    pub(super) install_key: Option<InstallKey>,
}

pub(super) fn user_name(uid: u32) -> String {
    match User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(u)) => u.name,
        _ => uid.to_string(),
    }
}

/// `lstat`, with a finding when it fails.
pub(super) fn inspect(check: &'static str, path: &Path, missing_fix: &str, out: &mut Vec<Finding>) -> Option<Metadata> {
    match fs::symlink_metadata(path) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            out.push(Finding::fail(
                check,
                format!("{} is missing", path.display()),
                missing_fix,
            ));
            None
        }
        Err(e) => {
            out.push(Finding::fail(
                check,
                format!("cannot inspect {}: {e}", path.display()),
                "run keyward doctor as the agent's user (root for a system install)",
            ));
            None
        }
    }
}

/// What is wrong with a file that must be a regular file owned by `owner`
/// with no group or other permission bits, and the commands that fix it.
fn private_file_problems(path: &Path, m: &Metadata, owner: u32) -> (Vec<String>, Vec<String>) {
    let (mut found, mut fix) = (Vec::new(), Vec::new());
    if !m.file_type().is_file() {
        found.push("is not a regular file".to_owned());
        fix.push(format!("replace {} with a regular file", path.display()));
        return (found, fix);
    }
    if m.uid() != owner {
        found.push(format!("is owned by {}, not {}", user_name(m.uid()), user_name(owner)));
        fix.push(format!("chown {} {}", user_name(owner), path.display()));
    }
    if m.mode() & 0o077 != 0 {
        found.push(format!("has mode {:04o}, not 0600", m.mode() & 0o7777));
        fix.push(format!("chmod 600 {}", path.display()));
    }
    (found, fix)
}

fn private_file(check: &'static str, path: &Path, owner: u32, missing_fix: &str, out: &mut Vec<Finding>) -> bool {
    let Some(m) = inspect(check, path, missing_fix, out) else {
        return false;
    };
    let (found, fix) = private_file_problems(path, &m, owner);
    if found.is_empty() {
        out.push(Finding::ok(
            check,
            format!("{}: 0600, owned by {}", path.display(), user_name(owner)),
        ));
        true
    } else {
        out.push(Finding::fail(
            check,
            format!("{} {}", path.display(), found.join(" and ")),
            fix.join(" && "),
        ));
        false
    }
}

/// `result`'s value, or a FAIL for `check` with its error and `fix`.
fn loaded<T, E: std::fmt::Display>(
    check: &'static str,
    result: Result<T, E>,
    fix: &str,
    out: &mut Vec<Finding>,
) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(e) => {
            out.push(Finding::fail(check, e.to_string(), fix));
            None
        }
    }
}

/// The identity and install key files; each is loaded (once) if its file
/// passes, and a file that does not load is reported once.
pub(super) fn check_identity(paths: &Paths, owner: u32, out: &mut Vec<Finding>) -> Loaded {
    let create = "run `keyward init` (system install) or start `keywardd --dev DIR` once";
    let identity_ok = private_file("identity", &paths.identity_file, owner, create, out);
    let key_ok = private_file("install key", &paths.install_key_file, owner, create, out);
    let install_key = if key_ok {
        let key = InstallKey::load(&paths.install_key_file);
        loaded("install key", key, "restore the install key from a backup", out)
    } else {
        None
    };
    let identity = if identity_ok {
        let identity = AgentIdentity::load(&paths.identity_file);
        loaded("identity", identity, "restore the identity from a backup", out)
    } else {
        None
    };
    Loaded { identity, install_key }
}

/// Fleet mode: the signing key file, checked as the identity's is.
pub(super) fn check_signing_key(paths: &Paths, owner: u32, out: &mut Vec<Finding>) {
    let create = "run `keyward init` (it adds the signing key and changes nothing else), then `keyward fleet member` and paste its entry into every agent's config";
    if private_file("signing key", &paths.signing_key_file, owner, create, out) {
        loaded(
            "signing key",
            SigningKey::load(&paths.signing_key_file),
            "move it aside and run `keyward init`, then replace this agent's [[backend.member]] entry on every host",
            out,
        );
    }
}

/// The store directory, each environment's directory and each key file.
pub(super) fn check_store(config: &Config, owner: u32, loaded: &Loaded, out: &mut Vec<Finding>) {
    let store = &config.paths.store_dir;
    let mut dirs = vec![store.clone()];
    dirs.extend(config.environments.keys().map(|e| store.join(e)));
    let mut dir_problems = Vec::new();
    let mut any_missing = false;
    for dir in &dirs {
        match fs::symlink_metadata(dir) {
            Ok(m) if !m.file_type().is_dir() => dir_problems.push((
                format!("{} is not a directory", dir.display()),
                format!("move {} away; the agent creates it", dir.display()),
            )),
            Ok(m) if m.mode() & 0o077 != 0 => dir_problems.push((
                format!("{} has mode {:04o}, not 0700", dir.display(), m.mode() & 0o7777),
                format!("chmod 700 {}", dir.display()),
            )),
            Ok(m) if m.uid() != owner => dir_problems.push((
                format!(
                    "{} is owned by {}, not {}",
                    dir.display(),
                    user_name(m.uid()),
                    user_name(owner)
                ),
                format!("chown {} {}", user_name(owner), dir.display()),
            )),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                any_missing = true;
                out.push(Finding::warn(
                    "store",
                    format!("{} does not exist yet", dir.display()),
                    "start the agent: it creates it (0700)",
                ));
                if dir == store {
                    // Nothing under it to check, and no key files to count.
                    return;
                }
            }
            Err(e) => dir_problems.push((
                format!("cannot inspect {}: {e}", dir.display()),
                "run keyward doctor as the agent's user (root for a system install)".to_owned(),
            )),
        }
    }
    if dir_problems.is_empty() && !any_missing {
        out.push(Finding::ok(
            "store",
            format!(
                "{} and {} environment directories are 0700",
                store.display(),
                dirs.len() - 1
            ),
        ));
    }
    for (found, fix) in dir_problems {
        out.push(Finding::fail("store", found, fix));
    }
    check_key_files(store, config.environments.keys(), owner, loaded, out);
}

fn check_key_files<'a>(
    store: &Path,
    envs: impl Iterator<Item = &'a String>,
    owner: u32,
    loaded: &Loaded,
    out: &mut Vec<Finding>,
) {
    let identity = loaded.identity.as_ref();
    let fingerprinter = loaded.install_key.as_ref().map(InstallKey::fingerprinter);
    let mut good = 0;
    let mut bad = 0;
    for env in envs {
        let Ok(entries) = fs::read_dir(store.join(env)) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "age"))
            .collect();
        files.sort();
        for path in files {
            let Some(m) = inspect(
                "key files",
                &path,
                "run keyward doctor again (it went away meanwhile)",
                out,
            ) else {
                bad += 1;
                continue;
            };
            let (found, fix) = private_file_problems(&path, &m, owner);
            if !found.is_empty() {
                bad += 1;
                out.push(Finding::fail(
                    "key files",
                    format!("{} {}", path.display(), found.join(" and ")),
                    fix.join(" && "),
                ));
                continue;
            }
            match key_file_content(env, &path, identity, fingerprinter.as_ref()) {
                None => good += 1,
                Some((problem, fix)) => {
                    bad += 1;
                    out.push(Finding::fail("key files", format!("{} {problem}", path.display()), fix));
                }
            }
        }
    }
    let what = match (identity, &fingerprinter) {
        (Some(_), Some(_)) => "decryptable, each a valid key record",
        (Some(_), None) => "decryptable (not decoded: the install key did not load)",
        (None, _) => "age files (not decrypted: the identity did not load)",
    };
    if bad == 0 {
        out.push(Finding::ok(
            "key files",
            format!("{good} key files, all 0600 and {what}"),
        ));
    }
}

/// Why the agent would skip the key file of `env` at `path`, and the fix;
/// `None` if it would load it, as far as what loaded can tell: without the
/// identity only the age header is checked, without the install key the
/// record is not decoded.
fn key_file_content(
    env: &str,
    path: &Path,
    identity: Option<&AgentIdentity>,
    fingerprinter: Option<&Fingerprinter>,
) -> Option<(String, String)> {
    let restore = |problem: String| Some((problem, RESTORE_KEY_FILE.to_owned()));
    let key = match path
        .file_stem()
        .and_then(OsStr::to_str)
        .map(|stem| KeyRef::new(env, stem))
    {
        Some(Ok(key)) => key,
        Some(Err(e)) => {
            return Some((
                format!("is not named after a valid key, so the agent skips it: {e}"),
                "rename it to NAME.age".to_owned(),
            ))
        }
        None => {
            return Some((
                "has a name that is not UTF-8, so the agent skips it".to_owned(),
                "rename it to NAME.age".to_owned(),
            ))
        }
    };
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) => return restore(format!("cannot be read: {e}")),
    };
    // age's messages may span lines: keep the report one line per finding.
    let one_line = |e: &dyn std::fmt::Display| e.to_string().replace('\n', " ");
    let Some(identity) = identity else {
        return age::Decryptor::new(&bytes[..])
            .err()
            .and_then(|e| restore(format!("is not an age file ({})", one_line(&e))));
    };
    let plaintext = match identity.decrypt(&bytes) {
        Ok(p) => p,
        Err(e @ (age::DecryptError::InvalidHeader | age::DecryptError::UnknownFormat)) => {
            return restore(format!("is not an age file ({})", one_line(&e)))
        }
        Err(e) => return restore(format!("does not decrypt with the agent's identity ({})", one_line(&e))),
    };
    match record::decode(key, &plaintext, fingerprinter?) {
        Ok(_state) => None,
        Err(e) => restore(format!(
            "decrypts but is not a valid key record, so the agent skips it: {e}"
        )),
    }
}

/// keys.sock and the admin socket (`admin_socket`: the one doctor asked
/// the agent on): sockets with the configured mode and group.
pub(super) fn check_sockets(config: &Config, admin_socket: &Path, agent_up: bool, out: &mut Vec<Finding>) {
    let admin_mode = if config.admin_group.is_some() { 0o660 } else { 0o600 };
    let sockets = [
        (
            config.paths.service_socket.as_path(),
            config.service_socket_mode,
            config.service_socket_group,
        ),
        (admin_socket, admin_mode, config.admin_group),
    ];
    for (path, want_mode, want_gid) in sockets {
        let m = match fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !agent_up => {
                out.push(Finding::warn(
                    "sockets",
                    format!("{} does not exist (the agent is not running)", path.display()),
                    "start keywardd",
                ));
                continue;
            }
            Err(e) => {
                out.push(Finding::fail(
                    "sockets",
                    format!("cannot inspect {}: {e}", path.display()),
                    "restart keywardd",
                ));
                continue;
            }
        };
        let mode = m.mode() & 0o777;
        if !m.file_type().is_socket() {
            out.push(Finding::fail(
                "sockets",
                format!("{} is not a socket", path.display()),
                format!("move {} away and restart keywardd", path.display()),
            ));
        } else if mode & !want_mode != 0 {
            out.push(Finding::fail(
                "sockets",
                format!(
                    "{} has mode {mode:04o}, wider than the configured {want_mode:04o}",
                    path.display()
                ),
                format!(
                    "chmod {want_mode:o} {} (restarting keywardd also resets it)",
                    path.display()
                ),
            ));
        } else if let Some(want) = want_gid.filter(|&g| g != m.gid()) {
            let group = match Group::from_gid(Gid::from_raw(want)) {
                Ok(Some(g)) => g.name,
                _ => want.to_string(),
            };
            out.push(Finding::fail(
                "sockets",
                format!("{} has group {}, not the configured {group}", path.display(), m.gid()),
                format!("chgrp {group} {}", path.display()),
            ));
        } else if mode != want_mode {
            out.push(Finding::warn(
                "sockets",
                format!(
                    "{} has mode {mode:04o}, narrower than the configured {want_mode:04o}",
                    path.display()
                ),
                "restart keywardd to apply the configured mode",
            ));
        } else {
            out.push(Finding::ok(
                "sockets",
                format!("{}: socket, mode {mode:04o}", path.display()),
            ));
        }
    }
}
