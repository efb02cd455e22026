//! `aisle.v1.AdminService`: erasure, bundle status, fault injection.

use std::sync::Arc;

use aisle_domain::bundle::BundleMeta;
use aisle_proto::v1 as pb;
use aisle_proto::v1::admin_service_server::AdminService;
use tonic::{Request, Response, Status};

use super::decision::Router;
use crate::engine::Engine;
use crate::error::ApiError;
use crate::faults::{Mode, Stage};

/// The Admin service.
#[derive(Debug, Clone)]
pub struct AdminApi {
    engine: Arc<Engine>,
    router: Router,
}

impl AdminApi {
    /// A service over `engine`.
    pub fn new(engine: Arc<Engine>) -> Self {
        Self {
            router: Router::new(engine.clone()),
            engine,
        }
    }
}

fn info(meta: &BundleMeta, role: &str) -> pb::BundleInfo {
    pb::BundleInfo {
        kind: meta.kind.as_str().to_string(),
        version: meta.version.clone(),
        content_hash: meta.content_hash.clone(),
        created_at: Some(super::timestamp(meta.created_at_ms)),
        loaded_at: Some(super::timestamp(meta.loaded_at_ms)),
        source: meta.source.clone(),
        role: role.to_string(),
    }
}

/// Every loaded bundle.
pub fn bundle_status(engine: &Engine) -> Vec<pb::BundleInfo> {
    let world = engine.worlds.current();
    let mut out = vec![info(&world.catalog.meta, "")];
    out.push(info(&world.default_model.meta, "default"));
    if let Some(c) = &world.candidate {
        out.push(info(&c.meta, "candidate"));
    }
    if let Some(p) = &world.previous {
        out.push(info(&p.meta, "previous"));
    }
    out.push(info(&engine.policy.current().meta, ""));
    out.push(info(&engine.experiments.current().meta, ""));
    out
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn forget_shopper(
        &self,
        request: Request<pb::ForgetShopperRequest>,
    ) -> Result<Response<pb::ForgetShopperResponse>, Status> {
        let req = request.into_inner();
        if req.shopper_id.is_empty() {
            return Err(ApiError::invalid("shopper_id", "required").into());
        }
        if req.shopper_id.len() > aisle_domain::MAX_ID_BYTES {
            return Err(ApiError::invalid("shopper_id", "longer than 256 bytes").into());
        }
        let r = self.router.forget(&req.shopper_id).await?;
        tracing::info!(shopper_ref = %aisle_domain::hash::shopper_ref(&req.shopper_id), session_erased = r.session_erased,
            cached = r.cached_decisions_erased, owner = %r.served_by, "shopper forgotten");
        Ok(Response::new(r))
    }

    async fn bundle_status(
        &self,
        _request: Request<pb::BundleStatusRequest>,
    ) -> Result<Response<pb::BundleStatusResponse>, Status> {
        Ok(Response::new(pb::BundleStatusResponse {
            bundles: bundle_status(&self.engine),
            served_by: self.engine.node_id.clone(),
        }))
    }

    async fn set_fault(
        &self,
        request: Request<pb::SetFaultRequest>,
    ) -> Result<Response<pb::SetFaultResponse>, Status> {
        if !self.engine.config.fault_injection {
            return Err(ApiError::FailedPrecondition(
                "fault injection is disabled on this node (start it with --fault-injection)".into(),
            )
            .into());
        }
        let req = request.into_inner();
        let stage = match pb::FaultStage::try_from(req.stage) {
            Ok(pb::FaultStage::Session) => Stage::Session,
            Ok(pb::FaultStage::Ranking) => Stage::Ranking,
            Ok(pb::FaultStage::Cache) => Stage::Cache,
            Ok(pb::FaultStage::Rules) => Stage::Rules,
            _ => {
                return Err(ApiError::invalid(
                    "stage",
                    format!("unknown or unspecified stage {}", req.stage),
                )
                .into());
            }
        };
        let mode = match pb::FaultMode::try_from(req.mode) {
            Ok(pb::FaultMode::None) => Mode::None,
            Ok(pb::FaultMode::Fail) => Mode::Fail,
            Ok(pb::FaultMode::Stall) => Mode::Stall,
            _ => {
                return Err(ApiError::invalid(
                    "mode",
                    format!("unknown or unspecified mode {}", req.mode),
                )
                .into());
            }
        };
        tracing::warn!(?stage, ?mode, "fault injected");
        self.engine.faults.set(stage, mode);
        Ok(Response::new(pb::SetFaultResponse {}))
    }

    async fn describe_shopper(
        &self,
        request: Request<pb::DescribeShopperRequest>,
    ) -> Result<Response<pb::DescribeShopperResponse>, Status> {
        let req = request.into_inner();
        if req.shopper_id.is_empty() {
            return Err(ApiError::invalid("shopper_id", "required").into());
        }
        if req.shopper_id.len() > aisle_domain::MAX_ID_BYTES {
            return Err(ApiError::invalid("shopper_id", "longer than 256 bytes").into());
        }
        Ok(Response::new(self.router.describe(&req.shopper_id).await?))
    }

    async fn cluster_status(
        &self,
        request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let req = request.into_inner();
        let cluster = &self.engine.cluster;
        let view = cluster.current();
        let shopper_owner = match (&view, req.shopper_id.is_empty()) {
            (Some(v), false) => v
                .shopper_owner(&req.shopper_id)
                .map(|m| m.node_id.clone())
                .unwrap_or_default(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ClusterStatusResponse {
            node_id: cluster.node_id.clone(),
            mode: if cluster.is_clustered() {
                "etcd"
            } else {
                "static"
            }
            .into(),
            member: view.is_some(),
            epoch: view.as_ref().map_or(0, |v| v.epoch),
            members: view
                .iter()
                .flat_map(|v| v.members.iter())
                .map(|m| pb::ClusterMember {
                    node_id: m.node_id.clone(),
                    addr: m.addr.clone(),
                    incarnation: m.incarnation.clone(),
                    leaving: m.leaving,
                })
                .collect(),
            shopper_owner,
            awaiting_handoff: cluster.awaiting(),
        }))
    }

    async fn promote_model(
        &self,
        _request: Request<pb::PromoteModelRequest>,
    ) -> Result<Response<pb::ModelSwitchResponse>, Status> {
        let version = self
            .engine
            .worlds
            .promote()
            .await
            .map_err(ApiError::FailedPrecondition)?;
        Ok(Response::new(pb::ModelSwitchResponse {
            default_model: version,
            served_by: self.engine.node_id.clone(),
        }))
    }

    async fn rollback_model(
        &self,
        _request: Request<pb::RollbackModelRequest>,
    ) -> Result<Response<pb::ModelSwitchResponse>, Status> {
        let version = self
            .engine
            .worlds
            .rollback()
            .await
            .map_err(ApiError::FailedPrecondition)?;
        Ok(Response::new(pb::ModelSwitchResponse {
            default_model: version,
            served_by: self.engine.node_id.clone(),
        }))
    }
}
