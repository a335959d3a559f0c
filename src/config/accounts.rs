//! User and group names resolved to ids when the file is loaded (grants,
//! socket groups), with a message that says how to fix an unknown name.

use std::ops::Range;

use super::error::{ConfigError, Source};

/// Resolves a group name; `context` says where it was written ("in grant at").
pub(super) fn lookup_group(
    src: &Source<'_>,
    name: &str,
    span: &Range<usize>,
    context: &str,
) -> Result<u32, ConfigError> {
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(src.invalid(
            span,
            format!(
                "unknown group '{name}' {context} {}: create the group (e.g. groupadd --system {name}) or fix the name{}",
                src.at(span),
                numeric_hint(name, "gids")
            ),
        )),
        Err(e) => Err(src.invalid(
            span,
            format!(
                "cannot look up group '{name}' {context} {}: {e}; check /etc/group and nsswitch",
                src.at(span)
            ),
        )),
    }
}

pub(super) fn lookup_user(src: &Source<'_>, name: &str, span: &Range<usize>) -> Result<u32, ConfigError> {
    match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        Ok(None) => Err(src.invalid(
            span,
            format!(
                "unknown user '{name}' in grant at {}: create the user or fix the name{}",
                src.at(span),
                numeric_hint(name, "uids")
            ),
        )),
        Err(e) => Err(src.invalid(
            span,
            format!(
                "cannot look up user '{name}' in grant at {}: {e}; check /etc/passwd and nsswitch",
                src.at(span)
            ),
        )),
    }
}

/// For a number written where a name belongs.
fn numeric_hint(name: &str, key: &str) -> String {
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
        format!(" (for a numeric id, write {key} = [{name}])")
    } else {
        String::new()
    }
}
