//! The keys that `keyward run` and `keyward render` hold: keys for programs
//! that know nothing of keyward.
//!
//! `run` starts a command with keys in its environment and restarts or
//! signals it when a key's primary changes (or on every change, with
//! `--restart-on any`); `render` writes keys into a file from a template
//! and re-renders it on every change. Both fetch every key before
//! anything starts (an unreachable agent or a missing key is an error, never
//! an empty variable or file), follow the keys with keyward-client's
//! handles (which keep the last state and reconnect with backoff when the
//! agent restarts), and never print a secret: messages name keys, versions
//! and fingerprints.
//!
//! Both hold keys for as long as they run, so they harden themselves first
//! ([`keyward::hygiene::harden_client`]): no core dump (the hard limit 0 is
//! inherited by the command `run` starts, which holds the keys in its
//! environment), not dumpable, memory locked where allowed.

use std::collections::HashMap;
use std::time::Duration;

use keyward::secret::KeyRef;
use keyward_client::{Client, KeyHandle, KeySet};
use tokio::sync::mpsc;

use crate::text::client_error;

/// See the module docs; what fails is said, and the command goes on.
pub(crate) fn harden() {
    for warning in keyward::hygiene::harden_client() {
        eprintln!("keyward: {warning}");
    }
}

/// Longest wait between two attempts to start following a key.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Fetches every key; the first failure is the error, naming the key.
pub(crate) async fn fetch_all(client: &Client, keys: &[KeyRef]) -> Result<Vec<KeySet>, String> {
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        let set = client
            .get(&key.to_string())
            .await
            .map_err(|e| format!("cannot fetch {key}: {}", client_error(e)))?;
        out.push(set);
    }
    Ok(out)
}

/// Which value of a key is its primary: the version and its fingerprint (a
/// keyed hash of the secret), never the secret. Two equal `PrimaryId`s are
/// the same primary, so `keyward run` can tell a change of the primary from
/// one of the fallback alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PrimaryId {
    pub version: u64,
    pub fingerprint: String,
}

impl PrimaryId {
    pub(crate) fn of(set: &KeySet) -> PrimaryId {
        PrimaryId {
            version: set.primary.version,
            fingerprint: set.primary.fingerprint.clone(),
        }
    }
}

/// A key whose state changed, and its primary in the new state.
#[derive(Clone, Debug)]
pub(crate) struct Change {
    pub key: String,
    pub primary: PrimaryId,
}

/// Follows `keys`, a handle each, and sends a [`Change`] for every key
/// whose generation differs from the last one seen (starting from `seen`,
/// the generations the command was given). Ends when the receiver is
/// dropped.
pub(crate) fn follow(client: &Client, keys: &[KeyRef], seen: &HashMap<String, u64>) -> mpsc::Receiver<Change> {
    say_reconnects();
    let (tx, rx) = mpsc::channel(64);
    for key in keys {
        let key = key.to_string();
        let last = seen.get(&key).copied();
        tokio::spawn(follow_key(client.clone(), key, last, tx.clone()));
    }
    rx
}

/// Puts keyward-client's own notices on stderr: a handle that lost the
/// agent and is reconnecting, and when it is back (its `tracing` events at
/// info and above, which name the key and the error, never a secret). The
/// command's user sees the agent go away, as with the watch `run` and
/// `render` had before.
fn say_reconnects() {
    let _already_set = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new("keyward_client=info"))
        .without_time()
        .with_ansi(false)
        .with_level(false)
        .with_target(false)
        .try_init();
}

/// One key of [`follow`]. Its handle reconnects by itself; only getting
/// the handle (the key's first state on the watch) is retried here.
async fn follow_key(client: Client, key: String, mut last: Option<u64>, tx: mpsc::Sender<Change>) {
    let Some(mut handle) = first_handle(&client, &key, &tx).await else {
        return;
    };
    let mut state = handle.current();
    loop {
        if last != Some(state.generation) {
            last = Some(state.generation);
            let change = Change {
                key: key.clone(),
                primary: PrimaryId::of(&state),
            };
            if tx.send(change).await.is_err() {
                return;
            }
        }
        state = tokio::select! {
            _ = tx.closed() => return,
            changed = handle.changed() => match changed {
                Ok(state) => state,
                // The runtime is shutting down.
                Err(_) => return,
            },
        };
    }
}

/// A handle on `key`, retried with backoff until it comes or `tx` closes.
async fn first_handle(client: &Client, key: &str, tx: &mpsc::Sender<Change>) -> Option<KeyHandle> {
    let mut backoff = Duration::from_millis(100);
    loop {
        let attempt = tokio::select! {
            _ = tx.closed() => return None,
            attempt = client.handle(key) => attempt,
        };
        match attempt {
            Ok(handle) => return Some(handle),
            Err(e) => eprintln!(
                "keyward: lost the watch on {key} ({}); retrying in {} ms",
                client_error(e),
                backoff.as_millis()
            ),
        }
        tokio::select! {
            _ = tx.closed() => return None,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// "prod/a generation 4 (primary v3 …), …": what a command was given,
/// without the secrets.
pub(crate) fn describe(sets: &[KeySet]) -> String {
    sets.iter()
        .map(|s| {
            format!(
                "{} generation {} (primary v{} {})",
                s.key, s.generation, s.primary.version, s.primary.fingerprint
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
