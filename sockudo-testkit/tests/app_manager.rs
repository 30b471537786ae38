//! The app managers against the real thing: one conformance suite run unchanged against the
//! static manager, PostgreSQL and MariaDB/MySQL (the machine's servers, a scratch database
//! per test); a row written by hand in upstream Sockudo's column layout; and a node whose
//! database goes away mid-test (through a TCP proxy the test cuts, never the shared server).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use sockudo_core::app::{conformance, App, AppStore, SqlAppManager, SqlOptions, StaticAppManager};
use sockudo_server::config::NodeSettings;
use sockudo_testkit::node::TestNode;
use sockudo_testkit::proxy::TcpProxy;
use sockudo_testkit::sql::{ScratchDb, SqlServer};
use sockudo_testkit::TestClient;
use tokio::time::Instant;

async fn manager(db: &ScratchDb) -> SqlAppManager {
    SqlAppManager::connect(SqlOptions::new(db.url()))
        .await
        .unwrap()
}

async fn sql_conformance(server: SqlServer) {
    let db = ScratchDb::create(server).await.unwrap();
    let url = db.url().to_owned();
    conformance::run_all(|apps: Vec<App>| {
        let url = url.clone();
        async move {
            let m = SqlAppManager::connect(SqlOptions::new(url))
                .await
                .map_err(|e| e.to_string())?;
            for a in &apps {
                m.create(a).await.map_err(|e| e.to_string())?;
            }
            Ok(m)
        }
    })
    .await;
}

#[tokio::test]
async fn static_manager_passes_the_suite() {
    conformance::run_all(|apps| async move { Ok(StaticAppManager::new(apps)) }).await;
}

#[tokio::test]
async fn postgres_manager_passes_the_suite() {
    sql_conformance(SqlServer::Postgres).await;
}

#[tokio::test]
async fn mysql_manager_passes_the_suite() {
    sql_conformance(SqlServer::MySql).await;
}

/// Writes: create refuses a taken id or key, update and delete say when the app is absent.
async fn store_rules(server: SqlServer) {
    let db = ScratchDb::create(server).await.unwrap();
    let m = manager(&db).await;
    let app = App::new("s1", "store-key", "0123456789abcdef");
    m.create(&app).await.unwrap();
    let taken_key = App::new("s2", "store-key", "0123456789abcdef");
    assert!(matches!(
        m.create(&taken_key).await,
        Err(sockudo_core::app::AppStoreError::Conflict)
    ));
    let taken_key_other_case = App::new("s3", "STORE-KEY", "0123456789abcdef");
    m.create(&taken_key_other_case)
        .await
        .expect("keys differing in case are different keys");
    let mut changed = app.clone();
    changed.enabled = false;
    m.update(&changed).await.unwrap();
    m.update(&changed)
        .await
        .expect("an unchanged update is fine");
    assert_eq!(m.get("s1").await.unwrap(), Some(changed));
    let ghost = App::new("ghost", "ghost-key", "0123456789abcdef");
    assert!(matches!(
        m.update(&ghost).await,
        Err(sockudo_core::app::AppStoreError::NotFound)
    ));
    assert!(m.delete("s1").await.unwrap());
    assert!(!m.delete("s1").await.unwrap());
    assert_eq!(m.list().await.unwrap().len(), 1);
}

#[tokio::test]
async fn postgres_store_rules() {
    store_rules(SqlServer::Postgres).await;
}

#[tokio::test]
async fn mysql_store_rules() {
    store_rules(SqlServer::MySql).await;
}

/// The app upstream's row describes, as this version serves it.
fn expected_upstream_app() -> App {
    let mut app = App::new("upstream-1", "up-key", "up-secret");
    app.enable_client_messages = true;
    app.max_connections = 500;
    app.max_client_events_per_second = 20;
    app.max_presence_members = 50;
    app.max_presence_user_info_bytes = 2 * 1024;
    app.max_event_payload_bytes = 100 * 1024;
    app.max_event_channels_at_once = 50;
    // max_event_name_length and max_event_batch_size are NULL: defaults.
    app.webhooks = vec![sockudo_core::app::WebhookTarget {
        url: "https://hooks.example.invalid/pusher".into(),
        event_types: vec!["channel_occupied".into()],
        headers: [("X-Auth".to_owned(), "t".to_owned())].into(),
    }];
    app
}

/// An upstream-style table (its own types, nullable limits, an extra column, no
/// `max_event_batch_size` column at all) and a row inserted with plain SQL.
async fn upstream_row(server: SqlServer) {
    let db = ScratchDb::create(server).await.unwrap();
    let pool = db.pool().await.unwrap();
    let (ddl, insert) = match server {
        SqlServer::Postgres => (
            r#"CREATE TABLE applications (
                id VARCHAR(255) PRIMARY KEY, key VARCHAR(255) UNIQUE NOT NULL,
                secret VARCHAR(255) NOT NULL, max_connections INTEGER NOT NULL,
                enable_client_messages BOOLEAN NOT NULL, enabled BOOLEAN NOT NULL,
                max_backend_events_per_second INTEGER, max_client_events_per_second INTEGER NOT NULL,
                max_read_requests_per_second INTEGER, max_presence_members_per_channel INTEGER,
                max_presence_member_size_in_kb INTEGER, max_channel_name_length INTEGER,
                max_event_channels_at_once INTEGER, max_event_name_length INTEGER,
                max_event_payload_in_kb INTEGER, max_event_batch_size_typo INTEGER,
                enable_user_authentication BOOLEAN, webhooks JSONB,
                created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
                updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP)"#,
            r#"INSERT INTO applications (id, key, secret, max_connections, enable_client_messages,
                enabled, max_backend_events_per_second, max_client_events_per_second,
                max_presence_members_per_channel, max_presence_member_size_in_kb,
                max_event_channels_at_once, max_event_name_length, max_event_payload_in_kb,
                enable_user_authentication, webhooks)
               VALUES ('upstream-1', 'up-key', 'up-secret', 500, TRUE, TRUE, 100, 20, 50, 2,
                50, NULL, 100, FALSE,
                '[{"url":"https://hooks.example.invalid/pusher","event_types":["channel_occupied"],"headers":{"headers":{"X-Auth":"t"}}}]')"#,
        ),
        SqlServer::MySql => (
            r#"CREATE TABLE applications (
                id VARCHAR(255) PRIMARY KEY, `key` VARCHAR(255) UNIQUE NOT NULL,
                secret VARCHAR(255) NOT NULL, max_connections INT NOT NULL,
                enable_client_messages TINYINT(1) NOT NULL, enabled TINYINT(1) NOT NULL,
                max_backend_events_per_second INT, max_client_events_per_second INT NOT NULL,
                max_read_requests_per_second INT, max_presence_members_per_channel INT,
                max_presence_member_size_in_kb INT, max_channel_name_length INT,
                max_event_channels_at_once INT, max_event_name_length INT,
                max_event_payload_in_kb INT, max_event_batch_size_typo INT,
                enable_user_authentication TINYINT(1), webhooks JSON,
                created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
                updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP)"#,
            r#"INSERT INTO applications (id, `key`, secret, max_connections, enable_client_messages,
                enabled, max_backend_events_per_second, max_client_events_per_second,
                max_presence_members_per_channel, max_presence_member_size_in_kb,
                max_event_channels_at_once, max_event_name_length, max_event_payload_in_kb,
                enable_user_authentication, webhooks)
               VALUES ('upstream-1', 'up-key', 'up-secret', 500, 1, 1, 100, 20, 50, 2,
                50, NULL, 100, 0,
                '[{"url":"https://hooks.example.invalid/pusher","event_types":["channel_occupied"],"headers":{"headers":{"X-Auth":"t"}}}]')"#,
        ),
    };
    sqlx::raw_sql(ddl).execute(&pool).await.unwrap();
    sqlx::raw_sql(insert).execute(&pool).await.unwrap();
    let m = manager(&db).await;
    use sockudo_core::app::AppManager;
    let app = m.find_by_key("up-key").await.unwrap().expect("row served");
    assert_eq!(*app, expected_upstream_app());
    // And a node serving it accepts a Pusher client with the key.
    let mut settings = NodeSettings::default();
    settings.app_manager.driver = server.driver().into();
    settings.database_url = Some(sockudo_server::config::SecretUrl(db.url().to_owned()));
    settings.metrics_port = 0;
    let node = TestNode::start(settings).await.unwrap();
    let client = TestClient::connect(&node.ws_url("up-key")).await.unwrap();
    client.close().await.unwrap();
}

#[tokio::test]
async fn postgres_upstream_row_is_served() {
    upstream_row(SqlServer::Postgres).await;
}

#[tokio::test]
async fn mysql_upstream_row_is_served() {
    upstream_row(SqlServer::MySql).await;
}

/// Poll `check` until true, or panic naming `what` after a generous deadline.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `None` when a client connects; the `pusher:error` code when the handshake is refused.
async fn close_code(url: &str) -> Option<u16> {
    match TestClient::connect(url).await {
        Ok(c) => {
            c.close().await.ok();
            None
        }
        Err(sockudo_testkit::TestkitError::Protocol(m)) => {
            let at = m.find("code").unwrap_or_else(|| panic!("no code in {m}"));
            let digits: String = m[at..]
                .chars()
                .skip_while(|c| !c.is_ascii_digit())
                .take_while(char::is_ascii_digit)
                .collect();
            Some(digits.parse().unwrap_or_else(|_| panic!("bad code in {m}")))
        }
        Err(e) => panic!("connect {url}: {e}"),
    }
}

async fn ready_body(node: &TestNode) -> (u16, String) {
    let r = reqwest::get(format!("{}/ready", node.http_url()))
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The database goes away behind a proxy: the cached app keeps working, an unknown key is
/// refused with 4100 (reconnect later), `/ready` stays 200 and says why; when the database
/// is back the node serves new apps again without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_keeps_cached_apps_and_recovers() {
    let db = ScratchDb::create(SqlServer::Postgres).await.unwrap();
    let direct = manager(&db).await;
    direct
        .create(&App::new("cached", "cached-key", "0123456789abcdef"))
        .await
        .unwrap();
    let proxy = TcpProxy::start(db.server_addr().unwrap()).await.unwrap();
    let mut settings = NodeSettings::default();
    settings.app_manager.driver = "postgres".into();
    settings.app_manager.poll_interval = 1;
    settings.app_manager.cache_ttl = 1;
    settings.database_url = Some(sockudo_server::config::SecretUrl(db.url_via(proxy.addr())));
    settings.metrics_port = 0;
    let node = TestNode::start(settings).await.unwrap();
    let url = node.ws_url("cached-key");
    let mut held = TestClient::connect(&url).await.unwrap();
    assert_eq!(ready_body(&node).await, (200, "ready".to_owned()));

    proxy.cut();
    eventually("/ready to report the outage", || async {
        let (status, body) = ready_body(&node).await;
        assert_eq!(status, 200, "an app database outage is not unready: {body}");
        body.contains("app manager degraded")
    })
    .await;
    // Past the cache TTL: the cached copy is served stale.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(close_code(&url).await, None, "cached app still connects");
    held.subscribe("still-here").await.unwrap();
    assert_eq!(
        close_code(&node.ws_url("never-seen-key")).await,
        Some(4100),
        "unknown key refused with reconnect-later while the database is down"
    );
    let status = node.node().apps.status().unwrap();
    assert!(!status.backend_up && status.stats.stale_served >= 1 && status.stats.unavailable >= 1);

    proxy.restore();
    direct
        .create(&App::new("later", "later-key", "0123456789abcdef"))
        .await
        .unwrap();
    let later = node.ws_url("later-key");
    eventually("the new app to connect after recovery", || async {
        close_code(&later).await.is_none()
    })
    .await;
    eventually("/ready to be clean again", || async {
        ready_body(&node).await == (200, "ready".to_owned())
    })
    .await;
    held.close().await.unwrap();
}

/// The admin API's answers to bad requests: JSON errors with the status a client expects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_refuses_bad_requests_with_json_errors() {
    const TOKEN: &str = "admin-token-for-the-error-test";
    let db = ScratchDb::create(SqlServer::MySql).await.unwrap();
    let mut settings = NodeSettings::default();
    settings.app_manager.driver = "mysql".into();
    settings.database_url = Some(sockudo_server::config::SecretUrl(db.url().to_owned()));
    settings.metrics_port = 0;
    settings.admin.port = Some(0);
    settings.admin.token = Some(TOKEN.into());
    let node = TestNode::start(settings).await.unwrap();
    // The admin listener binds as the node starts serving.
    let n = node.node();
    eventually("the admin listener", || async { n.admin_addr().is_some() }).await;
    let base = format!("http://{}", n.admin_addr().unwrap());
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, body: Option<String>| {
        let mut req = http
            .request(method, format!("{base}{path}"))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let v: serde_json::Value = serde_json::from_str(&r.text().await.unwrap())
                .unwrap_or_else(|e| panic!("status {status}: body is not JSON: {e}"));
            (status, v)
        }
    };
    use reqwest::Method;
    let (s, v) = call(Method::POST, "/apps", Some("{not json".into())).await;
    assert_eq!((s, v["status"].as_u64()), (400, Some(400)), "{v}");
    let big = format!("{{\"id\":\"{}\"}}", "x".repeat(70 * 1024));
    let (s, _) = call(Method::POST, "/apps", Some(big)).await;
    assert_eq!(s, 413);
    let (s, v) = call(
        Method::POST,
        "/apps",
        Some(r#"{"id":"e1","key":"e-key","secret":"0123456789abcdef"}"#.into()),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = call(
        Method::POST,
        "/apps",
        Some(r#"{"id":"e2","key":"e-key","secret":"0123456789abcdef"}"#.into()),
    )
    .await;
    assert_eq!(s, 409, "{v}");
    let (s, v) = call(Method::PATCH, "/apps/e1", Some(r#"{"secret":"x"}"#.into())).await;
    assert_eq!(s, 422, "{v}");
    assert!(v["error"].as_str().unwrap().contains("rotate"), "{v}");
    let (s, v) = call(
        Method::PATCH,
        "/apps/e1",
        Some(r#"{"max_connections":"many"}"#.into()),
    )
    .await;
    assert_eq!(s, 422, "{v}");
    let (s, _) = call(Method::GET, "/apps/nope", None).await;
    assert_eq!(s, 404);
    let (s, _) = call(Method::GET, "/apps/a%20b", None).await;
    assert_eq!(s, 422);
    let (s, _) = call(Method::GET, "/nowhere", None).await;
    assert_eq!(s, 404);
    let (s, v) = call(Method::GET, "/apps", None).await;
    assert_eq!(s, 200);
    assert_eq!(v["apps"][0]["id"], "e1", "{v}");
    assert!(
        v["apps"][0].get("secret").is_none(),
        "no secrets in the list: {v}"
    );
    let (s, v) = call(Method::GET, "/apps/e1", None).await;
    assert_eq!((s, v["secret"].as_str()), (200, Some("0123456789abcdef")));
}
