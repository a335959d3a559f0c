//! Auth-failure reports from clients (`ReportAuthFailure`): checked against
//! the policy and what the reporter was served, classified against the
//! key's state, audited and counted.
//!
//! The counts feed the retire gate and `keyward rotate`'s automatic
//! rollback: failures reported against the current primary since its
//! promotion, by at least the quorum of distinct reporters, keep the old
//! key from being retired. Every accepted report also feeds the alert
//! detectors ([`super::alerting`]).
//!
//! Invariants (what a reader can influence):
//! - Reports are limited per caller uid (`[alerts] report_rate`,
//!   `report_burst`) before anything else, so that a client stuck in a
//!   retry loop can flood neither the audit log nor the detectors; refused
//!   ones are counted.
//! - Only a caller whose grant lets it report (`report`, on by default) and
//!   read the key may report on it.
//! - A report is about a version the reporting uid was served by this
//!   agent ([`ServedLog`]); any other version (made up, or never fetched) is
//!   refused and audited. So reports cannot grow the agent's memory either:
//!   they name versions that exist.
//! - The gate counts distinct [`Reporter`]s: a uid, told apart by the unit
//!   or the granted program it was verified to be, which no user can mint at
//!   will. `[rotation] report_quorum` of them are needed, capped by how many
//!   reporters were served the new primary ([`ServedLog::quorum`]), so the
//!   only consumer of a key still holds its rotation on its own.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use super::caller::Caller;
use super::error::ApiError;
use super::{Agent, Right};
use crate::alerts::detect::Report;
use crate::audit::{AuditEvent, VersionRecord};
use crate::audit::{Event, Outcome};
use crate::keyset::KeySetState;
use crate::proto;
use crate::secret::KeyRef;

/// How many report times are kept per (key, version): enough for the gate,
/// bounded so that a flood cannot grow memory.
const KEPT_PER_VERSION: usize = 4096;

/// Longest `service` or `detail` text kept from a report.
const MAX_TEXT: usize = 256;

pub use crate::alerts::detect::Classification;

/// Who reported a failure, as the retire gate tells reporters apart: the
/// uid, and the unit or granted program its process was verified to be
/// (see `crate::server::identity`), which a user cannot make up at will.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reporter {
    /// The caller's uid.
    pub uid: u32,
    /// Its systemd unit, as verified.
    pub unit: Option<String>,
    /// The configured executable its image was verified to be.
    pub program: Option<String>,
}

impl fmt::Display for Reporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "uid {}", self.uid)?;
        match (&self.unit, &self.program) {
            (Some(u), Some(p)) => write!(f, " ({u}, {p})"),
            (Some(x), None) | (None, Some(x)) => write!(f, " ({x})"),
            (None, None) => Ok(()),
        }
    }
}

/// Failures reported against one version since some time, and by whom.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Evidence {
    /// How many reports.
    pub failures: u64,
    /// The distinct reporters, in the order they first reported.
    pub reporters: Vec<Reporter>,
}

impl Evidence {
    /// "uid 1001 (billing.service), uid 1002", or "nobody".
    pub fn names(&self) -> String {
        if self.reporters.is_empty() {
            return "nobody".to_owned();
        }
        self.reporters
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// When each report against one version came, and from whom, oldest first.
type Reports = VecDeque<(Instant, Arc<Reporter>)>;

/// Report times (and reporters) per (key, version), and when this process
/// promoted each version.
///
/// The times are monotonic (`Instant`), never the wall clock: "reported
/// since the promotion" must not depend on a clock that can jump. After a
/// jump back (NTP, a resumed VM) a failure reported after the promotion
/// would carry an earlier wall time than the promotion's and be missed, and
/// the retire gate would open on a new key that is being refused.
pub struct FailureLog {
    times: Mutex<HashMap<(KeyRef, u64), Reports>>,
    promotions: Mutex<HashMap<(KeyRef, u64), Instant>>,
    /// When this log (this process) began counting.
    created: Instant,
}

impl Default for FailureLog {
    fn default() -> FailureLog {
        FailureLog {
            times: Mutex::default(),
            promotions: Mutex::default(),
            created: Instant::now(),
        }
    }
}

impl FailureLog {
    /// Records one report.
    pub fn record(&self, key: &KeyRef, version: u64, at: Instant, by: Arc<Reporter>) {
        let mut map = self.times.lock().unwrap_or_else(PoisonError::into_inner);
        let times = map.entry((key.clone(), version)).or_default();
        if times.len() == KEPT_PER_VERSION {
            times.pop_front();
        }
        times.push_back((at, by));
    }

    /// Notes that this process promoted `version` of `key` at `at`.
    pub fn promoted(&self, key: &KeyRef, version: u64, at: Instant) {
        self.promotions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((key.clone(), version), at);
    }

    /// How long ago this process promoted the current primary of `state`
    /// (`None` if it did not: promoted before the process started).
    pub fn promoted_ago(&self, state: &KeySetState) -> Option<std::time::Duration> {
        state.primary.promoted_at?;
        self.promotions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(state.key.clone(), state.primary.number))
            .map(Instant::elapsed)
    }

    /// How long this log has counted the reports against the current
    /// primary of `state`: since this process saw its promotion, or since
    /// the process started when that was later (the reports made to an
    /// earlier process are gone).
    pub fn counting_for(&self, state: &KeySetState) -> std::time::Duration {
        self.promoted_ago(state).unwrap_or_else(|| self.created.elapsed())
    }

    /// Reports against `version` of `key` at or after `since` (all of them
    /// without `since`), and who sent them.
    pub fn evidence_since(&self, key: &KeyRef, version: u64, since: Option<Instant>) -> Evidence {
        let map = self.times.lock().unwrap_or_else(PoisonError::into_inner);
        let mut evidence = Evidence::default();
        for (_, by) in map
            .get(&(key.clone(), version))
            .into_iter()
            .flatten()
            .filter(|(at, _)| since.is_none_or(|s| *at >= s))
        {
            evidence.failures += 1;
            if !evidence.reporters.contains(by) {
                evidence.reporters.push((**by).clone());
            }
        }
        evidence
    }

    /// Reports against the current primary, and how many against the
    /// fallback, since the primary was promoted (or created, for a key never
    /// rotated). The log only holds this process's reports: if the promotion
    /// happened before it started, every one of them came after.
    pub fn since_promotion(&self, state: &KeySetState) -> (Evidence, u64) {
        let since = state.primary.promoted_at.and_then(|_| {
            self.promotions
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&(state.key.clone(), state.primary.number))
                .copied()
        });
        let primary = self.evidence_since(&state.key, state.primary.number, since);
        let fallback = state
            .fallback
            .as_ref()
            .map_or(0, |f| self.evidence_since(&state.key, f.number, since).failures);
        (primary, fallback)
    }
}

/// Most distinct users remembered per (key, version): the evidence needs
/// a handful; the bound keeps a flood from growing memory.
const USERS_KEPT_PER_VERSION: usize = 256;

/// Successful use reported per (key, version) (`ReportKeyUse`): who
/// reported it and how many calls, the evidence a rotation's retire needs.
/// Version numbers are never reused, so a use of a version is evidence for
/// that key whenever it was reported.
#[derive(Default)]
pub struct UseLog {
    users: Mutex<HashMap<(KeyRef, u64), Users>>,
}

/// Who reported using one version, and how many calls each.
type Users = Vec<(Reporter, u64)>;

impl UseLog {
    /// Records `successes` calls by `by`; true when `by` is new for this
    /// version (the report to audit).
    pub fn record(&self, key: &KeyRef, version: u64, by: &Reporter, successes: u64) -> bool {
        let mut map = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        let users = map.entry((key.clone(), version)).or_default();
        if let Some((_, n)) = users.iter_mut().find(|(r, _)| r == by) {
            *n = n.saturating_add(successes);
            return false;
        }
        if users.len() < USERS_KEPT_PER_VERSION {
            users.push((by.clone(), successes));
        }
        true
    }

    /// Who reported use of `version` of `key`, in the order they first did.
    pub fn users(&self, key: &KeyRef, version: u64) -> Vec<Reporter> {
        let map = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(&(key.clone(), version))
            .map(|u| u.iter().map(|(r, _)| r.clone()).collect())
            .unwrap_or_default()
    }

    /// Forgets `key` (deleted).
    pub fn forget(&self, key: &KeyRef) {
        self.users
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(k, _), _| k != key);
    }

    /// Forgets the versions of `key` it no longer serves (`live`): years of
    /// scheduled rotations must not pile up.
    pub fn keep_only(&self, key: &KeyRef, live: &[u64]) {
        self.users
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(k, v), _| k != key || live.contains(v));
    }
}

/// Most versions of one key remembered as served to one uid: a rotation
/// has two live versions; a few more cover reports that arrive late.
const SERVED_VERSIONS_KEPT: usize = 8;

/// The versions of each key this agent served to each uid, and whether that
/// uid may report on the key: what reports are checked against, and what
/// caps the quorum. Only uids that the policy lets read a key are ever
/// served it, so the map is bounded by the policy, not by callers.
#[derive(Default)]
pub struct ServedLog {
    served: Mutex<HashMap<KeyRef, HashMap<u32, Served>>>,
}

#[derive(Default)]
struct Served {
    versions: VecDeque<u64>,
    may_report: bool,
}

impl ServedLog {
    /// Whether `version` of `key` was noted as served to `uid`.
    pub fn contains(&self, key: &KeyRef, uid: u32, version: u64) -> bool {
        let map = self.served.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(key)
            .and_then(|uids| uids.get(&uid))
            .is_some_and(|s| s.versions.contains(&version))
    }

    /// Whether `primary` and `fallback` of `key` were both already noted as
    /// served to `uid` (the fetch path's check: one lock, no allocation).
    pub fn contains_all(&self, key: &KeyRef, uid: u32, primary: u64, fallback: Option<u64>) -> bool {
        let map = self.served.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(key)
            .and_then(|uids| uids.get(&uid))
            .is_some_and(|s| s.versions.contains(&primary) && fallback.is_none_or(|f| s.versions.contains(&f)))
    }

    /// Notes that `versions` of `key` were served to `uid`.
    pub fn note(&self, key: &KeyRef, uid: u32, versions: &[u64], may_report: bool) {
        let mut map = self.served.lock().unwrap_or_else(PoisonError::into_inner);
        let served = map.entry(key.clone()).or_default().entry(uid).or_default();
        served.may_report = may_report;
        for v in versions {
            if !served.versions.contains(v) {
                if served.versions.len() == SERVED_VERSIONS_KEPT {
                    served.versions.pop_front();
                }
                served.versions.push_back(*v);
            }
        }
    }

    /// Forgets `key` (it was deleted): a key created again starts over.
    pub fn forget(&self, key: &KeyRef) {
        self.served.lock().unwrap_or_else(PoisonError::into_inner).remove(key);
    }

    /// The uids that may report and were served `version` of `key`.
    pub fn reporting_uids(&self, key: &KeyRef, version: u64) -> Vec<u32> {
        let map = self.served.lock().unwrap_or_else(PoisonError::into_inner);
        let mut uids: Vec<u32> = map
            .get(key)
            .map(|uids| {
                uids.iter()
                    .filter(|(_, s)| s.may_report && s.versions.contains(&version))
                    .map(|(uid, _)| *uid)
                    .collect()
            })
            .unwrap_or_default();
        uids.sort_unstable();
        uids
    }

    /// The quorum of distinct reporters that holds a rotation of `state`:
    /// `configured`, but no more than the uids that may report and were
    /// served the current primary (and at least 1), so that the only
    /// consumer of a key still counts alone.
    pub fn quorum(&self, state: &KeySetState, configured: u64) -> u64 {
        configured.min(self.served_reporters(state)).max(1)
    }

    /// How many uids that may report were served the current primary of
    /// `state`.
    pub fn served_reporters(&self, state: &KeySetState) -> u64 {
        let map = self.served.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(&state.key).map_or(0, |uids| {
            uids.values()
                .filter(|s| s.may_report && s.versions.contains(&state.primary.number))
                .count() as u64
        })
    }
}

fn bounded(s: &str) -> String {
    let mut end = s.len().min(MAX_TEXT);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].chars().filter(|c| !c.is_control()).collect()
}

/// Notes, after `caller` was served `state`, the versions it got: reports
/// are checked against them. Costs one uncontended lock when the connection
/// was last served this very state, one lookup unless the versions are new
/// to this uid, which happens once per version (whether the uid may report
/// is looked up then).
pub async fn note_served(agent: &Agent, caller: &Caller, state: &Arc<KeySetState>) {
    if !caller.first_served(state) {
        return;
    }
    let primary = state.primary.number;
    let fallback = state.fallback.as_ref().map(|f| f.number);
    if agent.served.contains_all(&state.key, caller.uid, primary, fallback) {
        return;
    }
    let may_report = agent.allows(caller, &state.key, Right::Report).await.is_ok();
    let versions: Vec<u64> = std::iter::once(primary).chain(fallback).collect();
    agent.served.note(&state.key, caller.uid, &versions, may_report);
}

/// The reporter the gate counts `caller` as: its uid, with the unit and the
/// granted program its process is verified to be (none, when it cannot be
/// verified, e.g. without CAP_SYS_PTRACE).
async fn reporter_of(agent: &Agent, caller: &Caller) -> Reporter {
    let identity = caller.process_identity().await;
    let program = identity
        .executables(&agent.config().policy)
        .first()
        .map(|p| p.display().to_string());
    Reporter {
        uid: caller.uid,
        unit: identity.unit().map(|u| u.name.to_owned()),
        program,
    }
}

/// Handles one report.
pub async fn report(agent: &Arc<Agent>, caller: &Caller, r: &proto::AuthFailureReport) -> Result<(), ApiError> {
    if !r.misdirected_to.is_empty() {
        return report_misdirected(agent, caller, r).await;
    }
    const EVENT: Event = Event::AuthFailure;
    let (key, state) = check_report(agent, caller, EVENT, r.key.as_ref(), r.version).await?;
    let reporter = Arc::new(reporter_of(agent, caller).await);
    let class = Classification::of(&state, r.version);
    let now = Instant::now();
    agent.failures.record(&key, r.version, now, reporter.clone());
    agent.metrics().report(key.env(), key.name(), class.as_str());
    agent.jobs.wake(&key);
    if let Some(fleet) = agent.fleet() {
        fleet.evidence_changed(&state);
    }
    agent.alerting.on_report(
        &agent.config(),
        &state,
        Report {
            at: now,
            class,
            version: r.version,
            status_code: r.status_code,
            caller: caller.describe(),
            service: bounded(&r.service),
        },
    );
    let detail = format!(
        "status {} on {} version {} from service {:?}, reporter {reporter}: {}",
        r.status_code,
        class.as_str(),
        r.version,
        bounded(&r.service),
        bounded(&r.detail)
    );
    tracing::debug!(key = %key, version = r.version, class = class.as_str(), status = r.status_code,
        caller = %caller.describe(), "auth failure reported");
    audit_report(agent, caller, EVENT, &state, class.as_str(), r.version, detail).await
}

/// Handles a proxy's report that a request carried the placeholder of a
/// key to a host the key is not bound to (and was refused there): checked
/// as failure reports are, audited and logged as a warning. It feeds
/// neither the detectors nor the retire gate: no provider refused the key.
async fn report_misdirected(agent: &Arc<Agent>, caller: &Caller, r: &proto::AuthFailureReport) -> Result<(), ApiError> {
    const EVENT: Event = Event::KeyMisdirected;
    let (key, state) = check_report(agent, caller, EVENT, r.key.as_ref(), r.version).await?;
    let role = Classification::of(&state, r.version).as_str();
    let to = bounded(&r.misdirected_to);
    tracing::warn!(key = %key, version = r.version, to = %to, caller = %caller.describe(),
        "a placeholder of the key was sent to a host it is not bound to; the proxy refused the request");
    let detail = format!(
        "the placeholder of {role} version {} was sent to {to:?}, where the key is not bound; the proxy answered {} and sent nothing; service {:?}: {}",
        r.version,
        r.status_code,
        bounded(&r.service),
        bounded(&r.detail)
    );
    audit_report(agent, caller, EVENT, &state, role, r.version, detail).await
}

/// The audit record of an accepted report about `version` (`role` to the
/// key) of `state`.
async fn audit_report(
    agent: &Agent,
    caller: &Caller,
    event: Event,
    state: &KeySetState,
    role: &'static str,
    version: u64,
    detail: String,
) -> Result<(), ApiError> {
    agent
        .audit
        .record(AuditEvent {
            caller: Some(caller.record.clone()),
            key: Some(state.key.to_string()),
            versions: vec![VersionRecord {
                role,
                version,
                fingerprint: fingerprint_of(state, version),
            }],
            generation_after: Some(state.generation),
            detail: Some(detail),
            ..AuditEvent::new(event, Outcome::Reported)
        })
        .await?;
    Ok(())
}

/// The fingerprint of `version` of `state`, if it serves it (empty if
/// not: a report on a stale version).
fn fingerprint_of(state: &KeySetState, version: u64) -> String {
    [Some(&state.primary), state.fallback.as_ref()]
        .into_iter()
        .flatten()
        .find(|v| v.number == version)
        .map(|v| v.fingerprint.clone())
        .unwrap_or_default()
}

/// Checks a report (`ReportAuthFailure` or `ReportKeyUse`) from `caller`
/// about `version` of the key `key`: under the uid's report rate, the
/// caller may read and report on the key, and it was served that version.
/// Refusals are counted, and audited as `event`.
async fn check_report(
    agent: &Arc<Agent>,
    caller: &Caller,
    event: Event,
    key: Option<&proto::KeyRef>,
    version: u64,
) -> Result<(KeyRef, Arc<KeySetState>), ApiError> {
    if !agent.alerting.admit_report(caller.uid) {
        let config = agent.config();
        return Err(ApiError::ResourceExhausted(format!(
            "uid {} sent more than {} reports per second (burst {}): this one was counted but not processed; report each failed request once and use at most every few seconds, or raise [alerts] report_rate",
            caller.uid, config.alerts.report_rate, config.alerts.report_burst
        )));
    }
    let key = agent.key_ref(key)?;
    agent.check_read(event, caller, &key).await?;
    if let Err(why_not) = agent.allows(caller, &key, Right::Report).await {
        agent.metrics().denial("service", event.as_str());
        let denied = ApiError::PermissionDenied(format!(
            "{} may read {key} but not report on it: its grant says report = false{}; nothing was recorded",
            caller.describe(),
            super::unverified(why_not.as_deref()),
        ));
        return Err(agent
            .refuse(event, caller, Some(key.to_string()), Outcome::Denied, denied)
            .await);
    }
    let Some(state) = agent.store.get(&key) else {
        return Err(ApiError::NotFound(format!("key {key} does not exist")));
    };
    if !agent.served.contains(&key, caller.uid, version) {
        agent.metrics().denial("service", event.as_str());
        let refused = ApiError::FailedPrecondition(format!(
            "uid {} was never served version {version} of {key} by this agent: report only a version your process fetched (after an agent restart, fetch the key again first); nothing was recorded",
            caller.uid
        ));
        return Err(agent
            .refuse(event, caller, Some(key.to_string()), Outcome::NotServed, refused)
            .await);
    }
    Ok((key, state))
}

/// Handles one `ReportKeyUse`: checked as failure reports are; the first
/// report of each reporter and version is audited, later ones only add to
/// the count. Wakes the key's rotation job, which may be waiting for this.
pub async fn report_use(agent: &Arc<Agent>, caller: &Caller, r: &proto::KeyUseReport) -> Result<(), ApiError> {
    const EVENT: Event = Event::KeyUse;
    let (key, state) = check_report(agent, caller, EVENT, r.key.as_ref(), r.version).await?;
    let reporter = reporter_of(agent, caller).await;
    let first = agent.uses.record(&key, r.version, &reporter, r.successes.max(1));
    let role = Classification::of(&state, r.version).as_str();
    agent.metrics().key_use(key.env(), key.name(), role);
    if !first {
        return Ok(());
    }
    tracing::debug!(key = %key, version = r.version, caller = %caller.describe(), "key use reported");
    agent.jobs.wake(&key);
    if let Some(fleet) = agent.fleet() {
        fleet.evidence_changed(&state);
    }
    let detail = format!(
        "{} successful call(s) with {role} version {} from service {:?}, reporter {reporter}",
        r.successes.max(1),
        r.version,
        bounded(&r.service)
    );
    audit_report(agent, caller, EVENT, &state, role, r.version, detail).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyset::Version;
    use crate::secret::Secret;
    use std::time::{Duration, SystemTime};

    fn state() -> KeySetState {
        let v = |n| Version {
            number: n,
            secret: Secret::copy_from(b"s"),
            fingerprint: String::new(),
            created_at: SystemTime::UNIX_EPOCH,
            expires_at: None,
            promoted_at: None,
        };
        let mut s = KeySetState::create("prod/a".parse().unwrap(), v(3));
        s.primary.promoted_at = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(100));
        s.fallback = Some(v(2));
        s.state = crate::keyset::RotationState::Promoted;
        s.history.push(v(1).meta());
        s
    }

    fn by(uid: u32, unit: Option<&str>) -> Arc<Reporter> {
        Arc::new(Reporter {
            uid,
            unit: unit.map(str::to_owned),
            program: None,
        })
    }

    #[test]
    fn counts_only_reports_since_promotion() {
        let s = state();
        let log = FailureLog::default();
        let t0 = Instant::now();
        log.record(&s.key, 3, t0, by(1, None));
        log.promoted(&s.key, 3, t0 + Duration::from_secs(100));
        log.record(&s.key, 3, t0 + Duration::from_secs(150), by(2, None));
        log.record(&s.key, 2, t0 + Duration::from_secs(160), by(1, None));
        let (primary, fallback) = log.since_promotion(&s);
        assert_eq!((primary.failures, primary.reporters.len(), fallback), (1, 1, 1));
        assert_eq!(primary.names(), "uid 2");
    }

    #[test]
    fn a_promotion_before_this_process_counts_every_report() {
        let s = state();
        let log = FailureLog::default();
        log.record(&s.key, 3, Instant::now(), by(1, None));
        log.record(&s.key, 3, Instant::now(), by(1, None));
        log.record(&s.key, 1, Instant::now(), by(1, None));
        let (primary, fallback) = log.since_promotion(&s);
        assert_eq!((primary.failures, primary.reporters.len(), fallback), (2, 1, 0));
    }

    /// Reporters are told apart by uid, then by verified unit or program;
    /// the same one reporting often is one reporter.
    #[test]
    fn distinct_reporters_are_counted_once_each() {
        let s = state();
        let log = FailureLog::default();
        for reporter in [
            by(1, None),
            by(1, None),
            by(1, Some("a.service")),
            by(2, Some("a.service")),
            by(1, None),
        ] {
            log.record(&s.key, 3, Instant::now(), reporter);
        }
        let (primary, _) = log.since_promotion(&s);
        assert_eq!(primary.failures, 5);
        assert_eq!(primary.names(), "uid 1, uid 1 (a.service), uid 2 (a.service)");
        assert_eq!(Evidence::default().names(), "nobody");
    }

    #[test]
    fn the_quorum_is_capped_by_the_reporters_served_the_primary() {
        let s = state();
        let served = ServedLog::default();
        // Nobody served yet: 1, so the first consumer's report still counts.
        assert_eq!(served.quorum(&s, 2), 1);
        served.note(&s.key, 1, &[3, 2], true);
        assert_eq!(served.quorum(&s, 2), 1);
        // A reader that may not report does not raise the bar.
        served.note(&s.key, 2, &[3], false);
        assert_eq!(served.quorum(&s, 2), 1);
        served.note(&s.key, 3, &[3], true);
        assert_eq!(served.quorum(&s, 2), 2);
        served.note(&s.key, 4, &[3], true);
        assert_eq!(served.quorum(&s, 2), 2, "never above the configured quorum");
        // Served only the old version: not a reporter of the new one.
        served.note(&s.key, 5, &[2], true);
        assert_eq!(served.quorum(&s, 5), 3);
        assert!(served.contains(&s.key, 1, 2) && !served.contains(&s.key, 2, 2));
        served.forget(&s.key);
        assert!(!served.contains(&s.key, 1, 3));
    }

    #[test]
    fn served_versions_are_bounded_per_uid() {
        let s = state();
        let served = ServedLog::default();
        for v in 1..=100 {
            served.note(&s.key, 1, &[v], true);
        }
        assert!(served.contains(&s.key, 1, 100) && !served.contains(&s.key, 1, 92));
    }

    #[test]
    fn use_is_counted_once_per_reporter_and_dropped_versions_are_forgotten() {
        let s = state();
        let log = UseLog::default();
        assert!(log.record(&s.key, 3, &by(1, None), 5));
        assert!(!log.record(&s.key, 3, &by(1, None), 5), "the same reporter again");
        assert!(log.record(&s.key, 3, &by(2, Some("a.service")), 1));
        assert!(log.record(&s.key, 2, &by(1, None), 1));
        assert_eq!(log.users(&s.key, 3).len(), 2);
        log.keep_only(&s.key, &[3]);
        assert!(log.users(&s.key, 2).is_empty());
        assert_eq!(log.users(&s.key, 3).len(), 2);
        log.forget(&s.key);
        assert!(log.users(&s.key, 3).is_empty());
    }

    #[test]
    fn report_text_is_bounded_and_printable() {
        let long = "x".repeat(1000) + "\n\u{1b}[31m";
        let b = bounded(&long);
        assert!(b.len() <= MAX_TEXT);
        assert!(!bounded("a\nb\u{1b}c").contains('\n'));
    }
}
