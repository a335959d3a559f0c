//! keyward's trust model, attacked: a system-mode agent (no `--dev`: only
//! the config's grants apply) and callers run as other uids that try to
//! borrow another program's identity, flood the agent, veto its rotations
//! or stand in for its sockets. Each test plays the attack and asserts the
//! refusal. They need root (to run clients as other uids) and say so when
//! they are skipped.
//!
//! One module per area: see the README's "Security model" for what each
//! proves.

mod audit_flood;
mod client_checks;
mod identity;
mod reports;
mod sockets;
mod streams;
mod tooling;
