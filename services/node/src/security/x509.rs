//! The little the node reads from X.509 certificates: the subject's common name, which names a client that
//! authenticates with a certificate, and the peer marker, the URI SAN `spiffe://<trust domain>/node/<node id>`
//! that only members' peer certificates carry.

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The path prefix of a peer certificate's URI SAN, after `spiffe://<trust domain>`.
pub(crate) const PEER_URI_PATH: &str = "/node/";

/// The first common name (CN) of the certificate's subject; `None` for undecodable certificates or subjects
/// without one.
pub(crate) fn subject_common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// The node id a peer certificate names in its URI SAN `spiffe://<trust domain>/node/<node id>`; `None` for
/// certificates without exactly one such name (client, etcd and edge certificates carry none), or undecodable.
pub(crate) fn peer_node_id(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let mut ids = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => node_of_uri(uri),
            _ => None,
        });
    let id = ids.next()?;
    ids.next().is_none().then(|| id.to_string())
}

/// `<node id>` of `spiffe://<trust domain>/node/<node id>`: a non-empty trust domain, an id of 1 to 128 bytes of
/// letters, digits, `.`, `-` and `_`.
fn node_of_uri(uri: &str) -> Option<&str> {
    let rest = uri.strip_prefix("spiffe://")?;
    let (domain, path) = rest.split_at(rest.find('/')?);
    let id = path.strip_prefix(PEER_URI_PATH)?;
    let valid = !domain.is_empty()
        && (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    valid.then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_common_name_and_refuses_garbage() {
        let mut params = rcgen::CertificateParams::new(vec!["node.example".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "pos.store-1");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            subject_common_name(cert.der()).as_deref(),
            Some("pos.store-1")
        );
        assert_eq!(subject_common_name(b"not a certificate"), None);
    }

    fn with_sans(sans: Vec<rcgen::SanType>) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.subject_alt_names.extend(sans);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn uri(s: &str) -> rcgen::SanType {
        rcgen::SanType::URI(s.try_into().unwrap())
    }

    #[test]
    fn a_peer_certificate_names_its_node_in_one_spiffe_uri() {
        let peer = with_sans(vec![uri("spiffe://aisle/node/node-2")]);
        assert_eq!(peer_node_id(&peer).as_deref(), Some("node-2"));
        for refused in [
            vec![],
            vec![uri("https://aisle/node/node-2")],
            vec![uri("spiffe:///node/node-2")],
            vec![uri("spiffe://aisle/nodes/node-2")],
            vec![uri("spiffe://aisle/node/")],
            vec![uri("spiffe://aisle/node/a/b")],
            vec![uri("spiffe://aisle/node/a"), uri("spiffe://aisle/node/b")],
        ] {
            assert_eq!(
                peer_node_id(&with_sans(refused.clone())),
                None,
                "{refused:?}"
            );
        }
        assert_eq!(peer_node_id(b"not a certificate"), None);
    }
}
