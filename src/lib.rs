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
//! Arrows only point down (`tests/it/layers.rs` checks it): the binaries use
//! [`server`], which turns requests into [`agent`] operations; the agent
//! uses the middle tier; the middle tier uses the pure core.
//!
//! The pure core (plain data and rules, table- and property-tested, no I/O
//! and no wire types):
//!
//! - [`secret`]: the [`secret::Secret`] type (zeroizing, never printed),
//!   key names ([`secret::KeyRef`]) and fingerprints.
//! - [`keyset`]: the state of one key: generation, primary, fallback,
//!   history.
//! - [`rotation`]: the rotation state machine and its rules (what may be
//!   staged, that a new key differs from the primary, no overwrite
//!   mid-rotation, the retire gate).
//! - [`policy`]: every access rule: who may read or report on which keys,
//!   who may use the admin socket, who may ask for a credential.
//! - [`config`]: the TOML config file, one file per section (its raw form,
//!   typed form and checks); the reference config,
//!   `packaging/keyward.toml.example`, is its documentation and is parsed by
//!   a test; also the dev-mode defaults.
//!
//! The edge of the core: [`proto`], the generated gRPC types of
//! `proto/keyward/v1` (re-exported from the `keyward-proto` crate), and
//! [`wire`], the conversions between them and the core's types.
//!
//! The middle tier (each a part of the agent's work that knows nothing of
//! the agent):
//!
//! - [`store`]: the agent identity, the age-encrypted key files, atomic
//!   writes, the in-memory view the fetch path reads, and the decisions of
//!   hot reload (`store::reload`).
//! - [`audit`]: the append-only, hash-chained audit log: leader/follower
//!   group commit, the head file, segments and retention, anchors, and
//!   the offline verifier.
//! - [`watch`]: one latest-value channel per key for `WatchKeys`, and the
//!   registry of live subscribers with the generation each was sent.
//! - [`alerts`]: detectors (pure) and sinks; [`metrics`]: the counters and
//!   the Prometheus endpoint.
//! - [`hooks`]: running the per-key generator, validator and revoker
//!   commands: secrets only on stdin and stdout, a timeout that kills the
//!   hook's whole process group, errors that never contain the secret.
//! - [`openbao`]: the OpenBao (or Vault) KV v2 client with token-file or
//!   AppRole login; a leaf.
//! - [`sockets`]: socket files and the state lock; [`hygiene`]: process
//!   hardening (no core dumps, locked memory); [`outbound`]: what every
//!   outbound HTTP(S) client shares (the TLS provider, the User-Agent).
//!
//! - [`agent`]: the running agent, its state behind a small API:
//!   [`agent::Agent::serve`] (policy → audit → answer, the only way a
//!   secret leaves), [`agent::Agent::apply`] (check → durable commit →
//!   audit → publish, the only way state changes), rotation, reports and
//!   the served-version log, coalesced refusals, alerting, hot reload,
//!   config reload, fleet follow and publish, status.
//! - [`server`]: the transport: socket binding, caller identity from peer
//!   credentials (and the verification of a caller's executable and unit),
//!   the bounds on streams and calls, the `Keys` and `Admin` gRPC services
//!   (with the standard health and reflection services beside them) and
//!   `creds.sock`, the one mapping from agent errors to statuses, and
//!   [`server::run()`], the one way in.
//!
//! The binaries live in `src/bin`: `keywardd` (the agent) and `keyward` (the
//! CLI).

// One getsockopt (SO_PEERPIDFD) that no safe wrapper offers lives in
// server::identity::pidfd, allowed there alone.
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod agent;
pub mod alerts;
pub mod audit;
pub mod config;
pub mod hooks;
pub mod hygiene;
pub mod keyset;
pub mod metrics;
pub mod openbao;
pub mod outbound;
pub mod policy;
pub mod proto;
pub mod rotation;
pub mod secret;
pub mod server;
pub mod sockets;
pub mod store;
pub mod watch;
pub mod wire;

/// Cases per property test: `PROPTEST_CASES` when set (the long runs of
/// RELIABILITY.md), else the module's `default`.
#[cfg(test)]
pub(crate) fn proptest_cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
