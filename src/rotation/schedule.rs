//! When a scheduled rotation is due: `[rotation] every`, `window` and
//! `jitter`, pure (the time zone and the time are arguments).
//!
//! A key is due once its primary has served `every` (counted from its
//! promotion, or its creation for a key never rotated), plus a jitter that
//! is fixed per key, version and install (so that many keys, and many
//! hosts, do not rotate at once, and a restart does not move it), and then
//! at the first moment inside the window.

use std::fmt;
use std::time::{Duration, SystemTime};

use jiff::civil::{Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};
use sha2::{Digest, Sha256};

use crate::keyset::KeySetState;

/// One key's rotation schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Rotate once the primary has served this long.
    pub every: Duration,
    /// Only start inside this window (in the agent's time zone).
    pub window: Option<Window>,
    /// Spread: each key waits up to this much more, fixed per key.
    pub jitter: Duration,
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "every {}", humantime::format_duration(self.every))?;
        if let Some(w) = &self.window {
            write!(f, ", window {w}")?;
        }
        if !self.jitter.is_zero() {
            write!(f, ", jitter {}", humantime::format_duration(self.jitter))?;
        }
        Ok(())
    }
}

/// Days of the week and a time of day when rotations may start, e.g.
/// `Mon-Fri 09:00-16:00`. An end before the start runs past midnight
/// (`22:00-04:00`: from 22:00 on the listed days to 04:00 the next day).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    /// Monday first: which days a window opens on.
    days: [bool; 7],
    start: Time,
    end: Time,
    text: String,
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

const DAY_NAMES: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

/// Monday = 0; a day is its name or its first three letters, any case.
fn day(s: &str) -> Result<usize, String> {
    let lower = s.to_ascii_lowercase();
    DAY_NAMES
        .iter()
        .position(|d| lower == *d || (lower.len() == 3 && d.starts_with(&lower)))
        .ok_or_else(|| format!("{s:?} is not a day: use Mon, Tue, Wed, Thu, Fri, Sat or Sun"))
}

fn time_of_day(s: &str) -> Result<Time, String> {
    let bad = || format!("{s:?} is not a time of day: write HH:MM, e.g. 09:00 (24:00 for the end of the day)");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    let (h, m): (i8, i8) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h == 24 && m == 0 {
        return Ok(Time::MAX);
    }
    Time::new(h, m, 0, 0).map_err(|_| bad())
}

impl Window {
    /// Parses `[DAYS] [HH:MM-HH:MM]`: DAYS is a day, a range (`Mon-Fri`)
    /// or a comma list of those (`Mon,Wed,Fri`, `Sat-Sun`); each part may
    /// be left out (every day; all day), not both.
    pub fn parse(text: &str) -> Result<Window, String> {
        let parts: Vec<&str> = text.split_whitespace().collect();
        let usage = "write it as DAYS HH:MM-HH:MM, e.g. \"Mon-Fri 09:00-16:00\" (either part may be left out)";
        let (days_text, times_text) = match parts.as_slice() {
            [one] if one.contains(':') => (None, Some(*one)),
            [one] => (Some(*one), None),
            [d, t] => (Some(*d), Some(*t)),
            _ => return Err(format!("window {text:?}: {usage}")),
        };
        let mut days = [days_text.is_none(); 7];
        for part in days_text.into_iter().flat_map(|d| d.split(',')) {
            let err = |e: String| format!("window {text:?}: {e}");
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (day(a).map_err(err)?, day(b).map_err(err)?);
                    let mut d = a;
                    loop {
                        days[d] = true;
                        if d == b {
                            break;
                        }
                        d = (d + 1) % 7;
                    }
                }
                None => days[day(part).map_err(err)?] = true,
            }
        }
        let (start, end) = match times_text {
            None => (Time::MIN, Time::MAX),
            Some(t) => {
                let (a, b) = t
                    .split_once('-')
                    .ok_or_else(|| format!("window {text:?}: the times must be a range HH:MM-HH:MM; {usage}"))?;
                let err = |e: String| format!("window {text:?}: {e}");
                (time_of_day(a).map_err(err)?, time_of_day(b).map_err(err)?)
            }
        };
        if start == end {
            return Err(format!("window {text:?} is empty: its start and end are the same time"));
        }
        Ok(Window {
            days,
            start,
            end,
            text: text.to_owned(),
        })
    }

    fn opens_on(&self, weekday: Weekday) -> bool {
        self.days[weekday.to_monday_zero_offset() as usize]
    }

    /// The first moment at or after `t` inside the window, in `tz`.
    pub fn next_open(&self, t: SystemTime, tz: &TimeZone) -> SystemTime {
        let Ok(ts) = Timestamp::try_from(t) else { return t };
        let now = ts.to_zoned(tz.clone());
        let overnight = self.end < self.start;
        // The window that opened the day before may still be open (past
        // midnight); then today's, then the next days'.
        for offset in -1i64..=8 {
            let Ok(date) = now.date().checked_add(jiff::Span::new().days(offset)) else {
                continue;
            };
            if !self.opens_on(date.weekday()) {
                continue;
            }
            let Ok(start) = date.to_datetime(self.start).to_zoned(tz.clone()) else {
                continue;
            };
            let end_date = if overnight {
                date.tomorrow().unwrap_or(date)
            } else {
                date
            };
            let Ok(end) = end_date.to_datetime(self.end).to_zoned(tz.clone()) else {
                continue;
            };
            if now >= end {
                continue;
            }
            let open: &Zoned = if now >= start { &now } else { &start };
            return SystemTime::from(open.timestamp());
        }
        t
    }
}

/// The fixed part of `jitter` this key waits, from its name, its primary's
/// version and the install's `seed`: the same across restarts, different
/// per key and per host.
pub fn jitter_for(seed: &[u8], state: &KeySetState, jitter: Duration) -> Duration {
    if jitter.is_zero() {
        return Duration::ZERO;
    }
    let mut h = Sha256::new();
    h.update(seed);
    h.update(state.key.to_string().as_bytes());
    h.update(state.primary.number.to_le_bytes());
    let digest = h.finalize();
    let mut n = [0u8; 8];
    n.copy_from_slice(&digest[..8]);
    let millis = u64::from_le_bytes(n) % (jitter.as_millis() as u64).max(1);
    Duration::from_millis(millis)
}

/// When `state` is next due for rotation under `schedule`: its primary's
/// age reaches `every` (plus the key's jitter), moved to the first moment
/// inside the window.
pub fn next_due(state: &KeySetState, schedule: &Schedule, seed: &[u8], tz: &TimeZone) -> SystemTime {
    let since = state.primary.promoted_at.unwrap_or(state.primary.created_at);
    let due = since + schedule.every + jitter_for(seed, state, schedule.jitter);
    match &schedule.window {
        Some(w) => w.next_open(due, tz),
        None => due,
    }
}

/// Whether a scheduled rotation may start at `now` for a key due at `due`:
/// it is due, and `now` is inside the window.
pub fn may_start(due: SystemTime, schedule: &Schedule, now: SystemTime, tz: &TimeZone) -> bool {
    if now < due {
        return false;
    }
    match &schedule.window {
        Some(w) => w.next_open(now, tz) == now,
        None => true,
    }
}

/// How long a scheduled rotation that failed `failures` times in a row
/// waits before it tries again: `every / 10` (between 5 s and 1 h),
/// doubling with each failure, at most a day.
pub fn backoff(schedule: &Schedule, failures: u32) -> Duration {
    let base = (schedule.every / 10).clamp(Duration::from_secs(5), Duration::from_secs(3600));
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    base.saturating_mul(factor).min(Duration::from_secs(24 * 3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc() -> TimeZone {
        TimeZone::UTC
    }

    fn at(s: &str) -> SystemTime {
        SystemTime::from(s.parse::<Timestamp>().unwrap())
    }

    #[test]
    fn windows_parse_and_refuse_clearly() {
        for ok in [
            "Mon-Fri 09:00-16:00",
            "Sat,Sun",
            "09:00-16:00",
            "Fri-Mon 22:00-04:00",
            "mon 00:00-24:00",
        ] {
            Window::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, says) in [
            ("Mon-Fry 09:00-16:00", "not a day"),
            ("Mon 9-16", "not a time of day"),
            ("Mon 09:00", "range HH:MM-HH:MM"),
            ("Mon 25:00-26:00", "not a time of day"),
            ("Mon 09:00-09:00", "empty"),
            ("Mon 09:00-10:00 extra", "DAYS HH:MM-HH:MM"),
        ] {
            let e = Window::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn next_open_moves_into_the_window() {
        let w = Window::parse("Mon-Fri 09:00-16:00").unwrap();
        // Saturday noon → Monday 09:00.
        assert_eq!(
            w.next_open(at("2026-12-05T12:00:00Z"), &utc()),
            at("2026-12-07T09:00:00Z")
        );
        // Inside: unchanged.
        assert_eq!(
            w.next_open(at("2026-12-07T10:30:00Z"), &utc()),
            at("2026-12-07T10:30:00Z")
        );
        // After hours on Friday → Monday.
        assert_eq!(
            w.next_open(at("2026-12-11T16:00:00Z"), &utc()),
            at("2026-12-14T09:00:00Z")
        );
        // Overnight window, after midnight: still open.
        let night = Window::parse("Fri 22:00-04:00").unwrap();
        assert_eq!(
            night.next_open(at("2026-12-12T03:00:00Z"), &utc()),
            at("2026-12-12T03:00:00Z")
        );
        assert_eq!(
            night.next_open(at("2026-12-12T05:00:00Z"), &utc()),
            at("2026-12-18T22:00:00Z")
        );
        // In another zone, the hours are that zone's.
        let paris = TimeZone::get("Europe/Paris").unwrap();
        assert_eq!(
            w.next_open(at("2026-12-07T07:00:00Z"), &paris),
            at("2026-12-07T08:00:00Z")
        );
    }

    #[test]
    fn jitter_is_fixed_per_key_and_bounded() {
        let v = crate::keyset::Version {
            number: 4,
            secret: crate::secret::Secret::copy_from(b"x"),
            fingerprint: String::new(),
            created_at: SystemTime::UNIX_EPOCH,
            expires_at: None,
            promoted_at: None,
        };
        let a = KeySetState::create("prod/a".parse().unwrap(), v.clone());
        let b = KeySetState::create("prod/b".parse().unwrap(), v);
        let j = Duration::from_secs(3600);
        assert_eq!(jitter_for(b"seed", &a, j), jitter_for(b"seed", &a, j));
        assert!(jitter_for(b"seed", &a, j) < j);
        let spread: std::collections::BTreeSet<Duration> = (0..20)
            .map(|i| jitter_for(format!("host{i}").as_bytes(), &a, j))
            .collect();
        assert!(spread.len() > 15, "hosts spread: {spread:?}");
        assert_ne!(jitter_for(b"seed", &a, j), jitter_for(b"seed", &b, j));
        let s = Schedule {
            every: Duration::from_secs(30 * 86400),
            window: Some(Window::parse("Mon-Fri 09:00-16:00").unwrap()),
            jitter: Duration::ZERO,
        };
        // Created at the epoch (a Thursday, 00:00): due 30 days later, a
        // Saturday, so Monday 09:00.
        assert_eq!(next_due(&a, &s, b"seed", &utc()), at("1970-02-02T09:00:00Z"));
        assert!(!may_start(
            at("1970-02-02T09:00:00Z"),
            &s,
            at("1970-02-02T08:59:00Z"),
            &utc()
        ));
        assert!(may_start(
            at("1970-02-02T09:00:00Z"),
            &s,
            at("1970-02-02T09:01:00Z"),
            &utc()
        ));
        assert!(!may_start(
            at("1970-02-02T09:00:00Z"),
            &s,
            at("1970-02-02T17:00:00Z"),
            &utc()
        ));
    }

    #[test]
    fn backoff_grows_and_is_bounded() {
        let s = Schedule {
            every: Duration::from_secs(2),
            window: None,
            jitter: Duration::ZERO,
        };
        assert_eq!(backoff(&s, 1), Duration::from_secs(5));
        assert_eq!(backoff(&s, 3), Duration::from_secs(20));
        assert_eq!(backoff(&s, 40), Duration::from_secs(24 * 3600));
    }
}
