//! [`Client::call_with_fallback`]: use the primary, and when the service
//! refuses it, report that to the agent and try the fallback.
//!
//! During a rotation the agent serves two keys: the primary and the
//! fallback (the staged new key, or after promotion the old one). A service
//! that has not learnt the new key yet, or has already revoked the old one,
//! refuses one of them; trying the other keeps requests working, and the
//! report lets the agent hold the retire gate, roll back a bad rotation and
//! raise alerts. A success is reported too (`ReportKeyUse`, at most once
//! per version every few seconds, see `key_use.rs`): it is the evidence
//! that lets a rotation retire the old key. No report ever delays the
//! call: each is sent from a separate task, and its failure is only logged
//! (at debug).

use std::future::Future;
use std::sync::Arc;

use crate::client::Client;
use crate::error::Error;
use crate::handle::KeyHandle;
use crate::keyset::KeySet;
use crate::secret::Secret;

/// Where [`Client::call_with_fallback`] gets the key: a name (one
/// [`Client::get`] per call) or a [`KeyHandle`] (no round trip).
#[derive(Debug, Clone, Copy)]
pub enum KeySource<'a> {
    /// Fetch `ENV/NAME` now.
    Key(&'a str),
    /// Use the handle's current state.
    Handle(&'a KeyHandle),
}

impl<'a> From<&'a str> for KeySource<'a> {
    fn from(k: &'a str) -> Self {
        KeySource::Key(k)
    }
}

impl<'a> From<&'a KeyHandle> for KeySource<'a> {
    fn from(h: &'a KeyHandle) -> Self {
        KeySource::Handle(h)
    }
}

/// An error that may carry an HTTP status, for [`auth_rejection`].
pub trait HttpStatus {
    /// The HTTP status of the response that caused this error, if any.
    fn http_status(&self) -> Option<u16>;
}

/// The usual test for "the service refused the key": an HTTP status of 401
/// or 403. Returns that status, which is what the agent is told.
///
/// ```
/// use keyward_client::{auth_rejection, HttpStatus};
/// struct Failed(u16);
/// impl HttpStatus for Failed {
///     fn http_status(&self) -> Option<u16> { Some(self.0) }
/// }
/// assert_eq!(auth_rejection(&Failed(401)), Some(401));
/// assert_eq!(auth_rejection(&Failed(403)), Some(403));
/// assert_eq!(auth_rejection(&Failed(500)), None);
/// ```
pub fn auth_rejection<E: HttpStatus>(e: &E) -> Option<u16> {
    e.http_status().filter(|s| matches!(s, 401 | 403))
}

/// Why [`Client::call_with_fallback`] failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError<E> {
    /// The key could not be had from the agent.
    #[error(transparent)]
    Keyward(#[from] Error),
    /// The call failed: the last error `f` returned.
    #[error("{0}")]
    Service(E),
}

impl Client {
    /// Calls `f` with the primary secret; if that fails and `auth_status`
    /// says the error is a refusal of the key (it returns the HTTP status,
    /// see [`auth_rejection`]), reports the refused version to the agent
    /// (without waiting) and calls `f` with the fallback, if the key has
    /// one. Returns the first success, or the last error. A refused
    /// fallback is reported too.
    ///
    /// A success tells the agent which version worked (`ReportKeyUse`, in
    /// the background, at most once per version every
    /// [`USE_REPORT_INTERVAL`](crate::USE_REPORT_INTERVAL), with the count of
    /// successes since the last report): the evidence that lets a rotation
    /// retire the old key.
    ///
    /// `f` gets the secret by reference; to move it into the future, clone
    /// it (clones share one wiped buffer) or build the request from it
    /// before the `async` block.
    ///
    /// ```no_run
    /// use keyward_client::{auth_rejection, Client, HttpStatus};
    ///
    /// #[derive(Debug)]
    /// struct ApiError(u16);
    /// impl HttpStatus for ApiError {
    ///     fn http_status(&self) -> Option<u16> { Some(self.0) }
    /// }
    ///
    /// async fn charge(token: &str) -> Result<String, ApiError> {
    ///     # let _ = token;
    ///     Err(ApiError(401)) // an HTTP call with `Authorization: Bearer {token}`
    /// }
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = Client::connect().await?.with_service("billing-worker");
    /// let key = client.handle("prod/billing-api").await?;
    /// let receipt = client
    ///     .call_with_fallback(
    ///         &key,
    ///         |secret| {
    ///             let secret = secret.clone();
    ///             async move { charge(secret.expose_str().unwrap_or_default()).await }
    ///         },
    ///         auth_rejection,
    ///     )
    ///     .await;
    /// # let _ = receipt;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn call_with_fallback<'k, T, E, F, Fut>(
        &self,
        source: impl Into<KeySource<'k>>,
        mut f: F,
        auth_status: impl Fn(&E) -> Option<u16>,
    ) -> Result<T, CallError<E>>
    where
        F: FnMut(&Secret) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let keys: Arc<KeySet> = match source.into() {
            KeySource::Key(k) => Arc::new(self.get(k).await?),
            KeySource::Handle(h) => h.current(),
        };
        let refused = match f(&keys.primary.secret).await {
            Ok(v) => {
                self.note_use_here(&keys.key, keys.primary.version);
                return Ok(v);
            }
            Err(e) => e,
        };
        let Some(status) = auth_status(&refused) else {
            return Err(CallError::Service(refused));
        };
        self.report_in_background(&keys.key, keys.primary.version, status, "primary");
        let Some(fallback) = &keys.fallback else {
            return Err(CallError::Service(refused));
        };
        match f(&fallback.secret).await {
            Ok(v) => {
                self.note_use_here(&keys.key, fallback.version);
                Ok(v)
            }
            Err(e) => {
                if let Some(status) = auth_status(&e) {
                    self.report_in_background(&keys.key, fallback.version, status, "fallback");
                }
                Err(CallError::Service(e))
            }
        }
    }

    fn report_in_background(&self, key: &str, version: u64, status: u16, role: &'static str) {
        let client = self.clone();
        let key = key.to_string();
        tokio::spawn(async move {
            let detail = format!("HTTP {status} for the {role} (keyward-client call_with_fallback)");
            let service = client.service().to_string();
            if let Err(e) = client
                .report_auth_failure(&key, version, status, &service, &detail)
                .await
            {
                tracing::debug!(%key, version, error = %e, "could not report an auth failure to keyward");
            }
        });
    }
}
