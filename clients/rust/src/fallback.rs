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
//!
//! A refused version is remembered for a cool-down, during which calls go
//! straight to the other version, and its refusals are reported once per
//! interval with a count (`refusals.rs`).

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use crate::client::Client;
use crate::error::Error;
use crate::handle::KeyHandle;
use crate::keyset::KeySet;
use crate::refusals::{Order, Versions};
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
    /// A refused version is remembered for the client's
    /// [fallback cool-down](Client::with_fallback_cooldown) (10 s unless
    /// set; shared by its clones and handles): while it lasts, and while
    /// the key's state is the one it was refused in, calls go straight to
    /// the fallback, and the primary only if the fallback is refused too.
    /// A new state of the key (a rotation step, a rollback) ends that at
    /// once, as does a success with the version. So during an early
    /// revocation the revoked primary gets one call per caller per
    /// cool-down. Without a fallback, or with both versions refused, every
    /// call tries the primary first, as with a cool-down of zero.
    ///
    /// Reports: the first refusal of a version is reported at once; the
    /// ones that follow within the cool-down (or
    /// [`MIN_REPORT_INTERVAL`](crate::MIN_REPORT_INTERVAL) with a cool-down
    /// of zero) are counted, and the next report of that version says how
    /// many ("… (and 49 more refusals since the last report)"). A report's
    /// detail names the HTTP status and the error's type, never the error's
    /// message.
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
        let versions = (keys.primary.version, keys.fallback.as_ref().map(|f| f.version));
        let cooldown = self.fallback_cooldown();
        let order = self.refusals().plan(&keys.key, versions, cooldown, Instant::now());
        let primary = (&keys.primary, "primary");
        let tries = match (order, &keys.fallback) {
            (Order::FallbackFirst, Some(fallback)) => [Some((fallback, "fallback")), Some(primary)],
            (_, fallback) => [Some(primary), fallback.as_ref().map(|f| (f, "fallback"))],
        };
        let mut last = None;
        for (n, (version, role)) in tries.iter().flatten().enumerate() {
            let refused = match f(&version.secret).await {
                Ok(v) => {
                    self.refusals().worked(&keys.key, version.version);
                    self.note_use_here(&keys.key, version.version);
                    return Ok(v);
                }
                Err(e) => e,
            };
            let Some(status) = auth_status(&refused) else {
                return Err(CallError::Service(refused));
            };
            let then = match tries.get(n + 1).copied().flatten() {
                Some((_, next)) => format!("trying the {next}"),
                None if n == 0 => "no fallback to try".to_owned(),
                None => "no other version to try".to_owned(),
            };
            let outcome = format!("HTTP {status} ({}) for the {role}; {then}", type_name::<E>());
            self.refused_in_background(&keys.key, version.version, versions, status, outcome);
            last = Some(refused);
        }
        Err(CallError::Service(last.expect("the primary is always tried")))
    }

    /// Notes the refusal of `version` of `key` (in state `versions`), and
    /// reports it in the background unless it is counted into a later
    /// report (see `refusals.rs`).
    fn refused_in_background(&self, key: &str, version: u64, versions: Versions, status: u16, outcome: String) {
        let held = self
            .refusals()
            .refused(key, version, versions, self.fallback_cooldown(), Instant::now());
        let Some(held) = held else { return };
        let detail = match held {
            0 => outcome,
            n => format!("{outcome} (and {n} more refusals since the last report)"),
        };
        let client = self.clone();
        let key = key.to_string();
        tokio::spawn(async move {
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

/// The name of type `E` without its module paths
/// (`alloc::boxed::Box<dyn core::error::Error>` is `Box<dyn Error>`): what
/// a report says of an error, which never carries its message.
fn type_name<E>() -> String {
    let full = std::any::type_name::<E>();
    let mut out = String::with_capacity(full.len());
    // Where the path being read began in `out`.
    let mut path_start = 0;
    let mut chars = full.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ':' && chars.peek() == Some(&':') {
            chars.next();
            out.truncate(path_start);
        } else {
            out.push(c);
            if !(c.is_alphanumeric() || c == '_') {
                path_start = out.len();
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::type_name;

    struct ApiError;

    #[test]
    fn a_type_name_keeps_no_module_path() {
        assert_eq!(type_name::<ApiError>(), "ApiError");
        assert_eq!(type_name::<Box<dyn std::error::Error>>(), "Box<dyn Error>");
        assert_eq!(type_name::<Result<u16, std::io::Error>>(), "Result<u16, Error>");
        assert_eq!(type_name::<(u16, String)>(), "(u16, String)");
    }
}
