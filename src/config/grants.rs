//! `[[grant]]`: who may read what. Each grant is checked (names resolved,
//! paths and units well formed, at least one caller and one key) and
//! becomes a [`Grant`] of the [`crate::policy::Policy`].

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::accounts::{lookup_group, lookup_user};
use super::environments::{key_pattern, EnvConfig};
use super::error::{ConfigError, Source};
use super::value::{list, RawList};
use crate::policy::Grant;

/// One `[[grant]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGrant {
    users: RawList<String>,
    uids: RawList<u32>,
    groups: RawList<String>,
    gids: RawList<u32>,
    executables: RawList<PathBuf>,
    units: RawList<String>,
    keys: RawList<String>,
    report: Option<bool>,
}

pub(super) fn grant(
    src: &Source<'_>,
    raw: Spanned<RawGrant>,
    environments: &BTreeMap<String, EnvConfig>,
) -> Result<Grant, ConfigError> {
    let span = raw.span();
    let at = src.at(&span);
    let origin = src.origin_of(&span);
    let raw = raw.into_inner();
    let ctx = format!("grant at {at}");

    let mut uids = Vec::new();
    for user in list(src, raw.users, "users", &ctx)? {
        uids.push(lookup_user(src, user.get_ref(), &user.span())?);
    }
    uids.extend(list(src, raw.uids, "uids", &ctx)?.into_iter().map(Spanned::into_inner));

    let mut gids = Vec::new();
    for group in list(src, raw.groups, "groups", &ctx)? {
        gids.push(lookup_group(src, group.get_ref(), &group.span(), "in grant at")?);
    }
    gids.extend(list(src, raw.gids, "gids", &ctx)?.into_iter().map(Spanned::into_inner));

    let mut executables = Vec::new();
    for exe in list(src, raw.executables, "executables", &ctx)? {
        executables.push(executable(src, &exe)?);
    }

    let mut units = Vec::new();
    for unit in list(src, raw.units, "units", &ctx)? {
        units.push(unit_name(src, &unit)?);
    }

    let raw_keys = list(src, raw.keys, "keys", &ctx)?;
    if raw_keys.is_empty() {
        return Err(src.invalid(
            &span,
            format!("grant at {at} gives no keys: add keys = [\"ENV/NAME\", ...], e.g. keys = [\"prod/billing-*\"]"),
        ));
    }
    let mut keys = Vec::with_capacity(raw_keys.len());
    for k in raw_keys {
        keys.push(key_pattern(src, &k, environments, "grant")?);
    }

    let grant = Grant {
        uids,
        gids,
        executables,
        units,
        keys,
        report: raw.report.unwrap_or(true),
        origin,
    };
    if !grant.has_selectors() {
        return Err(src.invalid(
            &span,
            format!(
                "grant at {at} names no caller: add at least one of users, uids, groups, gids, executables or units (a grant applies when all the kinds it lists match)"
            ),
        ));
    }
    if !grant.executables.is_empty() && !grant.names_principal() {
        return Err(src.invalid(
            &span,
            format!(
                "grant at {at} lists executables but no users, uids, groups or gids: an executable only narrows who may read, it cannot stand alone, because any process of any user may run that program (and preload or trace it); name the principal too, e.g. users = [\"billing\"] or uids = [1001]"
            ),
        ));
    }
    Ok(grant)
}

fn executable(src: &Source<'_>, v: &Spanned<PathBuf>) -> Result<PathBuf, ConfigError> {
    let path = v.get_ref();
    let problem = if !path.is_absolute() {
        Some("is not an absolute path: write the full path, starting with '/', as /proc/PID/exe shows it")
    } else if path.components().any(|c| c == Component::ParentDir) {
        Some("contains '..': write the resolved path, as /proc/PID/exe shows it")
    } else {
        None
    };
    match problem {
        None => Ok(path.clone()),
        Some(problem) => Err(src.invalid(
            &v.span(),
            format!(
                "executable {:?} in grant at {} {problem}",
                path.display().to_string(),
                src.at(&v.span())
            ),
        )),
    }
}

/// A `units` value: a unit name (`billing-worker.service`) or the unit's
/// cgroup (`/system.slice/billing-worker.service`).
fn unit_name(src: &Source<'_>, v: &Spanned<String>) -> Result<String, ConfigError> {
    let unit = v.get_ref();
    let last = unit.rsplit('/').next().unwrap_or_default();
    let problem = if unit.starts_with('/') {
        if unit.split('/').skip(1).any(|c| c.is_empty() || c == "." || c == "..")
            || unit.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            Some("is not a cgroup path: write it as /proc/PID/cgroup shows it, e.g. \"/system.slice/billing-worker.service\"".to_owned())
        } else if !(last.ends_with(".service") || last.ends_with(".scope")) {
            Some(format!(
                "does not end with a service or scope: write the unit's own cgroup, e.g. \"{unit}/NAME.service\""
            ))
        } else {
            None
        }
    } else if unit.is_empty() || unit.contains('/') || unit.chars().any(char::is_whitespace) {
        Some("is not a systemd unit name: write it as systemctl shows it, e.g. \"billing-worker.service\", or its cgroup, e.g. \"/system.slice/billing-worker.service\"".to_owned())
    } else if !unit.contains('.') {
        Some(format!("has no unit type: write \"{unit}.service\""))
    } else {
        None
    };
    match problem {
        None => Ok(unit.clone()),
        Some(problem) => Err(src.invalid(
            &v.span(),
            format!("unit {unit:?} in grant at {} {problem}", src.at(&v.span())),
        )),
    }
}

/// Why a grant's executable can match no caller as things stand, if it
/// cannot: it is missing, not a regular file, or it (or a directory on its
/// path) can be changed by a non-root user, whose code then never counts as
/// the program (see [`crate::policy::writable_by_non_root`]). Checked again
/// for every caller, so a fixed file starts matching without a reload.
pub(super) fn executable_problem(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            return Some(format!(
                "cannot be read ({e}): the grant matches no caller until it exists"
            ))
        }
    };
    if !meta.is_file() {
        return Some("is not a regular file: the grant matches no caller".to_owned());
    }
    if crate::policy::writable_by_non_root(meta.uid(), meta.mode()) {
        return Some(format!(
            "is owned by uid {} with mode {:o}: a non-root user can change it, so it never counts as the program; make it root's and not writable by group or others (chown root: and chmod go-w)",
            meta.uid(),
            meta.mode() & 0o7777
        ));
    }
    for dir in path.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(dir) else { continue };
        if crate::policy::writable_by_non_root(meta.uid(), meta.mode()) && meta.mode() & 0o1000 == 0 {
            return Some(format!(
                "its directory {} can be changed by a non-root user (uid {}, mode {:o}), who could put another program at this path; install it in a root-owned directory",
                dir.display(),
                meta.uid(),
                meta.mode() & 0o7777
            ));
        }
    }
    None
}
