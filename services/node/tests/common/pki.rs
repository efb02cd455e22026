//! Test certificates, made with rcgen once per test binary: a CA for the client ports (it signs the nodes' server
//! certificate and the callers' client certificates), a cluster CA for the peer ports, and a CA for etcd. Also the
//! token file the secured nodes load.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A certificate and its key, PEM.
#[derive(Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// Every certificate the secured tests use.
pub struct Pki {
    /// Signs the client-port server certificate and callers' client certificates.
    pub client_ca: Pem,
    /// The client and admin ports' certificate (127.0.0.1, localhost).
    pub server: Pem,
    /// A caller identified by certificate: CN `test-operator` (in the token file with every scope).
    pub operator: Pem,
    /// A caller whose CN the token file does not know.
    pub unknown_caller: Pem,
    /// The cluster CA: signs the peer certificates.
    pub cluster_ca: Pem,
    cluster_issuer: CertifiedIssuer<'static, KeyPair>,
    /// A client certificate of the cluster CA that is not a peer certificate (no node URI SAN), as an etcd or
    /// tooling client certificate signed by a shared issuer would be.
    pub cluster_client: Pem,
    /// Peer certificates made so far, by node id ([`Pki::peer`]).
    peers: Mutex<HashMap<String, Pem>>,
    /// Signs etcd's certificates.
    pub etcd_ca: Pem,
    /// etcd's server certificate (127.0.0.1).
    pub etcd_server: Pem,
    /// etcd client certificate of the `root` user (used to set up auth).
    pub etcd_root: Pem,
    /// etcd client certificate of the `aisle` user (the nodes').
    pub etcd_aisle: Pem,
}

/// Bearer tokens of the test token file, by scope set.
pub const TOKEN_ALL: &str = "t-all-0123456789";
pub const TOKEN_DECIDE: &str = "t-decide-0123456789";
pub const TOKEN_TRACK: &str = "t-track-0123456789";
pub const TOKEN_SUBSCRIBE_STORE_1: &str = "t-subscribe-store-1";
pub const TOKEN_ADMIN_READ: &str = "t-admin-read-0123456789";
pub const TOKEN_ADMIN_WRITE: &str = "t-admin-write-0123456789";
/// A `decide` token with a fair share: 5 requests a second, 2 in flight.
pub const TOKEN_LIMITED: &str = "t-limited-0123456789";
/// A kiosk's token: shopper-bound, its assertions HS256 with [`KIOSK_SECRET`].
pub const TOKEN_KIOSK: &str = "t-kiosk-0123456789";
/// The kiosk token's assertion secret.
pub const KIOSK_SECRET: &[u8] = b"kiosk-secret-0123456789abcdef-0123456789";
/// An app's token: shopper-bound, its assertions EdDSA with [`app_login_key`].
pub const TOKEN_APP: &str = "t-app-0123456789";

/// The app's login service key (Ed25519), which signs the app token's assertions.
pub fn app_login_key() -> &'static ring::signature::Ed25519KeyPair {
    static KEY: OnceLock<ring::signature::Ed25519KeyPair> = OnceLock::new();
    KEY.get_or_init(|| {
        let pkcs8 =
            ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
                .unwrap();
        ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
    })
}

/// A shopper assertion for the kiosk token: `claims` signed with [`KIOSK_SECRET`].
pub fn kiosk_assertion(claims: &serde_json::Value) -> String {
    aisle_node::security::assertion::sign_hs256(KIOSK_SECRET, claims)
}

/// A shopper assertion for the app token: `claims` signed with [`app_login_key`].
pub fn app_assertion(claims: &serde_json::Value) -> String {
    aisle_node::security::assertion::sign_ed25519(app_login_key(), claims)
}

/// The token of store `store-1`'s edge node (scopes `edge`, and `decide` for the surfaces it forwards).
pub const TOKEN_EDGE: &str = "t-edge-store-1-0123456789";

/// The token file: one token per scope (the subscribe one limited to `store-1`), one with every scope, and the
/// `test-operator` certificate with every scope.
pub fn token_file() -> String {
    let entry = |name: &str, token: &str, scopes: &str, extra: &str| {
        format!(
            "[[token]]\nname = \"{name}\"\nsha256 = \"{}\"\nscopes = [{scopes}]\n{extra}\n",
            aisle_node::security::auth::token_sha256_hex(token)
        )
    };
    let all = "\"decide\", \"track\", \"subscribe\", \"admin:read\", \"admin:write\"";
    [
        entry("all", TOKEN_ALL, all, ""),
        entry("decide", TOKEN_DECIDE, "\"decide\"", ""),
        entry("track", TOKEN_TRACK, "\"track\"", ""),
        entry(
            "handheld-store-1",
            TOKEN_SUBSCRIBE_STORE_1,
            "\"subscribe\"",
            "stores = [\"store-1\"]",
        ),
        entry("ops-read", TOKEN_ADMIN_READ, "\"admin:read\"", ""),
        entry("ops-write", TOKEN_ADMIN_WRITE, "\"admin:write\"", ""),
        entry(
            "edge-store-1",
            TOKEN_EDGE,
            "\"edge\", \"decide\"",
            "stores = [\"store-1\"]",
        ),
        entry(
            "limited",
            TOKEN_LIMITED,
            "\"decide\"",
            "rate_per_sec = 5\nmax_concurrent = 2",
        ),
        entry(
            "kiosk",
            TOKEN_KIOSK,
            "\"decide\", \"track\"",
            "shopper_assertion = { hs256_secret_file = \"kiosk.secret\" }",
        ),
        entry(
            "app",
            TOKEN_APP,
            "\"decide\", \"track\"",
            "shopper_assertion = { ed25519_public_key_file = \"app-login.pub\" }",
        ),
        format!(
            "[[certificate]]\nname = \"operator\"\ncommon_name = \"test-operator\"\nscopes = [{all}]\n"
        ),
    ]
    .join("\n")
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    cn: &str,
    sans: &[&str],
    usages: &[ExtendedKeyUsagePurpose],
) -> Pem {
    let mut params =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = usages.to_vec();
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

/// A peer certificate of `issuer` for node `node_id`: server and client, 127.0.0.1 and localhost, and the URI SAN
/// `spiffe://aisle/node/<node_id>` naming the node.
fn peer_leaf(issuer: &CertifiedIssuer<'static, KeyPair>, node_id: &str) -> Pem {
    use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, node_id);
    params.subject_alt_names.push(rcgen::SanType::URI(
        format!("spiffe://aisle/node/{node_id}").try_into().unwrap(),
    ));
    params.extended_key_usages = vec![ServerAuth, ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

fn pem_of(ca: &CertifiedIssuer<'static, KeyPair>) -> Pem {
    Pem {
        cert: ca.pem(),
        key: ca.key().serialize_pem(),
    }
}

/// The test PKI (made once per test binary).
pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        let loopback = ["127.0.0.1", "localhost"];
        let client_ca = ca("aisle test client CA");
        let cluster_ca = ca("aisle test cluster CA");
        let etcd_ca = ca("aisle test etcd CA");
        Pki {
            server: leaf(&client_ca, "aisle-node", &loopback, &[ServerAuth]),
            operator: leaf(&client_ca, "test-operator", &[], &[ClientAuth]),
            unknown_caller: leaf(&client_ca, "somebody-else", &[], &[ClientAuth]),
            peers: Mutex::new(HashMap::new()),
            cluster_client: leaf(&cluster_ca, "aisle", &[], &[ClientAuth]),
            etcd_server: leaf(&etcd_ca, "etcd", &loopback, &[ServerAuth, ClientAuth]),
            etcd_root: leaf(&etcd_ca, "root", &[], &[ClientAuth]),
            etcd_aisle: leaf(&etcd_ca, "aisle", &[], &[ClientAuth]),
            client_ca: pem_of(&client_ca),
            cluster_ca: pem_of(&cluster_ca),
            cluster_issuer: cluster_ca,
            etcd_ca: pem_of(&etcd_ca),
        }
    })
}

/// Where [`Pki::write`] put the files a node and etcd read.
#[derive(Debug, Clone)]
pub struct Files {
    pub client_ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub cluster_ca: PathBuf,
    pub peer_cert: PathBuf,
    pub peer_key: PathBuf,
    pub etcd_ca: PathBuf,
    pub etcd_server_cert: PathBuf,
    pub etcd_server_key: PathBuf,
    pub etcd_aisle_cert: PathBuf,
    pub etcd_aisle_key: PathBuf,
    pub tokens: PathBuf,
    /// The cluster's pseudonym key file (one fixed test key).
    pub pseudonym_key: PathBuf,
}

/// The node id whose peer certificate [`Pki::write`] writes.
pub const SECURED_NODE: &str = "secured-node";

/// The pseudonym key of test clusters (hex).
pub const PSEUDONYM_KEY: &str = "5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed";

fn put(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

impl Pki {
    /// The peer certificate of node `node_id` (made once per node id).
    pub fn peer(&self, node_id: &str) -> Pem {
        let mut peers = self.peers.lock().unwrap();
        peers
            .entry(node_id.to_string())
            .or_insert_with(|| peer_leaf(&self.cluster_issuer, node_id))
            .clone()
    }

    /// Writes node `node_id`'s peer certificate and key into `dir`: their paths.
    pub fn write_peer(&self, dir: &Path, node_id: &str) -> (PathBuf, PathBuf) {
        std::fs::create_dir_all(dir).unwrap();
        let pem = self.peer(node_id);
        (
            put(dir, &format!("peer-{node_id}.pem"), &pem.cert),
            put(dir, &format!("peer-{node_id}.key"), &pem.key),
        )
    }

    /// Writes the PEM files and the token file into `dir` (the peer certificate: node `secured-node`'s), with the
    /// shopper-bound tokens' assertion keys beside it.
    pub fn write(&self, dir: &Path) -> Files {
        use base64::Engine as _;
        use ring::signature::KeyPair as _;
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("kiosk.secret"), KIOSK_SECRET).unwrap();
        let public = base64::engine::general_purpose::STANDARD.encode(app_login_key().public_key());
        std::fs::write(dir.join("app-login.pub"), format!("{public}\n")).unwrap();
        Files {
            client_ca: put(dir, "client-ca.pem", &self.client_ca.cert),
            server_cert: put(dir, "server.pem", &self.server.cert),
            server_key: put(dir, "server.key", &self.server.key),
            cluster_ca: put(dir, "cluster-ca.pem", &self.cluster_ca.cert),
            peer_cert: put(dir, "peer.pem", &self.peer(SECURED_NODE).cert),
            peer_key: put(dir, "peer.key", &self.peer(SECURED_NODE).key),
            etcd_ca: put(dir, "etcd-ca.pem", &self.etcd_ca.cert),
            etcd_server_cert: put(dir, "etcd-server.pem", &self.etcd_server.cert),
            etcd_server_key: put(dir, "etcd-server.key", &self.etcd_server.key),
            etcd_aisle_cert: put(dir, "etcd-aisle.pem", &self.etcd_aisle.cert),
            etcd_aisle_key: put(dir, "etcd-aisle.key", &self.etcd_aisle.key),
            tokens: put(dir, "tokens.toml", &token_file()),
            pseudonym_key: put(dir, "pseudonym.key", &format!("{PSEUDONYM_KEY}\n")),
        }
    }
}

/// Client TLS towards a node's client port: trusts the client CA, presents `identity` when given.
pub fn client_tls(identity: Option<&Pem>) -> tonic::transport::ClientTlsConfig {
    let p = pki();
    let mut tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&p.client_ca.cert))
        .domain_name("localhost");
    if let Some(id) = identity {
        tls = tls.identity(tonic::transport::Identity::from_pem(&id.cert, &id.key));
    }
    tls
}

/// Client TLS towards etcd as `who` (etcd maps the certificate's CN to its user).
pub fn etcd_tls(who: &Pem) -> tonic::transport::ClientTlsConfig {
    tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&pki().etcd_ca.cert))
        .identity(tonic::transport::Identity::from_pem(&who.cert, &who.key))
}
