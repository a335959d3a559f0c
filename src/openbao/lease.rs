//! When to renew the token, look it up, or get a fresh one: [`plan`], a
//! pure function of the token's kind and lease (the task that acts on it is
//! `super::renewal`).

use std::time::Duration;

use tokio::time::Instant;

use super::response::TokenLife;

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
