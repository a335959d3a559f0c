//! The checks that ask the running agent, over its admin socket: its
//! status, its backend, its open alerts and its keys' ages. Metadata only.

use std::path::Path;
use std::time::{Duration, SystemTime};

use keyward::config::Config;
use keyward::proto::{self, admin_client::AdminClient};
use keyward::secret::KeyRef;
use keyward::wire::from_timestamp;
use tonic::transport::Channel;

use super::Finding;
use keyward::wire::FromWire;

/// Keys whose primary expires within this are reported.
const EXPIRY_WARNING: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long to wait for the admin socket.
const AGENT_TIMEOUT: Duration = Duration::from_secs(3);

/// The admin client on `path`, if the agent answers within
/// [`AGENT_TIMEOUT`].
pub(super) async fn connect(path: &Path) -> Result<AdminClient<Channel>, String> {
    match tokio::time::timeout(AGENT_TIMEOUT, crate::sockets::channel(path)).await {
        Ok(Ok(channel)) => Ok(AdminClient::new(channel)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("no answer within {}s", AGENT_TIMEOUT.as_secs())),
    }
}

/// The agent's status and its keys' ages, over the admin socket.
pub(super) async fn check_agent(mut admin: AdminClient<Channel>, config: &Config, out: &mut Vec<Finding>) {
    let status = match admin.get_status(proto::GetStatusRequest {}).await {
        Ok(s) => s.into_inner(),
        Err(e) => {
            out.push(Finding::fail(
                "agent",
                format!("GetStatus refused: {}", e.message()),
                "run keyward doctor as root or a member of the admin group",
            ));
            return;
        }
    };
    out.push(Finding::ok(
        "agent",
        format!("keywardd {} (pid {}), {} keys", status.version, status.pid, status.keys),
    ));
    if !status.audit_error.is_empty() {
        out.push(Finding::fail(
            "agent",
            format!("the agent cannot write its audit log: {}", status.audit_error),
            format!("free space or fix permissions of {}", status.audit_file),
        ));
    }
    if let Some(b) = status.backend.as_ref().filter(|b| b.kind == "openbao") {
        if b.stale {
            out.push(Finding::fail(
                "backend",
                format!(
                    "not in sync with OpenBao at {} for {} s ({}): the agent serves its local copy",
                    b.address,
                    b.stale_seconds,
                    if b.last_error.is_empty() { "no error recorded" } else { &b.last_error }
                ),
                "bring OpenBao back or fix the agent's token and [backend] settings; `keyward status` shows the details",
            ));
        } else {
            out.push(Finding::ok(
                "backend",
                format!(
                    "in sync with OpenBao at {} ({} s ago), agent id {}",
                    b.address, b.stale_seconds, b.agent_id
                ),
            ));
        }
        if !b.listed {
            out.push(Finding::warn(
                "backend",
                format!(
                    "this agent ({}) is not in its own [[backend.member]] list as it is: the other agents refuse what it writes",
                    b.agent_id
                ),
                "run `keyward fleet member` and paste its entry into every agent's config (this one's too), then reload them",
            ));
        }
        for p in &b.problems {
            out.push(Finding::warn(
                "backend",
                format!("a record is not applied: {p}"),
                "see the problem's own advice; `keyward fleet status` shows every agent",
            ));
        }
    }
    if !status.open_alerts.is_empty() {
        out.push(Finding::warn(
            "alerts",
            format!("{} open alert(s)", status.open_alerts.len()),
            "see `keyward status`",
        ));
    }
    let keys = match admin.list_keys(proto::ListKeysRequest::default()).await {
        Ok(k) => k.into_inner().keys,
        Err(e) => {
            out.push(Finding::fail(
                "keys",
                format!("ListKeys refused: {}", e.message()),
                "run keyward doctor as root or a member of the admin group",
            ));
            return;
        }
    };
    let before = out.len();
    let now = SystemTime::now();
    for k in &keys {
        let (Ok(key), Some(primary)) = (KeyRef::from_proto(k.key.as_ref()), k.primary.as_ref()) else {
            continue;
        };
        let rotate = format!("rotate it: keyward rotate {key}");
        if let Some(expires) = primary.expires_at.as_ref().and_then(from_timestamp) {
            let when = humantime::format_rfc3339_seconds(expires);
            match expires.duration_since(now) {
                // Expired: callers are being refused now (the alert is
                // critical too).
                Err(_) => out.push(Finding::fail(
                    "keys",
                    format!("{key}: primary expired at {when}"),
                    &rotate,
                )),
                Ok(left) if left < EXPIRY_WARNING => out.push(Finding::warn(
                    "keys",
                    format!(
                        "{key}: primary expires at {when} (in {})",
                        crate::text::duration_text(left)
                    ),
                    &rotate,
                )),
                Ok(_) => {}
            }
        }
        if let Some(max_age) = config.detect_for(&key).max_age {
            let since = primary
                .promoted_at
                .as_ref()
                .or(primary.created_at.as_ref())
                .and_then(from_timestamp);
            if let Some(age) = since.and_then(|s| now.duration_since(s).ok()) {
                if age > max_age {
                    out.push(Finding::warn(
                        "keys",
                        format!(
                            "{key}: primary is {} old, older than max_age {}",
                            crate::text::duration_text(age),
                            crate::text::duration_text(max_age)
                        ),
                        &rotate,
                    ));
                }
            }
        }
    }
    if out.len() == before {
        out.push(Finding::ok(
            "keys",
            format!("{} keys, none expiring within 7 days or past max_age", keys.len()),
        ));
    }
}
