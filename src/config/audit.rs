//! `[audit]`: when a record counts as written ([`Durability`]), how records
//! are batched and coalesced, and the free-space alert threshold.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::error::{ConfigError, Source};
use super::size;
use super::value::{at_least_one, duration};

/// When a record counts as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// write(2) returned: survives an agent crash, not a power loss. A
    /// background fdatasync runs every `fsync_interval`.
    Write,
    /// fdatasync returned for the batch: survives a power loss.
    Fsync,
}

/// The `[audit]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditSettings {
    /// When a record counts as written.
    pub durability: Durability,
    /// How often the log is synced in [`Durability::Write`] mode.
    pub fsync_interval: Duration,
    /// Most records committed together.
    pub max_batch: usize,
    /// Refusals alike within this window are coalesced into one record
    /// (zero: each is recorded).
    pub coalesce_window: Duration,
    /// Below this much free space on the audit log's filesystem, an
    /// `agent_health` alert fires.
    pub min_free: size::MinFree,
}

/// Default `[audit] coalesce_window`: the first refusal of a kind is
/// written at once whatever the window, so it only delays the count of the
/// rest; a minute keeps a sustained flood from one uid to two records per
/// kind of refusal a minute, and matches the default alert window.
pub const DEFAULT_COALESCE_WINDOW: Duration = Duration::from_secs(60);

/// Default `[audit] min_free`: room for about half a million more fetch
/// records, and hours of warning on a busy host, before fail-closed
/// fetches start failing.
pub const DEFAULT_MIN_FREE: size::MinFree = size::MinFree::Bytes(256 << 20);

impl Default for AuditSettings {
    fn default() -> AuditSettings {
        AuditSettings {
            durability: Durability::Write,
            fsync_interval: Duration::from_secs(1),
            max_batch: 256,
            coalesce_window: DEFAULT_COALESCE_WINDOW,
            min_free: DEFAULT_MIN_FREE,
        }
    }
}

/// `[audit]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    durability: Option<RawDurability>,
    fsync_interval: Option<Spanned<String>>,
    max_batch: Option<Spanned<usize>>,
    coalesce_window: Option<Spanned<String>>,
    min_free: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawDurability {
    Write,
    Fsync,
}

impl RawAudit {
    pub(super) fn validate(self, src: &Source<'_>) -> Result<AuditSettings, ConfigError> {
        let default = AuditSettings::default();
        let fsync_interval = match self.fsync_interval {
            None => default.fsync_interval,
            Some(v) => {
                let d = duration(src, &v, "fsync_interval")?;
                if d.is_zero() {
                    return Err(src.invalid(
                        &v.span(),
                        format!(
                            "fsync_interval at {} is zero: give an interval such as \"1s\", or set durability = \"fsync\" to sync every batch",
                            src.at(&v.span())
                        ),
                    ));
                }
                d
            }
        };
        let max_batch = match self.max_batch {
            None => default.max_batch,
            Some(v) => at_least_one(src, &v, "max_batch")?,
        };
        let coalesce_window = match self.coalesce_window {
            None => default.coalesce_window,
            Some(v) => duration(src, &v, "coalesce_window")?,
        };
        let min_free = match self.min_free {
            None => default.min_free,
            Some(v) => v.get_ref().parse().map_err(|e| {
                src.invalid(
                    &v.span(),
                    format!(
                        "min_free = {:?} at {} is not a size or a percentage ({e}): write e.g. \"256MiB\", \"1GB\" or \"5%\" (\"0\" turns the alert off)",
                        v.get_ref(),
                        src.at(&v.span())
                    ),
                )
            })?,
        };
        Ok(AuditSettings {
            durability: match self.durability {
                None => default.durability,
                Some(RawDurability::Write) => Durability::Write,
                Some(RawDurability::Fsync) => Durability::Fsync,
            },
            fsync_interval,
            max_batch,
            coalesce_window,
            min_free,
        })
    }
}
