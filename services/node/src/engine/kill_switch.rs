//! Kill switches: an operator's order that decisions for a surface and channel answer from a lower rung (RULES or
//! GENERIC) instead of the model, e.g. while a model misbehaves or a campaign must not be personalised.
//!
//! Switches are keyed by (surface, channel), either of which may be "any"; several may be on at once. They are
//! kept as one record ([`SwitchRecord`]) — in etcd in a cluster (see [`super`]), in memory in static mode — and
//! every decision reads them through the [`Switchboard`]: one atomic snapshot load, nothing allocated and no lock
//! taken when no switch is on.

use std::sync::Arc;

use aisle_domain::request::{Channel, Surface};
use arc_swap::ArcSwapOption;
use serde::{Deserialize, Serialize};

use crate::engine::decision::{Fallback, Reason, Stage, Tier};

/// Longest reason an operator may give, in bytes.
pub const MAX_REASON_BYTES: usize = 500;

/// The rung a switched decision answers from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SwitchTier {
    /// Category top sellers (the session's categories, or the on-screen items').
    Rules,
    /// The merchandising list.
    Generic,
}

impl SwitchTier {
    /// The decision tier.
    pub fn tier(self) -> Tier {
        match self {
            SwitchTier::Rules => Tier::Rules,
            SwitchTier::Generic => Tier::Generic,
        }
    }
}

/// The decisions a switch applies to: a surface and a channel, `None` meaning any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchKey {
    /// `None`: any surface.
    pub surface: Option<Surface>,
    /// `None`: any channel.
    pub channel: Option<Channel>,
}

impl SwitchKey {
    /// Whether a decision on `surface` and `channel` is covered.
    pub fn covers(&self, surface: Surface, channel: Channel) -> bool {
        self.surface.is_none_or(|s| s == surface) && self.channel.is_none_or(|c| c == channel)
    }

    /// How many of the two are named (a more specific switch wins a tie).
    fn specificity(&self) -> u8 {
        u8::from(self.surface.is_some()) + u8::from(self.channel.is_some())
    }
}

/// `surface home, channel any` (for logs and decisions).
impl std::fmt::Display for SwitchKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let surface = self.surface.map_or("any", |s| s.as_str());
        let channel = self.channel.map_or("any", |c| c.as_str());
        write!(f, "surface {surface}, channel {channel}")
    }
}

/// A switch that is on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillSwitch {
    /// What it covers.
    #[serde(flatten)]
    pub key: SwitchKey,
    /// Where its decisions answer from.
    pub tier: SwitchTier,
    /// Why (shown in decisions).
    pub reason: String,
    /// Who turned it on.
    pub caller: String,
    /// When, ms since the Unix epoch.
    pub set_at_ms: i64,
}

/// A change asked of the switches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwitchChange {
    /// Turn a switch on (replacing one with the same key).
    On(KillSwitch),
    /// Turn off the switch with this key.
    Off(SwitchKey),
    /// Turn every switch off.
    AllOff,
}

/// Every switch that is on, with the revision of the record (one more at every change): what etcd holds under
/// `/aisle/<cluster>/control/kill-switch`, as JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchRecord {
    /// One more at every change.
    pub revision: u64,
    /// The switches, in the order they were turned on.
    pub switches: Vec<KillSwitch>,
}

impl SwitchRecord {
    /// The record after `change` (its revision one more), or `None` when the change changes nothing.
    pub fn changed(&self, change: &SwitchChange) -> Option<SwitchRecord> {
        let mut switches = self.switches.clone();
        match change {
            SwitchChange::On(on) => match switches.iter_mut().find(|s| s.key == on.key) {
                Some(s) => *s = on.clone(),
                None => switches.push(on.clone()),
            },
            SwitchChange::Off(key) => switches.retain(|s| s.key != *key),
            SwitchChange::AllOff => switches.clear(),
        }
        (switches != self.switches || matches!(change, SwitchChange::On(_))).then(|| SwitchRecord {
            revision: self.revision + 1,
            switches,
        })
    }
}

/// What a switched decision answers from, and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switched {
    /// The rung.
    pub tier: Tier,
    /// The fallback the decision reports: `control: kill_switch (<key>: <reason>)`.
    pub fallback: Fallback,
}

/// The switches as decisions read them: an atomic snapshot, `None` when no switch is on.
#[derive(Debug, Default)]
pub struct Switchboard {
    active: ArcSwapOption<Vec<KillSwitch>>,
}

impl Switchboard {
    /// Applies the switches of a record (replacing the previous ones) and updates `aisle_kill_switch_active`.
    pub fn set(&self, switches: &[KillSwitch]) {
        metrics::gauge!("aisle_kill_switch_active").set(switches.len() as f64);
        self.active
            .store((!switches.is_empty()).then(|| Arc::new(switches.to_vec())));
    }

    /// The switches on now.
    pub fn active(&self) -> Vec<KillSwitch> {
        self.active
            .load()
            .as_ref()
            .map(|a| a.as_ref().clone())
            .unwrap_or_default()
    }

    /// The switch that governs a decision on `surface` and `channel`, if any: of those covering it, the one with
    /// the lowest rung (GENERIC before RULES), then the most specific.
    pub fn matching(&self, surface: Surface, channel: Channel) -> Option<Switched> {
        let active = self.active.load();
        let switches = active.as_ref()?;
        let s = switches
            .iter()
            .filter(|s| s.key.covers(surface, channel))
            .max_by_key(|s| (s.tier, s.key.specificity()))?;
        Some(Switched {
            tier: s.tier.tier(),
            fallback: Fallback::with_detail(
                Stage::Control,
                Reason::KillSwitch,
                format!("{}: {}", s.key, s.reason),
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn switch(surface: Option<Surface>, channel: Option<Channel>, tier: SwitchTier) -> KillSwitch {
        KillSwitch {
            key: SwitchKey { surface, channel },
            tier,
            reason: format!("{surface:?}/{channel:?}"),
            caller: "token:ops".into(),
            set_at_ms: 1,
        }
    }

    #[test]
    fn a_decision_follows_the_lowest_rung_then_the_most_specific_switch() {
        let board = Switchboard::default();
        assert_eq!(board.matching(Surface::Home, Channel::Web), None);
        board.set(&[
            switch(Some(Surface::Home), None, SwitchTier::Rules),
            switch(Some(Surface::Home), Some(Channel::Web), SwitchTier::Rules),
            switch(None, Some(Channel::Kiosk), SwitchTier::Generic),
        ]);
        let web = board.matching(Surface::Home, Channel::Web).unwrap();
        assert_eq!(web.tier, Tier::Rules);
        assert_eq!(
            web.fallback.to_string(),
            "control: kill_switch (surface home, channel web: Some(Home)/Some(Web))"
        );
        let kiosk = board.matching(Surface::Home, Channel::Kiosk).unwrap();
        assert_eq!(kiosk.tier, Tier::Generic);
        assert_eq!(
            board.matching(Surface::Cart, Channel::App),
            None,
            "no switch covers the cart on the app"
        );
        board.set(&[]);
        assert_eq!(board.matching(Surface::Home, Channel::Kiosk), None);
    }

    #[test]
    fn switches_are_keyed_by_surface_and_channel_and_every_change_is_a_revision() {
        let home = switch(Some(Surface::Home), None, SwitchTier::Rules);
        let all = switch(None, None, SwitchTier::Generic);
        let r1 = SwitchRecord::default()
            .changed(&SwitchChange::On(home.clone()))
            .unwrap();
        let r2 = r1.changed(&SwitchChange::On(all.clone())).unwrap();
        assert_eq!((r2.revision, r2.switches.len()), (2, 2));
        // On again with the same key replaces it.
        let mut generic_home = home.clone();
        generic_home.tier = SwitchTier::Generic;
        let r3 = r2.changed(&SwitchChange::On(generic_home.clone())).unwrap();
        assert_eq!(r3.switches, [generic_home, all.clone()]);
        // Off removes that key only; off for a key that is not on changes nothing.
        let r4 = r3.changed(&SwitchChange::Off(home.key)).unwrap();
        assert_eq!(r4.switches, [all]);
        assert_eq!(r4.changed(&SwitchChange::Off(home.key)), None);
        let r5 = r4.changed(&SwitchChange::AllOff).unwrap();
        assert_eq!((r5.revision, r5.switches.len()), (5, 0));
        assert_eq!(r5.changed(&SwitchChange::AllOff), None);
    }

    #[test]
    fn the_record_is_plain_json() {
        let record = SwitchRecord {
            revision: 3,
            switches: vec![switch(Some(Surface::ProductPage), None, SwitchTier::Rules)],
        };
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"revision": 3, "switches": [{
                "surface": "product_page", "channel": null, "tier": "rules",
                "reason": "Some(ProductPage)/None", "caller": "token:ops", "set_at_ms": 1
            }]})
        );
        assert_eq!(
            serde_json::from_value::<SwitchRecord>(json).unwrap(),
            record
        );
    }
}
