//! The key-injecting proxy of `keyward run --proxy` and `keyward proxy`.
//!
//! A program is given placeholders instead of keys (`placeholder.rs`) and
//! sends its HTTP(S) traffic through this proxy. For a host a key is bound
//! to (`binding.rs`), the proxy terminates the program's TLS with a
//! certificate from its ephemeral CA (`ca.rs`), swaps the placeholders in
//! the request's headers for the key's current secret, and sends the
//! request on over TLS verified against the system roots (`forward.rs`).
//! A 401 or 403 to the primary is replayed with the fallback when the body
//! was small enough to keep; refusals and successful use are reported to
//! the agent (`report.rs`). The keys follow the agent through the client
//! library's handles, so a rotation never touches the program.
//!
//! Invariants:
//!
//! - A secret is put only into the headers of an HTTPS request to the
//!   host and port its key is bound to. A placeholder headed anywhere else
//!   (another host, another port, plain HTTP) is not replaced: the request
//!   is refused (403), reported and audited as a misdirected key.
//! - CONNECT to a host that no key is bound to is tunnelled byte for byte;
//!   the proxy never sees inside it.
//! - Only the processes the proxy serves may use it: the connecting
//!   socket's owner must be an allowed uid (`peer.rs`), and with
//!   [`Access::Credentials`] every proxy request must carry the run's
//!   credentials. Anything else gets 407 and is counted.
//! - No secret is logged, printed or put in an error: messages name keys,
//!   versions and hosts.

mod binding;
mod body;
mod ca;
mod entry;
mod forward;
mod peer;
mod placeholder;
mod report;
mod upstream;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use keyward_client::{Client, KeyHandle};
use tokio::net::TcpListener;

pub(crate) use binding::{parse_key_at, parse_key_var_at, Binding, HostPort};
pub(crate) use placeholder::KeyPlaceholders;

use placeholder::Placeholders;

/// Who may use the proxy.
pub(crate) enum Access {
    /// `keyward run --proxy`: sockets of this uid, and every proxy request
    /// carries this `Proxy-Authorization` value (the credentials put into
    /// the child's proxy URL).
    Credentials { uid: u32, user: String, password: String },
    /// `keyward proxy`: sockets of these uids.
    Uids(Vec<u32>),
}

/// A local path prefix sent on to an upstream (`keyward proxy --route`).
#[derive(Clone, Debug)]
pub(crate) struct Route {
    /// `/billing`: requests for `/billing/…` go to the upstream.
    pub prefix: String,
    /// The upstream, over HTTPS.
    pub upstream: HostPort,
}

impl Route {
    /// `PREFIX=https://HOST[:PORT]`.
    pub(crate) fn parse(spec: &str) -> Result<Route, String> {
        let (prefix, url) = spec.split_once('=').ok_or_else(|| {
            format!("--route {spec:?}: write it as PREFIX=https://HOST, e.g. /billing=https://api.billing.example")
        })?;
        if !prefix.starts_with('/') || prefix.len() < 2 || prefix.ends_with('/') {
            return Err(format!(
                "--route {spec:?}: the prefix must start with '/' and not end with one, e.g. /billing"
            ));
        }
        let Some(authority) = url.strip_prefix("https://") else {
            return Err(format!(
                "--route {spec:?}: the upstream must be https://HOST[:PORT] (keys are only sent over HTTPS)"
            ));
        };
        let upstream =
            HostPort::parse_bound(authority.trim_end_matches('/')).map_err(|e| format!("--route {spec:?}: {e}"))?;
        Ok(Route {
            prefix: prefix.to_owned(),
            upstream,
        })
    }
}

/// What the proxy is started with.
pub(crate) struct Settings {
    pub bindings: Vec<Binding>,
    /// Largest request body kept for a replay with the fallback.
    pub replay_limit: usize,
    /// How long a version the provider refused is skipped for.
    pub cooldown: Duration,
    /// Extra roots for the upstream connections.
    pub upstream_ca: Option<PathBuf>,
    pub access: Access,
    pub routes: Vec<Route>,
    /// Placeholders derived from the key names (`keyward proxy`) instead
    /// of random ones.
    pub stable_placeholders: bool,
}

/// A version the provider refused, skipped until `until` while the key's
/// state stays the one it was refused in.
#[derive(Clone, Copy)]
struct Refused {
    version: u64,
    /// The provider's answer (401, 403).
    status: u16,
    generation: u64,
    until: Instant,
}

/// One key of the proxy.
struct ProxiedKey {
    binding: Binding,
    handle: KeyHandle,
    refused: Mutex<Option<Refused>>,
}

impl ProxiedKey {
    /// The provider's answer if it refused `version`, the primary of the
    /// key's state `generation`, within the cool-down.
    fn primary_refused(&self, generation: u64, version: u64) -> Option<u16> {
        let r = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
        r.filter(|r| r.generation == generation && r.version == version && Instant::now() < r.until)
            .map(|r| r.status)
    }

    fn note_refused(&self, generation: u64, version: u64, status: u16, cooldown: Duration) {
        *self.refused.lock().unwrap_or_else(PoisonError::into_inner) = Some(Refused {
            version,
            status,
            generation,
            until: Instant::now() + cooldown,
        });
    }
}

/// Counts kept by the proxy.
#[derive(Default)]
pub(crate) struct Stats {
    /// Connections or requests refused with 407.
    pub refused_access: AtomicU64,
    /// Requests refused for carrying a placeholder to the wrong host.
    pub misdirected: AtomicU64,
    /// Requests replayed with the fallback.
    pub replays: AtomicU64,
    /// When a refusal was last printed.
    last_printed: Mutex<Option<Instant>>,
}

/// What every connection task shares.
pub(crate) struct Shared {
    keys: Vec<ProxiedKey>,
    placeholders: Placeholders,
    interception: ca::Interception,
    upstream: upstream::Upstream,
    access: Access,
    /// `Basic base64(user:password)` for [`Access::Credentials`].
    authorization: Option<String>,
    routes: Vec<Route>,
    replay_limit: usize,
    cooldown: Duration,
    reporter: report::Reporter,
    stats: Arc<Stats>,
    /// How messages start: `keyward run` or `keyward proxy`.
    who: &'static str,
}

impl Shared {
    /// The key bound to `target`, if any (by index).
    fn bound_at(&self, target: &HostPort) -> bool {
        self.keys.iter().any(|k| &k.binding.bound == target)
    }

    /// A 407 (or a refused connection): counted, and printed for the 1st,
    /// 2nd, 4th, 8th… and otherwise at most every 10 s.
    fn refused_access(&self, why: &str) {
        let n = self.stats.refused_access.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self.stats.last_printed.lock().unwrap_or_else(PoisonError::into_inner);
        if n.is_power_of_two() || last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            *last = Some(Instant::now());
            eprintln!("{}: refused a proxy client: {why} ({n} refused so far)", self.who);
        }
    }
}

/// A running proxy.
pub(crate) struct Proxy {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The placeholders of each key, in the order of the bindings.
    pub placeholders: Vec<KeyPlaceholders>,
    /// The ephemeral CA's certificate (PEM).
    pub ca_pem: String,
    /// `http://USER:PASSWORD@127.0.0.1:PORT` with [`Access::Credentials`],
    /// else `http://127.0.0.1:PORT`.
    pub url: String,
    pub stats: Arc<Stats>,
}

/// Starts the proxy on `listen`: follows each key (failing, before
/// anything listens, if one cannot be read), makes the CA and the leaves,
/// and serves in the background.
pub(crate) async fn start(
    client: &Client,
    settings: Settings,
    listen: SocketAddr,
    who: &'static str,
) -> Result<Proxy, String> {
    if settings.bindings.is_empty() {
        return Err("no --key: name at least one key and the host it is bound to".into());
    }
    for route in &settings.routes {
        if !settings.bindings.iter().any(|b| b.bound == route.upstream) {
            return Err(format!(
                "--route {}=https://{}: no --key is bound to {}; a route sends keys only to a bound host",
                route.prefix, route.upstream, route.upstream
            ));
        }
    }
    let upstream = upstream::Upstream::new(settings.upstream_ca.as_deref())?;
    let mut keys = Vec::new();
    let mut placeholders = Placeholders::default();
    let mut texts = Vec::new();
    for (index, binding) in settings.bindings.into_iter().enumerate() {
        let name = binding.key.to_string();
        let handle = client
            .handle(&name)
            .await
            .map_err(|e| format!("cannot fetch {name}: {}", crate::text::client_error(e)))?;
        texts.push(match settings.stable_placeholders {
            true => placeholders.stable(index, &name),
            false => placeholders.random(index),
        });
        keys.push(ProxiedKey {
            binding,
            handle,
            refused: Mutex::new(None),
        });
    }
    let hosts: Vec<String> = keys.iter().map(|k| k.binding.bound.host.clone()).collect();
    let interception = ca::Interception::new(&hosts)?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let (url, authorization) = match &settings.access {
        Access::Credentials { user, password, .. } => (
            format!("http://{user}:{password}@{addr}"),
            Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            )),
        ),
        Access::Uids(_) => (format!("http://{addr}"), None),
    };
    let stats = Arc::new(Stats::default());
    let ca_pem = interception.ca_pem.clone();
    let shared = Arc::new(Shared {
        reporter: report::Reporter::start(client.clone(), keys.iter().map(|k| k.binding.key.to_string()).collect()),
        keys,
        placeholders,
        interception,
        upstream,
        access: settings.access,
        authorization,
        routes: settings.routes,
        replay_limit: settings.replay_limit,
        cooldown: settings.cooldown,
        stats: Arc::clone(&stats),
        who,
    });
    tokio::spawn(accept_loop(listener, shared));
    Ok(Proxy {
        addr,
        placeholders: texts,
        ca_pem,
        url,
        stats,
    })
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(_) => {
                // Out of file descriptors, or the like: wait, do not spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let Ok(local) = stream.local_addr() else { return };
            if let Err(why) = check_peer(&shared.access, local, peer) {
                shared.refused_access(&why);
                refuse_connection(stream).await;
                return;
            }
            let service = {
                let shared = Arc::clone(&shared);
                service_fn(move |request| entry::outer(Arc::clone(&shared), request))
            };
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

/// Whether the socket at `peer` belongs to a uid `access` allows.
fn check_peer(access: &Access, local: SocketAddr, peer: SocketAddr) -> Result<(), String> {
    let allowed: &[u32] = match access {
        Access::Credentials { uid, .. } => std::slice::from_ref(uid),
        Access::Uids(uids) => uids,
    };
    match peer::peer_uid(local, peer) {
        Some(uid) if allowed.contains(&uid) => Ok(()),
        Some(uid) => Err(format!("a connection from uid {uid}, which this proxy does not serve")),
        None => Err(format!(
            "a connection from {peer}, whose owner is unknown (not from this host?)"
        )),
    }
}

/// Answers 407 on a connection from a socket the proxy does not serve,
/// without reading what it sends.
async fn refuse_connection(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let body = "keyward proxy: this proxy serves only the processes it was started for\n";
    let answer = format!(
        "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"keyward\"\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(answer.as_bytes())).await;
    let _ = stream.shutdown().await;
}

/// Writes the trust bundle for the program: the roots it had (its
/// `SSL_CERT_FILE`, else the system bundle) and the proxy's CA. Returns
/// the bundle's path and the CA alone's (for `NODE_EXTRA_CA_CERTS`).
pub(crate) fn write_trust(dir: &Path, ca_pem: &str) -> Result<(PathBuf, PathBuf), String> {
    let base = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(SYSTEM_BUNDLE));
    let mut bundle = std::fs::read_to_string(&base).map_err(|e| {
        format!(
            "cannot read the system's CA bundle {} ({e}): install ca-certificates, or set SSL_CERT_FILE to a bundle",
            base.display()
        )
    })?;
    if !bundle.ends_with('\n') {
        bundle.push('\n');
    }
    bundle.push_str(ca_pem);
    let write = |name: &str, text: &str| -> Result<PathBuf, String> {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(path)
    };
    Ok((write("ca-bundle.pem", &bundle)?, write("proxy-ca.pem", ca_pem)?))
}

/// Debian's bundle of the system roots (ca-certificates).
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The Node.js preload that routes the built-in `fetch` through the proxy
/// (Node's `fetch` ignores `HTTPS_PROXY`).
pub(crate) const NODE_PRELOAD: &str = include_str!("node-preload.cjs");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let r = Route::parse("/billing=https://api.billing.example").unwrap();
        assert_eq!(
            (r.prefix.as_str(), r.upstream.to_string()),
            ("/billing", "api.billing.example:443".into())
        );
        for (bad, why) in [
            ("billing=https://a.example", "must start with '/'"),
            ("/billing/=https://a.example", "must start with '/'"),
            ("/billing=http://a.example", "must be https://"),
            ("/billing=https://10.0.0.1", "IP address"),
            ("/billing", "PREFIX=https://HOST"),
        ] {
            let e = Route::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
