//! The catalog and the ranking models, as one consistent snapshot ([`World`]) that every decision reads without a
//! lock, owned by one actor (a [`Keeper`] of [`WorldState`]) that serialises every change: a new catalog (models are re-bound to
//! it), a new default or candidate model, promoting the candidate, rolling back.
//!
//! A model and the catalog it is bound to are always swapped together, so a decision never mixes item indices of
//! two catalogs. An invalid bundle is refused with its reason and the current snapshot keeps serving.

use std::sync::Arc;
use std::time::Duration;

use aisle_domain::bundle::{BundleError, BundleKind, BundleMeta};
use aisle_domain::catalog::Catalog;
use aisle_kit::snapshot::{Keeper, Owned};
use aisle_ranking::{Model, ServedModel};

use crate::error::ApiError;

/// Which slot a model occupies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelRole {
    /// Serves every decision not routed elsewhere by an experiment.
    Default,
    /// Serves the experiment variants that ask for `"candidate"` (canary).
    Candidate,
}

impl ModelRole {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelRole::Default => "default",
            ModelRole::Candidate => "candidate",
        }
    }
}

/// What decisions read: the catalog and the models bound to it.
#[derive(Debug)]
pub struct World {
    /// The catalog.
    pub catalog: Arc<Catalog>,
    /// The default model.
    pub default_model: Arc<ServedModel>,
    /// The candidate model, if one is loaded.
    pub candidate: Option<Arc<ServedModel>>,
    /// The default model before the last promotion, for rollback.
    pub previous: Option<Arc<ServedModel>>,
}

impl World {
    /// The model a decision should use: `"candidate"` names the candidate slot, another value a loaded model's
    /// version; anything else (or nothing) means the default.
    pub fn model_for(&self, requested: Option<&str>) -> &Arc<ServedModel> {
        match requested {
            Some("candidate") => self.candidate.as_ref().unwrap_or(&self.default_model),
            Some(v) => [
                Some(&self.default_model),
                self.candidate.as_ref(),
                self.previous.as_ref(),
            ]
            .into_iter()
            .flatten()
            .find(|m| m.version() == v)
            .unwrap_or(&self.default_model),
            None => &self.default_model,
        }
    }
}

/// A model as loaded, kept for re-binding when the catalog changes.
#[derive(Debug, Clone)]
struct Loaded {
    model: Arc<Model>,
    source: String,
}

/// Where the catalog comes from.
#[derive(Debug, Clone)]
enum CatalogOrigin {
    /// A catalog bundle.
    Bundle,
    /// Derived from the models' items (no catalog given): re-derived when the models change.
    FromModels,
}

/// Why a change to the world was not made.
#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    /// The bundle is invalid; the current world keeps serving.
    #[error(transparent)]
    Refused(#[from] BundleError),
    /// Promote without a candidate.
    #[error("no candidate model is loaded")]
    NoCandidate,
    /// Rollback without an earlier promotion.
    #[error("no previous default model to roll back to")]
    NoPrevious,
    /// The keeper did not answer.
    #[error("world keeper unavailable")]
    Unavailable,
}

/// A change to the world.
#[derive(Debug)]
pub enum WorldChange {
    /// Replace the catalog (models are re-bound).
    Catalog {
        /// Bundle bytes.
        bytes: Vec<u8>,
        /// Where they came from.
        source: String,
    },
    /// Replace the model in a slot.
    Model {
        /// Bundle bytes.
        bytes: Vec<u8>,
        /// Where they came from.
        source: String,
        /// Which slot.
        role: ModelRole,
    },
    /// Make the candidate the default (the old default is kept for rollback).
    Promote,
    /// Restore the default from before the last promotion (the demoted model becomes the candidate again).
    Rollback,
}

/// The state behind the world's keeper: the loaded bundles a [`World`] is built from.
pub struct WorldState {
    catalog: Arc<Catalog>,
    origin: CatalogOrigin,
    default_model: Loaded,
    candidate: Option<Loaded>,
    previous: Option<Loaded>,
}

fn bind(loaded: &Loaded, catalog: &Arc<Catalog>) -> Arc<ServedModel> {
    Arc::new(ServedModel::bind(
        &loaded.model,
        catalog.clone(),
        &loaded.source,
    ))
}

impl WorldState {
    /// The catalog to use for a catalog-less deployment: every item any loaded model knows, indexed over `base`
    /// (so indices held by sessions stay valid).
    fn derived_catalog(
        default_model: &Loaded,
        candidate: Option<&Loaded>,
        base: Option<&Catalog>,
    ) -> Arc<Catalog> {
        let mut ids: Vec<String> = default_model.model.data.items.clone();
        if let Some(c) = candidate {
            let known: std::collections::HashSet<&String> = ids.iter().collect();
            let extra: Vec<String> = c
                .model
                .data
                .items
                .iter()
                .filter(|i| !known.contains(i))
                .cloned()
                .collect();
            ids.extend(extra);
        }
        let plain = Catalog::plain(
            &format!("from-model-{}", default_model.model.header.version),
            ids,
        );
        Arc::new(match base {
            Some(base) => plain
                .rebased(base)
                .expect("plain catalogs have one category"),
            None => plain,
        })
    }

    /// Builds the world of the current slots. Binding models to a catalog takes tens of milliseconds for a large
    /// model, so it runs on a blocking thread: decisions keep being served from the previous snapshot meanwhile,
    /// never stalled behind the rebuild.
    async fn build(&mut self) -> World {
        let (default_model, candidate, previous) = (
            self.default_model.clone(),
            self.candidate.clone(),
            self.previous.clone(),
        );
        let (origin, base) = (self.origin.clone(), self.catalog.clone());
        let built = tokio::task::spawn_blocking(move || {
            let catalog = match origin {
                CatalogOrigin::FromModels => {
                    Self::derived_catalog(&default_model, candidate.as_ref(), Some(&base))
                }
                CatalogOrigin::Bundle => base,
            };
            World {
                default_model: bind(&default_model, &catalog),
                candidate: candidate.as_ref().map(|c| bind(c, &catalog)),
                previous: previous.as_ref().map(|c| bind(c, &catalog)),
                catalog,
            }
        })
        .await
        .expect("binding models does not panic");
        self.catalog = built.catalog.clone();
        built
    }

    /// Applies a change to the slots; the new default model's or bundle's identity.
    fn change(&mut self, change: WorldChange) -> Result<BundleMeta, WorldError> {
        match change {
            WorldChange::Catalog { bytes, source } => {
                let catalog = Catalog::from_json_over(&bytes, &source, &self.catalog);
                let result = catalog.map(|c| {
                    let meta = c.meta.clone();
                    self.catalog = Arc::new(c);
                    self.origin = CatalogOrigin::Bundle;
                    meta
                });
                report(BundleKind::Catalog, &source, &result);
                Ok(result?)
            }
            WorldChange::Model {
                bytes,
                source,
                role,
            } => {
                let result = Model::from_bytes(&bytes).map(|model| {
                    let loaded = Loaded {
                        model: Arc::new(model),
                        source: source.clone(),
                    };
                    let meta = loaded.model.meta(&source);
                    match role {
                        ModelRole::Default => self.default_model = loaded,
                        ModelRole::Candidate => self.candidate = Some(loaded),
                    }
                    meta
                });
                report(BundleKind::Model, &source, &result);
                Ok(result?)
            }
            WorldChange::Promote => {
                let candidate = self.candidate.take().ok_or(WorldError::NoCandidate)?;
                let meta = candidate.model.meta(&candidate.source);
                self.previous = Some(std::mem::replace(&mut self.default_model, candidate));
                tracing::info!(version = %meta.version, "candidate model promoted to default");
                Ok(meta)
            }
            WorldChange::Rollback => {
                let previous = self.previous.take().ok_or(WorldError::NoPrevious)?;
                let meta = previous.model.meta(&previous.source);
                self.candidate = Some(std::mem::replace(&mut self.default_model, previous));
                tracing::warn!(version = %meta.version, "default model rolled back");
                Ok(meta)
            }
        }
    }
}

impl Owned for WorldState {
    type Snapshot = World;
    type Change = WorldChange;
    type Outcome = Result<BundleMeta, WorldError>;

    async fn apply(&mut self, change: WorldChange) -> (Self::Outcome, Option<World>) {
        match self.change(change) {
            Ok(meta) => (Ok(meta), Some(self.build().await)),
            Err(e) => (Err(e), None),
        }
    }
}

fn report(kind: BundleKind, source: &str, result: &Result<BundleMeta, BundleError>) {
    match result {
        Ok(meta) => {
            tracing::info!(kind = %kind, version = %meta.version, source, "bundle loaded");
            metrics::counter!("aisle_bundle_loads_total", "kind" => kind.as_str()).increment(1);
        }
        Err(error) => {
            tracing::warn!(kind = %kind, source, %error, "bundle refused; the last good one keeps serving");
            metrics::counter!("aisle_bundle_refused_total", "kind" => kind.as_str()).increment(1);
        }
    }
}

/// The typed handle: lock-free reads, changes through the keeper.
#[derive(Clone)]
pub struct Worlds(Keeper<WorldState>);

impl std::fmt::Debug for Worlds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worlds").finish_non_exhaustive()
    }
}

/// How long a change may take (binding a large model).
const CALL: Duration = Duration::from_secs(60);

/// The initial contents of a world.
pub struct Initial {
    /// The catalog, or `None` to derive it from the model's items.
    pub catalog: Option<Arc<Catalog>>,
    /// The default model and where it came from.
    pub model: (Model, String),
    /// The candidate model, if any.
    pub candidate: Option<(Model, String)>,
}

impl Worlds {
    /// Binds the initial bundles and starts the keeper.
    ///
    /// # Errors
    /// When the actor cannot be spawned.
    pub async fn start(initial: Initial) -> Result<Self, ractor::SpawnErr> {
        let loaded = |(model, source): (Model, String)| Loaded {
            model: Arc::new(model),
            source,
        };
        let default_model = loaded(initial.model);
        let candidate = initial.candidate.map(loaded);
        let (catalog, origin) = match initial.catalog {
            Some(c) => (c, CatalogOrigin::Bundle),
            None => (
                WorldState::derived_catalog(&default_model, candidate.as_ref(), None),
                CatalogOrigin::FromModels,
            ),
        };
        let mut state = WorldState {
            catalog,
            origin,
            default_model,
            candidate,
            previous: None,
        };
        let world = state.build().await;
        Ok(Self(Keeper::start(state, world).await?))
    }

    /// The current world.
    pub fn current(&self) -> Arc<World> {
        self.0.current()
    }

    async fn change(&self, change: WorldChange) -> Result<BundleMeta, WorldError> {
        self.0
            .change(change, CALL)
            .await
            .map_err(|_| WorldError::Unavailable)?
    }

    /// Loads a catalog bundle.
    ///
    /// # Errors
    /// The reason it was refused, or that the keeper is unavailable.
    pub async fn load_catalog(
        &self,
        bytes: Vec<u8>,
        source: &str,
    ) -> Result<BundleMeta, WorldError> {
        let source = source.to_string();
        self.change(WorldChange::Catalog { bytes, source }).await
    }

    /// Loads a model bundle into a slot.
    ///
    /// # Errors
    /// The reason it was refused, or that the keeper is unavailable.
    pub async fn load_model(
        &self,
        bytes: Vec<u8>,
        source: &str,
        role: ModelRole,
    ) -> Result<BundleMeta, WorldError> {
        let source = source.to_string();
        self.change(WorldChange::Model {
            bytes,
            source,
            role,
        })
        .await
    }

    /// Promotes the candidate model to default; returns its version.
    ///
    /// # Errors
    /// When no candidate is loaded.
    pub async fn promote(&self) -> Result<String, WorldError> {
        Ok(self.change(WorldChange::Promote).await?.version)
    }

    /// Rolls the default model back to the one before the last promotion; returns its version.
    ///
    /// # Errors
    /// When there was no promotion.
    pub async fn rollback(&self) -> Result<String, WorldError> {
        Ok(self.change(WorldChange::Rollback).await?.version)
    }

    /// Stops the keeper.
    pub fn stop(&self) {
        self.0.stop();
    }
}

impl From<WorldError> for ApiError {
    fn from(e: WorldError) -> Self {
        match e {
            WorldError::Unavailable => ApiError::Unavailable(e.to_string()),
            WorldError::Refused(_) | WorldError::NoCandidate | WorldError::NoPrevious => {
                ApiError::FailedPrecondition(e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::{Code, Status};

    use super::*;

    #[test]
    fn refusals_map_to_their_codes() {
        let s: Status = ApiError::from(WorldError::NoCandidate).into();
        assert_eq!(s.code(), Code::FailedPrecondition);
        let s: Status = ApiError::from(WorldError::Unavailable).into();
        assert_eq!(s.code(), Code::Unavailable);
    }
}
