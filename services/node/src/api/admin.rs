//! `aisle.v1.AdminService`: erasure, shopper descriptions, bundle status, cluster status, model promotion, kill
//! switches and fault injection. DescribeShopper runs at the shopper's owner through the [`Router`]; ForgetShopper
//! on every member (`erasure`). In etcd mode, model promotion and kill switches change the control records that
//! every member follows ([`crate::control`]).

use std::sync::Arc;
use std::time::Duration;

use aisle_domain::bundle::BundleMeta;
use aisle_domain::catalog::ItemIdx;
use aisle_proto::v1 as pb;
use aisle_proto::v1::admin_service_server::AdminService;
use aisle_session::SessionContext;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::auth::Identity;
use crate::cluster::{Member, SharedView};
use crate::control::fleet::{self, Versions};
use crate::control::kill_switch::{KillSwitch, SwitchChange, SwitchTier};
use crate::decider::Decider;
use crate::error::ApiError;
use crate::faults::{Mode, Stage};
use crate::node::Node;
use crate::routing::{AtOwner, LocalError, Routed, Router};

/// How long a describe or an erasure may take at the owner.
const SHOPPER_CALL: Duration = Duration::from_secs(5);

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
pub fn bundle_status(decider: &Decider) -> Vec<pb::BundleInfo> {
    let world = decider.worlds().current();
    let mut out = vec![info(&world.catalog.meta, "")];
    out.push(info(&world.default_model.meta, "default"));
    if let Some(c) = &world.candidate {
        out.push(info(&c.meta, "candidate"));
    }
    if let Some(p) = &world.previous {
        out.push(info(&p.meta, "previous"));
    }
    out.push(info(&decider.policy().current().meta, ""));
    out.push(info(&decider.experiments().current().meta, ""));
    out
}

/// Versions as the API shows them.
fn versions(v: &Versions) -> pb::FleetVersions {
    pb::FleetVersions {
        default_model: v.default_model.clone(),
        candidate_model: v.candidate_model.clone().unwrap_or_default(),
        previous_model: v.previous_model.clone().unwrap_or_default(),
        rules: v.rules.clone(),
        experiments: v.experiments.clone(),
    }
}

fn switch_tier(t: SwitchTier) -> pb::FallbackTier {
    match t {
        SwitchTier::Rules => pb::FallbackTier::Rules,
        SwitchTier::Generic => pb::FallbackTier::Generic,
    }
}

/// A kill switch as the API shows it.
fn kill_switch(s: &KillSwitch) -> pb::KillSwitch {
    pb::KillSwitch {
        surface: s.key.surface.map(|v| v.as_str()).unwrap_or_default().into(),
        channel: s.key.channel.map(|v| v.as_str()).unwrap_or_default().into(),
        tier: switch_tier(s.tier) as i32,
        reason: s.reason.clone(),
        caller: s.caller.clone(),
        set_at_ms: s.set_at_ms,
    }
}

/// A shopper id given to an admin call.
pub(crate) fn shopper_id(value: &str) -> Result<&str, ApiError> {
    if value.is_empty() {
        return Err(ApiError::required("shopper_id"));
    }
    if value.len() > aisle_domain::MAX_ID_BYTES {
        return Err(ApiError::invalid("shopper_id", "longer than 256 bytes"));
    }
    Ok(value)
}

/// What an owner tells of a shopper's session.
fn describe_response(
    node: &Node,
    shopper_id: &str,
    session: Option<SessionContext>,
) -> pb::DescribeShopperResponse {
    let mut out = pb::DescribeShopperResponse {
        served_by: node.id().to_string(),
        shopper_ref: node.decider().pseudonyms().of(shopper_id),
        ..Default::default()
    };
    let Some(context) = session else {
        return out;
    };
    let catalog = node.decider().worlds().current().catalog.clone();
    let view = context.view(&node.config().session_limits);
    let id = |i: ItemIdx| catalog.item(i).id.to_string();
    out.has_session = true;
    out.events_applied = context.events_applied();
    out.recent_item_ids = view
        .items
        .iter()
        .map(|v| v.item.known().map(id).unwrap_or_default())
        .collect();
    out.cart_item_ids = view.cart.iter().map(|&i| id(i)).collect();
    out.purchased_item_ids = view.purchased.iter().map(|&i| id(i)).collect();
    out.top_categories = view
        .category_affinity
        .iter()
        .map(|(c, _)| catalog.categories[*c as usize].name.clone())
        .collect();
    out.searches = view.searches.iter().map(|s| s.to_string()).collect();
    out.consent = context.consent();
    out.store_id = context.store_id().unwrap_or_default().to_string();
    out
}

/// A DescribeShopper at the shopper's owner.
pub struct DescribeCall<'a> {
    /// The node.
    pub node: &'a Node,
    /// The shopper.
    pub shopper_id: &'a str,
}

impl AtOwner for DescribeCall<'_> {
    type Output = pb::DescribeShopperResponse;
    const RPC: &'static str = "describe";

    fn shopper(&self) -> &str {
        self.shopper_id
    }

    async fn local(&self, _view: &SharedView) -> Result<Self::Output, LocalError> {
        let session = self.node.decider().session(self.shopper_id).await?;
        Ok(describe_response(self.node, self.shopper_id, session))
    }

    async fn remote(
        &self,
        view: &SharedView,
        owner: &Member,
        deadline: Instant,
    ) -> Result<Self::Output, Status> {
        let call = forward_to_owner(self.node, self.shopper_id, view, deadline);
        let mut client = self.node.cluster().peers.client(&owner.addr)?;
        client
            .forward_describe(call)
            .await
            .map(Response::into_inner)
    }
}

/// A per-shopper request for the shopper's owner under `view`, due by `deadline`.
pub(crate) fn forward_to_owner(
    node: &Node,
    shopper_id: &str,
    view: &SharedView,
    deadline: Instant,
) -> Request<pb::ForwardDescribeRequest> {
    let mut call = Request::new(pb::ForwardDescribeRequest {
        shopper_id: shopper_id.to_string(),
        epoch: view.epoch,
        from_node: node.id().to_string(),
        view_fingerprint: view.fingerprint,
    });
    call.set_timeout(deadline.saturating_duration_since(Instant::now()));
    call
}

/// Runs a per-shopper admin call at the owner.
///
/// # Errors
/// UNAVAILABLE when no owner can be reached (the message says why); the owner's or this node's error otherwise.
async fn at_owner<C: AtOwner>(node: &Node, call: &C) -> Result<C::Output, ApiError> {
    match Router::new(node.cluster())
        .at_owner(call, Instant::now() + SHOPPER_CALL)
        .await
    {
        Routed::Answered(r) => Ok(r),
        Routed::NoOwner(why) => Err(ApiError::Unavailable(format!(
            "the shopper's owner cannot be reached ({why}); retry"
        ))),
        Routed::Failed(e) => Err(e),
    }
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
        let r = crate::erasure::forget_everywhere(&self.node, shopper, &caller).await?;
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
        Ok(Response::new(pb::BundleStatusResponse {
            bundles: bundle_status(self.node.decider()),
            served_by: self.node.id().to_string(),
        }))
    }

    async fn set_fault(
        &self,
        request: Request<pb::SetFaultRequest>,
    ) -> Result<Response<pb::SetFaultResponse>, Status> {
        if !self.node.config().fault_injection {
            return Err(ApiError::FailedPrecondition(
                "fault injection is disabled on this node (start it with --fault-injection)".into(),
            )
            .into());
        }
        let caller = Identity::of(&request).name;
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
        audited(
            &self.node,
            "set_fault",
            &caller,
            serde_json::json!({"stage": format!("{stage:?}"), "mode": format!("{mode:?}")}),
        )
        .await?;
        tracing::warn!(target: "aisle::admin", %caller, ?stage, ?mode, "fault injected");
        self.node.decider().faults().set(stage, mode);
        Ok(Response::new(pb::SetFaultResponse {}))
    }

    async fn describe_shopper(
        &self,
        request: Request<pb::DescribeShopperRequest>,
    ) -> Result<Response<pb::DescribeShopperResponse>, Status> {
        let caller = Identity::of(&request).name;
        let req = request.into_inner();
        let call = DescribeCall {
            node: &self.node,
            shopper_id: shopper_id(&req.shopper_id)?,
        };
        let mut r = at_owner(&self.node, &call).await?;
        r.held = crate::erasure::held_everywhere(&self.node, &req.shopper_id).await;
        tracing::info!(target: "aisle::admin", %caller,
            shopper_ref = %self.node.decider().pseudonyms().of(&req.shopper_id), "shopper described");
        Ok(Response::new(r))
    }

    async fn cluster_status(
        &self,
        request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        tracing::info!(target: "aisle::admin", caller = %Identity::of(&request).name, "cluster status read");
        let req = request.into_inner();
        let cluster = self.node.cluster();
        let view = cluster.current();
        let shopper_owner = match (&view, req.shopper_id.is_empty()) {
            (Some(v), false) => v
                .shopper_owner(&req.shopper_id)
                .map(|m| m.node_id.clone())
                .unwrap_or_default(),
            _ => String::new(),
        };
        let control = self.node.control().status();
        let desired = control.mirror.desired.value.as_ref();
        // What each member serves (this node: as loaded now), and where it differs from the record (without one:
        // from this node).
        let reference = desired.map_or(&control.mine, |d| &d.versions);
        let members: Vec<pb::ClusterMember> = view
            .iter()
            .flat_map(|v| v.members.iter())
            .map(|m| {
                let served = if m.node_id == cluster.node_id {
                    Some(&control.mine)
                } else {
                    control
                        .mirror
                        .loaded
                        .get(&m.node_id)
                        .map(|l| &l.value.versions)
                };
                pb::ClusterMember {
                    node_id: m.node_id.clone(),
                    addr: m.addr.clone(),
                    incarnation: m.incarnation.clone(),
                    leaving: m.leaving,
                    versions: served.map(versions),
                    skew: match served {
                        Some(v) => fleet::skew(v, reference)
                            .into_iter()
                            .map(String::from)
                            .collect(),
                        None => vec!["unknown".into()],
                    },
                }
            })
            .collect();
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
            version_skew: members.iter().any(|m| !m.skew.is_empty()),
            members,
            shopper_owner,
            awaiting_handoff: cluster.awaiting(),
            desired: desired.map(|d| pb::DesiredVersions {
                versions: Some(versions(&d.versions)),
                revision: d.revision,
                change: d.change.clone(),
                changed_by: d.changed_by.clone(),
                changed_at_ms: d.changed_at_ms,
            }),
            kill_switches: control.switches.iter().map(kill_switch).collect(),
            kill_switch_revision: control.mirror.switches.value.revision,
        }))
    }

    async fn promote_model(
        &self,
        request: Request<pb::PromoteModelRequest>,
    ) -> Result<Response<pb::ModelSwitchResponse>, Status> {
        let caller = Identity::of(&request).name;
        audited(&self.node, "promote_model", &caller, serde_json::json!({})).await?;
        let r = switch_models(&self.node, true, &caller).await?;
        tracing::info!(target: "aisle::admin", %caller, default_model = %r.default_model,
            members = r.members.len(), "candidate model promoted");
        Ok(Response::new(r))
    }

    async fn rollback_model(
        &self,
        request: Request<pb::RollbackModelRequest>,
    ) -> Result<Response<pb::ModelSwitchResponse>, Status> {
        let caller = Identity::of(&request).name;
        audited(&self.node, "rollback_model", &caller, serde_json::json!({})).await?;
        let r = switch_models(&self.node, false, &caller).await?;
        tracing::info!(target: "aisle::admin", %caller, default_model = %r.default_model,
            members = r.members.len(), "model rolled back");
        Ok(Response::new(r))
    }

    async fn set_kill_switch(
        &self,
        request: Request<pb::SetKillSwitchRequest>,
    ) -> Result<Response<pb::SetKillSwitchResponse>, Status> {
        let caller = Identity::of(&request).name;
        let req = request.into_inner();
        let change = super::validate::kill_switch(&req, &caller, aisle_domain::now_ms())?;
        let (key, tier) = match &change {
            SwitchChange::On(s) => (Some(s.key), Some(s.tier)),
            SwitchChange::Off(key) => (Some(*key), None),
            SwitchChange::AllOff => (None, None),
        };
        let surface = key.and_then(|k| k.surface).map(|s| s.as_str());
        let channel = key.and_then(|k| k.channel).map(|c| c.as_str());
        audited(
            &self.node,
            "kill_switch",
            &caller,
            serde_json::json!({
                "on": req.on, "surface": surface, "channel": channel, "all": req.all, "tier": tier,
                "reason": req.reason,
            }),
        )
        .await?;
        let r = self.node.control().set_kill_switch(&change).await?;
        tracing::warn!(target: "aisle::admin", %caller, on = req.on, surface = surface.unwrap_or("any"),
            channel = channel.unwrap_or("any"), all = req.all, ?tier, reason = %req.reason, changed = r.changed,
            revision = r.record.revision, applied_by = ?r.applied_by, pending = ?r.pending, "kill switch set");
        Ok(Response::new(pb::SetKillSwitchResponse {
            active: r.record.switches.iter().map(kill_switch).collect(),
            revision: r.record.revision,
            scope: if r.clustered { "cluster" } else { "node" }.into(),
            applied_by: r.applied_by,
            pending: r.pending,
            served_by: self.node.id().to_string(),
            changed: r.changed,
        }))
    }
}

/// Records an admin action in this node's decision trail before it is carried out: an action the trail cannot
/// record durably is refused (UNAVAILABLE, naming the trail's error), so no admin action goes unaudited.
///
/// # Errors
/// UNAVAILABLE when the record could not be made durable.
pub async fn audited(
    node: &Node,
    action: &'static str,
    caller: &str,
    details: serde_json::Value,
) -> Result<(), ApiError> {
    node.decider()
        .audit_action(action, caller, details)
        .await
        .map_err(|e| {
            ApiError::Unavailable(format!(
                "refused: the decision trail cannot record this {action} ({e}); retry when it can"
            ))
        })
}

/// Promotes the candidate model (or rolls back) on this node.
///
/// # Errors
/// When there is nothing to promote or roll back.
pub async fn switch_here(node: &Node, promote: bool) -> Result<String, ApiError> {
    let worlds = node.decider().worlds();
    let switched = if promote {
        worlds.promote().await
    } else {
        worlds.rollback().await
    };
    Ok(switched?)
}

/// Promotes the candidate model (or rolls back): in etcd mode, in the fleet's versions record, which every member
/// follows (the answer says where each member is after up to 5 s); in static mode, on this node.
///
/// # Errors
/// FAILED_PRECONDITION when there is nothing to promote or roll back; UNAVAILABLE when etcd cannot be reached.
async fn switch_models(
    node: &Node,
    promote: bool,
    caller: &str,
) -> Result<pb::ModelSwitchResponse, ApiError> {
    let control = node.control();
    if !control.is_clustered() {
        let default_model = switch_here(node, promote).await?;
        return Ok(pb::ModelSwitchResponse {
            default_model: default_model.clone(),
            served_by: node.id().to_string(),
            members: vec![pb::MemberModel {
                node_id: node.id().to_string(),
                default_model,
                converged: true,
            }],
        });
    }
    let r = control.switch_models(promote, caller).await?;
    Ok(pb::ModelSwitchResponse {
        default_model: r.desired.default_model,
        served_by: node.id().to_string(),
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
