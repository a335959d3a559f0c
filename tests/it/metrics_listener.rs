//! The metrics endpoint over real sockets: a loopback TCP port and a Unix
//! socket in a temp dir, spoken to with raw HTTP/1.1 so that what is
//! checked is exactly what goes over the wire.
//!
//! (The lead's end-to-end tests scrape a running agent; these start only
//! `keyward::metrics::http::serve`, in-process.)

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyward::metrics::http::{self, MetricsListen, ServeOptions};
use keyward::metrics::{Metrics, Snapshot, CONTENT_TYPE};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Long enough for anything that should happen to happen.
const PATIENCE: Duration = Duration::from_secs(5);

/// A server running in-process, stopped by `stop`.
struct Server {
    address: MetricsListen,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    fn start(listen: MetricsListen, options: ServeOptions) -> Server {
        let metrics = Arc::new(Metrics::new());
        metrics.fetch("prod", "billing-api", "ok");
        let snapshot = Snapshot {
            watchers: 2,
            ..Snapshot::default()
        };
        let listener = http::bind(&listen).expect("bind");
        let address = listener.local_addr().expect("local address");
        let (shutdown, stopped) = oneshot::channel::<()>();
        let render = Arc::new(move || metrics.render(&snapshot));
        let task = tokio::spawn(http::serve_with(
            listener,
            render,
            async {
                let _ = stopped.await;
            },
            options,
        ));
        Server {
            address,
            shutdown,
            task,
        }
    }

    async fn tcp(&self) -> Client<TcpStream> {
        let MetricsListen::Tcp(addr) = &self.address else {
            panic!("not TCP: {:?}", self.address)
        };
        Client::new(TcpStream::connect(addr).await.expect("connect"))
    }

    /// Stops the server and checks that it returned promptly and cleanly.
    async fn stop(self) {
        let started = Instant::now();
        self.shutdown.send(()).expect("server still running");
        let result = tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("serve ends when its shutdown future completes");
        result.expect("serve task").expect("serve returns Ok");
        // The default drain is 5 s: idle keep-alive connections must be
        // closed at once, not waited for.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
    }
}

#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A raw HTTP/1.1 client on one connection.
struct Client<S> {
    stream: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    fn new(stream: S) -> Client<S> {
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, method: &str, path: &str) {
        let request = format!("{method} {path} HTTP/1.1\r\nHost: metrics\r\nContent-Length: 0\r\n\r\n");
        self.stream.write_all(request.as_bytes()).await.expect("write request");
    }

    async fn request(&mut self, method: &str, path: &str) -> Response {
        self.send(method, path).await;
        tokio::time::timeout(PATIENCE, self.response(method == "HEAD"))
            .await
            .expect("a response in time")
    }

    async fn fill(&mut self) -> usize {
        self.try_fill().await.expect("read")
    }

    async fn try_fill(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    async fn response(&mut self, head_only: bool) -> Response {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            assert!(self.fill().await > 0, "connection closed before a response");
        };
        let head = String::from_utf8(self.buf.drain(..end + 4).collect()).expect("UTF-8 head");
        let mut lines = head.trim_end().split("\r\n");
        let status_line = lines.next().unwrap();
        assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
        let status = status_line[9..12].parse().expect("status code");
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (n, v) = l.split_once(':').expect("header line");
                (n.trim().to_owned(), v.trim().to_owned())
            })
            .collect();
        let mut response = Response {
            status,
            headers,
            body: String::new(),
        };
        let length: usize = response
            .header("content-length")
            .expect("Content-Length (needed for keep-alive)")
            .parse()
            .expect("a number");
        if !head_only {
            while self.buf.len() < length {
                assert!(self.fill().await > 0, "connection closed inside the body");
            }
            response.body = String::from_utf8(self.buf.drain(..length).collect()).expect("UTF-8 body");
        }
        response
    }

    /// Waits until the server closes (or resets) the connection; fails
    /// after `limit`.
    async fn closed_within(&mut self, limit: Duration) {
        tokio::time::timeout(limit, async { while let Ok(1..) = self.try_fill().await {} })
            .await
            .expect("the server closes the connection");
    }
}

const FETCH_SAMPLE: &str = r#"keyward_fetches_total{environment="prod",key="billing-api",outcome="ok"} 1"#;

#[tokio::test]
async fn tcp_serves_metrics_404_405_and_keeps_the_connection_alive() {
    let server = Server::start("127.0.0.1:0".parse().unwrap(), ServeOptions::default());
    let mut client = server.tcp().await;

    let r = client.request("GET", "/metrics").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some(CONTENT_TYPE));
    assert_eq!(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8");
    assert!(r.body.lines().any(|l| l == FETCH_SAMPLE), "{}", r.body);
    assert!(r.body.lines().any(|l| l == "keyward_watchers 2"), "{}", r.body);
    assert!(r.body.contains("# TYPE keyward_fetches_total counter\n"), "{}", r.body);

    // The same connection, kept alive.
    let r = client.request("GET", "/").await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains(FETCH_SAMPLE));

    let r = client.request("GET", "/metrics?name[]=x").await;
    assert_eq!(r.status, 200, "a query string is ignored");

    let r = client.request("HEAD", "/metrics").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some(CONTENT_TYPE));

    let r = client.request("GET", "/other").await;
    assert_eq!(r.status, 404, "{r:?}");
    assert!(r.body.contains("/metrics"), "{}", r.body);

    let r = client.request("GET", "/metrics/extra").await;
    assert_eq!(r.status, 404);

    let r = client.request("POST", "/metrics").await;
    assert_eq!(r.status, 405, "{r:?}");
    assert_eq!(r.header("allow"), Some("GET, HEAD"));

    let r = client.request("DELETE", "/").await;
    assert_eq!(r.status, 405);

    let r = client.request("GET", "/metrics").await;
    assert_eq!(r.status, 200, "still alive after errors");

    let MetricsListen::Tcp(addr) = server.address.clone() else {
        unreachable!()
    };
    // `client` stays connected and idle: shutdown must not wait for it.
    server.stop().await;
    client.closed_within(PATIENCE).await;
    let refused = TcpStream::connect(addr).await;
    assert!(refused.is_err(), "nothing listens after shutdown");
}

#[tokio::test]
async fn unix_socket_serves_metrics_and_is_removed_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.sock");
    let server = Server::start(MetricsListen::Unix(path.clone()), ServeOptions::default());
    assert_eq!(server.address, MetricsListen::Unix(path.clone()));
    let meta = std::fs::symlink_metadata(&path).expect("socket file");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);

    let mut client = Client::new(UnixStream::connect(&path).await.expect("connect"));
    let r = client.request("GET", "/metrics").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some(CONTENT_TYPE));
    assert!(r.body.lines().any(|l| l == FETCH_SAMPLE), "{}", r.body);
    let r = client.request("GET", "/other").await;
    assert_eq!(r.status, 404);

    server.stop().await;
    assert!(!path.exists(), "serve removes its socket file when it stops");
}

#[tokio::test]
async fn a_connection_that_sends_no_complete_request_head_is_closed() {
    let timeout = Duration::from_millis(300);
    let options = ServeOptions {
        header_read_timeout: timeout,
        ..ServeOptions::default()
    };
    let server = Server::start("127.0.0.1:0".parse().unwrap(), options);

    // Silent from the start.
    let started = Instant::now();
    let mut silent = server.tcp().await;
    silent.closed_within(PATIENCE).await;
    assert!(
        started.elapsed() >= timeout - Duration::from_millis(50),
        "{:?}",
        started.elapsed()
    );

    // Half a request head.
    let mut partial = server.tcp().await;
    partial
        .stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: m")
        .await
        .unwrap();
    partial.closed_within(PATIENCE).await;

    // Idle between keep-alive requests.
    let mut idle = server.tcp().await;
    assert_eq!(idle.request("GET", "/metrics").await.status, 200);
    let started = Instant::now();
    idle.closed_within(PATIENCE).await;
    assert!(
        started.elapsed() >= timeout - Duration::from_millis(50),
        "{:?}",
        started.elapsed()
    );

    server.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let options = ServeOptions {
        max_connections: 2,
        ..ServeOptions::default()
    };
    let server = Server::start("127.0.0.1:0".parse().unwrap(), options);
    let mut first = server.tcp().await;
    let mut second = server.tcp().await;
    // Both served, and kept alive: both slots are taken.
    assert_eq!(first.request("GET", "/metrics").await.status, 200);
    assert_eq!(second.request("GET", "/metrics").await.status, 200);

    let mut third = server.tcp().await;
    third.send("GET", "/metrics").await;
    let early = tokio::time::timeout(Duration::from_millis(500), third.fill()).await;
    assert!(early.is_err(), "a third connection was served while two held the slots");

    drop(first);
    let r = tokio::time::timeout(PATIENCE, third.response(false))
        .await
        .expect("served once a slot is free");
    assert_eq!(r.status, 200);
    assert!(r.body.contains(FETCH_SAMPLE));

    drop(second);
    server.stop().await;
}

#[tokio::test]
async fn a_live_socket_is_not_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.sock");
    let server = Server::start(MetricsListen::Unix(path.clone()), ServeOptions::default());
    let err = http::bind(&MetricsListen::Unix(path.clone())).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
    // The refused bind did not disturb the live one.
    let mut client = Client::new(UnixStream::connect(&path).await.expect("connect"));
    assert_eq!(client.request("GET", "/metrics").await.status, 200);
    server.stop().await;
}
