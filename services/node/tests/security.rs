//! Security over real sockets: a node secured as in production (TLS on the client and admin ports, the token
//! file, a mutual-TLS peer port, membership in a real etcd with TLS and client-certificate auth), and callers
//! with and without the right credentials.

mod common;

use std::time::Duration;

use aisle_node::Config;
use aisle_node::config::ClusterMode;
use aisle_proto::v1 as pb;
use aisle_proto::v1::admin_service_client::AdminServiceClient;
use aisle_proto::v1::associate_service_client::AssociateServiceClient;
use aisle_proto::v1::decision_service_client::DecisionServiceClient;
use aisle_proto::v1::edge_service_client::EdgeServiceClient;
use aisle_proto::v1::peer_service_client::PeerServiceClient;
use common::cluster::{Etcd, TempDir};
use common::pki::{self, Files, Pem};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Request};

/// A secured node, in process, with its etcd.
struct Secured {
    node: aisle_node::RunningNode,
    _etcd: Etcd,
    _dir: TempDir,
    decision_log: std::path::PathBuf,
    /// The token file the node re-reads.
    tokens: std::path::PathBuf,
}

fn secured_config(files: &Files, etcd: &Etcd, dir: &TempDir) -> Config {
    Config {
        cluster: ClusterMode::Etcd,
        etcd_endpoints: vec![etcd.url()],
        cluster_name: format!("sec-{}", std::process::id()),
        peer_addr: "127.0.0.1:0".parse().unwrap(),
        admin_addr: Some("127.0.0.1:0".parse().unwrap()),
        tls_cert: Some(files.server_cert.clone()),
        tls_key: Some(files.server_key.clone()),
        tls_client_ca: Some(files.client_ca.clone()),
        auth_tokens: Some(files.tokens.clone()),
        pseudonym_key: Some(files.pseudonym_key.clone()),
        peer_tls_cert: Some(files.peer_cert.clone()),
        peer_tls_key: Some(files.peer_key.clone()),
        peer_tls_ca: Some(files.cluster_ca.clone()),
        etcd_ca: Some(files.etcd_ca.clone()),
        etcd_cert: Some(files.etcd_aisle_cert.clone()),
        etcd_key: Some(files.etcd_aisle_key.clone()),
        decision_log: Some(dir.0.join("decisions.jsonl")),
        ..common::config("secured-node")
    }
}

impl Secured {
    async fn start() -> Self {
        let dir = TempDir::new("secured");
        let files = pki::pki().write(&dir.0.join("pki"));
        let etcd = Etcd::start(&dir.0, files.clone());
        etcd.wait_healthy(Duration::from_secs(30)).await;
        etcd.enable_auth().await;
        let config = secured_config(&files, &etcd, &dir);
        let decision_log = config.decision_log.clone().unwrap();
        let tokens = config.auth_tokens.clone().unwrap();
        let mut prepared = common::demo();
        // A candidate, so that promote and rollback can succeed.
        prepared.candidate = Some((prepared.model.0.clone(), "candidate".into()));
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let node = aisle_node::start(config, prepared, grpc, http)
            .await
            .expect("secured node starts");
        let s = Self {
            node,
            _etcd: etcd,
            _dir: dir,
            decision_log,
            tokens,
        };
        let cluster = s.node.node.cluster.clone();
        common::eventually(
            "the node joins through TLS etcd with auth",
            Duration::from_secs(20),
            || {
                let joined = cluster.current().is_some();
                async move { joined }
            },
        )
        .await;
        s
    }

    async fn channel(&self, addr: std::net::SocketAddr, identity: Option<&Pem>) -> Channel {
        Channel::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(pki::client_tls(identity))
            .unwrap()
            .connect()
            .await
            .expect("TLS connects")
    }

    /// Tracks two events (a view and an add-to-cart) of shopper `victim`.
    async fn track_victim(&self) {
        let item = common::catalog().items[0].id.to_string();
        DecisionServiceClient::new(self.client_port().await)
            .track(req(
                pb::TrackRequest {
                    events: vec![
                        common::event("victim", pb::EventType::View, &item),
                        common::event("victim", pb::EventType::AddToCart, &item),
                    ],
                    request_id: String::new(),
                },
                Some(pki::TOKEN_TRACK),
            ))
            .await
            .unwrap();
    }

    async fn client_port(&self) -> Channel {
        self.channel(self.node.grpc_addr, None).await
    }

    async fn admin_port(&self) -> Channel {
        self.channel(self.node.admin_addr.expect("admin port"), None)
            .await
    }

    fn peer_endpoint(&self, tls: Option<ClientTlsConfig>) -> tonic::transport::Endpoint {
        let addr = self.node.peer_addr.expect("peer port");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut e = Channel::from_shared(format!("{scheme}://{addr}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5));
        if let Some(tls) = tls {
            e = e.tls_config(tls).unwrap();
        }
        e
    }

    /// A peer client presenting `identity` (a certificate of the cluster CA for a real peer).
    async fn peer(&self, identity: Option<&Pem>) -> Option<PeerServiceClient<Channel>> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&pki::pki().cluster_ca.cert))
            .domain_name("localhost");
        if let Some(id) = identity {
            tls = tls.identity(Identity::from_pem(&id.cert, &id.key));
        }
        self.peer_endpoint(Some(tls))
            .connect()
            .await
            .ok()
            .map(PeerServiceClient::new)
    }
}

fn req<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut r = Request::new(message);
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Rpc {
    Decide,
    Track,
    Subscribe,
    DescribeShopper,
    BundleStatus,
    ClusterStatus,
    ForgetShopper,
    SetFault,
    PromoteModel,
    RollbackModel,
}

impl Rpc {
    const ALL: [Rpc; 10] = [
        Rpc::Decide,
        Rpc::Track,
        Rpc::Subscribe,
        Rpc::DescribeShopper,
        Rpc::BundleStatus,
        Rpc::ClusterStatus,
        Rpc::ForgetShopper,
        Rpc::SetFault,
        Rpc::PromoteModel,
        Rpc::RollbackModel,
    ];

    /// The token holding exactly this RPC's scope, and one that lacks it.
    fn tokens(self) -> (&'static str, &'static str) {
        use pki::*;
        match self {
            Rpc::Decide => (TOKEN_DECIDE, TOKEN_TRACK),
            Rpc::Track => (TOKEN_TRACK, TOKEN_DECIDE),
            Rpc::Subscribe => (TOKEN_SUBSCRIBE_STORE_1, TOKEN_DECIDE),
            Rpc::DescribeShopper | Rpc::BundleStatus | Rpc::ClusterStatus => {
                (TOKEN_ADMIN_READ, TOKEN_ADMIN_WRITE)
            }
            Rpc::ForgetShopper | Rpc::SetFault | Rpc::PromoteModel | Rpc::RollbackModel => {
                (TOKEN_ADMIN_WRITE, TOKEN_ADMIN_READ)
            }
        }
    }

    fn is_admin(self) -> bool {
        !matches!(self, Rpc::Decide | Rpc::Track | Rpc::Subscribe)
    }

    async fn call(self, ch: Channel, token: Option<&str>) -> Code {
        let item = common::catalog().items[0].id.to_string();
        let mut d = DecisionServiceClient::new(ch.clone());
        let mut a = AdminServiceClient::new(ch.clone());
        match self {
            Rpc::Decide => code(
                d.decide(req(common::decide_req("m-1", pb::Surface::Home), token))
                    .await,
            ),
            Rpc::Track => code(
                d.track(req(
                    pb::TrackRequest {
                        events: vec![common::event("m-1", pb::EventType::View, &item)],
                        request_id: String::new(),
                    },
                    token,
                ))
                .await,
            ),
            Rpc::Subscribe => code(
                AssociateServiceClient::new(ch)
                    .subscribe(req(
                        pb::SubscribeRequest {
                            store_id: "store-1".into(),
                            ..Default::default()
                        },
                        token,
                    ))
                    .await,
            ),
            Rpc::DescribeShopper => code(
                a.describe_shopper(req(
                    pb::DescribeShopperRequest {
                        shopper_id: "m-1".into(),
                    },
                    token,
                ))
                .await,
            ),
            Rpc::BundleStatus => code(
                a.bundle_status(req(pb::BundleStatusRequest {}, token))
                    .await,
            ),
            Rpc::ClusterStatus => code(
                a.cluster_status(req(pb::ClusterStatusRequest::default(), token))
                    .await,
            ),
            Rpc::ForgetShopper => code(
                a.forget_shopper(req(
                    pb::ForgetShopperRequest {
                        shopper_id: "m-2".into(),
                    },
                    token,
                ))
                .await,
            ),
            Rpc::SetFault => code(
                a.set_fault(req(
                    pb::SetFaultRequest {
                        stage: pb::FaultStage::Cache as i32,
                        mode: pb::FaultMode::None as i32,
                    },
                    token,
                ))
                .await,
            ),
            Rpc::PromoteModel => code(
                a.promote_model(req(pb::PromoteModelRequest {}, token))
                    .await,
            ),
            Rpc::RollbackModel => code(
                a.rollback_model(req(pb::RollbackModelRequest {}, token))
                    .await,
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_needs_a_credential_with_its_scope() {
    let s = Secured::start().await;
    let client = s.client_port().await;
    let admin = s.admin_port().await;
    let mut table = Vec::new();
    for rpc in Rpc::ALL {
        let ch = if rpc.is_admin() { &admin } else { &client };
        let (right, wrong) = rpc.tokens();
        let got = (
            rpc.call(ch.clone(), None).await,
            rpc.call(ch.clone(), Some(wrong)).await,
            rpc.call(ch.clone(), Some(right)).await,
        );
        table.push((rpc, got));
    }
    for (rpc, got) in &table {
        assert_eq!(
            *got,
            (Code::Unauthenticated, Code::PermissionDenied, Code::Ok),
            "{rpc:?}: (no credential, wrong scope, right scope); whole table: {table:?}"
        );
    }
    // An unknown token is UNAUTHENTICATED like a missing one; a subscribe token limited to store-1 may not
    // watch store-2.
    assert_eq!(
        Rpc::Decide.call(client.clone(), Some("guessed")).await,
        Code::Unauthenticated
    );
    let denied = AssociateServiceClient::new(client.clone())
        .subscribe(req(
            pb::SubscribeRequest {
                store_id: "store-2".into(),
                ..Default::default()
            },
            Some(pki::TOKEN_SUBSCRIBE_STORE_1),
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("store-2"), "{denied:?}");
    // Admin calls are not served on the client port at all once the admin port exists; peer calls neither.
    assert_eq!(
        Rpc::BundleStatus
            .call(client.clone(), Some(pki::TOKEN_ALL))
            .await,
        Code::Unimplemented
    );
    let peer_on_client_port = PeerServiceClient::new(client.clone())
        .fetch_assist(req(pb::FetchAssistRequest::default(), Some(pki::TOKEN_ALL)))
        .await
        .unwrap_err();
    assert_eq!(peer_on_client_port.code(), Code::Unimplemented);
    // A client certificate whose CN is in the token file is an identity with its scopes; an unknown CN is not.
    let operator = s
        .channel(s.node.admin_addr.unwrap(), Some(&pki::pki().operator))
        .await;
    assert_eq!(Rpc::ClusterStatus.call(operator, None).await, Code::Ok);
    let stranger = s
        .channel(s.node.admin_addr.unwrap(), Some(&pki::pki().unknown_caller))
        .await;
    assert_eq!(
        Rpc::ClusterStatus.call(stranger, None).await,
        Code::Unauthenticated
    );
    // Health needs no credential (probes); plaintext is not served on a TLS port.
    let mut health = tonic_health::pb::health_client::HealthClient::new(client.clone());
    assert!(
        health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .is_ok()
    );
    let plain = Channel::from_shared(format!("http://{}", s.node.grpc_addr))
        .unwrap()
        .connect()
        .await;
    if let Ok(plain) = plain {
        assert_ne!(
            Rpc::Decide.call(plain, Some(pki::TOKEN_DECIDE)).await,
            Code::Ok
        );
    }
    // Refusals are counted by service and reason, before any handler runs.
    let (_, metrics) = common::http_get(&format!("http://{}", s.node.http_addr), "/metrics").await;
    assert!(
        metrics.contains(
            "aisle_auth_refused_total{service=\"DecisionService\",reason=\"missing_credential\"}"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "aisle_auth_refused_total{service=\"AdminService\",reason=\"missing_scope\"}"
        ),
        "{metrics}"
    );
    // The decision record names the client that asked; no log line carries a token.
    let log = s.decision_log.clone();
    common::eventually(
        "decision records name the caller",
        Duration::from_secs(5),
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            async move { text.contains("\"client\":\"token:decide\"") }
        },
    )
    .await;
    let text = std::fs::read_to_string(&s.decision_log).unwrap();
    assert!(!text.contains(pki::TOKEN_DECIDE), "a token reached a log");
    s.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_need_a_cluster_certificate_and_forged_peer_calls_change_nothing() {
    let s = Secured::start().await;
    let mut admin = AdminServiceClient::new(s.admin_port().await);
    s.track_victim().await;
    let describe = |admin: &mut AdminServiceClient<Channel>| {
        let mut admin = admin.clone();
        async move {
            admin
                .describe_shopper(req(
                    pb::DescribeShopperRequest {
                        shopper_id: "victim".into(),
                    },
                    Some(pki::TOKEN_ADMIN_READ),
                ))
                .await
                .unwrap()
                .into_inner()
        }
    };
    let before = describe(&mut admin).await;
    assert_eq!(before.events_applied, 2);

    // No client certificate, a certificate of another CA, or plaintext: no peer call gets through.
    let fetch = pb::FetchAssistRequest {
        store_id: "store-1".into(),
        after: 0,
    };
    for identity in [None, Some(&pki::pki().operator)] {
        let refused = match s.peer(identity).await {
            None => true,
            Some(mut c) => c.fetch_assist(fetch.clone()).await.is_err(),
        };
        assert!(refused, "peer call accepted without a cluster certificate");
    }
    if let Ok(ch) = s.peer_endpoint(None).connect().await {
        assert!(
            PeerServiceClient::new(ch)
                .fetch_assist(fetch.clone())
                .await
                .is_err()
        );
    }
    let member = pki::pki().peer(pki::SECURED_NODE);
    let mut peer = s
        .peer(Some(&member))
        .await
        .expect("a cluster certificate connects");
    assert!(peer.fetch_assist(fetch).await.is_ok());
    // A forwarded decision may not ask for more than max_budget_ms.
    let view = s.node.node.cluster.current().unwrap();
    let greedy = peer
        .forward_decide(pb::ForwardDecideRequest {
            request: Some(common::decide_req("victim", pb::Surface::Home)),
            epoch: view.epoch,
            from_node: "secured-node".into(),
            budget_us: 3_600_000_000,
            view_fingerprint: view.fingerprint,
            client: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(greedy.code(), Code::ResourceExhausted);
    assert!(greedy.message().contains("max_budget_ms"), "{greedy:?}");

    // Forged hand-offs, even over a cluster certificate: from a stranger, under another view, or from the owner
    // itself — refused, the session untouched.
    let forged_session =
        serde_json::to_vec(&aisle_session::SessionContext::new().to_portable(&common::catalog()))
            .unwrap();
    let handoff = |from: &str, fingerprint: u64, done: bool| pb::HandOffRequest {
        epoch: view.epoch,
        from_node: from.into(),
        sessions: vec![pb::SessionRecord {
            shopper_id: "victim".into(),
            context: forged_session.clone(),
            version: 0,
        }],
        done,
        view_fingerprint: fingerprint,
        tombstones: Vec::new(),
    };
    let e = peer
        .hand_off(handoff("intruder", view.fingerprint, true))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("from_node"), "{e:?}");
    for forged in [
        handoff("secured-node", view.fingerprint ^ 1, true),
        handoff("secured-node", view.fingerprint, true),
    ] {
        let e = peer.hand_off(forged.clone()).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{forged:?}: {e:?}");
    }
    let after = describe(&mut admin).await;
    assert_eq!(after.events_applied, before.events_applied);
    assert_eq!(after.cart_item_ids, before.cart_item_ids);

    // A forged assist event cannot take a sequence number: from a stranger it is refused, and from a member
    // that is not the store's orderer it is dropped.
    let hub = s.node.node.push.hub.clone();
    let forged_event = pb::AssistEvent {
        sequence: 1,
        store_id: "store-9".into(),
        message: "injected".into(),
        ..Default::default()
    };
    let e = peer
        .replicate_assist(pb::ReplicateAssistRequest {
            events: vec![forged_event.clone()],
            from_node: "intruder".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert_eq!(hub.last_sequence("store-9"), 0);
    assert!(hub.since("store-9", 0).is_empty());
    s.node.shutdown().await;
}

/// Calls every PeerService method once, from `from_node` under the node's view, and gives each one's code.
async fn every_peer_method(
    peer: &mut PeerServiceClient<Channel>,
    from_node: &str,
    view: &aisle_node::cluster::SharedView,
) -> Vec<(&'static str, Code)> {
    let (epoch, fingerprint) = (view.epoch, view.fingerprint);
    let from = from_node.to_string();
    let shopper = "victim".to_string();
    let describe = pb::ForwardDescribeRequest {
        shopper_id: shopper.clone(),
        epoch,
        from_node: from.clone(),
        view_fingerprint: fingerprint,
        store_id: String::new(),
    };
    vec![
        (
            "ForwardDecide",
            code(
                peer.forward_decide(pb::ForwardDecideRequest {
                    request: Some(common::decide_req(&shopper, pb::Surface::Home)),
                    epoch,
                    from_node: from.clone(),
                    budget_us: 50_000,
                    view_fingerprint: fingerprint,
                    client: String::new(),
                })
                .await,
            ),
        ),
        (
            "ForwardTrack",
            code(
                peer.forward_track(pb::ForwardTrackRequest {
                    request: Some(pb::TrackRequest {
                        events: vec![common::event(&shopper, pb::EventType::View, "sku-1")],
                        request_id: String::new(),
                    }),
                    epoch,
                    from_node: from.clone(),
                    view_fingerprint: fingerprint,
                    ..Default::default()
                })
                .await,
            ),
        ),
        (
            "DescribeHeld",
            code(
                peer.describe_held(pb::DescribeHeldRequest {
                    shopper_id: shopper.clone(),
                    from_node: from.clone(),
                })
                .await,
            ),
        ),
        (
            "EraseShopper",
            code(
                peer.erase_shopper(pb::EraseShopperRequest {
                    shopper_id: shopper.clone(),
                    from_node: from.clone(),
                    caller: "token:dpo".into(),
                    ..Default::default()
                })
                .await,
            ),
        ),
        (
            "ForwardDescribe",
            code(peer.forward_describe(describe.clone()).await),
        ),
        ("FetchSession", code(peer.fetch_session(describe).await)),
        (
            "HandOff",
            code(
                peer.hand_off(pb::HandOffRequest {
                    epoch,
                    from_node: from.clone(),
                    done: true,
                    view_fingerprint: fingerprint,
                    ..Default::default()
                })
                .await,
            ),
        ),
        (
            "PublishAssist",
            code(
                peer.publish_assist(pb::PublishAssistRequest {
                    event: Some(pb::AssistEvent {
                        store_id: "store-1".into(),
                        message: "injected".into(),
                        ..Default::default()
                    }),
                    epoch,
                    view_fingerprint: fingerprint,
                })
                .await,
            ),
        ),
        (
            "ReplicateAssist",
            code(
                peer.replicate_assist(pb::ReplicateAssistRequest {
                    events: Vec::new(),
                    from_node: from.clone(),
                })
                .await,
            ),
        ),
        (
            "HoldView",
            code(
                peer.hold_view(pb::HoldViewRequest {
                    from_node: from.clone(),
                    view_fingerprint: fingerprint,
                    epoch,
                })
                .await,
            ),
        ),
        (
            "ReplicateSessions",
            code(
                peer.replicate_sessions(pb::ReplicateSessionsRequest {
                    from_node: from.clone(),
                    epoch,
                    view_fingerprint: fingerprint,
                    sessions: Vec::new(),
                })
                .await,
            ),
        ),
        (
            "FetchAssist",
            code(
                peer.fetch_assist(pb::FetchAssistRequest {
                    store_id: "store-1".into(),
                    after: 0,
                })
                .await,
            ),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_members_are_peers_and_a_member_speaks_only_for_itself() {
    let s = Secured::start().await;
    s.track_victim().await;
    let view = s.node.node.cluster.current().unwrap();
    let intruder = pki::pki().peer("intruder");
    // Certificates of the cluster CA: one without the peer marker (an etcd or tooling client certificate), a
    // peer certificate of a node that is not a member (each naming itself), and a member's certificate whose
    // messages name another node. Every PeerService method refuses all three with PERMISSION_DENIED.
    let cases = [
        ("no peer marker", &pki::pki().cluster_client, "secured-node"),
        ("not a member", &intruder, "intruder"),
        (
            "from_node of another node",
            &pki::pki().peer(pki::SECURED_NODE),
            "node-b",
        ),
    ];
    for (what, identity, from_node) in cases {
        let mut peer = s
            .peer(Some(identity))
            .await
            .expect("the cluster CA's certificate connects");
        let codes = every_peer_method(&mut peer, from_node, &view).await;
        assert_eq!(codes.len(), 12, "one call per PeerService method");
        for (method, got) in &codes {
            // FetchAssist and PublishAssist carry no from_node: a member may call them for itself.
            let member_call = what == "from_node of another node"
                && matches!(*method, "FetchAssist" | "PublishAssist");
            if !member_call {
                assert_eq!(
                    *got,
                    Code::PermissionDenied,
                    "{what}: {method}; all: {codes:?}"
                );
            }
        }
    }
    // Nothing was erased, described or replaced: the shopper's session is whole.
    let mut admin = AdminServiceClient::new(s.admin_port().await);
    let held = admin
        .describe_shopper(req(
            pb::DescribeShopperRequest {
                shopper_id: "victim".into(),
            },
            Some(pki::TOKEN_ADMIN_READ),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(held.events_applied, 2, "{held:?}");
    // The member itself, speaking for itself, is served (here: a bare `done` and the assist fetch).
    let mut member = s
        .peer(Some(&pki::pki().peer(pki::SECURED_NODE)))
        .await
        .unwrap();
    let codes = every_peer_method(&mut member, pki::SECURED_NODE, &view).await;
    let get = |m: &str| codes.iter().find(|(n, _)| *n == m).unwrap().1;
    assert_eq!(get("HandOff"), Code::Ok, "{codes:?}");
    assert_eq!(get("FetchAssist"), Code::Ok, "{codes:?}");
    assert_eq!(get("DescribeHeld"), Code::Ok, "{codes:?}");
    s.node.shutdown().await;
}

/// A Decide or Track request with `token` and, when given, a shopper assertion.
fn asserted<T>(message: T, token: &str, assertion: Option<&str>) -> Request<T> {
    let mut r = req(message, Some(token));
    if let Some(a) = assertion {
        r.metadata_mut()
            .insert("x-aisle-shopper", a.parse().unwrap());
    }
    r
}

fn ids(r: &pb::DecideResponse) -> Vec<String> {
    r.items.iter().map(|i| i.item_id.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shopper_bound_token_acts_only_for_the_shopper_its_assertion_names() {
    let s = Secured::start().await;
    let mut decisions = DecisionServiceClient::new(s.client_port().await);
    let now = aisle_domain::now_ms() / 1_000;
    let claims = |sub: &str, exp: i64| serde_json::json!({"sub": sub, "exp": exp});
    let kiosk = pki::kiosk_assertion(&claims("kiosk-shopper", now + 300));
    let app = pki::app_assertion(&claims("kiosk-shopper", now + 300));
    let home = |shopper: &str| common::decide_req(shopper, pb::Surface::Home);

    // A valid assertion: OK, with either kind of key.
    for (token, assertion) in [(pki::TOKEN_KIOSK, &kiosk), (pki::TOKEN_APP, &app)] {
        let r = decisions
            .decide(asserted(home("kiosk-shopper"), token, Some(assertion)))
            .await;
        assert!(r.is_ok(), "{token}: {r:?}");
    }
    // Another shopper: PERMISSION_DENIED naming the field, never the value.
    for (token, assertion) in [(pki::TOKEN_KIOSK, &kiosk), (pki::TOKEN_APP, &app)] {
        let e = decisions
            .decide(asserted(home("someone-else"), token, Some(assertion)))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        assert!(e.message().starts_with("shopper_id: "), "{e:?}");
        assert!(!e.message().contains("someone-else"), "{e:?}");
    }
    // Expired, missing, signed with the other token's key, or forged: UNAUTHENTICATED.
    let expired = pki::kiosk_assertion(&claims("kiosk-shopper", now - 120));
    let wrong_key = pki::app_assertion(&claims("kiosk-shopper", now + 300));
    for (what, assertion) in [
        ("expired", Some(expired.as_str())),
        ("missing", None),
        ("the app's key on the kiosk token", Some(wrong_key.as_str())),
        ("garbage", Some("a.b.c")),
    ] {
        let e = decisions
            .decide(asserted(home("kiosk-shopper"), pki::TOKEN_KIOSK, assertion))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{what}: {e:?}");
        assert!(e.message().contains("x-aisle-shopper"), "{what}: {e:?}");
    }
    // Track: every event must be the asserted shopper's; a batch with another shopper's event applies nothing.
    let tea = common::items_of("Tea");
    let views = |shopper: &str| -> Vec<pb::TrackEvent> {
        tea.iter()
            .take(5)
            .map(|i| common::event(shopper, pb::EventType::View, i))
            .collect()
    };
    let mut mixed = views("kiosk-shopper");
    mixed.push(common::event("someone-else", pb::EventType::View, &tea[0]));
    let e = decisions
        .track(asserted(
            pb::TrackRequest {
                events: mixed,
                request_id: String::new(),
            },
            pki::TOKEN_KIOSK,
            Some(&kiosk),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().starts_with("events[5].shopper_id: "), "{e:?}");

    // Consent: the region's default here is no consent. A full storefront token's `consent: true` uses the
    // history; a shopper-bound token's cannot widen the default, so its decision is the anonymous one.
    let mut anonymous = home("kiosk-shopper");
    anonymous.consent = Some(false);
    let before = decisions
        .decide(req(anonymous.clone(), Some(pki::TOKEN_ALL)))
        .await
        .unwrap()
        .into_inner();
    decisions
        .track(asserted(
            pb::TrackRequest {
                events: views("kiosk-shopper"),
                request_id: String::new(),
            },
            pki::TOKEN_KIOSK,
            Some(&kiosk),
        ))
        .await
        .unwrap();
    let storefront = decisions
        .decide(req(home("kiosk-shopper"), Some(pki::TOKEN_ALL)))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(
        ids(&storefront),
        ids(&before),
        "consent: true uses the history"
    );
    let bound = decisions
        .decide(asserted(
            home("kiosk-shopper"),
            pki::TOKEN_KIOSK,
            Some(&kiosk),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ids(&bound),
        ids(&before),
        "a shopper-bound consent: true does not override the default"
    );
    s.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_past_its_rate_is_refused_with_a_retry_hint_and_others_are_not() {
    let s = Secured::start().await;
    let decisions = DecisionServiceClient::new(s.client_port().await);
    let home = || common::decide_req("fair-1", pb::Surface::Home);
    // A burst of 20 at once: at most 5 a second, at most 2 in flight.
    let calls = (0..20).map(|_| {
        let mut d = decisions.clone();
        async move { d.decide(req(home(), Some(pki::TOKEN_LIMITED))).await }
    });
    let results = futures_join_all(calls).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let refused: Vec<&tonic::Status> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!((1..=5).contains(&ok), "{ok} admitted of 20");
    assert_eq!(ok + refused.len(), 20);
    for e in &refused {
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        assert!(
            e.message().contains("rate_per_sec") || e.message().contains("max_concurrent"),
            "{e:?}"
        );
        let hint: u64 = e
            .metadata()
            .get("x-aisle-retry-after-ms")
            .expect("a retry hint")
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=1_000).contains(&hint), "{hint}");
    }
    // Another caller is not held back meanwhile.
    let mut d = decisions.clone();
    for _ in 0..20 {
        assert!(d.decide(req(home(), Some(pki::TOKEN_DECIDE))).await.is_ok());
    }
    // Its bucket refills: the limited caller is admitted again.
    common::eventually(
        "the limited caller is admitted again",
        Duration::from_secs(2),
        || {
            let mut d = decisions.clone();
            async move {
                d.decide(req(home(), Some(pki::TOKEN_LIMITED)))
                    .await
                    .is_ok()
            }
        },
    )
    .await;
    s.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_tokens_open_subscribe_stream_ends_within_the_reload_interval() {
    let s = Secured::start().await;
    let mut associates = AssociateServiceClient::new(s.client_port().await);
    let mut stream = associates
        .subscribe(req(
            pb::SubscribeRequest {
                store_id: "store-1".into(),
                ..Default::default()
            },
            Some(pki::TOKEN_SUBSCRIBE_STORE_1),
        ))
        .await
        .expect("the handheld subscribes")
        .into_inner();
    let original = std::fs::read_to_string(&s.tokens).unwrap();
    // A change that keeps the handheld's entry: its stream stays open.
    std::fs::write(&s.tokens, format!("{original}\n# rotated the ops token\n")).unwrap();
    let reload = Duration::from_secs(s.node.node.config.credential_reload_secs);
    let quiet = tokio::time::timeout(reload * 2 + Duration::from_secs(1), stream.message()).await;
    assert!(
        quiet.is_err(),
        "the stream ended on an unrelated change: {quiet:?}"
    );
    // The handheld's entry removed: the stream ends with UNAUTHENTICATED within the reload interval.
    let handheld = original
        .split("[[")
        .find(|entry| entry.contains("handheld-store-1"))
        .unwrap();
    std::fs::write(&s.tokens, original.replace(&format!("[[{handheld}"), "")).unwrap();
    let revoked_at = tokio::time::Instant::now();
    let ended = tokio::time::timeout(reload * 2 + Duration::from_secs(2), stream.message())
        .await
        .expect("the stream ends within the reload interval");
    let status = ended.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("revoked"), "{status:?}");
    assert!(revoked_at.elapsed() <= reload * 2 + Duration::from_secs(2));
    s.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_token_uploads_only_its_stores_events_and_copies_only_its_stores_shoppers_audited()
{
    let s = Secured::start().await;
    let mut edge = EdgeServiceClient::new(s.client_port().await);
    let mut admin = AdminServiceClient::new(s.admin_port().await);
    let item = common::catalog().items[0].id.to_string();
    let at = |store: &str| pb::TrackEvent {
        store_id: store.into(),
        ..common::event("uploaded", pb::EventType::View, &item)
    };
    let upload = |events: Vec<pb::TrackEvent>, seq: u64| pb::UploadRequest {
        store_id: "store-1".into(),
        request: Some(pb::TrackRequest {
            events,
            request_id: String::new(),
        }),
        delivery: Some(pb::DeliveryKey {
            origin: "edge-store-1".into(),
            seq,
        }),
        received_at_us: 0,
    };
    let applied = |admin: &mut AdminServiceClient<Channel>| {
        let mut admin = admin.clone();
        async move {
            admin
                .describe_shopper(req(
                    pb::DescribeShopperRequest {
                        shopper_id: "uploaded".into(),
                    },
                    Some(pki::TOKEN_ADMIN_READ),
                ))
                .await
                .unwrap()
                .into_inner()
                .events_applied
        }
    };
    let fetch = |edge: &mut EdgeServiceClient<Channel>| {
        let mut edge = edge.clone();
        async move {
            edge.fetch_session(req(
                pb::FetchSessionRequest {
                    shopper_id: "uploaded".into(),
                    store_id: "store-1".into(),
                },
                Some(pki::TOKEN_EDGE),
            ))
            .await
        }
    };
    // A shopper never seen at the store: no copy, naming the field, not the value.
    let e = fetch(&mut edge).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().starts_with("shopper_id: "), "{e:?}");
    assert!(!e.message().contains("uploaded"), "{e:?}");
    // Nor one the cloud places in another store.
    let mut decisions = DecisionServiceClient::new(s.client_port().await);
    decisions
        .track(req(
            pb::TrackRequest {
                events: vec![at("store-2")],
                request_id: String::new(),
            },
            Some(pki::TOKEN_TRACK),
        ))
        .await
        .unwrap();
    assert_eq!(applied(&mut admin).await, 1);
    let e = fetch(&mut edge).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // Another store's event in the batch: refused whole, naming the field.
    let e = edge
        .upload(req(
            upload(vec![at("store-1"), at("store-2")], 1),
            Some(pki::TOKEN_EDGE),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().starts_with("request.events[1].store_id: "),
        "{e:?}"
    );
    assert_eq!(
        applied(&mut admin).await,
        1,
        "nothing of a refused upload is applied"
    );
    // Its own store's events: applied.
    edge.upload(req(
        upload(vec![at("store-1"), at("store-1")], 2),
        Some(pki::TOKEN_EDGE),
    ))
    .await
    .unwrap();
    assert_eq!(applied(&mut admin).await, 3);
    // An upload for a store the token is not for: refused before anything is read.
    let mut other = upload(vec![at("store-2")], 3);
    other.store_id = "store-2".into();
    let e = edge
        .upload(req(other, Some(pki::TOKEN_EDGE)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // The store's own events reached the cloud: now the shopper is in the store, and the copy holds all of them.
    let copy = fetch(&mut edge).await.unwrap().into_inner();
    let session: serde_json::Value = serde_json::from_slice(&copy.session).unwrap();
    assert_eq!(session["store_id"], "store-1", "{session}");
    // Out of the store again: no copy.
    let mut exit = at("store-1");
    exit.r#type = pb::EventType::StoreExit as i32;
    exit.item_id.clear();
    edge.upload(req(upload(vec![exit], 4), Some(pki::TOKEN_EDGE)))
        .await
        .unwrap();
    let e = fetch(&mut edge).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // Every copy asked for is in the trail, with the edge, the store, the shopper's pseudonym (never the id) and
    // whether it was handed out.
    let trail = std::fs::read_to_string(&s.decision_log).unwrap();
    let record = trail
        .lines()
        .find(|l| l.contains("edge_session_fetched"))
        .unwrap_or_else(|| panic!("no session copy in the trail: {trail}"));
    assert!(
        record.contains("token:edge-store-1") && record.contains("\"store_id\":\"store-1\""),
        "{record}"
    );
    let results: Vec<&str> = trail
        .lines()
        .filter(|l| l.contains("edge_session_fetched"))
        .map(|l| {
            ["\"refused\"", "\"copied\""]
                .into_iter()
                .find(|r| l.contains(r))
                .unwrap_or("?")
        })
        .collect();
    assert_eq!(
        results,
        ["\"refused\"", "\"refused\"", "\"copied\"", "\"refused\""],
        "{trail}"
    );
    assert!(
        !record.contains("\"uploaded\""),
        "the shopper id reached the trail: {record}"
    );
    s.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_token_holds_only_a_few_bundle_feeds_at_once() {
    let s = Secured::start().await;
    // Each feed on a connection of its own: feeds this test does not read must not hold up, by HTTP/2's shared
    // connection window, the one it reads.
    let open = || {
        let port = s.client_port();
        async move {
            let mut edge = EdgeServiceClient::new(port.await);
            edge.sync_bundles(req(
                pb::SyncBundlesRequest {
                    store_id: "store-1".into(),
                    held: Vec::new(),
                    erasures_since_ms: 0,
                },
                Some(pki::TOKEN_EDGE),
            ))
            .await
        }
    };
    let per_caller = s.node.node.config.max_edge_feeds_per_caller;
    let mut feeds = Vec::new();
    for _ in 0..per_caller {
        feeds.push(open().await.expect("a feed within the cap").into_inner());
    }
    let e = open().await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().starts_with("max_edge_feeds_per_caller ("),
        "{e:?}"
    );
    // The open feeds still flow (a Synced mark comes every second).
    let first = tokio::time::timeout(Duration::from_secs(30), feeds[0].message())
        .await
        .expect("the feed answers")
        .unwrap();
    assert!(first.is_some());
    // One hung up: its place is freed once the node notices (at its next send, within a heartbeat).
    feeds.pop();
    let started = tokio::time::Instant::now();
    loop {
        match open().await {
            Ok(f) => {
                feeds.push(f.into_inner());
                break;
            }
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "the place of a closed feed was not freed"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    drop(feeds);
    s.node.shutdown().await;
}

/// Runs futures concurrently and gives their outputs in order.
async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn a_node_reachable_from_other_hosts_refuses_to_start_open() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_aisle"))
        .args([
            "serve",
            "--grpc-addr",
            "0.0.0.0:0",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .env_remove("AISLE_CONFIG")
        .output()
        .expect("aisle runs");
    assert!(!out.status.success(), "an open node on 0.0.0.0 started");
    let err = String::from_utf8_lossy(&out.stderr);
    for named in [
        "grpc_addr 0.0.0.0:0",
        "TLS",
        "auth",
        "pseudonym key",
        "--insecure",
    ] {
        assert!(err.contains(named), "{named:?} not named in: {err}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_aisle"))
        .args([
            "serve",
            "--cluster",
            "etcd",
            "--etcd-endpoints",
            "http://127.0.0.1:1",
        ])
        .env_remove("AISLE_CONFIG")
        .output()
        .expect("aisle runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for named in ["cluster = etcd", "peer mutual TLS", "etcd TLS"] {
        assert!(err.contains(named), "{named:?} not named in: {err}");
    }
}

#[tokio::test]
async fn an_insecure_node_says_so_on_every_start() {
    let dir = TempDir::new("insecure");
    let (grpc, http) = (common::cluster::free_port(), common::cluster::free_port());
    let log = dir.0.join("node.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_aisle"))
        .args(["serve", "--insecure", "--ranking-shards", "1"])
        .args(["--grpc-addr", &format!("0.0.0.0:{grpc}")])
        .args(["--http-addr", &format!("127.0.0.1:{http}")])
        .env_remove("AISLE_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("aisle runs");
    let base = format!("http://127.0.0.1:{http}");
    let ready = async {
        let end = tokio::time::Instant::now() + Duration::from_secs(120);
        while tokio::time::Instant::now() < end {
            if common::cluster::http_get(&format!("127.0.0.1:{http}"), "/readyz")
                .await
                .0
                == 200
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }
    .await;
    let (_, metrics) = if ready {
        common::http_get(&base, "/metrics").await
    } else {
        (0, String::new())
    };
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(ready, "the insecure node did not become ready: {text}");
    assert!(metrics.contains("aisle_insecure 1"), "{metrics}");
    assert!(
        text.contains("WARN") && text.contains("--insecure") && text.contains("TLS"),
        "{text}"
    );
}

/// Lists the services through reflection v1: the service names, or the error code.
async fn reflect(channel: Channel, token: Option<&str>) -> Result<Vec<String>, Code> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut client = ServerReflectionClient::new(channel);
    let mut stream = client
        .server_reflection_info(req(tokio_stream::iter([ask]), token))
        .await
        .map_err(|s| s.code())?
        .into_inner();
    match stream.message().await.map_err(|s| s.code())? {
        Some(r) => match r.message_response {
            Some(MessageResponse::ListServicesResponse(l)) => {
                Ok(l.service.into_iter().map(|s| s.name).collect())
            }
            other => panic!("unexpected reflection answer {other:?}"),
        },
        None => Err(Code::Unknown),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_needs_a_credential_and_can_be_turned_off() {
    let s = Secured::start().await;
    let client = s.client_port().await;
    assert_eq!(
        reflect(client.clone(), None).await,
        Err(Code::Unauthenticated)
    );
    let services = reflect(client, Some(pki::TOKEN_DECIDE)).await.unwrap();
    assert!(
        services.iter().any(|n| n == "aisle.v1.DecisionService"),
        "{services:?}"
    );
    s.node.shutdown().await;

    let config = Config {
        reflection: false,
        ..common::config("no-reflection")
    };
    let t = common::TestNode::start_with(config, common::demo()).await;
    assert_eq!(
        reflect(t.channel.clone(), None).await,
        Err(Code::Unimplemented)
    );
    t.stop().await;
}
