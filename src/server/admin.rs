//! The `Admin` service on the admin socket: operators change keys here.
//!
//! Invariant: only root, the agent's own user or the configured admin group
//! get past [`admit`] ([`crate::policy::may_administer`]);
//! every request is then one agent operation (see [`crate::agent`]).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::peer::{caller_of, Peer};
use crate::agent::caller::Caller;
use crate::agent::error::ApiError;
use crate::agent::{jobs, rotate, rotation_status, Agent};
use crate::audit::{Event, Outcome};
use crate::proto;
use crate::rotation::Command;

/// The admin-socket gRPC service.
pub struct AdminService {
    agent: Arc<Agent>,
}

impl AdminService {
    /// Administers `agent`.
    pub fn new(agent: Arc<Agent>) -> AdminService {
        AdminService { agent }
    }

    /// Refuses callers that are not root, the agent's user or in the admin
    /// group (see [`admit`]).
    async fn authorize<T>(&self, req: &Request<T>) -> Result<Arc<Caller>, ApiError> {
        admit(&self.agent, caller_of(req)).await
    }
}

/// The caller of `peer` if it may use the admin socket: root, the agent's
/// user or a member of the admin group. Anyone else is refused with
/// `PERMISSION_DENIED`, and the refusal is audited (coalesced). The
/// socket's mode already keeps them out; this is the second lock on the
/// door (e.g. a socket passed in by a service manager). Every service on
/// the admin socket goes through it: `Admin` here, health and reflection
/// in [`super::tooling`].
pub(super) async fn admit(agent: &Agent, peer: Result<Arc<Peer>, Status>) -> Result<Arc<Caller>, ApiError> {
    let peer = peer.map_err(|s| ApiError::PermissionDenied(s.message().to_owned()))?;
    if let Some(limit) = &peer.over_limit {
        return Err(ApiError::ResourceExhausted(limit.clone()));
    }
    let caller = peer.caller.clone();
    let me = nix::unistd::geteuid().as_raw();
    let admin_group = agent.config().admin_group;
    if crate::policy::may_administer(&caller.principal(), me, admin_group) {
        return Ok(caller);
    }
    let msg = format!(
        "{} may not use the admin socket: run the command as root (or as a member of the configured admin_group)",
        caller.describe()
    );
    let denied = ApiError::PermissionDenied(msg);
    Err(agent.refuse(Event::Admin, &caller, None, Outcome::Denied, denied).await)
}

impl AdminService {
    /// Promote, rollback and abort: authorize, then one rotation step.
    async fn step(
        &self,
        request: Request<proto::RotationRequest>,
        command: Command,
    ) -> Result<Response<proto::RotationResponse>, Status> {
        let caller = self.authorize(&request).await?;
        let r = request.into_inner();
        let done = rotate::transition(
            &self.agent,
            &caller,
            r.key.as_ref(),
            r.expected_generation,
            command,
            false,
        );
        Ok(Response::new(self.counted(command, r.key.as_ref(), done.await)?))
    }

    /// A rotation step's result, counted (see [`rotate::counted`]).
    fn counted<T>(
        &self,
        command: Command,
        key: Option<&proto::KeyRef>,
        done: Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        rotate::counted(&self.agent, command, key, done)
    }
}

#[tonic::async_trait]
impl proto::admin_server::Admin for AdminService {
    async fn put_key(&self, request: Request<proto::PutKeyRequest>) -> Result<Response<proto::PutKeyResponse>, Status> {
        let caller = self.authorize(&request).await?;
        Ok(Response::new(self.agent.put_key(&caller, request.into_inner()).await?))
    }

    async fn list_keys(
        &self,
        request: Request<proto::ListKeysRequest>,
    ) -> Result<Response<proto::ListKeysResponse>, Status> {
        self.authorize(&request).await?;
        let env = self.agent.env_filter(&request.get_ref().environment)?;
        let keys = self
            .agent
            .list(env)
            .iter()
            .map(|k| rotation_status::key_info(&self.agent, k))
            .collect();
        Ok(Response::new(proto::ListKeysResponse { keys }))
    }

    async fn delete_key(
        &self,
        request: Request<proto::DeleteKeyRequest>,
    ) -> Result<Response<proto::DeleteKeyResponse>, Status> {
        let caller = self.authorize(&request).await?;
        Ok(Response::new(
            self.agent.delete_key(&caller, request.into_inner()).await?,
        ))
    }

    async fn get_status(
        &self,
        request: Request<proto::GetStatusRequest>,
    ) -> Result<Response<proto::AgentStatus>, Status> {
        self.authorize(&request).await?;
        Ok(Response::new(self.agent.status()))
    }

    async fn stage_key(
        &self,
        request: Request<proto::StageKeyRequest>,
    ) -> Result<Response<proto::RotationResponse>, Status> {
        let caller = self.authorize(&request).await?;
        let key = request.get_ref().key.clone();
        let done = rotate::stage(&self.agent, &caller, request.into_inner()).await;
        Ok(Response::new(self.counted(Command::Stage, key.as_ref(), done)?))
    }

    async fn promote_key(
        &self,
        request: Request<proto::RotationRequest>,
    ) -> Result<Response<proto::RotationResponse>, Status> {
        self.step(request, Command::Promote).await
    }

    async fn rollback_key(
        &self,
        request: Request<proto::RotationRequest>,
    ) -> Result<Response<proto::RotationResponse>, Status> {
        self.step(request, Command::Rollback).await
    }

    async fn abort_key(
        &self,
        request: Request<proto::RotationRequest>,
    ) -> Result<Response<proto::RotationResponse>, Status> {
        self.step(request, Command::Abort).await
    }

    async fn retire_key(
        &self,
        request: Request<proto::RetireKeyRequest>,
    ) -> Result<Response<proto::RotationResponse>, Status> {
        let caller = self.authorize(&request).await?;
        let r = request.into_inner();
        let done = rotate::transition(
            &self.agent,
            &caller,
            r.key.as_ref(),
            r.expected_generation,
            Command::Retire,
            r.force,
        );
        Ok(Response::new(self.counted(
            Command::Retire,
            r.key.as_ref(),
            done.await,
        )?))
    }

    async fn get_rotation_status(
        &self,
        request: Request<proto::RotationStatusRequest>,
    ) -> Result<Response<proto::RotationStatus>, Status> {
        self.authorize(&request).await?;
        Ok(Response::new(rotation_status::status(
            &self.agent,
            request.get_ref().key.as_ref(),
        )?))
    }

    async fn start_rotation(
        &self,
        request: Request<proto::StartRotationRequest>,
    ) -> Result<Response<proto::RotationJob>, Status> {
        let caller = self.authorize(&request).await?;
        Ok(Response::new(
            jobs::start(&self.agent, &caller, request.into_inner()).await?,
        ))
    }

    async fn cancel_rotation(
        &self,
        request: Request<proto::CancelRotationRequest>,
    ) -> Result<Response<proto::RotationJob>, Status> {
        let caller = self.authorize(&request).await?;
        Ok(Response::new(
            jobs::cancel(&self.agent, &caller, request.get_ref().key.as_ref()).await?,
        ))
    }

    async fn get_fleet_status(
        &self,
        request: Request<proto::FleetStatusRequest>,
    ) -> Result<Response<proto::FleetStatus>, Status> {
        self.authorize(&request).await?;
        let Some(fleet) = self.agent.fleet() else {
            return Err(ApiError::FailedPrecondition(
                "this agent keeps its keys in its store directory ([backend] kind = \"local\"): there is no fleet; configure [backend] kind = \"openbao\" for fleet mode".to_owned(),
            )
            .into());
        };
        let key = match &request.get_ref().key {
            Some(k) => Some(self.agent.key_ref(Some(k))?),
            None => None,
        };
        Ok(Response::new(fleet.fleet_status(&self.agent, key.as_ref()).await?))
    }

    async fn reseal_fleet(
        &self,
        request: Request<proto::ResealFleetRequest>,
    ) -> Result<Response<proto::ResealFleetResponse>, Status> {
        let caller = self.authorize(&request).await?;
        let env = self.agent.env_filter(&request.get_ref().environment)?;
        Ok(Response::new(self.agent.reseal_fleet(&caller, env).await?))
    }
}
