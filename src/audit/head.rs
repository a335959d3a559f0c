//! The head file, `<log>.head`: the last record known to be on disk (seq
//! and hash, under a MAC), so that a tail cut off while the agent was
//! stopped is detected too. Fixed-length, so a rewrite in place always
//! covers the previous content.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use hmac::Mac;

use super::line::{hmac, is_hash, HmacSha256};

/// The head file's fixed length (JSON padded with spaces, then `\n`), so a
/// rewrite in place always covers the previous content.
pub(super) const HEAD_LEN: usize = 192;

/// The path of the head file that goes with the log at `path`:
/// `audit.jsonl` → `audit.jsonl.head`.
pub fn head_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".head");
    PathBuf::from(s)
}

/// What the head file says: the last durable record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Head {
    pub(super) seq: u64,
    pub(super) hash: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct HeadFields {
    seq: u64,
    hash: String,
    mac: String,
}

/// MAC of the head: HMAC(key, "head" || seq as 8 bytes big-endian || hash
/// as its 64 hex digits).
fn head_mac(key: &[u8; 32], seq: u64, hash: &str) -> HmacSha256 {
    let mut mac = hmac(key);
    mac.update(b"head");
    mac.update(&seq.to_be_bytes());
    mac.update(hash.as_bytes());
    mac
}

/// The head file's content: [`HEAD_LEN`] bytes.
pub(super) fn encode_head(key: &[u8; 32], head: &Head) -> Vec<u8> {
    let mac = hex::encode(head_mac(key, head.seq, &head.hash).finalize().into_bytes());
    let fields = HeadFields {
        seq: head.seq,
        hash: head.hash.clone(),
        mac,
    };
    let mut buf = serde_json::to_vec(&fields).expect("a head always serializes");
    debug_assert!(buf.len() < HEAD_LEN);
    buf.resize(HEAD_LEN - 1, b' ');
    buf.push(b'\n');
    buf
}

/// Reads a head file's content: `Ok(None)` if it is empty (created, never
/// written), `Err` with a message if it is unreadable or its MAC is wrong.
pub(super) fn decode_head(key: &[u8; 32], bytes: &[u8]) -> Result<Option<Head>, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let f: HeadFields =
        serde_json::from_slice(bytes.trim_ascii()).map_err(|e| format!("the head file is not valid: {e}"))?;
    let mac = hex::decode(&f.mac).map_err(|_| "the head file's mac is not hex".to_owned())?;
    if !is_hash(&f.hash) || head_mac(key, f.seq, &f.hash).verify_slice(&mac).is_err() {
        return Err("the head file's MAC does not verify (it was edited, or written under another key)".into());
    }
    Ok(Some(Head {
        seq: f.seq,
        hash: f.hash,
    }))
}

/// The head file, behind its own mutex: moved by the sync thread after
/// each sync, and by `close`.
pub(super) struct HeadFile {
    pub(super) file: File,
    pub(super) key: [u8; 32],
    pub(super) path: PathBuf,
    /// The seq the file names, if it names a valid one; it only moves
    /// forward (a background sync that started before a newer one ended
    /// must not move it back).
    pub(super) names: Option<u64>,
    /// The last record known to be on disk (seq and hash): what the file
    /// names, or named when it was found valid at start.
    pub(super) durable: Option<(u64, String)>,
}

impl HeadFile {
    /// Names record `seq` (with `hash`), which must be durable, if that is
    /// past what the file names. Overwrites in place; a failure only
    /// weakens the detection of a cut tail, so it is logged (and retried at
    /// the next move), not returned.
    pub(super) fn advance(&mut self, seq: u64, hash: &str) {
        if self.names.is_some_and(|names| names >= seq) {
            return;
        }
        let head = Head {
            seq,
            hash: hash.to_owned(),
        };
        match self.file.write_all_at(&encode_head(&self.key, &head), 0) {
            Ok(()) => {
                self.names = Some(seq);
                self.durable = Some((seq, hash.to_owned()));
            }
            Err(e) => tracing::error!(path = %self.path.display(), error = %e, "could not update the audit head file"),
        }
    }

    /// fdatasyncs the head file (at close).
    pub(super) fn sync(&self) {
        if let Err(e) = self.file.sync_data() {
            tracing::error!(path = %self.path.display(), error = %e, "could not sync the audit head file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::tests::KEY;

    /// A head file as the format defines it, its MAC computed outside
    /// this code (HMAC-SHA256 under the key of "head", the seq as 8 bytes
    /// big-endian and the hash's hex digits): written and read byte for
    /// byte.
    #[test]
    fn a_known_head_is_written_and_read_byte_for_byte() {
        let json = concat!(
            "{\"seq\":42,\"hash\":\"abababababababababababababababababababababababababababababababab\",",
            "\"mac\":\"671f52cafee2d3c0368fcc1eb6f2b5989467f73dc0771cd07876b8f29d7e46dd\"}"
        );
        let known = format!("{json:<width$}\n", width = HEAD_LEN - 1);
        let head = Head {
            seq: 42,
            hash: "ab".repeat(32),
        };
        assert_eq!(String::from_utf8(encode_head(&KEY, &head)).unwrap(), known);
        assert_eq!(decode_head(&KEY, known.as_bytes()), Ok(Some(head)));
    }

    #[test]
    fn head_round_trips_and_rejects_tampering() {
        let head = Head {
            seq: 42,
            hash: "ab".repeat(32),
        };
        let bytes = encode_head(&KEY, &head);
        assert_eq!(bytes.len(), HEAD_LEN);
        assert_eq!(decode_head(&KEY, &bytes), Ok(Some(head)));
        assert!(decode_head(&[8; 32], &bytes).is_err());
        let forged = String::from_utf8(bytes).unwrap().replace("42", "43");
        assert!(decode_head(&KEY, forged.as_bytes()).is_err());
        assert_eq!(decode_head(&KEY, b""), Ok(None));
        assert!(decode_head(&KEY, b"{\"seq\":1").is_err());
    }

    #[test]
    fn head_path_appends_dot_head() {
        assert_eq!(
            head_path(Path::new("/var/log/keyward/audit.jsonl")),
            Path::new("/var/log/keyward/audit.jsonl.head")
        );
    }
}
