//! Each signal on its own: when it opens, what its alert says, when it
//! resolves.

use super::*;

#[test]
fn spike_opens_at_the_threshold_once_repeats_then_resolves() {
    let mut f = Fixture::new();
    for i in 0..4 {
        f.report(i as f64, 3, "uid 1001 (pid 7)");
        assert!(only(&f.eval(i as f64), Signal::Spike).is_empty(), "below the threshold");
    }
    f.report(4.0, 3, "uid 1001 (pid 7)");
    let out = f.eval(4.0);
    let spike = only(&out, Signal::Spike);
    assert_eq!(spike.len(), 1);
    let a = spike[0];
    assert_eq!(a.status, AlertStatus::Firing);
    assert_eq!(a.severity, Severity::Critical);
    assert_eq!(a.version, Some(3));
    assert_eq!(a.environment.as_deref(), Some("prod"));
    assert_eq!(a.service, "billing-worker");
    assert_eq!(a.dedup_key, "keyward/host1/prod/billing/spike");
    assert!(a.summary.contains("5 auth failures"), "{}", a.summary);
    assert!(a.error.contains("HTTP 401 ×5"), "{}", a.error);

    // More reports while open: no new notification.
    f.report(5.0, 3, "uid 1001 (pid 7)");
    assert!(only(&f.eval(5.0), Signal::Spike).is_empty());
    // Still active an hour later (reports keep coming): one repeat.
    for i in 0..5 {
        f.report(3600.0 + i as f64, 3, "uid 1001 (pid 7)");
    }
    let out = f.eval(3605.0);
    let rep = only(&out, Signal::Spike);
    assert_eq!(rep.len(), 1);
    assert_eq!(rep[0].status, AlertStatus::Repeat);
    assert_eq!(rep[0].repeat, 1);
    assert_eq!(rep[0].dedup_key, a.dedup_key);
    assert_eq!(rep[0].opened_at, a.opened_at);

    // Reports stop: the window empties at 3664, then a whole window of
    // calm before it resolves.
    assert!(only(&f.eval(3664.5), Signal::Spike).is_empty());
    let out = f.eval(3664.5 + 60.0);
    let res = only(&out, Signal::Spike);
    assert_eq!(res.len(), 1, "{out:?}");
    assert_eq!(res[0].status, AlertStatus::Resolved);
    assert_eq!(res[0].dedup_key, a.dedup_key);
    assert!(f.d.open_alerts().is_empty());
}

#[test]
fn reports_older_than_the_window_do_not_count_toward_a_spike() {
    let mut f = Fixture::new();
    for i in 0..4 {
        f.report(i as f64 * 20.0, 3, "c");
    }
    // 0, 20, 40, 60: at 60 the first is a whole window old.
    assert!(only(&f.eval(60.0), Signal::Spike).is_empty());
}

#[test]
fn stale_version_names_the_caller_and_the_version() {
    let mut f = Fixture::new();
    f.report(1.0, 1, "uid 1002 (pid 99, /usr/bin/old-worker)");
    let out = f.eval(1.0);
    let stale = only(&out, Signal::StaleVersion);
    assert_eq!(stale.len(), 1);
    let a = stale[0];
    assert_eq!(a.severity, Severity::Warning);
    assert_eq!(a.version, Some(1));
    assert!(
        a.summary.contains("uid 1002 (pid 99, /usr/bin/old-worker)"),
        "{}",
        a.summary
    );
    assert!(a.summary.contains("still uses v1"), "{}", a.summary);
    assert_eq!(a.details["callers"], "uid 1002 (pid 99, /usr/bin/old-worker)");
    assert_eq!(a.details["versions"], "v1");
    // An unknown version is also a client out of step.
    f.report(2.0, 42, "uid 1003 (pid 5)");
    f.eval(2.0);
    // Clears a window after the last stale report, resolves a window later.
    assert!(f.eval(61.9).is_empty());
    let out = f.eval(122.5);
    assert_eq!(only(&out, Signal::StaleVersion)[0].status, AlertStatus::Resolved);
}

#[test]
fn failures_on_primary_and_fallback_in_one_window_are_an_outage() {
    let mut f = Fixture::new();
    f.report(1.0, 3, "a");
    assert!(only(&f.eval(1.0), Signal::FallbackFailing).is_empty());
    f.report(30.0, 2, "a");
    let out = f.eval(30.0);
    let both = only(&out, Signal::FallbackFailing);
    assert_eq!(both.len(), 1);
    assert_eq!(both[0].severity, Severity::Critical);
    assert!(both[0].summary.contains("both keys are refused"), "{}", both[0].summary);

    // Primary and fallback failures more than a window apart: no alert.
    let mut f = Fixture::new();
    f.report(1.0, 3, "a");
    f.eval(1.0);
    f.report(70.0, 2, "a");
    assert!(only(&f.eval(70.0), Signal::FallbackFailing).is_empty());
}

#[test]
fn rising_rate_needs_growing_whole_windows_and_the_minimum() {
    let mut f = Fixture::new();
    f.s.spike_threshold = 1_000_000;
    // Windows are counted from the detectors' anchor (t = 0): start at one.
    let w0 = 60.0;
    let burst = |f: &mut Fixture, win: f64, n: usize, v: u64| {
        for i in 0..n {
            f.report(w0 + win * 60.0 + i as f64 * 0.01, v, "c");
        }
    };
    burst(&mut f, 0.0, 4, 3);
    burst(&mut f, 1.0, 8, 3);
    burst(&mut f, 2.0, 12, 3);
    // During window 2 only windows -1(0), 0(4), 1(8) are whole: rising but
    // the last (8) is under rising_min 10.
    assert!(only(&f.eval(w0 + 150.0), Signal::RisingRate).is_empty());
    // In window 3: 4, 8, 12, rising, 12 >= 10.
    let out = f.eval(w0 + 185.0);
    let r = only(&out, Signal::RisingRate);
    assert_eq!(r.len(), 1, "{out:?}");
    assert_eq!(r[0].details["counts_per_window"], "4, 8, 12");

    // Flat counts are not rising.
    let mut g = Fixture::new();
    g.s.spike_threshold = 1_000_000;
    burst(&mut g, 0.0, 12, 3);
    burst(&mut g, 1.0, 12, 3);
    burst(&mut g, 2.0, 12, 3);
    assert!(only(&g.eval(w0 + 185.0), Signal::RisingRate).is_empty());

    // The rate stops rising: the alert resolves.
    let out = f.eval(w0 + 245.0 + 61.0);
    assert_eq!(only(&out, Signal::RisingRate)[0].status, AlertStatus::Resolved);
}

#[test]
fn expiry_warns_within_the_lead_and_is_critical_once_passed() {
    let mut f = Fixture::new();
    f.state.primary.expires_at = Some(at(10.0 * 86400.0));
    assert!(f.eval(0.0).is_empty(), "10 days out, lead 7 days");
    let out = f.eval(4.0 * 86400.0);
    let e = only(&out, Signal::ExpiryAhead);
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].severity, Severity::Warning);
    assert!(e[0].summary.contains("expires in 6d"), "{}", e[0].summary);
    assert_eq!(e[0].details["expires_at"], "2027-01-25T08:00:00Z");
    // Past expiry, the repeat is critical.
    let out = f.eval(11.0 * 86400.0);
    let e = only(&out, Signal::ExpiryAhead);
    assert_eq!(e[0].status, AlertStatus::Repeat);
    assert_eq!(e[0].severity, Severity::Critical);
    assert!(e[0].summary.contains("expired"), "{}", e[0].summary);
    // Rotated to a key without expiry: resolves a window later.
    f.state.primary.expires_at = None;
    assert!(f.eval(11.0 * 86400.0 + 1.0).is_empty());
    let out = f.eval(11.0 * 86400.0 + 62.0);
    assert_eq!(only(&out, Signal::ExpiryAhead)[0].status, AlertStatus::Resolved);
}

#[test]
fn max_age_policy_overdue() {
    let mut f = Fixture::new();
    f.s.max_age = Some(Duration::from_secs(90 * 86400));
    assert!(f.eval(89.0 * 86400.0).is_empty());
    let out = f.eval(91.0 * 86400.0);
    let m = only(&out, Signal::MaxAgeOverdue);
    assert_eq!(m.len(), 1);
    assert!(
        m[0].summary
            .contains("served for 91d, longer than the rotation policy's max_age of 90d"),
        "{}",
        m[0].summary
    );
    // Age counts from promotion.
    f.state.primary.promoted_at = Some(at(91.0 * 86400.0));
    f.eval(91.0 * 86400.0 + 1.0);
    let out = f.eval(91.0 * 86400.0 + 62.0);
    assert_eq!(only(&out, Signal::MaxAgeOverdue)[0].status, AlertStatus::Resolved);
}

#[test]
fn agent_health_opens_on_a_failure_and_resolves_a_window_after_the_last() {
    let mut d = detectors("h");
    let w = Duration::from_secs(60);
    d.health(
        Subject::Agent("audit"),
        now(0.0),
        Severity::Critical,
        "audit write failed: disk full".to_owned(),
    );
    let out = d.evaluate(now(0.0), [], true, HOUR, w);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].signal, Signal::AgentHealth);
    assert_eq!(out[0].key, None);
    assert_eq!(out[0].environment, None);
    assert_eq!(out[0].dedup_key, "keyward/h/agent/audit/agent_health");
    assert!(out[0].error.contains("disk full"));
    d.health(
        Subject::Agent("audit"),
        now(30.0),
        Severity::Critical,
        "again".to_owned(),
    );
    assert!(d.evaluate(now(80.0), [], true, HOUR, w).is_empty());
    let out = d.evaluate(now(90.0), [], true, HOUR, w);
    assert_eq!(out[0].status, AlertStatus::Resolved);
}

#[test]
fn a_cleared_agent_health_failure_resolves_at_the_next_evaluation() {
    let mut d = detectors("h");
    let w = Duration::from_secs(60);
    let disk = Subject::Agent("audit_disk");
    d.health(disk.clone(), now(0.0), Severity::Warning, "low".to_owned());
    d.health(
        Subject::Agent("audit"),
        now(0.0),
        Severity::Critical,
        "failed".to_owned(),
    );
    assert_eq!(d.evaluate(now(0.0), [], true, HOUR, w).len(), 2);
    d.clear_health(&disk);
    let out = d.evaluate(now(1.0), [], true, HOUR, w);
    assert_eq!(out.len(), 1, "only the cleared one resolves: {out:#?}");
    assert_eq!(out[0].status, AlertStatus::Resolved);
    assert_eq!(out[0].dedup_key, "keyward/h/agent/audit_disk/agent_health");
}

#[test]
fn a_key_that_expires_while_warned_is_sent_again_at_once_as_critical() {
    let mut f = Fixture::new();
    f.state.primary.expires_at = Some(at(600.0));
    let out = f.eval(0.0);
    assert_eq!(only(&out, Signal::ExpiryAhead)[0].severity, Severity::Warning);
    assert!(f.eval(300.0).is_empty(), "nothing new before it expires");
    // Ten minutes later, well within the hour's repeat interval.
    let out = f.eval(601.0);
    let e = only(&out, Signal::ExpiryAhead);
    assert_eq!(e.len(), 1);
    assert_eq!((e[0].status, e[0].severity), (AlertStatus::Repeat, Severity::Critical));
    assert!(f.eval(602.0).is_empty(), "and only once");
}

/// A rotation job's conditions (`no_evidence`, `rotation_failed`) open
/// when set, repeat only at the interval or on a new severity, and resolve
/// at the first evaluation after they are cleared, or with their key.
#[test]
fn conditions_open_when_set_and_resolve_when_cleared() {
    let mut d = detectors("h");
    let s = state();
    let w = Duration::from_secs(60);
    let subject = Subject::Key(s.key.clone());
    let mut details = std::collections::BTreeMap::new();
    details.insert("unreported".to_owned(), "uid 1001 (keyward run)".to_owned());
    d.set_condition(
        subject.clone(),
        Signal::NoEvidence,
        Severity::Warning,
        "no evidence that v3 works".to_owned(),
        details,
    );
    assert!(d.has_condition(
        &subject,
        Signal::NoEvidence,
        Severity::Warning,
        "no evidence that v3 works"
    ));
    let out = d.evaluate_conditions(now(0.0), &s.key, HOUR);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].signal, Signal::NoEvidence);
    assert_eq!(out[0].key.as_ref(), Some(&s.key));
    assert_eq!(out[0].details["unreported"], "uid 1001 (keyward run)");
    // Still set: nothing new within the repeat interval.
    assert!(d.evaluate(now(10.0), [(&s, settings())], true, HOUR, w).is_empty());
    d.clear_condition(&subject, Signal::NoEvidence);
    let out = d.evaluate(now(20.0), [(&s, settings())], true, HOUR, w);
    assert_eq!(only(&out, Signal::NoEvidence)[0].status, AlertStatus::Resolved);
    // A key that is gone resolves its condition's alert.
    d.set_condition(
        subject.clone(),
        Signal::RotationFailed,
        Severity::Warning,
        "the schedule rotation failed".to_owned(),
        Default::default(),
    );
    assert_eq!(d.evaluate_conditions(now(30.0), &s.key, HOUR).len(), 1);
    let out = d.evaluate(now(40.0), [], true, HOUR, w);
    assert_eq!(only(&out, Signal::RotationFailed)[0].status, AlertStatus::Resolved);
}
