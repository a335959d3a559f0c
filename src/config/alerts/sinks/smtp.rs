//! An `smtp` sink's settings: the server, how the connection is protected,
//! the login and the addresses. A password is never sent without TLS.

use std::ops::Range;
use std::path::PathBuf;

use toml::Spanned;

use super::kind::{SinkKind, SmtpTls};
use crate::config::alerts::tokens::token;
use crate::config::error::{ConfigError, Source};
use crate::config::value::RawList;

/// The settings of `[[alerts.sink]]` that an `smtp` sink takes, as written.
pub(super) struct RawSmtp {
    pub(super) host: Option<Spanned<String>>,
    pub(super) port: Option<Spanned<u16>>,
    pub(super) tls: Option<Spanned<String>>,
    pub(super) username: Option<Spanned<String>>,
    pub(super) password: Option<Spanned<String>>,
    pub(super) password_file: Option<Spanned<PathBuf>>,
    pub(super) from: Option<Spanned<String>>,
    pub(super) to: RawList<String>,
}

pub(super) fn smtp(
    src: &Source<'_>,
    here: &str,
    span: &Range<usize>,
    raw: RawSmtp,
    ca_file: Option<PathBuf>,
) -> Result<SinkKind, ConfigError> {
    let host = match raw.host {
        Some(h) if !h.get_ref().trim().is_empty() => h.into_inner().trim().to_owned(),
        Some(h) => return Err(src.invalid(&h.span(), format!("host in {here} is empty: name the SMTP server"))),
        None => {
            return Err(src.invalid(
                span,
                format!("{here} is an smtp sink without host: add host = \"smtp.example.com\""),
            ))
        }
    };
    let tls = match &raw.tls {
        None => SmtpTls::StartTls,
        Some(v) => match v.get_ref().as_str() {
            "starttls" => SmtpTls::StartTls,
            "tls" => SmtpTls::Tls,
            "none" => SmtpTls::None,
            other => {
                return Err(src.invalid(
                    &v.span(),
                    format!("tls = {other:?} in {here} is not a mode: use \"starttls\" (default), \"tls\" (port 465) or \"none\" (loopback relays only)"),
                ))
            }
        },
    };
    let port = raw.port.map(Spanned::into_inner).unwrap_or(match tls {
        SmtpTls::StartTls => 587,
        SmtpTls::Tls => 465,
        SmtpTls::None => 25,
    });
    let address = |v: &Spanned<String>, key: &str| {
        let a = v.get_ref().trim();
        let ok = a.parse::<lettre::Address>().is_ok();
        if ok {
            Ok(a.to_owned())
        } else {
            Err(src.invalid(
                &v.span(),
                format!("{key} = {a:?} in {here} is not an email address: write it as user@example.com"),
            ))
        }
    };
    let from = match &raw.from {
        Some(v) => address(v, "from")?,
        None => {
            return Err(src.invalid(
                span,
                format!("{here} is an smtp sink without from: add from = \"keyward@example.com\""),
            ))
        }
    };
    let mut to = Vec::new();
    if let Some(list) = &raw.to {
        for v in list.get_ref() {
            to.push(address(v, "to")?);
        }
    }
    if to.is_empty() {
        return Err(src.invalid(
            &raw.to.as_ref().map_or(span.clone(), Spanned::span),
            format!("{here} sends to no one: add to = [\"oncall@example.com\"]"),
        ));
    }
    let username = raw.username.map(Spanned::into_inner);
    let password = match (raw.password, raw.password_file) {
        (None, None) => None,
        (p, f) => Some(token(src, here, span, p, f, "password")?),
    };
    if username.is_some() != password.is_some() {
        return Err(src.invalid(
            span,
            format!("{here} has a username without a password or the other way round: give both to log in, or neither"),
        ));
    }
    if tls == SmtpTls::None && password.is_some() {
        return Err(src.invalid(
            span,
            format!("{here} would send its password without TLS: set tls = \"starttls\" or \"tls\""),
        ));
    }
    Ok(SinkKind::Smtp {
        host,
        port,
        tls,
        username,
        password,
        from,
        to,
        ca_file,
    })
}
