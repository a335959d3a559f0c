//! [`KeyHandle`]: a key kept current by a background watch.
//!
//! Invariants:
//!
//! - A handle always holds a complete [`KeySet`]: it is only returned once
//!   the first state has arrived, and later it only ever changes to a newer
//!   full state. When the agent is away (restart, upgrade) the handle keeps
//!   serving the last state it had, and its task reconnects with
//!   exponential backoff (100 ms, doubling, at most 5 s); the state the
//!   agent sends after a reconnect replaces it. A deleted key also keeps
//!   its last state (logged as a warning) until the key is put again.
//! - [`KeyHandle::changed`] wakes only for a different state, not for the
//!   same state resent after a reconnect.
//! - The task holds no handle: when the last clone of a handle is dropped,
//!   the task ends and its watch stream is closed.
//! - [`KeyHandle::report_use`] never waits: the report goes through the
//!   client's key-use counts (`key_use.rs`) and a task on the runtime the
//!   handle was made on.
//! - A new state forgets the client's marks of refused versions of the key
//!   (`refusals.rs`) as it arrives: `call_with_fallback` tries its primary
//!   first again.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_stream::StreamExt;

use crate::client::{Client, KeySetStream};
use crate::error::Error;
use crate::keyset::KeySet;

/// How long [`Client::handle`] waits for the first state of the key.
pub const DEFAULT_FIRST_KEYSET_TIMEOUT: Duration = Duration::from_secs(10);

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The latest state of one key, kept current in the background.
///
/// Cheap to clone; clones share one watch. See [`Client::handle`].
#[derive(Clone)]
pub struct KeyHandle {
    key: Arc<str>,
    latest: watch::Receiver<Arc<KeySet>>,
    /// Sends the key-use reports.
    client: Client,
    /// Where they are sent from, whichever thread calls `report_use`.
    runtime: tokio::runtime::Handle,
}

impl KeyHandle {
    /// The key's name (`ENV/NAME`).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The latest state of the key.
    pub fn current(&self) -> Arc<KeySet> {
        Arc::clone(&self.latest.borrow())
    }

    /// Tells the agent, in the background, that a call made with `version`
    /// of this key succeeded: the evidence that lets a rotation retire the
    /// old key (without it, the rotation waits at PROMOTED and alerts
    /// `no_evidence`). Call it after each successful call you make with a
    /// secret from [`KeyHandle::current`], naming the version of the secret
    /// you used (`keys.primary.version` or the fallback's), never the
    /// current primary's after the fact: the state may have changed
    /// meanwhile. [`Client::call_with_fallback`] does this by itself.
    ///
    /// Cheap, and never fails nor waits: the client sends at most one
    /// report per version every
    /// [`USE_REPORT_INTERVAL`](crate::USE_REPORT_INTERVAL), carrying the
    /// count of successes since the last one, from a task; a failure to
    /// report is logged at debug level.
    ///
    /// ```no_run
    /// # async fn run(client: keyward_client::Client) -> Result<(), keyward_client::Error> {
    /// let billing = client.handle("prod/billing-api").await?;
    /// let keys = billing.current();
    /// let ok = true; // a call to the service with keys.primary.secret
    /// if ok {
    ///     billing.report_use(keys.primary.version);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn report_use(&self, version: u64) {
        self.client.note_use(&self.runtime, &self.key, version);
    }

    /// Waits until the key changes (a state this handle has not returned
    /// from `changed` yet), and returns the new state.
    pub async fn changed(&mut self) -> Result<Arc<KeySet>, Error> {
        self.latest.changed().await.map_err(|_| {
            Error::Rpc(tonic::Status::cancelled(
                "the key handle's background task ended (was the tokio runtime shut down?)",
            ))
        })?;
        Ok(Arc::clone(&self.latest.borrow_and_update()))
    }
}

impl std::fmt::Debug for KeyHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyHandle").field("key", &self.key).finish()
    }
}

impl Client {
    /// A handle on `key` that follows its changes in a background task.
    /// Waits for the key's first state, at most
    /// [`DEFAULT_FIRST_KEYSET_TIMEOUT`]; while waiting, an agent that is not
    /// up yet is retried, but a missing key or a denial fails at once.
    ///
    /// ```no_run
    /// # async fn run(client: keyward_client::Client) -> Result<(), keyward_client::Error> {
    /// let mut billing = client.handle("prod/billing-api").await?;
    /// let now = billing.current();
    /// println!("using v{}", now.primary.version);
    /// let next = billing.changed().await?; // after the next rotation step
    /// println!("now v{}", next.primary.version);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn handle(&self, key: &str) -> Result<KeyHandle, Error> {
        self.handle_with_timeout(key, DEFAULT_FIRST_KEYSET_TIMEOUT).await
    }

    /// [`Client::handle`] with another wait for the first state.
    pub async fn handle_with_timeout(&self, key: &str, first_state_within: Duration) -> Result<KeyHandle, Error> {
        let mut last_error = None;
        let first = tokio::time::timeout(first_state_within, async {
            let mut backoff = Backoff::default();
            loop {
                match self.first_state(key).await {
                    Ok(found) => return Ok(found),
                    Err(e) if transient(&e) => {
                        tracing::debug!(key, error = %e, "waiting for the keyward agent");
                        last_error = Some(e);
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        })
        .await;
        let (state, stream) = match first {
            Ok(found) => found?,
            Err(_elapsed) => {
                return Err(last_error.unwrap_or(Error::Timeout {
                    key: key.to_string(),
                    waited: first_state_within,
                }))
            }
        };
        let (tx, latest) = watch::channel(Arc::new(state));
        tokio::spawn(follow(self.clone(), key.to_string(), stream, tx));
        Ok(KeyHandle {
            key: key.into(),
            latest,
            client: self.clone(),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    async fn first_state(&self, key: &str) -> Result<(KeySet, KeySetStream), Error> {
        let mut stream = self.watch_boxed(key).await?;
        match stream.next().await {
            Some(Ok(state)) => Ok((state, stream)),
            Some(Err(e)) => Err(e),
            None => Err(Error::AgentUnavailable {
                socket: self.socket().to_path_buf(),
            }),
        }
    }
}

/// Failures that a restarting agent causes; worth waiting out.
fn transient(e: &Error) -> bool {
    match e {
        Error::AgentUnavailable { .. } => true,
        Error::Rpc(s) => s.code() == tonic::Code::Unavailable,
        _ => false,
    }
}

/// The background task of a handle: reads the watch stream into `tx`, and
/// opens a new stream when it ends; returns when every handle is gone.
async fn follow(client: Client, key: String, mut stream: KeySetStream, tx: watch::Sender<Arc<KeySet>>) {
    let mut backoff = Backoff::default();
    loop {
        loop {
            let item = tokio::select! {
                _ = tx.closed() => return,
                item = stream.next() => item,
            };
            match item {
                Some(Ok(state)) => {
                    backoff.reset();
                    // This task is the only sender: nothing changes the
                    // state between the look and the send.
                    if !tx.borrow().same_state(&state) {
                        // A new state: the versions a provider refused in
                        // the old one are tried again (see `refusals.rs`),
                        // by every call that sees it.
                        client.refusals().forget(&key);
                        tx.send_replace(Arc::new(state));
                    }
                }
                // The key was deleted; the stream goes on.
                Some(Err(Error::NotFound(m))) => tracing::warn!(%key, "{m}; keeping its last state"),
                Some(Err(e)) => {
                    tracing::info!(%key, error = %e, "keyward watch failed; reconnecting");
                    break;
                }
                None => {
                    tracing::info!(%key, "keyward watch ended (agent restarting?); reconnecting");
                    break;
                }
            }
        }
        stream = loop {
            let delay = backoff.next_delay();
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            match client.watch_boxed(&key).await {
                Ok(s) => break s,
                // Someone else serves the socket now: say so, keep the
                // last state, and retry (the agent may come back).
                Err(e @ Error::UntrustedSocket { .. }) => tracing::warn!(%key, "keyward watch: {e}"),
                Err(e) => {
                    tracing::debug!(%key, error = %e, retry_in = ?backoff.peek(), "keyward watch: reconnect failed")
                }
            }
        };
        tracing::info!(%key, "keyward watch reconnected");
    }
}

/// Exponential backoff: 100 ms, 200 ms, 400 ms… at most 5 s.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn peek(&self) -> Duration {
        BACKOFF_FIRST
            .saturating_mul(1u32 << self.failures.min(16))
            .min(BACKOFF_MAX)
    }

    fn next_delay(&mut self) -> Duration {
        let d = self.peek();
        self.failures = self.failures.saturating_add(1);
        d
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_seconds_and_resets() {
        let mut b = Backoff::default();
        let ms: Vec<u128> = (0..9).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        for _ in 0..100 {
            b.next_delay();
        }
        assert_eq!(b.next_delay(), BACKOFF_MAX);
        b.reset();
        assert_eq!(b.next_delay(), BACKOFF_FIRST);
    }
}
