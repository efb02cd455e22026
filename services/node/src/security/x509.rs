//! The little the node reads from X.509 certificates: the subject's common name, which names a client that
//! authenticates with a certificate.

use x509_parser::prelude::{FromDer, X509Certificate};

/// The first common name (CN) of the certificate's subject; `None` for undecodable certificates or subjects
/// without one.
pub(crate) fn subject_common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
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
}
