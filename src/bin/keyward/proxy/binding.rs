//! Which host a key is bound to: the `@HOST[:PORT]` of `--key`.
//!
//! The proxy puts a key only into HTTPS requests to the host and port it is
//! bound to. So the binding must name one host the operator means: a DNS
//! name, checked here. An IP literal is refused (a certificate for it is
//! rarely what the provider serves, and it says nothing about who answers),
//! and so is a wildcard (it would bind the key to hosts nobody named).

use std::fmt;

use keyward::secret::KeyRef;

use crate::text::key_arg;

/// The port of a binding without one: HTTPS.
pub(crate) const HTTPS_PORT: u16 = 443;

/// A host and port a key is bound to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct HostPort {
    /// Lower case, without a trailing dot.
    pub host: String,
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl HostPort {
    /// `HOST[:PORT]` of a binding (default port 443), checked.
    pub(crate) fn parse_bound(text: &str) -> Result<HostPort, String> {
        let (host, port) = split_port(text, HTTPS_PORT)?;
        check_host(&host)?;
        Ok(HostPort { host, port })
    }

    /// The `host:port` of a CONNECT request or the authority of a URL (any
    /// host, including an IP literal; `default_port` when it has none).
    pub(crate) fn parse_target(text: &str, default_port: u16) -> Result<HostPort, String> {
        let (host, port) = split_port(text, default_port)?;
        if host.is_empty() {
            return Err(format!("{text:?} names no host"));
        }
        Ok(HostPort { host, port })
    }
}

/// `host[:port]`, `[v6]:port`; the host lower-cased, without a trailing dot.
fn split_port(text: &str, default_port: u16) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{text:?}: an IPv6 address needs its closing ']'"))?;
        match after.strip_prefix(':') {
            Some(p) => (format!("[{host}]"), Some(p)),
            None if after.is_empty() => (format!("[{host}]"), None),
            None => return Err(format!("{text:?}: unexpected {after:?} after the address")),
        }
    } else {
        match text.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (text.to_owned(), None),
        }
    };
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(format!("{text:?}: {p:?} is not a port (1-65535)")),
        },
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    Ok((host, port))
}

/// A DNS name a key may be bound to.
fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("no host: write the provider's DNS name, e.g. api.billing.example".into());
    }
    if host.starts_with('[') || host.parse::<std::net::IpAddr>().is_ok() || looks_like_ipv4(host) {
        return Err(format!(
            "{host:?} is an IP address: bind the key to the provider's DNS name (the name its certificate is for), e.g. api.billing.example"
        ));
    }
    if host.contains('*') {
        return Err(format!(
            "{host:?} is a wildcard: bind the key to each host that may receive it, one --key each"
        ));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if host.len() > 253 || !host.split('.').all(label_ok) {
        return Err(format!(
            "{host:?} is not a DNS name: use letters, digits, '-' and '.', e.g. api.billing.example"
        ));
    }
    Ok(())
}

/// `127.1`, `0x7f.1` and the like, which resolvers take as IPv4 addresses.
fn looks_like_ipv4(host: &str) -> bool {
    host.split('.')
        .all(|l| !l.is_empty() && (l.bytes().all(|b| b.is_ascii_digit()) || l.starts_with("0x")))
}

/// One `--key` of the proxy: a key, the variable it is given as (for
/// `keyward run`) and the host it is bound to.
#[derive(Clone, Debug)]
pub(crate) struct Binding {
    pub key: KeyRef,
    pub var: Option<String>,
    pub bound: HostPort,
}

/// `ENV/NAME@HOST[:PORT]` (`keyward proxy`).
pub(crate) fn parse_key_at(spec: &str) -> Result<Binding, String> {
    let (key, at) = spec.split_once('@').ok_or_else(|| {
        format!("--key {spec:?}: name the host the key may be sent to: ENV/NAME@HOST[:PORT], e.g. prod/billing-api@api.billing.example")
    })?;
    let key = key_arg(key).map_err(|e| format!("--key {spec:?}: {e}"))?;
    let bound = HostPort::parse_bound(at).map_err(|e| format!("--key {spec:?}: {e}"))?;
    Ok(Binding { key, var: None, bound })
}

/// `ENV/NAME=VAR@HOST[:PORT]` (`keyward run --proxy`).
pub(crate) fn parse_key_var_at(
    spec: &str,
    var_of: impl Fn(&str) -> Result<(KeyRef, String), String>,
) -> Result<Binding, String> {
    let Some((key_var, at)) = spec.rsplit_once('@') else {
        return Err(format!(
            "--key {spec:?}: with --proxy, name the host the key may be sent to: ENV/NAME=VAR@HOST[:PORT], e.g. prod/billing-api=BILLING_API_KEY@api.billing.example"
        ));
    };
    let (key, var) = var_of(key_var)?;
    let bound = HostPort::parse_bound(at).map_err(|e| format!("--key {spec:?}: {e}"))?;
    Ok(Binding {
        key,
        var: Some(var),
        bound,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_hosts() {
        let hp = HostPort::parse_bound("API.Billing.Example.").unwrap();
        assert_eq!(hp.to_string(), "api.billing.example:443");
        assert_eq!(HostPort::parse_bound("localhost:8443").unwrap().port, 8443);
        for (bad, why) in [
            ("", "no host"),
            ("127.0.0.1", "IP address"),
            ("127.1:443", "IP address"),
            ("[::1]:443", "IP address"),
            ("*.billing.example", "wildcard"),
            ("api_billing.example", "not a DNS name"),
            ("api..example", "not a DNS name"),
            ("api.example:0", "not a port"),
            ("api.example:99999", "not a port"),
            ("api.example:https", "not a port"),
        ] {
            let e = HostPort::parse_bound(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn targets() {
        assert_eq!(HostPort::parse_target("[::1]:8443", 443).unwrap().host, "[::1]");
        assert_eq!(HostPort::parse_target("example.org", 80).unwrap().port, 80);
        assert!(HostPort::parse_target(":443", 443).is_err());
    }

    #[test]
    fn key_specs() {
        let b = parse_key_at("prod/billing-api@api.billing.example").unwrap();
        assert_eq!(
            (b.key.to_string(), b.bound.to_string()),
            ("prod/billing-api".into(), "api.billing.example:443".into())
        );
        assert!(parse_key_at("prod/billing-api").unwrap_err().contains("ENV/NAME@HOST"));
        assert!(parse_key_at("prod/billing-api@10.0.0.1")
            .unwrap_err()
            .contains("IP address"));
        let var_of = |s: &str| -> Result<(KeyRef, String), String> {
            let (k, v) = s.split_once('=').ok_or("no =")?;
            Ok((key_arg(k)?, v.to_owned()))
        };
        let b = parse_key_var_at("prod/a=A_KEY@localhost:9443", var_of).unwrap();
        assert_eq!((b.var.as_deref(), b.bound.port), (Some("A_KEY"), 9443));
        assert!(parse_key_var_at("prod/a=A_KEY", var_of)
            .unwrap_err()
            .contains("VAR@HOST"));
    }
}
