//! The session cookie: its attributes, and reading it out of a `Cookie` header.
//!
//! Pure functions, so the parsing rules are tested apart from any I/O.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, header};

/// How the gateway's cookie is written.
#[derive(Clone, Debug)]
pub struct CookieSettings {
    /// Cookie name actually used (the `__Host-` prefix is dropped for plain-HTTP development,
    /// because browsers refuse `__Host-` cookies without `Secure`).
    pub name: String,
    /// Whether to set `Secure`.
    pub secure: bool,
}

impl CookieSettings {
    /// Derives the effective settings from the configured name and whether the public URL is
    /// plain HTTP.
    pub fn new(configured_name: &str, plain_http: bool) -> Self {
        if plain_http {
            let name = configured_name
                .strip_prefix("__Host-")
                .or_else(|| configured_name.strip_prefix("__Secure-"))
                .unwrap_or(configured_name);
            Self {
                name: name.to_owned(),
                secure: false,
            }
        } else {
            Self {
                name: configured_name.to_owned(),
                secure: true,
            }
        }
    }

    /// `Set-Cookie` value that stores `value`. `Max-Age` follows the absolute session lifetime
    /// so the browser drops it no later than the server does.
    pub fn set(&self, value: &str, max_age: Duration) -> HeaderValue {
        self.header(value, max_age.as_secs())
    }

    /// `Set-Cookie` value that removes the cookie.
    pub fn clear(&self) -> HeaderValue {
        self.header("", 0)
    }

    /// Name of the login-binding cookie, which ties a pending login to the browser that
    /// started it: the session cookie's name with `-login` appended (same prefix rules).
    pub fn login_name(&self) -> String {
        format!("{}-login", self.name)
    }

    /// `Set-Cookie` for the login-binding cookie, living as long as a pending login.
    pub fn set_login(&self, value: &str, max_age: Duration) -> HeaderValue {
        self.header_named(&self.login_name(), value, max_age.as_secs())
    }

    fn header(&self, value: &str, max_age: u64) -> HeaderValue {
        self.header_named(&self.name, value, max_age)
    }

    fn header_named(&self, name: &str, value: &str, max_age: u64) -> HeaderValue {
        let secure = if self.secure { "; Secure" } else { "" };
        let text = format!(
            "{}={}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{}",
            name, value, max_age, secure
        );
        // Names are validated at start-up and values are base64url, so this cannot fail; fall
        // back to an expiring cookie rather than panic.
        HeaderValue::from_str(&text)
            .unwrap_or_else(|_| HeaderValue::from_static("invalid=; Max-Age=0"))
    }
}

/// Finds the value of cookie `name` in every `Cookie` header of a request. When the same name
/// appears more than once (a cookie set for another path or a parent domain), the first one wins,
/// as browsers order the most specific first.
pub fn find_cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|line| line.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k.trim() == name).then(|| v.trim().trim_matches('"'))
        })
}

/// Rewrites a `Cookie` header value without cookie `name`; `None` when nothing is left.
/// Used so the gateway's own cookie never reaches an upstream.
pub fn without_cookie(line: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> = line
        .split(';')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .filter(|pair| pair.split_once('=').map_or(pair.trim(), |(k, _)| k.trim()) != name)
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn secure_cookie_has_every_attribute() {
        let s = CookieSettings::new("__Host-pleo-session", false);
        let v = s.set("abc", Duration::from_secs(60));
        assert_eq!(
            v.to_str().unwrap(),
            "__Host-pleo-session=abc; Path=/; Max-Age=60; HttpOnly; SameSite=Lax; Secure"
        );
    }

    #[test]
    fn plain_http_drops_secure_and_host_prefix() {
        let s = CookieSettings::new("__Host-pleo-session", true);
        assert_eq!(s.name, "pleo-session");
        assert!(!s.clear().to_str().unwrap().contains("Secure"));
        assert!(s.clear().to_str().unwrap().contains("Max-Age=0"));
    }

    #[test]
    fn finds_cookie_among_many_headers() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; b=2"));
        h.append(header::COOKIE, HeaderValue::from_static("sid=xyz; c=3"));
        assert_eq!(find_cookie(&h, "sid"), Some("xyz"));
        assert_eq!(find_cookie(&h, "b"), Some("2"));
        assert_eq!(find_cookie(&h, "s"), None);
        assert_eq!(find_cookie(&h, "xsid"), None);
    }

    #[test]
    fn strips_only_the_named_cookie() {
        assert_eq!(
            without_cookie("a=1; sid=x; b=2", "sid").as_deref(),
            Some("a=1; b=2")
        );
        assert_eq!(without_cookie("sid=x", "sid"), None);
        assert_eq!(without_cookie("sidx=1", "sid").as_deref(), Some("sidx=1"));
    }

    proptest! {
        #[test]
        fn stripped_line_never_contains_the_cookie(line in "[a-z=; ]{0,40}") {
            if let Some(rest) = without_cookie(&line, "sid") {
                let mut h = HeaderMap::new();
                h.insert(header::COOKIE, HeaderValue::from_str(&rest).unwrap());
                prop_assert_eq!(find_cookie(&h, "sid"), None);
            }
        }
    }
}
