//! Where the token comes from: the files that hold a token or an AppRole's
//! ids, and the AppRole login request.
//!
//! Invariant: what these files hold is read into zeroizing buffers and kept
//! in [`SecretString`]s; messages name the file, never its content.

use std::path::Path;

use bytes::Bytes;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use super::error::KvError;

/// Reads a file holding one credential (a token, a role_id, a secret_id):
/// its content, trimmed, which must be non-empty printable ASCII (it goes
/// into a header or a JSON string). `what` names the file ("OpenBao token
/// file") and `fix` says how to provide it.
pub(super) fn read_secret_file(what: &str, path: &Path, fix: &str) -> Result<SecretString, KvError> {
    let error = |problem: String| KvError::Auth(format!("the {what} {} {problem}: {fix}", path.display()));
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| error(format!("cannot be read ({e})")))?);
    let text = std::str::from_utf8(&bytes).map_err(|_| error("is not text".to_owned()))?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(error("is empty".to_owned()));
    }
    if !trimmed.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(error(
            "holds more than one word, or characters other than printable ASCII".to_owned(),
        ));
    }
    Ok(SecretString::from(trimmed.to_owned()))
}

/// What to do about the token file.
pub(super) const TOKEN_FILE_FIX: &str =
    "write the agent's OpenBao token to it, alone on one line, readable only by the agent (mode 0600)";

/// What to do about the AppRole files.
pub(super) const APPROLE_FILE_FIX: &str =
    "write the AppRole's id to it, alone on one line, readable only by the agent (mode 0600); \
     get the ids with `bao read auth/approle/role/ROLE/role-id` and `bao write -f auth/approle/role/ROLE/secret-id`";

/// The body of `POST auth/{mount}/login`, `{"role_id": …, "secret_id": …}`,
/// in a buffer that is wiped when the request is done with it.
pub(super) fn approle_login_body(role_id: &SecretString, secret_id: &SecretString) -> Bytes {
    #[derive(serde::Serialize)]
    struct LoginBody<'a> {
        role_id: &'a str,
        secret_id: &'a str,
    }
    let (role_id, secret_id) = (role_id.expose_secret(), secret_id.expose_secret());
    // Room for the worst case (every byte escaped), so that the buffer is
    // never reallocated, leaving an unwiped copy behind.
    let mut body = Zeroizing::new(Vec::with_capacity(2 * (role_id.len() + secret_id.len()) + 64));
    serde_json::to_writer(&mut *body, &LoginBody { role_id, secret_id })
        .expect("serializing two strings to a Vec cannot fail");
    Bytes::from_owner(body)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn credential_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let read = |content: &[u8]| {
            std::fs::write(&path, content).unwrap();
            read_secret_file("OpenBao token file", &path, TOKEN_FILE_FIX)
        };
        assert_eq!(read(b"s.abcDEF123\n").unwrap().expose_secret(), "s.abcDEF123");
        assert_eq!(read(b"  hvs.x-y_z  \r\n").unwrap().expose_secret(), "hvs.x-y_z");
        for (content, problem) in [
            (&b"\n  \n"[..], "is empty"),
            (b"s.abc def", "more than one word"),
            (b"s.abc\x01", "printable ASCII"),
            (b"s.\xff\xfe", "is not text"),
        ] {
            let message = read(content).unwrap_err().to_string();
            assert!(message.contains(problem), "{message}");
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(message.contains("write the agent's OpenBao token"), "{message}");
            assert!(!message.contains("abc"), "no content in {message}");
        }
        let missing = read_secret_file("OpenBao token file", &dir.path().join("nope"), TOKEN_FILE_FIX).unwrap_err();
        assert!(missing.to_string().contains("cannot be read"), "{missing}");
        if nix::unistd::geteuid().is_root() {
            return; // root reads a mode-000 file
        }
        std::fs::write(&path, "s.abc").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
        let denied = read_secret_file("OpenBao token file", &path, TOKEN_FILE_FIX).unwrap_err();
        assert!(denied.to_string().contains("ermission denied"), "{denied}");
    }

    #[test]
    fn login_body_is_json() {
        let body = approle_login_body(
            &SecretString::from("role-1".to_owned()),
            &SecretString::from("se\"cret".to_owned()),
        );
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json, serde_json::json!({"role_id": "role-1", "secret_id": "se\"cret"}));
    }
}
