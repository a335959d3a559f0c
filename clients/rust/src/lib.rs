//! A client for the keyward agent's service socket.
//!
//! keyward keeps API keys on the local machine and serves them over a Unix
//! socket; during a rotation a key has a *primary* and a *fallback*. This
//! crate fetches keys ([`Client::get`]), follows their changes
//! ([`Client::watch`], [`Client::handle`]), and calls a service with the
//! primary, retrying with the fallback when the service refuses it
//! ([`Client::call_with_fallback`]), so a rotation never causes an outage.
//!
//! ```no_run
//! # async fn run() -> Result<(), keyward_client::Error> {
//! let client = keyward_client::Client::connect().await?;
//! let keys = client.get("prod/billing-api").await?;
//! println!("v{} ({})", keys.primary.version, keys.primary.fingerprint);
//! let token: &[u8] = keys.primary.secret.expose();
//! # let _ = token;
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! - [`connect`](crate::Client::connect): finding the socket and opening a
//!   gRPC channel over it (`connect.rs`).
//! - `client.rs`: [`Client`], one method per RPC of the `Keys` service.
//! - `client_name.rs`: the [`CLIENT_HEADER`] (`x-keyward-client`) every
//!   request carries, naming the program (`rust/VERSION` by default;
//!   [`Client::with_client_name`]).
//! - `keyset.rs`: [`KeySet`], [`KeyVersion`], [`RotationState`]: the
//!   agent's answer in plain Rust types.
//! - `secret.rs`: [`Secret`], secret bytes that are wiped when dropped and
//!   never printed.
//! - `handle.rs`: [`KeyHandle`], a key kept current by a background watch
//!   that reconnects when the agent restarts.
//! - `fallback.rs`: [`Client::call_with_fallback`] and the auth-failure
//!   report it sends.
//! - `key_use.rs`: the key-use reports (`ReportKeyUse`) that
//!   `call_with_fallback` and [`KeyHandle::report_use`] send after a
//!   success, at most one per version every [`USE_REPORT_INTERVAL`]: the
//!   evidence a rotation needs to retire the old key.
//! - `trust.rs`: [`Trust`], who may serve the socket (root, this user, the
//!   agent's uid), checked on every connection before anything is sent;
//!   [`channel`] and [`checked_channel`] give the same check to other
//!   stubs on the agent's sockets (the `keyward` CLI's admin commands).
//! - `error.rs`: [`Error`]: every failure, with a message saying what to do.
//! - the protocol types come from the `keyward-proto` crate (private here).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod client;
mod client_name;
mod connect;
mod error;
mod fallback;
mod handle;
mod key_use;
mod keyset;
mod secret;
mod trust;

// The generated protocol, as `crate::proto::…`.
use keyward_proto as proto;

pub use client::Client;
pub use client_name::CLIENT_HEADER;
pub use connect::{channel, checked_channel, socket_path, DEFAULT_SOCKET, SOCKET_ENV};
pub use error::Error;
pub use fallback::{auth_rejection, CallError, HttpStatus, KeySource};
pub use handle::{KeyHandle, DEFAULT_FIRST_KEYSET_TIMEOUT};
pub use key_use::USE_REPORT_INTERVAL;
pub use keyset::{KeySet, KeyVersion, RotationState};
pub use secret::Secret;
pub use trust::{Trust, AGENT_UID_ENV};
