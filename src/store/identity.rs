//! The agent's long-lived secrets: its age identity (which decrypts every key
//! file), the install key (from which the fingerprint salt and the audit
//! chain key are derived) and its fleet signing key (Ed25519: every record
//! it writes to a fleet backend is signed with it).
//!
//! Invariant: all three live in private files (0600, owned by the agent's user,
//! never symlinks) checked on every load, are created atomically so a crash
//! never leaves a half-written identity, and are held only in zeroizing
//! memory with no `Debug` that could print them.

use std::fmt;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::str::FromStr;

use age::secrecy::ExposeSecret;
use age::x25519;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::atomic::{self, Mode};
use super::error::StoreError;
use crate::secret::Fingerprinter;

pub use super::perms::{check_private, check_private_dir};

/// Largest identity or install key file read, in bytes.
const MAX_SECRET_FILE: u64 = 64 * 1024;

/// The agent's age X25519 identity.
///
/// Its file has the format `age-keygen` writes: `#` comment lines and one
/// `AGE-SECRET-KEY-1…` line. `Debug` shows only the public recipient.
pub struct AgentIdentity {
    /// Zeroized on drop by the underlying `StaticSecret`.
    identity: x25519::Identity,
    recipient: x25519::Recipient,
}

impl AgentIdentity {
    /// Loads the identity at `path`, which must exist and pass
    /// [`check_private`].
    pub fn load(path: &Path) -> Result<AgentIdentity, StoreError> {
        let (_, bytes) = atomic::read_private(path, MAX_SECRET_FILE).map_err(|e| {
            explain_missing(
                e,
                "restore it from backup (every key file is encrypted to it: a new identity cannot read them), or, on a new install, create it with `keyward init`",
            )
        })?;
        let text =
            std::str::from_utf8(&bytes).map_err(|_| invalid_identity(path, "it is not UTF-8 text".to_owned()))?;
        let mut found = None;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if !line.starts_with("AGE-SECRET-KEY-1") {
                // The line itself is not echoed: it may be key material.
                return Err(invalid_identity(
                    path,
                    format!("line {} is neither a '#' comment nor an AGE-SECRET-KEY-1 line", i + 1),
                ));
            }
            if found.is_some() {
                return Err(invalid_identity(
                    path,
                    "it holds more than one AGE-SECRET-KEY-1 line; keyward uses exactly one".to_owned(),
                ));
            }
            let identity = x25519::Identity::from_str(line)
                .map_err(|e| invalid_identity(path, format!("its AGE-SECRET-KEY-1 line is not valid ({e})")))?;
            found = Some(identity);
        }
        let identity = found.ok_or_else(|| invalid_identity(path, "it has no AGE-SECRET-KEY-1 line".to_owned()))?;
        Ok(AgentIdentity::from_identity(identity))
    }

    /// Loads the identity at `path`, or creates a new one there if nothing
    /// exists (the parent directory is created 0700 if missing). The new file
    /// is written atomically with mode 0600, never over an existing file.
    pub fn load_or_create(path: &Path) -> Result<AgentIdentity, StoreError> {
        load_or_create(path, AgentIdentity::load, || {
            let id = AgentIdentity::generate();
            let sk = id.identity.to_string();
            let recipient = id.recipient.to_string();
            let created = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
            // Sized once, so no reallocation leaves a copy of the key behind.
            let mut text = Zeroizing::new(String::with_capacity(
                64 + created.len() + recipient.len() + sk.expose_secret().len(),
            ));
            text.push_str("# created: ");
            text.push_str(&created);
            text.push_str("\n# public key: ");
            text.push_str(&recipient);
            text.push('\n');
            text.push_str(sk.expose_secret());
            text.push('\n');
            tracing::info!(path = %path.display(), recipient = %recipient, "created a new agent identity");
            let bytes = Zeroizing::new(std::mem::take(&mut *text).into_bytes());
            (id, bytes)
        })
    }

    /// A fresh random identity, kept only in memory (for tests and tools).
    pub fn generate() -> AgentIdentity {
        AgentIdentity::from_identity(x25519::Identity::generate())
    }

    fn from_identity(identity: x25519::Identity) -> AgentIdentity {
        let recipient = identity.to_public();
        AgentIdentity { identity, recipient }
    }

    /// The public key, `age1…`: encrypt a file to it with `age -r` and the
    /// agent can read it.
    pub fn recipient(&self) -> String {
        self.recipient.to_string()
    }

    /// The public key as an age recipient.
    pub(crate) fn age_recipient(&self) -> &x25519::Recipient {
        &self.recipient
    }

    /// Decrypts an age file encrypted to this identity into a zeroizing
    /// buffer.
    pub fn decrypt(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, age::DecryptError> {
        // Buffered: the header is parsed once, not again after each small
        // read (which made a record sealed to N members cost O(N²) to open).
        let decryptor = age::Decryptor::new_buffered(ciphertext)?;
        let mut reader = decryptor.decrypt(std::iter::once(&self.identity as &dyn age::Identity))?;
        // The plaintext is shorter than the ciphertext: one buffer suffices.
        Ok(atomic::read_to_end_zeroizing(&mut reader, ciphertext.len())?)
    }
}

impl fmt::Debug for AgentIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentIdentity")
            .field("recipient", &self.recipient.to_string())
            .finish_non_exhaustive()
    }
}

fn invalid_identity(path: &Path, why: String) -> StoreError {
    StoreError::Invalid(format!(
        "{} is not an age identity file: {why}; restore it from backup (without it the key files cannot be decrypted), or write a new one with `age-keygen -o {}`",
        path.display(),
        path.display()
    ))
}

/// A missing identity or install key, said plainly with `fix`; still an
/// I/O error of kind `NotFound` (its path is in the error).
fn explain_missing(e: StoreError, fix: &str) -> StoreError {
    match e {
        StoreError::Io { path, source } if source.kind() == io::ErrorKind::NotFound => StoreError::Io {
            path,
            source: io::Error::new(io::ErrorKind::NotFound, format!("it does not exist: {fix}")),
        },
        other => other,
    }
}

/// The per-install key: 32 random bytes, hex-encoded in a private file.
/// Two independent keys are derived from it; it is wiped on drop.
pub struct InstallKey {
    key: Zeroizing<[u8; 32]>,
}

impl InstallKey {
    /// Label of the fingerprint salt derivation.
    pub const FINGERPRINT_LABEL: &'static [u8] = b"keyward fingerprint v1";
    /// Label of the audit chain key derivation.
    pub const AUDIT_LABEL: &'static [u8] = b"keyward audit chain v1";

    /// Loads the install key at `path`, which must exist and pass
    /// [`check_private`].
    pub fn load(path: &Path) -> Result<InstallKey, StoreError> {
        let (_, bytes) = atomic::read_private(path, MAX_SECRET_FILE).map_err(|e| {
            explain_missing(
                e,
                "restore it from backup (fingerprints and the audit chain key derive from it), or, on a new install, create it with `keyward init`",
            )
        })?;
        let hex_digits = bytes.trim_ascii();
        let mut key = Zeroizing::new([0u8; 32]);
        if hex_digits.len() != 64 || hex::decode_to_slice(hex_digits, &mut key[..]).is_err() {
            return Err(StoreError::Invalid(format!(
                "{} is not an install key (64 hex digits); restore it from backup: a new one changes every fingerprint and the audit chain key",
                path.display()
            )));
        }
        Ok(InstallKey { key })
    }

    /// Loads the install key at `path`, or creates a new random one there
    /// (atomically, mode 0600, parent created 0700 if missing).
    pub fn load_or_create(path: &Path) -> Result<InstallKey, StoreError> {
        load_or_create(path, InstallKey::load, || {
            let mut key = Zeroizing::new([0u8; 32]);
            rand::rngs::OsRng.fill_bytes(&mut key[..]);
            let mut text = Zeroizing::new(vec![0u8; 65]);
            hex::encode_to_slice(&key[..], &mut text[..64]).expect("64 hex digits for 32 bytes");
            text[64] = b'\n';
            tracing::info!(path = %path.display(), "created a new install key");
            (InstallKey { key }, text)
        })
    }

    /// The fingerprint salt: HMAC-SHA256(install key, [`Self::FINGERPRINT_LABEL`]).
    pub fn fingerprint_salt(&self) -> [u8; 32] {
        self.derive(Self::FINGERPRINT_LABEL)
    }

    /// The audit chain key: HMAC-SHA256(install key, [`Self::AUDIT_LABEL`]).
    pub fn audit_key(&self) -> [u8; 32] {
        self.derive(Self::AUDIT_LABEL)
    }

    /// A [`Fingerprinter`] keyed with [`Self::fingerprint_salt`].
    pub fn fingerprinter(&self) -> Fingerprinter {
        let salt = Zeroizing::new(self.fingerprint_salt());
        Fingerprinter::new(&salt)
    }

    fn derive(&self, label: &[u8]) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key[..]).expect("HMAC takes any key length");
        mac.update(label);
        mac.finalize().into_bytes().into()
    }
}

impl fmt::Debug for InstallKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstallKey").finish_non_exhaustive()
    }
}

/// The agent's Ed25519 signing key: it signs every record this agent
/// writes to a fleet backend (`[backend] kind = "openbao"`), and the other
/// members verify with its public half, listed in their `[[backend.member]]`.
///
/// Its file (`<state_dir>/signing.key`) holds `#` comment lines (when it was
/// created, its public key) and the 32-byte secret seed as 64 hex digits.
/// It is kept as the identity is (0600, owner checked, no symlink, atomic
/// creation) and never leaves the host: only signatures and the public key
/// do. `Debug` shows only the public key; the secret is zeroized on drop
/// (ed25519-dalek's `zeroize` feature).
pub struct SigningKey {
    key: ed25519_dalek::SigningKey,
}

impl SigningKey {
    /// Loads the signing key at `path`, which must exist and pass
    /// [`check_private`].
    pub fn load(path: &Path) -> Result<SigningKey, StoreError> {
        let (_, bytes) = atomic::read_private(path, MAX_SECRET_FILE).map_err(|e| {
            explain_missing(
                e,
                "run `keyward init` (it keeps the existing identity and install key and adds the signing key), then `keyward fleet member` and add the entry it prints to every agent's [[backend.member]]",
            )
        })?;
        let invalid = |why: &str| {
            StoreError::Invalid(format!(
                "{} is not a keyward signing key: {why}; move it aside and run `keyward init` for a new one (then replace this agent's [[backend.member]] entry on every host)",
                path.display()
            ))
        };
        let text = std::str::from_utf8(&bytes).map_err(|_| invalid("it is not UTF-8 text"))?;
        let mut found = None;
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if found.is_some() {
                return Err(invalid("it holds more than one key line"));
            }
            let mut seed = Zeroizing::new([0u8; 32]);
            if line.len() != 64 || hex::decode_to_slice(line, &mut seed[..]).is_err() {
                return Err(invalid("its key line is not 64 hex digits"));
            }
            found = Some(ed25519_dalek::SigningKey::from_bytes(&seed));
        }
        let key = found.ok_or_else(|| invalid("it has no key line"))?;
        Ok(SigningKey { key })
    }

    /// Loads the signing key at `path`, or creates a new random one there
    /// (atomically, mode 0600, parent created 0700 if missing).
    pub fn load_or_create(path: &Path) -> Result<SigningKey, StoreError> {
        load_or_create(path, SigningKey::load, || {
            let key = SigningKey::generate();
            let public = key.public_key();
            let created = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
            let mut text = Zeroizing::new(vec![0u8; 0]);
            text.reserve_exact(64 + created.len() + public.len() + 65);
            text.extend_from_slice(b"# created: ");
            text.extend_from_slice(created.as_bytes());
            text.extend_from_slice(b"\n# public key: ");
            text.extend_from_slice(public.as_bytes());
            text.push(b'\n');
            let mut digits = Zeroizing::new([0u8; 64]);
            hex::encode_to_slice(key.key.as_bytes(), &mut digits[..]).expect("64 hex digits for 32 bytes");
            text.extend_from_slice(&digits[..]);
            text.push(b'\n');
            tracing::info!(path = %path.display(), public_key = %public, "created a new fleet signing key");
            (key, text)
        })
    }

    /// A fresh random key, kept only in memory (for tests and tools).
    pub fn generate() -> SigningKey {
        let mut seed = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut seed[..]);
        SigningKey {
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        }
    }

    /// The public key as `[[backend.member]] signing_key` writes it
    /// (`ed25519:` and the base64 of its 32 bytes).
    pub fn public_key(&self) -> String {
        crate::config::backend::format_signing_key(&self.key.verifying_key())
    }

    /// The public key.
    pub fn verifying_key(&self) -> ed25519_dalek::VerifyingKey {
        self.key.verifying_key()
    }

    /// The Ed25519 signature of `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        use ed25519_dalek::Signer;
        self.key.sign(message).to_bytes()
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("public_key", &self.public_key())
            .finish_non_exhaustive()
    }
}

/// Loads `path` if anything is there (so a symlink or a bad file is refused,
/// not replaced); otherwise creates it from `create` without clobbering a
/// file another process wrote meanwhile.
fn load_or_create<T>(
    path: &Path,
    load: fn(&Path) -> Result<T, StoreError>,
    create: impl FnOnce() -> (T, Zeroizing<Vec<u8>>),
) -> Result<T, StoreError> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => return load(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(StoreError::Io {
                path: path.to_owned(),
                source,
            })
        }
    }
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| StoreError::Invalid(format!("{} does not name a file", path.display())))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| StoreError::Io {
                path: dir.to_owned(),
                source,
            })?;
    }
    let (value, bytes) = create();
    match atomic::write_file(dir, file_name, &bytes, Mode::CreateNew) {
        Ok(()) => Ok(value),
        // Someone else created it between our check and our write: use theirs.
        Err(StoreError::Io { source, .. }) if source.kind() == io::ErrorKind::AlreadyExists => load(path),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{self, Permissions};
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn identity_create_then_load() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("state/sub/identity.txt");
        let a = AgentIdentity::load_or_create(&path).unwrap();
        assert!(a.recipient().starts_with("age1"));
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777, 0o700);
        let text = fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("# created: "));
        assert_eq!(lines[1], format!("# public key: {}", a.recipient()));
        assert!(lines[2].starts_with("AGE-SECRET-KEY-1"));
        let b = AgentIdentity::load(&path).unwrap();
        assert_eq!(a.recipient(), b.recipient());
        let c = AgentIdentity::load_or_create(&path).unwrap();
        assert_eq!(a.recipient(), c.recipient());
        // No Debug leak of the secret.
        let dbg = format!("{b:?}");
        assert!(dbg.contains(&b.recipient()) && !dbg.contains("AGE-SECRET"), "{dbg}");
        // No temp file left behind.
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn identity_load_refuses_missing_and_garbage() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("identity.txt");
        assert!(matches!(AgentIdentity::load(&path), Err(StoreError::Io { .. })));
        for bad in ["", "# only a comment\n", "hello\n", "AGE-SECRET-KEY-1NOTVALID\n"] {
            fs::write(&path, bad).unwrap();
            fs::set_permissions(&path, Permissions::from_mode(0o600)).unwrap();
            let e = AgentIdentity::load(&path).unwrap_err().to_string();
            assert!(e.contains("not an age identity"), "{bad:?}: {e}");
        }
        // Two identities in one file are refused too.
        let one = x25519::Identity::generate().to_string();
        let two = x25519::Identity::generate().to_string();
        fs::write(&path, format!("{}\n{}\n", one.expose_secret(), two.expose_secret())).unwrap();
        assert!(AgentIdentity::load(&path).is_err());
        // age-keygen's own format loads.
        fs::write(
            &path,
            format!("# created: x\n# public key: y\n\n{}\n", one.expose_secret()),
        )
        .unwrap();
        AgentIdentity::load(&path).unwrap();
    }

    #[test]
    fn identity_refuses_loose_permissions() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("identity.txt");
        AgentIdentity::load_or_create(&path).unwrap();
        fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        for r in [AgentIdentity::load(&path), AgentIdentity::load_or_create(&path)] {
            let e = r.unwrap_err();
            assert!(matches!(e, StoreError::Permissions { .. }));
            let msg = e.to_string();
            assert!(
                msg.contains("chmod 600") && msg.contains(&path.display().to_string()),
                "{msg}"
            );
        }
    }

    #[test]
    fn identity_refuses_symlink() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("real.txt");
        AgentIdentity::load_or_create(&real).unwrap();
        let link = d.path().join("identity.txt");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        for r in [AgentIdentity::load(&link), AgentIdentity::load_or_create(&link)] {
            let msg = r.unwrap_err().to_string();
            assert!(msg.contains("is a symlink"), "{msg}");
        }
    }

    #[test]
    fn identity_decrypts_what_is_encrypted_to_it() {
        let id = AgentIdentity::generate();
        let enc = age::Encryptor::with_recipients(std::iter::once(id.age_recipient() as &dyn age::Recipient)).unwrap();
        let mut out = vec![];
        let mut w = enc.wrap_output(&mut out).unwrap();
        io::Write::write_all(&mut w, b"hello").unwrap();
        w.finish().unwrap();
        assert_eq!(&id.decrypt(&out).unwrap()[..], b"hello");
        assert!(AgentIdentity::generate().decrypt(&out).is_err());
    }

    #[test]
    fn signing_key_create_load_and_refusals() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("signing.key");
        let a = SigningKey::load_or_create(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains(&format!("# public key: {}", a.public_key())), "{text}");
        let b = SigningKey::load(&path).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        assert_eq!(a.sign(b"m"), b.sign(b"m"));
        assert_eq!(SigningKey::load_or_create(&path).unwrap().public_key(), a.public_key());
        // Debug shows the public key only: never the seed.
        let seed_hex = text.lines().last().unwrap().to_owned();
        let dbg = format!("{a:?}");
        assert!(dbg.contains(&a.public_key()) && !dbg.contains(&seed_hex), "{dbg}");
        // Loose mode refused, as the identity.
        fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(SigningKey::load(&path), Err(StoreError::Permissions { .. })));
        // A key file another uid owns (it could have written its own seed,
        // and sign as this agent) is refused, naming the chown (as root:
        // only root can give a file away).
        fs::set_permissions(&path, Permissions::from_mode(0o600)).unwrap();
        if nix::unistd::chown(&path, Some(nix::unistd::Uid::from_raw(65534)), None).is_ok() {
            let err = SigningKey::load(&path).unwrap_err();
            assert!(matches!(err, StoreError::Permissions { .. }), "{err}");
            assert!(err.to_string().contains("chown"), "{err}");
        }
        // A missing file says what to run.
        let missing = SigningKey::load(&d.path().join("none")).unwrap_err().to_string();
        assert!(
            missing.contains("keyward init") && missing.contains("fleet member"),
            "{missing}"
        );
        // Garbage is refused.
        let bad = d.path().join("bad.key");
        fs::write(&bad, "nothex\n").unwrap();
        fs::set_permissions(&bad, Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(SigningKey::load(&bad), Err(StoreError::Invalid(_))));
    }

    #[test]
    fn install_key_derivations_differ_and_are_stable() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("install.key");
        let a = InstallKey::load_or_create(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim_end().len(), 64);
        assert!(text.trim_end().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a.fingerprint_salt(), a.audit_key());
        let b = InstallKey::load(&path).unwrap();
        assert_eq!(a.fingerprint_salt(), b.fingerprint_salt());
        assert_eq!(a.audit_key(), b.audit_key());
        let c = InstallKey::load_or_create(&path).unwrap();
        assert_eq!(a.audit_key(), c.audit_key());
        // A different install has different keys.
        let other = InstallKey::load_or_create(&d.path().join("other.key")).unwrap();
        assert_ne!(a.fingerprint_salt(), other.fingerprint_salt());
        assert_eq!(format!("{a:?}"), "InstallKey { .. }");
    }

    #[test]
    fn install_key_known_answer() {
        // Pins the derivation: changing it would change every fingerprint
        // and break verification of existing audit logs.
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("install.key");
        fs::write(&path, format!("{}\n", "00".repeat(32))).unwrap();
        fs::set_permissions(&path, Permissions::from_mode(0o600)).unwrap();
        let k = InstallKey::load(&path).unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(&[0u8; 32]).unwrap();
        mac.update(b"keyward fingerprint v1");
        let want: [u8; 32] = mac.finalize().into_bytes().into();
        assert_eq!(k.fingerprint_salt(), want);
    }

    #[test]
    fn install_key_refuses_garbage_and_loose_mode() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("install.key");
        fs::write(&path, "abc\n").unwrap();
        fs::set_permissions(&path, Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(InstallKey::load(&path), Err(StoreError::Invalid(_))));
        fs::write(&path, format!("{}\n", "ab".repeat(32))).unwrap();
        InstallKey::load(&path).unwrap();
        fs::set_permissions(&path, Permissions::from_mode(0o640)).unwrap();
        let msg = InstallKey::load(&path).unwrap_err().to_string();
        assert!(msg.contains("chmod 600"), "{msg}");
    }
}
