//! The standard gRPC services on both sockets, for the tools that expect
//! them: `grpc.health.v1.Health` (grpc_health_probe, a load balancer's or
//! supervisor's health check) and server reflection, v1 and v1alpha
//! (grpcurl, grpcui), from the tonic project's own crates.
//!
//! Health: each socket reports the whole server (`""`) and the service it
//! serves (`keyward.v1.Keys` on the service socket, `keyward.v1.Admin` on
//! the admin socket). All are `SERVING` while the audit log can be
//! written and `NOT_SERVING` from a failed audit write (or sync) until the
//! next good one ([`crate::audit::Audit::writable`]): while it fails,
//! fail-closed fetches and every change are refused. Both ways the status
//! changes at once, and `Watch` streams are told. Once shutdown begins
//! they are `NOT_SERVING` for good and every `Watch` stream ends, so that
//! the drain does not wait on them.
//!
//! Reflection describes only the socket's own services: on the service
//! socket `keys.proto` (and the health and reflection protos), on the
//! admin socket `admin.proto` with what it imports (`keys.proto` among
//! them, for the types it shares). It serves the compiled descriptors of
//! the protocol, comments included, and nothing else: no key, no state.
//!
//! Who may call them is the socket's rule, as for every other call:
//!
//! - On the service socket, anyone who may connect (the socket's mode and
//!   group decide that). A caller the policy grants nothing learns whether
//!   the agent is serving and what the public protocol looks like; it gets
//!   no key and no name of one, and `GetKey` still refuses it.
//! - On the admin socket, only who may administer ([`super::admin::admit`]):
//!   the same second lock as every `Admin` call, refusals audited.
//!
//! On both, the calls pass [`super::streams`] first: they count against
//! the per-uid call limit (a `Watch` for as long as it lasts), and a
//! connection over the per-uid connection limit gets nothing.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::watch;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;
use tonic::transport::server::Router;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};
use tonic_health::ServingStatus;
use tower::Service;

use super::peer::Peer;
use crate::agent::Agent;
use crate::proto;

/// The service names reflection lists besides the socket's own.
const TOOLING_SERVICES: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Which socket the services are for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Socket {
    /// `keys.sock`: the `Keys` service, open to whoever may connect.
    Service,
    /// `admin.sock`: the `Admin` service, for administrators only.
    Admin,
}

impl Socket {
    /// The name of the keyward service the socket serves.
    pub fn service_name(self) -> &'static str {
        match self {
            Socket::Service => <proto::keys_server::KeysServer<()> as NamedService>::NAME,
            Socket::Admin => <proto::admin_server::AdminServer<()> as NamedService>::NAME,
        }
    }

    fn descriptors(self) -> &'static [u8] {
        match self {
            Socket::Service => proto::KEYS_FILE_DESCRIPTOR_SET,
            Socket::Admin => proto::ADMIN_FILE_DESCRIPTOR_SET,
        }
    }
}

/// The health statuses of both sockets, kept by [`follow_audit`].
#[derive(Clone, Debug)]
pub struct Health {
    service: HealthReporter,
    admin: HealthReporter,
}

impl Health {
    /// Both sockets' statuses, set from `writable` (serving when true).
    pub async fn new(writable: bool) -> Health {
        let health = Health {
            service: HealthReporter::new(),
            admin: HealthReporter::new(),
        };
        health.set(status_of(writable)).await;
        health
    }

    fn reporters(&self) -> [(&HealthReporter, Socket); 2] {
        [(&self.service, Socket::Service), (&self.admin, Socket::Admin)]
    }

    async fn set(&self, status: ServingStatus) {
        for (reporter, socket) in self.reporters() {
            for name in ["", socket.service_name()] {
                reporter.set_service_status(name, status).await;
            }
        }
    }

    /// Shutdown: `NOT_SERVING` from now on, and every `Watch` stream ends
    /// once it has been told (its sender is dropped; a new one takes its
    /// place for the `Check`s that still come).
    async fn shut_down(&self) {
        self.set(ServingStatus::NotServing).await;
        for (reporter, socket) in self.reporters() {
            let mut reporter = reporter.clone();
            for name in ["", socket.service_name()] {
                reporter.clear_service_status(name).await;
                reporter.set_service_status(name, ServingStatus::NotServing).await;
            }
        }
    }

    fn reporter(&self, socket: Socket) -> &HealthReporter {
        match socket {
            Socket::Service => &self.service,
            Socket::Admin => &self.admin,
        }
    }
}

fn status_of(writable: bool) -> ServingStatus {
    if writable {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

/// Keeps `health` in step with `writable` (the audit log's) until `stop`,
/// then shuts it down.
pub async fn follow_audit(health: Health, mut writable: watch::Receiver<bool>, mut stop: watch::Receiver<bool>) {
    let mut serving = None;
    loop {
        let now = *writable.borrow_and_update();
        if serving != Some(now) {
            match now {
                false => tracing::warn!("health: NOT_SERVING while the audit log cannot be written"),
                true if serving.is_some() => tracing::info!("health: SERVING again, the audit log is written"),
                true => {}
            }
            health.set(status_of(now)).await;
            serving = Some(now);
        }
        tokio::select! {
            changed = writable.changed() => if changed.is_err() { break },
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    let _ = stop.wait_for(|s| *s).await;
    health.shut_down().await;
}

/// `router` with the health and reflection services of `socket` added
/// (on the admin socket behind [`AdminOnly`]), each reading requests of at
/// most `max_message_bytes`.
pub fn add<L>(
    router: Router<L>,
    socket: Socket,
    health: &Health,
    agent: &Arc<Agent>,
    max_message_bytes: usize,
) -> io::Result<Router<L>> {
    let health = HealthServer::new(HealthService::from_health_reporter(health.reporter(socket).clone()))
        .max_decoding_message_size(max_message_bytes);
    let reflection = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .include_reflection_service(false)
            .register_encoded_file_descriptor_set(socket.descriptors())
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
            .with_service_name(socket.service_name());
        for name in TOOLING_SERVICES {
            builder = builder.with_service_name(name);
        }
        builder
    };
    let built = |e: tonic_reflection::server::Error| io::Error::other(format!("server reflection: {e}"));
    let v1 = reflection()
        .build_v1()
        .map_err(built)?
        .max_decoding_message_size(max_message_bytes);
    let v1alpha = reflection()
        .build_v1alpha()
        .map_err(built)?
        .max_decoding_message_size(max_message_bytes);
    Ok(match socket {
        Socket::Service => router.add_service(health).add_service(v1).add_service(v1alpha),
        Socket::Admin => router
            .add_service(AdminOnly::new(health, agent))
            .add_service(AdminOnly::new(v1, agent))
            .add_service(AdminOnly::new(v1alpha, agent)),
    })
}

/// A service of the admin socket that answers administrators only
/// ([`super::admin::admit`]); anyone else gets `PERMISSION_DENIED` before
/// the request is read.
#[derive(Clone)]
pub struct AdminOnly<S> {
    inner: S,
    agent: Arc<Agent>,
}

impl<S> AdminOnly<S> {
    fn new(inner: S, agent: &Arc<Agent>) -> AdminOnly<S> {
        AdminOnly {
            inner,
            agent: agent.clone(),
        }
    }
}

impl<S: NamedService> NamedService for AdminOnly<S> {
    const NAME: &'static str = S::NAME;
}

type Answer = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

impl<S> Service<http::Request<Body>> for AdminOnly<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Answer;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Answer {
        // The clone that was driven to readiness serves this call (tower's
        // rule); the fresh clone stays for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let agent = self.agent.clone();
        let peer = request
            .extensions()
            .get::<Arc<Peer>>()
            .cloned()
            .ok_or_else(|| tonic::Status::internal("request without peer credentials; this is a keyward bug"));
        Box::pin(async move {
            match super::admin::admit(&agent, peer).await {
                Ok(_) => inner.call(request).await,
                Err(refused) => Ok(tonic::Status::from(refused).into_http()),
            }
        })
    }
}
