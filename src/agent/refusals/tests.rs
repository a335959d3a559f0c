//! The coalescer driven by tables of refusals at given times: what is
//! written at once, what each window's record says, and the caps.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::*;

/// Wall time 0 of the tables: 2025-06-15T15:06:40Z.
fn wall0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000)
}

struct Clock(Instant);

impl Clock {
    fn at(&self, ms: u64) -> Now {
        Now {
            wall: wall0() + Duration::from_millis(ms),
            mono: self.0 + Duration::from_millis(ms),
        }
    }
}

fn refusal(uid: u32, pid: i32, event: &'static str, outcome: &'static str, key: Option<&str>) -> Refusal {
    Refusal {
        event,
        caller: Arc::new(CallerRecord {
            uid,
            gid: uid,
            pid,
            exe: None,
            unit: None,
        }),
        key: key.map(str::to_owned),
        outcome,
        detail: format!("uid {uid} (pid {pid}) refused"),
    }
}

/// One step of a table.
enum Op {
    /// At ms, a refusal (uid, pid, event, outcome, key); whether it is to
    /// be written at once.
    R(u64, u32, i32, &'static str, &'static str, Option<&'static str>, bool),
    /// At ms, the windows over are closed: the records expected.
    C(u64, &'static [Sum]),
}
use Op::{C, R};

/// An expected coalesced record: caller (uid, pid), event, outcome, key,
/// count, first and last (ms).
type Sum = (
    u32,
    i32,
    &'static str,
    &'static str,
    Option<&'static str>,
    u64,
    u64,
    u64,
);

const F: &str = "fetch";
const W: &str = "watch";
const D: &str = "denied";
const I: &str = "invalid_argument";
const A: Option<&str> = Some("prod/a");
const B: Option<&str> = Some("prod/b");

#[test]
fn refusals_alike_are_written_once_then_counted_per_window() {
    let table: [(&str, u64, &[Op]); 6] = [
        (
            "the first at once, the rest counted, one record when the window ends",
            1000,
            &[
                R(0, 1, 10, F, D, A, true),
                R(10, 1, 10, F, D, A, false),
                R(20, 1, 10, F, D, A, false),
                R(30, 1, 10, F, D, A, false),
                C(999, &[]),
                C(1000, &[(1, 10, F, D, A, 3, 10, 30)]),
                C(5000, &[]),
            ],
        ),
        (
            "a refusal after the window opens the next one, written at once",
            1000,
            &[
                R(0, 1, 10, F, D, A, true),
                R(400, 1, 10, F, D, A, false),
                C(1000, &[(1, 10, F, D, A, 1, 400, 400)]),
                R(1200, 1, 10, F, D, A, true),
                R(2100, 1, 10, F, D, A, false),
                C(2199, &[]),
                C(2200, &[(1, 10, F, D, A, 1, 2100, 2100)]),
            ],
        ),
        (
            "a window with no second refusal writes nothing more",
            1000,
            &[R(0, 1, 10, F, D, A, true), C(5000, &[]), R(5001, 1, 10, F, D, A, true)],
        ),
        (
            "uid, event, outcome and key each make a kind of their own",
            1000,
            &[
                R(0, 1, 10, F, D, A, true),
                R(1, 2, 20, F, D, A, true),
                R(2, 1, 10, W, D, A, true),
                R(3, 1, 10, F, I, A, true),
                R(4, 1, 10, F, D, B, true),
                R(5, 1, 10, F, D, None, true),
                R(6, 1, 10, F, D, None, false),
                R(7, 1, 10, F, D, B, false),
                R(8, 1, 10, F, I, A, false),
                R(9, 1, 10, W, D, A, false),
                R(10, 2, 20, F, D, A, false),
                R(11, 1, 10, F, D, A, false),
                // Each window ends 1 s after its own first refusal.
                C(
                    1004,
                    &[
                        (1, 10, F, D, B, 1, 7, 7),
                        (1, 10, F, I, A, 1, 8, 8),
                        (1, 10, W, D, A, 1, 9, 9),
                        (2, 20, F, D, A, 1, 10, 10),
                        (1, 10, F, D, A, 1, 11, 11),
                    ],
                ),
                C(1005, &[(1, 10, F, D, None, 1, 6, 6)]),
            ],
        ),
        (
            "other pids of a uid are the same kind; the record names the last caller",
            1000,
            &[
                R(0, 1, 10, F, D, A, true),
                R(1, 1, 11, F, D, A, false),
                R(2, 1, 12, F, D, A, false),
                C(1000, &[(1, 12, F, D, A, 2, 1, 2)]),
            ],
        ),
        (
            "a zero window writes every refusal and keeps nothing",
            0,
            &[
                R(0, 1, 10, F, D, A, true),
                R(1, 1, 10, F, D, A, true),
                R(2, 1, 10, F, D, A, true),
                C(10_000, &[]),
            ],
        ),
    ];
    for (name, window, ops) in table {
        let clock = Clock(Instant::now());
        let mut c = Coalescer::new(Duration::from_millis(window));
        for (step, op) in ops.iter().enumerate() {
            match *op {
                R(ms, uid, pid, event, outcome, key, written) => {
                    let admitted = c.admit(clock.at(ms), refusal(uid, pid, event, outcome, key));
                    assert_eq!(admitted.is_some(), written, "{name}: step {step}");
                    if let Some(r) = admitted {
                        // Written at once, as it is.
                        assert_eq!(
                            (r.caller.uid, r.caller.pid, r.key.as_deref()),
                            (uid, pid, key),
                            "{name}"
                        );
                        let record = r.into_record();
                        assert!(record.coalesced.is_none(), "{name}");
                        assert_eq!((record.event, record.outcome), (event, outcome), "{name}");
                    }
                }
                C(ms, want) => {
                    let got: Vec<Sum> = c
                        .close(Some(clock.at(ms).mono))
                        .iter()
                        .map(|r| {
                            let caller = r.caller.as_ref().expect("a caller");
                            let co = r.coalesced.as_ref().expect("coalesced");
                            assert_eq!(co.distinct_keys, None, "{name}");
                            let ms = |t: SystemTime| t.duration_since(wall0()).unwrap().as_millis() as u64;
                            let key = r
                                .key
                                .as_deref()
                                .map(|k| *[A, B].iter().flatten().find(|s| **s == k).unwrap());
                            (
                                caller.uid,
                                caller.pid,
                                r.event,
                                r.outcome,
                                key,
                                co.count,
                                ms(co.first),
                                ms(co.last),
                            )
                        })
                        .collect();
                    assert_eq!(got, want, "{name}: step {step}");
                }
            }
        }
    }
}

#[test]
fn a_uid_past_its_keys_folds_into_one_record_counting_distinct_keys() {
    let clock = Clock(Instant::now());
    let mut c = Coalescer::new(Duration::from_secs(60));
    let key = |i: usize| Some(format!("prod/made-up-{i}"));
    let mut admit =
        |ms: u64, uid: u32, key: Option<String>| c.admit(clock.at(ms), refusal(uid, 7, F, D, key.as_deref())).is_some();
    // Its first keys each get a bucket: written at once.
    for i in 0..MAX_KEYS_PER_UID {
        assert!(admit(i as u64, 1, key(i)), "key {i}");
    }
    // The next key opens the uid's folded bucket (written); later ones,
    // new or repeated, are counted there.
    assert!(admit(100, 1, key(100)));
    for i in 101..160 {
        assert!(!admit(i as u64, 1, key(i)), "key {i}");
    }
    assert!(!admit(200, 1, key(150)), "a folded key again");
    assert!(!admit(201, 1, key(0)), "an own key is still counted apart");
    // Another uid still has keys of its own.
    assert!(admit(300, 2, key(0)));

    let records = c.close(None);
    assert_eq!(records.len(), 2, "{records:#?}");
    // Oldest first refusal first: the folded bucket counted from 101 ms.
    let own = &records[1];
    assert_eq!(own.key.as_deref(), Some("prod/made-up-0"));
    assert_eq!(own.coalesced.as_ref().unwrap().count, 1);
    let folded = &records[0];
    assert_eq!(folded.key, None, "a folded record names no key");
    assert_eq!(folded.caller.as_ref().unwrap().uid, 1);
    let co = folded.coalesced.as_ref().unwrap();
    assert_eq!((co.count, co.distinct_keys), (60, Some(59)));
    let detail = folded.detail.as_deref().unwrap();
    assert!(
        detail.starts_with("refusals of 59 distinct keys by uid 1, beyond the 16 keys"),
        "{detail}"
    );
    assert_eq!(c.open(), 0);
    // Closed, the uid has its keys again.
    assert!(c.admit(clock.at(1000), refusal(1, 7, F, D, Some("prod/x"))).is_some());
}

#[test]
fn distinct_keys_are_counted_up_to_a_bound() {
    let clock = Clock(Instant::now());
    let mut c = Coalescer::new(Duration::from_secs(60));
    for i in 0..MAX_KEYS_PER_UID + 1 + 500 {
        let _ = c.admit(clock.at(1), refusal(1, 7, F, I, Some(&format!("\"prod\"/\"BAD{i}\""))));
    }
    let records = c.close(None);
    let co = records[0].coalesced.as_ref().unwrap();
    assert_eq!((co.count, co.distinct_keys), (500, Some(DISTINCT_KEYS_COUNTED)));
    let detail = records[0].detail.as_deref().unwrap();
    assert!(detail.starts_with("refusals of at least 100 distinct keys"), "{detail}");
}

#[test]
fn past_the_total_every_uid_folds_into_one_record_without_a_caller() {
    let clock = Clock(Instant::now());
    let mut c = Coalescer::new(Duration::from_secs(60));
    let mut written = 0;
    for uid in 0..2000u32 {
        if c.admit(clock.at(u64::from(uid)), refusal(uid, 1, F, D, A)).is_some() {
            written += 1;
        }
    }
    // MAX_BUCKETS uids have a bucket each, one more opens the folded one.
    assert_eq!(written, MAX_BUCKETS + 1);
    assert_eq!(c.open(), MAX_BUCKETS + 1);
    let records = c.close(None);
    assert_eq!(records.len(), 1, "only the folded bucket counted anything");
    let all = &records[0];
    assert!(all.caller.is_none(), "it stands for many uids");
    assert_eq!(all.key, None);
    let co = all.coalesced.as_ref().unwrap();
    assert_eq!((co.count, co.distinct_keys), (2000 - MAX_BUCKETS as u64 - 1, Some(1)));
    let detail = all.detail.as_deref().unwrap();
    assert!(
        detail.starts_with("refusals by at least 100 distinct uids, beyond the 1024 kinds"),
        "{detail}"
    );
}

#[test]
fn memory_and_records_stay_bounded_whatever_the_caller_varies() {
    // 200,000 refusals, each with a new key and pid, from 20,000 uids,
    // two events and two outcomes, all within one window.
    let clock = Clock(Instant::now());
    let mut c = Coalescer::new(Duration::from_secs(60));
    let mut written = 0usize;
    for i in 0..200_000u32 {
        let (event, outcome) = ([F, W][(i % 2) as usize], [D, I][(i / 2 % 2) as usize]);
        let key = format!("prod/k{i}");
        let r = refusal(i % 20_000, i as i32, event, outcome, Some(&key));
        if c.admit(clock.at(u64::from(i / 1000)), r).is_some() {
            written += 1;
        }
        assert!(c.open() <= MAX_BUCKETS + 4, "at refusal {i}: {} buckets", c.open());
    }
    let closed = c.close(None);
    assert!(written <= MAX_BUCKETS + 4, "{written} written at once");
    assert!(closed.len() <= MAX_BUCKETS + 4, "{} records at the end", closed.len());
    let total: u64 = written as u64 + closed.iter().map(|r| r.coalesced.as_ref().unwrap().count).sum::<u64>();
    assert_eq!(total, 200_000, "every refusal is accounted for");
}
