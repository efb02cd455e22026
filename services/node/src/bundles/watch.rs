//! Watching the bundle files: at every poll (`bundle_poll_secs`, driven by the node's start-up) each kind's file, as
//! the registry resolves it, and its signature file (`FILE.sig`) are checked for a change of modification time or
//! size; a changed file is loaded, with its signature, through its owner. An invalid version is refused and logged, and the last good one keeps serving; the caller
//! records both outcomes in the decision trail.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use aisle_domain::bundle::BundleMeta;

use super::{Bundles, Kind, signature};
use crate::config::Config;
use crate::security::tls::stamp;

/// The stamps of a bundle file and of its signature file.
type Stamps = (Option<(SystemTime, u64)>, Option<(SystemTime, u64)>);

fn stamps(path: &Path) -> Stamps {
    (stamp(path), stamp(&signature::sig_path(path)))
}

/// A bundle file being watched.
struct Watched {
    kind: Kind,
    path: PathBuf,
    seen: Stamps,
}

/// The bundle files the configuration names, as first seen.
fn watched_files(config: &Config) -> Vec<Watched> {
    Kind::ALL
        .into_iter()
        .filter_map(|kind| {
            let path = kind.file(config)?;
            Some(Watched {
                kind,
                seen: stamps(&path),
                path,
            })
        })
        .collect()
}

/// The bundle files a node watches, as last seen.
pub struct Watcher {
    watched: Vec<Watched>,
}

/// A new version of a watched file, and what loading it did.
#[derive(Debug)]
pub struct Change {
    /// The file.
    pub file: String,
    /// The version loaded, or why it was refused (the last good one keeps serving).
    pub outcome: Result<BundleMeta, String>,
}

impl Watcher {
    /// The files the configuration names for each kind, as they are now.
    pub fn new(config: &Config) -> Self {
        Self {
            watched: watched_files(config),
        }
    }

    /// Whether any file is watched.
    pub fn is_empty(&self) -> bool {
        self.watched.is_empty()
    }

    /// Loads, through its owner, every file that changed since the last look; what each load did.
    pub async fn poll(&mut self, bundles: &Bundles) -> Vec<Change> {
        let mut changes = Vec::new();
        for w in &mut self.watched {
            let now = stamps(&w.path);
            if now.0.is_none() || now == w.seen {
                continue;
            }
            w.seen = now;
            let Ok(bytes) = tokio::fs::read(&w.path).await else {
                continue;
            };
            let file = w.path.display().to_string();
            let outcome = match signature::read_for(&w.path) {
                Ok(sig) => {
                    bundles
                        .load(w.kind, Arc::new(bytes), sig.map(Arc::new), &file)
                        .await
                }
                Err(e) => Err(format!("{e:#}")),
            };
            if let Err(error) = &outcome {
                tracing::warn!(file = %file, %error, "new bundle version refused");
            }
            changes.push(Change { file, outcome });
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundles::tests::{prepared, rules_file};

    #[tokio::test]
    async fn a_changed_file_is_loaded_through_its_owner_and_a_broken_one_refused() {
        let dir = std::env::temp_dir().join(format!("aisle-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rules.json");
        std::fs::write(&path, rules_file("rules-1")).unwrap();
        let config = Config {
            data_dir: Some(dir.clone()),
            ..Config::default()
        };
        let bundles = Bundles::start(prepared()).await.unwrap();
        let mut watcher = Watcher::new(&config);
        assert!(!watcher.is_empty());
        assert!(
            watcher.poll(&bundles).await.is_empty(),
            "nothing changed since it was seen"
        );
        std::fs::write(&path, rules_file("rules-two")).unwrap();
        let changes = watcher.poll(&bundles).await;
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].outcome.as_ref().unwrap().version, "rules-two");
        assert_eq!(bundles.rules().meta.version, "rules-two");
        std::fs::write(&path, b"{").unwrap();
        let changes = watcher.poll(&bundles).await;
        assert!(changes[0].outcome.is_err());
        assert_eq!(
            bundles.rules().meta.version,
            "rules-two",
            "the last good one serves"
        );
        bundles.stop();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
