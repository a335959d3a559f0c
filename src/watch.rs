//! Per-key latest-value channels for `WatchKeys`. INTERFACE STUB: the
//! watch helper completes it (subscriber registry, delivery tracking).
#![allow(missing_docs)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::keyset::KeySetState;
use crate::secret::KeyRef;

/// One published state of a key: `None` when the key was deleted.
#[derive(Clone)]
pub struct Published {
    pub state: Option<Arc<KeySetState>>,
    pub reason: &'static str,
}

/// A live subscriber, as `GetRotationStatus` reports it.
#[derive(Clone, Debug)]
pub struct SubscriberInfo {
    pub uid: u32,
    pub pid: i32,
    pub exe: Option<String>,
    pub unit: Option<String>,
    pub delivered_generation: u64,
}

#[derive(Default)]
pub struct Watchers {
    channels: Mutex<HashMap<KeyRef, watch::Sender<Published>>>,
}

impl Watchers {
    /// Publishes a key's new state. Never blocks, never waits on subscribers.
    pub fn publish(&self, key: &KeyRef, state: Option<Arc<KeySetState>>, reason: &'static str) {
        let map = self.channels.lock().expect("watchers lock");
        if let Some(tx) = map.get(key) {
            tx.send_replace(Published { state, reason });
        }
    }

    /// Live subscribers of `key` and what each was last sent.
    pub fn subscribers(&self, _key: &KeyRef) -> Vec<SubscriberInfo> {
        Vec::new()
    }

    /// Number of live subscriptions (all keys).
    pub fn count(&self) -> usize {
        0
    }
}
