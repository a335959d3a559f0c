//! `[metrics]`: where the Prometheus endpoint listens ([`MetricsListen`]).
//!
//! The endpoint has no authentication, so it is only ever bound where the
//! host already decides who may connect: a loopback address, or a Unix
//! socket whose file mode and directory do. A non-loopback address is
//! refused here, when the setting is parsed, not when it is bound, so a
//! bad config fails at load with the reason and the way out. Binding is
//! [`crate::metrics`]' job.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::Deserialize;
use toml::Spanned;

use super::error::{ConfigError, Source};

/// Where the metrics endpoint listens: `127.0.0.1:9464`, `[::1]:9464` or
/// `unix:/run/keyward/metrics.sock`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetricsListen {
    /// A loopback address and port.
    Tcp(SocketAddr),
    /// An absolute Unix socket path.
    Unix(PathBuf),
}

/// Why a metrics listen setting was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ListenError {
    /// An address other than loopback.
    #[error(
        "refusing to serve metrics on {0}: the metrics endpoint has no authentication, so it only binds to loopback; \
         use 127.0.0.1:PORT or [::1]:PORT and put an authenticating proxy in front, or use unix:/ABSOLUTE/PATH"
    )]
    NotLoopback(SocketAddr),
    /// A relative Unix socket path.
    #[error("metrics socket path {0} is relative: use an absolute path, e.g. unix:/run/keyward/metrics.sock")]
    RelativePath(PathBuf),
    /// Neither `IP:PORT` nor `unix:PATH`.
    #[error(
        "invalid metrics address {0:?}: expected IP:PORT (127.0.0.1:9464, [::1]:9464; host names such as \
         localhost are not accepted) or unix:/ABSOLUTE/PATH"
    )]
    Invalid(String),
}

impl FromStr for MetricsListen {
    type Err = ListenError;

    fn from_str(s: &str) -> Result<MetricsListen, ListenError> {
        if let Some(path) = s.strip_prefix("unix:") {
            let path = PathBuf::from(path);
            return if path.is_absolute() && path.file_name().is_some() {
                Ok(MetricsListen::Unix(path))
            } else if path.is_absolute() || path.as_os_str().is_empty() {
                Err(ListenError::Invalid(s.to_owned()))
            } else {
                Err(ListenError::RelativePath(path))
            };
        }
        let addr: SocketAddr = s.parse().map_err(|_| ListenError::Invalid(s.to_owned()))?;
        // `::ffff:127.0.0.1` is loopback too.
        if !addr.ip().to_canonical().is_loopback() {
            return Err(ListenError::NotLoopback(addr));
        }
        Ok(MetricsListen::Tcp(addr))
    }
}

impl fmt::Display for MetricsListen {
    /// The form [`FromStr`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetricsListen::Tcp(addr) => write!(f, "{addr}"),
            MetricsListen::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// `[metrics]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    listen: Option<Spanned<String>>,
}

impl RawMetrics {
    /// The listen address, if one is set (the endpoint is off otherwise).
    pub(super) fn validate(self, src: &Source<'_>) -> Result<Option<MetricsListen>, ConfigError> {
        let Some(v) = self.listen else { return Ok(None) };
        v.get_ref()
            .parse::<MetricsListen>()
            .map(Some)
            .map_err(|e| src.invalid(&v.span(), format!("[metrics] listen at {}: {e}", src.at(&v.span()))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_loopback_and_absolute_unix_paths_only() {
        let ok = [
            ("127.0.0.1:9464", MetricsListen::Tcp("127.0.0.1:9464".parse().unwrap())),
            ("127.1.2.3:0", MetricsListen::Tcp("127.1.2.3:0".parse().unwrap())),
            ("[::1]:9464", MetricsListen::Tcp("[::1]:9464".parse().unwrap())),
            (
                "[::ffff:127.0.0.1]:9464",
                MetricsListen::Tcp("[::ffff:127.0.0.1]:9464".parse().unwrap()),
            ),
            (
                "unix:/run/keyward/metrics.sock",
                MetricsListen::Unix("/run/keyward/metrics.sock".into()),
            ),
        ];
        for (input, want) in ok {
            let got: MetricsListen = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(got, want, "{input}");
            assert_eq!(got.to_string(), input, "Display reads back");
        }

        let refused = [
            ("0.0.0.0:9464", "refusing to serve metrics on 0.0.0.0:9464"),
            ("10.1.2.3:9464", "refusing to serve metrics on 10.1.2.3:9464"),
            ("[::]:9464", "refusing to serve metrics on [::]:9464"),
            ("[2001:db8::1]:9464", "authenticating proxy"),
            ("unix:metrics.sock", "metrics.sock is relative"),
            ("unix:./run/m.sock", "is relative"),
            ("unix:", "invalid metrics address"),
            ("unix:/", "invalid metrics address"),
            ("localhost:9464", "host names such as localhost are not accepted"),
            ("127.0.0.1", "invalid metrics address"),
            ("", "invalid metrics address"),
        ];
        for (input, want) in refused {
            let err = input.parse::<MetricsListen>().unwrap_err().to_string();
            assert!(err.contains(want), "{input}: {err}");
        }
    }
}
