//! Who may call what, and how the node's traffic is protected:
//!
//! - [`assertion`]: shopper assertions (signed statements of the shopper id) that shopper-bound tokens require;
//! - [`auth`]: callers' identities (bearer tokens, client certificates) and scopes, checked in a tower layer
//!   before any handler runs;
//! - [`fair`]: each caller's fair share (`rate_per_sec`, `max_concurrent`), enforced in the same layer;
//! - [`tls`]: listeners whose certificates are re-read when their files change; client TLS settings;
//! - [`pseudonyms`]: the keyed pseudonyms that name shoppers outside the owner's memory;
//! - `x509`: the few certificate fields the node reads.
//!
//! [`Security`] holds what a node loads of them at start, and re-reads.

pub mod assertion;
pub mod auth;
pub mod fair;
pub mod pseudonyms;
pub mod tls;
mod x509;

use std::sync::Arc;

use anyhow::Context as _;

use crate::config::{ClusterMode, Config};
use auth::Credentials;
use pseudonyms::Pseudonyms;
use tls::{ClientCerts, ServerTls, TlsFiles};

/// The node's credentials: TLS of the client (and admin) port and of the peer port, and the token file. Each is
/// re-read when its files change.
#[derive(Debug, Clone)]
pub struct Security {
    /// TLS of the client and admin ports.
    pub client_tls: Option<Arc<ServerTls>>,
    /// Mutual TLS of the peer port.
    pub peer_tls: Option<Arc<ServerTls>>,
    /// Bearer tokens and client-certificate identities.
    pub credentials: Option<Arc<Credentials>>,
    /// The pseudonym keys (from `pseudonym_key`, else generated for this run).
    pub pseudonyms: Arc<Pseudonyms>,
}

impl Security {
    /// Loads what the configuration names.
    ///
    /// # Errors
    /// A missing or invalid certificate, key, CA or token file (named).
    pub fn load(config: &Config) -> anyhow::Result<Self> {
        let client_tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(ServerTls::load(
                "client",
                TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: config.tls_client_ca.clone(),
                    client_certs: ClientCerts::Optional,
                    names_node: None,
                },
            )?),
            _ => None,
        };
        let peer_tls = match (&config.peer_tls_cert, &config.peer_tls_key) {
            (Some(cert), Some(key)) if config.cluster == ClusterMode::Etcd => {
                Some(ServerTls::load(
                    "peer",
                    TlsFiles {
                        cert: cert.clone(),
                        key: key.clone(),
                        client_ca: config.peer_tls_ca.clone(),
                        client_certs: ClientCerts::Required,
                        names_node: Some(config.node_id.clone()),
                    },
                )?)
            }
            _ => None,
        };
        let credentials = match &config.auth_tokens {
            Some(p) => Some(Credentials::load(p)?),
            None => None,
        };
        let pseudonyms = Arc::new(match &config.pseudonym_key {
            Some(p) => Pseudonyms::from_file(p)?,
            None => Pseudonyms::generated().context("generating a pseudonym key")?,
        });
        Ok(Self {
            client_tls,
            peer_tls,
            credentials,
            pseudonyms,
        })
    }

    /// Re-reads every file that changed.
    pub fn reload(&self) {
        for tls in [&self.client_tls, &self.peer_tls].into_iter().flatten() {
            tls.reload_if_changed();
        }
        if let Some(c) = &self.credentials {
            c.reload_if_changed();
        }
        self.pseudonyms.reload_if_changed();
    }
}
