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
