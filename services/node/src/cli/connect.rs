//! What every client command shares: the node to talk to and the credentials to show it ([`AddrArgs`]),
//! connecting (TLS for an `https://` address), the bearer token on each request, error statuses as errors, and
//! printing an answer — a readable summary, or with `--json` one JSON object per line.

use std::path::PathBuf;
use std::time::Duration;

use aisle_proto::v1 as pb;
use aisle_proto::v1::admin_service_client::AdminServiceClient;
use anyhow::Context;
use clap::Args;
use serde_json::Value;
use tonic::transport::Channel;

/// The node to talk to, and the credentials to show it.
#[derive(Debug, Args, Clone)]
pub struct AddrArgs {
    /// The node's gRPC address (`https://` for a node with TLS).
    #[arg(long, env = "AISLE_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// Bearer token (never printed or logged).
    #[arg(long, env = "AISLE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM CA certificate that signs the node's certificate [default: the system's roots].
    #[arg(long, env = "AISLE_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate, for nodes that identify callers by certificate (with --client-key).
    #[arg(long, env = "AISLE_CLIENT_CERT")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(long, env = "AISLE_CLIENT_KEY")]
    pub client_key: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// A request carrying the bearer token of `a`, if any.
///
/// # Errors
/// When the token cannot be sent as a header value.
pub(super) fn with_token<T>(a: &AddrArgs, message: T) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = &a.token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| anyhow::anyhow!("--token: not a valid header value"))?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(request)
}

/// A channel to the node at `a.addr`: TLS with `a`'s CA and client certificate for `https://`, plaintext otherwise.
///
/// # Errors
/// An invalid address, unreadable TLS files, TLS files given with a plaintext address (refused rather than
/// ignored, so a caller never believes it speaks TLS when it does not), or no connection within 5 s.
pub(super) async fn connect(a: &AddrArgs) -> anyhow::Result<Channel> {
    let addr = &a.addr;
    let mut endpoint = Channel::from_shared(addr.to_string())
        .with_context(|| format!("invalid address {addr}"))?
        .connect_timeout(Duration::from_secs(5));
    if addr.starts_with("https://") {
        let files = crate::security::tls::ClientTlsFiles {
            ca: a.ca_cert.clone(),
            cert: a.client_cert.clone(),
            key: a.client_key.clone(),
        };
        endpoint = endpoint.tls_config(files.tonic_config(None)?)?;
    } else if a.ca_cert.is_some() || a.client_cert.is_some() {
        anyhow::bail!("--ca-cert and --client-cert need an https:// address (got {addr})");
    }
    endpoint
        .connect()
        .await
        .with_context(|| format!("cannot connect to {addr}"))
}

/// An AdminService client of the node at `a.addr`, which the operator and privacy commands call.
///
/// # Errors
/// As [`connect`].
pub(super) async fn admin(a: &AddrArgs) -> anyhow::Result<AdminServiceClient<Channel>> {
    Ok(AdminServiceClient::new(connect(a).await?))
}

/// An error status as the command's error: its code and the node's message (`InvalidArgument: shopper_id: required`).
pub(super) fn status(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", e.code(), e.message())
}

/// A protobuf enum value from its name without the prefix, in any case: `parse` gets `value` upper-cased.
///
/// # Errors
/// When `parse` knows no such name (the error names `what` and the value as given).
pub(super) fn parse_enum<T>(
    what: &str,
    value: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> anyhow::Result<T> {
    parse(&value.to_ascii_uppercase()).ok_or_else(|| anyhow::anyhow!("unknown {what} {value:?}"))
}

/// Prints an answer: `value` on one line with `--json`, else the summary `text` renders (only then built).
pub(super) fn print(json_out: bool, value: &Value, text: impl FnOnce() -> String) {
    if json_out {
        println!("{value}");
    } else {
        println!("{}", text());
    }
}

/// A fallback tier's name as printed (decisions and kill switches).
pub(super) fn tier_name(t: i32) -> &'static str {
    match pb::FallbackTier::try_from(t) {
        Ok(pb::FallbackTier::Fresh) => "FRESH",
        Ok(pb::FallbackTier::Cached) => "CACHED",
        Ok(pb::FallbackTier::Rules) => "RULES",
        Ok(pb::FallbackTier::Generic) => "GENERIC",
        _ => "UNSPECIFIED",
    }
}
