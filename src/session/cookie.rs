//! The gateway's cookies: the session cookie and the pending-login cookies, their attributes,
//! and reading them out of (or stripping them from) a `Cookie` header.
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
    /// The name as configured (with its `__Host-` prefix even on plain HTTP), which is
    /// stripped before requests reach the app too.
    pub configured_name: String,
    /// Start of every pending-login cookie's name (see [`CookieSettings::login_name`]).
    login_prefix: String,
    /// Name of the browser-binding cookie (see [`CookieSettings::binding_name`]).
    binding: String,
}

impl CookieSettings {
    /// Derives the effective settings from the configured name and whether the public URL is
    /// plain HTTP.
    pub fn new(configured_name: &str, plain_http: bool) -> Self {
        let bare = configured_name
            .strip_prefix("__Host-")
            .or_else(|| configured_name.strip_prefix("__Secure-"))
            .unwrap_or(configured_name);
        // Pending-login cookies are scoped to `/auth/` so that they never travel with requests
        // for the app; `__Host-` forbids a path, so over HTTPS they take `__Secure-` instead.
        let login_prefix = if plain_http {
            format!("{bare}-login-")
        } else {
            format!("__Secure-{bare}-login-")
        };
        let name = if plain_http { bare } else { configured_name };
        Self {
            name: name.to_owned(),
            secure: !plain_http,
            configured_name: configured_name.to_owned(),
            login_prefix,
            binding: format!("{name}-login"),
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

    /// Name of the pending-login cookie for the login whose `state` has tag `tag`: one cookie
    /// per login in progress, so several tabs can log in at once.
    pub fn login_name(&self, tag: &str) -> String {
        format!("{}{tag}", self.login_prefix)
    }

    /// The tag of a pending-login cookie name, if `name` is one.
    pub fn login_tag<'a>(&self, name: &'a str) -> Option<&'a str> {
        name.strip_prefix(self.login_prefix.as_str())
    }

    /// `Set-Cookie` for a pending-login cookie, living as long as the login may take.
    pub fn set_login(&self, tag: &str, value: &str, max_age: Duration) -> HeaderValue {
        self.header_at(&self.login_name(tag), value, max_age.as_secs(), LOGIN_PATH)
    }

    /// Name of the browser-binding cookie that ties pending logins to this browser: the session
    /// cookie's name with `-login` appended (so `__Host-` over HTTPS: no sibling subdomain can
    /// set it).
    pub fn binding_name(&self) -> &str {
        &self.binding
    }

    /// `Set-Cookie` for the browser-binding cookie (`Path=/`, as `__Host-` requires).
    pub fn set_binding(&self, value: &str, max_age: Duration) -> HeaderValue {
        self.header_at(&self.binding, value, max_age.as_secs(), "/")
    }

    /// `Set-Cookie` that removes the browser-binding cookie.
    pub fn clear_binding(&self) -> HeaderValue {
        self.header_at(&self.binding, "", 0, "/")
    }

    /// `Set-Cookie` that removes a pending-login cookie.
    pub fn clear_login(&self, tag: &str) -> HeaderValue {
        self.header_at(&self.login_name(tag), "", 0, LOGIN_PATH)
    }

    /// Whether a cookie of this name belongs to the gateway (the session cookie under its
    /// effective or configured name, a pending-login cookie, or the browser-binding cookie):
    /// such cookies never reach the app.
    pub fn is_gateway_cookie(&self, name: &str) -> bool {
        // Case-insensitive: browsers match the `__Host-`/`__Secure-` prefixes without regard to
        // case, so a differently cased copy could still shadow ours.
        let prefix = self.login_prefix.as_bytes();
        name.eq_ignore_ascii_case(&self.name)
            || name.eq_ignore_ascii_case(&self.configured_name)
            || name
                .as_bytes()
                .get(..prefix.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
            || name.eq_ignore_ascii_case(&self.binding)
    }

    fn header(&self, value: &str, max_age: u64) -> HeaderValue {
        self.header_at(&self.name, value, max_age, "/")
    }

    fn header_at(&self, name: &str, value: &str, max_age: u64, path: &str) -> HeaderValue {
        let secure = if self.secure { "; Secure" } else { "" };
        let text = format!(
            "{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}"
        );
        // Names are validated at start-up and values are base64url, so this cannot fail; fall
        // back to an expiring cookie rather than panic.
        HeaderValue::from_str(&text)
            .unwrap_or_else(|_| HeaderValue::from_static("invalid=; Max-Age=0"))
    }
}

/// Path of the pending-login cookies: `/auth/login` counts them, `/auth/callback` reads one.
const LOGIN_PATH: &str = "/auth/";

/// Every `name=value` pair of every `Cookie` header, trimmed, in order.
pub fn cookie_pairs(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|line| line.split(';'))
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((k.trim(), v.trim().trim_matches('"')))
        })
}

/// Finds the value of cookie `name` in every `Cookie` header of a request. When the same name
/// appears more than once (a cookie set for another path or a parent domain), the first one wins,
/// as browsers order the most specific first.
pub fn find_cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    cookie_pairs(headers).find_map(|(k, v)| (k == name).then_some(v))
}

/// Rewrites a `Cookie` header value without cookie `name`; `None` when nothing is left.
/// Used so the gateway's own cookie never reaches an upstream.
pub fn without_cookie(line: &str, name: &str) -> Option<String> {
    without_cookies(line, |candidate| candidate == name)
}

/// Rewrites a `Cookie` header value without every cookie whose name `drop` selects; `None`
/// when nothing is left.
pub fn without_cookies(line: &str, drop: impl Fn(&str) -> bool) -> Option<String> {
    let kept: Vec<&str> = line
        .split(';')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .filter(|pair| !drop(pair.split_once('=').map_or(*pair, |(k, _)| k.trim())))
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

    #[test]
    fn login_cookies_are_scoped_to_auth_and_recognised() {
        let s = CookieSettings::new("__Host-pleo-session", false);
        let name = s.login_name("abc");
        assert_eq!(name, "__Secure-pleo-session-login-abc");
        assert_eq!(s.login_tag(&name), Some("abc"));
        let set = s.set_login("abc", "v", Duration::from_secs(600));
        assert_eq!(
            set.to_str().unwrap(),
            "__Secure-pleo-session-login-abc=v; Path=/auth/; Max-Age=600; HttpOnly; SameSite=Lax; Secure"
        );
        for ours in [
            "__Host-pleo-session",
            "__Secure-pleo-session-login-abc",
            "__Host-pleo-session-login",
        ] {
            assert!(s.is_gateway_cookie(ours), "{ours}");
        }
        assert!(!s.is_gateway_cookie("pleo-session-x"));
        let plain = CookieSettings::new("__Host-pleo-session", true);
        assert_eq!(plain.login_name("t"), "pleo-session-login-t");
        assert!(plain.is_gateway_cookie("__Host-pleo-session"));
        assert!(plain.is_gateway_cookie("pleo-session"));
        assert!(!plain.clear_login("t").to_str().unwrap().contains("Secure"));
    }

    #[test]
    fn strips_every_selected_cookie() {
        assert_eq!(
            without_cookies("a=1; sid=x; sid-login-1=y; b=2", |n| n.starts_with("sid")).as_deref(),
            Some("a=1; b=2")
        );
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
