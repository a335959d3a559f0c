//! `creds.sock`: keys handed to systemd units through `LoadCredential=`.
//!
//! A unit with `LoadCredential=prod.billing-api:/run/keyward/creds.sock`
//! makes systemd (PID 1, root) connect to this socket from the abstract
//! address `@<random>/unit/<unit>/<credential-id>` and read to EOF; what it
//! reads becomes the unit's credential file. See systemd.exec(5).
//!
//! Invariants:
//! - The unit named in the peer's address is believed only when the peer is
//!   the service manager: PID 1 running as root, in system mode (any
//!   process can bind an abstract address naming any unit, and any root
//!   process could reach the 0600 socket); in dev mode the agent's own user,
//!   who has no service manager to prove.
//! - The credential id names the key as `ENV.NAME` (`/` is not allowed in
//!   credential ids): the environment ends at the first `.`, so an
//!   environment whose name contains `.` cannot be reached this way.
//! - The caller the policy sees is the unit alone, so only credentials
//!   grants apply: those that name nothing but `units`
//!   ([`crate::policy::Policy::credential_grant_for`]).
//! - The primary's bytes are written only after the policy allowed the
//!   unit and the `credential` audit record is written (fail closed unless
//!   the environment is fail-open); a refusal closes without writing a
//!   byte (systemd then fails the unit) and is audited.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{getpeername, UnixAddr};
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;

use crate::agent::caller::Caller;
use crate::agent::error::ApiError;
use crate::agent::serve::Via;
use crate::agent::Agent;
use crate::secret::KeyRef;

/// How long systemd gets to read a credential.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// What systemd asks for, from its abstract peer address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialRequest {
    /// The unit being started, e.g. `billing.service`.
    pub unit: String,
    /// The credential id, e.g. `prod.billing-api`.
    pub id: String,
}

/// Parses `<random>/unit/<unit>/<id>` (the abstract name, without its NUL).
pub fn parse_peer_name(name: &[u8]) -> Option<CredentialRequest> {
    let name = std::str::from_utf8(name).ok()?;
    let mut parts = name.split('/');
    let (_random, kind, unit, id) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if kind != "unit" || unit.is_empty() || id.is_empty() || parts.next().is_some() {
        return None;
    }
    Some(CredentialRequest {
        unit: unit.to_owned(),
        id: id.to_owned(),
    })
}

/// The key a credential id names: `prod.billing-api` is `prod/billing-api`.
pub fn key_for_credential(id: &str) -> Result<KeyRef, String> {
    let (env, name) = id
        .split_once('.')
        .ok_or_else(|| format!("credential id {id:?} is not ENV.NAME: write e.g. LoadCredential=prod.billing-api:…"))?;
    KeyRef::new(env, name).map_err(|e| format!("credential id {id:?}: {e}"))
}

/// Serves `listener` until `stop` turns true, then waits for the answers
/// under way (at most `grace`).
pub async fn serve(
    listener: UnixListener,
    agent: Arc<Agent>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    grace: Duration,
) {
    let mut answers = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    answers.spawn(answer(agent.clone(), stream));
                }
                Err(e) => tracing::warn!(error = %e, "creds.sock: accept failed"),
            },
            Some(_) = answers.join_next(), if !answers.is_empty() => {}
        }
    }
    if tokio::time::timeout(grace, async { while answers.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        answers.abort_all();
    }
}

/// One credential: identify, check, audit, write, close.
async fn answer(agent: Arc<Agent>, mut stream: UnixStream) {
    let Some((caller, request)) = identify(&stream, agent.config().dev_mode) else {
        return;
    };
    let bytes = match decide(&agent, &caller, &request).await {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::warn!(unit = %request.unit, credential = %request.id, "credential refused: {e}");
            return;
        }
    };
    let write = async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    };
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(unit = %request.unit, error = %e, "credential not delivered"),
        Err(_) => tracing::warn!(unit = %request.unit, "credential not delivered: systemd did not read it in time"),
    }
}

/// The peer and what it asks for; `None` (logged) when the peer may not
/// ask or its address is not systemd's form.
fn identify(stream: &UnixStream, dev_mode: bool) -> Option<(Caller, CredentialRequest)> {
    let cred = match stream.peer_cred() {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "creds.sock: peer left before it could be identified");
            return None;
        }
    };
    let own = nix::unistd::geteuid().as_raw();
    if !crate::policy::may_ask_for_credentials(cred.uid(), cred.pid(), dev_mode, own) {
        tracing::warn!(
            uid = cred.uid(),
            pid = cred.pid(),
            "creds.sock: refused a connection that is not from the service manager (PID 1 as root): only systemd asks for LoadCredential="
        );
        return None;
    }
    let name = getpeername::<UnixAddr>(stream.as_raw_fd())
        .ok()
        .and_then(|a| a.as_abstract().map(<[u8]>::to_vec));
    let Some(request) = name.as_deref().and_then(parse_peer_name) else {
        tracing::warn!(
            peer = ?name.as_deref().map(String::from_utf8_lossy),
            "creds.sock: the peer's address is not systemd's @…/unit/UNIT/ID; is LoadCredential= pointing at creds.sock?"
        );
        return None;
    };
    let pid = cred.pid().unwrap_or(0);
    let caller = super::peer::from_service_manager(cred.uid(), cred.gid(), pid, request.unit.clone());
    Some((caller, request))
}

/// The primary's bytes for `request`, once allowed and audited.
async fn decide(
    agent: &Agent,
    caller: &Caller,
    request: &CredentialRequest,
) -> Result<zeroize::Zeroizing<Vec<u8>>, ApiError> {
    const EVENT: &str = "credential";
    let key = match key_for_credential(&request.id) {
        Ok(k) => k,
        Err(e) => {
            let shown = Some(format!("{:?}", request.id));
            return Err(agent
                .refuse(EVENT, caller, shown, "invalid_argument", ApiError::InvalidArgument(e))
                .await);
        }
    };
    if !agent.config().environments.contains_key(key.env()) {
        let e = ApiError::InvalidArgument(agent.unknown_env_message(key.env()));
        return Err(agent
            .refuse(EVENT, caller, Some(key.to_string()), "invalid_argument", e)
            .await);
    }
    let via = Via::Credential {
        id: &request.id,
        unit: &request.unit,
    };
    let served = agent.serve(caller, &key, via).await?;
    let state = served
        .state()
        .ok_or_else(|| ApiError::NotFound(format!("key {key} does not exist")))?;
    Ok(zeroize::Zeroizing::new(state.primary.secret.expose_secret().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_names_follow_systemds_form() {
        let r = parse_peer_name(b"f3a1b2c4d5e6f708/unit/billing.service/prod.billing-api").unwrap();
        assert_eq!(r.unit, "billing.service");
        assert_eq!(r.id, "prod.billing-api");
        for bad in [
            &b"f3a1/unit/billing.service"[..],
            b"f3a1/user/billing.service/prod.x",
            b"f3a1/unit//prod.x",
            b"f3a1/unit/billing.service/prod.x/more",
            b"\xff/unit/a.service/prod.x",
        ] {
            assert_eq!(parse_peer_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn credential_ids_name_env_dot_name() {
        assert_eq!(
            key_for_credential("prod.billing-api").unwrap().to_string(),
            "prod/billing-api"
        );
        assert_eq!(key_for_credential("prod.api.v2").unwrap().to_string(), "prod/api.v2");
        assert!(key_for_credential("billing-api").is_err());
        assert!(key_for_credential("Prod.x").is_err());
    }
}
