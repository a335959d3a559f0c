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

use super::error::KvError;
use super::lease::{backoff, plan, Action, Kind, Lease};
use super::options::KvAuth;
use super::session::{Session, TokenCheck};

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
