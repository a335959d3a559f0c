//! How the CLI reads and shows keys, states and times, and the agent's
//! refusals.

use keyward::proto;
use keyward::secret::KeyRef;
use keyward::wire::from_timestamp;

/// `ENV/NAME` of a key the agent named; empty if it named none.
pub(crate) fn key_name(key: Option<&proto::KeyRef>) -> String {
    key.map(|k| format!("{}/{}", k.environment, k.name)).unwrap_or_default()
}

pub(crate) fn key_arg(text: &str) -> Result<KeyRef, String> {
    text.parse().map_err(|e: keyward::secret::NameError| e.to_string())
}

/// The agent's message, without tonic's framing.
pub(crate) fn refused(status: tonic::Status) -> String {
    format!("{} ({:?})", status.message(), status.code())
}

pub(crate) fn state_name(state: i32) -> &'static str {
    match proto::RotationState::try_from(state) {
        Ok(proto::RotationState::Steady) => "steady",
        Ok(proto::RotationState::Staged) => "staged",
        Ok(proto::RotationState::Promoted) => "promoted",
        _ => "unknown",
    }
}

/// `t` as RFC 3339 in whole seconds; `None` if there is no (valid) time.
pub(crate) fn rfc3339(t: Option<&prost_types::Timestamp>) -> Option<String> {
    t.and_then(from_timestamp)
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
}

/// [`rfc3339`], or `-` for no time.
pub(crate) fn time_text(t: Option<&prost_types::Timestamp>) -> String {
    rfc3339(t).unwrap_or_else(|| "-".into())
}

/// A failed call through keyward-client, in the words [`refused`] gives a
/// status of the agent: its message and its code.
pub(crate) fn client_error(e: keyward_client::Error) -> String {
    use keyward_client::Error;
    match e {
        Error::PermissionDenied(m) => format!("{m} ({:?})", tonic::Code::PermissionDenied),
        Error::NotFound(m) => format!("{m} ({:?})", tonic::Code::NotFound),
        Error::InvalidKey(m) => format!("{m} ({:?})", tonic::Code::InvalidArgument),
        Error::Rpc(status) => refused(status),
        // The agent went away, or the socket changed hands: keyward-client's
        // own message says so and what to do.
        other => other.to_string(),
    }
}

/// [`state_name`] of keyward-client's rotation state.
pub(crate) fn rotation_state(state: keyward_client::RotationState) -> &'static str {
    use keyward_client::RotationState;
    match state {
        RotationState::Steady => "steady",
        RotationState::Staged => "staged",
        RotationState::Promoted => "promoted",
        _ => "unknown",
    }
}

/// `t` as RFC 3339 in whole seconds, as [`rfc3339`] shows a wire time.
pub(crate) fn time_rfc3339(t: std::time::SystemTime) -> Option<String> {
    rfc3339(Some(&keyward::wire::timestamp(t)))
}
