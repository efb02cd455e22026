//! Transport security: TLS listeners whose certificates are re-read without a restart, a cap on connections per
//! listener, and the TLS settings of the node's own clients (peers, the CLI).
//!
//! A listener's rustls configuration is rebuilt from its files (certificate chain, key, and the CA that signs
//! accepted client certificates) when one of them changes on disk — cert-manager and Kubernetes Secret volumes
//! replace them in place — and every new connection uses the newest good one. A file that does not parse keeps the
//! previous configuration serving, is logged at warn and counted in `aisle_tls_reload_failures_total`.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tonic::transport::server::Connected;

/// How long a client gets to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections accepted but not yet taken by the server.
const ACCEPT_BACKLOG: usize = 128;

/// Whether a listener asks its clients for certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCerts {
    /// None asked for.
    None,
    /// Asked for and verified against the CA when presented; a client without one may still present a token.
    Optional,
    /// Required: the handshake fails without a certificate signed by the CA (the peer port).
    Required,
}

/// The files of a TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA certificates for client certificates.
    pub client_ca: Option<PathBuf>,
    /// Whether client certificates are required.
    pub client_certs: ClientCerts,
    /// The peer port's: the node id its certificate must name in its URI SAN `spiffe://<trust domain>/node/<id>`
    /// (the certificate is also this node's client certificate towards its peers, who check it).
    pub names_node: Option<String>,
}

impl TlsFiles {
    fn paths(&self) -> Vec<&Path> {
        let mut p = vec![self.cert.as_path(), self.key.as_path()];
        if let Some(ca) = &self.client_ca {
            p.push(ca);
        }
        p
    }
}

/// Reads every certificate of a PEM file.
///
/// # Errors
/// When the file cannot be read or holds no certificate (the message names the file).
pub fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("invalid PEM certificate in {}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in {}", path.display());
    Ok(certs)
}

fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("cannot read a PEM private key from {}", path.display()))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The root store of a CA file.
fn roots(path: &Path) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(path)? {
        roots
            .add(cert)
            .with_context(|| format!("unusable CA certificate in {}", path.display()))?;
    }
    Ok(roots)
}

/// Builds a server configuration from the files.
fn server_config(files: &TlsFiles) -> anyhow::Result<rustls::ServerConfig> {
    let certs = read_certs(&files.cert)?;
    if let Some(node) = &files.names_node {
        let named = super::x509::peer_node_id(certs[0].as_ref());
        anyhow::ensure!(
            named.as_deref() == Some(node.as_str()),
            "{}: a peer certificate must name this node in one URI SAN spiffe://<trust domain>{}{node} \
             (it names {})",
            files.cert.display(),
            super::x509::PEER_URI_PATH,
            named.map_or_else(|| "no node".to_string(), |n| format!("node {n:?}")),
        );
    }
    let key = read_key(&files.key)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match (&files.client_ca, files.client_certs) {
        (_, ClientCerts::None) | (None, ClientCerts::Optional) => builder.with_no_client_auth(),
        (None, ClientCerts::Required) => {
            anyhow::bail!("a CA for client certificates is required on this listener")
        }
        (Some(ca), mode) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(ca)?),
                provider(),
            );
            let verifier = if mode == ClientCerts::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .with_context(|| format!("client CA {}", ca.display()))?,
            )
        }
    };
    let mut config = builder.with_single_cert(certs, key).with_context(|| {
        format!(
            "certificate {} and key {} do not make a usable pair",
            files.cert.display(),
            files.key.display()
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A file's modification time and length, to notice replacements (bundle, certificate and token files).
pub(crate) fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// One file watched for replacement by its [`stamp`] (the token file, the pseudonym key file).
#[derive(Debug)]
pub(crate) struct WatchedFile {
    path: PathBuf,
    seen: Mutex<Option<(SystemTime, u64)>>,
}

impl WatchedFile {
    /// Watches `path`, as it is now.
    pub(crate) fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            seen: Mutex::new(stamp(path)),
        }
    }

    /// The file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file changed since it was last looked at (and remembers it as seen now).
    pub(crate) fn changed(&self) -> bool {
        let now = stamp(&self.path);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if *seen == now {
            return false;
        }
        *seen = now;
        true
    }
}

/// The TLS configuration of one listener, rebuilt when its files change.
pub struct ServerTls {
    listener: &'static str,
    files: TlsFiles,
    current: ArcSwap<rustls::ServerConfig>,
    seen: Mutex<Vec<Option<(SystemTime, u64)>>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("listener", &self.listener)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads the files of `listener` (a name for logs and metrics).
    ///
    /// # Errors
    /// When a file is missing or invalid, or the key does not match the certificate (named in the message).
    pub fn load(listener: &'static str, files: TlsFiles) -> anyhow::Result<Arc<Self>> {
        let config = server_config(&files).with_context(|| format!("{listener} TLS"))?;
        let seen = files.paths().into_iter().map(stamp).collect();
        Ok(Arc::new(Self {
            listener,
            files,
            current: ArcSwap::from_pointee(config),
            seen: Mutex::new(seen),
        }))
    }

    /// Rebuilds the configuration when a file changed. Returns whether a new configuration is in use.
    pub fn reload_if_changed(&self) -> bool {
        let now: Vec<_> = self.files.paths().into_iter().map(stamp).collect();
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if *seen == now {
                return false;
            }
            *seen = now;
        }
        match server_config(&self.files) {
            Ok(config) => {
                self.current.store(Arc::new(config));
                metrics::counter!("aisle_tls_reloads_total", "listener" => self.listener)
                    .increment(1);
                tracing::info!(listener = self.listener, "TLS certificate reloaded");
                true
            }
            Err(error) => {
                metrics::counter!("aisle_tls_reload_failures_total", "listener" => self.listener)
                    .increment(1);
                tracing::warn!(
                    listener = self.listener,
                    error = format!("{error:#}"),
                    "new TLS files refused; the previous certificate keeps serving"
                );
                false
            }
        }
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }
}

/// What the server knows of a connection: where it comes from and the client certificate it presented.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub remote: Option<std::net::SocketAddr>,
    /// The verified client certificate chain, leaf first (TLS listeners with client CAs only).
    pub client_certs: Option<Arc<Vec<CertificateDer<'static>>>>,
    /// The node id the verified client certificate names as a peer (its URI SAN
    /// `spiffe://<trust domain>/node/<id>`), read once per connection.
    pub peer_node: Option<Arc<str>>,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// An accepted connection: plaintext or TLS, holding its place under the listener's connection cap.
pub struct Conn {
    io: Io,
    info: ConnInfo,
    _permit: OwnedSemaphorePermit,
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Accepts connections on `listener` — TLS when `tls` is given — at most `max_connections` open at once (0: no
/// cap). Beyond the cap a new connection is closed at once, logged and counted in
/// `aisle_connections_refused_total`; a failed handshake is counted in `aisle_tls_handshake_failures_total`.
/// TLS handshakes run in their own tasks, so a slow client never holds up the accept loop.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    max_connections: usize,
    name: &'static str,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(ACCEPT_BACKLOG);
    let cap = if max_connections == 0 {
        Semaphore::MAX_PERMITS
    } else {
        max_connections
    };
    let permits = Arc::new(Semaphore::new(cap));
    tokio::spawn(async move {
        loop {
            let (stream, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(listener = name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                metrics::counter!("aisle_connections_refused_total", "listener" => name)
                    .increment(1);
                tracing::warn!(listener = name, %remote, max_connections = cap,
                    "connection closed: max_connections reached");
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let Some(tls) = &tls else {
                let conn = Conn {
                    io: Io::Plain(stream),
                    info: ConnInfo {
                        remote: Some(remote),
                        client_certs: None,
                        peer_node: None,
                    },
                    _permit: permit,
                };
                if tx.send(Ok(conn)).await.is_err() {
                    return;
                }
                continue;
            };
            let acceptor = tls.acceptor();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let client_certs = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .map(|c| Arc::new(c.to_vec()));
                        let peer_node = client_certs
                            .as_ref()
                            .and_then(|c| c.first())
                            .and_then(|leaf| super::x509::peer_node_id(leaf.as_ref()))
                            .map(Arc::from);
                        let conn = Conn {
                            io: Io::Tls(Box::new(stream)),
                            info: ConnInfo {
                                remote: Some(remote),
                                client_certs,
                                peer_node,
                            },
                            _permit: permit,
                        };
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Ok(Err(e)) => {
                        metrics::counter!("aisle_tls_handshake_failures_total", "listener" => name)
                            .increment(1);
                        tracing::debug!(listener = name, %remote, error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        metrics::counter!("aisle_tls_handshake_failures_total", "listener" => name)
                            .increment(1);
                        tracing::debug!(listener = name, %remote, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The common name of a DER certificate's subject, if it has one.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    super::x509::subject_common_name(cert.as_ref())
}

/// The node id a peer certificate (DER) names in its URI SAN `spiffe://<trust domain>/node/<id>`, if it is one.
pub fn peer_node_id(cert: &[u8]) -> Option<String> {
    super::x509::peer_node_id(cert)
}

/// TLS for the node's clients (to peers, or the CLI to a node): the CA that signs the server's certificate and,
/// for mutual TLS, this side's certificate and key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// PEM CA certificates trusted for the server's certificate.
    pub ca: Option<PathBuf>,
    /// PEM client certificate chain.
    pub cert: Option<PathBuf>,
    /// PEM client key.
    pub key: Option<PathBuf>,
}

impl ClientTlsFiles {
    /// tonic's client TLS settings from the files, verifying the server as `domain` (default: the URI's host).
    ///
    /// # Errors
    /// When a file cannot be read, or only one of certificate and key is given.
    pub fn tonic_config(
        &self,
        domain: Option<&str>,
    ) -> anyhow::Result<tonic::transport::ClientTlsConfig> {
        let mut config = tonic::transport::ClientTlsConfig::new();
        if let Some(ca) = &self.ca {
            let pem = std::fs::read(ca)
                .with_context(|| format!("cannot read CA certificate {}", ca.display()))?;
            config = config.ca_certificate(tonic::transport::Certificate::from_pem(pem));
        } else {
            config = config.with_enabled_roots();
        }
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let cert = std::fs::read(cert)
                    .with_context(|| format!("cannot read certificate {}", cert.display()))?;
                let key = std::fs::read(key)
                    .with_context(|| format!("cannot read key {}", key.display()))?;
                config = config.identity(tonic::transport::Identity::from_pem(cert, key));
            }
            (None, None) => {}
            _ => anyhow::bail!("a client certificate needs both its certificate and its key"),
        }
        if let Some(d) = domain {
            config = config.domain_name(d);
        }
        Ok(config)
    }

    /// The files to watch for changes.
    pub fn paths(&self) -> Vec<&Path> {
        [&self.ca, &self.cert, &self.key]
            .into_iter()
            .filter_map(|p| p.as_deref())
            .collect()
    }
}
