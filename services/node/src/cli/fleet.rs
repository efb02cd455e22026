//! Operator commands about what nodes serve: `aisle bundles` lists a node's loaded bundles, `aisle model` promotes
//! or rolls back the fleet's model, `aisle fault` injects a fault for a drill. All go to the AdminService.

use aisle_proto::v1 as pb;
use clap::Args;
use serde_json::json;

use super::connect::{AddrArgs, admin, parse_enum, print, status, with_token};

/// `aisle bundles`.
///
/// # Errors
/// Connection failures and error statuses.
pub(super) async fn bundles(a: AddrArgs) -> anyhow::Result<()> {
    let r = admin(&a)
        .await?
        .bundle_status(with_token(&a, pb::BundleStatusRequest {})?)
        .await
        .map_err(status)?
        .into_inner();
    let value = json!({
        "served_by": r.served_by,
        "bundles": r.bundles.iter().map(|b| json!({
            "kind": b.kind, "role": b.role, "version": b.version, "content_hash": b.content_hash, "source": b.source,
            "loaded_at_unix": b.loaded_at.as_ref().map(|t| t.seconds),
        })).collect::<Vec<_>>(),
    });
    print(a.json, &value, || {
        r.bundles
            .iter()
            .map(|b| {
                format!(
                    "{:<12} {:<10} {:<32} {}  {}",
                    b.kind,
                    b.role,
                    b.version,
                    &b.content_hash[..b.content_hash.len().min(12)],
                    b.source
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}

/// What `aisle model` does.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ModelAction {
    /// Make the candidate model the default on every member.
    Promote,
    /// Restore the default model from before the last promotion on every member.
    Rollback,
}

/// `aisle model`.
#[derive(Debug, Args, Clone)]
pub struct ModelArgs {
    /// promote or rollback.
    #[arg(value_enum)]
    action: ModelAction,
    #[command(flatten)]
    addr: AddrArgs,
}

/// `aisle model promote|rollback`: in etcd mode, changes the fleet's versions record, which every member follows
/// (prints where each member is); in static mode, switches the node at `--addr`.
///
/// # Errors
/// Connection failures and error statuses (members already switched stay switched; the message says which).
pub(super) async fn model(a: ModelArgs) -> anyhow::Result<()> {
    let mut client = admin(&a.addr).await?;
    let r = match a.action {
        ModelAction::Promote => {
            client
                .promote_model(with_token(&a.addr, pb::PromoteModelRequest {})?)
                .await
        }
        ModelAction::Rollback => {
            client
                .rollback_model(with_token(&a.addr, pb::RollbackModelRequest {})?)
                .await
        }
    }
    .map_err(status)?
    .into_inner();
    let value = json!({
        "default_model": r.default_model,
        "switched": r.members.iter().map(|m| json!({
            "node_id": m.node_id, "default_model": m.default_model, "converged": m.converged,
        })).collect::<Vec<_>>(),
    });
    print(a.addr.json, &value, || {
        r.members
            .iter()
            .map(|m| {
                format!(
                    "{}: default model {}{}",
                    m.node_id,
                    m.default_model,
                    if m.converged {
                        ""
                    } else {
                        " (not following the fleet's record yet: see `aisle cluster`)"
                    }
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}

/// `aisle fault`.
#[derive(Debug, Args, Clone)]
pub struct FaultArgs {
    #[command(flatten)]
    addr: AddrArgs,
    /// Stage: session, ranking, cache, rules.
    #[arg(long)]
    stage: String,
    /// Mode: none, fail, stall.
    #[arg(long)]
    mode: String,
}

/// `aisle fault`.
///
/// # Errors
/// Connection failures and error statuses.
pub(super) async fn fault(a: FaultArgs) -> anyhow::Result<()> {
    let mut client = admin(&a.addr).await?;
    let stage = parse_enum("stage", &a.stage, |s| {
        pb::FaultStage::from_str_name(&format!("FAULT_STAGE_{s}"))
    })?;
    let mode = parse_enum("mode", &a.mode, |s| {
        pb::FaultMode::from_str_name(&format!("FAULT_MODE_{s}"))
    })?;
    client
        .set_fault(with_token(
            &a.addr,
            pb::SetFaultRequest {
                stage: stage as i32,
                mode: mode as i32,
            },
        )?)
        .await
        .map_err(status)?;
    print(
        a.addr.json,
        &json!({"stage": a.stage, "mode": a.mode}),
        || format!("fault set: {} {}", a.stage, a.mode),
    );
    Ok(())
}
