//! keyward: a local secrets broker.
//!
//! A root-owned agent, `keywardd`, keeps API keys age-encrypted on disk per
//! environment and serves each key's current primary and fallback over gRPC
//! on a permissioned Unix socket, to the callers its policy names. It
//! rotates keys by the safe sequence (stage, promote, retire) and pushes
//! every change to subscribers. Every fetch, delivery and change is written
//! to a hash-chained audit log before it is answered.
//!
//! # Layout
//!
//! - [`secret`]: the [`secret::Secret`] type (zeroizing, never printed),
//!   key names ([`secret::KeyRef`]) and fingerprints.
//! - [`keyset`]: the state of one key: generation, primary, fallback,
//!   history.
//! - [`config`]: the TOML config file, parsed raw and validated into typed
//!   values; also the dev-mode defaults.
//! - [`policy`]: who may read which keys. Pure functions, table-tested.
//! - [`rotation`]: the rotation state machine (stage, promote, rollback,
//!   abort, retire). Pure functions, table-tested.
//! - [`hooks`]: running the per-key generator, validator and revoker
//!   commands: secrets only on stdin and stdout, a timeout that kills the
//!   hook's whole process group, errors that never contain the secret.
//! - [`store`]: the agent identity, the age-encrypted key files, atomic
//!   writes, the in-memory view the fetch path reads, and the decisions of
//!   hot reload (`store::reload`).
//! - [`fleet`]: fleet mode: the keys in OpenBao (or Vault) KV v2, sealed to
//!   every agent, written with check-and-set, followed by polling into the
//!   store (the local copy), and each agent's published status; the KV v2
//!   client with token-file or AppRole login (`fleet::kv`).
//! - [`watch`]: one latest-value channel per key for `WatchKeys`, and the
//!   registry of live subscribers with the generation each was sent.
//! - [`audit`]: the append-only, hash-chained audit log: leader/follower
//!   group commit, the head file, and the offline verifier.
//! - [`hygiene`]: process hardening (no core dumps, locked memory).
//! - [`server`]: socket binding, caller identity from peer credentials (and
//!   the verification of a caller's executable and unit), the
//!   `Keys` and `Admin` gRPC services (fetch, watch streams, auth-failure
//!   reports, changes and rotation), the bounds on what one caller can make
//!   the agent hold or write (streams, watches, coalesced refusals), hot
//!   reload of the store, config reload on SIGHUP, and [`server::run`], the
//!   one way in.
//! - [`proto`]: the wire types of `proto/keyward/v1`, re-exported from the
//!   `keyward-proto` crate.
//!
//! The binaries live in `src/bin`: `keywardd` (the agent) and `keyward` (the
//! CLI).

// One getsockopt (SO_PEERPIDFD) that no safe wrapper offers lives in
// server::identity::pidfd, allowed there alone.
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod alerts;
pub mod audit;
pub mod config;
pub mod fleet;
pub mod hooks;
pub mod hygiene;
pub mod keyset;
pub mod metrics;
pub mod policy;
pub mod proto;
pub mod rotation;
pub mod secret;
pub mod server;
pub mod store;
pub mod watch;

/// Cases per property test: `PROPTEST_CASES` when set (the long runs of
/// RELIABILITY.md), else the module's `default`.
#[cfg(test)]
pub(crate) fn proptest_cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
