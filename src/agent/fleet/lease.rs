//! Rotation leases: in a fleet, one agent at a time runs a key's rotation.
//!
//! A lease is a signed value at `leases/<env>/<name>`: its holder (a member's
//! agent id), when it expires, and what the rotation was started for (its
//! trigger and `until`, so that a member taking it over carries on the same
//! rotation). It is taken with KV v2 check-and-set against the version read,
//! so of two agents taking it at once one wins; the holder renews it every
//! third of `[backend] rotation_lease` while its job runs and marks it
//! released when the job ends.
//!
//! Invariants:
//! - A job takes no step that changes the key unless it holds a lease it
//!   renewed within the lease's term ([`LeaseKeeper::check`]); a holder
//!   that cannot renew (OpenBao down) stops stepping before its lease can
//!   have expired, so a member taking over never steps beside it.
//! - A lease not signed by the member it names as holder is treated as
//!   absent (and reported): a stolen agent token alone cannot block a
//!   rotation or pose as a holder.
//! - The key's state in the backend stays the truth: a member taking over
//!   resumes from it, and every step is still a check-and-set on the key's
//!   record, so a lease race can at worst fail a step, never double one.
//! - Expiry is wall-clock time across hosts: the fleet's clocks must agree
//!   well within `rotation_lease` (NTP does).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{sign, unix_ms, Fleet, FORMAT};
use crate::agent::Agent;
use crate::openbao::KvError;
use crate::rotation::plan::{Trigger, Until};
use crate::secret::KeyRef;

/// A lease as stored (signed) in the backend.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Lease {
    /// Always [`FORMAT`].
    pub format: String,
    /// `ENV/NAME`.
    pub key: String,
    /// The holding member's agent id.
    pub holder: String,
    /// When it was taken (unix ms).
    pub acquired_at_ms: u64,
    /// When it ends unless renewed (unix ms).
    pub expires_at_ms: u64,
    /// What started the rotation.
    pub trigger: Trigger,
    /// Where it stops.
    pub until: Until,
    /// The job ended: anyone may take it.
    pub released: bool,
}

/// Past the last millisecond of year 9999: no lease runs that long, and
/// times past it cannot be written as RFC 3339.
const LATEST_MS: u64 = 253_402_300_800_000;

impl Lease {
    /// A lease's signed text, decoded; its times must be in order and
    /// before year 10000 (a signing member's value is still input: its
    /// times end up in messages and comparisons).
    fn decode(text: &str) -> Result<Lease, String> {
        let lease: Lease = serde_json::from_str(text).map_err(|e| format!("its lease does not decode ({e})"))?;
        if lease.expires_at_ms >= LATEST_MS || lease.acquired_at_ms > lease.expires_at_ms {
            return Err(format!(
                "its lease's times are out of range (acquired at {} ms, expires at {} ms since 1970)",
                lease.acquired_at_ms, lease.expires_at_ms
            ));
        }
        Ok(lease)
    }

    /// When it was taken.
    pub fn acquired(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.acquired_at_ms)
    }

    /// A member other than `me` took it at or after `since` and released
    /// it: that member ran a rotation of the key to its end since then.
    pub fn ran_elsewhere_since(&self, me: &str, since: SystemTime) -> bool {
        self.released && self.holder != me && self.acquired() >= since
    }

    /// When it expires.
    pub fn expires(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.expires_at_ms)
    }

    /// Held by someone as of `now`.
    pub fn live(&self, now: SystemTime) -> bool {
        !self.released && self.expires() > now
    }

    /// Held once and never released, but expired: its holder stopped
    /// renewing it mid-rotation.
    pub fn abandoned(&self, now: SystemTime) -> bool {
        !self.released && self.expires() <= now
    }
}

/// The lease path's current KV version (0: none, or not asked for) and the
/// lease there, when a member signed it.
struct LeaseView {
    version: u64,
    lease: Option<Lease>,
}

/// The outcome of [`Fleet::claim_lease`].
pub enum Claim {
    /// This agent holds it now.
    Taken(HeldLease),
    /// Another member holds it.
    Busy {
        /// Its agent id.
        holder: String,
        /// Until when (it renews it while its job runs).
        expires: SystemTime,
    },
}

/// A lease this agent holds: the KV version it wrote it as.
#[derive(Debug)]
pub struct HeldLease {
    key: KeyRef,
    version: u64,
    lease: Lease,
    /// When it was last written, on the monotonic clock.
    written: Instant,
}

impl HeldLease {
    /// What it says.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }
}

/// Why a lease is not held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseLost {
    /// Another member holds it now.
    TakenBy(String),
    /// It was released or removed by someone else.
    Gone,
}

impl Fleet {
    /// `leases/<env>/<name>` under the prefix.
    fn lease_path(&self, key: &KeyRef) -> String {
        format!("{}/leases/{}/{}", self.cfg.prefix, key.env(), key.name())
    }

    /// The lease of `key` as the backend has it (one request). A value no
    /// member signed as its holder is reported and read as no lease.
    pub async fn lease_of(&self, agent: &Agent, key: &KeyRef) -> Result<Option<Lease>, KvError> {
        Ok(self.read_lease(agent, key, false).await?.lease)
    }

    /// [`Fleet::lease_of`], with the path's current version when `exact`
    /// (a second request when the latest version holds no value: the
    /// version a check-and-set write must name).
    async fn read_lease(&self, agent: &Agent, key: &KeyRef, exact: bool) -> Result<LeaseView, KvError> {
        let path = self.lease_path(key);
        let Some(entry) = self.kv.read(&path).await? else {
            let version = match exact {
                true => self.kv.metadata(&path).await?.map_or(0, |m| m.current_version),
                false => 0,
            };
            return Ok(LeaseView { version, lease: None });
        };
        match self.check_lease(&entry.data, &path, key, entry.version, agent) {
            Ok(lease) => Ok(LeaseView {
                version: entry.version,
                lease: Some(lease),
            }),
            Err(why) => {
                self.report_refused(agent, &path, Some(key), entry.version, &why).await;
                Ok(LeaseView {
                    version: entry.version,
                    lease: None,
                })
            }
        }
    }

    /// The lease in `data` (version `version` of `path`), if the member it
    /// names as holder signed it for that path and version.
    fn check_lease(
        &self,
        data: &serde_json::Value,
        path: &str,
        key: &KeyRef,
        version: u64,
        agent: &Agent,
    ) -> Result<Lease, String> {
        let text = match (
            data.get("format").and_then(|f| f.as_str()),
            data.get("lease").and_then(|r| r.as_str()),
        ) {
            (Some(FORMAT), Some(text)) => text,
            _ => return Err("it is not a signed keyward rotation lease".to_owned()),
        };
        let lease = Lease::decode(text)?;
        let message = sign::canonical(
            sign::Kind::Lease,
            &self.full_path(path),
            &key.to_string(),
            version,
            &[text.as_bytes()],
        );
        sign::verify(data, &message, &Fleet::members(agent), Some(&lease.holder))?;
        if lease.key != key.to_string() || lease.format != FORMAT {
            return Err(format!("its signed lease names key {:?}", lease.key));
        }
        Ok(lease)
    }

    /// Writes `lease` as version `cas + 1` of the lease path (check-and-set
    /// against `cas`). A refusal that is this very write, applied before
    /// the connection broke and sent again, counts as done.
    async fn write_lease(&self, key: &KeyRef, lease: &Lease, cas: u64) -> Result<u64, KvError> {
        let path = self.lease_path(key);
        let text = serde_json::to_string(lease).map_err(|e| KvError::BadResponse {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let mut value = serde_json::json!({ "format": FORMAT, "lease": text });
        self.sign(
            &mut value,
            sign::Kind::Lease,
            &path,
            &key.to_string(),
            cas + 1,
            &[text.as_bytes()],
        );
        match self.kv.write(&path, &value, Some(cas)).await {
            Ok(v) => Ok(v),
            Err(KvError::CasMismatch { .. })
                if self
                    .kv
                    .read_version(&path, cas + 1)
                    .await
                    .is_ok_and(|e| e.is_some_and(|e| e.data == value)) =>
            {
                Ok(cas + 1)
            }
            Err(e) => Err(e),
        }
    }

    /// Takes the lease of `key` for a rotation started by `trigger` until
    /// `until`, unless another member holds it (live). A lease this agent
    /// holds already (after its restart) is taken again.
    pub async fn claim_lease(
        &self,
        agent: &Agent,
        key: &KeyRef,
        trigger: Trigger,
        until: Until,
    ) -> Result<Claim, KvError> {
        let mut tries = 0;
        loop {
            let view = self.read_lease(agent, key, true).await?;
            let now = SystemTime::now();
            if let Some(l) = view
                .lease
                .as_ref()
                .filter(|l| l.live(now) && l.holder != self.cfg.agent_id)
            {
                return Ok(Claim::Busy {
                    holder: l.holder.clone(),
                    expires: l.expires(),
                });
            }
            let lease = Lease {
                format: FORMAT.to_owned(),
                key: key.to_string(),
                holder: self.cfg.agent_id.clone(),
                acquired_at_ms: unix_ms(now),
                expires_at_ms: unix_ms(now + self.cfg.rotation_lease),
                trigger,
                until,
                released: false,
            };
            let written = Instant::now();
            match self.write_lease(key, &lease, view.version).await {
                Ok(version) => {
                    tracing::info!(key = %key, version, "took the rotation lease");
                    return Ok(Claim::Taken(HeldLease {
                        key: key.clone(),
                        version,
                        lease,
                        written,
                    }));
                }
                // Someone wrote it between the read and the write: read
                // again (and find who holds it).
                Err(KvError::CasMismatch { .. }) if tries < 3 => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// Extends `held` by a lease term; `Err(Ok(lost))` when another member
    /// took it or it was removed, `Err(Err(e))` when OpenBao could not be
    /// asked (the lease may still be held: try again).
    async fn renew_lease(&self, agent: &Agent, held: &mut HeldLease) -> Result<(), Result<LeaseLost, KvError>> {
        let now = SystemTime::now();
        let mut lease = held.lease.clone();
        lease.expires_at_ms = unix_ms(now + self.cfg.rotation_lease);
        let written = Instant::now();
        match self.write_lease(&held.key, &lease, held.version).await {
            Ok(version) => {
                held.version = version;
                held.lease = lease;
                held.written = written;
                Ok(())
            }
            Err(KvError::CasMismatch { .. }) => {
                let view = self.read_lease(agent, &held.key, true).await.map_err(Err)?;
                match view.lease {
                    // An earlier renewal of ours that OpenBao applied though
                    // its answer was lost: carry on from that version.
                    Some(l)
                        if l.holder == self.cfg.agent_id
                            && !l.released
                            && l.acquired_at_ms == held.lease.acquired_at_ms =>
                    {
                        held.version = view.version;
                        held.lease = l;
                        Ok(())
                    }
                    Some(l) if l.holder != self.cfg.agent_id && !l.released => Err(Ok(LeaseLost::TakenBy(l.holder))),
                    _ => Err(Ok(LeaseLost::Gone)),
                }
            }
            Err(e) => Err(Err(e)),
        }
    }

    /// Marks `held` released. When OpenBao does not take it, tries again
    /// each [`RELEASE_RETRY`] in the background until it does, or until the
    /// lease expired anyway: an unreleased lease that expires reads as
    /// abandoned, and another member would resume a rotation this agent
    /// ended (cancelled, or rolled back with the refused key staged).
    pub async fn release_lease(self: &Arc<Self>, held: HeldLease) {
        if self.try_release(&held, true).await {
            return;
        }
        let fleet = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RELEASE_RETRY).await;
                if fleet.try_release(&held, false).await {
                    return;
                }
                if SystemTime::now() >= held.lease.expires() {
                    tracing::error!(key = %held.key,
                        "could not release the rotation lease before it expired: another member may resume the rotation this agent ended; check `keyward rotation-status` on the members");
                    return;
                }
            }
        });
    }

    /// One try at releasing `held`: true once it is released, or no longer
    /// this agent's to release. A failure is logged on the `first` try.
    async fn try_release(&self, held: &HeldLease, first: bool) -> bool {
        let mut lease = held.lease.clone();
        lease.released = true;
        lease.expires_at_ms = unix_ms(SystemTime::now());
        match self.write_lease(&held.key, &lease, held.version).await {
            Ok(_) => {
                tracing::info!(key = %held.key, "released the rotation lease");
                true
            }
            Err(KvError::CasMismatch { .. }) => {
                tracing::warn!(key = %held.key, "the rotation lease was written by someone else since this agent's last renewal: nothing to release");
                true
            }
            Err(e) => {
                if first {
                    tracing::warn!(key = %held.key, error = %e,
                        "cannot release the rotation lease yet; trying again every second until it expires");
                }
                false
            }
        }
    }
}

/// How often a release OpenBao did not take is tried again.
const RELEASE_RETRY: Duration = Duration::from_secs(1);

/// Whether a job may take a step now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseCheck {
    /// Held, renewed within its term.
    Held,
    /// Not renewed lately (OpenBao unreachable): wait, it may come back.
    Unrenewed(String),
    /// Lost for good: the job must stop.
    Lost(LeaseLost),
}

/// Keeps a held lease renewed while a job runs.
pub struct LeaseKeeper {
    state: watch::Receiver<Keeper>,
    stop: watch::Sender<Option<bool>>,
    task: tokio::task::JoinHandle<()>,
    term: Duration,
}

#[derive(Clone, Debug)]
struct Keeper {
    /// When the lease was last written (monotonic).
    written: Instant,
    /// When it ends, on the wall clock other members judge it by (the
    /// monotonic clock stops while the host is suspended; theirs does not).
    expires: SystemTime,
    lost: Option<LeaseLost>,
    error: Option<String>,
}

impl LeaseKeeper {
    /// Renews `held` every third of its term until [`LeaseKeeper::release`]
    /// or [`LeaseKeeper::leave`].
    pub fn start(agent: Arc<Agent>, fleet: Arc<Fleet>, mut held: HeldLease) -> LeaseKeeper {
        let term = fleet.cfg.rotation_lease;
        let (state_tx, state) = watch::channel(Keeper {
            written: held.written,
            expires: held.lease.expires(),
            lost: None,
            error: None,
        });
        // None: running; Some(true): release; Some(false): leave it held.
        let (stop, mut stop_rx) = watch::channel(None::<bool>);
        let task = tokio::spawn(async move {
            let mut pause = term / 3;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop_rx.changed() => {}
                }
                let asked = *stop_rx.borrow();
                if let Some(release) = asked {
                    if release {
                        fleet.release_lease(held).await;
                    }
                    return;
                }
                match fleet.renew_lease(&agent, &mut held).await {
                    Ok(()) => {
                        pause = term / 3;
                        state_tx.send_modify(|s| {
                            s.written = held.written;
                            s.expires = held.lease.expires();
                            s.error = None;
                        });
                    }
                    Err(Ok(lost)) => {
                        tracing::error!(key = %held.key, lost = ?lost, "lost the rotation lease; this agent's job stops");
                        state_tx.send_modify(|s| s.lost = Some(lost));
                        return;
                    }
                    Err(Err(e)) => {
                        tracing::warn!(key = %held.key, error = %e, "cannot renew the rotation lease; trying again");
                        pause = Duration::from_secs(1).min(term / 3);
                        state_tx.send_modify(|s| s.error = Some(e.to_string()));
                    }
                }
            }
        });
        LeaseKeeper {
            state,
            stop,
            task,
            term,
        }
    }

    /// Whether the job may take a step: held, and renewed recently enough
    /// that it cannot expire during the step's first write (a margin of a
    /// third of the term).
    pub fn check(&self) -> LeaseCheck {
        let s = self.state.borrow();
        if let Some(lost) = &s.lost {
            return LeaseCheck::Lost(lost.clone());
        }
        let left = s.expires.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO);
        if unrenewed(s.written.elapsed(), left, self.term) {
            return LeaseCheck::Unrenewed(format!(
                "the rotation lease was not renewed for {}s and ends in {}s by the wall clock ({}): no step is taken until it is",
                s.written.elapsed().as_secs(),
                left.as_secs(),
                s.error.as_deref().unwrap_or("renewal under way")
            ));
        }
        LeaseCheck::Held
    }

    /// The job ended: releases the lease.
    pub async fn release(self) {
        let _ = self.stop.send(Some(true));
        let _ = self.task.await;
    }

    /// The agent stops with the job still running: the lease stays held
    /// (this agent takes it again when it starts; others after it expires).
    pub async fn leave(self) {
        let _ = self.stop.send(Some(false));
        let _ = self.task.await;
    }
}

/// A step must wait: the lease was written more than two thirds of its
/// `term` ago (`since_write`, monotonic), or it ends within a third of it
/// (`left`, by the wall clock): a host suspended past its lease sees the
/// first clock stand still while the second, which the other members
/// judge expiry by, went on.
fn unrenewed(since_write: Duration, left: Duration, term: Duration) -> bool {
    since_write > term * 2 / 3 || left < term / 3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_waits_when_either_clock_says_the_lease_is_nearly_over() {
        let term = Duration::from_secs(60);
        let s = Duration::from_secs;
        assert!(!unrenewed(s(1), s(59), term));
        assert!(!unrenewed(s(39), s(21), term));
        assert!(unrenewed(s(41), s(19), term));
        // Suspended for 50 s: the monotonic clock did not move.
        assert!(unrenewed(s(1), s(9), term));
        assert!(unrenewed(s(1), Duration::ZERO, term));
    }

    fn text(acquired_at_ms: u64, expires_at_ms: u64) -> String {
        serde_json::json!({
            "format": FORMAT,
            "key": "prod/x",
            "holder": "a",
            "acquired_at_ms": acquired_at_ms,
            "expires_at_ms": expires_at_ms,
            "trigger": "manual",
            "until": "retired",
            "released": false,
        })
        .to_string()
    }

    /// A lease's times reach messages ("holds it until …"): one past year
    /// 9999 made the formatting panic, in the job driver's task too.
    #[test]
    fn a_lease_whose_times_are_out_of_range_is_refused() {
        let now = unix_ms(SystemTime::now());
        let lease = Lease::decode(&text(now, now + 60_000)).unwrap();
        assert!(lease.live(SystemTime::now()));
        humantime::format_rfc3339_seconds(lease.expires()).to_string();
        for (acquired, expires) in [(now, LATEST_MS), (now, u64::MAX), (now + 1, now)] {
            let err = Lease::decode(&text(acquired, expires)).unwrap_err();
            assert!(err.contains("out of range"), "{err}");
        }
    }
}
