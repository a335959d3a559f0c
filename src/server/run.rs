//! [`run`]: serving the sockets until shutdown, then draining.

use std::future::Future;
use std::io;
use std::sync::Arc;

use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::Server;

use crate::agent::Agent;
use crate::proto;

use super::listeners::Listeners;
use super::peer::{self, PeerStream};
use super::{admin, creds, keys, streams, tooling};

/// Serves both sockets (and the metrics listener, if any) until `shutdown`
/// resolves, then drains.
pub async fn run(listeners: Listeners, agent: Arc<Agent>, shutdown: impl Future<Output = ()>) -> io::Result<()> {
    let limits = agent.config().limits.clone();
    let socket_files = listeners.files;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let running = agent.start(stop_rx.clone()).await;
    let metrics_task = listeners.metrics.map(|listener| {
        let scraped = agent.clone();
        let render: crate::metrics::http::Render = Arc::new(move || {
            let snapshot = scraped.metrics_snapshot();
            scraped.metrics().render(&snapshot)
        });
        tokio::spawn(crate::metrics::http::serve(listener, render, stopped(stop_rx.clone())))
    });

    let keys = proto::keys_server::KeysServer::new(keys::KeysService::new(agent.clone()))
        .max_decoding_message_size(limits.max_message_bytes)
        .max_encoding_message_size(limits.max_message_bytes);
    let admin = proto::admin_server::AdminServer::new(admin::AdminService::new(agent.clone()))
        .max_decoding_message_size(limits.max_message_bytes)
        .max_encoding_message_size(limits.max_message_bytes);

    // Health follows the audit log from the start; reflection describes
    // each socket's own protos.
    let health = tooling::Health::new(*agent.audit().writable().borrow()).await;
    let health_task = tokio::spawn(tooling::follow_audit(
        health.clone(),
        agent.audit().writable(),
        stop_rx.clone(),
    ));

    let service_incoming = incoming(tokio::net::UnixListener::from_std(listeners.service)?, agent.clone());
    let admin_incoming = incoming(tokio::net::UnixListener::from_std(listeners.admin)?, agent.clone());
    let credentials_task = match listeners.credentials {
        None => None,
        Some(l) => Some(tokio::spawn(creds::serve(
            tokio::net::UnixListener::from_std(l)?,
            agent.clone(),
            stop_rx.clone(),
            agent.config().shutdown_grace,
        ))),
    };
    // Streams per connection, pings, and calls counted for the idle limit:
    // see [limits] in crate::config.
    let builder = || {
        Server::builder()
            .max_concurrent_streams(limits.max_streams_per_connection)
            .http2_keepalive_interval(Some(limits.keepalive_interval))
            .http2_keepalive_timeout(Some(limits.keepalive_timeout))
            .http2_max_header_list_size(streams::MAX_HEADER_LIST_BYTES)
            .initial_connection_window_size(streams::RECEIVE_WINDOW_BYTES)
            .initial_stream_window_size(streams::RECEIVE_WINDOW_BYTES)
            .layer(streams::CallsLayer::new(&limits))
    };
    let max_message = limits.max_message_bytes;
    let service_router = builder().add_service(keys);
    let service_router = tooling::add(service_router, tooling::Socket::Service, &health, &agent, max_message)?;
    let admin_router = builder().add_service(admin);
    let admin_router = tooling::add(admin_router, tooling::Socket::Admin, &health, &agent, max_message)?;
    let mut service_task =
        tokio::spawn(service_router.serve_with_incoming_shutdown(service_incoming, stopped(stop_rx.clone())));
    let mut admin_task = tokio::spawn(admin_router.serve_with_incoming_shutdown(admin_incoming, stopped(stop_rx)));

    running.started().await;

    let mut failure = None;
    tokio::select! {
        _ = shutdown => {}
        r = &mut service_task => failure = Some(format!("service socket server stopped: {r:?}")),
        r = &mut admin_task => failure = Some(format!("admin socket server stopped: {r:?}")),
    }
    if let Some(f) = &failure {
        tracing::error!("{f}");
    }
    tracing::info!("shutting down: no new connections; draining in-flight calls");
    let _ = stop_tx.send(true);
    agent.close_watches();
    // NOT_SERVING, and the health Watch streams end: the drain below does
    // not wait on them.
    let _ = health_task.await;
    let grace = agent.config().shutdown_grace;
    let drained = tokio::time::timeout(grace, async {
        let _ = (&mut service_task).await;
        let _ = (&mut admin_task).await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(grace = ?grace, "in-flight calls did not finish within the grace period; closing them");
        service_task.abort();
        admin_task.abort();
    }
    if let Some(task) = credentials_task {
        let _ = task.await;
    }
    if let Some(task) = metrics_task {
        match task.await {
            Ok(Err(e)) => tracing::error!(error = %e, "the metrics listener failed"),
            Err(e) => tracing::error!(error = %e, "the metrics listener panicked"),
            Ok(Ok(())) => {}
        }
    }
    running.finish().await;
    // Only the files it bound, and only if they are still its own; sockets
    // systemd passed stay in place (the .socket unit owns them).
    drop(socket_files);
    tracing::info!("stopped");
    match failure {
        Some(f) => Err(io::Error::other(f)),
        None => Ok(()),
    }
}

/// How long accepting pauses after a failed accept (e.g. out of file
/// descriptors): the connection stays queued, and retrying at once would
/// spin and flood the log.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

/// Accepted connections with their callers attached, after the connection
/// limits: over the total limit a connection is closed at once; over the
/// per-uid limit it is kept but every call on it is refused with a message,
/// up to twice the limit; past that it is closed at once too, so that one
/// uid can never use up the total limit (or the descriptors) of everyone.
fn incoming(listener: tokio::net::UnixListener, agent: Arc<Agent>) -> impl Stream<Item = io::Result<PeerStream>> {
    let accepted = UnixListenerStream::new(listener).then(|accepted| async move {
        if let Err(e) = &accepted {
            tracing::warn!(error = %e, "accept failed; pausing accepts for {ACCEPT_BACKOFF:?}");
            tokio::time::sleep(ACCEPT_BACKOFF).await;
        }
        accepted
    });
    accepted.filter_map(move |accepted| {
        let stream = accepted.ok()?;
        let caller = match peer::identify(&stream) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "peer left before it could be identified");
                return None;
            }
        };
        let config = agent.config();
        let limits = &config.limits;
        let (guard, per_uid, total) = agent.connections().register(caller.uid);
        let connection = Arc::new(peer::Connection::of_uid(guard.usage()));
        if total > limits.max_connections {
            tracing::warn!(uid = caller.uid, total, limit = limits.max_connections, "connection refused: agent is at its connection limit");
            return None;
        }
        if per_uid > limits.max_connections_per_uid.saturating_mul(2) {
            tracing::debug!(uid = caller.uid, per_uid, "connection closed: twice the per-uid limit is open");
            return None;
        }
        let over_limit = (per_uid > limits.max_connections_per_uid).then(|| {
            format!(
                "uid {} has {per_uid} connections open; the limit is {} (limits.max_connections_per_uid): reuse one connection per process",
                caller.uid, limits.max_connections_per_uid
            )
        });
        let peer = peer::Peer {
            caller: Arc::new(caller),
            over_limit,
            connection,
        };
        Some(Ok(
            PeerStream::new(stream, Arc::new(peer), guard).with_idle_timeout(limits.idle_timeout)
        ))
    })
}
