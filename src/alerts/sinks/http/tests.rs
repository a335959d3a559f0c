use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::alerts::sinks::testing::{alert, sink};
use crate::alerts::{SinkConfig, SinkKind};

const PATH_TOKEN: &str = "PATHT0KEN0123456789";
const QUERY_TOKEN: &str = "QUERYT0KEN987654321";
const PASSWORD: &str = "PA55W0RDsecret";
const HEADER_TOKEN: &str = "HEADERT0KENabcdef";
const ROUTING_KEY: &str = "R0UT1NGKEYxyz";
const TOKENS: [&str; 5] = [PATH_TOKEN, QUERY_TOKEN, PASSWORD, HEADER_TOKEN, ROUTING_KEY];

/// A webhook sink's settings whose URL and header are full of tokens.
fn tokened(port: u16) -> SinkConfig {
    SinkConfig {
        timeout: Duration::from_millis(500),
        ..sink(
            "tokened",
            SinkKind::Webhook {
                url: Sensitive::new(format!(
                    "http://bot:{PASSWORD}@127.0.0.1:{port}/hooks/{PATH_TOKEN}?token={QUERY_TOKEN}"
                )),
                headers: vec![(
                    "Authorization".to_owned(),
                    Sensitive::new(format!("Bearer {HEADER_TOKEN}")),
                )],
                ca_file: None,
            },
        )
    }
}

fn build(config: &SinkConfig) -> HttpSink {
    let SinkKind::Webhook { url, headers, ca_file } = &config.kind else {
        unreachable!()
    };
    HttpSink::build(
        &config.name,
        url,
        headers,
        ca_file.as_deref(),
        Format::PagerDuty {
            routing_key: Sensitive::new(ROUTING_KEY.to_owned()),
        },
        config.timeout,
    )
    .unwrap()
}

fn assert_no_token(text: &str) {
    for token in TOKENS {
        assert!(!text.contains(token), "{token} leaked into: {text}");
    }
}

/// A server that answers every request with `answer` (its head and body;
/// `{request}` in it is replaced by the request as received: a server
/// that echoes the URL and headers back). Returns the port and the count
/// of requests.
async fn answering(answer: &'static str) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut request = vec![0u8; 16 * 1024];
                let n = stream.read(&mut request).await.unwrap_or(0);
                let echoed = String::from_utf8_lossy(&request[..n]).replace(['\r', '\n'], " ");
                let (head, body) = answer.split_once("\r\n\r\n").unwrap();
                let body = body.replace("{request}", &echoed);
                let reply = format!(
                    "{head}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    (port, count)
}

#[tokio::test]
async fn a_refused_connection_is_retried_and_named_by_host_and_port_only() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let config = tokened(port);
    let mut sink = build(&config);
    let error = sink.deliver(&alert()).await.unwrap_err();
    assert!(error.retry, "{error:?}");
    let text = format!("{error} {error:?}");
    assert!(
        text.starts_with(&format!("http://127.0.0.1:{port}: cannot connect")),
        "{text}"
    );
    assert_no_token(&text);
    assert_no_token(&format!("{config:?} {config:#?}"));
    // Without the scrubbing too: the message is built without the URL.
    sink.redactor = Redactor::default();
    let error = sink.deliver(&alert()).await.unwrap_err();
    assert_no_token(&format!("{error} {error:?}"));
}

#[tokio::test]
async fn an_error_answer_that_echoes_the_request_is_scrubbed_and_not_retried() {
    let (port, _) = answering("HTTP/1.1 404 Not Found\r\n\r\nno route for: {request}").await;
    let error = build(&tokened(port)).deliver(&alert()).await.unwrap_err();
    assert!(!error.retry, "a 404 is not retried: {error:?}");
    let text = error.to_string();
    assert!(text.contains("answered HTTP 404 Not Found"), "{text}");
    assert!(text.contains("no route for: POST [redacted]"), "{text}");
    assert!(text.contains("user-agent: keywardd/"), "{text}");
    assert_no_token(&text);
}

#[tokio::test]
async fn server_errors_and_429_are_retried() {
    for answer in [
        "HTTP/1.1 500 Internal Server Error\r\n\r\n",
        "HTTP/1.1 503 Service Unavailable\r\n\r\nback soon",
        "HTTP/1.1 429 Too Many Requests\r\n\r\n",
    ] {
        let (port, _) = answering(answer).await;
        let error = build(&tokened(port)).deliver(&alert()).await.unwrap_err();
        assert!(error.retry, "{answer:?}: {error:?}");
        assert_no_token(&error.to_string());
    }
    let (port, _) = answering("HTTP/1.1 202 Accepted\r\n\r\n{}").await;
    build(&tokened(port)).deliver(&alert()).await.unwrap();
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let (port, requests) =
        answering("HTTP/1.1 307 Temporary Redirect\r\nlocation: http://127.0.0.1:9/steal\r\n\r\n").await;
    let error = build(&tokened(port)).deliver(&alert()).await.unwrap_err();
    assert!(!error.retry);
    assert!(error.to_string().contains("redirects are not followed"), "{error}");
    assert_eq!(requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_silent_server_times_out_without_naming_the_token() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let _held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            open.push(stream);
        }
    });
    let config = SinkConfig {
        timeout: Duration::from_millis(200),
        ..tokened(port)
    };
    let error = build(&config).deliver(&alert()).await.unwrap_err();
    assert!(error.retry);
    assert!(error.to_string().contains("no answer in time"), "{error}");
    assert_no_token(&error.to_string());
}

#[test]
fn bad_settings_are_refused_without_showing_the_url() {
    let config = |url: &str| {
        sink(
            "w",
            SinkKind::Webhook {
                url: Sensitive::new(url.to_owned()),
                headers: Vec::new(),
                ca_file: None,
            },
        )
    };
    for url in [
        format!("not a url {PATH_TOKEN}"),
        format!("ftp://example.com/{PATH_TOKEN}"),
        format!("http://:80/{PATH_TOKEN}"),
    ] {
        let Err(error) = crate::alerts::sinks::check(&config(&url)) else {
            panic!("a bad url was accepted");
        };
        assert!(matches!(error, SinkError::Url { .. }), "{error:?}");
        assert_no_token(&format!("{error} {error:?}"));
    }
    let header = sink(
        "w",
        SinkKind::Webhook {
            url: Sensitive::new("https://example.com/".to_owned()),
            headers: vec![(
                "Authorization".to_owned(),
                Sensitive::new(format!("Bearer {HEADER_TOKEN}\n")),
            )],
            ca_file: None,
        },
    );
    let error = crate::alerts::sinks::check(&header).unwrap_err();
    assert!(error.to_string().contains("header \"Authorization\""), "{error}");
    assert_no_token(&format!("{error} {error:?}"));
}

#[test]
fn a_missing_or_empty_ca_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    for path in [dir.path().join("missing.pem"), empty] {
        let config = sink(
            "slack",
            SinkKind::Slack {
                url: Sensitive::new("https://hooks.example.com/x".to_owned()),
                ca_file: Some(path.clone()),
            },
        );
        let error = crate::alerts::sinks::check(&config).unwrap_err();
        assert!(matches!(error, SinkError::CaFile { .. }), "{error:?}");
        assert!(error.to_string().contains(&path.display().to_string()), "{error}");
    }
}

#[test]
fn the_endpoint_is_scheme_host_and_port() {
    let url = Url::parse(&format!(
        "https://u:{PASSWORD}@hooks.example.com/a/{PATH_TOKEN}?q={QUERY_TOKEN}"
    ))
    .unwrap();
    assert_eq!(endpoint_of(&url), "https://hooks.example.com:443");
    let url = Url::parse("http://[::1]:8080/x").unwrap();
    assert_eq!(endpoint_of(&url), "http://[::1]:8080");
}
