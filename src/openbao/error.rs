//! [`KvError`] and the mapping of OpenBao's error answers onto it.
//!
//! Invariant: no message holds a token or a secret_id. Messages are built
//! from the address, the API path, the status and OpenBao's `errors` array;
//! the mapping never sees a token, and [`scrub`] removes one from any text
//! that might echo it back.

use serde_json::Value;

/// How many characters of OpenBao's error text a message keeps.
const MESSAGE_MAX_CHARS: usize = 300;

/// What went wrong talking to OpenBao. Every message is one line, names the
/// address or the API path, and says what to do. `path` fields hold the API
/// path under `/v1`, e.g. `secret/data/keyward/keys/prod/billing-api`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// The settings cannot work (bad address, unreadable CA file, a path
    /// with characters a KV path cannot have); the message says what to fix.
    #[error("{0}")]
    Config(String),
    /// The server could not be reached, or did not answer in time.
    #[error(
        "OpenBao at {address} is unreachable ({reason}): the agent keeps serving its local copy; \
         check that the server is up and reachable from this host"
    )]
    Unreachable {
        /// The server's address.
        address: String,
        /// What failed: "connection refused", "no answer within 5s", …
        reason: String,
    },
    /// No token to send: a token or AppRole file cannot be read, or the
    /// login was refused. The message names the file and what to do.
    #[error("{0}")]
    Auth(String),
    /// 403, still, after one retry with a fresh token.
    #[error(
        "OpenBao denied access to {path} ({message}): check that the token's policy grants it \
         and that the token (or the AppRole's secret_id) is still valid"
    )]
    Denied {
        /// The API path.
        path: String,
        /// OpenBao's error text.
        message: String,
    },
    /// A check-and-set write found another version than the one it named.
    #[error(
        "{path} changed in OpenBao since it was read (the check-and-set write was refused): \
         read it again and retry"
    )]
    CasMismatch {
        /// The API path.
        path: String,
    },
    /// 503: the server is sealed, or a standby that cannot serve yet.
    #[error(
        "OpenBao at {address} is sealed or not ready: the agent keeps serving its local copy; \
         unseal it (bao operator unseal) or wait until it is active"
    )]
    Sealed {
        /// The server's address.
        address: String,
    },
    /// Any other error answer.
    #[error("OpenBao answered {status} for {path}: {message}")]
    Http {
        /// The HTTP status.
        status: u16,
        /// The API path.
        path: String,
        /// OpenBao's `errors`, joined.
        message: String,
    },
    /// A success answer that is not what the KV v2 API sends.
    #[error(
        "OpenBao sent an unexpected answer for {path} ({reason}): check that the mount is a KV v2 \
         secrets engine and that the address points at OpenBao or Vault"
    )]
    BadResponse {
        /// The API path.
        path: String,
        /// What was wrong with it.
        reason: String,
    },
}

impl KvError {
    /// True when the server could not serve at all (down, unreachable,
    /// sealed): the caller keeps its local copy and tries later.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, KvError::Unreachable { .. } | KvError::Sealed { .. })
    }
}

/// OpenBao's error text from an answer's body: the `errors` array, each
/// multi-error ("2 errors occurred: * a * b") flattened, joined with "; ",
/// on one line and at most [`MESSAGE_MAX_CHARS`] long. A body that is not
/// OpenBao's JSON (a proxy's page) is shown as text, cut short.
pub(super) fn error_text(body: &[u8]) -> String {
    let parts: Vec<String> = match serde_json::from_slice::<Value>(body) {
        Ok(json) => json
            .get("errors")
            .and_then(Value::as_array)
            .map(|errors| {
                errors
                    .iter()
                    .filter_map(Value::as_str)
                    .flat_map(split_multi_error)
                    .collect()
            })
            .unwrap_or_default(),
        Err(_) => vec![String::from_utf8_lossy(body)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")],
    };
    let mut unique: Vec<String> = Vec::new();
    for part in parts {
        if !part.is_empty() && !unique.contains(&part) {
            unique.push(part);
        }
    }
    if unique.is_empty() {
        return "no error message".to_owned();
    }
    cut(&unique.join("; "), MESSAGE_MAX_CHARS)
}

/// The lines of one entry of `errors`, without go-multierror's
/// "N errors occurred:" header and "* " bullets.
fn split_multi_error(error: &str) -> Vec<String> {
    error
        .lines()
        .map(|line| line.trim().trim_start_matches("* ").trim())
        .filter(|line| !line.is_empty() && !is_multi_error_header(line))
        .map(|line| line.chars().map(|c| if c.is_control() { ' ' } else { c }).collect())
        .collect()
}

/// "1 error occurred:", "3 errors occurred:".
fn is_multi_error_header(line: &str) -> bool {
    let Some((count, rest)) = line.split_once(' ') else {
        return false;
    };
    count.chars().all(|c| c.is_ascii_digit()) && matches!(rest, "error occurred:" | "errors occurred:")
}

/// `text` cut to `max` characters, with "…" when cut.
fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((end, _)) => format!("{}…", &text[..end]),
    }
}

/// True when a 404's body says "nothing there" (KV v2 answers `{"errors":
/// []}`, or the metadata of a deleted version) rather than "no such route"
/// (a mount that does not exist, or is not KV v2).
pub(super) fn not_found_means_absent(body: &[u8]) -> bool {
    match serde_json::from_slice::<Value>(body) {
        Ok(json) => json
            .get("errors")
            .and_then(Value::as_array)
            .is_none_or(|errors| errors.is_empty()),
        Err(_) => body.iter().all(u8::is_ascii_whitespace),
    }
}

/// A check-and-set refusal: OpenBao answers 400 with "check-and-set
/// parameter did not match the current version" (the wording has been
/// stable since Vault 0.10; matched loosely, case-insensitively).
fn is_cas_mismatch(status: u16, text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    status == 400 && text.contains("check-and-set") && (text.contains("did not match") || text.contains("mismatch"))
}

/// The error for an answer that is not a success (and not a 404 that means
/// absent). 403 becomes [`KvError::Denied`]; the retry with a fresh token
/// happens before this is called.
pub(super) fn answer_error(status: u16, body: &[u8], address: &str, api_path: &str) -> KvError {
    let message = error_text(body);
    if status == 503 || message.to_ascii_lowercase().contains("is sealed") {
        return KvError::Sealed {
            address: address.to_owned(),
        };
    }
    if is_cas_mismatch(status, &message) {
        return KvError::CasMismatch {
            path: api_path.to_owned(),
        };
    }
    if status == 403 {
        return KvError::Denied {
            path: api_path.to_owned(),
            message,
        };
    }
    let message = if status == 404 && message.contains("no handler for route") {
        let mount = api_path.split('/').next().unwrap_or_default();
        format!("{message}: check that a KV v2 secrets engine is mounted at {mount}/ (bao secrets list)")
    } else {
        message
    };
    KvError::Http {
        status,
        path: api_path.to_owned(),
        message,
    }
}

/// `text` with every occurrence of each secret replaced by "[redacted]".
/// Secrets shorter than 4 bytes are left alone (they would match
/// everywhere and are not real tokens).
pub(super) fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut text = text.to_owned();
    for secret in secrets {
        if secret.len() >= 4 && text.contains(secret) {
            text = text.replace(secret, "[redacted]");
        }
    }
    text
}

/// [`scrub`] over the text fields of an error.
pub(super) fn scrub_error(error: KvError, secrets: &[&str]) -> KvError {
    match error {
        KvError::Config(m) => KvError::Config(scrub(&m, secrets)),
        KvError::Auth(m) => KvError::Auth(scrub(&m, secrets)),
        KvError::Unreachable { address, reason } => KvError::Unreachable {
            address,
            reason: scrub(&reason, secrets),
        },
        KvError::Denied { path, message } => KvError::Denied {
            path,
            message: scrub(&message, secrets),
        },
        KvError::Http { status, path, message } => KvError::Http {
            status,
            path,
            message: scrub(&message, secrets),
        },
        KvError::BadResponse { path, reason } => KvError::BadResponse {
            path,
            reason: scrub(&reason, secrets),
        },
        other @ (KvError::CasMismatch { .. } | KvError::Sealed { .. }) => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDRESS: &str = "http://127.0.0.1:8200";
    const PATH: &str = "secret/data/keyward/keys/prod/api";

    #[test]
    fn error_text_joins_and_flattens() {
        let table: [(&[u8], &str); 7] = [
            (br#"{"errors":["permission denied"]}"#, "permission denied"),
            (br#"{"errors":["a","b"]}"#, "a; b"),
            (
                b"{\"errors\":[\"2 errors occurred:\\n\\t* permission denied\\n\\t* invalid token\\n\\n\"]}",
                "permission denied; invalid token",
            ),
            (
                b"{\"errors\":[\"1 error occurred:\\n\\t* permission denied\\n\\n\", \"permission denied\"]}",
                "permission denied",
            ),
            (br#"{"errors":[]}"#, "no error message"),
            (b"", "no error message"),
            (
                b"<html>\n<b>Bad gateway</b>\n</html>",
                "<html> <b>Bad gateway</b> </html>",
            ),
        ];
        for (body, want) in table {
            assert_eq!(error_text(body), want, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn error_text_is_cut_short() {
        let long = format!("{{\"errors\":[\"{}\"]}}", "é".repeat(1000));
        let text = error_text(long.as_bytes());
        assert_eq!(text.chars().count(), MESSAGE_MAX_CHARS + 1);
        assert!(text.ends_with('…'));
    }

    #[test]
    fn not_found_bodies() {
        assert!(not_found_means_absent(br#"{"errors":[]}"#));
        assert!(not_found_means_absent(b""));
        assert!(not_found_means_absent(
            br#"{"data":{"data":null,"metadata":{"deletion_time":"2026-01-01T00:00:00Z","version":1}}}"#
        ));
        assert!(!not_found_means_absent(
            br#"{"errors":["no handler for route \"nomount/data/x\". route entry not found."]}"#
        ));
        assert!(!not_found_means_absent(b"404 page not found"));
    }

    #[test]
    fn answers_map_to_errors() {
        let cas = br#"{"errors":["check-and-set parameter did not match the current version"]}"#;
        assert_eq!(
            answer_error(400, cas, ADDRESS, PATH),
            KvError::CasMismatch { path: PATH.into() }
        );
        let cas_multi = b"{\"errors\":[\"1 error occurred:\\n\\t* Check-and-set parameter did not match the current version\\n\\n\"]}";
        assert_eq!(
            answer_error(400, cas_multi, ADDRESS, PATH),
            KvError::CasMismatch { path: PATH.into() }
        );
        // A mount that requires cas, written without it: not a mismatch.
        let cas_required = br#"{"errors":["check-and-set parameter required for this call"]}"#;
        assert!(matches!(
            answer_error(400, cas_required, ADDRESS, PATH),
            KvError::Http { status: 400, .. }
        ));
        assert_eq!(
            answer_error(503, br#"{"errors":["Vault is sealed"]}"#, ADDRESS, PATH),
            KvError::Sealed {
                address: ADDRESS.into()
            }
        );
        assert_eq!(
            answer_error(500, br#"{"errors":["Vault is sealed"]}"#, ADDRESS, PATH),
            KvError::Sealed {
                address: ADDRESS.into()
            }
        );
        assert_eq!(
            answer_error(403, br#"{"errors":["permission denied"]}"#, ADDRESS, PATH),
            KvError::Denied {
                path: PATH.into(),
                message: "permission denied".into()
            }
        );
        assert_eq!(
            answer_error(500, br#"{"errors":["internal error"]}"#, ADDRESS, PATH),
            KvError::Http {
                status: 500,
                path: PATH.into(),
                message: "internal error".into()
            }
        );
        let no_route = br#"{"errors":["no handler for route \"nomount/data/x\". route entry not found."]}"#;
        let error = answer_error(404, no_route, ADDRESS, "nomount/data/x");
        assert!(
            error
                .to_string()
                .contains("KV v2 secrets engine is mounted at nomount/"),
            "{error}"
        );
    }

    #[test]
    fn messages_are_one_line_and_say_what_to_do() {
        let errors = [
            KvError::Unreachable {
                address: ADDRESS.into(),
                reason: "connection refused".into(),
            },
            KvError::Sealed {
                address: ADDRESS.into(),
            },
            KvError::Denied {
                path: PATH.into(),
                message: "permission denied".into(),
            },
            KvError::CasMismatch { path: PATH.into() },
            KvError::BadResponse {
                path: PATH.into(),
                reason: "data.metadata.version is missing".into(),
            },
        ];
        for error in errors {
            let text = error.to_string();
            assert!(!text.contains('\n'), "{text}");
            assert!(text.contains(ADDRESS) || text.contains(PATH), "{text}");
            assert!(["check", "retry", "unseal"].iter().any(|w| text.contains(w)), "{text}");
        }
        assert!(KvError::Sealed {
            address: ADDRESS.into()
        }
        .is_unreachable());
        assert!(KvError::Unreachable {
            address: ADDRESS.into(),
            reason: String::new()
        }
        .is_unreachable());
        assert!(!KvError::CasMismatch { path: PATH.into() }.is_unreachable());
    }

    #[test]
    fn scrub_removes_secrets() {
        let token = "s.otU74YtxdGu5CUJW3bq7uIAL";
        let error = KvError::Http {
            status: 400,
            path: PATH.into(),
            message: format!("bad token {token} given"),
        };
        let scrubbed = scrub_error(error, &[token, "ab"]);
        assert_eq!(
            scrubbed.to_string(),
            format!("OpenBao answered 400 for {PATH}: bad token [redacted] given")
        );
    }
}
