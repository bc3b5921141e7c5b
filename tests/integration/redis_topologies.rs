//! Sessions on the Redis topologies an operator moves to when one Redis is not enough: Cluster
//! (`redis+cluster://`) and Sentinel (`redis+sentinel://`), with a failover under the gateway.
//!
//! Each test runs its own `redis-server` processes (Debian's 7.0) through the harness's
//! [`RedisServer`]: free loopback ports, temporary directories, killed when the test ends, also
//! when it fails. The shared test Redis is not involved.

use std::time::Duration;

use reqwest::{StatusCode, header};
use tokio::time::Instant;

use crate::support::{
    Browser, Options, PATIENCE, SESSION_COOKIE, StoreKind, TestEnv, eventually, json_body,
    redis::topology::{RedisCluster, SentinelSetup, TOPOLOGY_PATIENCE},
    session_set_cookie, wait_until_refresh_due,
};

/// Bound on the gateway following a failover Sentinel has announced: it must stop writing to
/// the old master well before Sentinel demotes it, or those writes are lost.
const FOLLOW_PATIENCE: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Requests with one session cookie, through a switch of Redis
// ---------------------------------------------------------------------------------------------

/// One GET with exactly this session cookie. While Redis is switching it may be refused for now
/// (503 with `Retry-After`), but it must never be an error of the gateway's own (500) or a
/// logout (401, or a cleared cookie). Returns the status.
async fn probe(browser: &Browser, cookie: &str, path: &str) -> StatusCode {
    let response = browser
        .send(
            browser
                .get(path)
                .header(header::COOKIE, format!("{SESSION_COOKIE}={cookie}")),
        )
        .await;
    let status = response.status();
    if let Some(set) = session_set_cookie(&response) {
        assert!(
            !set.value.is_empty() && set.max_age != Some(0),
            "GET {path} cleared the session cookie ({status}): {set:?}"
        );
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        assert!(
            response.headers().contains_key(header::RETRY_AFTER),
            "a 503 without Retry-After for GET {path}"
        );
        return status;
    }
    if status != StatusCode::OK {
        let body = response.text().await.unwrap_or_default();
        panic!("GET {path} with the session cookie: {status} {body}");
    }
    status
}

/// Repeats [`probe`] until it is a 200, within [`PATIENCE`].
async fn until_ok(browser: &Browser, cookie: &str, path: &str) {
    let mut refused = 0;
    eventually(&format!("GET {path} to be 200"), PATIENCE, async || {
        if probe(browser, cookie, path).await == StatusCode::OK {
            return Ok(());
        }
        refused += 1;
        Err(format!("still 503 after {refused} tries"))
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------------------------

/// Login, API calls, two token refreshes (each a lock key plus a compare-and-set script on the
/// session key, two keys the cluster places independently) and logout on a 3-master Redis
/// Cluster; many sessions land on more than one node, each still readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn login_and_api_calls_work_on_redis_cluster() {
    const TOKEN_TTL: Duration = Duration::from_secs(3);
    let cluster = RedisCluster::start(3).await;
    let env = TestEnv::start(
        Options::new(StoreKind::Redis)
            .redis_url(&cluster.url())
            .access_token_ttl(TOKEN_TTL)
            .refresh_before_expiry(Duration::from_secs(2)),
    )
    .await;
    let prefix = env.redis_prefix.clone().expect("a Redis key prefix");
    let sessions = format!("{prefix}session:*");

    let ready = reqwest::get(env.gateway_url.join("/readyz").expect("url"))
        .await
        .expect("GET /readyz");
    assert_eq!(ready.status(), StatusCode::OK, "ready on the cluster");

    let browser = env.browser();
    browser.login().await;
    let logged_in = Instant::now();
    let info = browser.send(browser.get("/auth/session")).await;
    assert_eq!(info.status(), StatusCode::OK);
    assert_eq!(json_body(info).await["authenticated"], true);
    let employees = browser.send(browser.get("/pleo/v2/employees")).await;
    assert_eq!(employees.status(), StatusCode::OK);
    assert_eq!(json_body(employees).await["pagination"]["total"], 8);
    assert_eq!(
        cluster.keys_per_node(&sessions).await.iter().sum::<usize>(),
        1,
        "one session key in the cluster"
    );

    // A refresh, then another: the second one is only possible if the rotated pair was stored.
    wait_until_refresh_due(logged_in, TOKEN_TTL).await;
    let employees = browser.send(browser.get("/pleo/v2/employees")).await;
    assert_eq!(employees.status(), StatusCode::OK);
    let refreshed = Instant::now();
    assert_eq!(env.mock.stats().refresh_token_grants, 1);
    wait_until_refresh_due(refreshed, TOKEN_TTL).await;
    let employees = browser.send(browser.get("/pleo/v2/employees")).await;
    assert_eq!(employees.status(), StatusCode::OK);
    let stats = env.mock.stats();
    assert_eq!(stats.refresh_token_grants, 2, "two rotations");
    assert_eq!(
        stats.reuse_detections, 0,
        "no spent refresh token sent again"
    );
    assert_eq!(stats.refresh_failures, 0);
    assert_eq!(stats.api_unauthorized, 0);

    // More sessions: their keys hash to slots all over the cluster, and each one is found again.
    let others: Vec<Browser> = (0..12).map(|_| env.browser()).collect();
    for other in &others {
        other.login().await;
    }
    for other in &others {
        let info = other.send(other.get("/auth/session")).await;
        assert_eq!(info.status(), StatusCode::OK);
    }
    let per_node = cluster.keys_per_node(&sessions).await;
    assert_eq!(
        per_node.iter().sum::<usize>(),
        13,
        "every session once: {per_node:?}"
    );
    assert!(
        per_node.iter().filter(|&&n| n > 0).count() > 1,
        "sessions spread over the nodes: {per_node:?}"
    );

    let logout = browser
        .send(browser.post("/auth/logout").header("X-CSRF", "1"))
        .await;
    assert_eq!(logout.status(), StatusCode::OK);
    let info = browser.send(browser.get("/auth/session")).await;
    assert_eq!(info.status(), StatusCode::UNAUTHORIZED);
    let per_node = cluster.keys_per_node(&sessions).await;
    assert_eq!(
        per_node.iter().sum::<usize>(),
        12,
        "the logged-out session is gone from its node: {per_node:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Sentinel
// ---------------------------------------------------------------------------------------------

/// A planned failover (`SENTINEL FAILOVER`): the replica is promoted while the old master stays
/// up, writable, until Sentinel demotes it about ten seconds later, dropping whatever was written
/// to it meanwhile. The gateway must follow the announced master promptly; the same cookie keeps
/// working (503s during the switch allowed, never a 500 or a logout), refreshed token pairs
/// survive the demotion, and new logins work.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn login_works_through_sentinel_and_survives_failover() {
    let redis = SentinelSetup::start(1).await;
    let (old, new) = (&redis.servers[0], &redis.servers[1]);
    let env = TestEnv::start(Options::new(StoreKind::Redis).redis_url(&redis.url())).await;
    let prefix = env.redis_prefix.clone().expect("a Redis key prefix");
    let sessions = format!("{prefix}session:*");

    let browser = env.browser();
    browser.login().await;
    let cookie = browser.cookie(SESSION_COOKIE).expect("session cookie");
    until_ok(&browser, &cookie, "/auth/session").await;
    until_ok(&browser, &cookie, "/pleo/v2/employees").await;
    assert_eq!(
        old.keys(&sessions).await.len(),
        1,
        "the session is on the master"
    );
    redis.wait_replicated(old, new).await;
    assert_eq!(new.keys(&sessions).await.len(), 1, "and on the replica");

    redis.force_failover().await;
    eventually(
        "Sentinel to announce the promoted replica",
        TOPOLOGY_PATIENCE,
        async || {
            probe(&browser, &cookie, "/auth/session").await;
            redis.master_port(0).await == Some(new.port())
                && new.role().await.as_deref() == Some("master")
        },
    )
    .await;

    // New logins write their sessions to the new master as soon as the gateway follows it,
    // rather than to the old master (where Sentinel's demotion would later drop them).
    eventually(
        "new logins to be written to the new master (Sentinel demotes the old one later, and \
         everything written there is lost)",
        FOLLOW_PATIENCE,
        async || {
            let visitor = env.browser();
            let (response, _) = visitor.login_with("").await;
            assert!(
                [StatusCode::FOUND, StatusCode::SERVICE_UNAVAILABLE].contains(&response.status()),
                "a login during failover: {}",
                response.status()
            );
            if new.keys(&sessions).await.len() >= 2 {
                return Ok(());
            }
            let on_old = old.keys(&sessions).await.len();
            Err(format!(
                "the gateway still writes to the old master ({on_old} sessions there)"
            ))
        },
    )
    .await;
    // The same cookie works, and a refresh stores its rotated pair on the new master.
    until_ok(&browser, &cookie, "/auth/session").await;
    env.mock.expire_access_tokens();
    until_ok(&browser, &cookie, "/pleo/v2/employees").await;
    assert_eq!(env.mock.stats().refresh_token_grants, 1);

    // Sentinel demotes the old master, which drops its own data for the new master's.
    eventually(
        "Sentinel to demote the old master",
        TOPOLOGY_PATIENCE,
        async || {
            probe(&browser, &cookie, "/auth/session").await;
            old.role().await.as_deref() == Some("slave")
        },
    )
    .await;
    redis.wait_replicated(new, old).await;

    // Still the same session, with the pair refreshed after the failover: refreshing again
    // sends that refresh token, not a spent one.
    until_ok(&browser, &cookie, "/auth/session").await;
    env.mock.expire_access_tokens();
    until_ok(&browser, &cookie, "/pleo/v2/employees").await;
    let stats = env.mock.stats();
    assert_eq!(stats.refresh_token_grants, 2, "a second rotation");
    assert_eq!(
        stats.reuse_detections, 0,
        "no spent refresh token sent again"
    );
    assert_eq!(stats.refresh_failures, 0);

    let before = new.keys(&sessions).await.len();
    let newcomer = env.browser();
    newcomer.login().await;
    let info = newcomer.send(newcomer.get("/auth/session")).await;
    assert_eq!(info.status(), StatusCode::OK);
    assert_eq!(
        new.keys(&sessions).await.len(),
        before + 1,
        "the newcomer's session is on the new master"
    );

    let logout = browser
        .send(
            browser
                .post("/auth/logout")
                .header("X-CSRF", "1")
                .header(header::COOKIE, format!("{SESSION_COOKIE}={cookie}")),
        )
        .await;
    assert_eq!(logout.status(), StatusCode::OK);
    assert_eq!(
        new.keys(&sessions).await.len(),
        before,
        "the session is deleted"
    );
}

/// The master crashes (SIGKILL) and so does the first Sentinel of the URL: the others elect a
/// leader and promote the replica, the gateway asks the Sentinels that still answer, and the same
/// cookie works again (503s during the switch allowed, never a 500 or a logout), refresh
/// included.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_survive_a_crashed_master_and_a_dead_sentinel() {
    let mut redis = SentinelSetup::start(3).await;
    let new_port = redis.servers[1].port();
    let env = TestEnv::start(Options::new(StoreKind::Redis).redis_url(&redis.url())).await;
    let prefix = env.redis_prefix.clone().expect("a Redis key prefix");
    let sessions = format!("{prefix}session:*");

    let browser = env.browser();
    browser.login().await;
    let cookie = browser.cookie(SESSION_COOKIE).expect("session cookie");
    until_ok(&browser, &cookie, "/pleo/v2/employees").await;
    redis
        .wait_replicated(&redis.servers[0], &redis.servers[1])
        .await;

    redis.servers[0].kill();
    redis.sentinels[0].kill();
    eventually(
        "the Sentinels to promote the replica",
        TOPOLOGY_PATIENCE,
        async || {
            probe(&browser, &cookie, "/auth/session").await;
            redis.master_port(1).await == Some(new_port)
                && redis.servers[1].role().await.as_deref() == Some("master")
        },
    )
    .await;

    until_ok(&browser, &cookie, "/auth/session").await;
    env.mock.expire_access_tokens();
    until_ok(&browser, &cookie, "/pleo/v2/employees").await;
    let stats = env.mock.stats();
    assert_eq!(stats.refresh_token_grants, 1, "refreshed on the new master");
    assert_eq!(stats.reuse_detections, 0);

    let newcomer = env.browser();
    newcomer.login().await;
    assert_eq!(
        redis.servers[1].keys(&sessions).await.len(),
        2,
        "both sessions on the promoted replica"
    );
}
