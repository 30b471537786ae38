//! The executable [`AppManager`] contract: one suite every manager passes unchanged.
//!
//! [`run_all`] takes a factory that makes a manager serving exactly the apps it is given
//! (for a database-backed manager: inserts them, then returns a manager over that table).
//! Every check uses ids and keys with a random suffix, so the suite can run repeatedly
//! against one shared table. A broken rule panics with a message naming it.
//!
//! ```no_run
//! # async fn t() {
//! use sockudo_core::app::{conformance, StaticAppManager};
//! conformance::run_all(|apps| async move { Ok(StaticAppManager::new(apps)) }).await;
//! # }
//! ```

use std::collections::HashMap;
use std::future::Future;

use super::{App, AppManager, WebhookTarget};

fn suffix() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// An app with every field set away from its default, so a field that does not round-trip
/// shows up.
pub fn full_app(id: &str, key: &str) -> App {
    let mut app = App::new(id, key, format!("secret-{id}"));
    app.enabled = true;
    app.enable_client_messages = true;
    app.max_connections = 1234;
    app.max_client_events_per_second = 7;
    app.max_presence_members = 42;
    app.max_presence_user_info_bytes = 3 * 1024;
    app.max_event_payload_bytes = 20 * 1024;
    app.max_event_channels_at_once = 11;
    app.max_event_name_length = 99;
    app.max_event_batch_size = 5;
    app.webhooks = vec![WebhookTarget {
        url: "http://127.0.0.1:9/hook".into(),
        event_types: vec!["channel_occupied".into(), "member_added".into()],
        headers: HashMap::from([("X-Token".to_owned(), "t".to_owned())]),
    }];
    app
}

async fn make<M, F, Fut>(factory: &F, apps: Vec<App>) -> M
where
    F: Fn(Vec<App>) -> Fut,
    Fut: Future<Output = Result<M, String>>,
{
    match factory(apps).await {
        Ok(m) => m,
        Err(e) => panic!("the factory could not make a manager: {e}"),
    }
}

#[track_caller]
fn ok<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e}"),
    }
}

/// Run every check.
pub async fn run_all<M, F, Fut>(factory: F)
where
    M: AppManager,
    F: Fn(Vec<App>) -> Fut,
    Fut: Future<Output = Result<M, String>>,
{
    round_trip(&factory).await;
    unknown_is_none(&factory).await;
    disabled_is_served_as_disabled(&factory).await;
    keys_are_exact(&factory).await;
    all_and_find_many(&factory).await;
}

/// Every field of an app comes back as stored, by key and by id.
pub async fn round_trip<M, F, Fut>(factory: &F)
where
    M: AppManager,
    F: Fn(Vec<App>) -> Fut,
    Fut: Future<Output = Result<M, String>>,
{
    let s = suffix();
    let app = full_app(&format!("rt-{s}"), &format!("rt-key-{s}"));
    let plain = App::new(format!("rt2-{s}"), format!("rt2-key-{s}"), "s2");
    let m = make(factory, vec![app.clone(), plain.clone()]).await;
    let by_key = ok(m.find_by_key(&app.key).await, "find_by_key");
    assert_eq!(by_key.as_deref(), Some(&app), "find_by_key round trip");
    let by_id = ok(m.find_by_id(&app.id).await, "find_by_id");
    assert_eq!(by_id.as_deref(), Some(&app), "find_by_id round trip");
    let plain_back = ok(m.find_by_id(&plain.id).await, "find_by_id (defaults)");
    assert_eq!(plain_back.as_deref(), Some(&plain), "defaults round trip");
}

/// A key or id nobody has is `Ok(None)`, not an error.
pub async fn unknown_is_none<M, F, Fut>(factory: &F)
where
    M: AppManager,
    F: Fn(Vec<App>) -> Fut,
    Fut: Future<Output = Result<M, String>>,
{
    let s = suffix();
    let m = make(
        factory,
        vec![App::new(format!("u-{s}"), format!("u-key-{s}"), "s")],
    )
    .await;
    let long = "k".repeat(300);
    for key in [
        format!("nope-{s}"),
        String::new(),
        "%".into(),
        "_".into(),
        "nul\0key".into(),
        "🔑-emoji".into(),
        long,
    ] {
        let r = ok(m.find_by_key(&key).await, "find_by_key (unknown)");
        assert!(r.is_none(), "unknown key {key:?} found {r:?}");
    }
    let r = ok(
        m.find_by_id(&format!("nope-{s}")).await,
        "find_by_id (unknown)",
    );
    assert!(r.is_none(), "unknown id found {r:?}");
}

/// A disabled app is found (the caller refuses it with 4003), not hidden as unknown (4001).
pub async fn disabled_is_served_as_disabled<M, F, Fut>(factory: &F)
where
    M: AppManager,
    F: Fn(Vec<App>) -> Fut,
    Fut: Future<Output = Result<M, String>>,
{
    let s = suffix();
    let mut app = App::new(format!("d-{s}"), format!("d-key-{s}"), "s");
    app.enabled = false;
    let m = make(factory, vec![app.clone()]).await;
    let got = ok(m.find_by_key(&app.key).await, "find_by_key (disabled)");
    assert_eq!(got.map(|a| a.enabled), Some(false), "disabled app served");
}

/// Keys match exactly: case, quotes and SQL wildcards are data, not syntax.
pub async fn keys_are_exact<M, F, Fut>(factory: &F)
where
    M: AppManager,
    F: Fn(Vec<App>) -> Fut,
    Fut: Future<Output = Result<M, String>>,
{
    let s = suffix();
    let odd = App::new(format!("o-{s}"), format!("o'k\"e;y--é-{s}"), "s");
    let lower = App::new(format!("l-{s}"), format!("lower-{s}"), "s");
    let m = make(factory, vec![odd.clone(), lower.clone()]).await;
    let got = ok(
        m.find_by_key(&odd.key).await,
        "find_by_key (odd characters)",
    );
    assert_eq!(got.map(|a| a.id.clone()), Some(odd.id.clone()), "odd key");
    let upper = lower.key.to_uppercase();
    let got = ok(m.find_by_key(&upper).await, "find_by_key (other case)");
    assert!(
        got.is_none(),
        "keys are case-sensitive: {upper} found {got:?}"
    );
    let wildcard = format!("lower-{}%", &s[..2]);
    let got = ok(m.find_by_key(&wildcard).await, "find_by_key (wildcard)");
    assert!(got.is_none(), "a wildcard matched {got:?}");
}

/// `all` lists every app; `find_many` returns the existing ones of a list of ids.
pub async fn all_and_find_many<M, F, Fut>(factory: &F)
where
    M: AppManager,
    F: Fn(Vec<App>) -> Fut,
    Fut: Future<Output = Result<M, String>>,
{
    let s = suffix();
    let apps: Vec<App> = (0..3)
        .map(|i| App::new(format!("a{i}-{s}"), format!("a{i}-key-{s}"), "s"))
        .collect();
    let m = make(factory, apps.clone()).await;
    let all = ok(m.all().await, "all");
    for app in &apps {
        assert!(all.iter().any(|a| **a == *app), "all lacks {}", app.id);
    }
    let ids = vec![
        apps[0].id.clone(),
        format!("missing-{s}"),
        apps[2].id.clone(),
    ];
    let mut got: Vec<String> = ok(m.find_many(&ids).await, "find_many")
        .iter()
        .map(|a| a.id.clone())
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![apps[0].id.clone(), apps[2].id.clone()],
        "find_many"
    );
}
