//! A reader cannot decide a rotation alone.
//!
//! Three uids may read prod/billing-api: 2041 (the service that uses it),
//! 2042 (another reader, the attacker) and 2043 (a reader whose grant says
//! `report = false`). Auth-failure reports count only for versions their
//! sender was served, only from callers allowed to report, and close the
//! retire gate (or make `keyward rotate` roll back) only when the quorum of
//! distinct reporters sent them.

use std::path::PathBuf;

use crate::common::system::*;
use crate::common::*;

const SERVICE: Uid = Uid::member(2041);
const READER: Uid = Uid::member(2042);
const MUTE: Uid = Uid::member(2043);
const KEY: &str = "prod/billing-api";

struct Readers {
    agent: TestAgent,
    cli: PathBuf,
    _shared: SharedDir,
}

impl Readers {
    /// The three readers' grants, and `rotation` for prod/* (e.g. grace).
    fn start(rotation: &str) -> Readers {
        let shared = SharedDir::new();
        let cli = shared.cli();
        let agent = TestAgent::start_system_shared(
            "",
            &format!(
                "[[grant]]\nuids = [{}, {}]\nkeys = [\"{KEY}\"]\n\
                 [[grant]]\nuids = [{}]\nreport = false\nkeys = [\"{KEY}\"]\n\
                 [[key]]\nkeys = [\"prod/*\"]\n{rotation}\n",
                SERVICE.uid, READER.uid, MUTE.uid
            ),
        );
        agent.put(KEY, "sk_live_reports_v1");
        Readers {
            agent,
            cli,
            _shared: shared,
        }
    }

    fn fetch(&self, who: Uid) {
        let out = self.agent.cli_as(who, &self.cli, &["get", KEY]);
        assert!(out.status.success(), "uid {}: {}", who.uid, text(&out.stderr));
    }

    fn report(&self, who: Uid, version: u64) -> Result<String, String> {
        let v = version.to_string();
        let args = ["report", KEY, "--version", &v, "--status", "401", "--service", "test"];
        got(&self.agent.cli_as(who, &self.cli, &args))
    }

    fn report_use(&self, who: Uid, version: u64) -> Result<String, String> {
        let v = version.to_string();
        let args = ["report", KEY, "--version", &v, "--service", "test", "--used"];
        got(&self.agent.cli_as(who, &self.cli, &args))
    }

    /// Stages a new key and promotes it (v2 primary, v1 fallback).
    fn rotate_to_v2(&self) {
        let out = self.agent.cli(&["stage", KEY], Some(b"sk_live_reports_v2"));
        assert!(out.status.success(), "{}", text(&out.stderr));
        let out = self.agent.cli(&["promote", KEY], None);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }

    fn retire(&self) -> std::process::Output {
        self.agent.cli(&["retire", KEY], None)
    }
}

/// A report about a version the reporter was never served (it never
/// fetched, or the version is made up) is refused and audited; nothing
/// reaches the gate or the detectors.
#[test]
fn a_report_on_a_version_never_served_is_refused_and_audited() {
    if !is_root() {
        return skip("runs clients as other uids");
    }
    let r = Readers::start("grace = \"0s\"");
    let msg = r.report(READER, 1).unwrap_err();
    assert!(
        msg.contains("FailedPrecondition") && msg.contains("was never served version 1 of prod/billing-api"),
        "{msg}"
    );
    r.fetch(READER);
    let msg = r.report(READER, 999).unwrap_err();
    assert!(msg.contains("never served version 999"), "{msg}");
    // Served: accepted.
    r.report(READER, 1).unwrap();
    // The first refusal is written at once; the second, alike, is counted
    // for the end of the audit's window.
    let refused = r.agent.audit_records("auth_failure", "not_served");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["caller"]["uid"], READER.uid);
    assert_eq!(r.agent.audit_records("auth_failure", "reported").len(), 1);
    let status = r.agent.cli(&["rotation-status", KEY], None);
    assert!(
        text(&status.stdout).contains("auth failures since promotion: 1 on the primary from uid 2042"),
        "{}",
        text(&status.stdout)
    );
}

/// Two readers were served the new key; one of them alone reports failures
/// against it: the retire gate stays open and `keyward rotate` completes
/// instead of rolling back. Both reporting close the gate, and the refusal
/// names them.
#[test]
fn one_reader_cannot_hold_a_rotation_alone() {
    if !is_root() {
        return skip("runs clients as other uids");
    }
    let r = Readers::start("grace = \"0s\"\nfailure_threshold = 3");
    r.rotate_to_v2();
    r.fetch(SERVICE);
    r.fetch(READER);
    for _ in 0..3 {
        r.report(READER, 2).unwrap();
    }
    // The service says the new key works: the evidence retire needs.
    r.report_use(SERVICE, 2).unwrap();
    let status = text(&r.agent.cli(&["rotation-status", KEY], None).stdout);
    assert!(status.contains("retire: allowed"), "{status}");
    assert!(
        status.contains("from uid 2042 (1 of the 2 distinct reporter(s)"),
        "{status}"
    );
    // `keyward rotate` from PROMOTED: no rollback on one reader's word.
    let out = r.agent.cli(&["rotate", KEY], None);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        text(&out.stdout).contains("ok: v2 is the primary"),
        "{}",
        text(&out.stdout)
    );

    // The next rotation: both readers report; the gate closes.
    let out = r.agent.cli(&["stage", KEY], Some(b"sk_live_reports_v3"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(r.agent.cli(&["promote", KEY], None).status.success());
    r.fetch(SERVICE);
    r.fetch(READER);
    r.report(READER, 3).unwrap();
    r.report(SERVICE, 3).unwrap();
    let out = r.retire();
    assert!(!out.status.success());
    let msg = text(&out.stderr);
    assert!(
        msg.contains("by 2 distinct reporter(s) (quorum 2): uid 2042, uid 2041"),
        "{msg}"
    );
}

/// A key with one consumer: its report alone holds the rotation (the quorum
/// is capped by the reporters that were served the new key).
#[test]
fn the_only_consumer_still_holds_a_rotation() {
    if !is_root() {
        return skip("runs clients as other uids");
    }
    let r = Readers::start("grace = \"0s\"");
    r.rotate_to_v2();
    r.fetch(SERVICE);
    r.report(SERVICE, 2).unwrap();
    let msg = text(&r.retire().stderr);
    assert!(msg.contains("by 1 distinct reporter(s) (quorum 1): uid 2041"), "{msg}");
}

/// `report = false`: the reader reads but may not report, and its reads do
/// not raise the quorum, so the service alone still holds the rotation.
#[test]
fn a_grant_can_withhold_the_right_to_report() {
    if !is_root() {
        return skip("runs clients as other uids");
    }
    let r = Readers::start("grace = \"0s\"");
    r.rotate_to_v2();
    r.fetch(MUTE);
    r.fetch(SERVICE);
    let msg = r.report(MUTE, 2).unwrap_err();
    assert!(
        msg.contains("PermissionDenied") && msg.contains("may read prod/billing-api but not report"),
        "{msg}"
    );
    assert_eq!(r.agent.audit_records("auth_failure", "denied").len(), 1);
    r.report(SERVICE, 2).unwrap();
    let msg = text(&r.retire().stderr);
    assert!(msg.contains("(quorum 1): uid 2041"), "{msg}");
}

/// Reported use is what lets a rotation retire the old key, so a reader
/// must not be able to claim it for a key it was never given: a use report
/// on a version its uid was never served is refused and audited, one from
/// a reader whose grant withholds reporting is denied, and one from a uid
/// the policy does not let read the key is denied; none of them opens the
/// retire gate. The service that was served the key and uses it, does.
#[test]
fn use_reports_count_only_from_callers_served_the_key() {
    if !is_root() {
        return skip("runs clients as other uids");
    }
    const STRANGER: Uid = Uid::member(2049);
    let r = Readers::start("grace = \"0s\"");
    // The reader fetched v1 only; the new key is never fetched by it.
    r.fetch(READER);
    r.fetch(MUTE);
    r.rotate_to_v2();
    r.fetch(MUTE);
    let msg = r.report_use(READER, 2).unwrap_err();
    assert!(msg.contains("was never served version 2 of prod/billing-api"), "{msg}");
    let msg = r.report_use(MUTE, 2).unwrap_err();
    assert!(msg.contains("PermissionDenied") && msg.contains("not report"), "{msg}");
    let msg = r.report_use(STRANGER, 2).unwrap_err();
    assert!(msg.contains("PermissionDenied"), "{msg}");
    assert_eq!(r.agent.audit_records("key_use", "not_served").len(), 1);
    assert!(!r.agent.audit_records("key_use", "denied").is_empty());
    assert!(r.agent.audit_records("key_use", "reported").is_empty());
    // None of that is evidence.
    let msg = text(&r.retire().stderr);
    assert!(msg.contains("nothing shows that the new primary v2 works"), "{msg}");
    // The service, served v2, reports using it: retire goes through.
    r.fetch(SERVICE);
    r.report_use(SERVICE, 2).unwrap();
    let out = r.retire();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let used = r.agent.audit_records("key_use", "reported");
    assert_eq!(used.len(), 1);
    assert_eq!(used[0]["caller"]["uid"], SERVICE.uid);
}
