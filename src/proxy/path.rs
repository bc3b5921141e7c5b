//! Request paths as the gateway reads them for access decisions: normalisation, and matching
//! against `proxy.public_paths`.
//!
//! The decision "may this path skip the session?" is made on a normalised path, but the app
//! receives the path exactly as the browser sent it. That gap is where auth bypasses live: if
//! the gateway and the app read one path differently, `/static/..;/admin` can look public to one
//! and be `/admin` to the other. Servers disagree in practice — nginx merges `//` before
//! resolving `..`, Tomcat and Jetty drop `;params` first, some file servers decode `%2F` or decode
//! twice, many routers do none of it. So the rules are:
//!
//! 1. [`normalize_path`] decodes percent-escapes of unreserved characters (`%2e` → `.`) and of
//!    UTF-8 text, once; escapes of everything else stay escaped (upper-cased), so `%2F` is never
//!    a separator and `%252e` stays `%252e` (never decoded twice). Paths with malformed escapes,
//!    control characters, NUL or a backslash (raw or encoded), or invalid UTF-8 (an overlong
//!    `.`) are invalid: the caller answers 400. Then `.`/`..` are resolved (RFC 3986 §5.2.4)
//!    and duplicate slashes merged. Query and fragment are ignored.
//! 2. [`is_public`] matches a normalised path against the patterns, and refuses outright any
//!    path that still carries `;`, an encoded `/` or an encoded `%`: a server could read those
//!    as structure.
//! 3. [`path_access`] calls a path public only if normalising did not change its structure
//!    (no dot segments, no `//`). Such a path means the same thing to every server; any other
//!    needs a session. Browsers resolve dot segments before sending, so real asset requests are
//!    always in this form and lose nothing.
//!
//! Pattern semantics: an entry without `*` matches that exact path only (`/favicon.ico`). A
//! trailing `*` matches any rest of the path, across `/`: `/static/*` matches `/static/` and
//! everything below it, but not `/static` itself and not `/static-evil`; `/favicon*` is a
//! plain string prefix and matches `/favicon-32.png`. Matching is case-sensitive.

use std::borrow::Cow;

/// Whether a request needs a session, from its path alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathAccess {
    /// Matches `proxy.public_paths` unambiguously: forwarded without a session.
    Public,
    /// Everything else: a session is required.
    Protected,
}

/// Decides whether `raw` (a request path, optionally with query) may skip the session.
/// `None` when the path is invalid (answer 400). It runs on every request to the app, so a
/// path that needs no decoding and is already in normal form costs no allocation.
pub fn path_access(raw: &str, patterns: &[String]) -> Option<PathAccess> {
    let decoded = decode(raw)?;
    // Only a path whose structure normalisation leaves alone is read the same way by every
    // server; anything it would rewrite is ambiguous and stays behind the session.
    let public = is_normal(&decoded) && is_public(&decoded, patterns);
    Some(if public {
        PathAccess::Public
    } else {
        PathAccess::Protected
    })
}

/// The normalised form of a request path: see the module documentation. `None` when invalid.
pub fn normalize_path(raw: &str) -> Option<String> {
    let decoded = decode(raw)?;
    Some(if is_normal(&decoded) {
        decoded.into_owned()
    } else {
        resolve(&decoded)
    })
}

/// Whether a normalised path matches one of `patterns` (exact, or prefix for a trailing `*`).
/// Paths still holding `;` (raw or `%3B`), `%2F` or `%25` are never public, whatever the
/// patterns say.
pub fn is_public(normalized: &str, patterns: &[String]) -> bool {
    let escaped = |code: &[u8]| {
        normalized
            .as_bytes()
            .windows(code.len())
            .any(|w| w.eq_ignore_ascii_case(code))
    };
    // `%3B` too: servers that decode before splitting `;params` read it as the raw one.
    if normalized.contains(';') || escaped(b"%3B") || escaped(b"%2F") || escaped(b"%25") {
        return false;
    }
    patterns
        .iter()
        .any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => normalized.starts_with(prefix),
            None => normalized == pattern,
        })
}

/// Whether a path has a `.` or `..` segment, also spelled with `%2E`, or a backslash (which URL
/// parsers treat as `/`). Such a path could climb out of the prefix it is appended to.
pub fn has_dot_segment(path: &str) -> bool {
    path.contains('\\')
        || path.split('/').any(|segment| {
            let folded = segment.to_ascii_lowercase().replace("%2e", ".");
            folded == "." || folded == ".."
        })
}

/// Step 1: cut query and fragment, validate, decode unreserved and UTF-8 escapes once. A path
/// of plain ASCII without escapes is its own decoding and is borrowed.
fn decode(raw: &str) -> Option<Cow<'_, str>> {
    let path = raw.split(['?', '#']).next().unwrap_or_default();
    if !path.starts_with('/') {
        return None;
    }
    if path
        .bytes()
        .all(|b| b.is_ascii() && b != b'%' && !is_forbidden(b))
    {
        return Some(Cow::Borrowed(path));
    }
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if byte != b'%' {
            if is_forbidden(byte) {
                return None;
            }
            out.push(byte);
            i += 1;
            continue;
        }
        let value = hex_pair(bytes.get(i + 1..i + 3)?)?;
        if is_forbidden(value) {
            return None;
        }
        if is_unreserved(value) || value >= 0x80 {
            out.push(value);
        } else {
            // Reserved and other ASCII stay escaped, in one spelling.
            out.push(b'%');
            out.extend_from_slice(format!("{value:02X}").as_bytes());
        }
        i += 3;
    }
    let text = String::from_utf8(out).ok()?;
    // C1 controls (U+0080–U+009F) and the like arrive as valid UTF-8; refuse them too.
    (!text.chars().any(char::is_control)).then_some(Cow::Owned(text))
}

/// Whether [`resolve`] would leave `decoded` as it is: no `.` or `..` segment, and no empty
/// segment but the last (a trailing slash, or the root).
fn is_normal(decoded: &str) -> bool {
    let rest = decoded.strip_prefix('/').unwrap_or(decoded);
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if segment == "." || segment == ".." || (segment.is_empty() && !last) {
            return false;
        }
    }
    true
}

/// Step 2: resolve `.`/`..` as RFC 3986 §5.2.4 does (empty segments count), then merge the
/// empty segments that remain, keeping a trailing slash.
fn resolve(decoded: &str) -> String {
    let rest = decoded.strip_prefix('/').unwrap_or(decoded);
    let segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len().saturating_sub(1);
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    let mut trailing_slash = false;
    for (index, segment) in segments.into_iter().enumerate() {
        match segment {
            "." => trailing_slash = index == last,
            ".." => {
                out.pop();
                trailing_slash = index == last;
            }
            other => {
                out.push(other);
                trailing_slash = index == last && other.is_empty();
            }
        }
    }
    let kept: Vec<&str> = out.into_iter().filter(|s| !s.is_empty()).collect();
    let mut path = String::with_capacity(decoded.len());
    path.push('/');
    path.push_str(&kept.join("/"));
    if trailing_slash && !kept.is_empty() {
        path.push('/');
    }
    path
}

/// Bytes no path may carry, raw or encoded: controls, DEL and the backslash (which Windows
/// servers and some frameworks read as `/`).
fn is_forbidden(byte: u8) -> bool {
    byte < 0x20 || byte == 0x7f || byte == b'\\'
}

/// RFC 3986 unreserved: `ALPHA / DIGIT / "-" / "." / "_" / "~"`.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

fn hex_pair(pair: &[u8]) -> Option<u8> {
    let digit = |b: u8| (b as char).to_digit(16);
    match pair {
        [high, low] => Some(u8::try_from(digit(*high)? * 16 + digit(*low)?).ok()?),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
