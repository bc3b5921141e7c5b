//! Forward-auth behind Debian's nginx, configured with the README's example exactly as written:
//! the ```nginx block of the "Forward-auth" part is read from README.md (no second copy here),
//! its gateway and app addresses are swapped for this test's, and it is wrapped in the minimum
//! an nginx.conf needs. Behind nginx: the gateway without `proxy.upstream` and a tiny app that
//! records every request it gets. The point is what the app receives: the identity headers and
//! its own cookies, never the gateway's session cookie (a credential for the Pleo prefix).
//!
//! Needs Debian's `nginx` package (`/usr/sbin/nginx`); without it the tests fail at once.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, Method, Uri},
};
use reqwest::{StatusCode, header};
use tokio::{net::TcpListener, task::JoinHandle};

use crate::support::{
    Browser, Options, PATIENCE, SESSION_COOKIE, StoreKind, TestEnv, eventually, json_body,
    require_program,
};

const NGINX: &str = "/usr/sbin/nginx";
/// The addresses the README's example proxies to.
const README_GATEWAY: &str = "127.0.0.1:8080";
const README_APP: &str = "127.0.0.1:3000";

// ---------------------------------------------------------------------------------------------
// The README's example
// ---------------------------------------------------------------------------------------------

/// The ```nginx block of the README's forward-auth part.
fn readme_nginx_block() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let readme = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let part = &readme[readme
        .find("**Forward-auth**")
        .expect("README.md has a **Forward-auth** part")..];
    let fence = "```nginx\n";
    let start = part
        .find(fence)
        .expect("the forward-auth part has an ```nginx block")
        + fence.len();
    let end = start
        + part[start..]
            .find("\n```")
            .expect("the ```nginx block is closed");
    part[start..end].to_owned()
}

/// The top-level items of an nginx configuration fragment (`directive ...;` or `name ... { }`),
/// comments removed. Quotes are honoured, so braces or `#` inside a quoted regex do not count.
fn top_level_items(conf: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut current = String::new();
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut chars = conf.chars().peekable();
    while let Some(c) = chars.next() {
        if let Some(q) = quote {
            current.push(c);
            if c == '\\' {
                if let Some(escaped) = chars.next() {
                    current.push(escaped);
                }
            } else if c == q {
                quote = None;
            }
            continue;
        }
        let at_token_start = current
            .chars()
            .last()
            .is_none_or(|p| p.is_whitespace() || matches!(p, ';' | '{' | '}'));
        match c {
            '#' if at_token_start => {
                // A comment runs to the end of the line.
                for skipped in chars.by_ref() {
                    if skipped == '\n' {
                        current.push('\n');
                        break;
                    }
                }
            }
            '"' | '\'' => {
                quote = Some(c);
                current.push(c);
            }
            '{' => {
                depth += 1;
                current.push(c);
            }
            '}' => {
                depth = depth
                    .checked_sub(1)
                    .expect("unbalanced } in the nginx block");
                current.push(c);
                if depth == 0 {
                    items.push(std::mem::take(&mut current).trim().to_owned());
                }
            }
            ';' if depth == 0 => {
                current.push(c);
                items.push(std::mem::take(&mut current).trim().to_owned());
            }
            _ => current.push(c),
        }
    }
    assert!(quote.is_none(), "unclosed quote in the nginx block");
    assert_eq!(depth, 0, "unbalanced {{ in the nginx block");
    assert!(
        current.trim().is_empty(),
        "trailing text in the nginx block: {current:?}"
    );
    items
}

/// Splits the example into what goes in `http {}` (the `map`s) and what goes in its `server {}`
/// block (the inside of the one `server` block; bare `location`s count as server parts too).
fn http_and_server_parts(block: &str) -> (String, String) {
    let mut http = Vec::new();
    let mut server = Vec::new();
    let mut server_blocks = 0;
    for item in top_level_items(block) {
        let is_server = item
            .strip_prefix("server")
            .is_some_and(|rest| rest.trim_start().starts_with('{'));
        if is_server {
            server_blocks += 1;
            let open = item.find('{').expect("server {");
            let close = item.rfind('}').expect("server }");
            server.push(item[open + 1..close].to_owned());
        } else if item.starts_with("location") {
            server.push(item);
        } else {
            http.push(item);
        }
    }
    assert!(
        server_blocks <= 1,
        "the README's nginx block has {server_blocks} server blocks; expected one"
    );
    assert!(
        !server.is_empty(),
        "the README's nginx block has no locations"
    );
    (http.join("\n"), server.join("\n"))
}

// ---------------------------------------------------------------------------------------------
// nginx, the app, and the whole stack
// ---------------------------------------------------------------------------------------------

/// An nginx child process (single process, foreground), killed on drop.
struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// Runs the README's example in front of `gateway` and `app`, listening on a free port;
    /// returns once that port accepts connections.
    async fn start(gateway: SocketAddr, app: SocketAddr) -> (Nginx, SocketAddr) {
        require_program(NGINX, "nginx");
        let block = readme_nginx_block();
        for address in [README_GATEWAY, README_APP] {
            assert!(
                block.contains(address),
                "the README's nginx block no longer uses {address}; update this test"
            );
        }
        let block = block
            .replace(README_GATEWAY, &gateway.to_string())
            .replace(README_APP, &app.to_string());
        let (http_part, server_part) = http_and_server_parts(&block);

        let listen = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("probe a free port");
            probe.local_addr().expect("probe address")
        };
        let dir = tempfile::tempdir().expect("nginx dir");
        let d = dir.path().display();
        let conf = format!(
            "daemon off;\n\
             master_process off;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log info;\n\
             events {{}}\n\
             http {{\n\
             access_log {d}/access.log;\n\
             client_body_temp_path {d}/client_body;\n\
             proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n\
             uwsgi_temp_path {d}/uwsgi;\n\
             scgi_temp_path {d}/scgi;\n\
             {http_part}\n\
             server {{\n\
             listen {listen};\n\
             {server_part}\n\
             }}\n\
             }}\n"
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, &conf).expect("write nginx.conf");
        let child = Command::new(NGINX)
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {NGINX}: {e}"));
        let mut nginx = Nginx { child, dir };

        eventually(
            &format!("nginx to listen on {listen}"),
            PATIENCE,
            async || {
                if let Some(status) = nginx.child.try_wait().expect("nginx status") {
                    panic!(
                        "nginx exited ({status}) with this configuration:\n{conf}\nerror log:\n{}",
                        nginx.error_log()
                    );
                }
                match tokio::net::TcpStream::connect(listen).await {
                    Ok(_) => Ok(()),
                    Err(e) => Err(format!("{e}; error log:\n{}", nginx.error_log())),
                }
            },
        )
        .await;
        (nginx, listen)
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request as the app received it.
#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl Seen {
    /// Every value of header `name`, as text.
    fn values(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    /// The one value of header `name`, if any (two are a failure).
    fn one(&self, name: &str) -> Option<String> {
        let values = self.values(name);
        assert!(values.len() <= 1, "the app got {name} twice: {values:?}");
        values.into_iter().next()
    }
}

type Log = Arc<Mutex<Vec<Seen>>>;

async fn record(
    State(log): State<Log>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> &'static str {
    log.lock().expect("app log").push(Seen {
        method,
        uri,
        headers,
        body,
    });
    "app"
}

/// The gateway (forward-auth mode) and mock Pleo, the app, nginx in front, and a logged-in
/// user's session id.
struct Stack {
    env: TestEnv,
    http: reqwest::Client,
    nginx_url: String,
    session: String,
    app_log: Log,
    app_task: JoinHandle<()>,
    _nginx: Nginx,
}

impl Stack {
    async fn start() -> Stack {
        // Fail before anything else starts when nginx is missing.
        require_program(NGINX, "nginx");
        let env = TestEnv::start(Options::new(StoreKind::Memory)).await;
        // The login goes to the gateway itself: the mock's redirect_uri is fixed to it.
        let browser: Browser = env.browser();
        browser.login().await;
        let session = browser
            .cookie(SESSION_COOKIE)
            .expect("a session cookie after login");

        let app_log: Log = Arc::default();
        let app_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
        let app_addr = app_listener.local_addr().expect("app address");
        let app = Router::new()
            .fallback(record)
            .with_state(Arc::clone(&app_log));
        let app_task = tokio::spawn(async move {
            let _ = axum::serve(app_listener, app).await;
        });

        let gateway_addr: SocketAddr = format!(
            "{}:{}",
            env.gateway_url.host_str().expect("gateway host"),
            env.gateway_url.port().expect("gateway port")
        )
        .parse()
        .expect("gateway address");
        let (nginx, nginx_addr) = Nginx::start(gateway_addr, app_addr).await;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(PATIENCE)
            .build()
            .expect("reqwest client");
        Stack {
            env,
            http,
            nginx_url: format!("http://{nginx_addr}"),
            session,
            app_log,
            app_task,
            _nginx: nginx,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.nginx_url)
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(self.url(path))
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.post(self.url(path))
    }

    /// `name=value` of the session cookie.
    fn session_pair(&self) -> String {
        format!("{SESSION_COOKIE}={}", self.session)
    }

    /// How many requests the app has received so far.
    fn app_count(&self) -> usize {
        self.app_log.lock().expect("app log").len()
    }

    /// The last request the app received.
    fn last_seen(&self) -> Seen {
        self.app_log
            .lock()
            .expect("app log")
            .last()
            .cloned()
            .expect("the app received a request")
    }

    /// The subject and scopes the gateway holds for the session, asked through nginx's
    /// `/auth/` location (which must pass the session cookie to the gateway).
    async fn identity(&self) -> (String, String) {
        let response = self
            .get("/auth/session")
            .header(header::COOKIE, self.session_pair())
            .send()
            .await
            .expect("GET /auth/session through nginx");
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "/auth/ reaches the gateway"
        );
        let info = json_body(response).await;
        let subject = info["subject"].as_str().expect("subject").to_owned();
        let scopes = info["scopes"]
            .as_array()
            .expect("scopes")
            .iter()
            .map(|s| s.as_str().expect("scope").to_owned())
            .collect::<Vec<_>>()
            .join(" ");
        (subject, scopes)
    }

    /// The session cookie's name and value appear in no header the app received, in any
    /// request so far.
    fn assert_app_never_saw_the_session(&self) {
        let log = self.app_log.lock().expect("app log");
        for seen in log.iter() {
            for (name, value) in &seen.headers {
                let value = String::from_utf8_lossy(value.as_bytes()).to_ascii_lowercase();
                assert!(
                    !value.contains(&self.session.to_ascii_lowercase())
                        && !value.contains(SESSION_COOKIE),
                    "the app got the gateway's session cookie in {name}: {value} ({} {})",
                    seen.method,
                    seen.uri
                );
                assert!(
                    !name.as_str().contains(SESSION_COOKIE),
                    "the app got a header named after the session cookie: {name}"
                );
            }
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.app_task.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// The scenarios
// ---------------------------------------------------------------------------------------------

/// A logged-in request reaches the app with the identity headers and the app's own cookies,
/// and without the session cookie, wherever it sits in the `Cookie` header(s); the gateway's
/// own paths still get it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readme_nginx_example_keeps_the_session_cookie_from_the_app() {
    let stack = Stack::start().await;
    let (subject, scopes) = stack.identity().await;
    assert!(subject.starts_with("urn:pleo:"), "a subject URN: {subject}");
    assert!(!scopes.is_empty(), "granted scopes");
    let s = stack.session_pair();

    // The plain case, with identity headers the client tried to set itself.
    let response = stack
        .get("/dashboard?tab=1")
        .header(header::COOKIE, format!("{s}; theme=dark"))
        .header("X-Pleo-Subject", "urn:pleo:company:spoofed")
        .header("X-Pleo-Scopes", "everything:write")
        .header("X-Pleo-Identity", "forged.assertion.value")
        .send()
        .await
        .expect("GET /dashboard through nginx");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "app");
    let seen = stack.last_seen();
    assert_eq!(seen.method, Method::GET);
    assert_eq!(seen.uri.to_string(), "/dashboard?tab=1");
    assert_eq!(
        seen.one("x-pleo-subject").as_deref(),
        Some(subject.as_str())
    );
    assert_eq!(seen.one("x-pleo-scopes").as_deref(), Some(scopes.as_str()));
    // The signed identity from the check replaces the client's: a compact JWS of three parts.
    let identity = seen.one("x-pleo-identity").unwrap_or_default();
    assert_ne!(identity, "forged.assertion.value");
    assert_eq!(identity.split('.').count(), 3, "{identity}");
    assert_eq!(seen.one("cookie").as_deref(), Some("theme=dark"));
    stack.assert_app_never_saw_the_session();

    // Wherever the session cookie sits, and under either of its names.
    let cases: &[(String, Option<&str>)] = &[
        (
            format!("{s}; theme=dark; lang=da"),
            Some("theme=dark; lang=da"),
        ),
        (
            format!("theme=dark; {s}; lang=da"),
            Some("theme=dark; lang=da"),
        ),
        (
            format!("theme=dark; lang=da; {s}"),
            Some("theme=dark; lang=da"),
        ),
        (s.clone(), None),
        (format!("{s}; theme=dark; {s}"), Some("theme=dark")),
        (format!("{s}; theme=dark; __Host-{s}"), Some("theme=dark")),
        (
            format!("theme=dark;{s};lang=da"),
            Some("theme=dark;lang=da"),
        ),
        (format!(" {s} ; theme=dark"), Some("theme=dark")),
        // Three copies: every cookie goes rather than one of them leaking.
        (format!("{s}; a=1; {s}; b=2; {s}"), None),
    ];
    for (cookie, expected) in cases {
        let before = stack.app_count();
        let response = stack
            .get("/dashboard")
            .header(header::COOKIE, cookie.as_str())
            .send()
            .await
            .expect("GET /dashboard through nginx");
        assert_eq!(response.status(), StatusCode::OK, "Cookie: {cookie}");
        assert_eq!(stack.app_count(), before + 1, "Cookie: {cookie}");
        let seen = stack.last_seen();
        assert_eq!(
            seen.one("cookie").as_deref(),
            *expected,
            "the app's Cookie for Cookie: {cookie}"
        );
        assert_eq!(
            seen.one("x-pleo-subject").as_deref(),
            Some(subject.as_str()),
            "Cookie: {cookie}"
        );
        stack.assert_app_never_saw_the_session();
    }

    // Two Cookie header lines, the session in the second.
    let response = stack
        .get("/dashboard")
        .header(header::COOKIE, "theme=dark")
        .header(header::COOKIE, s.as_str())
        .send()
        .await
        .expect("GET /dashboard through nginx");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        stack.last_seen().one("cookie").as_deref(),
        Some("theme=dark")
    );
    stack.assert_app_never_saw_the_session();

    // The Pleo prefix goes to the gateway, which still gets the cookie (and the app nothing).
    let before = stack.app_count();
    let response = stack
        .get("/pleo/echo/whoami")
        .header(header::COOKIE, format!("theme=dark; {s}"))
        .send()
        .await
        .expect("GET /pleo/echo/whoami through nginx");
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "/pleo/ reaches the gateway"
    );
    assert_eq!(stack.app_count(), before, "the app got a /pleo/ request");
}

/// Without a live session the check says 401 and nginx redirects to the gateway's login; the
/// app is never asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readme_nginx_example_sends_a_request_without_a_session_to_login() {
    let stack = Stack::start().await;
    for cookie in [
        None,
        Some("theme=dark".to_owned()),
        Some(format!("{SESSION_COOKIE}=not-a-session; theme=dark")),
    ] {
        let mut request = stack.get("/dashboard?tab=1");
        if let Some(cookie) = &cookie {
            request = request.header(header::COOKIE, cookie.as_str());
        }
        let response = request.send().await.expect("GET /dashboard through nginx");
        assert_eq!(response.status(), StatusCode::FOUND, "Cookie: {cookie:?}");
        let location = response
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .expect("a Location");
        // nginx makes the example's relative redirect absolute (`absolute_redirect`).
        assert_eq!(
            location.strip_prefix(&stack.nginx_url).unwrap_or(location),
            "/auth/login?return_to=/dashboard?tab=1",
            "Cookie: {cookie:?}"
        );
    }
    assert_eq!(
        stack.app_count(),
        0,
        "the app was reached without a session"
    );

    // The login URL itself is served by the gateway through nginx.
    let response = stack
        .get("/auth/login?return_to=/dashboard")
        .send()
        .await
        .expect("GET /auth/login through nginx");
    assert_eq!(response.status(), StatusCode::FOUND);
    let location = response
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .expect("a Location")
        .to_owned();
    assert!(
        location.starts_with(stack.env.mock_url.as_str()),
        "/auth/login redirects to Pleo: {location}"
    );
    assert_eq!(stack.app_count(), 0);
}

/// An unsafe method with the session cookie but without `X-CSRF` or the browser's same-origin
/// word is refused before the app sees it, whatever method headers the client adds; with
/// `X-CSRF` it goes through, body and all, without the session cookie.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readme_nginx_example_applies_the_csrf_rule_to_unsafe_methods() {
    let stack = Stack::start().await;
    let (subject, _) = stack.identity().await;
    let cookie = format!("theme=dark; {}", stack.session_pair());

    let refused = [
        stack.post("/dashboard"),
        stack
            .post("/dashboard")
            .header("X-Original-Method", "GET")
            .header("X-Forwarded-Method", "GET"),
        stack
            .post("/dashboard")
            .header("Sec-Fetch-Site", "cross-site")
            .header(header::ORIGIN, "https://evil.example"),
    ];
    for request in refused {
        let response = request
            .header(header::COOKIE, cookie.as_str())
            .body("hello")
            .send()
            .await
            .expect("POST /dashboard through nginx");
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }
    assert_eq!(stack.app_count(), 0, "a refused POST reached the app");

    let response = stack
        .post("/dashboard")
        .header(header::COOKIE, cookie.as_str())
        .header("X-CSRF", "1")
        .body("hello")
        .send()
        .await
        .expect("POST /dashboard through nginx");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(stack.app_count(), 1);
    let seen = stack.last_seen();
    assert_eq!(seen.method, Method::POST);
    assert_eq!(&seen.body[..], b"hello");
    assert_eq!(
        seen.one("x-pleo-subject").as_deref(),
        Some(subject.as_str())
    );
    assert_eq!(seen.one("cookie").as_deref(), Some("theme=dark"));
    stack.assert_app_never_saw_the_session();
}
