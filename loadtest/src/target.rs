//! The server under load: `--connections` HTTP/2 connections, each its own connected tonic `Channel`.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::error::{Error, chain};
use crate::stats::code_name;

/// How long connecting to the target may take before it counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Adds `http://` to a bare `host:port`.
pub fn normalize_url(target: &str) -> String {
    if target.contains("://") {
        target.to_string()
    } else {
        format!("http://{target}")
    }
}

/// Connected channels to one target, used round-robin, and the bearer token every request carries.
#[derive(Debug, Clone)]
pub struct Target {
    url: String,
    channels: Vec<Channel>,
    token: Option<tonic::metadata::AsciiMetadataValue>,
}

/// How to reach a secured node: the CA of its certificate (`https://` targets) and a bearer token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// PEM CA certificate that signs the node's certificate (default: the system's roots).
    pub ca_cert: Option<std::path::PathBuf>,
    /// Bearer token sent with every request.
    pub token: Option<String>,
}

impl Target {
    /// Opens `connections` separate connections to `target` (a URL, or `host:port`); fails when the target is
    /// not a URL or cannot be reached.
    pub async fn connect(target: &str, connections: usize) -> Result<Self, Error> {
        Self::connect_with(target, connections, &Credentials::default()).await
    }

    /// [`Target::connect`] with TLS (for `https://` targets) and a bearer token.
    pub async fn connect_with(
        target: &str,
        connections: usize,
        credentials: &Credentials,
    ) -> Result<Self, Error> {
        if connections == 0 {
            return Err(Error::InvalidArgument(
                "--connections must be at least 1".into(),
            ));
        }
        let url = normalize_url(target);
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|source| Error::InvalidTarget {
                target: target.to_string(),
                source,
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        let endpoint = if url.starts_with("https://") {
            let mut tls = tonic::transport::ClientTlsConfig::new();
            tls = match &credentials.ca_cert {
                Some(path) => {
                    let pem = std::fs::read(path).map_err(|e| {
                        Error::InvalidArgument(format!("--ca-cert {}: {e}", path.display()))
                    })?;
                    tls.ca_certificate(tonic::transport::Certificate::from_pem(pem))
                }
                None => tls.with_enabled_roots(),
            };
            endpoint.tls_config(tls).map_err(|e| Error::Unreachable {
                target: url.clone(),
                detail: chain(&e),
            })?
        } else {
            endpoint
        };
        let token =
            match &credentials.token {
                Some(t) => Some(format!("Bearer {t}").parse().map_err(|_| {
                    Error::InvalidArgument("--token: not a valid header value".into())
                })?),
                None => None,
            };
        let mut channels = Vec::with_capacity(connections);
        for _ in 0..connections {
            // Each `connect` makes its own TCP connection and HTTP/2 session.
            let channel = endpoint.connect().await.map_err(|e| Error::Unreachable {
                target: url.clone(),
                detail: chain(&e),
            })?;
            channels.push(channel);
        }
        Ok(Self {
            url,
            channels,
            token,
        })
    }

    /// Checks every connection with one `grpc.health.v1.Health/Check` (which also warms it up). Fails when a
    /// connection does not carry gRPC (transport error or no answer within `timeout`); returns whether the
    /// health service is implemented (an Aisle node serves it; the `health` scenario and `--floor` need it).
    pub async fn probe(&self, timeout: Duration) -> Result<bool, Error> {
        let mut implemented = true;
        for channel in &self.channels {
            let mut request = tonic::Request::new(HealthCheckRequest {
                service: String::new(),
            });
            request.set_timeout(timeout);
            let answer =
                tokio::time::timeout(timeout, HealthClient::new(channel.clone()).check(request))
                    .await
                    .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer")));
            match answer {
                Ok(_) => {}
                Err(status) if status.code() == tonic::Code::Unimplemented => implemented = false,
                Err(status)
                    if matches!(
                        status.code(),
                        tonic::Code::Unavailable
                            | tonic::Code::Unknown
                            | tonic::Code::DeadlineExceeded
                            | tonic::Code::Cancelled
                            | tonic::Code::Internal
                    ) =>
                {
                    return Err(Error::Unreachable {
                        target: self.url.clone(),
                        detail: format!(
                            "health check failed: {}: {}",
                            code_name(status.code()),
                            status.message()
                        ),
                    });
                }
                // Any other answer (e.g. NOT_FOUND, PERMISSION_DENIED) came from a gRPC server: reachable.
                Err(_) => {}
            }
        }
        Ok(implemented)
    }

    /// The target's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Number of connections.
    pub fn connections(&self) -> usize {
        self.channels.len()
    }

    /// The channel for request `index` (round-robin).
    /// The `authorization` value requests carry, if any.
    pub fn token(&self) -> Option<tonic::metadata::AsciiMetadataValue> {
        self.token.clone()
    }

    /// Adds the bearer token to a request.
    pub fn authorize<T>(&self, request: &mut tonic::Request<T>) {
        authorize(request, self.token.as_ref());
    }

    pub fn channel(&self, index: u64) -> Channel {
        self.channels[(index % self.channels.len() as u64) as usize].clone()
    }
}

/// Adds `token` (an `authorization` value) to a request.
pub fn authorize<T>(
    request: &mut tonic::Request<T>,
    token: Option<&tonic::metadata::AsciiMetadataValue>,
) {
    if let Some(t) = token {
        request.metadata_mut().insert("authorization", t.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_addresses_get_a_scheme() {
        assert_eq!(normalize_url("127.0.0.1:50051"), "http://127.0.0.1:50051");
        assert_eq!(normalize_url("https://aisle:443"), "https://aisle:443");
    }
}
