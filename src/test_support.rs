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

/// What a log layer wrote, for tests that compare log lines: give [`LogSink::writer`] to
/// `with_writer`, read [`LogSink::text`] afterwards.
#[derive(Clone, Default)]
pub struct LogSink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl LogSink {
    /// A writer per line, all appending to this sink.
    pub fn writer(&self) -> impl Fn() -> LogSink + Send + Sync + 'static {
        let sink = self.clone();
        move || sink.clone()
    }

    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
