//! Reading OpenBao's success answers: KV v2 entries, metadata, listings,
//! and the `auth` and token-lookup blocks.
//!
//! Fields are picked out of a `serde_json::Value` by hand rather than by
//! serde derive: serde's messages quote the offending value ("invalid type:
//! string \"…\""), and these bodies hold secret data and tokens. Every
//! reason here names a field, never a value.

use std::collections::BTreeMap;
use std::time::Duration;

use secrecy::SecretString;
use serde_json::Value;
use zeroize::Zeroize;

use super::entry::{KvEntry, KvMetadata, KvVersionState};
use super::error::KvError;

/// A parsed body whose strings are wiped when dropped: for the answers
/// that carry a token.
struct WipedJson(Value);

impl Drop for WipedJson {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

/// Zeroes every string in `value` (object keys are names, not secrets).
fn wipe(value: &mut Value) {
    match value {
        Value::String(text) => text.zeroize(),
        Value::Array(items) => items.iter_mut().for_each(wipe),
        Value::Object(fields) => fields.values_mut().for_each(wipe),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// A parsed body, or why it is not one.
fn json(body: &[u8], api_path: &str) -> Result<Value, KvError> {
    serde_json::from_slice(body).map_err(|e| KvError::BadResponse {
        path: api_path.to_owned(),
        // Syntax errors carry a position, never the input.
        reason: format!("the body is not JSON (line {}, column {})", e.line(), e.column()),
    })
}

/// The value at `fields` (`["data", "metadata", "version"]`).
fn at<'a>(json: &'a Value, fields: &[&str]) -> Option<&'a Value> {
    fields.iter().try_fold(json, |value, field| value.get(field))
}

/// A `BadResponse` for a field that is missing or of the wrong type.
fn bad_field(api_path: &str, fields: &[&str], want: &str) -> KvError {
    KvError::BadResponse {
        path: api_path.to_owned(),
        reason: format!("{} is missing or not {want}", fields.join(".")),
    }
}

/// The unsigned integer at `fields`.
fn number(json: &Value, fields: &[&str], api_path: &str) -> Result<u64, KvError> {
    at(json, fields)
        .and_then(Value::as_u64)
        .ok_or_else(|| bad_field(api_path, fields, "a number"))
}

/// `GET {mount}/data/{path}`: the entry, or `None` when the version holds
/// no data (deleted or destroyed).
pub(super) fn entry(body: &[u8], api_path: &str) -> Result<Option<KvEntry>, KvError> {
    let json = json(body, api_path)?;
    let data = at(&json, &["data", "data"]).cloned().unwrap_or(Value::Null);
    if data.is_null() {
        return Ok(None);
    }
    let version = number(&json, &["data", "metadata", "version"], api_path)?;
    Ok(Some(KvEntry { version, data }))
}

/// `GET {mount}/metadata/{path}`.
pub(super) fn metadata(body: &[u8], api_path: &str) -> Result<KvMetadata, KvError> {
    let json = json(body, api_path)?;
    let current_version = number(&json, &["data", "current_version"], api_path)?;
    let versions_field = ["data", "versions"];
    let listed = at(&json, &versions_field)
        .and_then(Value::as_object)
        .ok_or_else(|| bad_field(api_path, &versions_field, "an object"))?;
    let mut versions = BTreeMap::new();
    for (number, state) in listed {
        let version: u64 = number.parse().map_err(|_| KvError::BadResponse {
            path: api_path.to_owned(),
            reason: "data.versions has a key that is not a version number".to_owned(),
        })?;
        let deleted = state
            .get("deletion_time")
            .and_then(Value::as_str)
            .is_some_and(|time| !time.is_empty());
        let destroyed = state.get("destroyed").and_then(Value::as_bool).unwrap_or(false);
        versions.insert(version, KvVersionState { deleted, destroyed });
    }
    Ok(KvMetadata {
        current_version,
        versions,
    })
}

/// `LIST {mount}/metadata/{path}/`: the names, sub-folders ending in `/`.
pub(super) fn list(body: &[u8], api_path: &str) -> Result<Vec<String>, KvError> {
    let json = json(body, api_path)?;
    let field = ["data", "keys"];
    let keys = at(&json, &field)
        .and_then(Value::as_array)
        .ok_or_else(|| bad_field(api_path, &field, "a list"))?;
    keys.iter()
        .map(|key| key.as_str().map(str::to_owned))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| bad_field(api_path, &field, "a list of strings"))
}

/// `POST {mount}/data/{path}`: the version written.
pub(super) fn written_version(body: &[u8], api_path: &str) -> Result<u64, KvError> {
    number(&json(body, api_path)?, &["data", "version"], api_path)
}

/// What OpenBao says about a token's life: from a login's or a renewal's
/// `auth` block, or from `lookup-self`'s `data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TokenLife {
    /// Time left; zero means the token does not expire.
    pub(super) ttl: Duration,
    /// Whether `renew-self` can extend it.
    pub(super) renewable: bool,
}

/// A login's answer: the new token and its life.
pub(super) struct Login {
    /// The token. Only leaves through `expose_secret`.
    pub(super) token: SecretString,
    /// Its life.
    pub(super) life: TokenLife,
}

/// The `auth` block of a login or of `renew-self`. The body holds the
/// token: the caller keeps it in a zeroizing buffer, and the parsed copy
/// is wiped here.
pub(super) fn auth_block(body: &[u8], api_path: &str) -> Result<(Option<SecretString>, TokenLife), KvError> {
    let json = WipedJson(json(body, api_path)?);
    let json = &json.0;
    let ttl = number(json, &["auth", "lease_duration"], api_path)?;
    let renewable = at(json, &["auth", "renewable"])
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let token = at(json, &["auth", "client_token"])
        .and_then(Value::as_str)
        .filter(|token| !token.is_empty())
        .map(|token| SecretString::from(token.to_owned()));
    Ok((
        token,
        TokenLife {
            ttl: Duration::from_secs(ttl),
            renewable,
        },
    ))
}

/// A login's answer.
pub(super) fn login(body: &[u8], api_path: &str) -> Result<Login, KvError> {
    let (token, life) = auth_block(body, api_path)?;
    let token = token.ok_or_else(|| bad_field(api_path, &["auth", "client_token"], "a token"))?;
    Ok(Login { token, life })
}

/// `lookup-self`'s `data` (which also echoes the token as `id`: that field
/// is never read).
pub(super) fn lookup(body: &[u8], api_path: &str) -> Result<TokenLife, KvError> {
    let json = WipedJson(json(body, api_path)?);
    let json = &json.0;
    let ttl = number(json, &["data", "ttl"], api_path)?;
    // A root token has no `renewable` field.
    let renewable = at(json, &["data", "renewable"])
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(TokenLife {
        ttl: Duration::from_secs(ttl),
        renewable,
    })
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    const PATH: &str = "secret/data/a/b";

    #[test]
    fn entries() {
        let body = br#"{"request_id":"1","data":{"data":{"x":"1"},"metadata":{"created_time":"2026-11-26T03:19:00Z","custom_metadata":null,"deletion_time":"","destroyed":false,"version":3}}}"#;
        let got = entry(body, PATH).unwrap().unwrap();
        assert_eq!(got.version, 3);
        assert_eq!(got.data, serde_json::json!({"x": "1"}));
        let deleted = br#"{"data":{"data":null,"metadata":{"deletion_time":"2026-11-26T03:19:00Z","destroyed":false,"version":1}}}"#;
        assert!(entry(deleted, PATH).unwrap().is_none());
        let no_version = br#"{"data":{"data":{"x":"secret-value"},"metadata":{"version":"3"}}}"#;
        let error = entry(no_version, PATH).unwrap_err();
        assert_eq!(
            error,
            KvError::BadResponse {
                path: PATH.into(),
                reason: "data.metadata.version is missing or not a number".into()
            }
        );
        let error = entry(b"{\"data\": \"secret-value", PATH).unwrap_err();
        assert!(error.to_string().contains("not JSON (line 1"), "{error}");
        assert!(!error.to_string().contains("secret-value"), "{error}");
    }

    #[test]
    fn metadata_versions() {
        let body = br#"{"data":{"cas_required":false,"current_version":3,"oldest_version":1,"versions":{
            "1":{"created_time":"t","deletion_time":"","destroyed":true},
            "2":{"created_time":"t","deletion_time":"2026-11-26T03:19:00Z","destroyed":false},
            "3":{"created_time":"t","deletion_time":"","destroyed":false}}}}"#;
        let got = metadata(body, PATH).unwrap();
        assert_eq!(got.current_version, 3);
        let states: Vec<_> = got.versions.iter().map(|(v, s)| (*v, s.deleted, s.destroyed)).collect();
        assert_eq!(states, [(1, false, true), (2, true, false), (3, false, false)]);
        let bad = br#"{"data":{"current_version":1,"oldest_version":0,"versions":{"one":{}}}}"#;
        assert!(matches!(metadata(bad, PATH), Err(KvError::BadResponse { .. })));
    }

    #[test]
    fn listings() {
        let body = br#"{"data":{"keys":["b","c/"]}}"#;
        assert_eq!(list(body, PATH).unwrap(), ["b", "c/"]);
        assert!(matches!(
            list(br#"{"data":{"keys":[1]}}"#, PATH),
            Err(KvError::BadResponse { .. })
        ));
        assert!(matches!(
            list(br#"{"data":null}"#, PATH),
            Err(KvError::BadResponse { .. })
        ));
    }

    #[test]
    fn writes() {
        let body = br#"{"data":{"created_time":"t","deletion_time":"","destroyed":false,"version":7}}"#;
        assert_eq!(written_version(body, PATH).unwrap(), 7);
    }

    #[test]
    fn logins_and_lookups() {
        let body = br#"{"data":null,"auth":{"client_token":"s.xtM7m5DBdbXg1TS7Q8OIVXsh","lease_duration":3,"renewable":true}}"#;
        let got = login(body, "auth/approle/login").unwrap();
        assert_eq!(got.token.expose_secret(), "s.xtM7m5DBdbXg1TS7Q8OIVXsh");
        assert_eq!(
            got.life,
            TokenLife {
                ttl: Duration::from_secs(3),
                renewable: true
            }
        );
        let Err(error) = login(br#"{"auth":{"lease_duration":3}}"#, "auth/approle/login") else {
            panic!("a login answer without a token was accepted");
        };
        assert!(error.to_string().contains("auth.client_token"), "{error}");
        let root = br#"{"data":{"id":"s.root-token-here","creation_ttl":0,"ttl":0,"policies":["root"]}}"#;
        assert_eq!(
            lookup(root, "auth/token/lookup-self").unwrap(),
            TokenLife {
                ttl: Duration::ZERO,
                renewable: false
            }
        );
    }
}
