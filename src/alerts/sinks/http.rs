//! The HTTP sinks: the generic JSON webhook, Slack and PagerDuty Events v2.
//!
//! Each sink has its own `reqwest` client: its timeout, its extra CA roots,
//! a `keywardd/VERSION` User-Agent, and **no redirects** (a redirect could
//! carry the request, and its token, to another host). A 2xx answer is a
//! delivery; 429, 5xx, timeouts and connection errors are worth retrying;
//! any other answer fails at once.
//!
//! Invariant: the URL, the header values and the routing key may hold
//! tokens and never reach a message. The sink is described as
//! `scheme://host:port` only, `reqwest` errors are stripped of their URL,
//! and every message is scrubbed (see [`Redactor`]).

use std::path::Path;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{StatusCode, Url};

use super::error::{chain, DeliveryError, Redactor, SinkError};
use super::payload::{pagerduty_json, payload_json, slack_json};
use crate::alerts::{Alert, Sensitive};

/// How much of an error answer's body is read for the log.
const ANSWER_READ_BYTES: usize = 1024;
/// How much of it is shown.
const ANSWER_SHOWN_CHARS: usize = 200;

/// What the sink posts.
pub(crate) enum Format {
    /// [`payload_json`].
    Generic,
    /// [`slack_json`].
    Slack,
    /// [`pagerduty_json`], addressed with this routing key.
    PagerDuty {
        /// The integration's key (a token).
        routing_key: Sensitive,
    },
}

/// A webhook, Slack or PagerDuty sink, ready to post. No `Debug`: it holds
/// the URL, the headers and the routing key.
pub(crate) struct HttpSink {
    client: reqwest::Client,
    url: Url,
    headers: HeaderMap,
    format: Format,
    /// `scheme://host:port`, the only description of it in logs.
    endpoint: String,
    redactor: Redactor,
}

/// `scheme://host:port` of a URL: what logs may say about an endpoint.
pub(crate) fn endpoint_of(url: &Url) -> String {
    format!(
        "{}://{}:{}",
        url.scheme(),
        url.host_str().unwrap_or_default(),
        url.port_or_known_default().unwrap_or_default()
    )
}

/// Reads a PEM file of CA certificates (at least one).
fn read_ca_file(sink: &str, path: &Path) -> Result<Vec<reqwest::Certificate>, SinkError> {
    let error = |reason: String| SinkError::CaFile {
        sink: sink.to_owned(),
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| error(chain(&e.without_url())))?;
    if certs.is_empty() {
        return Err(error("it holds no PEM certificate".to_owned()));
    }
    Ok(certs)
}

impl HttpSink {
    /// Checks the settings and builds the client (reads `ca_file`; no
    /// network).
    pub(crate) fn build(
        sink: &str,
        url: &Sensitive,
        headers: &[(String, Sensitive)],
        ca_file: Option<&Path>,
        format: Format,
        timeout: Duration,
    ) -> Result<HttpSink, SinkError> {
        let url_error = |reason: String| SinkError::Url {
            sink: sink.to_owned(),
            reason,
        };
        // url's parse errors describe the problem, never the input.
        let parsed = Url::parse(url.expose()).map_err(|e| url_error(e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(url_error(format!(
                "the scheme is {:?}, not http or https",
                parsed.scheme()
            )));
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(url_error("it has no host".to_owned()));
        }
        let mut redactor = Redactor::default();
        redactor.add_url(url.expose(), &parsed);

        let mut header_map = HeaderMap::new();
        for (name, value) in headers {
            let header_error = |reason| SinkError::Header {
                sink: sink.to_owned(),
                header: name.clone(),
                reason,
            };
            let header =
                HeaderName::from_bytes(name.as_bytes()).map_err(|_| header_error("is not a valid header name"))?;
            let mut value_ = HeaderValue::from_str(value.expose())
                .map_err(|_| header_error("has a value with characters a header cannot carry"))?;
            // Kept out of http's own Debug output too.
            value_.set_sensitive(true);
            header_map.append(header, value_);
            redactor.add(value.expose());
            if let Some((_, credential)) = value.expose().split_once(' ') {
                redactor.add(credential);
            }
        }
        if let Format::PagerDuty { routing_key } = &format {
            redactor.add(routing_key.expose());
        }

        crate::outbound::install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(crate::outbound::USER_AGENT)
            .referer(false);
        if let Some(path) = ca_file {
            builder = builder.tls_certs_merge(read_ca_file(sink, path)?);
        }
        let client = builder.build().map_err(|e| SinkError::Setup {
            sink: sink.to_owned(),
            what: "HTTP client",
            reason: redactor.scrub(&chain(&e.without_url())),
        })?;
        Ok(HttpSink {
            client,
            endpoint: endpoint_of(&parsed),
            url: parsed,
            headers: header_map,
            format,
            redactor,
        })
    }

    /// `scheme://host:port`.
    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// One attempt: posts the alert in the sink's format.
    pub(crate) async fn deliver(&self, alert: &Alert) -> Result<(), DeliveryError> {
        let body = match &self.format {
            Format::Generic => payload_json(alert),
            Format::Slack => slack_json(alert),
            Format::PagerDuty { routing_key } => pagerduty_json(alert, routing_key.expose()),
        };
        let sent = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .json(&body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(e) => return Err(self.send_error(e)),
        };
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let answer = self.answer_excerpt(response).await;
        let message = format!("{} answered HTTP {status}{answer}", self.endpoint);
        Err(if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            DeliveryError::transient(message)
        } else if status.is_redirection() {
            DeliveryError::permanent(format!(
                "{message}: redirects are not followed (they could carry the token elsewhere): set the sink's url to the final address"
            ))
        } else {
            DeliveryError::permanent(format!(
                "{message}: not retried; check the sink's url, token and headers"
            ))
        })
    }

    /// A request that got no answer, described without its URL.
    fn send_error(&self, e: reqwest::Error) -> DeliveryError {
        let e = e.without_url();
        let what = if e.is_timeout() {
            "no answer in time"
        } else if e.is_connect() {
            "cannot connect"
        } else {
            "request failed"
        };
        let message = self
            .redactor
            .scrub(&format!("{}: {what}: {}", self.endpoint, chain(&e)));
        if e.is_builder() {
            DeliveryError::permanent(message)
        } else {
            DeliveryError::transient(message)
        }
    }

    /// `: "the start of the body"` of an error answer (scrubbed, one line),
    /// or nothing.
    async fn answer_excerpt(&self, mut response: reqwest::Response) -> String {
        let mut bytes = Vec::new();
        while bytes.len() < ANSWER_READ_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
                _ => break,
            }
        }
        if bytes.len() >= ANSWER_READ_BYTES {
            // Cut short: a token may straddle the cut, and a piece of one
            // would not be scrubbed. Keep only bytes that cannot hold such
            // a piece (tokens are far shorter than half of what was read).
            bytes.truncate(ANSWER_READ_BYTES / 2);
        }
        let text: String = String::from_utf8_lossy(&bytes)
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let text = self.redactor.scrub(text.trim());
        if text.is_empty() {
            return String::new();
        }
        let mut shown: String = text.chars().take(ANSWER_SHOWN_CHARS).collect();
        if shown.len() < text.len() {
            shown.push('…');
        }
        format!(": {shown:?}")
    }
}

#[cfg(test)]
mod tests;
