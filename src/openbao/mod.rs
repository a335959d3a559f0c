//! A client of the KV v2 secrets engine of OpenBao (or HashiCorp Vault: the
//! HTTP API is the same).
//!
//! [`KvClient`] reads, lists and writes (with check-and-set) the entries of
//! one mount, and manages their metadata. It authenticates with a token
//! from a file or an AppRole login, lazily, caches the token, and recovers
//! from a 403 by getting a fresh token once; [`KvClient::spawn_renewal`]
//! keeps the token alive in the background.
//!
//! Invariants:
//! - Tokens and secret_ids live in zeroizing secret types, travel only in
//!   a sensitive `X-Vault-Token` header (or the login body), and never
//!   reach a `Debug` output, a log line or an error message.
//! - Every error is a [`KvError`] whose message is one line naming the
//!   address or the API path and saying what to do.
//! - Only paths of `[A-Za-z0-9._/-]` segments go into a URL: no `..`, no
//!   empty segment (see `path`).
//!
//! Layout: `path` (address and path checks), `error` ([`KvError`] and the
//! mapping of error answers), `response` (reading success answers),
//! `auth` (credential files, the login body), `session` (the HTTP client,
//! the token cache, the 403 retry), `renewal` (keeping the token alive).

mod auth;
mod entry;
mod error;
mod lease;
mod options;
pub(crate) mod path;
mod renewal;
mod response;
mod session;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::Method;

pub use entry::{KvEntry, KvMetadata, KvVersionState};
pub use error::KvError;
pub use options::{KvAuth, KvOptions};
use session::{Request, Session};

/// A KV v2 client for one mount. Cloning shares the connection pool and
/// the token.
#[derive(Clone)]
pub struct KvClient {
    session: Arc<Session>,
}

/// Shows the address and the mount only.
impl fmt::Debug for KvClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvClient")
            .field("address", &self.session.address)
            .field("mount", &self.session.mount)
            .finish_non_exhaustive()
    }
}

impl KvClient {
    /// Checks the options and builds the client. Reads the CA file, but
    /// does no network I/O and reads no credential: the first request logs
    /// in. A bad address, mount or CA file is a [`KvError::Config`].
    pub fn new(options: KvOptions) -> Result<KvClient, KvError> {
        Ok(KvClient {
            session: Arc::new(Session::new(options)?),
        })
    }

    /// The server's address, without a trailing `/`.
    pub fn address(&self) -> &str {
        &self.session.address
    }

    /// `{mount}/{kind}/{path}` for a checked path.
    fn api_path(&self, kind: &str, path: &str) -> Result<String, KvError> {
        path::check_path("OpenBao path", path).map_err(KvError::Config)?;
        Ok(format!("{}/{kind}/{path}", self.session.mount))
    }

    /// `GET /v1/{mount}/data/{path}`: the current version. `Ok(None)` when
    /// there is none: never written, or its current version deleted or
    /// destroyed.
    pub async fn read(&self, path: &str) -> Result<Option<KvEntry>, KvError> {
        self.read_at(path, None).await
    }

    /// `GET /v1/{mount}/data/{path}?version=N`: that version, `Ok(None)`
    /// when it does not exist or was deleted or destroyed. Version 0 means
    /// the current one.
    pub async fn read_version(&self, path: &str, version: u64) -> Result<Option<KvEntry>, KvError> {
        self.read_at(path, Some(version)).await
    }

    /// [`KvClient::read`] or [`KvClient::read_version`].
    async fn read_at(&self, path: &str, version: Option<u64>) -> Result<Option<KvEntry>, KvError> {
        let api_path = self.api_path("data", path)?;
        let mut request = Request::new(Method::GET, api_path);
        request.query = version.map(|v| format!("version={v}"));
        match self.session.fetch(&request).await? {
            None => Ok(None),
            Some(body) => response::entry(&body, &request.api_path),
        }
    }

    /// `GET /v1/{mount}/metadata/{path}`; `Ok(None)` when the path has no
    /// metadata (never written, or deleted with
    /// [`KvClient::delete_metadata`]).
    pub async fn metadata(&self, path: &str) -> Result<Option<KvMetadata>, KvError> {
        let request = Request::new(Method::GET, self.api_path("metadata", path)?);
        match self.session.fetch(&request).await? {
            None => Ok(None),
            Some(body) => response::metadata(&body, &request.api_path).map(Some),
        }
    }

    /// `LIST /v1/{mount}/metadata/{path}/` (sent as `GET …?list=true`):
    /// the names under `path` as OpenBao returns them, sub-folders ending
    /// in `/`. `Ok(vec![])` when there are none. `""` lists the mount's
    /// root; a trailing `/` on `path` is allowed.
    pub async fn list(&self, path: &str) -> Result<Vec<String>, KvError> {
        let folder = path.strip_suffix('/').unwrap_or(path);
        let api_path = if folder.is_empty() {
            format!("{}/metadata/", self.session.mount)
        } else {
            format!("{}/", self.api_path("metadata", folder)?)
        };
        let mut request = Request::new(Method::GET, api_path);
        request.query = Some("list=true".to_owned());
        match self.session.fetch(&request).await? {
            None => Ok(Vec::new()),
            Some(body) => response::list(&body, &request.api_path),
        }
    }

    /// `POST /v1/{mount}/data/{path}` `{"options": {"cas": N}, "data":
    /// data}`: writes a new version and returns its number. With `cas`,
    /// only if the current version is `N` (`Some(0)`: only if the path has
    /// no version yet); otherwise [`KvError::CasMismatch`].
    pub async fn write(&self, path: &str, data: &serde_json::Value, cas: Option<u64>) -> Result<u64, KvError> {
        #[derive(serde::Serialize)]
        struct Options {
            cas: u64,
        }
        #[derive(serde::Serialize)]
        struct Body<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            options: Option<Options>,
            data: &'a serde_json::Value,
        }
        let api_path = self.api_path("data", path)?;
        let body = serde_json::to_vec(&Body {
            options: cas.map(|cas| Options { cas }),
            data,
        })
        .map_err(|e| KvError::Config(format!("cannot encode the data for {api_path} as JSON: {e}")))?;
        let mut request = Request::new(Method::POST, api_path);
        request.body = Some(Bytes::from(body));
        match self.session.fetch(&request).await? {
            Some(body) => response::written_version(&body, &request.api_path),
            None => Err(KvError::Http {
                status: 404,
                path: request.api_path,
                message: "not found: check that the mount is a KV v2 secrets engine".to_owned(),
            }),
        }
    }

    /// `POST /v1/{mount}/metadata/{path}`: sets `delete_version_after`
    /// (whole seconds, rounded up; zero turns it off) and `max_versions`,
    /// each only when given. Creates the metadata if the path has none.
    pub async fn write_metadata(
        &self,
        path: &str,
        delete_version_after: Option<Duration>,
        max_versions: Option<u32>,
    ) -> Result<(), KvError> {
        #[derive(serde::Serialize)]
        struct Body {
            #[serde(skip_serializing_if = "Option::is_none")]
            delete_version_after: Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            max_versions: Option<u32>,
        }
        let body = Body {
            delete_version_after: delete_version_after.map(path::seconds_string),
            max_versions,
        };
        let mut request = Request::new(Method::POST, self.api_path("metadata", path)?);
        request.body = Some(Bytes::from(
            serde_json::to_vec(&body).expect("a string and a number always encode"),
        ));
        match self.session.fetch(&request).await? {
            Some(_) => Ok(()),
            None => Err(KvError::Http {
                status: 404,
                path: request.api_path,
                message: "not found: check that the mount is a KV v2 secrets engine".to_owned(),
            }),
        }
    }

    /// `DELETE /v1/{mount}/metadata/{path}`: the entry and all its
    /// versions. `Ok` when there was nothing to delete.
    pub async fn delete_metadata(&self, path: &str) -> Result<(), KvError> {
        let request = Request::new(Method::DELETE, self.api_path("metadata", path)?);
        self.session.fetch(&request).await.map(drop)
    }

    /// Keeps the token alive until `stop` turns true (or its sender is
    /// dropped): an AppRole token is renewed at about half its lease, and
    /// replaced by a new login when a renewal fails or its max TTL is
    /// near; a token file's token is renewed at half its TTL if
    /// `lookup-self` says it is renewable, and the file is read again
    /// otherwise. Obtains the first token if no request has. Never panics;
    /// logs failures (never the token) and retries with backoff. Call it
    /// once per client (its clones share the token), within a Tokio
    /// runtime.
    pub fn spawn_renewal(&self, stop: tokio::sync::watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(renewal::run(self.session.clone(), stop))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> KvClient {
        KvClient::new(KvOptions {
            address: "http://127.0.0.1:8200/".into(),
            mount: "/secret/".into(),
            namespace: None,
            ca_file: None,
            auth: KvAuth::TokenFile("/nonexistent/token".into()),
            timeout: Duration::from_secs(1),
        })
        .unwrap()
    }

    #[test]
    fn new_checks_the_options_without_network() {
        let kv = client();
        assert_eq!(kv.address(), "http://127.0.0.1:8200");
        assert_eq!(
            kv.api_path("data", "keyward/keys/prod/api").unwrap(),
            "secret/data/keyward/keys/prod/api"
        );
        let debug = format!("{kv:?}");
        assert!(
            debug.contains("http://127.0.0.1:8200") && debug.contains("secret"),
            "{debug}"
        );

        let options = |address: &str, mount: &str| KvOptions {
            address: address.into(),
            mount: mount.into(),
            namespace: None,
            ca_file: None,
            auth: KvAuth::TokenFile("/t".into()),
            timeout: Duration::from_secs(1),
        };
        for (opts, want) in [
            (options("127.0.0.1:8200", "secret"), "OpenBao address"),
            (options("http://h:8200", ""), "KV mount"),
            (options("http://h:8200", "se cret"), "KV mount"),
            (
                KvOptions {
                    timeout: Duration::ZERO,
                    ..options("http://h", "secret")
                },
                "timeout is zero",
            ),
            (
                KvOptions {
                    namespace: Some("team a".into()),
                    ..options("http://h", "secret")
                },
                "namespace",
            ),
            (
                KvOptions {
                    ca_file: Some("/nonexistent/ca.pem".into()),
                    ..options("https://h", "secret")
                },
                "CA file /nonexistent/ca.pem",
            ),
            (
                KvOptions {
                    auth: KvAuth::AppRole {
                        mount: "app role".into(),
                        role_id_file: "/r".into(),
                        secret_id_file: "/s".into(),
                    },
                    ..options("https://h", "secret")
                },
                "AppRole auth mount",
            ),
        ] {
            match KvClient::new(opts) {
                Err(KvError::Config(message)) => assert!(message.contains(want), "{want}: {message}"),
                Err(other) => panic!("{want}: not a Config error: {other}"),
                Ok(_) => panic!("{want}: accepted"),
            }
        }
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate\n").unwrap();
        let error = KvClient::new(KvOptions {
            address: "https://h:8200".into(),
            mount: "secret".into(),
            namespace: None,
            ca_file: Some(ca),
            auth: KvAuth::TokenFile("/t".into()),
            timeout: Duration::from_secs(1),
        })
        .unwrap_err();
        assert!(error.to_string().contains("no PEM certificate"), "{error}");
    }

    #[tokio::test]
    async fn bad_paths_are_refused_before_any_request() {
        let kv = client();
        for path in ["../sys/seal", "a//b", "a/b/", "", "a b", "a/./b"] {
            let error = kv.read(path).await.unwrap_err();
            assert!(matches!(error, KvError::Config(_)), "{path:?}: {error}");
            let error = kv.write(path, &serde_json::json!({}), None).await.unwrap_err();
            assert!(matches!(error, KvError::Config(_)), "{path:?}: {error}");
        }
        // A listing may name the root, and end in '/'.
        let error = kv.list("a//").await.unwrap_err();
        assert!(matches!(error, KvError::Config(_)), "{error}");
    }

    #[tokio::test]
    async fn an_unreadable_token_file_is_an_auth_error() {
        let error = client().read("a/b").await.unwrap_err();
        match error {
            KvError::Auth(message) => {
                assert!(message.contains("/nonexistent/token"), "{message}");
                assert!(message.contains("cannot be read"), "{message}");
            }
            other => panic!("not an Auth error: {other}"),
        }
    }

    #[test]
    fn entries_do_not_show_their_values() {
        let entry = KvEntry {
            version: 4,
            data: serde_json::json!({"ciphertext": "very-secret-bytes"}),
        };
        let debug = format!("{entry:?}");
        assert!(debug.contains("ciphertext") && debug.contains('4'), "{debug}");
        assert!(!debug.contains("very-secret-bytes"), "{debug}");
    }
}
