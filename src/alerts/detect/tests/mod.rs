//! Detector tests: the helpers, the life every signal shares, the clocks
//! and the bounds; `signals.rs` tests each signal on its own.

use super::*;
use crate::keyset::{RotationState, Version};
use crate::secret::Secret;

const T0: u64 = 1_800_000_000;
const HOUR: Duration = Duration::from_secs(3600);

/// The wall clock `secs` after T0.
fn at(secs: f64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(T0) + Duration::from_secs_f64(secs)
}

/// The monotonic clock `secs` after a fixed point (the detectors' anchor
/// in these tests, so whole windows start at multiples of 60 s).
fn mono(secs: f64) -> Instant {
    static ZERO: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *ZERO.get_or_init(Instant::now) + Duration::from_secs_f64(secs)
}

/// Both clocks `secs` after the start, the wall clock not set since.
fn now(secs: f64) -> Now {
    Now {
        wall: at(secs),
        mono: mono(secs),
    }
}

fn detectors(host: &str) -> Detectors {
    Detectors::new(host.to_owned(), mono(0.0))
}

fn version(n: u64) -> Version {
    Version {
        number: n,
        secret: Secret::copy_from(b"not-a-real-secret"),
        fingerprint: format!("fp{n}"),
        created_at: at(0.0),
        expires_at: None,
        promoted_at: Some(at(0.0)),
    }
}

/// prod/billing: primary v3, fallback v2, v1 retired.
fn state() -> KeySetState {
    let mut s = KeySetState::create("prod/billing".parse().unwrap(), version(3));
    s.fallback = Some(version(2));
    s.state = RotationState::Promoted;
    s.history.push(version(1).meta());
    s
}

/// The defaults: a 60 s window, spike at 5, rising over 3 windows to 10,
/// 7 days' expiry lead, no max age.
fn settings() -> DetectSettings {
    DetectSettings::default()
}

struct Fixture {
    d: Detectors,
    state: KeySetState,
    s: DetectSettings,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            d: detectors("host1"),
            state: state(),
            s: settings(),
        }
    }

    fn report(&mut self, t: f64, version: u64, caller: &str) {
        let class = Classification::of(&self.state, version);
        let r = Report {
            at: mono(t),
            class,
            version,
            status_code: 401,
            caller: caller.to_owned(),
            service: "billing-worker".to_owned(),
        };
        let key = self.state.key.clone();
        self.d.report(&key, r, &self.s);
    }

    fn eval(&mut self, t: f64) -> Vec<Alert> {
        self.eval_at(now(t))
    }

    fn eval_at(&mut self, now: Now) -> Vec<Alert> {
        self.d.evaluate(
            now,
            [(&self.state, self.s.clone())],
            true,
            HOUR,
            Duration::from_secs(60),
        )
    }
}

fn only(alerts: &[Alert], signal: Signal) -> Vec<&Alert> {
    alerts.iter().filter(|a| a.signal == signal).collect()
}

#[test]
fn classification_table() {
    let s = state();
    assert_eq!(Classification::of(&s, 3), Classification::Primary);
    assert_eq!(Classification::of(&s, 2), Classification::Fallback);
    assert_eq!(Classification::of(&s, 1), Classification::Stale);
    assert_eq!(Classification::of(&s, 9), Classification::Unknown);
    assert_eq!(Classification::of(&s, 0), Classification::Unknown);
}

#[test]
fn a_deleted_key_resolves_its_alerts_on_a_complete_evaluation() {
    let mut f = Fixture::new();
    f.report(1.0, 1, "c");
    assert_eq!(f.eval(1.0).len(), 1);
    let out = f.d.evaluate(now(2.0), [], true, HOUR, Duration::from_secs(60));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].status, AlertStatus::Resolved);
    assert!(f.d.reports.is_empty(), "the deleted key's reports are dropped");
}

#[test]
fn a_partial_evaluation_leaves_other_keys_alone() {
    let mut f = Fixture::new();
    f.report(1.0, 1, "c");
    f.eval(1.0);
    let other = KeySetState::create("prod/other".parse().unwrap(), version(1));
    let out =
        f.d.evaluate(now(500.0), [(&other, settings())], false, HOUR, Duration::from_secs(60));
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(f.d.open_alerts().len(), 1);
}

#[test]
fn memory_is_bounded_under_a_flood() {
    let mut f = Fixture::new();
    for i in 0..(MAX_KEPT_REPORTS + 500) {
        f.report(i as f64 * 0.001, 3, "c");
    }
    let r = &f.d.reports[&f.state.key];
    assert_eq!(r.recent.len(), MAX_KEPT_REPORTS);
    assert!(r.buckets.len() <= 5);
}

#[test]
fn durations_read_as_two_units() {
    assert_eq!(human(Duration::from_secs(90 * 86400)), "90d");
    assert_eq!(human(Duration::from_secs(6 * 86400 + 23 * 3600 + 59)), "6d 23h");
    assert_eq!(human(Duration::from_secs(7500)), "2h 5m");
    assert_eq!(human(Duration::from_secs(60)), "1m");
    assert_eq!(human(Duration::from_millis(200)), "1s");
}

#[test]
fn many_callers_are_named_up_to_a_limit() {
    let names: Vec<String> = (0..8).map(|i| format!("c{i}")).collect();
    let s = named(names.iter().map(String::as_str).chain(["c0", "c1"]));
    assert_eq!(s, "c0, c1, c2, c3, c4 and 3 more");
}

/// Every signal goes through the same life: open once, repeat after the
/// repeat interval while it lasts, resolve once it has been clear for a
/// window. `activate` makes the signal active at time `t` (and must be
/// called again to keep it so); `clear` removes its cause.
#[test]
fn every_signal_opens_repeats_and_resolves() {
    type Step = fn(&mut Fixture, f64);
    let w0 = 60.0;
    let cases: [(Signal, Step, Step); 7] = [
        (
            Signal::Spike,
            |f, t| (0..5).for_each(|i| f.report(t + i as f64 * 0.01, 3, "c")),
            |_, _| {},
        ),
        (Signal::StaleVersion, |f, t| f.report(t, 1, "c"), |_, _| {}),
        (
            Signal::FallbackFailing,
            |f, t| {
                f.report(t, 3, "c");
                f.report(t, 2, "c");
            },
            |_, _| {},
        ),
        (
            Signal::RisingRate,
            // Three whole windows of 10, 20, 30 reports before `t`.
            |f, t| {
                let w0 = 60.0;
                let w = ((t - w0) / 60.0).floor();
                for (back, n) in [(3.0, 10), (2.0, 20), (1.0, 30)] {
                    for i in 0..n {
                        f.report(w0 + (w - back) * 60.0 + i as f64 * 0.5, 3, "c");
                    }
                }
            },
            |_, _| {},
        ),
        (
            Signal::ExpiryAhead,
            |f, t| f.state.primary.expires_at = Some(at(t + 86400.0)),
            |f, _| f.state.primary.expires_at = None,
        ),
        (
            Signal::MaxAgeOverdue,
            |f, _| f.s.max_age = Some(Duration::from_secs(1)),
            |f, _| f.s.max_age = None,
        ),
        (
            Signal::AgentHealth,
            |f, t| {
                f.d.health(
                    Subject::Key(f.state.key.clone()),
                    now(t),
                    Severity::Warning,
                    "hook failed".to_owned(),
                )
            },
            |_, _| {},
        ),
    ];
    for (signal, activate, clear) in cases {
        let mut f = Fixture::new();
        f.s.spike_threshold = if signal == Signal::Spike { 5 } else { 1_000_000 };
        f.s.rising_min = if signal == Signal::RisingRate { 10 } else { 1_000_000 };
        let only_this = |out: Vec<Alert>| -> Vec<Alert> { out.into_iter().filter(|a| a.signal == signal).collect() };
        let start = w0 + 600.0 + 10.0;
        activate(&mut f, start);
        let opened = only_this(f.eval(start));
        assert_eq!(opened.len(), 1, "{signal}: opens once");
        assert_eq!(opened[0].status, AlertStatus::Firing, "{signal}");
        assert!(only_this(f.eval(start + 1.0)).is_empty(), "{signal}: no second firing");

        // An hour on, still active: one repeat.
        let later = start + 3600.0;
        activate(&mut f, later);
        let repeated = only_this(f.eval(later));
        assert_eq!(repeated.len(), 1, "{signal}: repeats");
        assert_eq!(repeated[0].status, AlertStatus::Repeat, "{signal}");
        assert_eq!(repeated[0].dedup_key, opened[0].dedup_key, "{signal}");

        // Cause removed: resolves once, within two windows and a tick.
        clear(&mut f, later);
        let mut resolved = Vec::new();
        let mut t = later + 1.0;
        while t < later + 3.0 * 60.0 {
            resolved.extend(only_this(f.eval(t)));
            t += 1.0;
        }
        assert_eq!(resolved.len(), 1, "{signal}: resolves once: {resolved:?}");
        assert_eq!(resolved[0].status, AlertStatus::Resolved, "{signal}");
        assert_eq!(resolved[0].dedup_key, opened[0].dedup_key, "{signal}");
    }
}

/// The wall clock set back an hour does not bring reports from before the
/// jump back into the window: windows follow the monotonic clock.
#[test]
fn reports_from_before_the_wall_clock_went_back_do_not_make_a_spike() {
    let mut f = Fixture::new();
    for i in 0..4 {
        f.report(i as f64, 3, "c");
        assert!(only(&f.eval(i as f64), Signal::Spike).is_empty());
    }
    // 70 s later on the monotonic clock, an hour earlier on the wall clock.
    let later = Now {
        wall: at(70.0) - HOUR,
        mono: mono(70.0),
    };
    f.report(70.0, 3, "c");
    let out = f.eval_at(later);
    assert!(only(&out, Signal::Spike).is_empty(), "{out:?}");
    assert_eq!(
        f.d.reports[&f.state.key].recent.len(),
        1,
        "only the new report is in the window"
    );

    // The same reports with both clocks 10 s on do make the spike: the
    // threshold is met by reports within a window.
    let mut g = Fixture::new();
    for i in 0..4 {
        g.report(i as f64, 3, "c");
    }
    g.report(10.0, 3, "c");
    assert_eq!(only(&g.eval(10.0), Signal::Spike).len(), 1);
}

/// The repeat interval and the resolve hold follow the monotonic clock:
/// the wall clock set forward a day neither repeats nor resolves an alert
/// early, while its timestamps follow the wall clock.
#[test]
fn a_wall_clock_jump_forward_neither_repeats_nor_resolves_early() {
    let mut f = Fixture::new();
    f.report(1.0, 1, "c");
    let opened = only(&f.eval(1.0), Signal::StaleVersion)[0].clone();
    let day = Duration::from_secs(86400);
    f.report(2.0, 1, "c");
    let jumped = Now {
        wall: at(2.0) + day,
        mono: mono(2.0),
    };
    assert!(f.eval_at(jumped).is_empty(), "no repeat after a day of wall clock");
    // Still active at 61.9 (on the monotonic clock), clear at 62: resolves
    // a window after 61.9.
    let resolve_at = |t: f64| Now {
        wall: at(t) + day,
        mono: mono(t),
    };
    assert!(f.eval_at(resolve_at(61.9)).is_empty());
    assert!(f.eval_at(resolve_at(100.0)).is_empty(), "no early resolution");
    let out = f.eval_at(resolve_at(123.0));
    let res = only(&out, Signal::StaleVersion);
    assert_eq!(res.len(), 1, "{out:?}");
    assert_eq!(res[0].status, AlertStatus::Resolved);
    assert_eq!(res[0].opened_at, opened.opened_at);
    assert_eq!(res[0].timestamp, at(123.0) + day);
}

mod signals;
