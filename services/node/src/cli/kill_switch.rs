//! `aisle kill-switch`: an operator turns model decisions off for a surface and/or channel (they answer from
//! RULES or GENERIC), and back on; with the kill switches' JSON and text forms, which `aisle cluster` shows too.

use aisle_proto::v1 as pb;
use clap::{ArgGroup, Args};
use serde_json::{Value, json};

use super::connect::{AddrArgs, admin, print, status, tier_name, with_token};

/// What `aisle kill-switch` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SwitchAction {
    /// Turn the switch on (or change its tier or reason).
    On,
    /// Turn it off (with --all: every switch).
    Off,
}

/// The rung a switched decision answers from.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SwitchTierArg {
    /// Category top sellers.
    Rules,
    /// The merchandising list.
    Generic,
}

/// `aisle kill-switch`.
#[derive(Debug, Args, Clone)]
#[command(group(ArgGroup::new("scope").required(true).multiple(true).args(["surface", "channel", "all"])))]
pub struct KillSwitchArgs {
    /// on or off.
    #[arg(value_enum)]
    action: SwitchAction,
    #[command(flatten)]
    addr: AddrArgs,
    /// The surface (home, product_page, cart, checkout, search, store_aisle, kiosk_idle, category_page, email).
    #[arg(long)]
    surface: Option<String>,
    /// The channel (web, app, kiosk, pos, associate_handheld, email, unspecified).
    #[arg(long)]
    channel: Option<String>,
    /// Every surface and channel (off --all: turn every switch off).
    #[arg(long, conflicts_with_all = ["surface", "channel"])]
    all: bool,
    /// The rung decisions answer from [default: RULES].
    #[arg(long, value_enum, ignore_case = true)]
    tier: Option<SwitchTierArg>,
    /// Why (required with on; at most 500 bytes; decisions show it).
    #[arg(long, required_if_eq("action", "on"), default_value = "")]
    reason: String,
}

/// `aisle kill-switch on|off`: prints the switches in force afterwards.
///
/// # Errors
/// Connection failures and error statuses (an invalid request names its field).
pub(super) async fn kill_switch(a: KillSwitchArgs) -> anyhow::Result<()> {
    let mut client = admin(&a.addr).await?;
    let tier = match a.tier {
        None => pb::FallbackTier::Unspecified,
        Some(SwitchTierArg::Rules) => pb::FallbackTier::Rules,
        Some(SwitchTierArg::Generic) => pb::FallbackTier::Generic,
    };
    let r = client
        .set_kill_switch(with_token(
            &a.addr,
            pb::SetKillSwitchRequest {
                on: a.action == SwitchAction::On,
                surface: a.surface.clone().unwrap_or_default(),
                channel: a.channel.clone().unwrap_or_default(),
                all: a.all,
                tier: tier as i32,
                reason: a.reason.clone(),
            },
        )?)
        .await
        .map_err(status)?
        .into_inner();
    let value = json!({
        "changed": r.changed,
        "revision": r.revision,
        "scope": r.scope,
        "served_by": r.served_by,
        "applied_by": r.applied_by,
        "pending": r.pending,
        "active": r.active.iter().map(switch_json).collect::<Vec<_>>(),
    });
    print(a.addr.json, &value, || {
        let mut out = format!(
            "kill switches in force (revision {}{}):\n{}",
            r.revision,
            if r.changed { "" } else { ", unchanged" },
            switch_lines(&r.active)
        );
        if r.scope == "node" {
            out.push_str(&format!(
                "\nstatic mode: applied on {} only, in memory (lost at restart)",
                r.served_by
            ));
        } else {
            out.push_str(&format!("\napplied by: {}", r.applied_by.join(", ")));
            if !r.pending.is_empty() {
                out.push_str(&format!(
                    "\nnot confirmed yet (they apply it when their etcd watch delivers it): {}",
                    r.pending.join(", ")
                ));
            }
        }
        out
    });
    Ok(())
}

/// The JSON form of a kill switch.
pub(super) fn switch_json(s: &pb::KillSwitch) -> Value {
    json!({
        "surface": s.surface, "channel": s.channel, "tier": tier_name(s.tier), "reason": s.reason,
        "caller": s.caller, "set_at_ms": s.set_at_ms,
    })
}

/// One line per kill switch.
pub(super) fn switch_lines(switches: &[pb::KillSwitch]) -> String {
    if switches.is_empty() {
        return "  (none)".into();
    }
    let or_any = |s: &str| if s.is_empty() { "any" } else { s }.to_string();
    switches
        .iter()
        .map(|s| {
            format!(
                "  surface {:<14} channel {:<18} -> {:<7} {:?} (by {})",
                or_any(&s.surface),
                or_any(&s.channel),
                tier_name(s.tier),
                s.reason,
                s.caller
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
