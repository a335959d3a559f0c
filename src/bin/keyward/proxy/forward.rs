//! A request to a bound host: the placeholders swapped for the current
//! secrets, the fallback replay on 401/403, the cool-down of a refused
//! version, and the reports; a placeholder headed anywhere else refused.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, HOST};
use hyper::http::request::Parts;
use hyper::{Request, Response, StatusCode, Uri};
use keyward_client::KeySet;
use zeroize::Zeroizing;

use super::binding::{HostPort, HTTPS_PORT};
use super::body::{answer, full, keep, Kept, ProxyBody};
use super::placeholder::{self, Role};
use super::upstream::{send, strip_hop_by_hop};
use super::Shared;

/// A key used by a request: which one, in which role, and the version put in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Use {
    index: usize,
    role: Role,
    version: u64,
    /// The primary was given in its place, and the key has another
    /// version to replay with.
    replayable: bool,
    /// The primary's place got the fallback: the provider refused the
    /// primary (with this status) within the cool-down.
    diverted: Option<u16>,
}

/// Sends `request` on to `target` (`https`, or plain HTTP), with the
/// placeholders of the keys bound there swapped for their secrets.
pub(crate) async fn forward(
    shared: Arc<Shared>,
    request: Request<Incoming>,
    https: bool,
    target: HostPort,
    path_and_query: Option<String>,
) -> Result<Response<ProxyBody>, hyper::Error> {
    let (mut parts, body) = request.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let pq = path_and_query.unwrap_or_else(|| {
        parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned())
    });
    let scheme = if https { "https" } else { "http" };
    let authority = match (https, target.port) {
        (true, HTTPS_PORT) | (false, 80) => target.host.clone(),
        _ => target.to_string(),
    };
    let uri: Uri = match format!("{scheme}://{authority}{pq}").parse() {
        Ok(u) => u,
        Err(e) => {
            return Ok(answer(
                StatusCode::BAD_REQUEST,
                &format!("cannot send the request on: {e}"),
            ))
        }
    };
    parts.uri = uri;
    parts.version = hyper::Version::HTTP_11;
    if let Ok(host) = HeaderValue::from_str(&authority) {
        parts.headers.insert(HOST, host);
    }

    // Which placeholders are there, and may they go there?
    let mut found: Vec<(usize, Role)> = Vec::new();
    let in_uri = shared.placeholders.find(pq.as_bytes());
    let in_headers = parts
        .headers
        .values()
        .flat_map(|v| shared.placeholders.find(v.as_bytes()));
    for (_, index, role) in in_uri.iter().copied().chain(in_headers) {
        let bound = &shared.keys[index].binding.bound;
        if !https || bound != &target {
            let sent_to = if https {
                target.to_string()
            } else {
                format!("http://{target}")
            };
            return Ok(misdirected(&shared, index, role, &sent_to));
        }
        if !found.contains(&(index, role)) {
            found.push((index, role));
        }
    }
    if found.is_empty() {
        return send(&shared, Request::from_parts(parts, body.boxed())).await;
    }

    let sets: Vec<Arc<KeySet>> = shared.keys.iter().map(|k| k.handle.current()).collect();
    let uses: Vec<Use> = found
        .iter()
        .map(|&(index, role)| choose(&shared, index, role, &sets[index]))
        .collect();
    let replay = uses.iter().any(|u| u.replayable);
    // A primary skipped for the cool-down is still a primary the provider
    // refuses: the agent hears of it (coalesced by the reporter), so the
    // alert stays open and the rotation does not count it healthy.
    for u in &uses {
        if let Some(status) = u.diverted {
            let primary = sets[u.index].primary.version;
            shared.reporter.failure(
                u.index,
                primary,
                status,
                "the fallback was sent: the provider refused this version within the cool-down",
            );
        }
    }
    let body = if replay {
        let length = parts
            .headers
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        match keep(body, shared.replay_limit, length).await {
            Ok(kept) => kept,
            Err(_) => return Ok(answer(StatusCode::BAD_REQUEST, "the request's body could not be read")),
        }
    } else {
        Kept::Streamed(body.boxed())
    };

    let first = match with_secrets(&shared, &parts, &uses, &sets) {
        Ok(p) => p,
        Err(response) => return Ok(response),
    };
    let (first_body, again) = match body {
        Kept::Whole(bytes) => (full(bytes.clone()), Some(bytes)),
        Kept::Streamed(b) => (b, None),
    };
    let response = send(&shared, Request::from_parts(first, first_body)).await?;
    let status = response.status();
    if !refused(status) {
        note_use(&shared, &uses, status);
        return Ok(response);
    }
    for u in &uses {
        shared.reporter.failure(
            u.index,
            u.version,
            status.as_u16(),
            &format!("{} {}", parts.method, parts.uri.path()),
        );
        if u.role == Role::Primary && u.version == sets[u.index].primary.version {
            shared.keys[u.index].note_refused(sets[u.index].generation, u.version, status.as_u16(), shared.cooldown);
        }
    }
    let Some(bytes) = again.filter(|_| replay) else {
        return Ok(response);
    };
    drop(response);
    shared.stats.replays.fetch_add(1, Ordering::Relaxed);
    let fallback_uses: Vec<Use> = uses
        .iter()
        .map(|u| match u.replayable {
            true => Use {
                version: sets[u.index].fallback.as_ref().map_or(u.version, |f| f.version),
                replayable: false,
                ..*u
            },
            false => *u,
        })
        .collect();
    let second = match with_secrets(&shared, &parts, &fallback_uses, &sets) {
        Ok(p) => p,
        Err(response) => return Ok(response),
    };
    let response = send(&shared, Request::from_parts(second, full(bytes))).await?;
    let status = response.status();
    if refused(status) {
        for u in fallback_uses
            .iter()
            .filter(|u| uses.iter().any(|o| o.replayable && o.index == u.index))
        {
            shared.reporter.failure(
                u.index,
                u.version,
                status.as_u16(),
                &format!("{} {} (fallback replay)", parts.method, parts.uri.path()),
            );
        }
    } else {
        note_use(&shared, &fallback_uses, status);
    }
    Ok(response)
}

/// 401 and 403: the provider refused the key.
fn refused(status: StatusCode) -> bool {
    status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN
}

/// Successful use is reported for answers that say the key was accepted.
fn note_use(shared: &Shared, uses: &[Use], status: StatusCode) {
    if status.is_success() || status.is_redirection() {
        for u in uses {
            shared.keys[u.index].handle.report_use(u.version);
        }
    }
}

/// The version a placeholder gets now: the primary, unless the provider
/// refused it within the cool-down (then the fallback); the fallback (or
/// the primary, for a key without one) for `VAR_FALLBACK`.
fn choose(shared: &Shared, index: usize, role: Role, set: &KeySet) -> Use {
    let fallback = set.fallback.as_ref().filter(|f| f.version != set.primary.version);
    let plain = |version| Use {
        index,
        role,
        version,
        replayable: false,
        diverted: None,
    };
    match (role, fallback) {
        (Role::Fallback, Some(f)) => plain(f.version),
        (Role::Fallback, None) => plain(set.primary.version),
        (Role::Primary, Some(f)) => match shared.keys[index].primary_refused(set.generation, set.primary.version) {
            Some(status) => Use {
                diverted: Some(status),
                ..plain(f.version)
            },
            None => Use {
                replayable: true,
                ..plain(set.primary.version)
            },
        },
        (Role::Primary, None) => plain(set.primary.version),
    }
}

/// The request's head with each placeholder replaced by the secret of
/// the version its [`Use`] names.
#[allow(clippy::result_large_err)]
fn with_secrets(
    shared: &Shared,
    parts: &Parts,
    uses: &[Use],
    sets: &[Arc<KeySet>],
) -> Result<Parts, Response<ProxyBody>> {
    let secret_of = |index: usize, role: Role| -> Zeroizing<Vec<u8>> {
        let set = &sets[index];
        let version = uses
            .iter()
            .find(|u| u.index == index && u.role == role)
            .map_or(set.primary.version, |u| u.version);
        let v = [Some(&set.primary), set.fallback.as_ref()]
            .into_iter()
            .flatten()
            .find(|v| v.version == version)
            .unwrap_or(&set.primary);
        Zeroizing::new(v.secret.expose().to_vec())
    };
    let mut headers = HeaderMap::with_capacity(parts.headers.len());
    for (name, value) in parts.headers.iter() {
        let found = shared.placeholders.find(value.as_bytes());
        if found.is_empty() {
            headers.append(name, value.clone());
            continue;
        }
        let bytes = placeholder::replace(value.as_bytes(), &found, secret_of);
        match HeaderValue::from_bytes(&bytes) {
            Ok(mut v) => {
                v.set_sensitive(true);
                headers.append(name, v);
            }
            Err(_) => {
                let key = &shared.keys[found[0].1].binding.key;
                return Err(answer(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!(
                        "the secret of {key} holds bytes an HTTP header cannot carry (a newline?); nothing was sent"
                    ),
                ));
            }
        }
    }
    let mut request = Request::new(());
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = headers;
    Ok(request.into_parts().0)
}

/// A placeholder headed where its key is not bound: refused, reported.
fn misdirected(shared: &Shared, index: usize, role: Role, sent_to: &str) -> Response<ProxyBody> {
    let key = &shared.keys[index];
    let set = key.handle.current();
    let version = match role {
        Role::Fallback => set.fallback.as_ref().map_or(set.primary.version, |f| f.version),
        Role::Primary => set.primary.version,
    };
    shared.stats.misdirected.fetch_add(1, Ordering::Relaxed);
    shared.reporter.misdirected(index, version, sent_to);
    eprintln!(
        "{}: refused a request carrying the placeholder of {} to {sent_to}: the key is bound to https://{} only",
        shared.who, key.binding.key, key.binding.bound
    );
    answer(
        StatusCode::FORBIDDEN,
        &format!(
            "refused: this request carries the placeholder of {}, which may be sent only to https://{}, not to {sent_to}; nothing was sent",
            key.binding.key, key.binding.bound
        ),
    )
}
