//! End-to-end in a real headless Chromium, driven over WebDriver (chromedriver): the demo as a
//! newcomer sees it — log in, approve on the mock's consent page, see the identity the app
//! received and the employees fetched through `/pleo/v2/employees`, log out, and be asked to log
//! in again.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them).

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::{Value, json};

use crate::support::{eventually, require_program};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
const WAIT: Duration = Duration::from_secs(20);

/// Fails at once, with the install command, without Debian's Chromium and its driver.
fn require_chromium() {
    require_program(CHROMIUM, "chromium chromium-driver");
    require_program(CHROMEDRIVER, "chromium chromium-driver");
}

/// A child process killed on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a process and returns it with the first stdout line containing `marker`.
fn start_and_read_line(command: &mut Command, marker: &str) -> (Process, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    let stdout = child.stdout.take().expect("stdout");
    let process = Process(child);
    let (tx, rx) = std::sync::mpsc::channel();
    let wanted = marker.to_owned();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains(&wanted) {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx
        .recv_timeout(WAIT)
        .unwrap_or_else(|_| panic!("no line containing {marker:?} within {WAIT:?}"));
    (process, line)
}

/// A minimal WebDriver client: just the calls this scenario needs.
struct Browser {
    http: reqwest::Client,
    base: String,
    _driver: Process,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Self {
        require_chromium();
        let (driver, line) = start_and_read_line(
            Command::new(CHROMEDRIVER).arg("--port=0"),
            "started successfully on port",
        );
        let port: u16 = line
            .trim_end_matches('.')
            .rsplit(' ')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("chromedriver port");
        let profile = tempfile::tempdir().expect("profile dir");
        let mut browser = Self {
            http: reqwest::Client::new(),
            base: format!("http://127.0.0.1:{port}"),
            _driver: driver,
            _profile: profile,
        };
        let args = json!([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-quic",
            "--no-first-run",
            "--disable-component-update",
            "--disable-sync",
            format!("--user-data-dir={}", browser._profile.path().display()),
        ]);
        let created = browser
            .call(
                reqwest::Method::POST,
                "/session",
                json!({"capabilities": {"alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {"binary": CHROMIUM, "args": args}
                }}}),
            )
            .await;
        let session = created["sessionId"]
            .as_str()
            .expect("session id")
            .to_owned();
        browser.base = format!("{}/session/{session}", browser.base);
        browser
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if !body.is_null() {
            request = request.json(&body);
        }
        let response = request.send().await.expect("webdriver request");
        let value: Value = response.json().await.expect("webdriver json");
        value.get("value").cloned().unwrap_or(value)
    }

    async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", json!({ "url": url }))
            .await;
    }

    /// Waits until an element matching `css` exists, returning its id.
    async fn wait_for(&self, css: &str) -> String {
        eventually(&format!("an element {css:?}"), WAIT, async || {
            let found = self
                .call(
                    reqwest::Method::POST,
                    "/element",
                    json!({"using": "css selector", "value": css}),
                )
                .await;
            match found.get(ELEMENT_KEY).and_then(Value::as_str) {
                Some(id) => Ok(id.to_owned()),
                None => Err(format!("page text {:?}", self.page_text().await)),
            }
        })
        .await
    }

    async fn click(&self, css: &str) {
        let id = self.wait_for(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            json!({}),
        )
        .await;
    }

    async fn text(&self, css: &str) -> String {
        let id = self.wait_for(css).await;
        self.call(
            reqwest::Method::GET,
            &format!("/element/{id}/text"),
            Value::Null,
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    async fn page_text(&self) -> String {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            json!({"script": "return document.body ? document.body.innerText : ''", "args": []}),
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    async fn current_url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", Value::Null)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    async fn quit(self) {
        self.call(reqwest::Method::DELETE, "", Value::Null).await;
    }
}

#[tokio::test]
async fn demo_login_consent_api_call_and_logout_in_a_real_browser() {
    require_chromium();
    let (_demo, line) = start_and_read_line(
        Command::new(env!("CARGO_BIN_EXE_pleo-gateway"))
            .args(["demo", "--port", "0"])
            .env("RUST_LOG", "warn"),
        "open http://",
    );
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("demo URL")
        .to_owned();

    let browser = Browser::start().await;
    browser.goto(&url).await;
    browser.click("#login").await;

    // The mock's consent page, on the mock's own origin.
    browser.wait_for("button.approve").await;
    assert!(
        !browser.current_url().await.starts_with(&url),
        "consent happens at the authorisation server, not the gateway"
    );
    browser.click("button.approve").await;

    // Back in the demo app, behind the gateway: the app shows the identity headers it received.
    let subject = browser.text("#subject").await;
    assert!(
        subject.starts_with("urn:pleo:company:"),
        "X-Pleo-Subject shown by the app after login: {subject:?}"
    );
    let scopes = browser.text("#scopes").await;
    assert!(scopes.contains("users:read"), "X-Pleo-Scopes: {scopes:?}");
    browser.click("#employees").await;
    let table = browser.text("#employee-table").await;
    assert!(
        table.contains("Astrid"),
        "employees from /pleo/v2/employees: {table:?}"
    );

    // Logging out sends the app page back through login: the consent page asks again.
    browser.click("#logout").await;
    browser.wait_for("button.approve").await;
    assert!(
        !browser.current_url().await.starts_with(&url),
        "after logout the app asks for a login at the authorisation server"
    );
    browser.quit().await;
}
