//! `aisle.v1.AdminService`, for operators: reads need `admin:read` (DescribeShopper, BundleStatus, ClusterStatus),
//! changes `admin:write` (ForgetShopper, SetFault, PromoteModel, RollbackModel, SetKillSwitch). Every change is
//! recorded in the decision trail, with the caller, before it is carried out; a change the trail cannot record is
//! refused. DescribeShopper and ForgetShopper are per-shopper use cases ([`crate::shopper`]); model moves and kill
//! switches go through the control records ([`crate::control`]), which every member follows.

mod status;

use std::sync::Arc;

use aisle_proto::v1 as pb;
use aisle_proto::v1::admin_service_server::AdminService;
use tonic::{Request, Response, Status};

use crate::engine::faults::{Mode, Stage};
use crate::engine::kill_switch::SwitchChange;
use crate::error::ApiError;
use crate::node::Node;
use crate::security::auth::Identity;
use crate::shopper::{describe, erase, shopper_id, validate};

/// The Admin service.
#[derive(Debug, Clone)]
pub struct AdminApi {
    node: Arc<Node>,
}

impl AdminApi {
    /// A service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    /// Records an admin action in this node's decision trail before it is carried out: an action the trail cannot
    /// record durably is refused (UNAVAILABLE, naming the trail's error), so no admin action goes unaudited.
    async fn audited(
        &self,
        action: &'static str,
        caller: &str,
        details: serde_json::Value,
    ) -> Result<(), ApiError> {
        self.node
            .logs
            .audit_action(action, caller, details)
            .await
            .map_err(|e| {
                ApiError::Unavailable(format!(
                    "refused: the decision trail cannot record this {action} ({e}); retry when it can"
                ))
            })
    }

    /// Promotes the candidate model (or rolls back), for the fleet in etcd mode, on this node alone otherwise.
    async fn switch_models(
        &self,
        promote: bool,
        caller: &str,
    ) -> Result<pb::ModelSwitchResponse, ApiError> {
        let action = if promote {
            "promote_model"
        } else {
            "rollback_model"
        };
        self.audited(action, caller, serde_json::json!({})).await?;
        let r = self.node.control.switch_models(promote, caller).await?;
        let (default_model, members) = (&r.desired.default_model, r.members.len());
        if promote {
            tracing::info!(target: "aisle::admin", %caller, %default_model, members, "candidate model promoted");
        } else {
            tracing::info!(target: "aisle::admin", %caller, %default_model, members, "model rolled back");
        }
        Ok(pb::ModelSwitchResponse {
            default_model: r.desired.default_model,
            served_by: self.node.id().to_string(),
            members: r
                .members
                .into_iter()
                .map(|m| pb::MemberModel {
                    node_id: m.node_id,
                    default_model: m.default_model,
                    converged: m.converged,
                })
                .collect(),
        })
    }
}

/// The stage and mode a SetFault names.
fn fault(req: &pb::SetFaultRequest) -> Result<(Stage, Mode), ApiError> {
    let stage = match pb::FaultStage::try_from(req.stage) {
        Ok(pb::FaultStage::Session) => Stage::Session,
        Ok(pb::FaultStage::Ranking) => Stage::Ranking,
        Ok(pb::FaultStage::Cache) => Stage::Cache,
        Ok(pb::FaultStage::Rules) => Stage::Rules,
        _ => {
            let why = format!("unknown or unspecified stage {}", req.stage);
            return Err(ApiError::invalid("stage", why));
        }
    };
    let mode = match pb::FaultMode::try_from(req.mode) {
        Ok(pb::FaultMode::None) => Mode::None,
        Ok(pb::FaultMode::Fail) => Mode::Fail,
        Ok(pb::FaultMode::Stall) => Mode::Stall,
        _ => {
            let why = format!("unknown or unspecified mode {}", req.mode);
            return Err(ApiError::invalid("mode", why));
        }
    };
    Ok((stage, mode))
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn forget_shopper(
        &self,
        request: Request<pb::ForgetShopperRequest>,
    ) -> Result<Response<pb::ForgetShopperResponse>, Status> {
        let caller = Identity::of(&request).name;
        let req = request.into_inner();
        let shopper = shopper_id(&req.shopper_id)?;
        let r = erase::forget_everywhere(&self.node, shopper, &caller).await?;
        tracing::info!(target: "aisle::admin", %caller, shopper_ref = %r.shopper_ref,
            session_erased = r.session_erased, members = r.receipts.len(), owner = %r.served_by,
            "shopper forgotten");
        Ok(Response::new(r))
    }

    async fn bundle_status(
        &self,
        request: Request<pb::BundleStatusRequest>,
    ) -> Result<Response<pb::BundleStatusResponse>, Status> {
        tracing::info!(target: "aisle::admin", caller = %Identity::of(&request).name, "bundle status read");
        Ok(Response::new(status::bundles(&self.node)))
    }

    async fn set_fault(
        &self,
        request: Request<pb::SetFaultRequest>,
    ) -> Result<Response<pb::SetFaultResponse>, Status> {
        if !self.node.config.fault_injection {
            return Err(ApiError::FailedPrecondition(
                "fault injection is disabled on this node (start it with --fault-injection)".into(),
            )
            .into());
        }
        let caller = Identity::of(&request).name;
        let (stage, mode) = fault(request.get_ref())?;
        let details =
            serde_json::json!({"stage": format!("{stage:?}"), "mode": format!("{mode:?}")});
        self.audited("set_fault", &caller, details).await?;
        tracing::warn!(target: "aisle::admin", %caller, ?stage, ?mode, "fault injected");
        self.node.decider.faults().set(stage, mode);
        Ok(Response::new(pb::SetFaultResponse {}))
    }

    async fn describe_shopper(
        &self,
        request: Request<pb::DescribeShopperRequest>,
    ) -> Result<Response<pb::DescribeShopperResponse>, Status> {
        let caller = Identity::of(&request).name;
        let req = request.into_inner();
        let r = describe::describe(&self.node, shopper_id(&req.shopper_id)?).await?;
        tracing::info!(target: "aisle::admin", %caller, shopper_ref = %r.shopper_ref, "shopper described");
        Ok(Response::new(r))
    }

    async fn cluster_status(
        &self,
        request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        tracing::info!(target: "aisle::admin", caller = %Identity::of(&request).name, "cluster status read");
        let req = request.into_inner();
        Ok(Response::new(status::cluster(&self.node, &req.shopper_id)))
    }

    async fn promote_model(
        &self,
        request: Request<pb::PromoteModelRequest>,
    ) -> Result<Response<pb::ModelSwitchResponse>, Status> {
        let caller = Identity::of(&request).name;
        Ok(Response::new(self.switch_models(true, &caller).await?))
    }

    async fn rollback_model(
        &self,
        request: Request<pb::RollbackModelRequest>,
    ) -> Result<Response<pb::ModelSwitchResponse>, Status> {
        let caller = Identity::of(&request).name;
        Ok(Response::new(self.switch_models(false, &caller).await?))
    }

    async fn set_kill_switch(
        &self,
        request: Request<pb::SetKillSwitchRequest>,
    ) -> Result<Response<pb::SetKillSwitchResponse>, Status> {
        let caller = Identity::of(&request).name;
        let req = request.into_inner();
        let change = validate::kill_switch(&req, &caller, aisle_domain::now_ms())?;
        let (key, tier) = match &change {
            SwitchChange::On(s) => (Some(s.key), Some(s.tier)),
            SwitchChange::Off(key) => (Some(*key), None),
            SwitchChange::AllOff => (None, None),
        };
        let surface = key.and_then(|k| k.surface).map(|s| s.as_str());
        let channel = key.and_then(|k| k.channel).map(|c| c.as_str());
        let details = serde_json::json!({
            "on": req.on, "surface": surface, "channel": channel, "all": req.all, "tier": tier,
            "reason": req.reason,
        });
        self.audited("kill_switch", &caller, details).await?;
        let r = self.node.control.set_kill_switch(&change).await?;
        tracing::warn!(target: "aisle::admin", %caller, on = req.on, surface = surface.unwrap_or("any"),
            channel = channel.unwrap_or("any"), all = req.all, ?tier, reason = %req.reason, changed = r.changed,
            revision = r.record.revision, applied_by = ?r.applied_by, pending = ?r.pending, "kill switch set");
        Ok(Response::new(pb::SetKillSwitchResponse {
            active: r.record.switches.iter().map(status::kill_switch).collect(),
            revision: r.record.revision,
            scope: if r.clustered { "cluster" } else { "node" }.into(),
            applied_by: r.applied_by,
            pending: r.pending,
            served_by: self.node.id().to_string(),
            changed: r.changed,
        }))
    }
}
