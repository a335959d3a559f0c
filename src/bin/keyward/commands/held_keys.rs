//! The keys that `keyward run` and `keyward render` hold: keys for programs
//! that know nothing of keyward.
//!
//! `run` starts a command with keys in its environment and restarts or
//! signals it when a key changes; `render` writes keys into a file from a
//! template and re-renders it on every change. Both fetch every key before
//! anything starts (an unreachable agent or a missing key is an error, never
//! an empty variable or file), follow the keys with `WatchKeys`
//! (reconnecting with backoff when the agent restarts), and never print a
//! secret: messages name keys, versions and fingerprints.
//!
//! Both hold keys for as long as they run, so they harden themselves first
//! ([`keyward::hygiene::harden_client`]): no core dump (the hard limit 0 is
//! inherited by the command `run` starts, which holds the keys in its
//! environment), not dumpable, memory locked where allowed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keyward::proto::{self, keys_client::KeysClient};
use keyward::secret::KeyRef;
use tokio::sync::mpsc;

use crate::sockets::channel;
use crate::text::{key_name, refused};

/// See the module docs; what fails is said, and the command goes on.
pub(crate) fn harden() {
    for warning in keyward::hygiene::harden_client() {
        eprintln!("keyward: {warning}");
    }
}

/// Longest wait between two reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Fetches every key; the first failure is the error, naming the key.
pub(crate) async fn fetch_all(sock: &Path, keys: &[KeyRef]) -> Result<Vec<proto::KeySet>, String> {
    let channel = channel(sock).await?;
    let mut client = KeysClient::new(channel);
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        let set = client
            .get_key(proto::GetKeyRequest {
                key: Some(key.to_proto()),
            })
            .await
            .map_err(|s| format!("cannot fetch {key}: {}", refused(s)))?
            .into_inner();
        out.push(set);
    }
    Ok(out)
}

/// Follows `keys` with WatchKeys, reconnecting with backoff, and sends the
/// name of every key whose generation differs from the last one seen
/// (starting from `seen`).
pub(crate) fn spawn_watcher(
    sock: PathBuf,
    keys: Vec<KeyRef>,
    mut seen: HashMap<String, u64>,
) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            let stream = async {
                let channel = channel(&sock).await?;
                KeysClient::new(channel)
                    .watch_keys(proto::WatchKeysRequest {
                        keys: keys.iter().map(KeyRef::to_proto).collect(),
                    })
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(refused)
            }
            .await;
            let ended = match stream {
                Err(e) => e,
                Ok(mut stream) => loop {
                    match stream.message().await {
                        Ok(Some(event)) => {
                            backoff = Duration::from_millis(100);
                            let Some(set) = event.key_set else { continue };
                            let name = key_name(set.key.as_ref());
                            if seen.insert(name.clone(), set.generation) != Some(set.generation)
                                && tx.send(name).await.is_err()
                            {
                                return;
                            }
                        }
                        Ok(None) => break "the agent ended the watch".to_owned(),
                        Err(s) => break refused(s),
                    }
                },
            };
            if tx.is_closed() {
                return;
            }
            eprintln!(
                "keyward: lost the watch on the keys ({ended}); retrying in {} ms",
                backoff.as_millis()
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    });
    rx
}

/// "prod/a generation 4 (primary v3 …), …": what a command was given,
/// without the secrets.
pub(crate) fn describe(sets: &[proto::KeySet]) -> String {
    sets.iter()
        .map(|s| {
            let p = s.primary.as_ref();
            format!(
                "{} generation {} (primary v{} {})",
                key_name(s.key.as_ref()),
                s.generation,
                p.map_or(0, |p| p.version),
                p.map_or("", |p| p.fingerprint.as_str())
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
