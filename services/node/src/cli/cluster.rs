//! `aisle cluster`: a node's view of the cluster — its members and epoch, a shopper's owner, the versions each
//! member serves beside the fleet's record, and the kill switches in force.

use aisle_proto::v1 as pb;
use clap::Args;
use serde_json::{Value, json};

use super::connect::{AddrArgs, admin, print, status, with_token};
use super::kill_switch::{switch_json, switch_lines};

/// `aisle cluster`.
#[derive(Debug, Args, Clone)]
pub struct ClusterArgs {
    #[command(flatten)]
    addr: AddrArgs,
    /// Also name this shopper's owner.
    #[arg(long, default_value = "")]
    shopper: String,
}

/// `aisle cluster`.
///
/// # Errors
/// Connection failures and error statuses.
pub(super) async fn cluster(a: ClusterArgs) -> anyhow::Result<()> {
    let r = admin(&a.addr)
        .await?
        .cluster_status(with_token(
            &a.addr,
            pb::ClusterStatusRequest {
                shopper_id: a.shopper.clone(),
            },
        )?)
        .await
        .map_err(status)?
        .into_inner();
    print(a.addr.json, &cluster_json(&r), || {
        cluster_text(&r, &a.shopper)
    });
    Ok(())
}

/// The JSON form of a node's view of the cluster.
fn cluster_json(r: &pb::ClusterStatusResponse) -> Value {
    let versions_json = |v: &Option<pb::FleetVersions>| {
        v.as_ref().map(|v| {
            let mut fields = json!({
                "default_model": v.default_model, "candidate_model": v.candidate_model,
                "previous_model": v.previous_model, "rules": v.rules, "experiments": v.experiments,
            });
            for (field, version) in &v.bundles {
                fields[field.as_str()] = json!(version);
            }
            fields
        })
    };
    json!({
        "node_id": r.node_id,
        "mode": r.mode,
        "member": r.member,
        "epoch": r.epoch,
        "members": r.members.iter().map(|m| json!({
            "node_id": m.node_id, "addr": m.addr, "incarnation": m.incarnation, "leaving": m.leaving,
            "versions": versions_json(&m.versions), "skew": m.skew,
        })).collect::<Vec<_>>(),
        "shopper_owner": r.shopper_owner,
        "awaiting_handoff": r.awaiting_handoff,
        "desired": r.desired.as_ref().map(|d| json!({
            "versions": versions_json(&d.versions), "revision": d.revision, "change": d.change,
            "changed_by": d.changed_by, "changed_at_ms": d.changed_at_ms,
        })),
        "version_skew": r.version_skew,
        "kill_switches": r.kill_switches.iter().map(switch_json).collect::<Vec<_>>(),
        "kill_switch_revision": r.kill_switch_revision,
    })
}

/// The summary of a node's view: membership, one line per member, the shopper's owner when asked, the versions
/// table and the kill switches.
fn cluster_text(r: &pb::ClusterStatusResponse, shopper: &str) -> String {
    let mut out = format!(
        "{} ({}): {} at epoch {}\n",
        r.node_id,
        r.mode,
        if r.member {
            "member"
        } else {
            "NOT a member (joining or fenced)"
        },
        r.epoch
    );
    for m in &r.members {
        out.push_str(&format!(
            "  {:<16} {:<28} incarnation {}{}\n",
            m.node_id,
            m.addr,
            m.incarnation,
            if m.leaving { " (leaving)" } else { "" }
        ));
    }
    if !shopper.is_empty() {
        out.push_str(&format!("owner of {}: {}\n", shopper, r.shopper_owner));
    }
    out.push_str(&versions_table(r));
    out.push_str(&format!(
        "kill switches (revision {}):\n{}\n",
        r.kill_switch_revision,
        switch_lines(&r.kill_switches)
    ));
    out.trim_end().to_string()
}

/// The fields of the other bundle kinds the rows name (rules and experiments first, then any other, by name).
fn bundle_fields(r: &pb::ClusterStatusResponse) -> Vec<String> {
    let rows = r
        .desired
        .iter()
        .filter_map(|d| d.versions.as_ref())
        .chain(r.members.iter().filter_map(|m| m.versions.as_ref()));
    let mut fields: Vec<String> = vec!["rules".into(), "experiments".into()];
    let mut others: Vec<String> = rows
        .flat_map(|v| v.bundles.keys().cloned())
        .filter(|f| !fields.contains(f))
        .collect();
    others.sort();
    others.dedup();
    fields.extend(others);
    fields
}

/// What every member serves, side by side with the fleet's record; skewed fields marked `*`.
fn versions_table(r: &pb::ClusterStatusResponse) -> String {
    let fields = bundle_fields(r);
    let row = |name: &str, v: Option<&pb::FleetVersions>, skew: &[String]| {
        let cell = |field: &str, value: Option<&str>| {
            let value = match value {
                Some("") => "-",
                Some(v) => v,
                None => "?",
            };
            let mark = if skew.iter().any(|s| s == field || s == "unknown") {
                "*"
            } else {
                ""
            };
            format!("{value}{mark}")
        };
        let mut line = format!(
            "  {:<16} {:<28} {:<28}",
            name,
            cell("default_model", v.map(|v| v.default_model.as_str())),
            cell("candidate_model", v.map(|v| v.candidate_model.as_str())),
        );
        for field in &fields {
            let version = v.map(|v| match v.bundles.get(field) {
                Some(version) => version.as_str(),
                None if field == "rules" => v.rules.as_str(),
                None if field == "experiments" => v.experiments.as_str(),
                None => "",
            });
            line.push_str(&format!(" {:<24}", cell(field, version)));
        }
        format!("{}\n", line.trim_end())
    };
    let mut header = format!(
        "  {:<16} {:<28} {:<28}",
        "", "default model", "candidate model"
    );
    for field in &fields {
        header.push_str(&format!(" {field:<24}"));
    }
    let mut out = format!("versions:\n{}\n", header.trim_end());
    if let Some(d) = &r.desired {
        out.push_str(&row(
            &format!("(record #{})", d.revision),
            d.versions.as_ref(),
            &[],
        ));
    }
    for m in &r.members {
        out.push_str(&row(&m.node_id, m.versions.as_ref(), &m.skew));
    }
    if r.version_skew {
        out.push_str(if r.desired.is_some() {
            "  SKEW: members marked * serve other versions than the record\n"
        } else {
            "  SKEW: members marked * serve other versions than this node\n"
        });
    }
    out
}
