//! What the watch registry hands out and takes: the reasons a state is
//! sent, published states, subscriber and eviction reports, the caps on
//! subscriptions, and when two states are the same.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::audit::CallerRecord;
use crate::keyset::{KeySetState, Version};
use crate::rotation::Command;
use crate::secret::KeyRef;

/// Why a subscriber is sent a state: the `reason` of a `KeyEvent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The state when the watch started.
    Initial,
    /// `keyward put`.
    Put,
    /// The key was deleted.
    Deleted,
    /// A new key was staged.
    Staged,
    /// The staged key was promoted.
    Promoted,
    /// The old key is primary again.
    RolledBack,
    /// The staged key was dropped.
    Aborted,
    /// The old key was retired.
    Retired,
    /// Its file was rewritten by another tool (hot reload).
    Reloaded,
    /// Another agent of the fleet changed it.
    Fleet,
    /// Re-encrypted for the fleet's current members.
    Reseal,
}

impl Reason {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Initial => "initial",
            Reason::Put => "put",
            Reason::Deleted => "deleted",
            Reason::Staged => "staged",
            Reason::Promoted => "promoted",
            Reason::RolledBack => "rolled_back",
            Reason::Aborted => "aborted",
            Reason::Retired => "retired",
            Reason::Reloaded => "reloaded",
            Reason::Fleet => "fleet",
            Reason::Reseal => "reseal",
        }
    }
}

impl From<Command> for Reason {
    /// The reason of the state a rotation command produces.
    fn from(c: Command) -> Reason {
        match c {
            Command::Stage => Reason::Staged,
            Command::Promote => Reason::Promoted,
            Command::Rollback => Reason::RolledBack,
            Command::Abort => Reason::Aborted,
            Command::Retire => Reason::Retired,
        }
    }
}

/// One published state of a key.
#[derive(Clone)]
pub struct Published {
    /// The key's new state; `None` when the key was deleted.
    pub state: Option<Arc<KeySetState>>,
    /// Why it changed.
    pub reason: Reason,
    /// Which publish of the key's channel this is (they count up from 1);
    /// hand it back to [`super::Subscription::taken`].
    pub seq: u64,
}

/// What a subscriber says it is (the `x-keyward-client` request header):
/// whether it can report use and failures. A claim, not an identity: it
/// only decides how the subscriber is listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ClientKind {
    /// A keyward client library (Rust, Python, Node): it reports.
    Library,
    /// `keyward run`: the program it starts cannot report.
    Run,
    /// `keyward run --proxy` and `keyward proxy`: the proxy reports the
    /// use and the refusals of the requests it puts the key into.
    Proxy,
    /// Anything else (grpcurl, a generated stub of its own).
    #[default]
    Other,
}

impl ClientKind {
    /// From the header's value, `LANG/VERSION` (`rust/0.1.0`,
    /// `python/0.1.0`, `node/0.1.0`), `run/VERSION` or `proxy/VERSION`.
    pub fn from_header(value: Option<&str>) -> ClientKind {
        let name = value.and_then(|v| v.split('/').next()).unwrap_or("");
        match name {
            "rust" | "python" | "node" => ClientKind::Library,
            "run" => ClientKind::Run,
            "proxy" => ClientKind::Proxy,
            _ => ClientKind::Other,
        }
    }

    /// As `GetRotationStatus` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientKind::Library => "library",
            ClientKind::Run => "run",
            ClientKind::Proxy => "proxy",
            ClientKind::Other => "other",
        }
    }
}

/// A live subscriber, as `GetRotationStatus` reports it.
#[derive(Clone, Debug)]
pub struct SubscriberInfo {
    /// The subscriber's uid (from the kernel).
    pub uid: u32,
    /// Its pid.
    pub pid: i32,
    /// Its executable, where readable.
    pub exe: Option<String>,
    /// Its systemd unit, where known.
    pub unit: Option<String>,
    /// The last generation of the key handed to its stream (0: none yet).
    pub delivered_generation: u64,
    /// What it says it is.
    pub kind: ClientKind,
}

/// Caps on live subscriptions: `[limits] max_watches_per_uid` and
/// `max_watches`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchCaps {
    /// Most live subscriptions of one uid.
    pub per_uid: usize,
    /// Most live subscriptions in all.
    pub total: usize,
}

/// Why [`super::Watchers::subscribe`] refused a subscription.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchRefused {
    /// The uid has as many as it may.
    #[error("uid {uid} has {open} watches open; the limit is {limit} per uid (limits.max_watches_per_uid): watch all of a process's keys in one WatchKeys call and end the watches it no longer needs, or raise max_watches_per_uid in [limits]")]
    PerUid {
        /// The caller's uid.
        uid: u32,
        /// Its live subscriptions.
        open: usize,
        /// The cap.
        limit: usize,
    },
    /// The agent has as many as it may.
    #[error("the agent has {open} watches open; the limit is {limit} in all (limits.max_watches): try again once others have ended, or raise max_watches in [limits]")]
    Total {
        /// Live subscriptions.
        open: usize,
        /// The cap.
        limit: usize,
    },
}

/// Closes the connection a subscription came on (see
/// [`super::Watchers::overdue_connections`]).
pub type CloseConnection = Arc<dyn Fn() + Send + Sync>;

/// A subscription removed from the registry because it took nothing for
/// longer than a key's timeout.
#[derive(Clone, Debug)]
pub struct Eviction {
    /// The key it was pending on.
    pub key: KeyRef,
    /// Who it was.
    pub who: Arc<CallerRecord>,
    /// The last generation of the key it was handed (0: none).
    pub delivered_generation: u64,
    /// The generation it did not take (`None`: the key's deletion).
    pub waiting_generation: Option<u64>,
    /// How long it had been pending.
    pub waited: Duration,
    /// The key's timeout.
    pub timeout: Duration,
    /// When it was evicted.
    pub at: SystemTime,
}

/// Whether two states of a key are the same state, so that the second need
/// not be sent: the same committed state (the usual case: the store and the
/// channel share it), or one with the same generation and the same versions.
/// The versions matter because a key deleted and created again starts over
/// at generation 1.
pub fn same_state(a: &KeySetState, b: &KeySetState) -> bool {
    fn same_version(a: &Version, b: &Version) -> bool {
        a.number == b.number && a.fingerprint == b.fingerprint && a.created_at == b.created_at
    }
    std::ptr::eq(a, b)
        || (a.generation == b.generation
            && a.state == b.state
            && same_version(&a.primary, &b.primary)
            && match (&a.fallback, &b.fallback) {
                (Some(x), Some(y)) => same_version(x, y),
                (None, None) => true,
                _ => false,
            })
}
