//! The transport: sockets, caller identity, and the gRPC services that turn
//! requests into [`crate::agent`] operations.
//!
//! - [`listeners`]: the sockets, bound with [`crate::sockets`] (a directory
//!   only the agent can write, modes and owners set there), or passed by
//!   systemd ([`activation`], which also notifies readiness).
//! - [`peer`], [`identity`]: who is calling, from the kernel's credentials,
//!   and the verification of a caller's executable and unit.
//! - [`streams`]: every call counted per connection and per uid, and
//!   bounded; with the `[limits]` stream, watch, keepalive and idle
//!   settings, what one uid can make the agent hold is bounded.
//! - [`keys`], [`watch_stream`]: the service socket (`GetKey`,
//!   `WatchKeys`, `ReportAuthFailure`).
//! - [`admin`]: the admin socket (changes and rotation).
//! - [`tooling`]: `grpc.health.v1.Health` and server reflection on both
//!   sockets, for grpc_health_probe and grpcurl.
//! - [`creds`]: `creds.sock`, keys for systemd's `LoadCredential=`.
//! - [`error`]: the one mapping from the agent's errors to gRPC statuses.
//! - [`run`](mod@run): [`run()`], the one way in.
//!
//! `keywardd`'s `main` opens an [`Agent`](crate::agent::Agent) (store,
//! audit, lock), binds the sockets with [`bind_listeners`] and calls
//! [`run()`] with a signal future; tests do the same with a oneshot.
//! Shutdown stops accepting, lets in-flight calls finish within the
//! configured grace, flushes the audit log and removes the socket files it
//! bound (those systemd passed stay).

pub mod activation;
pub mod admin;
pub mod creds;
pub mod error;
pub mod identity;
pub mod keys;
pub mod listeners;
pub mod peer;
pub mod run;
pub mod streams;
pub mod tooling;
pub mod watch_stream;

pub use listeners::{bind_listeners, bind_listeners_with, Listeners};
pub use run::run;
