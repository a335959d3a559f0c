//! One file per `keyward` command (a family of commands where they share
//! their helpers: the rotation steps, `fleet`, `doctor`).

pub(crate) mod audit;
pub(crate) mod delete;
pub(crate) mod doctor;
pub(crate) mod fleet;
pub(crate) mod get;
pub(crate) mod held_keys;
pub(crate) mod init;
pub(crate) mod list;
pub(crate) mod proxied;
pub(crate) mod put;
pub(crate) mod render;
pub(crate) mod report;
pub(crate) mod rotate;
pub(crate) mod rotation_status;
pub(crate) mod run;
pub(crate) mod status;
pub(crate) mod steps;
pub(crate) mod template;
pub(crate) mod watch;
