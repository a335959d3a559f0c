//! Counters labelled by a key (`environment`, `key`) and one more fixed
//! label (a fetch's `outcome`, a report's `class`), for the fetch path.
//!
//! A `prometheus_client` `Family` wants an owned label set for every
//! lookup, which would mean two `String`s per fetch. Here the series live in
//! nested maps keyed by `String` and looked up by `&str`, so counting a
//! series that already exists takes a read lock, three map lookups and an
//! atomic add, and allocates nothing. Only the first count of a new series
//! takes the write lock and allocates.
//!
//! Invariant: the number of series is bounded. Callers pass only names the
//! agent knows (see the cardinality rule in [`crate::metrics`]); should one
//! pass unchecked names anyway, series beyond [`MAX_SERIES`] are counted
//! under `environment=""`, `key=""` instead of growing memory without end.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;

/// Most label sets one family keeps; later new ones are folded into the
/// `environment="", key=""` series.
pub(crate) const MAX_SERIES: usize = 10_000;

/// environment → key → fixed label value → count.
type Series = BTreeMap<String, BTreeMap<String, BTreeMap<&'static str, AtomicU64>>>;

/// One counter family labelled `{environment, key, <label>}`.
#[derive(Debug)]
pub(crate) struct KeyedCounters {
    /// The exposed name without `_total` (the encoder adds it).
    name: &'static str,
    /// The HELP text.
    help: &'static str,
    /// The third label's name (`outcome`, `class`).
    label: &'static str,
    series: RwLock<Counted>,
    /// Whether the over-limit warning was logged (it is logged once).
    warned: AtomicBool,
}

#[derive(Debug, Default)]
struct Counted {
    by_environment: Series,
    len: usize,
}

impl KeyedCounters {
    pub(crate) fn new(name: &'static str, help: &'static str, label: &'static str) -> KeyedCounters {
        KeyedCounters {
            name,
            help,
            label,
            series: RwLock::new(Counted::default()),
            warned: AtomicBool::new(false),
        }
    }

    /// Adds one to the series `{environment, key, label=value}`.
    pub(crate) fn inc(&self, environment: &str, key: &str, value: &'static str) {
        if let Some(count) = find(&self.read().by_environment, environment, key, value) {
            count.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut counted = self.series.write().unwrap_or_else(PoisonError::into_inner);
        // Another caller may have created it between the two locks.
        if let Some(count) = find(&counted.by_environment, environment, key, value) {
            count.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let (environment, key) = if counted.len >= MAX_SERIES {
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    metric = self.name,
                    limit = MAX_SERIES,
                    "too many label sets: further new keys are counted under environment=\"\" key=\"\""
                );
            }
            ("", "")
        } else {
            (environment, key)
        };
        let Counted { by_environment, len } = &mut *counted;
        let values = by_environment
            .entry(environment.to_owned())
            .or_default()
            .entry(key.to_owned())
            .or_default();
        let count = values.entry(value).or_insert_with(|| {
            *len += 1;
            AtomicU64::new(0)
        });
        count.fetch_add(1, Ordering::Relaxed);
    }

    /// Exposes the series `{environment, key, label=value}` at 0 if it was
    /// never counted, so that a dashboard's rate over it has data from the
    /// agent's start (a missing series is "No data", not 0). Never folds:
    /// a key beyond the series limit is left out.
    pub(crate) fn touch(&self, environment: &str, key: &str, value: &'static str) {
        if find(&self.read().by_environment, environment, key, value).is_some() {
            return;
        }
        let mut counted = self.series.write().unwrap_or_else(PoisonError::into_inner);
        if counted.len >= MAX_SERIES || find(&counted.by_environment, environment, key, value).is_some() {
            return;
        }
        let Counted { by_environment, len } = &mut *counted;
        by_environment
            .entry(environment.to_owned())
            .or_default()
            .entry(key.to_owned())
            .or_default()
            .insert(value, AtomicU64::new(0));
        *len += 1;
    }

    /// The current count of one series (0 if it was never counted).
    #[cfg(test)]
    pub(crate) fn get(&self, environment: &str, key: &str, value: &str) -> u64 {
        find(&self.read().by_environment, environment, key, value).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    fn read(&self) -> RwLockReadGuard<'_, Counted> {
        // A panic elsewhere cannot leave a count half-written: keep counting.
        self.series.read().unwrap_or_else(PoisonError::into_inner)
    }
}

fn find<'a>(series: &'a Series, environment: &str, key: &str, value: &str) -> Option<&'a AtomicU64> {
    series.get(environment)?.get(key)?.get(value)
}

impl Collector for KeyedCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counted = self.read();
        if counted.len == 0 {
            // Like an empty `Family`: no samples, no descriptor.
            return Ok(());
        }
        let mut metric = encoder.encode_descriptor(self.name, self.help, None, MetricType::Counter)?;
        for (environment, keys) in &counted.by_environment {
            for (key, values) in keys {
                for (value, count) in values {
                    let labels = [
                        ("environment", environment.as_str()),
                        ("key", key.as_str()),
                        (self.label, *value),
                    ];
                    ConstCounter::new(count.load(Ordering::Relaxed)).encode(metric.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_series_and_folds_series_beyond_the_limit() {
        let counters = KeyedCounters::new("keyward_test", "Test.", "outcome");
        counters.inc("prod", "a", "ok");
        counters.inc("prod", "a", "ok");
        counters.inc("prod", "a", "denied");
        counters.inc("dev", "a", "ok");
        assert_eq!(counters.get("prod", "a", "ok"), 2);
        assert_eq!(counters.get("prod", "a", "denied"), 1);
        assert_eq!(counters.get("dev", "a", "ok"), 1);
        assert_eq!(counters.get("dev", "b", "ok"), 0);

        for i in 0..MAX_SERIES {
            counters.inc("prod", &format!("k{i}"), "ok");
        }
        // 3 series before the loop: the last 3 of it were folded.
        assert_eq!(counters.get("", "", "ok"), 3);
        assert_eq!(counters.get("prod", &format!("k{}", MAX_SERIES - 1), "ok"), 0);
        // A touched series is exposed at 0 and then counts; a counted one
        // is left as it is.
        counters.touch("prod", "a", "ok");
        assert_eq!(counters.get("prod", "a", "ok"), 2);
        // Existing series keep counting past the limit.
        counters.inc("prod", "a", "ok");
        assert_eq!(counters.get("prod", "a", "ok"), 3);
        assert_eq!(counters.read().len, MAX_SERIES + 1);
    }
}
