//! How a request enters the proxy: who may use it (credentials), CONNECT
//! (intercepted for a bound host and port, tunnelled byte for byte for any
//! other), absolute-form requests, and `--route` prefixes.

use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, HOST};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use subtle::ConstantTimeEq;

use super::binding::{HostPort, HTTPS_PORT};
use super::body::{answer, full, ProxyBody};
use super::forward::forward;
use super::upstream::CONNECT_TIMEOUT;
use super::{Access, Shared};

/// Every request on a connection to the proxy.
pub(crate) async fn outer(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, hyper::Error> {
    let proxy_form = request.method() == Method::CONNECT || request.uri().scheme().is_some();
    if proxy_form && !authorized(&shared, request.headers()) {
        shared.refused_access("a request without this run's proxy credentials");
        let mut response = answer(
            StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            "this proxy serves only the processes it was started for (their HTTPS_PROXY carries its credentials)",
        );
        response.headers_mut().insert(
            "proxy-authenticate",
            HeaderValue::from_static("Basic realm=\"keyward\""),
        );
        return Ok(response);
    }
    if request.method() == Method::CONNECT {
        return Ok(connect(shared, request).await);
    }
    let uri = request.uri().clone();
    match (uri.scheme_str(), uri.authority()) {
        (Some(scheme @ ("https" | "http")), Some(authority)) => {
            let https = scheme == "https";
            let default = if https { HTTPS_PORT } else { 80 };
            match HostPort::parse_target(authority.as_str(), default) {
                Ok(target) => forward(shared, request, https, target, None).await,
                Err(e) => Ok(answer(StatusCode::BAD_REQUEST, &e)),
            }
        }
        (Some(other), _) => Ok(answer(
            StatusCode::BAD_REQUEST,
            &format!("{other}:// requests are not proxied; use http:// or https://"),
        )),
        (None, _) => {
            let path = uri.path();
            let route = shared
                .routes
                .iter()
                .find(|r| path == r.prefix || path.starts_with(&format!("{}/", r.prefix)))
                .cloned();
            match route {
                Some(route) => {
                    let rest = &path[route.prefix.len()..];
                    let rest = if rest.is_empty() { "/" } else { rest };
                    let pq = match uri.query() {
                        Some(q) => format!("{rest}?{q}"),
                        None => rest.to_owned(),
                    };
                    forward(shared, request, true, route.upstream, Some(pq)).await
                }
                None => Ok(answer(
                    StatusCode::NOT_FOUND,
                    "no --route matches this path; use this address as an HTTP(S) proxy, or under a --route prefix",
                )),
            }
        }
    }
}

/// Whether a proxy request carries the run's credentials (always, for
/// [`Access::Uids`], where the socket's owner decides).
fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    match (&shared.access, &shared.authorization) {
        (Access::Credentials { .. }, Some(expected)) => headers
            .get_all(hyper::header::PROXY_AUTHORIZATION)
            .iter()
            .any(|v| bool::from(v.as_bytes().ct_eq(expected.as_bytes()))),
        (Access::Credentials { .. }, None) => false,
        (Access::Uids(_), _) => true,
    }
}

/// CONNECT: intercepted for a bound host and port, else a tunnel.
async fn connect(shared: Arc<Shared>, request: Request<Incoming>) -> Response<ProxyBody> {
    let Some(authority) = request.uri().authority().map(|a| a.as_str().to_owned()) else {
        return answer(StatusCode::BAD_REQUEST, "CONNECT needs HOST:PORT");
    };
    let target = match HostPort::parse_target(&authority, HTTPS_PORT) {
        Ok(t) => t,
        Err(e) => return answer(StatusCode::BAD_REQUEST, &e),
    };
    if shared.bound_at(&target) {
        let Some(tls) = shared.interception.for_host(&target.host) else {
            return answer(StatusCode::INTERNAL_SERVER_ERROR, "no certificate for a bound host");
        };
        tokio::spawn(async move {
            let Ok(upgraded) = hyper::upgrade::on(request).await else {
                return;
            };
            let Ok(stream) = tokio_rustls::TlsAcceptor::from(tls)
                .accept(TokioIo::new(upgraded))
                .await
            else {
                return;
            };
            let service = {
                let shared = Arc::clone(&shared);
                let target = target.clone();
                service_fn(move |request| inner(Arc::clone(&shared), target.clone(), request))
            };
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        return Response::new(full(Bytes::new()));
    }
    let upstream = match tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect((strip_brackets(&target.host), target.port)),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return answer(StatusCode::BAD_GATEWAY, &format!("cannot reach {target}: {e}")),
        Err(_) => {
            return answer(
                StatusCode::GATEWAY_TIMEOUT,
                &format!("cannot reach {target}: timed out"),
            )
        }
    };
    let _ = upstream.set_nodelay(true);
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(request).await else {
            return;
        };
        let mut client = TokioIo::new(upgraded);
        let mut upstream = upstream;
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    });
    Response::new(full(Bytes::new()))
}

fn strip_brackets(host: &str) -> &str {
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}

/// A request inside an intercepted TLS connection to `target`.
async fn inner(
    shared: Arc<Shared>,
    target: HostPort,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, hyper::Error> {
    // The connection was opened for `target`; a request naming another
    // host is not sent there (nor anywhere).
    let named = request
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| HostPort::parse_target(h, HTTPS_PORT));
    match named {
        Some(Ok(h)) if h.host != target.host || h.port != target.port => {
            return Ok(answer(
                StatusCode::MISDIRECTED_REQUEST,
                &format!("this connection is to {target}; the request names {h}"),
            ))
        }
        Some(Err(e)) => return Ok(answer(StatusCode::BAD_REQUEST, &format!("Host header: {e}"))),
        _ => {}
    }
    let pq = request
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    forward(shared, request, true, target, Some(pq)).await
}
