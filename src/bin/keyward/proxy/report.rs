//! The proxy's reports to the agent, sent off the request path.
//!
//! Refusals (`ReportAuthFailure` with the refused version) and misdirected
//! placeholders go through a bounded queue to one task, at most one report
//! per key, version and kind every [`MIN_INTERVAL`]; the ones held back
//! are counted into the next. Successful use goes through the key handles
//! (`KeyHandle::report_use`), which batch it per version.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use keyward_client::Client;
use tokio::sync::mpsc;

/// Shortest time between two reports of one kind on one version.
const MIN_INTERVAL: Duration = Duration::from_millis(200);
/// Reports waiting to be sent, at most; more are dropped (and counted).
const QUEUE: usize = 1024;

enum Note {
    Failure {
        index: usize,
        version: u64,
        status: u16,
        detail: String,
    },
    Misdirected {
        index: usize,
        version: u64,
        sent_to: String,
    },
}

/// Sends the proxy's reports.
pub(crate) struct Reporter {
    queue: mpsc::Sender<Note>,
}

impl Reporter {
    /// Starts the task that reports about `keys` (by index) through `client`.
    pub(crate) fn start(client: Client, keys: Vec<String>) -> Reporter {
        let (queue, notes) = mpsc::channel(QUEUE);
        tokio::spawn(send_all(client, keys, notes));
        Reporter { queue }
    }

    /// The provider answered `status` (401, 403) to `version` of key `index`.
    pub(crate) fn failure(&self, index: usize, version: u64, status: u16, detail: &str) {
        let _ = self.queue.try_send(Note::Failure {
            index,
            version,
            status,
            detail: detail.chars().take(200).collect(),
        });
    }

    /// A placeholder of `version` of key `index` was headed to `sent_to`.
    pub(crate) fn misdirected(&self, index: usize, version: u64, sent_to: &str) {
        let _ = self.queue.try_send(Note::Misdirected {
            index,
            version,
            sent_to: sent_to.to_owned(),
        });
    }
}

async fn send_all(client: Client, keys: Vec<String>, mut notes: mpsc::Receiver<Note>) {
    // (index, version, misdirected) → when last sent, how many held back.
    let mut last: HashMap<(usize, u64, bool), (Instant, u64)> = HashMap::new();
    while let Some(note) = notes.recv().await {
        let id = match &note {
            Note::Failure { index, version, .. } => (*index, *version, false),
            Note::Misdirected { index, version, .. } => (*index, *version, true),
        };
        let held = match last.get_mut(&id) {
            Some((at, held)) if at.elapsed() < MIN_INTERVAL => {
                *held += 1;
                continue;
            }
            Some((at, held)) => {
                *at = Instant::now();
                std::mem::take(held)
            }
            None => {
                last.insert(id, (Instant::now(), 0));
                0
            }
        };
        let more = match held {
            0 => String::new(),
            n => format!(" (and {n} more since the last report)"),
        };
        let result = match note {
            Note::Failure {
                index,
                version,
                status,
                detail,
            } => {
                client
                    .report_auth_failure(
                        &keys[index],
                        version,
                        status,
                        client.service(),
                        &format!("{detail}{more}"),
                    )
                    .await
            }
            Note::Misdirected {
                index,
                version,
                sent_to,
            } => {
                client
                    .report_misdirected(
                        &keys[index],
                        version,
                        &sent_to,
                        403,
                        &format!("refused by the proxy{more}"),
                    )
                    .await
            }
        };
        if let Err(e) = result {
            eprintln!(
                "keyward proxy: cannot report to the agent about {}: {}",
                keys[id.0],
                crate::text::client_error(e)
            );
        }
    }
}
