//! Every bundle a node serves — the catalog, the default and candidate models, the guardrail rules, the
//! experiments — behind one handle, [`Bundles`], driven by one table of kinds ([`registry::Kind`]).
//!
//! Each kind has one owner actor that serialises its changes and publishes immutable snapshots that decisions read
//! without a lock (the catalog and the models share one: the [`world`], so a model is never bound to another
//! catalog than the one it ranks). A new version is checked by its owner and refused with its reason when invalid;
//! the last good one keeps serving.
//!
//! - [`registry`]: the kinds and what is known of each (name, file, required, fleet field);
//! - [`start`]: the bundles a node starts with (files, embedded defaults, or the [`demo`] world);
//! - [`watch`]: polling the files and loading new versions;
//! - [`files`]: the files served, for store edges' bundle feed;
//! - [`world`]: the catalog and the models bound to it.

pub mod demo;
pub mod files;
pub mod registry;
pub mod signature;
pub mod start;
pub mod watch;
pub mod world;

use std::sync::Arc;
use std::time::Duration;

use aisle_domain::bundle::BundleMeta;
use aisle_experiment::{Experiments, ExperimentsHandle};
use aisle_policy::{Policy, Rules};

pub use files::{BundleFile, BundleFiles};
pub use registry::Kind;
pub use signature::TrustedKeys;
pub use start::{Prepared, embedded_experiments, embedded_rules, prepare};
pub use world::{ModelRole, World, WorldError, Worlds};

/// How long loading a version through its owner may take.
const LOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// The bundles a node serves, and the files they came from.
#[derive(Debug)]
pub struct Bundles {
    worlds: Worlds,
    policy: Policy,
    experiments: ExperimentsHandle,
    files: BundleFiles,
    /// The keys new versions must be signed with (None: not checked).
    trusted: Option<Arc<TrustedKeys>>,
}

impl Bundles {
    /// Starts the owners of the prepared bundles.
    ///
    /// # Errors
    /// When an owner actor cannot be spawned.
    pub async fn start(prepared: Prepared) -> Result<Self, ractor::SpawnErr> {
        let files = BundleFiles::default();
        for (meta, file, signature) in prepared.files {
            files.keep(&meta, file, signature);
        }
        Ok(Self {
            worlds: Worlds::start(world::Initial {
                catalog: prepared.catalog,
                model: prepared.model,
                candidate: prepared.candidate,
            })
            .await?,
            policy: Policy::start(prepared.rules).await?,
            experiments: ExperimentsHandle::start(prepared.experiments).await?,
            files,
            trusted: prepared.trusted,
        })
    }

    /// The catalog and the models bound to it, now.
    pub fn world(&self) -> Arc<World> {
        self.worlds.current()
    }

    /// The guardrail rules, now.
    pub fn rules(&self) -> Arc<Rules> {
        self.policy.current()
    }

    /// The experiments, now.
    pub fn experiments(&self) -> Arc<Experiments> {
        self.experiments.current()
    }

    /// The world's owner: promoting and rolling back models.
    pub fn worlds(&self) -> &Worlds {
        &self.worlds
    }

    /// Loads a new version of a bundle through its owner, and keeps its file (and `signature`, the raw 64 bytes)
    /// for the edge feed. With trusted keys, a file not signed by one of them is refused before it is parsed
    /// (`aisle_bundle_signature_refused_total{kind}`).
    ///
    /// # Errors
    /// Why it was refused (the last good version keeps serving).
    pub async fn load(
        &self,
        kind: Kind,
        file: Arc<Vec<u8>>,
        signature: Option<Arc<Vec<u8>>>,
        source: &str,
    ) -> Result<BundleMeta, String> {
        if let Some(trusted) = &self.trusted {
            signature::refused(
                kind,
                trusted,
                &file,
                signature.as_deref().map(Vec::as_slice),
            )
            .map_err(|e| format!("{source}: {e}"))?;
        }
        let bytes = file.as_ref().clone();
        let loaded = match kind {
            Kind::Catalog => self
                .worlds
                .load_catalog(bytes, source)
                .await
                .map_err(|e| e.to_string()),
            Kind::Model => self
                .worlds
                .load_model(bytes, source, ModelRole::Default)
                .await
                .map_err(|e| e.to_string()),
            Kind::CandidateModel => self
                .worlds
                .load_model(bytes, source, ModelRole::Candidate)
                .await
                .map_err(|e| e.to_string()),
            Kind::Rules => self
                .policy
                .load(bytes, source, LOAD_TIMEOUT)
                .await
                .map_err(|e| e.to_string()),
            Kind::Experiments => self
                .experiments
                .load(bytes, source, LOAD_TIMEOUT)
                .await
                .map_err(|e| e.to_string()),
        }?;
        self.files.keep(&loaded, file, signature);
        Ok(loaded)
    }

    /// The version of a kind served now (`None`: nothing of it, e.g. no candidate model).
    pub fn served(&self, kind: Kind) -> Option<BundleMeta> {
        self.served_in(kind, &self.world())
    }

    /// The version of a kind served with `world`.
    fn served_in(&self, kind: Kind, world: &World) -> Option<BundleMeta> {
        match kind {
            Kind::Catalog => Some(world.catalog.meta.clone()),
            Kind::Model => Some(world.default_model.meta.clone()),
            Kind::CandidateModel => world.candidate.as_ref().map(|m| m.meta.clone()),
            Kind::Rules => Some(self.rules().meta.clone()),
            Kind::Experiments => Some(self.experiments().meta.clone()),
        }
    }

    /// Every bundle loaded, with its role (`aisle bundles`): each kind's served version, and the default model
    /// from before the last promotion (what a rollback restores) after the candidate.
    pub fn status(&self) -> Vec<(BundleMeta, &'static str)> {
        let world = self.world();
        let mut out = Vec::new();
        for kind in Kind::ALL {
            let role = match kind {
                Kind::Model => "default",
                Kind::CandidateModel => "candidate",
                _ => "",
            };
            out.extend(self.served_in(kind, &world).map(|m| (m, role)));
            if kind == Kind::CandidateModel
                && let Some(previous) = &world.previous
            {
                out.push((previous.meta.clone(), "previous"));
            }
        }
        out
    }

    /// The file of each kind served now, as the edge feed sends it (a kind is absent when nothing of it is served,
    /// or its file is not known). A catalog built here is encoded in its file form.
    pub fn files(&self) -> Vec<(Kind, BundleFile)> {
        let world = self.world();
        Kind::ALL
            .into_iter()
            .filter_map(|kind| {
                let meta = self.served_in(kind, &world)?;
                let file = self
                    .files
                    .get(&meta)
                    .or_else(|| self.encoded(kind, &meta, &world))?;
                Some((kind, file))
            })
            .collect()
    }

    /// The file form of a bundle that was not read from a file, when it has one (the catalog, derived or built).
    fn encoded(&self, kind: Kind, meta: &BundleMeta, world: &World) -> Option<BundleFile> {
        if kind != Kind::Catalog {
            return None;
        }
        let bytes =
            Arc::new(serde_json::to_vec(&world.catalog.to_file()).expect("catalogs serialise"));
        self.files.keep(meta, bytes, None);
        self.files.get(meta)
    }

    /// Stops the owner actors.
    pub fn stop(&self) {
        self.worlds.stop();
        self.policy.stop();
        self.experiments.stop();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use aisle_domain::bundle::sha256_hex;

    use super::*;
    use crate::testing;

    /// The small test world as start-up bundles: its catalog and model, the embedded rules and experiments.
    pub(crate) fn prepared() -> Prepared {
        let (catalog, model) = testing::world();
        Prepared {
            catalog: Some(catalog),
            model: (model, "unit test".into()),
            candidate: None,
            rules: embedded_rules(),
            experiments: embedded_experiments(),
            files: Vec::new(),
            trusted: None,
        }
    }

    /// A rules file of version `version`.
    pub(crate) fn rules_file(version: &str) -> Vec<u8> {
        let mut file = aisle_policy::rules::default_rules_file();
        file.version = version.into();
        serde_json::to_vec(&file).unwrap()
    }

    #[tokio::test]
    async fn every_kind_served_shows_in_the_status_with_its_role() {
        let bundles = Bundles::start(prepared()).await.unwrap();
        let status: Vec<(String, &str)> = bundles
            .status()
            .into_iter()
            .map(|(m, role)| (m.kind.as_str().to_string(), role))
            .collect();
        assert_eq!(
            status,
            [
                ("catalog".into(), ""),
                ("model".into(), "default"),
                ("rules".into(), ""),
                ("experiments".into(), "")
            ]
        );
        assert_eq!(bundles.served(Kind::CandidateModel), None);
        assert_eq!(bundles.served(Kind::Model).unwrap().version, "unit-test");
        bundles.stop();
    }

    #[tokio::test]
    async fn a_version_loaded_through_the_registry_is_served_and_its_file_kept_for_the_feed() {
        let bundles = Bundles::start(prepared()).await.unwrap();
        let file = Arc::new(rules_file("rules-2"));
        let meta = bundles
            .load(Kind::Rules, file.clone(), None, "rules.json")
            .await
            .unwrap();
        assert_eq!(meta.version, "rules-2");
        assert_eq!(bundles.rules().meta.version, "rules-2");
        let files = bundles.files();
        let (_, sent) = files.iter().find(|(k, _)| *k == Kind::Rules).unwrap();
        assert_eq!(
            sent.digest,
            sha256_hex(&file),
            "the very file, byte for byte"
        );
        assert_eq!(sent.version, "rules-2");
        // The catalog was built here (no file): it goes out in its file form.
        let (_, catalog) = files.iter().find(|(k, _)| *k == Kind::Catalog).unwrap();
        assert!(serde_json::from_slice::<serde_json::Value>(&catalog.bytes).is_ok());
        let kinds: Vec<Kind> = files.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            kinds,
            [Kind::Catalog, Kind::Rules],
            "known files only (the model was not read from one)"
        );
        bundles.stop();
    }

    #[tokio::test]
    async fn an_invalid_version_is_refused_with_its_reason_and_the_last_good_one_keeps_serving() {
        let bundles = Bundles::start(prepared()).await.unwrap();
        for kind in Kind::ALL {
            let refused = bundles
                .load(kind, Arc::new(b"not a bundle".to_vec()), None, "broken")
                .await;
            assert!(refused.is_err(), "{kind} accepted garbage");
        }
        assert_eq!(bundles.rules().meta.version, "rules-default-1");
        assert_eq!(bundles.served(Kind::Model).unwrap().version, "unit-test");
        assert_eq!(bundles.served(Kind::CandidateModel), None);
        bundles.stop();
    }

    #[tokio::test]
    async fn a_candidate_loaded_through_the_registry_can_be_promoted_and_rolled_back() {
        let bundles = Bundles::start(prepared()).await.unwrap();
        let (_, mut model) = testing::world();
        model.header.version = "candidate-2".into();
        bundles
            .load(
                Kind::CandidateModel,
                Arc::new(model.to_bytes()),
                None,
                "candidate.bin",
            )
            .await
            .unwrap();
        assert_eq!(
            bundles.served(Kind::CandidateModel).unwrap().version,
            "candidate-2"
        );
        assert_eq!(bundles.worlds().promote().await.unwrap(), "candidate-2");
        let roles: Vec<(&str, String)> = bundles
            .status()
            .into_iter()
            .filter(|(m, _)| m.kind.as_str() == "model")
            .map(|(m, role)| (role, m.version))
            .collect();
        assert_eq!(
            roles,
            [
                ("default", "candidate-2".into()),
                ("previous", "unit-test".into())
            ]
        );
        assert_eq!(bundles.worlds().rollback().await.unwrap(), "unit-test");
        assert_eq!(
            bundles.served(Kind::CandidateModel).unwrap().version,
            "candidate-2",
            "the demoted model is the candidate again"
        );
        bundles.stop();
    }
}
