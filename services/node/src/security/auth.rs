//! Who may call what: callers authenticate with a bearer token or a client certificate, and each identity holds
//! scopes. The check runs in a tower layer in front of every service of the client and admin ports, before any
//! handler or actor is touched.
//!
//! Tokens are kept as SHA-256 digests in a TOML file (mounted from a Secret) that is re-read when it changes; a
//! token string itself is never stored, logged or echoed. The format is documented in `docs/security.md`:
//!
//! ```toml
//! [[token]]
//! name = "storefront-web"
//! sha256 = "…"                 # hex SHA-256 of the token string
//! scopes = ["decide", "track"]
//! stores = ["store-1"]         # optional: limits `subscribe` and `edge` to these stores
//!
//! [[token]]                     # a kiosk's, an app's or a browser's token: shopper-bound
//! name = "kiosk"
//! sha256 = "…"
//! scopes = ["decide", "track"]
//! shopper_assertion = { hs256_secret_file = "kiosk.secret" }   # or { ed25519_public_key_file = "login.pub" }
//! rate_per_sec = 50              # optional, any entry: fair share (security::fair)
//! max_concurrent = 20
//!
//! [[certificate]]               # a client certificate (signed by tls_client_ca) with this subject CN
//! name = "pos-fleet"
//! common_name = "pos.store-1.example"
//! scopes = ["decide", "track"]
//! ```

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tonic::Status;
use tower::{Layer, Service};

use crate::security::assertion::{self, Asserted, Verifier};
use crate::security::fair::{Admitted, Limits};
use crate::security::tls::ConnInfo;

/// The metadata key of a shopper assertion.
pub const SHOPPER_ASSERTION: &str = "x-aisle-shopper";
/// The metadata key of the retry hint (milliseconds) sent with a fair-share refusal.
pub const RETRY_AFTER_MS: &str = "x-aisle-retry-after-ms";

/// What an identity may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// `DecisionService/Decide`.
    Decide,
    /// `DecisionService/Track`.
    Track,
    /// `AssociateService/Subscribe` (optionally limited to some stores).
    Subscribe,
    /// Describe a shopper, bundle status, cluster status.
    AdminRead,
    /// Forget a shopper, promote or roll back models, faults.
    AdminWrite,
    /// `EdgeService`: a store edge's bundle feed, session copies and event uploads.
    Edge,
}

impl Scope {
    /// Every scope, in documentation order.
    pub const ALL: [Scope; 6] = [
        Scope::Decide,
        Scope::Track,
        Scope::Subscribe,
        Scope::AdminRead,
        Scope::AdminWrite,
        Scope::Edge,
    ];

    /// The scope's name in token files.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Decide => "decide",
            Scope::Track => "track",
            Scope::Subscribe => "subscribe",
            Scope::AdminRead => "admin:read",
            Scope::AdminWrite => "admin:write",
            Scope::Edge => "edge",
        }
    }

    fn parse(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.name() == name)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Who: `token:<name>`, `cert:<name>` or, on an open node, `anonymous`. Goes into admin logs and decision
    /// records.
    pub name: Arc<str>,
    scopes: u8,
    stores: Option<Arc<HashSet<String>>>,
    /// Shopper-bound: Decide and Track need an assertion this verifies.
    assertion: Option<Arc<Verifier>>,
    /// What the request's verified assertion states (shopper-bound identities, per request).
    pub asserted: Option<Arc<Asserted>>,
    /// Its fair share (`rate_per_sec`, `max_concurrent`), shared by all its requests.
    limits: Option<Arc<Limits>>,
    /// What it was admitted with, and the token file to re-check that against (set by [`AuthLayer`]).
    admitted_by: Option<(Credential, Arc<Credentials>)>,
}

/// The credential an identity was admitted with: a token's digest or a client certificate's common name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Credential {
    Token([u8; 32]),
    Certificate(String),
}

impl PartialEq for Identity {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.scopes == other.scopes && self.stores == other.stores
    }
}

impl Eq for Identity {}

impl Identity {
    /// The caller on a node without authentication (loopback demo, or `--insecure` without a token file): every
    /// scope.
    pub fn anonymous() -> Self {
        // Made once: an open node asks for it on every request, and a fresh one would allocate its name each time.
        static ANONYMOUS: LazyLock<Identity> = LazyLock::new(|| Identity {
            name: "anonymous".into(),
            scopes: Scope::ALL.iter().fold(0, |a, s| a | s.bit()),
            stores: None,
            assertion: None,
            asserted: None,
            limits: None,
            admitted_by: None,
        });
        ANONYMOUS.clone()
    }

    /// Whether the identity holds `scope`.
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes & scope.bit() != 0
    }

    /// Whether the identity may subscribe to `store_id`'s assist stream.
    pub fn may_subscribe(&self, store_id: &str) -> bool {
        self.has(Scope::Subscribe) && self.stores.as_ref().is_none_or(|s| s.contains(store_id))
    }

    /// Resolves when the credential this identity was admitted with no longer admits it with the same scopes (its
    /// entry removed or changed in the token file); never for an identity admitted without one (an open node). Long
    /// streams select on it, so a revoked caller's stream ends within the reload interval.
    pub async fn revoked(&self) {
        let Some((credential, credentials)) = &self.admitted_by else {
            return std::future::pending().await;
        };
        let mut changes = credentials.changes();
        loop {
            if !credentials.table().admits(credential, self) {
                return;
            }
            if changes.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Whether the identity is shopper-bound (its Decide and Track calls carry a verified shopper assertion).
    pub fn is_shopper_bound(&self) -> bool {
        self.assertion.is_some()
    }

    /// Whether the identity may speak for `store_id` (a token limited to some stores: only for those).
    pub fn may_act_for_store(&self, store_id: &str) -> bool {
        self.stores.as_ref().is_none_or(|s| s.contains(store_id))
    }

    /// The identity a request was authenticated as (anonymous when the request did not pass the layer, as in
    /// in-process tests).
    pub fn of<T>(request: &tonic::Request<T>) -> Identity {
        request
            .extensions()
            .get::<Identity>()
            .cloned()
            .unwrap_or_else(Identity::anonymous)
    }
}

/// One `[[token]]` table.
#[derive(Debug, Deserialize)]
struct TokenEntry {
    name: String,
    sha256: String,
    scopes: Vec<String>,
    #[serde(default)]
    stores: Option<Vec<String>>,
    #[serde(default)]
    shopper_assertion: Option<AssertionEntry>,
    #[serde(default)]
    rate_per_sec: Option<u32>,
    #[serde(default)]
    max_concurrent: Option<u32>,
}

/// A token's `shopper_assertion`: how its assertions are verified (paths relative to the token file's directory).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AssertionEntry {
    #[serde(default)]
    hs256_secret_file: Option<std::path::PathBuf>,
    #[serde(default)]
    ed25519_public_key_file: Option<std::path::PathBuf>,
}

impl AssertionEntry {
    fn verifier(&self, base: &Path) -> anyhow::Result<Verifier> {
        match (&self.hs256_secret_file, &self.ed25519_public_key_file) {
            (Some(secret), None) => Verifier::hs256_from_file(&base.join(secret)),
            (None, Some(key)) => Verifier::ed25519_from_file(&base.join(key)),
            _ => anyhow::bail!(
                "shopper_assertion: give exactly one of hs256_secret_file and ed25519_public_key_file"
            ),
        }
    }
}

/// One `[[certificate]]` table.
#[derive(Debug, Deserialize)]
struct CertEntry {
    name: String,
    common_name: String,
    scopes: Vec<String>,
    #[serde(default)]
    stores: Option<Vec<String>>,
    #[serde(default)]
    rate_per_sec: Option<u32>,
    #[serde(default)]
    max_concurrent: Option<u32>,
}

/// The token file. Unknown keys are allowed (teams keep notes, owners, expiry reminders beside the entries).
#[derive(Debug, Deserialize)]
struct TokenFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
    #[serde(default)]
    certificate: Vec<CertEntry>,
}

/// The identities of a token file, by token digest and by certificate common name.
#[derive(Debug, Default)]
pub struct Table {
    tokens: HashMap<[u8; 32], Identity>,
    certificates: HashMap<String, Identity>,
}

/// A fair share from an entry's `rate_per_sec` and `max_concurrent`.
fn limits(
    kind: &str,
    name: &str,
    rate_per_sec: Option<u32>,
    max_concurrent: Option<u32>,
) -> anyhow::Result<Option<Arc<Limits>>> {
    use crate::security::fair::{MAX_CONCURRENT, MAX_RATE_PER_SEC};
    anyhow::ensure!(
        rate_per_sec.is_none_or(|r| (1..=MAX_RATE_PER_SEC).contains(&r)),
        "{kind} {name:?}: rate_per_sec must be 1 to {MAX_RATE_PER_SEC}"
    );
    anyhow::ensure!(
        max_concurrent.is_none_or(|c| (1..=MAX_CONCURRENT).contains(&c)),
        "{kind} {name:?}: max_concurrent must be 1 to {MAX_CONCURRENT}"
    );
    Ok(Limits::new(rate_per_sec, max_concurrent).map(Arc::new))
}

fn identity(
    kind: &str,
    name: &str,
    scopes: &[String],
    stores: Option<&Vec<String>>,
) -> anyhow::Result<Identity> {
    anyhow::ensure!(
        !name.is_empty() && name.len() <= 128,
        "{kind}: name must be 1 to 128 bytes"
    );
    let mut bits = 0;
    for s in scopes {
        let scope = Scope::parse(s).with_context(|| {
            format!(
                "{kind} {name:?}: unknown scope {s:?} (known: {})",
                Scope::ALL.map(Scope::name).join(", ")
            )
        })?;
        bits |= scope.bit();
    }
    anyhow::ensure!(bits != 0, "{kind} {name:?}: scopes must not be empty");
    if let Some(stores) = stores {
        anyhow::ensure!(
            stores.iter().all(|s| !s.is_empty()),
            "{kind} {name:?}: stores must be non-empty ids"
        );
    }
    Ok(Identity {
        name: format!("{kind}:{name}").into(),
        scopes: bits,
        stores: stores.map(|s| Arc::new(s.iter().cloned().collect())),
        assertion: None,
        asserted: None,
        limits: None,
        admitted_by: None,
    })
}

fn digest_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The SHA-256 digest of a token, as the token file holds it (hex).
pub fn token_sha256_hex(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Table {
    /// Parses a token file (files it names, relative to the current directory).
    ///
    /// # Errors
    /// Invalid TOML, an unknown scope, a malformed digest, or a name used twice (the entry is named).
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        Self::parse_in(text, Path::new("."))
    }

    /// Parses a token file whose relative paths (shopper assertion keys) are relative to `base`.
    ///
    /// # Errors
    /// As [`Table::parse`]; an unreadable or invalid assertion key (named).
    pub fn parse_in(text: &str, base: &Path) -> anyhow::Result<Self> {
        let file: TokenFile = toml::from_str(text).context("invalid token file")?;
        let mut table = Table::default();
        let mut names = HashSet::new();
        for t in &file.token {
            let mut id = identity("token", &t.name, &t.scopes, t.stores.as_ref())?;
            id.limits = limits("token", &t.name, t.rate_per_sec, t.max_concurrent)?;
            if let Some(entry) = &t.shopper_assertion {
                anyhow::ensure!(
                    !Scope::ALL
                        .into_iter()
                        .any(|s| !matches!(s, Scope::Decide | Scope::Track) && id.has(s)),
                    "token {:?}: a shopper-bound token (shopper_assertion) may hold decide and track only",
                    t.name
                );
                let verifier = entry
                    .verifier(base)
                    .with_context(|| format!("token {:?}", t.name))?;
                id.assertion = Some(Arc::new(verifier));
            }
            anyhow::ensure!(
                names.insert(id.name.clone()),
                "token {:?}: name used twice",
                t.name
            );
            let digest = digest_hex(&t.sha256)
                .with_context(|| format!("token {:?}: sha256 must be 64 hex digits", t.name))?;
            anyhow::ensure!(
                table.tokens.insert(digest, id).is_none(),
                "token {:?}: the same token digest appears twice",
                t.name
            );
        }
        for c in &file.certificate {
            let mut id = identity("cert", &c.name, &c.scopes, c.stores.as_ref())?;
            id.limits = limits("certificate", &c.name, c.rate_per_sec, c.max_concurrent)?;
            anyhow::ensure!(
                names.insert(id.name.clone()),
                "certificate {:?}: name used twice",
                c.name
            );
            anyhow::ensure!(
                !c.common_name.is_empty(),
                "certificate {:?}: common_name must not be empty",
                c.name
            );
            anyhow::ensure!(
                table
                    .certificates
                    .insert(c.common_name.clone(), id)
                    .is_none(),
                "certificate {:?}: common_name {:?} appears twice",
                c.name,
                c.common_name
            );
        }
        Ok(table)
    }

    /// The identity of a presented token.
    pub fn token(&self, token: &str) -> Option<&Identity> {
        // Looked up by digest: timing reveals nothing about stored digests' preimages.
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.tokens.get(&digest)
    }

    /// Whether `credential` still names `identity` (same name and scopes).
    fn admits(&self, credential: &Credential, identity: &Identity) -> bool {
        let now = match credential {
            Credential::Token(digest) => self.tokens.get(digest),
            Credential::Certificate(cn) => self.certificates.get(cn),
        };
        now.is_some_and(|i| {
            i.name == identity.name && i.scopes == identity.scopes && i.stores == identity.stores
        })
    }

    /// The identity of a verified client certificate's common name.
    pub fn certificate(&self, common_name: &str) -> Option<&Identity> {
        self.certificates.get(common_name)
    }

    /// How many identities the table holds.
    pub fn len(&self) -> usize {
        self.tokens.len() + self.certificates.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The token file, re-read when it changes; the last good version keeps serving when a new one is invalid.
#[derive(Debug)]
pub struct Credentials {
    file: crate::security::tls::WatchedFile,
    table: ArcSwap<Table>,
    /// Bumped whenever a new table is in use.
    generation: tokio::sync::watch::Sender<u64>,
}

impl Credentials {
    /// Loads the token file.
    ///
    /// # Errors
    /// When it cannot be read or is invalid (the message names the file and the entry).
    pub fn load(path: &Path) -> anyhow::Result<Arc<Self>> {
        let table = Self::read(path)?;
        Ok(Arc::new(Self {
            file: crate::security::tls::WatchedFile::new(path),
            table: ArcSwap::from_pointee(table),
            generation: tokio::sync::watch::Sender::new(0),
        }))
    }

    fn read(path: &Path) -> anyhow::Result<Table> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read token file {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Table::parse_in(&text, base).with_context(|| format!("token file {}", path.display()))
    }

    /// Re-reads the file when it changed. Returns whether a new table is in use.
    pub fn reload_if_changed(&self) -> bool {
        if !self.file.changed() {
            return false;
        }
        match Self::read(self.file.path()) {
            Ok(table) => {
                tracing::info!(identities = table.len(), "token file reloaded");
                self.table.store(Arc::new(table));
                self.generation.send_modify(|g| *g += 1);
                metrics::counter!("aisle_token_file_reloads_total").increment(1);
                true
            }
            Err(error) => {
                metrics::counter!("aisle_token_file_reload_failures_total").increment(1);
                tracing::warn!(
                    error = format!("{error:#}"),
                    "new token file refused; the previous one stays in force"
                );
                false
            }
        }
    }

    /// The current table.
    pub fn table(&self) -> Arc<Table> {
        self.table.load_full()
    }

    /// Tells when a new table is in use.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }
}

/// What a gRPC method asks of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Required {
    /// Nothing: health checks (probes and load balancers).
    Nothing,
    /// Any authenticated caller: reflection.
    Authenticated,
    /// A scope.
    Scope(Scope),
    /// Nobody on this port: methods of services not served here.
    Refused,
}

/// What a method path (`/package.Service/Method`) asks of its caller.
pub fn required(path: &str) -> Required {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (service, method) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    match (service, method) {
        ("grpc.health.v1.Health", _) => Required::Nothing,
        ("grpc.reflection.v1.ServerReflection" | "grpc.reflection.v1alpha.ServerReflection", _) => {
            Required::Authenticated
        }
        ("aisle.v1.DecisionService", "Decide") => Required::Scope(Scope::Decide),
        ("aisle.v1.DecisionService", "Track") => Required::Scope(Scope::Track),
        ("aisle.v1.AssociateService", "Subscribe") => Required::Scope(Scope::Subscribe),
        ("aisle.v1.AdminService", "DescribeShopper" | "BundleStatus" | "ClusterStatus") => {
            Required::Scope(Scope::AdminRead)
        }
        (
            "aisle.v1.AdminService",
            "ForgetShopper" | "SetFault" | "PromoteModel" | "RollbackModel" | "SetKillSwitch",
        ) => Required::Scope(Scope::AdminWrite),
        ("aisle.v1.EdgeService", "SyncBundles" | "FetchSession" | "Upload") => {
            Required::Scope(Scope::Edge)
        }
        _ => Required::Refused,
    }
}

/// The service label of a path, from a closed set (metrics never carry caller-chosen strings).
fn service_label(path: &str) -> &'static str {
    let service = path.trim_start_matches('/').split('/').next().unwrap_or("");
    match service {
        "aisle.v1.DecisionService" => "DecisionService",
        "aisle.v1.AssociateService" => "AssociateService",
        "aisle.v1.AdminService" => "AdminService",
        "aisle.v1.PeerService" => "PeerService",
        "aisle.v1.EdgeService" => "EdgeService",
        "grpc.reflection.v1.ServerReflection" | "grpc.reflection.v1alpha.ServerReflection" => {
            "ServerReflection"
        }
        _ => "other",
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Missing,
    Invalid,
    Scope,
    NotServed,
    Assertion,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::Missing => "missing_credential",
            Refusal::Invalid => "invalid_credential",
            Refusal::Scope => "missing_scope",
            Refusal::NotServed => "not_served",
            Refusal::Assertion => "invalid_assertion",
        }
    }
}

/// The identity a request's credential names: its bearer token, else its verified client certificate's common
/// name; why not (a refusal and its status) when it names none in the table.
fn identify(
    table: &Table,
    credentials: Option<&Arc<Credentials>>,
    authorization: Option<&[u8]>,
    conn: Option<&ConnInfo>,
) -> Result<Identity, (Refusal, Status)> {
    let invalid = |message: String| Err((Refusal::Invalid, Status::unauthenticated(message)));
    if let Some(value) = authorization {
        let token = std::str::from_utf8(value)
            .ok()
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .filter(|t| !t.is_empty());
        let Some(token) = token else {
            return invalid("authorization: expected `Bearer <token>`".into());
        };
        return match table.token(token) {
            Some(id) => {
                let mut id = id.clone();
                id.admitted_by = credentials.map(|c| {
                    (
                        Credential::Token(Sha256::digest(token.as_bytes()).into()),
                        c.clone(),
                    )
                });
                Ok(id)
            }
            None => invalid("authorization: unknown or revoked token".into()),
        };
    }
    let cn = conn
        .and_then(|c| c.client_certs.as_ref())
        .and_then(|certs| certs.first())
        .and_then(crate::security::tls::common_name);
    match cn {
        Some(cn) => match table.certificate(&cn) {
            Some(id) => {
                let mut id = id.clone();
                id.admitted_by =
                    credentials.map(|c| (Credential::Certificate(cn.clone()), c.clone()));
                Ok(id)
            }
            None => invalid(format!(
                "client certificate CN {cn:?} is not in the token file"
            )),
        },
        None => Err((
            Refusal::Missing,
            Status::unauthenticated(
                "missing credential: send `authorization: Bearer <token>` or a client certificate",
            ),
        )),
    }
}

/// Authenticates and authorizes one request. `None` credentials: an open node, every caller anonymous.
///
/// # Errors
/// UNAUTHENTICATED for a missing or unknown credential, PERMISSION_DENIED for a missing scope, UNIMPLEMENTED for a
/// method this port does not serve.
pub fn check(
    credentials: Option<&Arc<Credentials>>,
    path: &str,
    authorization: Option<&[u8]>,
    shopper_assertion: Option<&[u8]>,
    conn: Option<&ConnInfo>,
) -> Result<Option<Identity>, Status> {
    let need = required(path);
    let refuse = |why: Refusal, status: Status| {
        metrics::counter!("aisle_auth_refused_total",
            "service" => service_label(path), "reason" => why.label())
        .increment(1);
        Err(status)
    };
    if need == Required::Refused {
        return refuse(
            Refusal::NotServed,
            Status::unimplemented(format!("{path} is not served on this port")),
        );
    }
    let Some(credentials) = credentials else {
        return Ok(Some(Identity::anonymous()));
    };
    if need == Required::Nothing {
        return Ok(None);
    }
    let mut identity = match identify(&credentials.table(), Some(credentials), authorization, conn)
    {
        Ok(identity) => identity,
        Err((why, status)) => return refuse(why, status),
    };
    if let Required::Scope(scope) = need
        && !identity.has(scope)
    {
        return refuse(
            Refusal::Scope,
            Status::permission_denied(format!(
                "{} lacks scope `{}` for {path}",
                identity.name,
                scope.name()
            )),
        );
    }
    if let Some(verifier) = &identity.assertion {
        // A shopper-bound token holds only decide and track (checked when the file is read).
        let Some(jws) = shopper_assertion.and_then(|v| std::str::from_utf8(v).ok()) else {
            return refuse(
                Refusal::Assertion,
                Status::unauthenticated(format!(
                    "{SHOPPER_ASSERTION}: {} requires a shopper assertion (a signed JWS naming the shopper)",
                    identity.name
                )),
            );
        };
        match assertion::verify(jws, verifier, aisle_domain::now_ms() / 1_000) {
            Ok(asserted) => identity.asserted = Some(Arc::new(asserted)),
            Err(refused) => {
                return refuse(
                    Refusal::Assertion,
                    Status::unauthenticated(refused.to_string()),
                );
            }
        }
    }
    Ok(Some(identity))
}

/// Admits a request of a caller with a fair share, or refuses it with RESOURCE_EXHAUSTED and a retry hint (in the
/// message and in metadata `x-aisle-retry-after-ms`), counted in `aisle_auth_refused_total`.
fn fair_share(limits: &Limits, path: &str) -> Result<Admitted, Status> {
    limits.admit().map_err(|over| {
        metrics::counter!("aisle_auth_refused_total",
            "service" => service_label(path), "reason" => over.label())
        .increment(1);
        let mut status = Status::resource_exhausted(over.to_string());
        if let Ok(v) = over.retry_ms().to_string().parse() {
            status.metadata_mut().insert(RETRY_AFTER_MS, v);
        }
        status
    })
}

/// The tower layer running [`check`] in front of a port's services.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    credentials: Option<Arc<Credentials>>,
}

impl AuthLayer {
    /// A layer checking against `credentials` (`None`: an open node).
    pub fn new(credentials: Option<Arc<Credentials>>) -> Self {
        Self { credentials }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            credentials: self.credentials.clone(),
        }
    }
}

/// The service of [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    credentials: Option<Arc<Credentials>>,
}

impl<S, B> Service<http::Request<B>> for Auth<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let checked = check(
            self.credentials.as_ref(),
            req.uri().path(),
            req.headers()
                .get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
            req.headers().get(SHOPPER_ASSERTION).map(|v| v.as_bytes()),
            req.extensions().get::<ConnInfo>(),
        );
        let admitted = match checked {
            Err(status) => return Box::pin(async move { Ok(status.into_http()) }),
            Ok(identity) => {
                let admitted = match identity.as_ref().and_then(|i| i.limits.as_deref()) {
                    None => None,
                    Some(limits) => match fair_share(limits, req.uri().path()) {
                        Ok(admitted) => Some(admitted),
                        Err(status) => return Box::pin(async move { Ok(status.into_http()) }),
                    },
                };
                if let Some(identity) = identity {
                    req.extensions_mut().insert(identity);
                }
                admitted
            }
        };
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        match admitted {
            // Unlimited callers: the inner future as it is.
            None => Box::pin(inner.call(req)),
            Some(admitted) => Box::pin(async move {
                let response = inner.call(req).await;
                drop(admitted);
                response
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
        note = "owned by the platform team"
        [[token]]
        name = "web"
        sha256 = "SHA_WEB"
        scopes = ["decide", "track"]
        [[token]]
        name = "handheld"
        sha256 = "SHA_HH"
        scopes = ["subscribe"]
        stores = ["store-1"]
        rotated = "2026-11-01"
        [[certificate]]
        name = "ops"
        common_name = "ops.example"
        scopes = ["admin:read", "admin:write"]
    "#;

    fn table() -> Table {
        Table::parse(
            &FILE
                .replace("SHA_WEB", &token_sha256_hex("web-secret"))
                .replace("SHA_HH", &token_sha256_hex("hh-secret")),
        )
        .unwrap()
    }

    #[test]
    fn tokens_map_to_their_scopes_and_stores() {
        let t = table();
        let web = t.token("web-secret").unwrap();
        assert_eq!(&*web.name, "token:web");
        assert!(web.has(Scope::Decide) && web.has(Scope::Track) && !web.has(Scope::AdminRead));
        let hh = t.token("hh-secret").unwrap();
        assert!(hh.may_subscribe("store-1") && !hh.may_subscribe("store-2"));
        assert!(!web.may_subscribe("store-1"));
        assert!(t.token("guess").is_none());
        assert!(t.certificate("ops.example").unwrap().has(Scope::AdminWrite));
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn invalid_files_name_the_entry_and_the_problem() {
        let valid = FILE
            .replace("SHA_WEB", &token_sha256_hex("web-secret"))
            .replace("SHA_HH", &token_sha256_hex("hh-secret"));
        let bad_scope = valid.replace("\"subscribe\"]", "\"subscrib\"]");
        let e = format!("{:#}", Table::parse(&bad_scope).unwrap_err());
        assert!(e.contains("handheld") && e.contains("subscrib"), "{e}");
        let e = format!("{:#}", Table::parse(FILE).unwrap_err());
        assert!(e.contains("web") && e.contains("64 hex"), "{e}");
        let twice = format!(
            "[[token]]\nname='a'\nsha256='{0}'\nscopes=['decide']\n[[token]]\nname='a'\nsha256='{0}'\nscopes=['decide']\n",
            token_sha256_hex("x")
        );
        let e = format!("{:#}", Table::parse(&twice).unwrap_err());
        assert!(e.contains("twice"), "{e}");
    }

    #[test]
    fn shopper_bound_tokens_need_one_good_key_and_only_decide_and_track() {
        let dir = std::env::temp_dir().join(format!("aisle-auth-bound-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("k.secret"), "0123456789abcdef0123456789abcdef\n").unwrap();
        std::fs::write(dir.join("short.secret"), "too short").unwrap();
        let entry = |scopes: &str, assertion: &str| {
            format!(
                "[[token]]\nname='kiosk'\nsha256='{}'\nscopes=[{scopes}]\nshopper_assertion = {assertion}\n",
                token_sha256_hex("kiosk")
            )
        };
        let table = Table::parse_in(
            &entry("'decide', 'track'", "{ hs256_secret_file = 'k.secret' }"),
            &dir,
        )
        .unwrap();
        assert!(table.token("kiosk").unwrap().is_shopper_bound());
        for (scopes, assertion, says) in [
            (
                "'decide', 'subscribe'",
                "{ hs256_secret_file = 'k.secret' }",
                "decide and track only",
            ),
            (
                "'decide'",
                "{ hs256_secret_file = 'short.secret' }",
                "at least 32 bytes",
            ),
            (
                "'decide'",
                "{ hs256_secret_file = 'missing' }",
                "cannot read",
            ),
            ("'decide'", "{ }", "exactly one"),
            (
                "'decide'",
                "{ hs256_secret_file = 'k.secret', ed25519_public_key_file = 'k.secret' }",
                "exactly one",
            ),
            (
                "'decide'",
                "{ ed25519_public_key_file = 'k.secret' }",
                "32 key bytes",
            ),
        ] {
            let e = format!(
                "{:#}",
                Table::parse_in(&entry(scopes, assertion), &dir).unwrap_err()
            );
            assert!(e.contains("kiosk") && e.contains(says), "{assertion}: {e}");
        }
        // Without an assertion the token is refused before any handler; the message names the metadata key.
        let creds = Arc::new(Credentials {
            file: crate::security::tls::WatchedFile::new(&dir.join("none")),
            table: ArcSwap::from_pointee(table),
            generation: tokio::sync::watch::Sender::new(0),
        });
        let decide = "/aisle.v1.DecisionService/Decide";
        let e = check(Some(&creds), decide, Some(b"Bearer kiosk"), None, None).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(e.message().starts_with("x-aisle-shopper: "), "{e:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn methods_map_to_scopes_and_unknown_ones_are_refused() {
        assert_eq!(
            required("/aisle.v1.DecisionService/Decide"),
            Required::Scope(Scope::Decide)
        );
        assert_eq!(
            required("/aisle.v1.AdminService/ForgetShopper"),
            Required::Scope(Scope::AdminWrite)
        );
        assert_eq!(
            required("/aisle.v1.AdminService/ClusterStatus"),
            Required::Scope(Scope::AdminRead)
        );
        assert_eq!(
            required("/aisle.v1.AdminService/SetKillSwitch"),
            Required::Scope(Scope::AdminWrite)
        );
        assert_eq!(required("/grpc.health.v1.Health/Check"), Required::Nothing);
        assert_eq!(required("/aisle.v1.PeerService/HandOff"), Required::Refused);
        assert_eq!(required("/x/y"), Required::Refused);
    }

    #[test]
    fn check_gives_unauthenticated_then_permission_denied_then_ok() {
        let dir = std::env::temp_dir().join(format!("aisle-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens.toml");
        std::fs::write(
            &path,
            FILE.replace("SHA_WEB", &token_sha256_hex("web-secret"))
                .replace("SHA_HH", &token_sha256_hex("hh-secret")),
        )
        .unwrap();
        let creds = Credentials::load(&path).unwrap();
        let decide = "/aisle.v1.DecisionService/Decide";
        let code = |auth: Option<&str>, path: &str| {
            check(Some(&creds), path, auth.map(str::as_bytes), None, None)
                .map(|_| tonic::Code::Ok)
                .unwrap_or_else(|s| s.code())
        };
        assert_eq!(code(None, decide), tonic::Code::Unauthenticated);
        assert_eq!(
            code(Some("Bearer nope"), decide),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            code(Some("Basic abc"), decide),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            code(Some("Bearer hh-secret"), decide),
            tonic::Code::PermissionDenied
        );
        assert_eq!(code(Some("Bearer web-secret"), decide), tonic::Code::Ok);
        assert_eq!(code(Some("bearer web-secret"), decide), tonic::Code::Ok);
        assert_eq!(code(None, "/grpc.health.v1.Health/Check"), tonic::Code::Ok);
        // No message ever carries the token.
        let status =
            check(Some(&creds), decide, Some(b"Bearer hh-secret"), None, None).unwrap_err();
        assert!(
            !status.message().contains("hh-secret"),
            "{}",
            status.message()
        );
        // Reloaded when the file changes: the web token is revoked.
        std::fs::write(
            &path,
            format!(
                "[[token]]\nname='new'\nsha256='{}'\nscopes=['decide']\n",
                token_sha256_hex("new-secret")
            ),
        )
        .unwrap();
        // The length changed, so the stamp differs even within the file system's timestamp granularity.
        assert!(creds.reload_if_changed());
        assert_eq!(
            code(Some("Bearer web-secret"), decide),
            tonic::Code::Unauthenticated
        );
        assert_eq!(code(Some("Bearer new-secret"), decide), tonic::Code::Ok);
        // An invalid new version keeps the last good one.
        std::fs::write(&path, "[[token]]\nname=").unwrap();
        assert!(!creds.reload_if_changed());
        assert_eq!(code(Some("Bearer new-secret"), decide), tonic::Code::Ok);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
