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

/// A duration as every command shows one ("2h 5m", "6days 23h", "40s"):
/// humantime's format, rounded to what a reader needs: whole seconds under
/// an hour, whole minutes under a day, whole hours beyond.
pub(crate) fn duration_text(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    let unit = match secs {
        0..3600 => 1,
        3600..86400 => 60,
        _ => 3600,
    };
    humantime::format_duration(std::time::Duration::from_secs(secs / unit * unit)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations_are_rounded_to_what_a_reader_needs() {
        let table = [
            (Duration::from_millis(40_900), "40s"),
            (Duration::from_secs(3599), "59m 59s"),
            (Duration::from_secs(2 * 3600 + 5 * 60 + 59), "2h 5m"),
            (Duration::from_secs(6 * 86400 + 23 * 3600 + 59 * 60), "6days 23h"),
            (Duration::ZERO, "0s"),
        ];
        for (d, want) in table {
            assert_eq!(duration_text(d), want, "{d:?}");
        }
    }
}
