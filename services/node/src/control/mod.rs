//! Control records: what operators set for the whole fleet, kept in etcd beside the membership, and what each
//! member publishes about itself.
//!
//! | key under `/aisle/<cluster>/control/` | what | written by |
//! |---|---|---|
//! | `kill-switch` | the kill switches in force ([`SwitchRecord`]) | `SetKillSwitch` |
//! | `versions` | the versions the fleet should serve ([`fleet::Desired`]) | the first node to start (seed), `PromoteModel`, `RollbackModel`, a member when nobody serves the record any more (adopt) |
//! | `loaded/<node>` | what that member serves and which switches it applies ([`fleet::Loaded`]) | the member, when it changes |
//!
//! Every write is a compare-and-swap on the key's modification revision, so concurrent writers never lose each
//! other's changes (the loser reads again and re-applies its change).
//!
//! Each node mirrors the prefix ([`Mirror`]): a linearizable read, then a watch from the read's revision + 1; a
//! compaction, a cancelled watch or a broken stream cause a fresh read, and a read every 3 s double-checks the
//! watch. A change is applied as soon as it is seen — kill switches within milliseconds of the write. When etcd
//! cannot be reached the mirror keeps the last state it read: switches stay as they were (never cleared because etcd
//! is unreachable) and so do the versions; a node that starts while etcd is down serves without switches until its
//! first read succeeds (it waits up to 2 s for that read before it declares itself serving).
//!
//! After every change (and every 3 s) the node reconciles: it applies the switches, seeds the versions record when
//! there is none, converges its models to the record ([`fleet::step`]), reports skew (`aisle_fleet_version_skew`),
//! replaces a record that nobody has served for 30 s by what it serves ([`fleet::adopted`]), and publishes its own
//! record.
//!
//! In static mode there is no etcd: switches live in this node's memory only, and models are switched on this node
//! by the admin calls themselves.
//!
//! This module and [`crate::cluster::membership`] are the only ones that see etcd types.

pub mod fleet;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp, WatchOptions, WatchStream};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Mutex, watch};
use tokio::time::Instant;

use crate::bundles::Bundles;
use crate::cluster::{Cluster, MembershipConfig, membership};
use crate::engine::kill_switch::{KillSwitch, SwitchChange, SwitchRecord, Switchboard};
use crate::error::ApiError;
use crate::logs::Logs;
use fleet::{Desired, Loaded, Step, Versions};

/// How often etcd is read again, whatever the watch says.
const RECHECK: Duration = Duration::from_secs(3);
/// How long a versions record must have been in force here before this node may replace it by what it serves.
const ADOPT_AFTER: Duration = Duration::from_secs(30);
/// Attempts of a compare-and-swap against concurrent writers before giving up.
const CAS_ATTEMPTS: usize = 8;
/// How long SetKillSwitch waits for the members to confirm a change.
const CONFIRM_SWITCHES: Duration = Duration::from_secs(1);
/// How long PromoteModel and RollbackModel wait for the members to converge.
const CONFIRM_MODELS: Duration = Duration::from_secs(5);

/// A record as last read or watched, with its key's modification revision in etcd (0: never seen; in static
/// mode, the record's own revision).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored<T> {
    /// The record.
    pub value: T,
    /// Its key's modification revision.
    pub mod_revision: i64,
}

/// What this node knows of the control records.
#[derive(Debug, Clone, Default)]
pub struct Mirror {
    /// Whether etcd has been read since this node started (static mode: always).
    pub read: bool,
    /// The kill switches (an empty record while none was ever set).
    pub switches: Stored<SwitchRecord>,
    /// The fleet's versions record, if there is one.
    pub desired: Stored<Option<Desired>>,
    /// What each node published about itself, by node id (departed nodes' records stay; read members only).
    pub loaded: BTreeMap<String, Stored<Loaded>>,
}

/// The keys of one cluster's control records.
#[derive(Debug, Clone)]
struct Keys {
    prefix: String,
    switches: String,
    versions: String,
    loaded: String,
}

impl Keys {
    fn new(cluster: &str) -> Self {
        let prefix = format!("/aisle/{cluster}/control/");
        Self {
            switches: format!("{prefix}kill-switch"),
            versions: format!("{prefix}versions"),
            loaded: format!("{prefix}loaded/"),
            prefix,
        }
    }
}

/// Parses a record, or logs and counts why not (an invalid record is never applied: the last good one holds).
fn parse<T: DeserializeOwned>(record: &'static str, key: &str, value: &[u8]) -> Option<T> {
    match serde_json::from_slice(value) {
        Ok(v) => Some(v),
        Err(e) => {
            metrics::counter!("aisle_control_records_invalid_total", "record" => record)
                .increment(1);
            tracing::warn!(key, error = %e, "invalid control record in etcd: ignored");
            None
        }
    }
}

impl Mirror {
    /// Applies the value of `key` at `mod_revision` (`None`: deleted) unless the mirror holds a later one; whether
    /// anything changed.
    fn apply(&mut self, keys: &Keys, key: &str, value: Option<&[u8]>, mod_revision: i64) -> bool {
        if key == keys.switches {
            if mod_revision <= self.switches.mod_revision {
                return false;
            }
            // A deleted record means no switch; an invalid one is not applied (the last good one holds).
            let record = match value {
                Some(v) => {
                    parse("kill_switch", key, v).unwrap_or_else(|| self.switches.value.clone())
                }
                None => SwitchRecord::default(),
            };
            self.switches = Stored {
                value: record,
                mod_revision,
            };
            return true;
        }
        if key == keys.versions {
            if mod_revision <= self.desired.mod_revision {
                return false;
            }
            let record = match value {
                Some(v) => parse("versions", key, v).or_else(|| self.desired.value.clone()),
                None => None,
            };
            self.desired = Stored {
                value: record,
                mod_revision,
            };
            return true;
        }
        let Some(node) = key.strip_prefix(&keys.loaded) else {
            return false;
        };
        if self
            .loaded
            .get(node)
            .is_some_and(|l| l.mod_revision >= mod_revision)
        {
            return false;
        }
        match value.and_then(|v| parse::<Loaded>("loaded", key, v)) {
            Some(l) if l.node_id == node => {
                self.loaded.insert(
                    node.to_string(),
                    Stored {
                        value: l,
                        mod_revision,
                    },
                );
            }
            _ => {
                self.loaded.remove(node);
            }
        }
        true
    }

    /// Replaces the mirror by a read made at `revision` (keys absent from it were deleted, unless written later).
    fn replace(&mut self, keys: &Keys, kvs: &[(String, Vec<u8>, i64)], revision: i64) -> bool {
        let mut changed = !self.read;
        self.read = true;
        for (key, value, mod_revision) in kvs {
            changed |= self.apply(keys, key, Some(value), *mod_revision);
        }
        let held = |key: &str| kvs.iter().any(|(k, _, _)| k == key);
        if self.switches.mod_revision > 0 && !held(&keys.switches) {
            changed |= self.apply(keys, &keys.switches.clone(), None, revision);
        }
        if self.desired.mod_revision > 0 && !held(&keys.versions) {
            changed |= self.apply(keys, &keys.versions.clone(), None, revision);
        }
        let before = self.loaded.len();
        self.loaded
            .retain(|node, l| l.mod_revision > revision || held(&format!("{}{node}", keys.loaded)));
        changed || self.loaded.len() != before
    }
}

/// The answer to a kill-switch change.
#[derive(Debug, Clone)]
pub struct SwitchOutcome {
    /// The record now in force.
    pub record: SwitchRecord,
    /// Whether the change changed anything.
    pub changed: bool,
    /// Whether it is kept in etcd for the whole cluster (else in this node's memory).
    pub clustered: bool,
    /// Members known to apply it.
    pub applied_by: Vec<String>,
    /// Members of the view that had not confirmed yet.
    pub pending: Vec<String>,
}

/// The answer to a promotion or rollback of the fleet's models.
#[derive(Debug, Clone)]
pub struct ModelsOutcome {
    /// The record now in force.
    pub desired: Versions,
    /// Where each member of the view is.
    pub members: Vec<MemberModels>,
}

/// A member's default model, and whether it serves the recorded models.
#[derive(Debug, Clone)]
pub struct MemberModels {
    /// The member.
    pub node_id: String,
    /// Its default model ("" when it has not published what it serves).
    pub default_model: String,
    /// Whether it serves the recorded default and candidate models.
    pub converged: bool,
}

/// What the control records say, for status reports.
#[derive(Debug, Clone)]
pub struct ControlStatus {
    /// The mirror.
    pub mirror: Mirror,
    /// What this node serves now.
    pub mine: Versions,
    /// The switches this node applies.
    pub switches: Vec<KillSwitch>,
}

/// What this node did about the records.
#[derive(Debug, Default)]
struct Local {
    /// The versions record (by mod revision) this node follows, and when it first saw it.
    desired_seen: Option<(i64, Instant)>,
    /// The skew last reported (logged when it changes).
    skew: Vec<&'static str>,
}

/// etcd, in etcd mode.
struct Etcd {
    config: MembershipConfig,
    keys: Keys,
    client: Mutex<Option<Client>>,
    cluster: Arc<Cluster>,
}

/// Outcome of a compare-and-swap.
struct Updated<T> {
    /// The record now in etcd (written, or as read when no write was wanted).
    value: Option<T>,
    /// Its mod revision.
    mod_revision: i64,
    /// Whether it was written.
    written: bool,
}

/// What the control records act on in a node.
#[derive(Debug, Clone)]
pub struct Parts {
    /// The bundles served (models are promoted and rolled back here).
    pub bundles: Arc<Bundles>,
    /// The kill switches decisions follow.
    pub switchboard: Arc<Switchboard>,
    /// The decision trail.
    pub logs: Logs,
}

/// The control records of one node: the mirror, the task that follows etcd, and the operations behind the admin
/// calls.
pub struct Control {
    node_id: String,
    /// What this node serves, and promotes or rolls back.
    bundles: Arc<Bundles>,
    /// Where the switches decisions follow are set.
    switchboard: Arc<Switchboard>,
    /// The decision trail, which records this node's own model moves.
    logs: Logs,
    etcd: Option<Etcd>,
    mirror: watch::Sender<Mirror>,
    /// The mod revision of the switches record applied to the switchboard.
    applied_switches: std::sync::Mutex<i64>,
    /// Serialises reconciliation (the task and the admin calls).
    local: Mutex<Local>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("node_id", &self.node_id)
            .field("clustered", &self.etcd.is_some())
            .finish_non_exhaustive()
    }
}

impl Control {
    /// Control records in this node's memory only (static mode).
    pub fn alone(node_id: &str, parts: Parts) -> Arc<Self> {
        Self::new(node_id, parts, None, true)
    }

    /// Control records in etcd; run [`Control::follow`] to mirror them.
    pub fn with_etcd(config: MembershipConfig, parts: Parts, cluster: Arc<Cluster>) -> Arc<Self> {
        let node_id = config.node_id.clone();
        let etcd = Etcd {
            keys: Keys::new(&config.cluster),
            config,
            client: Mutex::new(None),
            cluster,
        };
        Self::new(&node_id, parts, Some(etcd), false)
    }

    fn new(node_id: &str, parts: Parts, etcd: Option<Etcd>, read: bool) -> Arc<Self> {
        metrics::gauge!("aisle_kill_switch_active").set(0.0);
        metrics::gauge!("aisle_fleet_version_skew").set(0.0);
        Arc::new(Self {
            node_id: node_id.to_string(),
            bundles: parts.bundles,
            switchboard: parts.switchboard,
            logs: parts.logs,
            etcd,
            mirror: watch::channel(Mirror {
                read,
                ..Mirror::default()
            })
            .0,
            applied_switches: std::sync::Mutex::new(0),
            local: Mutex::new(Local::default()),
        })
    }

    /// Whether the records are in etcd (shared by the cluster).
    pub fn is_clustered(&self) -> bool {
        self.etcd.is_some()
    }

    /// Waits until etcd was read once, up to `timeout`; whether it was.
    pub async fn wait_read(&self, timeout: Duration) -> bool {
        let mut rx = self.mirror.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|m| m.read))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// What the records say, and what this node serves.
    pub fn status(&self) -> ControlStatus {
        ControlStatus {
            mirror: self.mirror.borrow().clone(),
            mine: Versions::of(&self.bundles),
            switches: self.switchboard.active(),
        }
    }

    /// Applies the mirrored switches to the switchboard, if they changed.
    fn apply_switches(&self) {
        let mut applied = self.applied_switches.lock().expect("switches lock");
        let mirror = self.mirror.borrow();
        if *applied == mirror.switches.mod_revision {
            return;
        }
        *applied = mirror.switches.mod_revision;
        let switches = &mirror.switches.value.switches;
        self.switchboard.set(switches);
        let keys: Vec<String> = switches
            .iter()
            .map(|s| format!("{} -> {:?}", s.key, s.tier))
            .collect();
        tracing::warn!(target: "aisle::control", revision = mirror.switches.value.revision,
            switches = ?keys, "kill switches applied");
    }

    fn applied_switches(&self) -> i64 {
        *self.applied_switches.lock().expect("switches lock")
    }

    /// Turns a kill switch on or off: in etcd (every member applies it) or, in static mode, on this node.
    ///
    /// # Errors
    /// UNAVAILABLE when etcd cannot be reached or keeps changing under the write; FAILED_PRECONDITION when etcd
    /// holds an invalid record.
    pub async fn set_kill_switch(&self, change: &SwitchChange) -> Result<SwitchOutcome, ApiError> {
        let Some(etcd) = &self.etcd else {
            let changed = self.mirror.send_if_modified(|m| {
                let Some(next) = m.switches.value.changed(change) else {
                    return false;
                };
                m.switches = Stored {
                    mod_revision: next.revision as i64,
                    value: next,
                };
                true
            });
            self.apply_switches();
            return Ok(SwitchOutcome {
                record: self.mirror.borrow().switches.value.clone(),
                changed,
                clustered: false,
                applied_by: vec![self.node_id.clone()],
                pending: Vec::new(),
            });
        };
        let updated = self
            .update::<SwitchRecord>(etcd, &etcd.keys.switches, |current| {
                Ok(current.unwrap_or_default().changed(change))
            })
            .await?;
        let record = updated.value.unwrap_or_default();
        if updated.written {
            let json = serde_json::to_vec(&record).expect("records serialise");
            self.mirror.send_if_modified(|m| {
                m.apply(
                    &etcd.keys,
                    &etcd.keys.switches,
                    Some(&json),
                    updated.mod_revision,
                )
            });
            self.apply_switches();
        }
        let (applied_by, pending) = self
            .confirmations(etcd, updated.mod_revision, CONFIRM_SWITCHES)
            .await;
        Ok(SwitchOutcome {
            record,
            changed: updated.written,
            clustered: true,
            applied_by,
            pending,
        })
    }

    /// Members of this node's view that apply the switches record at `mod_revision` (or later), waiting up to
    /// `within` for them all; and those that do not yet.
    async fn confirmations(
        &self,
        etcd: &Etcd,
        mod_revision: i64,
        within: Duration,
    ) -> (Vec<String>, Vec<String>) {
        let deadline = Instant::now() + within;
        let mut changes = self.mirror.subscribe();
        loop {
            let members = self.members(etcd);
            // Read before the mirror is borrowed: `apply_switches` takes the two in the other order.
            let here = self.applied_switches() >= mod_revision;
            let (applied, pending): (Vec<String>, Vec<String>) = {
                let mirror = changes.borrow_and_update();
                members.into_iter().partition(|m| {
                    if *m == self.node_id {
                        here
                    } else {
                        mirror
                            .loaded
                            .get(m)
                            .is_some_and(|l| l.value.kill_switch_revision as i64 >= mod_revision)
                    }
                })
            };
            if pending.is_empty() || Instant::now() >= deadline {
                return (applied, pending);
            }
            let _ = tokio::time::timeout_at(deadline, changes.changed()).await;
        }
    }

    /// The members of this node's view (this node alone when it has none).
    fn members(&self, etcd: &Etcd) -> Vec<String> {
        match etcd.cluster.current() {
            Some(view) => view.members.iter().map(|m| m.node_id.clone()).collect(),
            None => vec![self.node_id.clone()],
        }
    }

    /// Promotes (or rolls back) the models: in etcd mode, in the fleet's versions record, converging this node and
    /// waiting up to 5 s for the other members to follow; in static mode, on this node.
    ///
    /// # Errors
    /// FAILED_PRECONDITION when there is no candidate (no previous default); UNAVAILABLE when etcd cannot be
    /// reached.
    pub async fn switch_models(
        &self,
        promote: bool,
        caller: &str,
    ) -> Result<ModelsOutcome, ApiError> {
        let Some(etcd) = &self.etcd else {
            return self.switch_here(promote).await;
        };
        let mine = Versions::of(&self.bundles);
        let change = if promote { "promote" } else { "rollback" };
        let updated = self
            .update::<Desired>(etcd, &etcd.keys.versions, |current| {
                let (base, revision) = match current {
                    Some(d) => (d.versions, d.revision),
                    None => (mine.clone(), 0),
                };
                let next = if promote {
                    base.promoted()
                } else {
                    base.rolled_back()
                }
                .map_err(|e| ApiError::FailedPrecondition(e.to_string()))?;
                Ok(Some(Desired {
                    revision: revision + 1,
                    versions: next,
                    change: change.into(),
                    changed_by: caller.into(),
                    changed_at_ms: aisle_domain::now_ms(),
                }))
            })
            .await?;
        let desired = updated
            .value
            .expect("a promotion or rollback writes a record");
        let json = serde_json::to_vec(&desired).expect("records serialise");
        self.mirror.send_if_modified(|m| {
            m.apply(
                &etcd.keys,
                &etcd.keys.versions,
                Some(&json),
                updated.mod_revision,
            )
        });
        tracing::info!(target: "aisle::control", %caller, change, default_model = %desired.versions.default_model,
            revision = desired.revision, "fleet versions record changed");
        self.reconcile().await;
        let desired = desired.versions;
        let deadline = Instant::now() + CONFIRM_MODELS;
        let mut changes = self.mirror.subscribe();
        loop {
            let members = self.member_models(etcd, &desired);
            if members.iter().all(|m| m.converged) || Instant::now() >= deadline {
                return Ok(ModelsOutcome { desired, members });
            }
            let _ = tokio::time::timeout_at(deadline, changes.changed()).await;
        }
    }

    /// Promotes (or rolls back) this node's own models (static mode).
    async fn switch_here(&self, promote: bool) -> Result<ModelsOutcome, ApiError> {
        let worlds = self.bundles.worlds();
        let default_model = if promote {
            worlds.promote().await
        } else {
            worlds.rollback().await
        }?;
        Ok(ModelsOutcome {
            desired: Versions::of(&self.bundles),
            members: vec![MemberModels {
                node_id: self.node_id.clone(),
                default_model,
                converged: true,
            }],
        })
    }

    /// Each member's default model and whether it serves the models of `desired`.
    fn member_models(&self, etcd: &Etcd, desired: &Versions) -> Vec<MemberModels> {
        let mine = Versions::of(&self.bundles);
        let mirror = self.mirror.borrow();
        self.members(etcd)
            .into_iter()
            .map(|m| {
                let versions = if m == self.node_id {
                    Some(&mine)
                } else {
                    mirror.loaded.get(&m).map(|l| &l.value.versions)
                };
                let default = versions.map_or_else(String::new, |v| v.default_model.clone());
                let converged = versions.is_some_and(|v| {
                    v.default_model == desired.default_model
                        && v.candidate_model == desired.candidate_model
                });
                MemberModels {
                    node_id: m,
                    default_model: default,
                    converged,
                }
            })
            .collect()
    }

    /// A client of etcd (connected once, then shared).
    async fn client(&self, etcd: &Etcd) -> Result<Client, etcd_client::Error> {
        let mut guard = etcd.client.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let c = membership::connect(&etcd.config).await?;
        *guard = Some(c.clone());
        Ok(c)
    }

    /// Reads `key`, computes its next record from the current one (`None`: no write), and writes it unless the key
    /// changed meanwhile — then again, from the newer record.
    async fn update<T: Serialize + DeserializeOwned + Clone>(
        &self,
        etcd: &Etcd,
        key: &str,
        mut next: impl FnMut(Option<T>) -> Result<Option<T>, ApiError>,
    ) -> Result<Updated<T>, ApiError> {
        let unavailable = |e: etcd_client::Error| {
            ApiError::Unavailable(format!("etcd cannot be reached ({e}); retry"))
        };
        let mut client = self.client(etcd).await.map_err(unavailable)?;
        for _ in 0..CAS_ATTEMPTS {
            let read = client.get(key, None).await.map_err(unavailable)?;
            let (current, mod_revision) = match read.kvs().first() {
                Some(kv) => (
                    Some(serde_json::from_slice::<T>(kv.value()).map_err(|e| {
                        ApiError::FailedPrecondition(format!(
                            "{key} holds an invalid record ({e}): fix or delete it"
                        ))
                    })?),
                    kv.mod_revision(),
                ),
                None => (None, 0),
            };
            let Some(record) = next(current.clone())? else {
                return Ok(Updated {
                    value: current,
                    mod_revision,
                    written: false,
                });
            };
            let value = serde_json::to_vec(&record).expect("records serialise");
            let txn = Txn::new()
                .when([Compare::mod_revision(key, CompareOp::Equal, mod_revision)])
                .and_then([TxnOp::put(key, value, None)]);
            let resp = client.txn(txn).await.map_err(unavailable)?;
            if resp.succeeded() {
                return Ok(Updated {
                    value: Some(record),
                    mod_revision: resp.header().map_or(0, |h| h.revision()),
                    written: true,
                });
            }
            tracing::debug!(key, "control record changed under the write; again");
        }
        Err(ApiError::Unavailable(format!(
            "{key} kept changing under the write ({CAS_ATTEMPTS} attempts); retry"
        )))
    }

    /// Mirrors etcd for the life of the node: reads, watches, re-reads, and reconnects after failures (with
    /// backoff up to 2 s), reconciling after every change.
    pub async fn follow(self: Arc<Self>) {
        let Some(etcd) = &self.etcd else {
            return;
        };
        let mut backoff = Duration::from_millis(100);
        loop {
            if let Err(e) = self.mirror_etcd(etcd, &mut backoff).await {
                tracing::warn!(target: "aisle::control", error = %e,
                    "control records: etcd unreachable; the last state read holds");
            }
            *etcd.client.lock().await = None;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// One connection's worth of mirroring: returns on an etcd error.
    async fn mirror_etcd(
        &self,
        etcd: &Etcd,
        backoff: &mut Duration,
    ) -> Result<(), etcd_client::Error> {
        let mut client = self.client(etcd).await?;
        let mut watch = self.read_and_watch(etcd, &mut client).await?;
        *backoff = Duration::from_millis(100);
        let mut recheck = tokio::time::interval(RECHECK);
        recheck.tick().await;
        let mut changes = self.mirror.subscribe();
        self.reconcile().await;
        loop {
            tokio::select! {
                message = watch.message() => {
                    let Some(resp) = message? else {
                        return Err(etcd_client::Error::WatchError("the watch ended".into()));
                    };
                    if resp.canceled() || resp.compact_revision() > 0 {
                        tracing::warn!(target: "aisle::control", compact_revision = resp.compact_revision(),
                            reason = resp.cancel_reason(), "control watch cancelled; reading again");
                        watch = self.read_and_watch(etcd, &mut client).await?;
                        continue;
                    }
                    self.mirror.send_if_modified(|m| {
                        let mut changed = false;
                        for event in resp.events() {
                            let Some(kv) = event.kv() else { continue };
                            let value = match event.event_type() {
                                etcd_client::EventType::Put => Some(kv.value()),
                                etcd_client::EventType::Delete => None,
                            };
                            let key = String::from_utf8_lossy(kv.key());
                            changed |= m.apply(&etcd.keys, &key, value, kv.mod_revision());
                        }
                        changed
                    });
                }
                _ = recheck.tick() => {
                    self.read(etcd, &mut client).await?;
                    // Also when nothing changed: retries what failed, and adoption waits on time.
                    self.reconcile().await;
                }
                changed = changes.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    self.reconcile().await;
                }
            }
        }
    }

    /// A linearizable read of every control record into the mirror; the read's revision.
    async fn read(&self, etcd: &Etcd, client: &mut Client) -> Result<i64, etcd_client::Error> {
        let resp = client
            .get(
                etcd.keys.prefix.as_str(),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let kvs: Vec<(String, Vec<u8>, i64)> = resp
            .kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).to_string(),
                    kv.value().to_vec(),
                    kv.mod_revision(),
                )
            })
            .collect();
        self.mirror
            .send_if_modified(|m| m.replace(&etcd.keys, &kvs, revision));
        Ok(revision)
    }

    /// Reads, then watches from the read's revision + 1.
    async fn read_and_watch(
        &self,
        etcd: &Etcd,
        client: &mut Client,
    ) -> Result<WatchStream, etcd_client::Error> {
        let revision = self.read(etcd, client).await?;
        client
            .watch(
                etcd.keys.prefix.as_str(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            )
            .await
    }

    /// Brings this node in line with the records: switches applied; in etcd mode the versions record seeded when
    /// there is none, models converged, skew reported, a record nobody serves replaced, and this node's own record
    /// published. Failed writes are retried at the next reconciliation.
    pub async fn reconcile(&self) {
        self.apply_switches();
        let Some(etcd) = &self.etcd else {
            return;
        };
        let mut local = self.local.lock().await;
        let (read, desired) = {
            let m = self.mirror.borrow();
            (m.read, m.desired.clone())
        };
        if !read {
            return;
        }
        match &desired.value {
            None => self.seed(etcd).await,
            Some(d) => {
                self.converge(etcd, &mut local, d, desired.mod_revision)
                    .await
            }
        }
        self.publish(etcd).await;
    }

    /// Creates the versions record from what this node serves, unless another node did first.
    async fn seed(&self, etcd: &Etcd) {
        let mine = Versions::of(&self.bundles);
        let node = format!("node {}", self.node_id);
        let seeded = self
            .update::<Desired>(etcd, &etcd.keys.versions, |current| {
                Ok(current.is_none().then(|| Desired {
                    revision: 1,
                    versions: mine.clone(),
                    change: "seed".into(),
                    changed_by: node.clone(),
                    changed_at_ms: aisle_domain::now_ms(),
                }))
            })
            .await;
        self.mirror_update(etcd, &etcd.keys.versions, seeded, "seed");
    }

    /// Puts the outcome of an update into the mirror (or logs why there is none).
    fn mirror_update<T: Serialize>(
        &self,
        etcd: &Etcd,
        key: &str,
        updated: Result<Updated<T>, ApiError>,
        what: &'static str,
    ) {
        match updated {
            Ok(u) => {
                let json = u
                    .value
                    .as_ref()
                    .map(|v| serde_json::to_vec(v).expect("records serialise"));
                self.mirror.send_if_modified(|m| {
                    m.apply(&etcd.keys, key, json.as_deref(), u.mod_revision)
                });
            }
            Err(e) => {
                tracing::warn!(target: "aisle::control", error = %e, what, "control record not written; retrying later")
            }
        }
    }

    /// Converges this node's models to the record, reports skew, and replaces a record nobody serves.
    async fn converge(&self, etcd: &Etcd, local: &mut Local, desired: &Desired, mod_revision: i64) {
        let now = Instant::now();
        let since = match local.desired_seen {
            Some((r, at)) if r == mod_revision => at,
            _ => {
                local.desired_seen = Some((mod_revision, now));
                now
            }
        };
        self.step_towards(desired).await;
        let (mine, skew) = self.report_skew(local, desired);
        if skew.is_empty() || now.duration_since(since) < ADOPT_AFTER {
            return;
        }
        self.adopt(etcd, desired, &mine, &skew).await;
    }

    /// Promotes or rolls back this node's models when that brings them to the record's, and records it.
    async fn step_towards(&self, desired: &Desired) {
        let worlds = self.bundles.worlds();
        let loaded = Versions::of(&self.bundles);
        if let Some(step) = fleet::step(&loaded, &desired.versions) {
            let (done, action) = match step {
                Step::Promote => (worlds.promote().await, "promote_model"),
                Step::Rollback => (worlds.rollback().await, "rollback_model"),
            };
            match done {
                Ok(default_model) => {
                    tracing::info!(target: "aisle::control", %default_model, action, revision = desired.revision,
                        "models switched to follow the fleet's versions record");
                    // This node's trail records the switch as the admin action it carries out (the caller's own
                    // node recorded the call before changing the record).
                    let by = format!(
                        "versions record #{} ({} by {})",
                        desired.revision, desired.change, desired.changed_by
                    );
                    let details = serde_json::json!({"default_model": default_model});
                    if let Err(e) = self.logs.audit_action(action, &by, details).await {
                        tracing::warn!(target: "aisle::control", error = %e, action,
                            "the decision trail could not record a model switch");
                    }
                }
                Err(e) => tracing::warn!(target: "aisle::control", error = %e,
                    "could not switch models to follow the fleet's versions record"),
            }
        }
    }

    /// Where this node differs from the record (the gauge, and a log line when it changes); what it serves.
    fn report_skew(&self, local: &mut Local, desired: &Desired) -> (Versions, Vec<&'static str>) {
        let mine = Versions::of(&self.bundles);
        let skew = fleet::skew(&mine, &desired.versions);
        metrics::gauge!("aisle_fleet_version_skew").set(if skew.is_empty() { 0.0 } else { 1.0 });
        if skew != local.skew {
            if skew.is_empty() {
                tracing::info!(target: "aisle::control", revision = desired.revision,
                    "this node serves the fleet's recorded versions");
            } else {
                tracing::warn!(target: "aisle::control", fields = ?skew, serving = ?mine,
                    desired = ?desired.versions, "version skew: this node serves other versions than the fleet's \
                    record and cannot switch to them (it keeps serving what it has)");
            }
            local.skew.clone_from(&skew);
        }
        (mine, skew)
    }

    /// Records what this node serves when no member of its view serves the recorded versions any more.
    async fn adopt(&self, etcd: &Etcd, desired: &Desired, mine: &Versions, skew: &[&'static str]) {
        let Some(view) = etcd.cluster.current() else {
            return;
        };
        if view.member(&self.node_id).is_none() {
            return;
        }
        let mirror = self.mirror.borrow().clone();
        let others: Vec<Option<&Versions>> = view
            .members
            .iter()
            .filter(|m| m.node_id != self.node_id)
            .map(|m| mirror.loaded.get(&m.node_id).map(|l| &l.value.versions))
            .collect();
        let Some(next) = fleet::adopted(mine, &desired.versions, &others) else {
            return;
        };
        let node = format!("node {}", self.node_id);
        let expected = desired.clone();
        let adopted = self
            .update::<Desired>(etcd, &etcd.keys.versions, |current| {
                // Only over the record this decision was made from.
                Ok((current.as_ref() == Some(&expected)).then(|| Desired {
                    revision: expected.revision + 1,
                    versions: next.clone(),
                    change: "adopt".into(),
                    changed_by: node.clone(),
                    changed_at_ms: aisle_domain::now_ms(),
                }))
            })
            .await;
        if let Ok(u) = &adopted
            && u.written
        {
            tracing::warn!(target: "aisle::control", fields = ?skew, versions = ?next,
                "no member served the fleet's recorded versions: recorded what this node serves");
        }
        self.mirror_update(etcd, &etcd.keys.versions, adopted, "adopt");
    }

    /// Writes this node's own record when it differs from what etcd holds.
    async fn publish(&self, etcd: &Etcd) {
        let me = Loaded {
            node_id: self.node_id.clone(),
            versions: Versions::of(&self.bundles),
            kill_switch_revision: self.applied_switches().max(0) as u64,
        };
        let held = self
            .mirror
            .borrow()
            .loaded
            .get(&self.node_id)
            .map(|l| l.value.clone());
        if held.as_ref() == Some(&me) {
            return;
        }
        let key = format!("{}{}", etcd.keys.loaded, self.node_id);
        let written = match self.client(etcd).await {
            Ok(mut client) => client
                .put(
                    key.as_str(),
                    serde_json::to_vec(&me).expect("records serialise"),
                    None,
                )
                .await
                .map(|r| r.header().map_or(0, |h| h.revision())),
            Err(e) => Err(e),
        };
        match written {
            Ok(mod_revision) => {
                let json = serde_json::to_vec(&me).expect("records serialise");
                self.mirror
                    .send_if_modified(|m| m.apply(&etcd.keys, &key, Some(&json), mod_revision));
            }
            Err(e) => {
                tracing::debug!(target: "aisle::control", error = %e, "own versions record not published; retrying later")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(node: &str, rules: &str) -> Vec<u8> {
        serde_json::to_vec(&Loaded {
            node_id: node.into(),
            versions: Versions {
                bundles: [("rules".to_string(), rules.to_string())].into(),
                ..Versions::default()
            },
            kill_switch_revision: 0,
        })
        .unwrap()
    }

    #[test]
    fn the_mirror_keeps_the_latest_revision_of_each_record() {
        let keys = Keys::new("c");
        let mut m = Mirror::default();
        let on = serde_json::to_vec(&SwitchRecord {
            revision: 1,
            switches: Vec::new(),
        })
        .unwrap();
        assert!(m.apply(&keys, "/aisle/c/control/kill-switch", Some(&on), 5));
        // A duplicate or older event changes nothing.
        assert!(!m.apply(&keys, "/aisle/c/control/kill-switch", None, 5));
        assert!(!m.apply(&keys, "/aisle/c/control/kill-switch", None, 4));
        assert_eq!(m.switches.value.revision, 1);
        // An invalid record is not applied: the last good one holds.
        assert!(m.apply(&keys, "/aisle/c/control/kill-switch", Some(b"{oops"), 6));
        assert_eq!(m.switches.value.revision, 1);
        // Members' records, checked against their key.
        assert!(m.apply(
            &keys,
            "/aisle/c/control/loaded/n1",
            Some(&loaded("n1", "r1")),
            7
        ));
        assert!(m.apply(
            &keys,
            "/aisle/c/control/loaded/n2",
            Some(&loaded("n1", "r1")),
            8
        ));
        assert_eq!(m.loaded.keys().collect::<Vec<_>>(), ["n1"]);
        // Unrelated keys under the prefix are ignored.
        assert!(!m.apply(&keys, "/aisle/c/control/other", Some(b"{}"), 9));
    }

    #[test]
    fn a_read_replaces_what_it_no_longer_holds_unless_written_after_it() {
        let keys = Keys::new("c");
        let mut m = Mirror::default();
        let record = serde_json::to_vec(&SwitchRecord {
            revision: 3,
            switches: Vec::new(),
        })
        .unwrap();
        let kvs = vec![
            ("/aisle/c/control/kill-switch".to_string(), record, 10),
            (
                "/aisle/c/control/loaded/n1".to_string(),
                loaded("n1", "r1"),
                11,
            ),
        ];
        assert!(m.replace(&keys, &kvs, 12));
        assert!(m.read);
        assert_eq!(m.switches.value.revision, 3);
        assert!(!m.replace(&keys, &kvs, 12), "the same read changes nothing");
        // n2 published after the next read was made: it stays; n1 and the switches are gone from etcd.
        assert!(m.apply(
            &keys,
            "/aisle/c/control/loaded/n2",
            Some(&loaded("n2", "r1")),
            20
        ));
        assert!(m.replace(&keys, &[], 15));
        assert_eq!(m.loaded.keys().collect::<Vec<_>>(), ["n2"]);
        assert_eq!(m.switches.value, SwitchRecord::default());
        assert_eq!(m.switches.mod_revision, 15);
    }
}
