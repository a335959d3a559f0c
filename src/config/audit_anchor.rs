//! `[[audit.anchor]]`: where the agent publishes the audit chain's head
//! (seq, hash, time, install id), so that something outside the host
//! remembers what the chain was. Two kinds: `exec` (a program gets the
//! JSON on stdin) and `webhook` (an HTTP POST of the JSON).
//!
//! A webhook's URL and header values may hold tokens: they are kept as
//! [`Sensitive`] and never quoted in errors or logs.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::alerts::tokens::Sensitive;
use super::error::{ConfigError, Source};
use super::hooks::HookCommand;
use super::value::positive_duration;

/// The name of the fleet backend's anchors (in metrics and logs): no
/// `[[audit.anchor]]` may take it.
pub const BACKEND_ANCHOR: &str = "backend";

/// Default `timeout` of an anchor.
pub const DEFAULT_ANCHOR_TIMEOUT: Duration = Duration::from_secs(10);

/// One anchor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnchorConfig {
    /// For logs and metrics: `name`, or `KIND-N` (1-based).
    pub name: String,
    /// Where the head goes.
    pub kind: AnchorKind,
    /// How long one publication may take.
    pub timeout: Duration,
}

/// Where an anchor publishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AnchorKind {
    /// A program run with the head as one JSON line on stdin.
    Exec(HookCommand),
    /// An HTTP POST of the head as JSON.
    Webhook {
        /// `http://` or `https://` URL (may hold a token).
        url: Sensitive,
        /// Extra headers (values may hold tokens).
        headers: Vec<(String, Sensitive)>,
    },
}

/// One `[[audit.anchor]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAnchor {
    kind: Spanned<String>,
    name: Option<String>,
    command: Option<Spanned<Vec<String>>>,
    url: Option<Spanned<String>>,
    headers: Option<BTreeMap<String, String>>,
    timeout: Option<Spanned<String>>,
}

/// Validates every `[[audit.anchor]]`.
pub(super) fn anchors(src: &Source<'_>, raw: Vec<RawAnchor>) -> Result<Vec<AnchorConfig>, ConfigError> {
    raw.into_iter().enumerate().map(|(i, a)| anchor(src, i, a)).collect()
}

fn anchor(src: &Source<'_>, index: usize, raw: RawAnchor) -> Result<AnchorConfig, ConfigError> {
    let at = src.at(&raw.kind.span());
    let span = raw.kind.span();
    let invalid = |why: String| src.invalid(&span, format!("[[audit.anchor]] at {at}: {why}"));
    let timeout = match &raw.timeout {
        None => DEFAULT_ANCHOR_TIMEOUT,
        Some(v) => positive_duration(src, v, "timeout")?,
    };
    let kind = match raw.kind.get_ref().as_str() {
        "exec" => {
            if raw.url.is_some() || raw.headers.is_some() {
                return Err(invalid(
                    "an exec anchor takes `command`, not `url` or `headers`: remove them, or set kind = \"webhook\""
                        .into(),
                ));
            }
            let Some(command) = raw.command else {
                return Err(invalid(
                    "an exec anchor needs `command`, e.g. command = [\"/usr/local/bin/keep-anchor\"]".into(),
                ));
            };
            AnchorKind::Exec(HookCommand::new(command.into_inner()).map_err(|e| invalid(format!("command {e}")))?)
        }
        "webhook" => {
            if raw.command.is_some() {
                return Err(invalid(
                    "a webhook anchor takes `url` (and `headers`), not `command`: remove it, or set kind = \"exec\""
                        .into(),
                ));
            }
            let Some(url) = raw.url else {
                return Err(invalid(
                    "a webhook anchor needs `url`, e.g. url = \"https://anchors.example/keyward\"".into(),
                ));
            };
            let scheme_ok = url.get_ref().starts_with("http://") || url.get_ref().starts_with("https://");
            if !scheme_ok || url.get_ref().len() <= "https://".len() {
                // Never quote the URL: it may hold a token.
                return Err(invalid(
                    "`url` is not an http:// or https:// URL: write the receiver's full URL".into(),
                ));
            }
            AnchorKind::Webhook {
                url: Sensitive::new(url.into_inner()),
                headers: raw
                    .headers
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, Sensitive::new(v)))
                    .collect(),
            }
        }
        other => {
            return Err(invalid(format!(
                "kind = {other:?} is not an anchor kind: use \"exec\" or \"webhook\""
            )))
        }
    };
    if raw.name.as_deref() == Some(BACKEND_ANCHOR) {
        return Err(invalid(format!(
            "name = {BACKEND_ANCHOR:?} is kept for the fleet backend's anchors (fleet mode publishes there itself): choose another name"
        )));
    }
    let name = raw
        .name
        .unwrap_or_else(|| format!("{}-{}", raw.kind.get_ref(), index + 1));
    Ok(AnchorConfig { name, kind, timeout })
}
