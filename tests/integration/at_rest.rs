//! What Redis holds and for how long: no token or usable cookie in any key, value or command,
//! records sealed under the configured keys (rotation without logging anyone out), and the idle
//! and absolute timeouts enforced.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD},
};
use futures_util::StreamExt;
use reqwest::StatusCode;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::support::{
    Browser, Options, PATIENCE, RedisServer, SESSION_COOKIE, StoreKind, TestEnv,
    bearer_seen_by_pleo, eventually, json_body, query_map, random_b64, redis_url, sha256_hex,
    wait_until_refresh_due,
};

/// Access tokens live 4 s; a refresh is due 2 s after each is issued.
const TOKEN_TTL: Duration = Duration::from_secs(4);
const MARGIN: Duration = Duration::from_secs(2);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A secret in every form a careless implementation might store it in: as is, its raw bytes
/// (tokens and cookies are base64url), those bytes as hex or in other base64 alphabets, the
/// text itself hex- or base64-encoded, and its unkeyed SHA-256 (which would let anyone holding
/// a dump confirm a guessed cookie).
pub(crate) fn forms(secret: &str) -> Vec<(&'static str, Vec<u8>)> {
    let mut forms = vec![
        ("as is", secret.as_bytes().to_vec()),
        ("hex of the text", hex(secret.as_bytes()).into_bytes()),
        ("base64 of the text", STANDARD.encode(secret).into_bytes()),
        ("sha256 hex", sha256_hex(secret.as_bytes()).into_bytes()),
    ];
    if let Ok(raw) = URL_SAFE_NO_PAD.decode(secret) {
        forms.push(("hex", hex(&raw).into_bytes()));
        forms.push(("HEX", hex(&raw).to_uppercase().into_bytes()));
        forms.push(("base64", STANDARD.encode(&raw).into_bytes()));
        forms.push(("base64 unpadded", STANDARD_NO_PAD.encode(&raw).into_bytes()));
        forms.push(("base64url padded", URL_SAFE.encode(&raw).into_bytes()));
        forms.push(("raw bytes", raw));
    }
    forms
}

pub(crate) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty()
        && haystack
            .windows(needle.len())
            .any(|window| window == needle)
}

/// Every command Redis executes, as `MONITOR` prints it (binary arguments escaped as `\xNN`).
struct Monitor {
    lines: Arc<Mutex<Vec<String>>>,
    url: String,
}

impl Monitor {
    async fn start(url: &str) -> Self {
        let client = ::redis::Client::open(url).expect("redis url");
        let monitor = client.get_async_monitor().await.expect("MONITOR");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        tokio::spawn(async move {
            let mut stream = monitor.into_on_message::<String>();
            while let Some(line) = stream.next().await {
                sink.lock().expect("monitor lock").push(line);
            }
        });
        Self {
            lines,
            url: url.to_owned(),
        }
    }

    /// Everything up to now: sends a marker and waits until `MONITOR` has shown it.
    async fn lines(&self) -> Vec<String> {
        let marker = format!("monitor-marker-{}", random_b64(6));
        let client = ::redis::Client::open(self.url.as_str()).expect("redis url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let _: String = ::redis::cmd("ECHO")
            .arg(&marker)
            .query_async(&mut conn)
            .await
            .expect("ECHO");
        eventually("MONITOR shows the marker", PATIENCE, async || {
            self.lines
                .lock()
                .expect("monitor lock")
                .iter()
                .any(|line| line.contains(&marker))
        })
        .await;
        self.lines.lock().expect("monitor lock").clone()
    }
}

/// Logs in through the whole flow and returns the authorization code that was exchanged.
async fn login_returning_code(browser: &Browser) -> String {
    let (response, trip) = browser.login_with("").await;
    assert_eq!(response.status(), StatusCode::FOUND, "login completes");
    query_map(&trip.callback_url)["code"].clone()
}

/// A private Redis watched by `MONITOR` from before the first login. Alice logs in and her
/// token is refreshed; Bob logs in and out; Carol starts a login and stops at Pleo's page. Then
/// neither any key or value under the prefix (strings with GET, hashes with HGETALL) nor any
/// command Redis executed contains an access or refresh token, a session cookie, a login
/// state, an authorization code or the client secret — as is or base64/hex-encoded — and
/// only Alice's session and Carol's pending login are left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_holds_no_token_or_cookie_after_refresh() {
    let redis = RedisServer::start().await;
    let monitor = Monitor::start(&redis.url()).await;
    let env = TestEnv::start(
        Options::new(StoreKind::Redis)
            .redis_url(&redis.url())
            .access_token_ttl(TOKEN_TTL)
            .refresh_before_expiry(MARGIN),
    )
    .await;
    let prefix = env.redis_prefix.clone().expect("a Redis prefix");

    let alice = env.browser();
    let alice_code = login_returning_code(&alice).await;
    let bob = env.browser();
    let bob_code = login_returning_code(&bob).await;
    let alice_cookie = alice.cookie(SESSION_COOKIE).expect("Alice's cookie");
    let bob_cookie = bob.cookie(SESSION_COOKIE).expect("Bob's cookie");

    wait_until_refresh_due(env.tap.issued()[0].issued_at, TOKEN_TTL).await;
    let refreshed = bearer_seen_by_pleo(&alice).await;
    assert_eq!(
        env.mock.stats().refresh_token_grants,
        1,
        "Alice's token was refreshed"
    );
    let logout = bob
        .send(bob.post("/auth/logout").header("X-CSRF", "1"))
        .await;
    assert_eq!(logout.status(), StatusCode::OK);
    let carol = env.browser();
    let carol_state = query_map(&carol.begin_login("").await)["state"].clone();

    let issued = env.tap.issued();
    assert_eq!(issued.len(), 3, "two logins and one refresh");
    assert_eq!(refreshed, issued[2].access_token);
    let mut secrets: Vec<(String, String)> = vec![
        ("Alice's cookie".into(), alice_cookie),
        ("Bob's cookie (logged out)".into(), bob_cookie),
        ("Carol's login state".into(), carol_state),
        ("Alice's authorization code".into(), alice_code),
        ("Bob's authorization code".into(), bob_code),
        (
            "client secret".into(),
            env.client_secret.clone().expect("a confidential client"),
        ),
    ];
    for (i, pair) in issued.iter().enumerate() {
        secrets.push((format!("access token #{i}"), pair.access_token.clone()));
        secrets.push((format!("refresh token #{i}"), pair.refresh_token.clone()));
    }

    let dump = env.redis_dump().await;
    let keys: Vec<&String> = dump.iter().map(|(key, _)| key).collect();
    assert!(
        keys.iter().all(|key| key.starts_with(&prefix)),
        "every key is under the prefix: {keys:?}"
    );
    let count = |kind: &str| {
        keys.iter()
            .filter(|key| key.starts_with(&format!("{prefix}{kind}:")))
            .count()
    };
    assert_eq!(
        count("session"),
        1,
        "only Alice's session is left: {keys:?}"
    );
    assert_eq!(
        keys.len(),
        1,
        "Carol's pending login is in her browser, not in Redis: {keys:?}"
    );
    assert_eq!(count("lock"), 0, "the refresh lock was released: {keys:?}");

    let commands = monitor.lines().await;
    let commands = commands.join("\n");
    assert!(
        commands.contains(&format!("{prefix}lock:")) && commands.contains("\"NX\""),
        "MONITOR saw the refresh take its lock (the capture works)"
    );
    for (what, secret) in &secrets {
        for (form, needle) in forms(secret) {
            for (key, values) in &dump {
                assert!(
                    !contains(key.as_bytes(), &needle),
                    "{what} ({form}) in key name {key}"
                );
                for value in values {
                    assert!(
                        !contains(value, &needle),
                        "{what} ({form}) stored under {key}"
                    );
                }
            }
            // MONITOR escapes non-printable bytes, so only text forms can show up there.
            if form != "raw bytes" {
                assert!(
                    !contains(commands.as_bytes(), &needle),
                    "{what} ({form}) sent to Redis in a command"
                );
            }
        }
    }
}

/// The 4-byte key fingerprint a sealed blob starts with (after its version byte), computed as
/// the format defines it: the first bytes of SHA-256("pleo-gateway key fingerprint v1" ‖ key).
fn fingerprint(key_b64: &str) -> [u8; 4] {
    let key = STANDARD.decode(key_b64).expect("a base64 key");
    let digest = Sha256::new()
        .chain_update(b"pleo-gateway key fingerprint v1")
        .chain_update(&key)
        .finalize();
    [digest[0], digest[1], digest[2], digest[3]]
}

/// The one session record under the test's prefix: its Redis key and its hash fields.
async fn session_record(env: &TestEnv) -> (String, Vec<(Vec<u8>, Vec<u8>)>) {
    let mut sessions: Vec<(String, Vec<Vec<u8>>)> = env
        .redis_dump()
        .await
        .into_iter()
        .filter(|(key, _)| key.contains(":session:"))
        .collect();
    assert_eq!(sessions.len(), 1, "one session record");
    let (key, values) = sessions.remove(0);
    let fields = values
        .chunks(2)
        .map(|pair| (pair[0].clone(), pair[1].clone()))
        .collect();
    (key, fields)
}

fn field<'a>(fields: &'a [(Vec<u8>, Vec<u8>)], name: &str) -> &'a [u8] {
    fields
        .iter()
        .find(|(n, _)| n == name.as_bytes())
        .map(|(_, value)| value.as_slice())
        .unwrap_or_else(|| panic!("field {name}"))
}

/// (fingerprint of the sealing key, version) of the session record.
async fn sealed_by(env: &TestEnv) -> ([u8; 4], u64) {
    let (_, fields) = session_record(env).await;
    let blob = field(&fields, "d");
    assert_eq!(blob[0], 1, "format version 1");
    let version = std::str::from_utf8(field(&fields, "v"))
        .expect("utf-8")
        .parse()
        .expect("a version number");
    ([blob[1], blob[2], blob[3], blob[4]], version)
}

/// Commands the Redis at `url` has processed so far.
async fn commands_processed(url: &str) -> u64 {
    let client = ::redis::Client::open(url).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let info: String = ::redis::cmd("INFO")
        .arg("stats")
        .query_async(&mut conn)
        .await
        .expect("INFO");
    info.lines()
        .find_map(|line| line.strip_prefix("total_commands_processed:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("total_commands_processed")
}

/// A gateway keyed with A creates a session. A replica configured with `[B, A]` (B new and
/// first) serves the same cookie, from its one-second cache like any other session (a burst of
/// reads costs a couple of Redis commands, not two lookups each); reading does not rewrite the
/// record, still sealed under A. Its next write — a refresh — re-seals it under B, in place
/// (same Redis key, version 2), and the `[B, A]` replica keeps serving it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotated_keys_keep_old_sessions_and_reseal_on_write() {
    let key_a = random_b64(32);
    let key_b = random_b64(32);
    let redis = RedisServer::start().await;
    let mut env = TestEnv::start(
        Options::new(StoreKind::Redis)
            .redis_url(&redis.url())
            .env("SESSION__ENCRYPTION_KEYS", &key_a)
            .access_token_ttl(TOKEN_TTL)
            .refresh_before_expiry(MARGIN),
    )
    .await;
    let rotated = env
        .add_replica_with(&[("SESSION__ENCRYPTION_KEYS", &format!("{key_b},{key_a}"))])
        .await;
    let on_a = env.browser();
    on_a.login().await;
    let (record_key, _) = session_record(&env).await;
    assert_eq!(sealed_by(&env).await, (fingerprint(&key_a), 1));

    let on_b = env.browser_like(&on_a, rotated);
    let info = on_b.send(on_b.get("/auth/session")).await;
    assert_eq!(
        info.status(),
        StatusCode::OK,
        "nobody is logged out by a new key"
    );
    assert_eq!(
        bearer_seen_by_pleo(&on_b).await,
        env.tap.issued()[0].access_token
    );
    let before = commands_processed(&redis.url()).await;
    for _ in 0..10 {
        let info = on_b.send(on_b.get("/auth/session")).await;
        assert_eq!(info.status(), StatusCode::OK);
    }
    let commands = commands_processed(&redis.url()).await - before;
    assert!(
        commands <= 5,
        "ten quick reads of a pre-rotation session use the cache: {commands} Redis commands"
    );
    assert_eq!(
        sealed_by(&env).await,
        (fingerprint(&key_a), 1),
        "reading does not rewrite the record"
    );

    wait_until_refresh_due(env.tap.issued()[0].issued_at, TOKEN_TTL).await;
    assert_eq!(
        bearer_seen_by_pleo(&on_b).await,
        env.tap.issued()[1].access_token
    );
    assert_eq!(env.mock.stats().refresh_token_grants, 1);
    assert_eq!(
        sealed_by(&env).await,
        (fingerprint(&key_b), 2),
        "the refresh re-sealed the record under the new key"
    );
    assert_eq!(session_record(&env).await.0, record_key, "in place");
    let info = on_b.send(on_b.get("/auth/session")).await;
    assert_eq!(info.status(), StatusCode::OK);
}

/// Overwrites one field of a record in the shared test Redis.
async fn overwrite_field(key: &str, name: &str, value: &[u8]) {
    let client = ::redis::Client::open(redis_url().await).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the test Redis");
    let _: i64 = ::redis::cmd("HSET")
        .arg(key)
        .arg(name)
        .arg(value)
        .query_async(&mut conn)
        .await
        .expect("HSET");
}

/// 401 `not_authenticated` (never a 500) on both `/auth/session` and the Pleo proxy.
async fn assert_logged_out(browser: &Browser, why: &str) {
    for path in ["/auth/session", "/pleo/v2/employees"] {
        let response = browser.send(browser.get(path)).await;
        let status = response.status();
        let body = json_body(response).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{why}: {path}: {body}");
        assert_eq!(body["error"], "not_authenticated", "{why}: {path}");
    }
}

/// A session the gateway cannot open reads as "logged out" (401 `not_authenticated`), never as
/// a 500: looked up by a gateway with an unrelated key (the hashed id does not match); sealed
/// under a key this replica does not have (an old replica after a rotation re-sealed it); and
/// tampered with in Redis (authentication fails). The record is left in place, and a replica
/// holding the right keys still serves it until it is tampered with.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn session_under_unknown_key_is_logged_out_not_500() {
    let key_a = random_b64(32);
    let key_b = random_b64(32);
    let mut env = TestEnv::start(
        Options::new(StoreKind::Redis)
            .env("SESSION__ENCRYPTION_KEYS", &key_a)
            .access_token_ttl(TOKEN_TTL)
            .refresh_before_expiry(MARGIN),
    )
    .await;
    let unrelated = env
        .add_replica_with(&[("SESSION__ENCRYPTION_KEYS", &random_b64(32))])
        .await;
    let rotated = env
        .add_replica_with(&[("SESSION__ENCRYPTION_KEYS", &format!("{key_b},{key_a}"))])
        .await;
    let old = env.add_replica().await;
    let user = env.browser();
    user.login().await;

    assert_logged_out(&env.browser_like(&user, unrelated), "unrelated key").await;

    // The [B, A] replica refreshes, re-sealing under B; a replica still on [A] (which has not
    // read this session before, so nothing is cached) cannot open it.
    let on_b = env.browser_like(&user, rotated);
    wait_until_refresh_due(env.tap.issued()[0].issued_at, TOKEN_TTL).await;
    assert_eq!(
        bearer_seen_by_pleo(&on_b).await,
        env.tap.issued()[1].access_token
    );
    assert_eq!(sealed_by(&env).await.0, fingerprint(&key_b));
    assert_logged_out(
        &env.browser_like(&user, old),
        "sealed under a key not configured",
    )
    .await;
    let (record_key, fields) = session_record(&env).await;
    let info = on_b.send(on_b.get("/auth/session")).await;
    assert_eq!(info.status(), StatusCode::OK, "the record was left alone");

    // Flip one ciphertext bit: authentication fails. (Waits out the replica's one-second cache.)
    let mut blob = field(&fields, "d").to_vec();
    let last = blob.len() - 1;
    blob[last] ^= 1;
    overwrite_field(&record_key, "d", &blob).await;
    eventually(
        "the tampered record reads as logged out",
        PATIENCE,
        async || on_b.send(on_b.get("/auth/session")).await.status() == StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_logged_out(&on_b, "tampered record").await;
}

/// `GET /auth/session` at `at` after `t0`; returns the status.
async fn session_status_at(browser: &Browser, t0: Instant, at: Duration) -> StatusCode {
    tokio::time::sleep_until(t0 + at).await;
    browser.send(browser.get("/auth/session")).await.status()
}

for_each_store! {
    /// Idle timeout 2 s: a session used every 1.2 s outlives it (3.6 s), then ends after 2.3 s
    /// without use. Absolute timeout 4 s (idle 4 s): a session used every 1.1 s still ends at
    /// 4 s — including on the replica's one-second session cache, which must not serve it past
    /// its deadline. Both run at once; about 6 s in all.
    async fn idle_and_absolute_timeouts_end_sessions(store) {
        let idle = async {
            let env = TestEnv::start(
                Options::new(store)
                    .env("SESSION__IDLE_TIMEOUT", "2s")
                    .env("SESSION__ABSOLUTE_TIMEOUT", "1h"),
            )
            .await;
            let browser = env.browser();
            browser.login().await;
            let t0 = Instant::now();
            for step in 1..=3u32 {
                // 1.2 s apart: every request reaches the store (the cache holds for 1 s) and
                // slides the idle expiry.
                let at = Duration::from_millis(1200) * step;
                assert_eq!(
                    session_status_at(&browser, t0, at).await,
                    StatusCode::OK,
                    "idle: in use at {at:?}"
                );
            }
            let at = Duration::from_millis(3600 + 2300);
            assert_eq!(
                session_status_at(&browser, t0, at).await,
                StatusCode::UNAUTHORIZED,
                "idle: ended 2.3 s after the last use"
            );
        };
        let absolute = async {
            let env = TestEnv::start(
                Options::new(store)
                    .env("SESSION__IDLE_TIMEOUT", "4s")
                    .env("SESSION__ABSOLUTE_TIMEOUT", "4s"),
            )
            .await;
            let browser = env.browser();
            browser.login().await;
            // The session was created before this instant, so its deadline is before t0 + 4 s.
            let t0 = Instant::now();
            for at in [1100, 2200, 3300].map(Duration::from_millis) {
                assert_eq!(
                    session_status_at(&browser, t0, at).await,
                    StatusCode::OK,
                    "absolute: in use at {at:?}"
                );
            }
            // The request at 3.3 s refreshed this replica's cache, which is still fresh at 4.1 s.
            assert_eq!(
                session_status_at(&browser, t0, Duration::from_millis(4100)).await,
                StatusCode::UNAUTHORIZED,
                "absolute: ended at its deadline, cache or not"
            );
        };
        tokio::time::timeout(Duration::from_secs(30), async { tokio::join!(idle, absolute) })
            .await
            .expect("the timeouts test finishes within 30 s");
    }
}
