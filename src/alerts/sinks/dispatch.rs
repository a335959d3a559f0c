//! The dispatcher: one bounded queue and one worker task per sink.
//!
//! Invariant: [`Dispatcher::send`] never blocks and never waits. It filters,
//! then offers the notification to each sink's queue; a full queue drops it
//! (counted, and logged at most once per sink every
//! [`DROP_WARNING_EVERY`]). A slow or hanging sink therefore only ever
//! occupies its own worker: it fills its own queue, and every other sink,
//! and whoever raised the alert, carries on.
//!
//! A worker delivers its queue in order, one notification at a time: each
//! attempt bounded by the sink's `timeout`, up to `retries` more attempts
//! after a failure worth retrying, waiting `backoff` doubled each time
//! (capped at a minute, with jitter).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::error::DeliveryError;
use super::retry::{backoff_delay, with_jitter, DropWarnings, DROP_WARNING_EVERY};
use super::sink::Sink;
use crate::alerts::{Alert, Severity, Signal, SinkConfig, SinkStats};

/// Delivers alerts to every configured sink. Built by [`Dispatcher::start`],
/// fed by [`Dispatcher::send`], ended by [`Dispatcher::close`].
pub struct Dispatcher {
    sinks: Vec<SinkHandle>,
}

/// One sink as the dispatcher sees it: its filter, its queue, its counters.
struct SinkHandle {
    name: String,
    kind: &'static str,
    /// `scheme://host:port`, the program, or the SMTP server: for logs.
    endpoint: String,
    filter: Filter,
    capacity: usize,
    queue: mpsc::Sender<Arc<Alert>>,
    counters: Arc<Counters>,
    drop_warnings: Mutex<DropWarnings>,
    worker: JoinHandle<()>,
}

/// Which alerts a sink takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Filter {
    /// Nothing below this severity.
    pub(crate) min_severity: Severity,
    /// Only these signals; empty: all.
    pub(crate) signals: Vec<Signal>,
}

impl Filter {
    /// Whether the sink takes `alert` (a resolve is filtered like the
    /// alert it resolves, which has the same signal and severity).
    pub(crate) fn accepts(&self, alert: &Alert) -> bool {
        alert.severity >= self.min_severity && (self.signals.is_empty() || self.signals.contains(&alert.signal))
    }
}

/// One sink's counters, shared between the dispatcher and its worker.
#[derive(Debug, Default)]
struct Counters {
    delivered: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    retries: AtomicU64,
    queued: AtomicU64,
}

/// How a worker delivers: its sink's limits.
#[derive(Clone, Copy)]
struct Limits {
    timeout: Duration,
    retries: u32,
    backoff: Duration,
}

impl fmt::Debug for Dispatcher {
    /// The sinks' names, kinds and endpoints (`scheme://host:port`): never
    /// a token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                self.sinks
                    .iter()
                    .map(|s| format!("{} ({}, {})", s.name, s.kind, s.endpoint)),
            )
            .finish()
    }
}

impl Dispatcher {
    /// Builds every sink and starts its worker. A sink whose settings are
    /// unusable (an unreadable `ca_file`, a bad address) is logged as an
    /// error now, and each notification for it is counted as failed.
    ///
    /// Must be called within a tokio runtime: the workers are tasks on it.
    pub fn start(sinks: Vec<SinkConfig>) -> Dispatcher {
        let sinks = sinks.into_iter().map(start_sink).collect();
        Dispatcher { sinks }
    }

    /// Offers `alert` to every sink that takes it. Never blocks, never
    /// waits: a sink whose queue is full loses this notification (counted
    /// in [`SinkStats::dropped`] and logged, rate-limited).
    pub fn send(&self, alert: Arc<Alert>) {
        for sink in &self.sinks {
            if !sink.filter.accepts(&alert) {
                continue;
            }
            // Counted before it is queued, so that the worker, which
            // subtracts on receipt, never takes the count below zero.
            sink.counters.queued.fetch_add(1, Ordering::Relaxed);
            if let Err(refused) = sink.queue.try_send(Arc::clone(&alert)) {
                sink.counters.queued.fetch_sub(1, Ordering::Relaxed);
                sink.dropped(&alert, matches!(refused, mpsc::error::TrySendError::Closed(_)));
            }
        }
    }

    /// Every sink's counters, in configuration order.
    pub fn stats(&self) -> Vec<SinkStats> {
        self.sinks
            .iter()
            .map(|s| SinkStats {
                name: s.name.clone(),
                kind: s.kind,
                delivered: s.counters.delivered.load(Ordering::Relaxed),
                failed: s.counters.failed.load(Ordering::Relaxed),
                dropped: s.counters.dropped.load(Ordering::Relaxed),
                retries: s.counters.retries.load(Ordering::Relaxed),
                queued: s.counters.queued.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Stops taking alerts, gives the queued deliveries (retries included)
    /// up to `grace` to finish, then aborts the workers still busy; what
    /// they had not delivered is logged.
    pub async fn close(self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        let mut workers = Vec::with_capacity(self.sinks.len());
        for sink in self.sinks {
            // Dropping the sender closes the queue: the worker ends once it
            // has delivered what is in it.
            drop(sink.queue);
            workers.push((sink.name, sink.endpoint, sink.counters, sink.worker));
        }
        for (name, endpoint, counters, mut worker) in workers {
            if tokio::time::timeout_at(deadline, &mut worker).await.is_err() {
                worker.abort();
                let lost = counters.queued.load(Ordering::Relaxed) + 1;
                tracing::warn!(
                    sink = %name,
                    endpoint = %endpoint,
                    lost,
                    "alert sink {name} did not finish within {} of shutdown; {lost} notification(s) in flight or queued were not delivered",
                    humantime::format_duration(grace)
                );
            }
        }
    }
}

impl SinkHandle {
    /// Counts a dropped notification and warns, at most once per period.
    /// `stopped`: the worker is gone (it panicked), rather than busy.
    fn dropped(&self, alert: &Alert, stopped: bool) {
        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        let due = self
            .drop_warnings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .on_drop(Instant::now());
        let Some(unlogged) = due else {
            return;
        };
        let since = match unlogged {
            0 => String::new(),
            n => format!(
                " ({n} more were dropped since the last such warning; they are logged at most every {})",
                humantime::format_duration(DROP_WARNING_EVERY)
            ),
        };
        if stopped {
            tracing::error!(
                sink = %self.name,
                dedup_key = %alert.dedup_key,
                dropped_since_last_warning = unlogged,
                "alert sink {} has stopped (a bug: see the log above), so notification {} was dropped{since}: restart the agent",
                self.name,
                alert.dedup_key,
            );
            return;
        }
        tracing::warn!(
            sink = %self.name,
            endpoint = %self.endpoint,
            dedup_key = %alert.dedup_key,
            dropped_since_last_warning = unlogged,
            "alert sink {} is not keeping up: its queue of {} is full, so notification {} was dropped{since}: check that {} answers, or raise the sink's queue",
            self.name,
            self.capacity,
            alert.dedup_key,
            self.endpoint,
        );
    }
}

/// Builds one sink and spawns its worker.
fn start_sink(config: SinkConfig) -> SinkHandle {
    let built = Sink::build(&config);
    let endpoint = match &built {
        Ok(sink) => sink.endpoint().to_owned(),
        Err(e) => {
            tracing::error!(sink = %config.name, "{e}; its alerts will not be delivered");
            String::from("(not set up)")
        }
    };
    // A queue of 0 would be no queue at all (and tokio refuses it).
    let capacity = config.queue.max(1);
    let (queue, receiver) = mpsc::channel(capacity);
    let counters = Arc::new(Counters::default());
    let limits = Limits {
        timeout: config.timeout,
        retries: config.retries,
        backoff: config.backoff,
    };
    let worker = tokio::spawn(work(
        config.name.clone(),
        built.map_err(|e| e.to_string()),
        receiver,
        Arc::clone(&counters),
        limits,
    ));
    SinkHandle {
        kind: config.kind.as_str(),
        filter: Filter {
            min_severity: config.min_severity,
            signals: config.signals,
        },
        name: config.name,
        endpoint,
        capacity,
        queue,
        counters,
        drop_warnings: Mutex::default(),
        worker,
    }
}

/// A sink's worker: delivers its queue in order until it is closed.
async fn work(
    name: String,
    sink: Result<Sink, String>,
    mut queue: mpsc::Receiver<Arc<Alert>>,
    counters: Arc<Counters>,
    limits: Limits,
) {
    while let Some(alert) = queue.recv().await {
        counters.queued.fetch_sub(1, Ordering::Relaxed);
        match &sink {
            Ok(sink) => deliver(&name, sink, &alert, &counters, limits).await,
            Err(error) => {
                tracing::error!(sink = %name, dedup_key = %alert.dedup_key, "alert not delivered: {error}");
                counters.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Delivers one notification, retrying what is worth retrying. Each outcome
/// is logged before it is counted, so that whoever sees the count can read
/// the line.
async fn deliver(name: &str, sink: &Sink, alert: &Alert, counters: &Counters, limits: Limits) {
    let mut retry = 0;
    loop {
        let attempt = tokio::time::timeout(limits.timeout, sink.deliver(alert)).await;
        let error = match attempt {
            Ok(Ok(())) => {
                tracing::debug!(sink = %name, dedup_key = %alert.dedup_key, retries = retry, "alert delivered");
                counters.delivered.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(Err(error)) => error,
            Err(_elapsed) => DeliveryError::transient(sink.timed_out(limits.timeout)),
        };
        if error.retry && retry < limits.retries {
            retry += 1;
            let delay = with_jitter(backoff_delay(limits.backoff, retry), rand::random::<f64>());
            tracing::warn!(
                sink = %name,
                dedup_key = %alert.dedup_key,
                attempt = retry,
                "alert delivery failed, retry {retry} of {} in {}: {error}",
                limits.retries,
                humantime::format_duration(Duration::from_millis(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)))
            );
            counters.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(delay).await;
            continue;
        }
        let why = if error.retry {
            format!("after {} attempt(s)", retry + 1)
        } else {
            "and not retried".to_owned()
        };
        tracing::error!(sink = %name, dedup_key = %alert.dedup_key, "alert not delivered {why}: {error}");
        counters.failed.fetch_add(1, Ordering::Relaxed);
        return;
    }
}

#[cfg(test)]
mod tests;
