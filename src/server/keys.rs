//! The `Keys` service on the service socket: what local services call.
//!
//! Invariant: a key is answered only after the policy allowed the caller and
//! the fetch's audit record is written (fail closed unless the environment
//! is configured fail-open). Every refusal is audited too.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::peer::{caller_of, Peer};
use crate::agent::error::ApiError;
use crate::agent::serve::Via;
use crate::agent::Agent;
use crate::audit::{Event, Outcome};
use crate::proto;
use crate::watch::ClientKind;
use crate::wire::shown_key;
use crate::wire::ToWire;

/// The service-socket gRPC service.
pub struct KeysService {
    agent: Arc<Agent>,
}

impl KeysService {
    /// Serves `agent`'s keys.
    pub fn new(agent: Arc<Agent>) -> KeysService {
        KeysService { agent }
    }

    async fn get_key(&self, peer: &Peer, req: &proto::GetKeyRequest) -> Result<proto::KeySet, ApiError> {
        let agent = &self.agent;
        if let Some(limit) = &peer.over_limit {
            agent.metrics().fetch("", "", "over_limit");
            return Err(ApiError::ResourceExhausted(limit.clone()));
        }
        let caller = &peer.caller;
        let key = match agent.key_ref(req.key.as_ref()) {
            Ok(k) => k,
            Err(e) => {
                agent.metrics().fetch("", "", "invalid");
                let shown = req.key.as_ref().map(shown_key);
                return Err(agent
                    .refuse(Event::Fetch, caller, shown, Outcome::InvalidArgument, e)
                    .await);
            }
        };
        let served = agent.serve(caller, &key, Via::Fetch).await?;
        served
            .state()
            .map(|s| s.to_proto())
            .ok_or_else(|| ApiError::NotFound(format!("key {key} does not exist")))
    }
}

type EventStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<proto::KeyEvent, Status>> + Send>>;

#[tonic::async_trait]
impl proto::keys_server::Keys for KeysService {
    async fn get_key(&self, request: Request<proto::GetKeyRequest>) -> Result<Response<proto::KeySet>, Status> {
        let peer = caller_of(&request)?;
        Ok(Response::new(self.get_key(&peer, request.get_ref()).await?))
    }

    type WatchKeysStream = EventStream;

    async fn watch_keys(
        &self,
        request: Request<proto::WatchKeysRequest>,
    ) -> Result<Response<Self::WatchKeysStream>, Status> {
        let peer = caller_of(&request)?;
        let kind = ClientKind::from_header(
            request
                .metadata()
                .get(proto::CLIENT_HEADER)
                .and_then(|v| v.to_str().ok()),
        );
        let events = super::watch_stream::watch(self.agent.clone(), peer, kind, request.into_inner()).await?;
        Ok(Response::new(Box::pin(events)))
    }

    async fn report_auth_failure(
        &self,
        request: Request<proto::AuthFailureReport>,
    ) -> Result<Response<proto::AuthFailureAck>, Status> {
        let peer = caller_of(&request)?;
        if let Some(limit) = &peer.over_limit {
            return Err(ApiError::ResourceExhausted(limit.clone()).into());
        }
        crate::agent::reports::report(&self.agent, &peer.caller, request.get_ref()).await?;
        Ok(Response::new(proto::AuthFailureAck {}))
    }

    async fn report_key_use(
        &self,
        request: Request<proto::KeyUseReport>,
    ) -> Result<Response<proto::KeyUseAck>, Status> {
        let peer = caller_of(&request)?;
        if let Some(limit) = &peer.over_limit {
            return Err(ApiError::ResourceExhausted(limit.clone()).into());
        }
        crate::agent::reports::report_use(&self.agent, &peer.caller, request.get_ref()).await?;
        Ok(Response::new(proto::KeyUseAck {}))
    }
}
