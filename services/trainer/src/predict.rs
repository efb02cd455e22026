//! Predictions: the top-k next items after every event of a session, offline (this process, the node's own code
//! path) or through a running node's gRPC API, written in session-rec's CSV format.
//!
//! Offline prediction does what a node started with only `--model` does for a consenting web shopper on the home
//! surface: the catalog is derived from the model's items exactly as the node derives it (`Catalog::plain`, see
//! the node's world keeper), events are replayed through the same `SessionContext`, and the same
//! [`rank_local`] steps run under the node's embedded guardrail rules. The node's embedded experiments only vary
//! the per-category cap, which a plain catalog's single catch-all category is exempt from, so nothing on the
//! node's path can differ.

use std::io::Write;
use std::sync::Arc;

use aisle_domain::catalog::Catalog;
use aisle_domain::event::LoggedSession;
use aisle_domain::request::{Channel, ShopperAttributes};
use aisle_policy::{Guard, PolicyContext, Rules};
use aisle_ranking::fit::to_shopper_event;
use aisle_ranking::{Model, Query, ServedModel, rank_local};
use aisle_session::{AssistRules, SessionContext, SessionLimits};

/// The recommendations after one event of a session.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The session.
    pub session_id: String,
    /// 0-based index of the last event of the prefix.
    pub position: usize,
    /// Item ids and scores, best first.
    pub items: Vec<(String, f32)>,
}

/// The offline predictor: a model served as a node serves it without a catalog.
pub struct Predictor {
    served: ServedModel,
    catalog: Arc<Catalog>,
    rules: Rules,
    limits: SessionLimits,
    assist: AssistRules,
}

impl std::fmt::Debug for Predictor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Predictor")
            .field("model", &self.served.version())
            .finish_non_exhaustive()
    }
}

/// The catalog a node derives from its model when it is given none (`Keeper::derived_catalog` in the node).
pub fn plain_catalog(model: &Model) -> Catalog {
    Catalog::plain(
        &format!("from-model-{}", model.header.version),
        model.data.items.clone(),
    )
}

impl Predictor {
    /// Serves `model` over the catalog derived from its items, under the embedded default guardrail rules.
    pub fn new(model: &Model) -> Self {
        let catalog = Arc::new(plain_catalog(model));
        Self {
            served: ServedModel::bind(model, catalog.clone(), "offline"),
            catalog,
            rules: Rules::embedded(),
            limits: SessionLimits::default(),
            assist: AssistRules::default(),
        }
    }

    /// The served model.
    pub fn served(&self) -> &ServedModel {
        &self.served
    }

    /// The top-`k` after each event of `session` but the last, calling `each` with every prediction in order.
    pub fn session(&self, session: &LoggedSession, k: usize, mut each: impl FnMut(Prediction)) {
        let mut context = SessionContext::new();
        let events = &session.events;
        for (p, e) in events.iter().enumerate() {
            context.apply(
                &to_shopper_event(&self.catalog, e),
                &self.catalog,
                &self.limits,
                &self.assist,
            );
            if p + 1 == events.len() {
                break;
            }
            each(Prediction {
                session_id: session.id.clone(),
                position: p,
                items: self.rank(&context, k),
            });
        }
    }

    /// The top-`k` for a session context: what the node's FRESH rung answers.
    pub fn rank(&self, context: &SessionContext, k: usize) -> Vec<(String, f32)> {
        let view = context.view(&self.limits);
        let policy = PolicyContext {
            attributes: ShopperAttributes::default(),
            channel: Channel::Web,
            purchased: &view.purchased,
            now_ms: aisle_domain::now_ms(),
            max_items_per_category: self.rules.max_items_per_category,
        };
        let guard = Guard::new(&self.rules, &self.catalog, policy);
        let query = Query {
            view: &view,
            context: &[],
            candidates: None,
        };
        rank_local(&self.served, &query, &guard, k)
            .items
            .into_iter()
            .map(|r| {
                (
                    self.catalog.item(r.admitted.item).id.to_string(),
                    r.admitted.score,
                )
            })
            .collect()
    }
}

/// The CSV header of session-rec's recommendation files.
pub const CSV_HEADER: &str = "SessionId;Position;Recommendations;Scores";

/// Writes one prediction as a CSV line.
///
/// # Errors
/// When writing fails.
pub fn write_line(out: &mut impl Write, p: &Prediction) -> std::io::Result<()> {
    let ids: Vec<&str> = p.items.iter().map(|i| i.0.as_str()).collect();
    let scores: Vec<String> = p.items.iter().map(|i| i.1.to_string()).collect();
    writeln!(
        out,
        "{};{};{};{}",
        p.session_id,
        p.position,
        ids.join(","),
        scores.join(",")
    )
}

/// Parses a recommendations CSV back (for comparisons): (session, position, item ids).
///
/// # Errors
/// A description of the first malformed line.
pub fn parse_csv(text: &str) -> Result<Vec<(String, usize, Vec<String>)>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if n == 0 {
            if line != CSV_HEADER {
                return Err(format!("line 1: expected the header {CSV_HEADER:?}"));
            }
            continue;
        }
        let fields: Vec<&str> = line.split(';').collect();
        if fields.len() != 4 {
            return Err(format!("line {}: expected 4 fields", n + 1));
        }
        let position = fields[1]
            .parse()
            .map_err(|_| format!("line {}: Position is not a number", n + 1))?;
        let ids = if fields[2].is_empty() {
            Vec::new()
        } else {
            fields[2].split(',').map(str::to_string).collect()
        };
        out.push((fields[0].to_string(), position, ids));
    }
    Ok(out)
}
