//! Helpers shared by the crate's unit tests (compiled only under `#[cfg(test)]`).

use axum::http::{HeaderMap, HeaderName, HeaderValue};

/// A header map from `(name, value)` pairs, appended in order (repeated names are kept).
pub fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

/// The PEM certificate of a fresh private certificate authority: what `pleo.ca_file` and
/// `proxy.ca_file` hold. (`tests/integration/tls.rs` also makes server certificates with it.)
pub fn private_ca_pem() -> String {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "pleo-gateway test CA");
    params.self_signed(&key).unwrap().pem()
}
