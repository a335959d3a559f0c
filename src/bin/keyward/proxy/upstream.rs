//! The proxy's side towards the providers: pooled, kept-alive connections,
//! TLS verified against the system roots (and `--upstream-ca`), and the
//! headers that belong to one hop and are never sent on.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::header::{HeaderMap, HeaderName};
use hyper::{Request, Response, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;

use super::body::{answer, ProxyBody};
use super::Shared;

/// How long an upstream connection may take to open.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The upstream connections: pooled, kept alive, TLS verified against the
/// system roots (and `--upstream-ca`).
pub(crate) struct Upstream {
    client: HttpClient<HttpsConnector<HttpConnector>, ProxyBody>,
}

impl Upstream {
    pub(crate) fn new(extra_ca: Option<&std::path::Path>) -> Result<Upstream, String> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            let _ = roots.add(cert);
        }
        if let Some(path) = extra_ca {
            let pem =
                std::fs::read(path).map_err(|e| format!("--upstream-ca {}: cannot read it ({e})", path.display()))?;
            let mut added = 0;
            for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
                let cert =
                    cert.map_err(|e| format!("--upstream-ca {}: not a PEM certificate ({e})", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("--upstream-ca {}: cannot use its certificate ({e})", path.display()))?;
                added += 1;
            }
            if added == 0 {
                return Err(format!(
                    "--upstream-ca {}: no certificate in it: give a PEM file (-----BEGIN CERTIFICATE-----)",
                    path.display()
                ));
            }
        }
        if roots.is_empty() {
            return Err(
                "no trusted root certificates: install ca-certificates, or name the upstream's CA with --upstream-ca"
                    .into(),
            );
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("cannot configure TLS: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // hyper-rustls sets ALPN itself (http/1.1, from enable_http1).
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = HttpClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .build(connector);
        Ok(Upstream { client })
    }
}

/// Headers that belong to one hop, never sent on.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Sends a request upstream; a failure to reach it is a 502 of the proxy's.
pub(crate) async fn send(shared: &Shared, request: Request<ProxyBody>) -> Result<Response<ProxyBody>, hyper::Error> {
    let host = request.uri().authority().map(|a| a.to_string()).unwrap_or_default();
    match shared.upstream.client.request(request).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Ok(Response::from_parts(parts, body.boxed()))
        }
        Err(e) => {
            let mut why = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                why = format!("{why}: {s}");
                source = s.source();
            }
            Ok(answer(StatusCode::BAD_GATEWAY, &format!("cannot reach {host}: {why}")))
        }
    }
}
