//! Consent over real gRPC: a revocation tracked for a shopper binds every later decision at once, empties their
//! session and keeps their events out of the event log until a new grant; a region's default decides for shoppers
//! who state nothing.

mod common;

use std::time::Duration;

use aisle_node::Config;
use aisle_node::cli::{Cli, Command};
use aisle_proto::v1 as pb;
use clap::Parser;
use common::{TestNode, catalog, decide_req, event, eventually, http_get};

/// The item ids of a decision, in order.
fn ids(r: &pb::DecideResponse) -> Vec<String> {
    r.items.iter().map(|i| i.item_id.clone()).collect()
}

/// What a test compares: the items, in order, and the tier.
fn answer(r: &pb::DecideResponse) -> (Vec<String>, i32) {
    (ids(r), r.fallback_tier)
}

/// In-stock items of a category, by name.
fn items_of(category: &str) -> Vec<String> {
    let c = catalog();
    let idx = c
        .categories
        .iter()
        .position(|x| x.name == category)
        .unwrap() as u16;
    c.items_in_category(idx)
        .iter()
        .filter(|&&i| c.item(i).stock > 10 && c.min_age(i) == 0)
        .map(|&i| c.item(i).id.to_string())
        .collect()
}

/// Views of `items` by `shopper`, the first one carrying `consent` (which then holds for the rest).
fn views(shopper: &str, items: &[String], consent: Option<bool>) -> Vec<pb::TrackEvent> {
    items
        .iter()
        .enumerate()
        .map(|(k, item)| pb::TrackEvent {
            consent: if k == 0 { consent } else { None },
            ..event(shopper, pb::EventType::View, item)
        })
        .collect()
}

fn with_consent(mut req: pb::DecideRequest, consent: Option<bool>) -> pb::DecideRequest {
    req.consent = consent;
    req
}

/// The value of an unlabelled-or-labelled counter line of a `/metrics` page (0 when absent).
fn counter(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_revocation_binds_at_once_and_keeps_later_events_out_of_the_log_until_a_grant() {
    let dir = std::env::temp_dir().join(format!("aisle-consent-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let log = dir.join("events.jsonl");
    let mut config = common::config("consent-node");
    config.event_log = Some(log.clone());
    let mut t = TestNode::start_with(config, common::demo()).await;
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    let shopper = "revoker";
    let home = || decide_req(shopper, pb::Surface::Home);

    // Consented views shape a personalised, FRESH decision.
    let anonymous_before = t.decide(with_consent(home(), Some(false))).await;
    let tea: Vec<String> = items_of("Tea").into_iter().take(5).collect();
    t.track(views(shopper, &tea, Some(true))).await;
    let personal = t.decide(with_consent(home(), Some(true))).await;
    assert_eq!(personal.fallback_tier, pb::FallbackTier::Fresh as i32);
    assert_ne!(
        ids(&personal),
        ids(&anonymous_before),
        "the history is used"
    );
    let logged = tea.len();
    eventually(
        "the consented events in the event log",
        Duration::from_secs(10),
        || {
            let n = read().lines().count();
            async move { n == logged }
        },
    )
    .await;

    // The revocation, then events that state nothing: a purchase, a cart, a search, views of another category.
    let coffee: Vec<String> = items_of("Coffee").into_iter().take(4).collect();
    let mut after: Vec<pb::TrackEvent> = views(shopper, &coffee, Some(false));
    after.push(event(shopper, pb::EventType::AddToCart, &coffee[0]));
    after.push(event(shopper, pb::EventType::Purchase, &coffee[1]));
    after.push(pb::TrackEvent {
        query: "secret query".into(),
        ..event(shopper, pb::EventType::Search, "")
    });
    let unlogged = after.len() as f64;
    let before = counter(
        &http_get(&t.http(), "/metrics").await.1,
        "aisle_track_events_unlogged_total{reason=\"no_consent\"} ",
    );
    assert_eq!(t.track(after).await.accepted as f64, unlogged, "counted");

    // Every later decision is anonymous: unstated, or even granted by the request, it equals a refused one.
    let refused = t.decide(with_consent(home(), Some(false))).await;
    let unstated = t.decide(with_consent(home(), None)).await;
    let requested = t.decide(with_consent(home(), Some(true))).await;
    assert_eq!(refused.fallback_tier, pb::FallbackTier::Fresh as i32);
    assert_eq!(answer(&unstated), answer(&refused), "no statement");
    assert_eq!(
        answer(&requested),
        answer(&refused),
        "the request's grant does not override the recorded revocation (nor does a cached answer)"
    );
    assert_ne!(ids(&requested), ids(&personal));

    // The session holds nothing behavioural any more.
    let d = t
        .admin
        .describe_shopper(pb::DescribeShopperRequest {
            shopper_id: shopper.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(d.has_session);
    assert_eq!(d.consent, Some(false));
    assert_eq!(d.events_applied, (tea.len() + coffee.len() + 3) as u64);
    assert!(d.recent_item_ids.is_empty(), "{:?}", d.recent_item_ids);
    assert!(d.cart_item_ids.is_empty() && d.purchased_item_ids.is_empty());
    assert!(d.top_categories.is_empty() && d.searches.is_empty());
    assert!(d.store_id.is_empty());

    // Nothing tracked after the revocation reaches the event log. The log is written in order by one background
    // task: once a later consented event of another shopper is there, every earlier record is too.
    let witness = items_of("Camping")[0].clone();
    t.track(views("witness", std::slice::from_ref(&witness), Some(true)))
        .await;
    eventually(
        "the witness in the event log",
        Duration::from_secs(10),
        || {
            let found = read().contains(witness.as_str());
            async move { found }
        },
    )
    .await;
    let text = read();
    assert_eq!(text.lines().count(), tea.len() + 1, "{text}");
    for item in &coffee {
        assert!(!text.contains(item.as_str()), "{item} was logged: {text}");
    }
    assert!(!text.contains("secret query"), "{text}");
    let metrics = http_get(&t.http(), "/metrics").await.1;
    assert!(
        counter(
            &metrics,
            "aisle_track_events_unlogged_total{reason=\"no_consent\"} "
        ) >= before + unlogged,
        "counted in aggregate"
    );

    // A grant applies again from its own event on: personalised, and logged.
    let camping: Vec<String> = items_of("Camping").into_iter().skip(1).take(5).collect();
    t.track(views(shopper, &camping, Some(true))).await;
    let again = t.decide(with_consent(home(), None)).await;
    assert_eq!(again.fallback_tier, pb::FallbackTier::Fresh as i32);
    assert_ne!(ids(&again), ids(&refused), "personalised again");
    let d = t
        .admin
        .describe_shopper(pb::DescribeShopperRequest {
            shopper_id: shopper.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.consent, Some(true));
    assert_eq!(d.recent_item_ids, camping, "only what followed the grant");
    let logged = tea.len() + 1 + camping.len();
    eventually("the granted events logged", Duration::from_secs(10), || {
        let n = read().lines().count();
        async move { n == logged }
    })
    .await;
    t.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_regions_default_decides_for_shoppers_who_state_nothing() {
    // The region default as an operator sets it: a flag of `aisle serve`.
    let Command::Serve(args) =
        Cli::try_parse_from(["aisle", "serve", "--consent-default", "US=true"])
            .unwrap()
            .command
    else {
        panic!("serve")
    };
    let flags = args.to_config().unwrap();
    let config = Config {
        consent_defaults: flags.consent_defaults,
        ..common::config("regional-node")
    };
    assert!(!config.default_consent);
    let mut t = TestNode::start_with(config, common::demo()).await;
    let shopper = "traveller";
    let tea: Vec<String> = items_of("Tea").into_iter().take(5).collect();
    t.track(views(shopper, &tea, None)).await;
    let in_region = |region: &str, consent: Option<bool>| pb::DecideRequest {
        region: region.into(),
        consent,
        ..decide_req(shopper, pb::Surface::Home)
    };
    let refused = t.decide(in_region("US", Some(false))).await;
    let granted = t.decide(in_region("US", Some(true))).await;
    assert_ne!(
        ids(&granted),
        ids(&refused),
        "the history is used with consent"
    );

    let us = t.decide(in_region("US", None)).await;
    assert_eq!(ids(&us), ids(&granted), "US: open by default");
    let california = t.decide(in_region("US-CA", None)).await;
    assert_eq!(ids(&california), ids(&granted), "US-CA falls back to US");
    let eu = t.decide(in_region("EU", None)).await;
    assert_eq!(
        answer(&eu),
        answer(&refused),
        "EU: the node's closed default"
    );
    let nowhere = t.decide(in_region("", None)).await;
    assert_eq!(answer(&nowhere), answer(&refused));
    t.stop().await;
}
