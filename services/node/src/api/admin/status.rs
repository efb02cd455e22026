//! What the operators' status calls show, as protobuf: the bundles this node serves (`aisle bundles`), and the
//! cluster — members, epoch, each member's versions beside the fleet's record, kill switches (`aisle cluster`).

use aisle_domain::bundle::BundleMeta;
use aisle_proto::v1 as pb;

use crate::control::fleet::{self, Versions};
use crate::engine::kill_switch::{KillSwitch, SwitchTier};
use crate::node::Node;
use crate::shopper::decide::timestamp;

fn info(meta: &BundleMeta, role: &str) -> pb::BundleInfo {
    pb::BundleInfo {
        kind: meta.kind.as_str().to_string(),
        version: meta.version.clone(),
        content_hash: meta.content_hash.clone(),
        created_at: Some(timestamp(meta.created_at_ms)),
        loaded_at: Some(timestamp(meta.loaded_at_ms)),
        source: meta.source.clone(),
        role: role.to_string(),
    }
}

/// Every bundle this node serves, with its role.
pub(super) fn bundles(node: &Node) -> pb::BundleStatusResponse {
    pb::BundleStatusResponse {
        bundles: node
            .bundles
            .status()
            .iter()
            .map(|(meta, role)| info(meta, role))
            .collect(),
        served_by: node.id().to_string(),
    }
}

/// Versions as the API shows them.
pub(super) fn versions(v: &Versions) -> pb::FleetVersions {
    let named = |f: &str| v.field(f).unwrap_or_default().to_string();
    pb::FleetVersions {
        default_model: v.default_model.clone(),
        candidate_model: v.candidate_model.clone().unwrap_or_default(),
        previous_model: v.previous_model.clone().unwrap_or_default(),
        rules: named("rules"),
        experiments: named("experiments"),
        bundles: v.bundles.clone().into_iter().collect(),
    }
}

fn switch_tier(t: SwitchTier) -> pb::FallbackTier {
    match t {
        SwitchTier::Rules => pb::FallbackTier::Rules,
        SwitchTier::Generic => pb::FallbackTier::Generic,
    }
}

/// A kill switch as the API shows it.
pub(super) fn kill_switch(s: &KillSwitch) -> pb::KillSwitch {
    pb::KillSwitch {
        surface: s.key.surface.map(|v| v.as_str()).unwrap_or_default().into(),
        channel: s.key.channel.map(|v| v.as_str()).unwrap_or_default().into(),
        tier: switch_tier(s.tier) as i32,
        reason: s.reason.clone(),
        caller: s.caller.clone(),
        set_at_ms: s.set_at_ms,
    }
}

/// The cluster as this node sees it; `shopper_id` (when given) asks who owns that shopper.
pub(super) fn cluster(node: &Node, shopper_id: &str) -> pb::ClusterStatusResponse {
    let cluster = &node.cluster;
    let view = cluster.current();
    let shopper_owner = match (&view, shopper_id.is_empty()) {
        (Some(v), false) => v
            .shopper_owner(shopper_id)
            .map(|m| m.node_id.clone())
            .unwrap_or_default(),
        _ => String::new(),
    };
    let control = node.control.status();
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
    pb::ClusterStatusResponse {
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
    }
}
