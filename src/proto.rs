//! The wire types of `proto/keyward/v1` (package `keyward.v1`), from the
//! `keyward-proto` crate: the generated messages and stubs, their redacting
//! `Debug` and the small-buffer codec live there, shared with the CLI and
//! keyward-client. Re-exported so that `crate::proto::X` names them here.

pub use keyward_proto::*;
