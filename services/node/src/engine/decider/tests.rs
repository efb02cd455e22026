//! The decider over real bundle owners, session shards and ranking shards (the small test world): which rung
//! answers, and why, as the serving conditions change.

use std::sync::Arc;
use std::time::Duration;

use aisle_domain::event::{EventKind, ItemRef, ShopperEvent};
use aisle_domain::request::{Channel, ShopperAttributes, Surface};
use aisle_ranking::Ranking;
use aisle_session::{SessionSettings, Sessions};
use tokio::time::Instant;

use super::*;
use crate::bundles::tests::prepared;
use crate::engine::cache::DecisionCache;
use crate::engine::faults::{Mode, Stage as FaultStage};
use crate::engine::kill_switch::{KillSwitch, SwitchKey, SwitchTier};
use crate::engine::tombstones::Tombstones;
use crate::security::pseudonyms::Pseudonyms;

struct Fixture {
    decider: Decider,
    shoppers: Shoppers,
    bundles: Arc<Bundles>,
}

async fn fixture() -> Fixture {
    let bundles = Arc::new(Bundles::start(prepared()).await.unwrap());
    let shoppers = Shoppers {
        sessions: Sessions::start(2, SessionSettings::default())
            .await
            .unwrap(),
        cache: Arc::new(DecisionCache::new(1_000, Duration::from_secs(60))),
        pseudonyms: Arc::new(Pseudonyms::with_key(vec![1; 32], false)),
        tombstones: Arc::new(Tombstones::new(Duration::from_secs(3_600))),
    };
    let settings = DeciderSettings::from_config(&Config {
        node_id: "unit".into(),
        default_consent: true,
        ..Config::default()
    });
    let decider = Decider::new(
        settings,
        bundles.clone(),
        shoppers.clone(),
        Ranking::start(1).await.unwrap(),
    );
    Fixture {
        decider,
        shoppers,
        bundles,
    }
}

impl Fixture {
    /// The shopper views the five most popular items.
    async fn browse(&self, shopper: &str) {
        let world = self.bundles.world();
        let model = &world.default_model;
        let events = model.popular[..5]
            .iter()
            .enumerate()
            .map(|(k, &item)| ShopperEvent {
                kind: EventKind::View,
                item: Some(ItemRef::Known(item)),
                query: None,
                quantity: 0,
                price_cents: 0,
                store_id: None,
                aisle: None,
                ts_ms: aisle_domain::now_ms() - 60_000 + k as i64 * 1_000,
                received_at_us: 0,
                consent: Some(true),
                default_consent: true,
            })
            .collect();
        self.shoppers
            .apply(shopper, events, world.catalog.clone(), None)
            .await
            .unwrap();
    }

    async fn decide(&self, input: &DecideInput, serve: Serve) -> Decision {
        let deadline = Instant::now() + Duration::from_millis(200);
        self.decider
            .decide(self.bundles.world(), input, deadline, serve)
            .await
    }

    async fn stop(self) {
        self.decider.stop().await;
        self.shoppers.sessions.stop().await;
        self.bundles.stop();
    }
}

fn input(shopper: &str) -> DecideInput {
    DecideInput {
        shopper_id: shopper.into(),
        surface: Surface::Home,
        channel: Channel::Web,
        limit: 6,
        candidates: None,
        unknown_candidates: 0,
        context: Vec::new(),
        consent: None,
        attributes: ShopperAttributes::default(),
        store_id: String::new(),
        region: String::new(),
        device: String::new(),
        request_id: "r1".into(),
        client: "anonymous".into(),
    }
}

const OWNER: Serve = Serve::Owner { epoch: 3 };

fn reason(d: &Decision) -> Option<(Stage, Reason)> {
    d.fallback.as_ref().map(|f| (f.stage, f.reason))
}

#[tokio::test]
async fn an_owner_answers_fresh_keeps_it_and_answers_from_the_cache_when_ranking_fails() {
    let f = fixture().await;
    f.browse("s1").await;
    let fresh = f.decide(&input("s1"), OWNER).await;
    assert_eq!((fresh.tier, reason(&fresh)), (Tier::Fresh, None));
    assert_eq!(fresh.items.len(), 6);
    assert_eq!(fresh.epoch, 3);
    assert!(fresh.decision_id.starts_with("unit-"));
    f.decider.faults().set(FaultStage::Ranking, Mode::Fail);
    let cached = f.decide(&input("s1"), OWNER).await;
    assert_eq!(cached.tier, Tier::Cached);
    assert_eq!(
        reason(&cached),
        Some((Stage::Ranking, Reason::InjectedFailure))
    );
    assert_eq!(
        cached.items.iter().map(|i| i.item).collect::<Vec<_>>(),
        fresh.items.iter().map(|i| i.item).collect::<Vec<_>>()
    );
    // A Track invalidates the cached answer: the next rung answers.
    f.browse("s1").await;
    let after = f.decide(&input("s1"), OWNER).await;
    assert_eq!(
        after.tier,
        Tier::Rules,
        "the session's categories' top sellers"
    );
    f.stop().await;
}

#[tokio::test]
async fn without_consent_a_shopper_is_ranked_as_anonymous_and_nothing_is_kept() {
    let f = fixture().await;
    f.browse("s2").await;
    let mut refused = input("s2");
    refused.consent = Some(false);
    let d = f.decide(&refused, OWNER).await;
    assert_eq!(d.tier, Tier::Fresh);
    f.decider.faults().set(FaultStage::Ranking, Mode::Fail);
    let d = f.decide(&refused, OWNER).await;
    assert_ne!(
        d.tier,
        Tier::Cached,
        "nothing was kept for a refusing request"
    );
    assert_eq!(d.tier, Tier::Generic, "and no session categories were read");
    f.stop().await;
}

#[tokio::test]
async fn a_node_that_cannot_serve_as_owner_answers_from_the_lower_rungs_without_the_session() {
    let f = fixture().await;
    f.browse("s3").await;
    let why = Fallback::with_detail(Stage::Owner, Reason::Unavailable, "n2 at epoch 7: refused");
    let d = f
        .decide(
            &input("s3"),
            Serve::Fallback {
                epoch: 7,
                why: why.clone(),
            },
        )
        .await;
    assert_eq!(d.tier, Tier::Generic, "no session read, nothing on screen");
    assert_eq!(d.fallback, Some(why));
    assert_eq!(d.epoch, 7);
    let mut on_screen = input("s3");
    on_screen.context = vec![f.bundles.world().default_model.popular[0]];
    let d = f
        .decide(
            &on_screen,
            Serve::Fallback {
                epoch: 7,
                why: Fallback::new(Stage::Handoff, Reason::Pending),
            },
        )
        .await;
    assert_eq!(d.tier, Tier::Rules, "the categories of what is on screen");
    f.stop().await;
}

#[tokio::test]
async fn a_kill_switch_sends_decisions_of_its_surface_to_its_rung_and_names_itself() {
    let f = fixture().await;
    f.browse("s4").await;
    let switch = |tier| KillSwitch {
        key: SwitchKey {
            surface: Some(Surface::Home),
            channel: None,
        },
        tier,
        reason: "model misbehaves".into(),
        caller: "token:ops".into(),
        set_at_ms: 1,
    };
    f.decider.kill_switches().set(&[switch(SwitchTier::Rules)]);
    let d = f.decide(&input("s4"), OWNER).await;
    assert_eq!(
        (d.tier, reason(&d)),
        (Tier::Rules, Some((Stage::Control, Reason::KillSwitch)))
    );
    assert!(
        d.fallback_text().contains("model misbehaves"),
        "{}",
        d.fallback_text()
    );
    f.decider
        .kill_switches()
        .set(&[switch(SwitchTier::Generic)]);
    assert_eq!(f.decide(&input("s4"), OWNER).await.tier, Tier::Generic);
    let mut elsewhere = input("s4");
    elsewhere.surface = Surface::ProductPage;
    assert_eq!(
        f.decide(&elsewhere, OWNER).await.tier,
        Tier::Fresh,
        "other surfaces are not switched"
    );
    f.stop().await;
}

#[tokio::test]
async fn a_stalled_session_read_falls_back_at_the_deadline_less_the_margin() {
    let f = fixture().await;
    f.decider.faults().set(FaultStage::Session, Mode::Stall);
    // The clock stands still but for the timers: the stall ends exactly when the decision's work must.
    tokio::time::pause();
    let started = Instant::now();
    let d = f
        .decider
        .decide(
            f.bundles.world(),
            &input("s5"),
            started + Duration::from_millis(50),
            OWNER,
        )
        .await;
    assert_eq!(reason(&d), Some((Stage::Session, Reason::Deadline)));
    assert_eq!(d.tier, Tier::Generic);
    // The work stops at the deadline less the safety margin (2 ms by default, or a tenth of the budget: 5 ms),
    // give or take the timer's millisecond: the decision answers before its deadline.
    let took = Instant::now() - started;
    assert!(
        took >= Duration::from_millis(45) && took < Duration::from_millis(50),
        "{took:?}"
    );
    tokio::time::resume();
    f.stop().await;
}
