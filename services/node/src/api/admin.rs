//! `aisle.v1.AdminService`: erasure, bundle status, fault injection.

use std::sync::Arc;

use aisle_domain::bundle::BundleMeta;
use aisle_proto::v1 as pb;
use aisle_proto::v1::admin_service_server::AdminService;
use tonic::{Request, Response, Status};

use crate::engine::Engine;
use crate::error::ApiError;
use crate::faults::{Mode, Stage};

/// The Admin service.
#[derive(Debug, Clone)]
pub struct AdminApi {
    engine: Arc<Engine>,
}

impl AdminApi {
    /// A service over `engine`.
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
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
        let (session_erased, cached) = self.engine.forget(&req.shopper_id).await?;
        tracing::info!(shopper_ref = %aisle_domain::hash::shopper_ref(&req.shopper_id), session_erased, cached,
            "shopper forgotten");
        Ok(Response::new(pb::ForgetShopperResponse {
            session_erased,
            cached_decisions_erased: cached as u32,
            served_by: self.engine.node_id.clone(),
        }))
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
}
