//! `[audit]`: when a record counts as written ([`Durability`]), how records
//! are batched and coalesced, the free-space alert threshold, when the live
//! file is sealed into a segment and how long segments are kept, and where
//! the chain head is anchored ([`anchor`](super::audit_anchor)).

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::audit_anchor::{anchors, AnchorConfig, RawAnchor};
use super::error::{ConfigError, Source};
use super::size;
use super::value::{at_least_one, duration, positive_duration};

/// When a record counts as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// write(2) returned: survives an agent crash, not a power loss. A
    /// background fdatasync runs every `fsync_interval`.
    Write,
    /// An fdatasync that covers the record returned: survives a power
    /// loss. One sync covers every record written while the one before it
    /// ran.
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
    /// The live file is sealed into a segment once it holds this many
    /// bytes.
    pub segment_size: u64,
    /// ... or once it is this old (none: size alone decides).
    pub segment_age: Option<Duration>,
    /// Which sealed segments are kept (none: all).
    pub retain: Option<Retain>,
    /// How often the chain head is published to the anchors.
    pub anchor_interval: Duration,
    /// Where the chain head is published (`[[audit.anchor]]`).
    pub anchors: Vec<AnchorConfig>,
}

/// `[audit] retain`: which sealed segments are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retain {
    /// The newest this many.
    Count(usize),
    /// Those sealed less than this long ago.
    Age(Duration),
}

/// Default `[audit] segment_size`: a few minutes at full speed, days on a
/// quiet host; small enough to copy or ship whole.
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 << 20;

/// Smallest `[audit] segment_size`: a segment must hold a few records.
pub const MIN_SEGMENT_SIZE: u64 = 1024;

/// Default `[audit] anchor_interval`.
pub const DEFAULT_ANCHOR_INTERVAL: Duration = Duration::from_secs(3600);

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
            segment_size: DEFAULT_SEGMENT_SIZE,
            segment_age: None,
            retain: None,
            anchor_interval: DEFAULT_ANCHOR_INTERVAL,
            anchors: Vec::new(),
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
    segment_size: Option<Spanned<String>>,
    segment_age: Option<Spanned<String>>,
    retain: Option<Spanned<RawRetain>>,
    anchor_interval: Option<Spanned<String>>,
    anchor: Option<Vec<RawAnchor>>,
}

/// `retain = 30` or `retain = "90d"` (or `"30"`).
#[derive(Deserialize)]
#[serde(untagged)]
enum RawRetain {
    Count(i64),
    Text(String),
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
        let segment_size = match self.segment_size {
            None => default.segment_size,
            Some(v) => match size::parse_size(v.get_ref()) {
                Ok(n) if n >= MIN_SEGMENT_SIZE => n,
                Ok(_) => {
                    return Err(src.invalid(
                        &v.span(),
                        format!(
                            "segment_size = {:?} at {} is below 1KiB: give a size such as \"64MiB\" (the default)",
                            v.get_ref(),
                            src.at(&v.span())
                        ),
                    ))
                }
                Err(e) => {
                    return Err(src.invalid(
                        &v.span(),
                        format!(
                            "segment_size = {:?} at {} is not a size ({e}): write e.g. \"64MiB\" or \"1GiB\"",
                            v.get_ref(),
                            src.at(&v.span())
                        ),
                    ))
                }
            },
        };
        let segment_age = match self.segment_age {
            None => None,
            Some(v) => Some(positive_duration(src, &v, "segment_age")?),
        };
        let retain = match self.retain {
            None => None,
            Some(v) => Some(retain(src, &v)?),
        };
        let anchor_interval = match self.anchor_interval {
            None => default.anchor_interval,
            Some(v) => positive_duration(src, &v, "anchor_interval")?,
        };
        Ok(AuditSettings {
            segment_size,
            segment_age,
            retain,
            anchor_interval,
            anchors: anchors(src, self.anchor.unwrap_or_default())?,
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

/// `retain`: a count of segments (at least 1) or an age ("90d").
fn retain(src: &Source<'_>, v: &Spanned<RawRetain>) -> Result<Retain, ConfigError> {
    let refuse = |why: &str| {
        src.invalid(
            &v.span(),
            format!(
                "retain at {} {why}: write a number of sealed segments to keep (e.g. retain = 30) or an age (e.g. retain = \"90d\"), or remove the line to keep every segment",
                src.at(&v.span())
            ),
        )
    };
    match v.get_ref() {
        RawRetain::Count(n) if *n >= 1 => Ok(Retain::Count(usize::try_from(*n).map_err(|_| refuse("is too large"))?)),
        RawRetain::Count(_) => Err(refuse("is not a positive count")),
        RawRetain::Text(t) => {
            if let Ok(n) = t.trim().parse::<usize>() {
                return if n >= 1 {
                    Ok(Retain::Count(n))
                } else {
                    Err(refuse("is not a positive count"))
                };
            }
            match humantime::parse_duration(t) {
                Ok(d) if !d.is_zero() => Ok(Retain::Age(d)),
                Ok(_) => Err(refuse("is zero")),
                Err(e) => Err(refuse(&format!("= {t:?} is neither a count nor an age ({e})"))),
            }
        }
    }
}
