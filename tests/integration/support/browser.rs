//! A client that behaves like a browser towards the gateway, and the helpers for reading what
//! the gateway answered it.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::Duration,
};

use reqwest::{Method, StatusCode, header};
use url::Url;

/// A client that behaves like a browser towards the gateway: it keeps the cookies the gateway
/// sets and sends them back, and never follows redirects by itself.
pub struct Browser {
    http: reqwest::Client,
    gateway: Url,
    cookies: Mutex<BTreeMap<String, String>>,
}

/// The steps of one login, for tests that look at them.
#[derive(Debug)]
pub struct LoginTrip {
    /// Where the gateway sent the browser (Pleo's authorize endpoint with every parameter).
    pub authorize_url: Url,
    /// Where the mock sent the browser back (the gateway's callback with code and state).
    pub callback_url: Url,
}

impl Browser {
    /// A browser with an empty cookie jar, talking to the gateway at `gateway`.
    pub fn new(gateway: Url) -> Self {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(60))
            .build()
            .expect("reqwest client");
        Self {
            http,
            gateway,
            cookies: Mutex::new(BTreeMap::new()),
        }
    }

    /// An absolute URL, or a path on the gateway.
    pub fn url(&self, path_or_url: &str) -> Url {
        Url::parse(path_or_url)
            .or_else(|_| self.gateway.join(path_or_url))
            .expect("a valid URL or gateway path")
    }

    /// A request builder for `method` on a gateway path or absolute URL.
    pub fn request(&self, method: Method, path_or_url: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path_or_url))
    }

    /// `GET` on a gateway path or absolute URL.
    pub fn get(&self, path_or_url: &str) -> reqwest::RequestBuilder {
        self.request(Method::GET, path_or_url)
    }

    /// `POST` on a gateway path or absolute URL.
    pub fn post(&self, path_or_url: &str) -> reqwest::RequestBuilder {
        self.request(Method::POST, path_or_url)
    }

    /// Sends a request, attaching the cookie jar when it goes to the gateway (unless the test
    /// set its own `Cookie`), and takes in any `Set-Cookie` the gateway answers with.
    pub async fn send(&self, builder: reqwest::RequestBuilder) -> reqwest::Response {
        let mut request = builder.build().expect("a well-formed request");
        let to_gateway = request.url().origin() == self.gateway.origin();
        if to_gateway
            && !request.headers().contains_key(header::COOKIE)
            && let Some(line) = self.cookie_header()
        {
            request
                .headers_mut()
                .insert(header::COOKIE, line.parse().expect("cookie header value"));
        }
        let response = self.http.execute(request).await.expect("request sent");
        if to_gateway {
            self.absorb_set_cookies(&response);
        }
        response
    }

    /// The `Cookie` line the jar would send.
    pub fn cookie_header(&self) -> Option<String> {
        let jar = self.cookies.lock().expect("jar lock");
        (!jar.is_empty()).then(|| {
            jar.iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    /// The value of cookie `name` in the jar.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.cookies.lock().expect("jar lock").get(name).cloned()
    }

    /// A browser talking to `gateway` with a copy of this one's cookies.
    pub fn clone_to(&self, gateway: Url) -> Self {
        let browser = Self::new(gateway);
        *browser.cookies.lock().expect("jar lock") = self.cookies.lock().expect("jar lock").clone();
        browser
    }

    /// The pending-login cookies in the jar (name and value), one per login in progress.
    pub fn pending_logins(&self) -> Vec<(String, String)> {
        self.cookies
            .lock()
            .expect("jar lock")
            .iter()
            .filter(|(name, _)| name.starts_with(LOGIN_COOKIE_PREFIX))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect()
    }

    /// Puts a cookie in the jar (to plant one before login, say).
    pub fn set_cookie(&self, name: &str, value: &str) {
        self.cookies
            .lock()
            .expect("jar lock")
            .insert(name.to_owned(), value.to_owned());
    }

    fn absorb_set_cookies(&self, response: &reqwest::Response) {
        let mut jar = self.cookies.lock().expect("jar lock");
        for line in response.headers().get_all(header::SET_COOKIE) {
            let Ok(line) = line.to_str() else { continue };
            let cookie = SetCookie::parse(line);
            if cookie.value.is_empty() || cookie.max_age == Some(0) {
                jar.remove(&cookie.name);
            } else {
                jar.insert(cookie.name, cookie.value);
            }
        }
    }

    /// `GET /auth/login?{query}` → the authorize URL the gateway redirects to.
    pub async fn begin_login(&self, query: &str) -> Url {
        let path = if query.is_empty() {
            "/auth/login".to_owned()
        } else {
            format!("/auth/login?{query}")
        };
        let response = self.send(self.get(&path)).await;
        assert_eq!(
            response.status(),
            StatusCode::FOUND,
            "/auth/login must redirect"
        );
        location(&response)
    }

    /// Follows the authorize URL at the (auto-approving) mock → the callback URL it redirects to.
    pub async fn authorize(&self, authorize_url: &Url) -> Url {
        let response = self.send(self.get(authorize_url.as_str())).await;
        assert_eq!(
            response.status(),
            StatusCode::FOUND,
            "the mock must redirect back: {:?}",
            response.text().await
        );
        location(&response)
    }

    /// Whole login: `/auth/login?{query}` → Pleo → `/auth/callback`; returns the callback's
    /// response (cookie already taken in) and the URLs on the way.
    pub async fn login_with(&self, query: &str) -> (reqwest::Response, LoginTrip) {
        let authorize_url = self.begin_login(query).await;
        let callback_url = self.authorize(&authorize_url).await;
        let response = self.send(self.get(callback_url.as_str())).await;
        (
            response,
            LoginTrip {
                authorize_url,
                callback_url,
            },
        )
    }

    /// Logs in and checks it worked (302 with a session cookie).
    pub async fn login(&self) -> reqwest::Response {
        let (response, _) = self.login_with("").await;
        assert_eq!(
            response.status(),
            StatusCode::FOUND,
            "the callback must redirect"
        );
        assert!(
            session_set_cookie(&response).is_some(),
            "the callback must set the session cookie"
        );
        response
    }
}

/// A parsed `Set-Cookie` line (only what the tests look at).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetCookie {
    /// Cookie name.
    pub name: String,
    /// Cookie value.
    pub value: String,
    /// `Max-Age`, when present.
    pub max_age: Option<u64>,
    /// The attributes after the value, as sent.
    pub attributes: Vec<String>,
}

impl SetCookie {
    /// Parses `name=value; Attr; Attr=x`.
    pub fn parse(line: &str) -> Self {
        let mut parts = line.split(';').map(str::trim);
        let (name, value) = parts
            .next()
            .and_then(|pair| pair.split_once('='))
            .unwrap_or((line, ""));
        let attributes: Vec<String> = parts.map(str::to_owned).collect();
        let max_age = attributes.iter().find_map(|attribute| {
            let (key, value) = attribute.split_once('=')?;
            key.eq_ignore_ascii_case("max-age")
                .then(|| value.trim().parse().ok())
                .flatten()
        });
        Self {
            name: name.trim().to_owned(),
            value: value.trim().to_owned(),
            max_age,
            attributes,
        }
    }
}

/// The gateway's session cookie name with a plain-http `public_url` (no `__Host-` prefix).
pub const SESSION_COOKIE: &str = "pleo-session";
/// The start of a pending-login cookie's name (plain http); the rest is a tag of its `state`.
pub const LOGIN_COOKIE_PREFIX: &str = "pleo-session-login-";

/// The `Set-Cookie` of the session cookie in `response`, if any.
pub fn session_set_cookie(response: &reqwest::Response) -> Option<SetCookie> {
    set_cookie_named(response, SESSION_COOKIE)
}

/// The `Set-Cookie` of cookie `name` in `response`, if any.
pub fn set_cookie_named(response: &reqwest::Response, name: &str) -> Option<SetCookie> {
    response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(SetCookie::parse)
        .find(|cookie| cookie.name == name)
}

/// The `Location` of a redirect, resolved against the request URL.
pub fn location(response: &reqwest::Response) -> Url {
    let value = response
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .expect("a Location header");
    response.url().join(value).expect("a valid Location")
}

/// The query parameters of `url` (the last value of a repeated one wins).
pub fn query_map(url: &Url) -> HashMap<String, String> {
    url.query_pairs().into_owned().collect()
}

/// Reads a JSON body, with the status and raw text in the panic message when it is not JSON.
pub async fn json_body(response: reqwest::Response) -> serde_json::Value {
    let status = response.status();
    let text = response.text().await.expect("response body");
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("expected JSON ({status}), got {e}: {text}"))
}

/// The bearer token the gateway currently sends, as Pleo's echo endpoint saw it.
pub async fn bearer_seen_by_pleo(browser: &Browser) -> String {
    let response = browser.send(browser.get("/pleo/echo/whoami")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let echo = json_body(response).await;
    echo["headers"]["authorization"]
        .as_str()
        .and_then(|v| v.strip_prefix("Bearer "))
        .expect("a bearer token")
        .to_owned()
}

/// Sends `count` GETs of `path` all at once, spread round-robin over `browsers` (one per
/// replica, say), and returns every status in order.
pub async fn burst(browsers: &[&Browser], count: usize, path: &str) -> Vec<StatusCode> {
    let requests = (0..count).map(|i| {
        let browser = browsers[i % browsers.len()];
        async move { browser.send(browser.get(path)).await.status() }
    });
    futures_util::future::join_all(requests).await
}
