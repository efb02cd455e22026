//! The registry of bundle kinds: everything the node knows about a kind of bundle, in one table — its name (on the
//! edge feed, on an edge's disk, in `aisle bundles`), the file it is loaded from, whether a node can start without
//! it, and its field in the fleet's versions record. How a version of each kind is loaded and which one is served
//! is in [`super::Bundles`], one arm per kind.
//!
//! Start-up, file watching, the edge feed (both sides), the fleet's versions and the admin status all walk
//! [`Kind::ALL`]. Adding a kind: a variant here (with its arms below and in [`super::Bundles`]) and its loader.

use std::path::PathBuf;

use crate::config::Config;

/// A kind of bundle the node serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Items, categories, prices, stock, offers.
    Catalog,
    /// The default ranking model.
    Model,
    /// The candidate ranking model (canary variants), if any.
    CandidateModel,
    /// The guardrail rules.
    Rules,
    /// The experiments.
    Experiments,
}

/// What the registry says of a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// The kind's name: on the edge feed, of an edge's file, in logs.
    pub name: &'static str,
    /// The file's name in the data directory (`data_dir`), when the kind may be found there.
    pub data_file: Option<&'static str>,
    /// Whether a node cannot serve without it (an edge waits for the feed to deliver it).
    pub required: bool,
    /// Its field in the fleet's versions record (`/aisle/<cluster>/control/versions`), if it has one.
    pub fleet_field: Option<&'static str>,
}

impl Kind {
    /// Every kind, in the order they are loaded (the catalog before the models bound to it).
    pub const ALL: [Kind; 5] = [
        Kind::Catalog,
        Kind::Model,
        Kind::CandidateModel,
        Kind::Rules,
        Kind::Experiments,
    ];

    /// The registry's row of this kind.
    pub const fn spec(self) -> Spec {
        match self {
            Kind::Catalog => Spec {
                name: "catalog",
                data_file: Some("catalog.json"),
                required: true,
                fleet_field: None,
            },
            Kind::Model => Spec {
                name: "model",
                data_file: Some("model.bin"),
                required: true,
                fleet_field: Some("default_model"),
            },
            Kind::CandidateModel => Spec {
                name: "candidate_model",
                data_file: None,
                required: false,
                fleet_field: Some("candidate_model"),
            },
            Kind::Rules => Spec {
                name: "rules",
                data_file: Some("rules.json"),
                required: true,
                fleet_field: Some("rules"),
            },
            Kind::Experiments => Spec {
                name: "experiments",
                data_file: Some("experiments.json"),
                required: true,
                fleet_field: Some("experiments"),
            },
        }
    }

    /// The kind's name.
    pub const fn name(self) -> &'static str {
        self.spec().name
    }

    /// The kind of a name (as on the edge feed).
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The configuration's setting that names this kind's file (`--catalog`, `--model`, ...).
    pub fn setting(self, config: &Config) -> &Option<PathBuf> {
        match self {
            Kind::Catalog => &config.catalog,
            Kind::Model => &config.model,
            Kind::CandidateModel => &config.candidate_model,
            Kind::Rules => &config.rules,
            Kind::Experiments => &config.experiments,
        }
    }

    /// The same setting, to point it at another file (a store edge points every kind at its own copies).
    pub fn setting_mut(self, config: &mut Config) -> &mut Option<PathBuf> {
        match self {
            Kind::Catalog => &mut config.catalog,
            Kind::Model => &mut config.model,
            Kind::CandidateModel => &mut config.candidate_model,
            Kind::Rules => &mut config.rules,
            Kind::Experiments => &mut config.experiments,
        }
    }

    /// The file this kind is loaded from: the one the configuration names, else the data directory's (if it
    /// exists there); `None` means the embedded default (or, for the catalog and the model, the demo world).
    pub fn file(self, config: &Config) -> Option<PathBuf> {
        self.setting(config)
            .clone()
            .or_else(|| config.data_file(self.spec().data_file?))
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_one_distinct_name_and_field_and_parses_back() {
        let mut names = std::collections::HashSet::new();
        let mut fields = std::collections::HashSet::new();
        for kind in Kind::ALL {
            assert!(names.insert(kind.name()), "{kind} named twice");
            assert_eq!(Kind::parse(kind.name()), Some(kind));
            if let Some(field) = kind.spec().fleet_field {
                assert!(fields.insert(field), "{field} used twice");
            }
        }
        assert_eq!(Kind::parse("merchandising"), None);
        assert_eq!(
            Kind::ALL[0],
            Kind::Catalog,
            "the catalog loads before the models bound to it"
        );
    }

    #[test]
    fn a_kinds_file_is_the_configured_one_else_the_data_dirs() {
        let dir = std::env::temp_dir().join(format!("aisle-registry-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("rules.json"), b"{}").unwrap();
        let mut config = Config {
            data_dir: Some(dir.clone()),
            ..Config::default()
        };
        assert_eq!(Kind::Rules.file(&config), Some(dir.join("rules.json")));
        assert_eq!(
            Kind::Experiments.file(&config),
            None,
            "absent from the data dir: the embedded default"
        );
        assert_eq!(
            Kind::CandidateModel.file(&config),
            None,
            "a candidate is only ever named"
        );
        *Kind::Rules.setting_mut(&mut config) = Some("/elsewhere/rules.json".into());
        assert_eq!(
            Kind::Rules.file(&config),
            Some(PathBuf::from("/elsewhere/rules.json"))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
