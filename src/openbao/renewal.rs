//! Keeping the token alive: when to renew it, look it up, or get a fresh
//! one ([`plan`], a pure function), and the task that does it ([`run`]).
//!
//! An AppRole token is renewed at about half its lease; once a renewal
//! comes back shorter than the role's TTL (its max TTL is near) or fails,
//! the task logs in again. A token file's token is looked up first; if it
//! is renewable it is renewed at half its TTL, otherwise the file is read
//! again from time to time, so that a token rotated by someone else (bao
//! agent, an operator) is picked up before the old one dies.
//!
//! Invariant: the task never panics and never logs the token; a failure is
//! logged and retried with backoff, and requests keep their own recovery
//! (a 403 makes a fresh token), so the task only saves round trips.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::response::TokenLife;
use super::session::{Session, TokenCheck};
use super::{KvAuth, KvError};

/// How often a token file is read again when its token cannot be renewed.
const FILE_CHECK_EVERY: Duration = Duration::from_secs(60);
/// The shortest wait between two reads of the token file.
const FILE_CHECK_MIN: Duration = Duration::from_secs(1);
/// How often a token that never expires is looked up (to notice it was
/// revoked).
const NO_EXPIRY_CHECK_EVERY: Duration = Duration::from_secs(600);
/// The longest wait between retries after a failure.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What is known of a token's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Lease {
    /// When OpenBao said it.
    pub(super) granted_at: Instant,
    /// What it said: the time left from `granted_at`, renewable or not.
    pub(super) life: TokenLife,
    /// The longest TTL seen for this token: what a renewal gives while the
    /// max TTL is far.
    pub(super) full_ttl: Duration,
    /// The last renewal gave less than `full_ttl`: the max TTL is near and
    /// renewing further is pointless.
    pub(super) capped: bool,
}

impl Lease {
    /// The lease of a token just obtained (login) or looked up.
    pub(super) fn granted(life: TokenLife, now: Instant) -> Lease {
        Lease {
            granted_at: now,
            life,
            full_ttl: life.ttl,
            capped: false,
        }
    }

    /// The lease after a renewal that gave `life`, following `previous`.
    pub(super) fn renewed(previous: Option<Lease>, life: TokenLife, now: Instant) -> Lease {
        let full_ttl = previous.map_or(life.ttl, |p| p.full_ttl);
        Lease {
            granted_at: now,
            life,
            full_ttl: full_ttl.max(life.ttl),
            capped: life.ttl < full_ttl,
        }
    }
}

/// Which kind of credential the session has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// [`KvAuth::TokenFile`].
    TokenFile,
    /// [`KvAuth::AppRole`].
    AppRole,
}

/// What to do next with the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    /// Ask `lookup-self` for its life.
    Lookup,
    /// `renew-self`.
    Renew,
    /// Get a fresh token: read the file again, or log in again.
    Refresh,
}

/// When to do what, given what is known of the token's life.
pub(super) fn plan(kind: Kind, lease: Option<&Lease>, now: Instant) -> (Instant, Action) {
    let Some(lease) = lease else {
        return (now, Action::Lookup);
    };
    if lease.life.ttl.is_zero() {
        return match kind {
            Kind::TokenFile => (now + FILE_CHECK_EVERY, Action::Refresh),
            Kind::AppRole => (now + NO_EXPIRY_CHECK_EVERY, Action::Lookup),
        };
    }
    let halfway = lease.granted_at + lease.life.ttl / 2;
    let expiry = lease.granted_at + lease.life.ttl;
    match kind {
        // The max TTL is near: a new login now, while this token still works.
        Kind::AppRole if lease.capped => (lease.granted_at, Action::Refresh),
        Kind::AppRole if !lease.life.renewable => (halfway, Action::Refresh),
        Kind::AppRole => (halfway, Action::Renew),
        Kind::TokenFile if lease.life.renewable && !lease.capped => (halfway, Action::Renew),
        // Nothing extends it: read the file again, more often as the end
        // nears; after the end, requests' 403s read it too.
        Kind::TokenFile if now < expiry => (
            halfway.clamp(now + FILE_CHECK_MIN, now + FILE_CHECK_EVERY),
            Action::Refresh,
        ),
        Kind::TokenFile => (now + FILE_CHECK_EVERY, Action::Refresh),
    }
}

/// The wait before retry number `failures` (1, 2, 4 … 30 s).
pub(super) fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(5);
    (Duration::from_secs(1) * 2u32.pow(exponent)).min(MAX_BACKOFF)
}

/// Waits `duration`, or until `stop` turns true or its sender goes.
/// Returns true when it is time to stop.
async fn wait_or_stop(stop: &mut watch::Receiver<bool>, duration: Duration) -> bool {
    let deadline = Instant::now() + duration;
    loop {
        if *stop.borrow_and_update() {
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return false,
            changed = stop.changed() => if changed.is_err() { return true },
        }
    }
}

/// The renewal task: runs until `stop` turns true (or its sender goes).
pub(super) async fn run(session: Arc<Session>, mut stop: watch::Receiver<bool>) {
    let kind = match session.auth {
        KvAuth::TokenFile(_) => Kind::TokenFile,
        KvAuth::AppRole { .. } => Kind::AppRole,
    };
    let address = session.address.clone();
    let mut generations = session.generation.subscribe();
    let mut failures = 0u32;
    tracing::debug!(%address, "keeping the OpenBao token alive");
    loop {
        if *stop.borrow_and_update() {
            break;
        }
        generations.borrow_and_update();
        // Obtains the first token if no request has yet.
        let (token, generation) = match session.token().await {
            Ok(current) => current,
            Err(error) => {
                failures += 1;
                tracing::warn!(%address, %error, "cannot get an OpenBao token; trying again");
                if wait_or_stop(&mut stop, backoff(failures)).await {
                    break;
                }
                continue;
            }
        };
        let lease = session.lease(generation).await;
        let (when, action) = plan(kind, lease.as_ref(), Instant::now());
        tokio::select! {
            _ = tokio::time::sleep_until(when) => {}
            // Stop (or the sender went), or look again.
            changed = stop.changed() => if changed.is_err() { break } else { continue },
            // A new token (a request refreshed it): plan for that one.
            _ = generations.changed() => continue,
        }
        match keep_alive(&session, action, &token, generation, lease).await {
            Ok(()) => failures = 0,
            Err(error) => {
                failures += 1;
                tracing::warn!(%address, %error, "cannot keep the OpenBao token alive; trying again");
                if wait_or_stop(&mut stop, backoff(failures)).await {
                    break;
                }
            }
        }
    }
    tracing::debug!(%address, "stopped keeping the OpenBao token alive");
}

/// Does `action` for the token of `generation`.
async fn keep_alive(
    session: &Session,
    action: Action,
    token: &secrecy::SecretString,
    generation: u64,
    lease: Option<Lease>,
) -> Result<(), KvError> {
    let check = match action {
        Action::Refresh => return refresh(session, generation, false).await,
        Action::Lookup => session.lookup_self(token).await?,
        Action::Renew => session.renew_self(token).await?,
    };
    let now = Instant::now();
    match check {
        TokenCheck::Valid(life) => {
            let lease = match action {
                Action::Renew => Lease::renewed(lease, life, now),
                _ => Lease::granted(life, now),
            };
            tracing::debug!(
                address = %session.address,
                ttl_secs = life.ttl.as_secs(),
                renewable = life.renewable,
                capped = lease.capped,
                "{}",
                if action == Action::Renew { "renewed the OpenBao token" } else { "looked up the OpenBao token" }
            );
            session.set_lease(generation, lease).await;
            Ok(())
        }
        TokenCheck::Refused => refresh(session, generation, true).await,
    }
}

/// Gets a fresh token in place of the one of `generation`. `refused`: OpenBao
/// refused that token, so a token file that still holds it is an error.
async fn refresh(session: &Session, generation: u64, refused: bool) -> Result<(), KvError> {
    tracing::debug!(address = %session.address, refused, "getting a fresh OpenBao token");
    let changed = session.refresh(generation).await?;
    match &session.auth {
        KvAuth::TokenFile(path) if refused && !changed => Err(KvError::Auth(format!(
            "OpenBao at {} refuses the token in {} (expired or revoked): write a valid token to it",
            session.address,
            path.display()
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn life(ttl: u64, renewable: bool) -> TokenLife {
        TokenLife {
            ttl: Duration::from_secs(ttl),
            renewable,
        }
    }

    #[test]
    fn plans() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let granted = |ttl, renewable| Lease::granted(life(ttl, renewable), t0);
        let capped = Lease {
            capped: true,
            ..Lease::granted(life(1, true), t0)
        };
        // (kind, lease, now, planned)
        type Row = (Kind, Option<Lease>, Instant, (Instant, Action));
        let table: [Row; 12] = [
            (Kind::AppRole, None, t0, (t0, Action::Lookup)),
            (Kind::TokenFile, None, t0, (t0, Action::Lookup)),
            // Root tokens and others that never expire.
            (
                Kind::TokenFile,
                Some(granted(0, false)),
                t0,
                (t0 + s(60), Action::Refresh),
            ),
            (
                Kind::AppRole,
                Some(granted(0, false)),
                t0,
                (t0 + s(600), Action::Lookup),
            ),
            // Renewable: at half the lease.
            (
                Kind::AppRole,
                Some(granted(3600, true)),
                t0,
                (t0 + s(1800), Action::Renew),
            ),
            (
                Kind::TokenFile,
                Some(granted(3600, true)),
                t0,
                (t0 + s(1800), Action::Renew),
            ),
            // The max TTL is near.
            (Kind::AppRole, Some(capped), t0 + s(1), (t0, Action::Refresh)),
            // Not renewable.
            (
                Kind::AppRole,
                Some(granted(60, false)),
                t0,
                (t0 + s(30), Action::Refresh),
            ),
            (
                Kind::TokenFile,
                Some(granted(3600, false)),
                t0,
                (t0 + s(60), Action::Refresh),
            ),
            (
                Kind::TokenFile,
                Some(granted(20, false)),
                t0,
                (t0 + s(10), Action::Refresh),
            ),
            (
                Kind::TokenFile,
                Some(granted(20, false)),
                t0 + s(15),
                (t0 + s(16), Action::Refresh),
            ),
            // Expired: requests' 403s take over.
            (
                Kind::TokenFile,
                Some(granted(20, false)),
                t0 + s(25),
                (t0 + s(85), Action::Refresh),
            ),
        ];
        for (kind, lease, now, want) in table {
            assert_eq!(plan(kind, lease.as_ref(), now), want, "{kind:?} {lease:?}");
        }
        let capped_file = Lease {
            capped: true,
            ..Lease::granted(life(40, true), t0)
        };
        assert_eq!(
            plan(Kind::TokenFile, Some(&capped_file), t0),
            (t0 + s(20), Action::Refresh)
        );
    }

    #[test]
    fn renewals_notice_the_max_ttl() {
        let t0 = Instant::now();
        let first = Lease::granted(life(2, true), t0);
        let renewed = Lease::renewed(Some(first), life(2, true), t0);
        assert!(!renewed.capped);
        let short = Lease::renewed(Some(renewed), life(1, true), t0);
        assert!(short.capped);
        assert_eq!(short.full_ttl, Duration::from_secs(2));
        // A looked-up token file token: time left, not its full TTL.
        let looked_up = Lease::granted(life(1800, true), t0);
        let renewed = Lease::renewed(Some(looked_up), life(3600, true), t0);
        assert!(!renewed.capped);
        assert_eq!(renewed.full_ttl, Duration::from_secs(3600));
        assert!(!Lease::renewed(None, life(5, true), t0).capped);
    }

    #[test]
    fn backoff_doubles_up_to_a_ceiling() {
        let got: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
