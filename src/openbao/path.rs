//! The names that go into a request URL: the server address, mounts and
//! secret paths, and the TTL strings OpenBao reads.
//!
//! The address and path checks live with the `[backend]` config
//! (`crate::config::backend::path`), so that a setting the config accepts
//! is never refused by a request later; they are re-exported here.

use std::time::Duration;

pub(crate) use crate::config::backend::path::{check_address, check_path};

/// A duration as OpenBao's duration strings write it: whole seconds,
/// rounded up (`"0s"` stays zero, which OpenBao reads as "never").
pub(super) fn seconds_string(duration: Duration) -> String {
    let mut seconds = duration.as_secs();
    if duration.subsec_nanos() > 0 {
        seconds += 1;
    }
    format!("{seconds}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_whole_seconds_rounded_up() {
        assert_eq!(seconds_string(Duration::ZERO), "0s");
        assert_eq!(seconds_string(Duration::from_secs(2)), "2s");
        assert_eq!(seconds_string(Duration::from_millis(1500)), "2s");
        assert_eq!(seconds_string(Duration::from_millis(1)), "1s");
        assert_eq!(seconds_string(Duration::from_secs(86_400)), "86400s");
    }
}
