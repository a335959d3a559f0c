//! The email sink: one plain-text message per notification, over SMTP.
//!
//! Invariant: with `tls = "starttls"` nothing (no login, no message) is sent
//! before the connection is upgraded; a server that does not offer
//! STARTTLS gets no mail, and the failure is not retried. `tls = "tls"`
//! speaks TLS from the first byte. The password is only given to the
//! transport, and never shown.

use std::path::Path;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::error::{chain, DeliveryError, Redactor, SinkError};
use super::payload::{email_body, email_subject};
use crate::alerts::{Alert, Sensitive, SmtpTls};

/// An SMTP sink, ready to send. No `Debug`: the transport holds the
/// password.
pub(crate) struct SmtpSink {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
    /// `smtp://host:port (starttls)`, for logs.
    endpoint: String,
    /// STARTTLS is required.
    starttls: bool,
    redactor: Redactor,
}

/// The settings of an SMTP sink, borrowed from its [`SinkKind::Smtp`].
///
/// [`SinkKind::Smtp`]: crate::alerts::SinkKind::Smtp
pub(crate) struct SmtpSettings<'a> {
    pub(crate) host: &'a str,
    pub(crate) port: u16,
    pub(crate) tls: SmtpTls,
    pub(crate) username: Option<&'a str>,
    pub(crate) password: Option<&'a Sensitive>,
    pub(crate) from: &'a str,
    pub(crate) to: &'a [String],
    pub(crate) ca_file: Option<&'a Path>,
}

/// The name this machine greets servers with (`EHLO`): its host name, or
/// an address literal when it has none.
fn hello_name() -> ClientId {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "-.".contains(c)))
        .map_or_else(ClientId::default, ClientId::Domain)
}

impl SmtpSink {
    /// Checks the addresses and builds the transport (reads `ca_file`; no
    /// network).
    pub(crate) fn build(sink: &str, settings: SmtpSettings<'_>, timeout: Duration) -> Result<SmtpSink, SinkError> {
        let address = |field: &'static str, address: &str| {
            address.parse::<Mailbox>().map_err(|e| SinkError::Address {
                sink: sink.to_owned(),
                field,
                address: address.to_owned(),
                reason: e.to_string(),
            })
        };
        let from = address("from", settings.from)?;
        let to = settings
            .to
            .iter()
            .map(|a| address("to", a))
            .collect::<Result<Vec<_>, _>>()?;
        if to.is_empty() {
            return Err(SinkError::Address {
                sink: sink.to_owned(),
                field: "to",
                address: String::new(),
                reason: "no recipient is given".to_owned(),
            });
        }
        let mut redactor = Redactor::default();
        if let Some(password) = settings.password {
            redactor.add(password.expose());
        }

        crate::outbound::install_crypto_provider();
        let tls_parameters = || -> Result<TlsParameters, SinkError> {
            let setup_error = |reason: String| SinkError::Setup {
                sink: sink.to_owned(),
                what: "TLS settings",
                reason,
            };
            let mut builder = TlsParameters::builder(settings.host.to_owned());
            if let Some(path) = settings.ca_file {
                let ca_error = |reason: String| SinkError::CaFile {
                    sink: sink.to_owned(),
                    path: path.to_owned(),
                    reason,
                };
                let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
                if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                    return Err(ca_error("it holds no PEM certificate".to_owned()));
                }
                let certificate = Certificate::from_pem(&pem).map_err(|e| ca_error(chain(&e)))?;
                builder = builder.add_root_certificate(certificate);
            }
            builder.build_rustls().map_err(|e| setup_error(chain(&e)))
        };
        let (tls, mode) = match settings.tls {
            SmtpTls::StartTls => (Tls::Required(tls_parameters()?), "starttls"),
            SmtpTls::Tls => (Tls::Wrapper(tls_parameters()?), "tls"),
            SmtpTls::None => (Tls::None, "no tls"),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(settings.host)
            .port(settings.port)
            .tls(tls)
            .timeout(Some(timeout))
            .hello_name(hello_name());
        if let Some(username) = settings.username {
            let password = settings.password.map_or("", Sensitive::expose);
            builder = builder.credentials(Credentials::new(username.to_owned(), password.to_owned()));
        }
        Ok(SmtpSink {
            transport: builder.build(),
            from,
            to,
            endpoint: format!("smtp://{}:{} ({mode})", settings.host, settings.port),
            starttls: settings.tls == SmtpTls::StartTls,
            redactor,
        })
    }

    /// `smtp://host:port (mode)`.
    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// One attempt: connects, upgrades, logs in and sends the message.
    pub(crate) async fn deliver(&self, alert: &Alert) -> Result<(), DeliveryError> {
        let mut message = Message::builder()
            .from(self.from.clone())
            .subject(email_subject(alert))
            .header(ContentType::TEXT_PLAIN);
        for to in &self.to {
            message = message.to(to.clone());
        }
        let message = message
            .body(email_body(alert))
            .map_err(|e| DeliveryError::permanent(format!("cannot build the message: {e}")))?;
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
            Err(e) => {
                let text = self.redactor.scrub(&format!("{}: {}", self.endpoint, chain(&e)));
                // A refusal (5xx: bad login, unknown recipient) or a client
                // error (the server does not offer STARTTLS) will not change
                // on retry; a timeout, a dropped connection or a 4xx may.
                if e.is_client() && self.starttls && text.contains("STARTTLS") {
                    Err(DeliveryError::permanent(format!(
                        "{text}: nothing was sent in clear; make the server offer STARTTLS, or use tls = \"tls\" if it speaks SMTPS (port 465)"
                    )))
                } else if e.is_permanent() || e.is_client() {
                    Err(DeliveryError::permanent(text))
                } else {
                    Err(DeliveryError::transient(text))
                }
            }
        }
    }
}
