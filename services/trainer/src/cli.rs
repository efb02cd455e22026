//! The `aisle-train` command line: `fit`, `predict` (offline or `--via` a node) and `eval`.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use aisle_domain::catalog::Catalog;
use aisle_domain::event::LoggedSession;
use aisle_ranking::Model;
use aisle_ranking::fit::{FitConfig, Progress, fit, vocabulary};
use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::baselines::{self, Indexed};
use crate::data::{Format, read_sessions};
use crate::eval::{evaluate_all, evaluate_model, protocol_sessions, table};
use crate::predict::{CSV_HEADER, Predictor, write_line};

/// Train, apply and evaluate Aisle ranking models.
#[derive(Debug, Parser)]
#[command(name = "aisle-train", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// A subcommand.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build the generators and train the ranker; write a model bundle.
    Fit(FitArgs),
    /// The top-k after every event of every session, offline or through a running node.
    Predict(PredictArgs),
    /// HR@20 and MRR@20 of a model and of the POP, S-POP, AR, SR and V-SKNN baselines.
    Eval(EvalArgs),
}

/// Training settings shared by `fit` and `eval`.
#[derive(Debug, Clone, Args)]
pub struct TrainOptions {
    /// Negatives sampled per example position.
    #[arg(long, default_value_t = 50)]
    pub negatives: usize,
    /// At most this many positions become examples.
    #[arg(long, default_value_t = 50_000)]
    pub max_positions: usize,
    /// Sessions that ended this many hours before the last event or later make the ranker's examples.
    #[arg(long, default_value_t = 24.0)]
    pub example_window_hours: f64,
    /// Window of the "recent" popularity feature, in hours before the end of the data.
    #[arg(long, default_value_t = 24.0)]
    pub recent_window_hours: f64,
    /// Window of the "very recent" popularity feature, in hours.
    #[arg(long, default_value_t = 6.0)]
    pub short_window_hours: f64,
    /// L2 penalty of the logistic regression (linfa alpha).
    #[arg(long, default_value_t = 100.0)]
    pub l2: f64,
    /// Solver iterations.
    #[arg(long, default_value_t = 100)]
    pub max_iterations: u64,
    /// Seed of the sampling.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Input format (default: detected from the first line).
    #[arg(long, value_parser = parse_format)]
    pub format: Option<Format>,
}

fn parse_format(s: &str) -> Result<Format, String> {
    s.parse()
}

fn hours(h: f64) -> i64 {
    (h * 3_600_000.0).round() as i64
}

impl TrainOptions {
    fn config(&self, version: &str) -> FitConfig {
        let mut c = FitConfig {
            version: version.to_string(),
            negatives: self.negatives,
            max_positions: self.max_positions,
            example_window_ms: hours(self.example_window_hours),
            l2: self.l2,
            max_iterations: self.max_iterations,
            seed: self.seed,
            trained_by: concat!("aisle-train ", env!("CARGO_PKG_VERSION")).into(),
            ..FitConfig::default()
        };
        c.params.recent_window_ms = hours(self.recent_window_hours);
        c.params.short_window_ms = hours(self.short_window_hours);
        c
    }
}

/// `aisle-train fit`.
#[derive(Debug, Clone, Args)]
pub struct FitArgs {
    /// Training sessions (rsc15 TSV, OTTO JSON lines or an Aisle event log).
    #[arg(long)]
    pub train: PathBuf,
    /// Where to write the model bundle.
    #[arg(long)]
    pub out: PathBuf,
    /// Validation sessions: HR@20 and MRR@20 on them are recorded in the bundle's metrics.
    #[arg(long)]
    pub valid: Option<PathBuf>,
    /// The model's version label (default: `model-` and the start of the training-data fingerprint).
    #[arg(long)]
    pub version: Option<String>,
    /// Training settings.
    #[command(flatten)]
    pub options: TrainOptions,
}

/// `aisle-train predict`.
#[derive(Debug, Clone, Args)]
pub struct PredictArgs {
    /// The model bundle.
    #[arg(long)]
    pub model: PathBuf,
    /// Sessions to predict for.
    #[arg(long)]
    pub sessions: PathBuf,
    /// Recommendations per position.
    #[arg(long, default_value_t = 20)]
    pub k: usize,
    /// Where to write the recommendations (session-rec CSV).
    #[arg(long)]
    pub out: PathBuf,
    /// Predict through the node at this gRPC URL (e.g. http://127.0.0.1:50051) instead of in this process.
    #[arg(long)]
    pub via: Option<String>,
    /// Input format (default: detected from the first line).
    #[arg(long, value_parser = parse_format)]
    pub format: Option<Format>,
}

/// `aisle-train eval`.
#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    /// Training sessions (the baselines are built from them; the model too when --model is not given).
    #[arg(long)]
    pub train: PathBuf,
    /// Test sessions.
    #[arg(long)]
    pub test: PathBuf,
    /// A trained model bundle (default: train one on --train).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The cut-off k of HR@k and MRR@k.
    #[arg(long, default_value_t = 20)]
    pub k: usize,
    /// Training settings (when training).
    #[command(flatten)]
    pub options: TrainOptions,
}

/// Reports progress on stderr with the time since start.
struct Reporter {
    started: Instant,
}

impl Reporter {
    fn new() -> Self {
        Self {
            started: Instant::now(),
        }
    }

    fn say(&self, what: impl std::fmt::Display) {
        eprintln!("[{:7.1}s] {what}", self.started.elapsed().as_secs_f64());
    }
}

fn read(path: &Path, format: Option<Format>, r: &Reporter) -> anyhow::Result<Vec<LoggedSession>> {
    let sessions = read_sessions(path, format)?;
    let events: usize = sessions.iter().map(|s| s.events.len()).sum();
    r.say(format!(
        "read {}: {} sessions, {events} events",
        path.display(),
        sessions.len()
    ));
    Ok(sessions)
}

fn read_model(path: &Path) -> anyhow::Result<Model> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Model::from_bytes(&bytes)
        .with_context(|| format!("{} is not a model this build serves", path.display()))
}

/// Trains on `sessions`, reporting progress.
fn train(
    sessions: &[LoggedSession],
    options: &TrainOptions,
    version: Option<&str>,
    r: &Reporter,
) -> anyhow::Result<Model> {
    let catalog = Arc::new(Catalog::plain("training", vocabulary(sessions)));
    let config = options.config(version.unwrap_or("unnamed"));
    let started = Instant::now();
    let mut model = fit(sessions, catalog, &config, &mut |p| match p {
        Progress::Step(step) => r.say(step),
        Progress::Examples(done, planned) => r.say(format!("  {done}/{planned} positions")),
    })?;
    if version.is_none() {
        model.header.version = format!("model-{}", &model.header.training_fingerprint[..12]);
    }
    model
        .header
        .metrics
        .insert("fit.seconds".into(), started.elapsed().as_secs_f64());
    r.say(format!(
        "trained model {} in {:.1}s",
        model.header.version,
        started.elapsed().as_secs_f64()
    ));
    Ok(model)
}

/// Runs a command.
///
/// # Errors
/// Whatever stops the command, with the file or flag it concerns.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Fit(args) => fit_command(args),
        Command::Predict(args) => predict_command(args),
        Command::Eval(args) => eval_command(args),
    }
}

fn fit_command(args: FitArgs) -> anyhow::Result<()> {
    let r = Reporter::new();
    let sessions = read(&args.train, args.options.format, &r)?;
    let mut model = train(&sessions, &args.options, args.version.as_deref(), &r)?;
    if let Some(valid) = &args.valid {
        let test = read(valid, args.options.format, &r)?;
        let test = protocol_sessions(&test, &Indexed::of(&sessions));
        let m = evaluate_model(&Predictor::new(&model), &test, 20);
        r.say(format!(
            "validation: HR@20 {:.4}, MRR@20 {:.4} over {} predictions",
            m.hit_rate(),
            m.mrr(),
            m.count()
        ));
        let metrics = &mut model.header.metrics;
        metrics.insert("valid.hr@20".into(), m.hit_rate());
        metrics.insert("valid.mrr@20".into(), m.mrr());
        metrics.insert("valid.predictions".into(), m.count() as f64);
    }
    let bytes = model.to_bytes();
    std::fs::write(&args.out, &bytes)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    r.say(format!(
        "wrote {} ({} bytes): model {}, format {}, feature schema {}",
        args.out.display(),
        bytes.len(),
        model.header.version,
        model.header.format_version,
        model.header.feature_schema_version
    ));
    Ok(())
}

fn predict_command(args: PredictArgs) -> anyhow::Result<()> {
    let r = Reporter::new();
    let model = read_model(&args.model)?;
    let sessions = read(&args.sessions, args.format, &r)?;
    let file = std::fs::File::create(&args.out)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    let mut out = BufWriter::new(file);
    writeln!(out, "{CSV_HEADER}")?;
    let mut lines = 0usize;
    let mut failed: Option<std::io::Error> = None;
    let mut write = |p: crate::predict::Prediction| {
        if failed.is_none()
            && let Err(e) = write_line(&mut out, &p)
        {
            failed = Some(e);
        }
        lines += 1;
    };
    match &args.via {
        None => {
            let predictor = Predictor::new(&model);
            for (n, s) in sessions.iter().enumerate() {
                predictor.session(s, args.k, &mut write);
                if (n + 1) % 2_000 == 0 {
                    r.say(format!("  {} sessions", n + 1));
                }
            }
        }
        Some(url) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let report = runtime.block_on(async {
                let mut client = crate::via::connect(url).await?;
                let nonce = format!("{:x}", aisle_domain::now_ms());
                let mut report = crate::via::ViaReport::default();
                for (n, s) in sessions.iter().enumerate() {
                    let shopper = format!("aisle-train-{nonce}-{n}");
                    crate::via::session(&mut client, s, &shopper, args.k, &mut report, &mut write)
                        .await?;
                    if (n + 1) % 500 == 0 {
                        r.say(format!("  {} sessions", n + 1));
                    }
                }
                anyhow::Ok(report)
            })?;
            if !report.versions.iter().all(|v| *v == model.header.version) {
                eprintln!(
                    "warning: the node ranked with model {:?}, not {} from {}",
                    report.versions,
                    model.header.version,
                    args.model.display()
                );
            }
            if report.not_fresh_count > 0 {
                eprintln!(
                    "warning: {} of {} decisions were not ranked FRESH (so not by the model), e.g. {:?}",
                    report.not_fresh_count, report.decisions, report.not_fresh
                );
            }
        }
    }
    if let Some(e) = failed {
        return Err(e).with_context(|| format!("cannot write {}", args.out.display()));
    }
    out.flush()?;
    r.say(format!(
        "wrote {lines} predictions to {}",
        args.out.display()
    ));
    Ok(())
}

fn eval_command(args: EvalArgs) -> anyhow::Result<()> {
    let r = Reporter::new();
    let train_sessions = read(&args.train, args.options.format, &r)?;
    let test_sessions = read(&args.test, args.options.format, &r)?;
    let model = match &args.model {
        Some(path) => read_model(path)?,
        None => train(&train_sessions, &args.options, None, &r)?,
    };
    let indexed = Indexed::of(&train_sessions);
    let test = protocol_sessions(&test_sessions, &indexed);
    let mut baselines = baselines::standard(&indexed);
    let predictor = Predictor::new(&model);
    let name = format!("Aisle ({})", model.header.version);
    let results = evaluate_all(
        &name,
        &predictor,
        &mut baselines,
        &indexed,
        &test,
        args.k,
        &mut |m| {
            r.say(format!(
                "{}: HR {:.4}, MRR {:.4}",
                m.method, m.hit_rate, m.mrr
            ))
        },
    );
    if args.json {
        let json = serde_json::json!({
            "train": args.train.display().to_string(),
            "test": args.test.display().to_string(),
            "model": model.header.version,
            "k": args.k,
            "results": results,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        print!("{}", table(&results, args.k));
    }
    Ok(())
}
