//! Calls an HTTP API with a keyward key, falling back to the rotation's
//! other key when the API answers 401 or 403.
//!
//! ```sh
//! keywardd --dev /tmp/kw &
//! printf %s sk_old | keyward --dev /tmp/kw put prod/billing-api
//! printf %s sk_new | keyward --dev /tmp/kw stage prod/billing-api
//! KEYWARD_SOCKET=/tmp/kw/keys.sock \
//!   cargo run -p keyward-client --example fallback_http -- prod/billing-api http://127.0.0.1:8080/v1/charges
//! ```
//!
//! The request is a plain HTTP/1.1 GET over TCP with
//! `Authorization: Bearer <key>` (no TLS, to stay within the crate's own
//! dependencies); a real service would use its usual HTTP client the same
//! way. A refused primary is reported to the agent (`keyward audit` shows
//! an `auth_failure` record), which holds the rotation's retire gate.

use std::process::ExitCode;

use keyward_client::{auth_rejection, CallError, Client, HttpStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A failed request: the HTTP status, or 0 when there was no response.
#[derive(Debug)]
struct HttpError {
    status: u16,
    reason: String,
}

impl HttpStatus for HttpError {
    fn http_status(&self) -> Option<u16> {
        (self.status != 0).then_some(self.status)
    }
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            0 => write!(f, "no HTTP response: {}", self.reason),
            s => write!(f, "HTTP {s}: {}", self.reason),
        }
    }
}

fn no_response(e: impl std::fmt::Display) -> HttpError {
    HttpError {
        status: 0,
        reason: e.to_string(),
    }
}

/// `GET url` with a bearer token; returns the body of a 2xx response.
async fn get(url: &str, token: &str) -> Result<String, HttpError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| no_response("only http:// URLs are supported by this example"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let address = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let mut conn = TcpStream::connect(&address).await.map_err(no_response)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: {authority}\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n"
    );
    conn.write_all(request.as_bytes()).await.map_err(no_response)?;
    let mut response = Vec::new();
    conn.read_to_end(&mut response).await.map_err(no_response)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status_line = head.lines().next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| no_response(format!("not an HTTP response: {status_line:?}")))?;
    if (200..300).contains(&status) {
        Ok(body.to_string())
    } else {
        Err(HttpError {
            status,
            reason: status_line.to_string(),
        })
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [key, url] = args.as_slice() else {
        eprintln!("usage: fallback_http ENV/NAME http://HOST:PORT/PATH  (socket: $KEYWARD_SOCKET)");
        return ExitCode::from(2);
    };
    let client = match Client::connect().await {
        Ok(c) => c.with_service("fallback_http-example"),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // A handle follows rotations in the background: each call uses the
    // latest primary and fallback without a round trip to the agent.
    let handle = match client.handle(key).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let keys = handle.current();
    println!(
        "{key}: primary v{}{}",
        keys.primary.version,
        keys.fallback
            .as_ref()
            .map(|f| format!(", fallback v{}", f.version))
            .unwrap_or_default()
    );
    let result = client
        .call_with_fallback(
            &handle,
            |secret| {
                // Build what the request needs before the future, so it does
                // not borrow the secret.
                let token = secret.expose_str().map(str::to_owned);
                async move {
                    let token = token.map_err(|_| no_response("the key is not UTF-8"))?;
                    get(url, &token).await
                }
            },
            auth_rejection,
        )
        .await;
    // Let the background auth-failure report go out before exiting.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    match result {
        Ok(body) => {
            println!("ok: {body}");
            ExitCode::SUCCESS
        }
        Err(CallError::Keyward(e)) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
        Err(CallError::Service(e)) => {
            eprintln!("the API refused both keys or failed: {e}");
            ExitCode::FAILURE
        }
    }
}
