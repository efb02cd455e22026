//! The chaos run anyone can repeat (`scripts/chaos.sh`): one cluster — a real etcd and three `aisle` nodes over
//! real TLS gRPC on loopback — under steady mixed load, through five faults in turn, each followed by a few seconds
//! of steady state:
//!
//! 1. SIGKILL of node-0, then its restart;
//! 2. SIGSTOP of node-1 for twice the lease TTL, then SIGCONT: it fences itself and rejoins;
//! 3. etcd stopped for 60 s, then started again;
//! 4. node-2 cut off from etcd and from its peers (its etcd traffic and the traffic to its peer port black-holed by
//!    proxies) for 10 s, then healed;
//! 5. a rolling restart: SIGTERM, restart, one node at a time.
//!
//! Every call is recorded (tier, served_by, epoch, the tracked item, send and answer times). Afterwards each phase
//! is checked against the promise docs/architecture.md and tests/cluster.rs make for its fault, a table is printed
//! (one row per phase), and the test fails — after printing — on any broken promise. docs/RELIABILITY.md explains
//! the promises and records runs.
//!
//! `#[ignore]`d because it takes about four minutes: `make test` runs the shorter one-fault scenarios of
//! tests/cluster.rs instead.

mod common;

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::time::Duration;

use aisle_proto::v1 as pb;
use common::cluster::{Driver, Record, Targets, TestCluster, follow_members, http_get};
use common::event;
use tokio::time::Instant;

/// Shoppers in the load. 201 rather than 200: the driver picks a Track's item from 800 ids by its call number, and
/// a population prime to 800 gives every event of a shopper a different item, so a session shows which of its
/// events it holds. At about 20 Track calls per shopper over the run, no session reaches its history bound (64).
const SHOPPERS: usize = 201;
/// Calls per second, all kinds.
const RATE: u32 = 150;
/// Every third call is a Track of one view event, the others are Decides.
const TRACK_EVERY: usize = 3;
/// Steady state after each phase's fault has ended (and before the first).
const STEADY: Duration = Duration::from_secs(4);
/// How long etcd stays down: twelve lease TTLs.
const ETCD_OUTAGE: Duration = Duration::from_secs(60);
/// How long node-2's etcd and peer traffic is black-holed.
const CUT_FOR: Duration = Duration::from_secs(10);
/// The replication lag the crash promise allows: an owner that stops without handing off may take with it the
/// events it acknowledged less than this before (sessions are copied to the successor every 200 ms).
const REPLICATION_LAG: Duration = Duration::from_secs(1);

const KILLED: usize = 0;
const PAUSED: usize = 1;
/// The node whose etcd traffic, and its peers' traffic to it, go through proxies.
const CUT: usize = 2;

/// What a phase did to the cluster, with what the checks need to know about it.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// No fault: the steady state before the first one.
    Steady,
    /// SIGKILL of `node`, restarted at `restarted`.
    Kill { node: usize, restarted: Duration },
    /// SIGSTOP of `node`, whose view was at `epoch`.
    Pause { node: usize, epoch: u64 },
    /// etcd killed.
    EtcdStop,
    /// `node`'s etcd traffic black-holed; it turned not-ready (fenced) at `fenced`.
    Cut { node: usize, fenced: Duration },
    /// SIGTERM and restart of every node in turn.
    Roll,
}

impl Fault {
    fn name(&self) -> &'static str {
        match self {
            Fault::Steady => "0. steady state",
            Fault::Kill { .. } => "1. SIGKILL node-0",
            Fault::Pause { .. } => "2. SIGSTOP node-1",
            Fault::EtcdStop => "3. etcd stopped 60 s",
            Fault::Cut { .. } => "4. node-2 cut from etcd",
            Fault::Roll => "5. rolling restart",
        }
    }

    /// The one node the fault hits, if any.
    fn node(&self) -> Option<usize> {
        match *self {
            Fault::Kill { node, .. } | Fault::Pause { node, .. } | Fault::Cut { node, .. } => {
                Some(node)
            }
            Fault::Steady | Fault::EtcdStop | Fault::Roll => None,
        }
    }

    /// The node that stopped owning its shoppers without handing them off, and when: events it acknowledged
    /// shortly before may be lost (the replication lag).
    fn owner_stopped(&self, start: Duration) -> Option<(usize, Duration)> {
        match *self {
            Fault::Kill { node, .. } | Fault::Pause { node, .. } => Some((node, start)),
            Fault::Cut { node, fenced } => Some((node, fenced)),
            Fault::Steady | Fault::EtcdStop | Fault::Roll => None,
        }
    }
}

/// One phase of the run: its records are those sent from `start` until `end` (the next phase's start).
#[derive(Debug)]
struct Phase {
    fault: Fault,
    /// The fault's injection (the run's start for the steady state).
    start: Duration,
    /// Where its time to recover counts from: the fault's end for a pause, an etcd stop and a cut (SIGCONT, etcd
    /// back, healed); the fault itself for the others.
    recover_from: Duration,
    end: Duration,
    /// What was measured on the way (convergence times, exit codes).
    notes: Vec<String>,
}

/// The run: the cluster, the load's clock and targets, the phases so far and the promises broken so far.
struct Chaos {
    c: TestCluster,
    ttl: Duration,
    /// The driver's start: records' times count from it.
    started: Instant,
    targets: Targets,
    follower: tokio::task::JoinHandle<()>,
    phases: Vec<Phase>,
    broken: Vec<String>,
}

impl Chaos {
    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    async fn sleep_until(&self, t: Duration) {
        tokio::time::sleep_until(self.started + t).await;
    }

    /// Opens a phase at its fault.
    fn open(&mut self, fault: Fault) {
        let now = self.now();
        if let Some(last) = self.phases.last_mut() {
            last.end = now;
        }
        self.phases.push(Phase {
            fault,
            start: now,
            recover_from: now,
            end: now,
            notes: Vec::new(),
        });
    }

    fn phase(&mut self) -> &mut Phase {
        self.phases.last_mut().expect("a phase is open")
    }

    fn note(&mut self, note: String) {
        self.phase().notes.push(note);
    }

    /// [`TestCluster::try_wait_for_view`]: what it saw is returned, so that the run can still print its table.
    async fn agree(&self, nodes: &[usize], n: usize, within: Duration) -> Result<Duration, String> {
        self.c.try_wait_for_view(nodes, n, within).await
    }

    /// Waits until node `i` answers /readyz with `status`; how long that took.
    async fn readiness(&self, i: usize, status: u16, within: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        loop {
            if http_get(&self.c.nodes[i].http(), "/readyz").await.0 == status {
                return Ok(started.elapsed());
            }
            if started.elapsed() >= within {
                return Err(format!("node {i} /readyz not {status} within {within:?}"));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Node `i`'s `aisle_cluster_fences_total` (0 when it has not fenced yet or does not answer).
    async fn fences(&self, i: usize) -> f64 {
        let (_, metrics) = http_get(&self.c.nodes[i].http(), "/metrics").await;
        metrics
            .lines()
            .filter(|l| l.starts_with("aisle_cluster_fences_total"))
            .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .sum()
    }

    /// The incarnation node `i` has in node `from`'s view.
    async fn incarnation(&self, from: usize, i: usize) -> Option<String> {
        let status = self.c.status(from).await?;
        status
            .members
            .into_iter()
            .find(|m| m.node_id == self.c.nodes[i].id)
            .map(|m| m.incarnation)
    }

    /// Every phase in turn; an `Err` is a step that did not converge, which ends the run early.
    async fn run(&mut self) -> Result<(), String> {
        self.open(Fault::Steady);
        self.sleep_until(STEADY).await;
        self.kill().await?;
        self.pause().await?;
        self.etcd_stop().await?;
        self.cut().await?;
        self.roll().await
    }

    /// 1. SIGKILL of one node; after its lease has gone and the others have served alone for a few seconds, it is
    ///    restarted and rejoins.
    async fn kill(&mut self) -> Result<(), String> {
        self.open(Fault::Kill {
            node: KILLED,
            restarted: Duration::MAX,
        });
        self.c.kill(KILLED);
        let start = self.phase().start;
        let dropped = self.agree(&[1, 2], 2, Duration::from_secs(20)).await?;
        self.note(format!("the others dropped node-0 after {dropped:.1?}"));
        // The crash promise holds from the kill + TTL + 1 s: keep 3 s of that before restarting.
        self.sleep_until(start + self.ttl + Duration::from_secs(4))
            .await;
        let restarted = self.now();
        self.c.restart(KILLED);
        self.phase().fault = Fault::Kill {
            node: KILLED,
            restarted,
        };
        let rejoined = self.agree(&[0, 1, 2], 3, Duration::from_secs(30)).await?;
        self.note(format!("restarted node-0 rejoined after {rejoined:.1?}"));
        let now = self.now();
        self.sleep_until(now + STEADY).await;
        Ok(())
    }

    /// 2. SIGSTOP of one node for twice the lease TTL, then SIGCONT: it must have fenced itself (never answering
    ///    as the owner it was), and rejoin as a new incarnation.
    async fn pause(&mut self) -> Result<(), String> {
        let epoch = self.c.status(PAUSED).await.map_or(0, |s| s.epoch);
        let incarnation = self.incarnation(0, PAUSED).await;
        let fences = self.fences(PAUSED).await;
        self.open(Fault::Pause {
            node: PAUSED,
            epoch,
        });
        self.c.pause(PAUSED);
        let start = self.phase().start;
        let dropped = self.agree(&[0, 2], 2, self.ttl * 2).await?;
        self.note(format!("the others dropped node-1 after {dropped:.1?}"));
        self.sleep_until(start + self.ttl * 2).await;
        let resumed = self.now();
        self.phase().recover_from = resumed;
        self.c.resume(PAUSED);
        let rejoined = self.agree(&[0, 1, 2], 3, Duration::from_secs(15)).await?;
        self.note(format!("node-1 rejoined {rejoined:.1?} after SIGCONT"));
        if self.fences(PAUSED).await <= fences {
            self.broken
                .push("pause: node-1 did not count a fence (aisle_cluster_fences_total)".into());
        }
        let now_incarnation = self.incarnation(0, PAUSED).await;
        if now_incarnation.is_none() || now_incarnation == incarnation {
            self.broken.push(format!(
                "pause: node-1 did not rejoin as a new incarnation ({incarnation:?} -> {now_incarnation:?})"
            ));
        }
        let now = self.now();
        self.sleep_until(now + STEADY).await;
        Ok(())
    }

    /// 3. etcd stopped for four lease TTLs: every node must hold its view (a member, at the same epoch), checked
    ///    every second.
    async fn etcd_stop(&mut self) -> Result<(), String> {
        let epoch = self.c.status(0).await.map_or(0, |s| s.epoch);
        self.open(Fault::EtcdStop);
        self.c.etcd.kill();
        let start = self.phase().start;
        let mut lost: HashSet<usize> = HashSet::new();
        while self.now() < start + ETCD_OUTAGE {
            for i in 0..3 {
                let status = self.c.status(i).await;
                let held = status
                    .as_ref()
                    .is_some_and(|s| s.member && s.epoch == epoch);
                if !held && lost.insert(i) {
                    let into = self.now() - start;
                    self.broken.push(format!(
                        "etcd stop: node-{i} lost its view (epoch {epoch}) {into:.1?} into the outage: {status:?}"
                    ));
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let back = self.now();
        self.phase().recover_from = back;
        self.c.etcd.restart();
        self.c.etcd.wait_healthy(Duration::from_secs(30)).await;
        let converged = self.agree(&[0, 1, 2], 3, Duration::from_secs(10)).await?;
        self.note(format!(
            "every node held epoch {epoch} through the outage: {}; members agreed {converged:.1?} after etcd was \
             back",
            lost.is_empty()
        ));
        let now = self.now();
        self.sleep_until(now + STEADY).await;
        Ok(())
    }

    /// 4. One node's etcd traffic and its peers' calls to it black-holed: it must fence itself within the lease
    ///    TTL (readyz 503, no longer a member) while still answering Decides from the fallback ladder and
    ///    acknowledging Tracks into its outbox; the load keeps sending to it, as the cluster test does. Healed after
    ///    10 s, it rejoins and delivers what it queued.
    async fn cut(&mut self) -> Result<(), String> {
        let fences = self.fences(CUT).await;
        // Targets stay all three nodes through the cut (as in tests/cluster.rs): the cut node is asked too.
        self.follower.abort();
        self.targets.set(vec![0, 1, 2]);
        self.open(Fault::Cut {
            node: CUT,
            fenced: Duration::MAX,
        });
        self.c.isolate(CUT, true);
        let start = self.phase().start;
        let fenced = self
            .readiness(CUT, 503, self.ttl + Duration::from_secs(2))
            .await?;
        self.phase().fault = Fault::Cut {
            node: CUT,
            fenced: start + fenced,
        };
        self.note(format!(
            "node-2 fenced itself (readyz 503) {fenced:.1?} after the cut"
        ));
        if fenced > self.ttl {
            self.broken.push(format!(
                "cut: node-2 fenced itself {fenced:?} after the cut, later than the lease TTL {:?}",
                self.ttl
            ));
        }
        if self.c.status(CUT).await.is_some_and(|s| s.member) {
            self.broken
                .push("cut: node-2 still says it is a member after fencing".into());
        }
        self.agree(&[0, 1], 2, Duration::from_secs(10)).await?;
        let dropped_at = self.now() - start;
        self.note(format!(
            "the others dropped node-2 {dropped_at:.1?} after the cut"
        ));
        self.sleep_until(start + CUT_FOR).await;
        let healed = self.now();
        self.phase().recover_from = healed;
        self.c.isolate(CUT, false);
        let rejoined = self.agree(&[0, 1, 2], 3, Duration::from_secs(10)).await?;
        self.readiness(CUT, 200, Duration::from_secs(5)).await?;
        self.note(format!("node-2 rejoined {rejoined:.1?} after healing"));
        if self.fences(CUT).await <= fences {
            self.broken
                .push("cut: node-2 did not count a fence (aisle_cluster_fences_total)".into());
        }
        self.follower = follow_members(&self.c, self.targets.clone());
        let now = self.now();
        self.sleep_until(now + STEADY).await;
        Ok(())
    }

    /// 5. Rolling restart: each node in turn gets SIGTERM (it hands its sessions off and must exit 0), is
    ///    restarted, and the three agree again before the next.
    async fn roll(&mut self) -> Result<(), String> {
        self.open(Fault::Roll);
        for i in 0..3 {
            if i > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let (code, took) = self.c.terminate(i, Duration::from_secs(30)).await;
            if code != Some(0) {
                self.broken.push(format!(
                    "roll: node-{i} exited {code:?} on SIGTERM:\n{}",
                    self.c.nodes[i].log_tail(20)
                ));
            }
            self.c.restart(i);
            let rejoined = self.agree(&[0, 1, 2], 3, Duration::from_secs(30)).await?;
            self.note(format!(
                "node-{i} left in {took:.1?}, rejoined {rejoined:.1?} after its restart"
            ));
        }
        let now = self.now();
        self.sleep_until(now + STEADY).await;
        Ok(())
    }
}

/// The owner of each shopper, by node index. Rendezvous hashing over the node ids: the same whichever incarnations
/// the nodes are at, so it holds whenever all three are members.
async fn owners(c: &TestCluster, population: &[String]) -> HashMap<String, usize> {
    let view = c.view(0).await;
    population
        .iter()
        .map(|s| {
            let owner = &view.shopper_owner(s).expect("an owner").node_id;
            let i = c.nodes.iter().position(|n| &n.id == owner).unwrap();
            (s.clone(), i)
        })
        .collect()
}

/// One view event per shopper, through node-0, before the load starts: (shopper, item), all acknowledged.
async fn warm(c: &TestCluster, population: &[String]) -> Vec<(String, String)> {
    let mut client = c.client(0).await;
    let mut warmed = Vec::new();
    for chunk in population.chunks(100) {
        let events: Vec<pb::TrackEvent> = chunk
            .iter()
            .enumerate()
            .map(|(k, s)| pb::TrackEvent {
                consent: Some(true),
                // Items the load never tracks (it uses sku-000200 to sku-000999).
                ..event(s, pb::EventType::View, &format!("sku-{:06}", 100 + k))
            })
            .collect();
        let r = client
            .track(pb::TrackRequest {
                events: events.clone(),
                request_id: String::new(),
            })
            .await
            .expect("warm-up track")
            .into_inner();
        assert_eq!(r.accepted as usize, events.len());
        warmed.extend(events.into_iter().map(|e| (e.shopper_id, e.item_id)));
    }
    warmed
}

/// What a shopper's owner holds at the end: (owner's id, items of the session's history), or why it could not
/// be read.
async fn held(
    c: &TestCluster,
    population: &[String],
) -> HashMap<String, Result<(String, Vec<String>), String>> {
    let mut admin = c.admin(0).await;
    let mut out = HashMap::new();
    for shopper in population {
        let mut last = Err(String::new());
        for _ in 0..3 {
            let mut req = tonic::Request::new(pb::DescribeShopperRequest {
                shopper_id: shopper.clone(),
            });
            req.set_timeout(Duration::from_secs(2));
            match admin.describe_shopper(req).await {
                Ok(r) => {
                    let r = r.into_inner();
                    last = Ok((r.served_by, r.recent_item_ids));
                    break;
                }
                Err(e) => {
                    last = Err(format!("{:?}: {}", e.code(), e.message()));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        out.insert(shopper.clone(), last);
    }
    out
}

/// An acknowledged event: a warm-up event (sent at 0) or a Track call that did not fail.
struct Acked<'a> {
    shopper: &'a str,
    item: &'a str,
    at: Duration,
    done: Duration,
}

/// One row of the table.
#[derive(Default)]
struct Row {
    calls: usize,
    failed: usize,
    undocumented: usize,
    decides: usize,
    fresh: usize,
    dual: usize,
    lost: usize,
    /// Failed Tracks (the others failed are Decides).
    failed_tracks: usize,
    /// Failed calls first sent to the node the fault hit.
    failed_at_faulted: usize,
    /// Acknowledged events the replication-lag allowance covers.
    excused: usize,
    /// Of those, the ones missing at the end: how long before their owner stopped each was acknowledged.
    excused_missing: Vec<Duration>,
    recovery: Option<Duration>,
    /// What the checks found worth telling.
    detail: Vec<String>,
}

/// Whether the failure of `r` is one the promise of phase `p` allows.
fn documented(p: &Phase, r: &Record, ttl: Duration) -> bool {
    // Until the others have taken the node's shoppers over: its lease expires within the TTL, then a second.
    let takeover = p.start + ttl + Duration::from_secs(1);
    let in_window = r.done >= p.start && r.at <= takeover;
    match p.fault {
        // Calls sent to the dead node until the others take over (tests/cluster.rs: a_crashed_node_costs_...). A
        // Track of its shoppers sent elsewhere waits in that node's outbox: it does not fail.
        Fault::Kill { node, .. } => in_window && r.asked == node,
        // Calls sent to the paused node while it is paused.
        Fault::Pause { node, .. } => r.asked == node && r.done >= p.start && r.at < p.recover_from,
        // No call fails: the cut node answers Decides from the fallback ladder and queues Tracks in its outbox
        // (a_node_cut_off_from_etcd_and_peers_...), as do the others for its shoppers until they take over; nor
        // through an etcd outage or a rolling restart (an_etcd_outage_fails_no_call_...,
        // a_rolling_restart_fails_no_call_...).
        Fault::Steady | Fault::Cut { .. } | Fault::EtcdStop | Fault::Roll => false,
    }
}

/// The index of the phase whose window holds time `t`.
fn phase_of(phases: &[Phase], t: Duration) -> usize {
    phases.iter().rposition(|p| p.start <= t).unwrap_or(0)
}

/// Checks every phase against its promises; the table's rows, and what broke.
fn judge(
    chaos: &Chaos,
    records: &[Record],
    owners: &HashMap<String, usize>,
    warmed: &[(String, String)],
    held: &HashMap<String, Result<(String, Vec<String>), String>>,
) -> (Vec<Row>, Vec<String>) {
    let phases = &chaos.phases;
    let ttl = chaos.ttl;
    let ids: Vec<&str> = chaos.c.nodes.iter().map(|n| n.id.as_str()).collect();
    let mut rows: Vec<Row> = phases.iter().map(|_| Row::default()).collect();
    let mut broken = Vec::new();
    let fresh = |r: &Record| r.error.is_none() && r.tier == pb::FallbackTier::Fresh;

    // Calls, failures, FRESH answers.
    for r in records {
        let row = &mut rows[phase_of(phases, r.at)];
        row.calls += 1;
        if !r.track {
            row.decides += 1;
            row.fresh += usize::from(fresh(r));
        }
        if r.error.is_some() {
            row.failed += 1;
            row.failed_tracks += usize::from(r.track);
            let faulted = phases[phase_of(phases, r.at)].fault.node();
            row.failed_at_faulted += usize::from(faulted == Some(r.asked));
            // A call in flight at a fault belongs to the phase before by its send time: any phase may excuse it.
            if !phases.iter().any(|p| documented(p, r, ttl)) {
                row.undocumented += 1;
                if row.undocumented <= 3 {
                    broken.push(format!("undocumented failed call: {r:?}"));
                }
            }
        }
    }

    // Time to recover: from the fault (or its end) to just after the last Decide of the phase not answered FRESH.
    for (k, p) in phases.iter().enumerate() {
        let last_bad = records
            .iter()
            .filter(|r| !r.track && r.at >= p.recover_from && r.at < p.end && !fresh(r))
            .map(|r| r.at)
            .max();
        if !matches!(p.fault, Fault::Steady) {
            rows[k].recovery = Some(last_bad.map_or(Duration::ZERO, |t| t - p.recover_from));
        }
        if let Some(t) = last_bad
            && t + Duration::from_secs(2) > p.end
        {
            broken.push(format!(
                "{}: not every Decide FRESH in the phase's last 2 s (one at {t:?}, phase ends at {:?})",
                p.fault.name(),
                p.end
            ));
        }
    }

    // Dual owners: a (shopper, epoch) answered FRESH by two nodes.
    let mut owners_at: HashMap<(&str, u64), (HashSet<&str>, Duration)> = HashMap::new();
    for r in records.iter().filter(|r| fresh(r)) {
        let e = owners_at
            .entry((r.shopper.as_str(), r.epoch))
            .or_insert_with(|| (HashSet::new(), r.at));
        e.0.insert(r.served_by.as_str());
        e.1 = e.1.min(r.at);
    }
    for ((shopper, epoch), (nodes, first)) in &owners_at {
        if nodes.len() > 1 {
            rows[phase_of(phases, *first)].dual += 1;
            broken.push(format!(
                "{shopper} answered FRESH by {nodes:?} in epoch {epoch}"
            ));
        }
    }

    for (k, p) in phases.iter().enumerate() {
        let in_phase = |r: &&Record| r.at >= p.start && r.at < p.end;
        match p.fault {
            Fault::Kill { node, restarted } => {
                // From the kill + TTL + 1 s until the restart, every Decide is FRESH, from a live node.
                let bad: Vec<&Record> = records
                    .iter()
                    .filter(|r| !r.track && r.at > p.start + ttl + Duration::from_secs(1))
                    .filter(|r| r.at < restarted)
                    .filter(|r| !fresh(r) || r.served_by == ids[node])
                    .collect();
                if !bad.is_empty() {
                    broken.push(format!(
                        "kill: {} Decides not FRESH from a live node between the kill + TTL + 1 s and the \
                         restart, e.g. {:?}",
                        bad.len(),
                        bad[0]
                    ));
                }
            }
            Fault::Pause { node, epoch } => {
                // Resumed, the paused node never answers as owner under its old view: that would be a second
                // owner beside the node that took its shoppers over. Counted by answer time, so that a call sent
                // while it was stopped (its bytes wait in the node's socket) and answered after SIGCONT counts too.
                let stale = records
                    .iter()
                    .filter(|r| r.done >= p.recover_from && r.served_by == ids[node])
                    .filter(|r| fresh(r) && r.epoch == epoch)
                    .count();
                if stale > 0 {
                    rows[k].dual += stale;
                    broken.push(format!(
                        "pause: node-1 answered FRESH under its old epoch {epoch} after SIGCONT {stale} times"
                    ));
                }
                // What became of the calls sent to it while it was stopped.
                let sent: Vec<&Record> = records
                    .iter()
                    .filter(|r| r.asked == node && r.at >= p.start && r.at < p.recover_from)
                    .collect();
                let slowest = sent.iter().map(|r| r.done - r.at).max().unwrap_or_default();
                rows[k].detail.push(format!(
                    "{} calls sent to node-1 while stopped: {} failed, {} answered FRESH (by another node, after a \
                     retry), the others from the fallback ladder; the slowest answered after {slowest:.1?}",
                    sent.len(),
                    sent.iter().filter(|r| r.error.is_some()).count(),
                    sent.iter().filter(|r| fresh(r)).count(),
                ));
                let serves = records
                    .iter()
                    .filter(in_phase)
                    .any(|r| r.at > p.recover_from && r.served_by == ids[node] && fresh(r));
                if !serves {
                    broken.push("pause: node-1 never served FRESH again after rejoining".into());
                }
            }
            Fault::EtcdStop => {
                // Through the outage: at least 99% FRESH, one node per shopper (not only per epoch).
                let during: Vec<&Record> = records
                    .iter()
                    .filter(|r| !r.track && r.at >= p.start && r.at <= p.recover_from)
                    .collect();
                let fresh_during = during.iter().filter(|r| fresh(r)).count();
                if fresh_during * 100 < during.len() * 99 {
                    broken.push(format!(
                        "etcd stop: {fresh_during} of {} Decides FRESH during the outage (< 99%)",
                        during.len()
                    ));
                }
                let mut servers: HashMap<&str, HashSet<&str>> = HashMap::new();
                for r in during.iter().filter(|r| fresh(r)) {
                    servers
                        .entry(r.shopper.as_str())
                        .or_default()
                        .insert(r.served_by.as_str());
                }
                for (shopper, nodes) in servers.iter().filter(|(_, n)| n.len() > 1) {
                    rows[k].dual += 1;
                    broken.push(format!(
                        "etcd stop: {shopper} answered FRESH by {nodes:?} during the outage"
                    ));
                }
            }
            Fault::Cut { node, .. } => {
                // Fenced, the cut node never answers as owner.
                let fenced_fresh = records
                    .iter()
                    .filter(|r| r.served_by == ids[node] && fresh(r))
                    .filter(|r| r.at > p.start + ttl && r.at < p.recover_from)
                    .count();
                if fenced_fresh > 0 {
                    rows[k].dual += fenced_fresh;
                    broken.push(format!(
                        "cut: node-2 answered FRESH {fenced_fresh} times after the cut + TTL, before healing"
                    ));
                }
            }
            Fault::Steady | Fault::Roll => {}
        }
    }

    // No acknowledged event lost: each is in its shopper's session on the owner at the end — unless its owner
    // stopped without handing off less than the replication lag after acknowledging it.
    let history = aisle_session::SessionLimits::default().history;
    let mut acked: Vec<Acked<'_>> = warmed
        .iter()
        .map(|(s, i)| Acked {
            shopper: s,
            item: i,
            at: Duration::ZERO,
            done: Duration::ZERO,
        })
        .collect();
    acked.extend(
        records
            .iter()
            .filter(|r| r.track && r.error.is_none())
            .map(|r| Acked {
                shopper: &r.shopper,
                item: &r.item,
                at: r.at,
                done: r.done,
            }),
    );
    let stops: Vec<(usize, usize, Duration)> = phases
        .iter()
        .enumerate()
        .filter_map(|(k, p)| {
            p.fault
                .owner_stopped(p.start)
                .map(|(node, at)| (k, node, at))
        })
        .collect();
    let mut beyond_bound = 0;
    for a in &acked {
        let owner = owners[a.shopper];
        // Applied after it: every Track sent later (a failed one may have been applied too).
        let later = records
            .iter()
            .filter(|r| r.track && r.shopper == a.shopper && r.at > a.at)
            .count();
        if later + 1 >= history {
            beyond_bound += 1;
            continue;
        }
        // The phase whose stop of the owner excuses it, if any.
        let excused_by = stops
            .iter()
            .find(|&&(_, node, at)| node == owner && a.done + REPLICATION_LAG >= at && a.at <= at)
            .map(|&(k, _, at)| (k, at));
        let found = match &held[a.shopper] {
            Ok((served_by, items)) => served_by == ids[owner] && items.iter().any(|i| i == a.item),
            Err(_) => false,
        };
        if let Some((k, stopped)) = excused_by {
            rows[k].excused += 1;
            if !found {
                rows[k].excused_missing.push(stopped.saturating_sub(a.done));
            }
        } else if !found {
            rows[phase_of(phases, a.at)].lost += 1;
            let what = match &held[a.shopper] {
                Ok((served_by, items)) => format!("{served_by} holds {items:?}"),
                Err(e) => format!("not described: {e}"),
            };
            broken.push(format!(
                "acknowledged event lost: {} viewed {} (sent {:?}, acknowledged {:?}; owner {}): {what}",
                a.shopper, a.item, a.at, a.done, ids[owner]
            ));
        }
    }
    let checked = acked.len() - beyond_bound;
    println!(
        "acknowledged events checked against the owners' sessions: {checked} ({} warm-up, {} tracked under load)",
        warmed.len(),
        checked - warmed.len().min(checked)
    );
    if beyond_bound > 0 {
        broken.push(format!(
            "{beyond_bound} acknowledged events beyond the session history bound ({history}): not checked; the \
             population is too small for the run"
        ));
    }
    (rows, broken)
}

fn print_table(phases: &[Phase], rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str(
        "| phase | calls | failed calls | failed, not documented | FRESH (Decide) | dual owners | acked events lost \
         | time to recover |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
    let mut total = Row::default();
    for (p, r) in phases.iter().zip(rows) {
        let recovery = r
            .recovery
            .map_or("—".to_string(), |d| format!("{:.1} s", d.as_secs_f64()));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.2}% | {} | {} | {} |",
            p.fault.name(),
            r.calls,
            r.failed,
            r.undocumented,
            100.0 * r.fresh as f64 / r.decides.max(1) as f64,
            r.dual,
            r.lost,
            recovery
        );
        total.calls += r.calls;
        total.failed += r.failed;
        total.undocumented += r.undocumented;
        total.decides += r.decides;
        total.fresh += r.fresh;
        total.dual += r.dual;
        total.lost += r.lost;
        total.excused += r.excused;
        total.excused_missing.extend(&r.excused_missing);
    }
    let _ = writeln!(
        out,
        "| **whole run** | {} | {} | {} | {:.2}% | {} | {} | |",
        total.calls,
        total.failed,
        total.undocumented,
        100.0 * total.fresh as f64 / total.decides.max(1) as f64,
        total.dual,
        total.lost
    );
    let _ = writeln!(
        out,
        "\nAcknowledged events within the replication-lag allowance (owner stopped < 1 s after the ack): {} checked, \
         {} missing (allowed).",
        total.excused,
        total.excused_missing.len()
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the chaos run takes about four minutes: scripts/chaos.sh runs it"]
async fn five_faults_under_mixed_load_keep_every_documented_promise() {
    let c = TestCluster::builder()
        .nodes(3)
        .isolatable(CUT)
        .start()
        .await;
    c.wait_for_members(3, Duration::from_secs(60)).await;
    for i in 0..3 {
        c.wait_ready(i, 200, Duration::from_secs(10)).await;
    }
    let ttl = Duration::from_secs(c.lease_ttl_secs);
    let population: Vec<String> = (0..SHOPPERS).map(|k| format!("chaos-{k}")).collect();
    let owners = owners(&c, &population).await;
    let warmed = warm(&c, &population).await;
    let targets = Targets::default();
    targets.set(vec![0, 1, 2]);
    let follower = follow_members(&c, targets.clone());
    let addrs = c.nodes.iter().map(|n| n.addr()).collect();
    // Retried once elsewhere on a transport failure, as gRPC clients do (and the rolling restart test does).
    let driver = Driver::start_mixed(
        addrs,
        targets.clone(),
        population.clone(),
        RATE,
        true,
        TRACK_EVERY,
    );
    let mut chaos = Chaos {
        c,
        ttl,
        started: driver.started,
        targets,
        follower,
        phases: Vec::new(),
        broken: Vec::new(),
    };
    let outcome = chaos.run().await;
    let end = chaos.now();
    if let Some(last) = chaos.phases.last_mut() {
        last.end = end;
    }
    let records = driver.finish().await;
    chaos.follower.abort();
    if let Err(e) = &outcome {
        chaos.broken.push(format!("the run ended early: {e}"));
    }
    // Every event acknowledged into an outbox reaches its owner before the sessions are read.
    if let Err(e) = chaos.c.try_wait_for_outboxes(Duration::from_secs(30)).await {
        chaos.broken.push(format!("after the run: {e}"));
    }
    let sessions = held(&chaos.c, &population).await;
    let (rows, mut broken) = judge(&chaos, &records, &owners, &warmed, &sessions);
    broken.splice(0..0, chaos.broken.drain(..));

    println!(
        "\nchaos run: {SHOPPERS} shoppers, {RATE} calls/s (one in {TRACK_EVERY} a Track, the others Decides), \
         lease TTL {ttl:?}"
    );
    for (p, r) in chaos.phases.iter().zip(&rows) {
        println!(
            "{} ({:.1} s .. {:.1} s): {}{}{}{}",
            p.fault.name(),
            p.start.as_secs_f64(),
            p.end.as_secs_f64(),
            p.notes.join("; "),
            match (r.failed, p.fault.node()) {
                (0, _) => String::new(),
                (n, node) => format!(
                    "; failed: {} Decides, {} Tracks ({} first sent to {})",
                    n - r.failed_tracks,
                    r.failed_tracks,
                    r.failed_at_faulted,
                    node.map_or("—".to_string(), |i| format!("node-{i}"))
                ),
            },
            match r.excused {
                0 => String::new(),
                n => format!(
                    "; {n} events acknowledged < 1 s before their owner stopped, {} of them missing (allowed){}",
                    r.excused_missing.len(),
                    if r.excused_missing.is_empty() {
                        String::new()
                    } else {
                        let leads: Vec<String> = r
                            .excused_missing
                            .iter()
                            .map(|d| format!("{} ms", d.as_millis()))
                            .collect();
                        format!(", acknowledged {} before", leads.join(", "))
                    }
                ),
            },
            r.detail
                .iter()
                .map(|d| format!("; {d}"))
                .collect::<String>()
        );
    }
    println!("\n{}", print_table(&chaos.phases, &rows));
    if broken.is_empty() {
        println!("every promise kept");
    } else {
        for b in &broken {
            println!("BROKEN: {b}");
        }
        panic!("{} broken promises (above)", broken.len());
    }
}
