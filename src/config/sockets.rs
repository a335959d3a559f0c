//! `[sockets]`: who may connect to `keys.sock` and `admin.sock` (group and
//! mode), and whether `creds.sock` is served.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

use super::accounts::lookup_group;
use super::error::{ConfigError, Source};

/// Default `sockets.service_mode`.
pub const DEFAULT_SERVICE_MODE: u32 = 0o660;

/// `[sockets]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSockets {
    service_group: Option<Spanned<StrOrInt>>,
    service_mode: Option<Spanned<StrOrInt>>,
    admin_group: Option<Spanned<StrOrInt>>,
    credentials: Option<bool>,
}

/// `[sockets]`, validated. [`super::Config`] keeps these as its own fields.
pub(super) struct Sockets {
    /// Group (gid) owning `keys.sock`; `None` leaves root's group.
    pub(super) service_group: Option<u32>,
    /// Mode of `keys.sock`: 0o600, 0o660 or 0o666.
    pub(super) service_mode: u32,
    /// Group (gid) that may use `admin.sock`; `None`: root only.
    pub(super) admin_group: Option<u32>,
    /// Serve `creds.sock`.
    pub(super) credentials: bool,
}

impl RawSockets {
    pub(super) fn validate(self, src: &Source<'_>) -> Result<Sockets, ConfigError> {
        Ok(Sockets {
            service_group: (self.service_group)
                .map(|g| socket_group(src, &g, "service_group"))
                .transpose()?,
            admin_group: (self.admin_group)
                .map(|g| socket_group(src, &g, "admin_group"))
                .transpose()?,
            service_mode: match self.service_mode {
                None => DEFAULT_SERVICE_MODE,
                Some(m) => service_mode(src, &m)?,
            },
            credentials: self.credentials.unwrap_or(false),
        })
    }
}

fn service_mode(src: &Source<'_>, v: &Spanned<StrOrInt>) -> Result<u32, ConfigError> {
    let mode = match v.get_ref() {
        StrOrInt::Str(s) => {
            let digits = s.strip_prefix("0o").unwrap_or(s);
            if digits.is_empty() || digits.len() > 4 {
                None
            } else {
                u32::from_str_radix(digits, 8).ok()
            }
        }
        StrOrInt::Int(i) => u32::try_from(*i).ok(),
    };
    match mode {
        Some(m @ (0o600 | 0o660 | 0o666)) => Ok(m),
        _ => Err(src.invalid(
            &v.span(),
            format!(
                "service_mode = {} at {} is not allowed: use \"0660\" (members of service_group may connect), \"0600\" (root only) or \"0666\" (every local user); the socket needs read and write, never an execute bit",
                v.get_ref(),
                src.at(&v.span())
            ),
        )),
    }
}

fn socket_group(src: &Source<'_>, v: &Spanned<StrOrInt>, key: &str) -> Result<u32, ConfigError> {
    match v.get_ref() {
        StrOrInt::Int(i) => u32::try_from(*i).map_err(|_| {
            src.invalid(
                &v.span(),
                format!(
                    "{key} = {i} at {} is not a gid: give a group name or a gid from 0 to {}",
                    src.at(&v.span()),
                    u32::MAX
                ),
            )
        }),
        StrOrInt::Str(s) => match s.parse::<u32>() {
            Ok(gid) => Ok(gid),
            Err(_) => lookup_group(src, s, &v.span(), &format!("{key} at")),
        },
    }
}

/// A value that may be written as a string or an integer: groups (name or
/// gid) and modes ("0660" or 0o660).
enum StrOrInt {
    Str(String),
    Int(i64),
}

impl fmt::Display for StrOrInt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StrOrInt::Str(s) => write!(f, "{s:?}"),
            StrOrInt::Int(i) => write!(f, "{i}"),
        }
    }
}

impl<'de> Deserialize<'de> for StrOrInt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<StrOrInt, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = StrOrInt;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an integer")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StrOrInt, E> {
                Ok(StrOrInt::Str(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<StrOrInt, E> {
                Ok(StrOrInt::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<StrOrInt, E> {
                i64::try_from(v)
                    .map(StrOrInt::Int)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }
        }
        d.deserialize_any(V)
    }
}
