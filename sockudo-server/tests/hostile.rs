//! Hostile and malformed input, table-driven: every row names what is sent (over the
//! WebSocket or the HTTP API) and what the node must answer. Afterwards the node must still
//! serve new and old clients correctly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{json, Value};
use sockudo_core::app::App;
use sockudo_core::auth::{sign_api_request, sign_channel, sign_user};
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "hostile-key";
const SECRET: &str = "hostile-secret";
const ID: &str = "7";
const OTHER_KEY: &str = "other-key";
const OTHER_SECRET: &str = "other-secret";
/// The node's `max_frame_bytes`.
const MAX_FRAME: usize = 4096;
/// The app's `max_event_payload_bytes`.
const MAX_DATA: usize = 1000;
/// A presence channel filled to the app's member cap before the rows run.
const FULL: &str = "presence-full";

/// What the node must answer.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// `pusher:error` with this `code` (null for `None`); the connection stays open.
    Error(Option<u16>),
    /// `pusher:error` with this code, then a close with the same code.
    ErrorThenClose(u16),
    /// A close frame with this code.
    Close(u16),
    /// `pusher:subscription_error` with this `status`; the connection stays open.
    SubError(u16),
    /// HTTP status with a JSON error body.
    Status(u16),
}

/// What a WebSocket row does before its hostile frame.
#[derive(Debug, Clone, Copy)]
enum Setup {
    None,
    Subscribe(&'static str),
    SubscribePrivate(&'static str),
    Signin(&'static str),
}

type HttpReq = (&'static str, String, Vec<u8>);

enum Action {
    /// Connect to `path` (default: the hostile app, protocol 7), run `setup`, send the frame
    /// built from the socket id.
    Ws {
        path: Option<&'static str>,
        setup: Setup,
        send: Option<fn(&str) -> Message>,
    },
    /// Send this request (method, path and query, body).
    Http(fn(&Api) -> HttpReq),
}

struct Row {
    name: &'static str,
    action: Action,
    expect: Expect,
}

fn ws(name: &'static str, setup: Setup, send: fn(&str) -> Message, expect: Expect) -> Row {
    Row {
        name,
        action: Action::Ws {
            path: None,
            setup,
            send: Some(send),
        },
        expect,
    }
}

fn ws_path(name: &'static str, path: &'static str, expect: Expect) -> Row {
    Row {
        name,
        action: Action::Ws {
            path: Some(path),
            setup: Setup::None,
            send: None,
        },
        expect,
    }
}

fn http(name: &'static str, req: fn(&Api) -> HttpReq, status: u16) -> Row {
    Row {
        name,
        action: Action::Http(req),
        expect: Expect::Status(status),
    }
}

fn text(v: Value) -> Message {
    Message::text(v.to_string())
}

fn subscribe(data: Value) -> Message {
    text(json!({"event": "pusher:subscribe", "data": data}))
}

fn presence(sid: &str, channel: &str, channel_data: &str) -> Message {
    let auth = sign_channel(KEY, SECRET, sid, channel, Some(channel_data));
    subscribe(json!({"channel": channel, "auth": auth, "channel_data": channel_data}))
}

fn client_event(channel: &str, data: Value) -> Message {
    text(json!({"event": "client-x", "channel": channel, "data": data}))
}

/// A correctly signed POST of `body` to `/apps/{id}{suffix}`.
fn post(api: &Api, suffix: &str, body: Value) -> HttpReq {
    let body = body.to_string().into_bytes();
    let path = api.path(suffix);
    let q = api.sign("POST", &path, &[], &body);
    ("POST", format!("{path}?{q}"), body)
}

/// A correctly signed GET of `/apps/{id}{suffix}` with `extra` query parameters.
fn get(api: &Api, suffix: &str, extra: &[(&str, &str)]) -> HttpReq {
    let path = api.path(suffix);
    let q = api.sign("GET", &path, extra, b"");
    ("GET", format!("{path}?{q}"), Vec::new())
}

fn event_body() -> Vec<u8> {
    json!({"name": "x", "channel": "c", "data": "1"})
        .to_string()
        .into_bytes()
}

/// A publish signed with a chosen key, secret, path and timestamp.
fn post_signed(key: &str, secret: &str, path: &str, ts: u64) -> HttpReq {
    let body = event_body();
    let q = sign_api_request(key, secret, "POST", path, &[], &body, ts);
    ("POST", format!("{path}?{q}"), body)
}

fn rows() -> Vec<Row> {
    use Expect::*;
    use Setup::None as Fresh;
    vec![
        // --- WebSocket: frames that are not protocol messages ---
        ws(
            "invalid JSON",
            Fresh,
            |_| Message::text("{\"event\":"),
            Error(None),
        ),
        ws(
            "JSON array",
            Fresh,
            |_| Message::text("[1,2,3]"),
            Error(None),
        ),
        ws(
            "JSON string",
            Fresh,
            |_| Message::text("\"pusher:ping\""),
            Error(None),
        ),
        ws(
            "missing event",
            Fresh,
            |_| text(json!({"data": {}})),
            Error(None),
        ),
        ws(
            "event not a string",
            Fresh,
            |_| text(json!({"event": 5, "data": {}})),
            Error(None),
        ),
        ws(
            "binary frame",
            Fresh,
            |_| Message::binary(&b"{\"event\":\"pusher:ping\"}"[..]),
            Error(None),
        ),
        ws(
            "frame over max_frame_bytes",
            Fresh,
            |_| text(json!({"event": "pusher:ping", "data": "x".repeat(MAX_FRAME + 100)})),
            Error(None),
        ),
        ws(
            "frame over twice the limit",
            Fresh,
            |_| text(json!({"event": "pusher:ping", "data": "x".repeat(MAX_FRAME * 2 + 100)})),
            Close(1009),
        ),
        ws(
            "unknown pusher: event",
            Fresh,
            |_| text(json!({"event": "pusher:launch_missiles", "data": {}})),
            Error(None),
        ),
        ws(
            "pusher_internal: from a client",
            Fresh,
            |_| {
                text(
                    json!({"event": "pusher_internal:subscription_succeeded", "channel": "news", "data": "{}"}),
                )
            },
            Error(None),
        ),
        ws(
            "app event without client- prefix",
            Fresh,
            |_| text(json!({"event": "my-event", "channel": "news", "data": {}})),
            Error(None),
        ),
        // --- subscribe: names and data ---
        ws(
            "channel name too long",
            Fresh,
            |_| subscribe(json!({"channel": "a".repeat(165)})),
            SubError(400),
        ),
        ws(
            "channel name with a space",
            Fresh,
            |_| subscribe(json!({"channel": "foo bar"})),
            SubError(400),
        ),
        ws(
            "channel name with a slash",
            Fresh,
            |_| subscribe(json!({"channel": "foo/bar"})),
            SubError(400),
        ),
        ws(
            "channel name non-ASCII",
            Fresh,
            |_| subscribe(json!({"channel": "café"})),
            SubError(400),
        ),
        ws(
            "empty channel name",
            Fresh,
            |_| subscribe(json!({"channel": ""})),
            SubError(400),
        ),
        ws(
            "subscribe without data",
            Fresh,
            |_| text(json!({"event": "pusher:subscribe"})),
            Error(None),
        ),
        ws(
            "subscribe data a number",
            Fresh,
            |_| text(json!({"event": "pusher:subscribe", "data": 5})),
            Error(None),
        ),
        ws(
            "subscribe data a non-JSON string",
            Fresh,
            |_| text(json!({"event": "pusher:subscribe", "data": "nope"})),
            Error(None),
        ),
        ws(
            "subscribe data an array",
            Fresh,
            |_| text(json!({"event": "pusher:subscribe", "data": ["news"]})),
            Error(None),
        ),
        ws(
            "subscribe without channel",
            Fresh,
            |_| subscribe(json!({"auth": "x"})),
            Error(None),
        ),
        ws(
            "subscribe channel not a string",
            Fresh,
            |_| subscribe(json!({"channel": 5})),
            Error(None),
        ),
        ws(
            "unsubscribe without data",
            Fresh,
            |_| text(json!({"event": "pusher:unsubscribe"})),
            Error(None),
        ),
        // --- private auth ---
        ws(
            "private without auth",
            Fresh,
            |_| subscribe(json!({"channel": "private-a"})),
            SubError(401),
        ),
        ws(
            "private with bad signature",
            Fresh,
            |_| {
                subscribe(
                    json!({"channel": "private-a", "auth": format!("{KEY}:{}", "ab".repeat(32))}),
                )
            },
            SubError(401),
        ),
        ws(
            "private auth not key:sig",
            Fresh,
            |_| subscribe(json!({"channel": "private-a", "auth": "garbage"})),
            SubError(401),
        ),
        ws(
            "private auth of another key",
            Fresh,
            |sid| {
                subscribe(
                    json!({"channel": "private-a", "auth": sign_channel(OTHER_KEY, OTHER_SECRET, sid, "private-a", None)}),
                )
            },
            SubError(401),
        ),
        ws(
            "private auth for another socket",
            Fresh,
            |_| {
                subscribe(
                    json!({"channel": "private-a", "auth": sign_channel(KEY, SECRET, "1.1", "private-a", None)}),
                )
            },
            SubError(401),
        ),
        ws(
            "private auth for another channel",
            Fresh,
            |sid| {
                subscribe(
                    json!({"channel": "private-a", "auth": sign_channel(KEY, SECRET, sid, "private-b", None)}),
                )
            },
            SubError(401),
        ),
        ws(
            "encrypted without auth",
            Fresh,
            |_| subscribe(json!({"channel": "private-encrypted-a"})),
            SubError(401),
        ),
        // --- presence ---
        ws(
            "presence without channel_data",
            Fresh,
            |sid| {
                subscribe(
                    json!({"channel": "presence-a", "auth": sign_channel(KEY, SECRET, sid, "presence-a", None)}),
                )
            },
            SubError(401),
        ),
        ws(
            "presence channel_data not JSON",
            Fresh,
            |sid| presence(sid, "presence-a", "not json"),
            SubError(400),
        ),
        ws(
            "presence channel_data without user_id",
            Fresh,
            |sid| presence(sid, "presence-a", "{\"user_info\":{}}"),
            SubError(400),
        ),
        ws(
            "presence user_id an object",
            Fresh,
            |sid| presence(sid, "presence-a", "{\"user_id\":{}}"),
            SubError(400),
        ),
        ws(
            "presence user_id empty",
            Fresh,
            |sid| presence(sid, "presence-a", "{\"user_id\":\"\"}"),
            SubError(400),
        ),
        ws(
            "presence user_id over 128 chars",
            Fresh,
            |sid| {
                presence(
                    sid,
                    "presence-a",
                    &json!({"user_id": "u".repeat(129)}).to_string(),
                )
            },
            SubError(400),
        ),
        ws(
            "presence member over the cap",
            Fresh,
            |sid| presence(sid, FULL, "{\"user_id\":\"intruder\"}"),
            SubError(403),
        ),
        ws(
            "presence user_info over the limit",
            Fresh,
            |sid| {
                presence(
                    sid,
                    "presence-a",
                    &json!({"user_id": "big", "user_info": {"bio": "b".repeat(1100)}}).to_string(),
                )
            },
            SubError(413),
        ),
        ws(
            "presence channel_data signed for other data",
            Fresh,
            |sid| {
                let auth =
                    sign_channel(KEY, SECRET, sid, "presence-a", Some("{\"user_id\":\"1\"}"));
                subscribe(
                    json!({"channel": "presence-a", "auth": auth, "channel_data": "{\"user_id\":\"admin\"}"}),
                )
            },
            SubError(401),
        ),
        // --- user channels and signin ---
        ws(
            "another user's #server-to-user-",
            Setup::Signin("me"),
            |_| subscribe(json!({"channel": "#server-to-user-you"})),
            SubError(403),
        ),
        ws(
            "#server-to-user- without signin",
            Fresh,
            |_| subscribe(json!({"channel": "#server-to-user-me"})),
            SubError(403),
        ),
        ws(
            "signin with bad signature",
            Fresh,
            |_| {
                let user_data = "{\"id\":\"1\"}";
                text(
                    json!({"event": "pusher:signin", "data": {"auth": sign_user(KEY, "wrong", "1.1", user_data), "user_data": user_data}}),
                )
            },
            ErrorThenClose(4009),
        ),
        ws(
            "signin of another key",
            Fresh,
            |sid| {
                let user_data = "{\"id\":\"1\"}";
                text(
                    json!({"event": "pusher:signin", "data": {"auth": sign_user(OTHER_KEY, OTHER_SECRET, sid, user_data), "user_data": user_data}}),
                )
            },
            ErrorThenClose(4009),
        ),
        ws(
            "signin data not an object",
            Fresh,
            |_| text(json!({"event": "pusher:signin", "data": 42})),
            ErrorThenClose(4009),
        ),
        ws(
            "signin user_data without id",
            Fresh,
            |sid| {
                let user_data = "{\"name\":\"x\"}";
                text(
                    json!({"event": "pusher:signin", "data": {"auth": sign_user(KEY, SECRET, sid, user_data), "user_data": user_data}}),
                )
            },
            ErrorThenClose(4009),
        ),
        // --- client events ---
        ws(
            "client event on a public channel",
            Setup::Subscribe("news"),
            |_| client_event("news", json!({})),
            Error(None),
        ),
        ws(
            "client event on an encrypted channel",
            Setup::SubscribePrivate("private-encrypted-x"),
            |_| client_event("private-encrypted-x", json!({})),
            Error(None),
        ),
        ws(
            "client event when not subscribed",
            Fresh,
            |_| client_event("private-chat", json!({})),
            Error(None),
        ),
        ws(
            "client event without channel",
            Fresh,
            |_| text(json!({"event": "client-x", "data": {}})),
            Error(None),
        ),
        ws(
            "client event with a bad channel name",
            Fresh,
            |_| client_event("bad channel", json!({})),
            Error(None),
        ),
        ws(
            "client event data over the limit",
            Setup::SubscribePrivate("private-chat"),
            |_| client_event("private-chat", json!("d".repeat(MAX_DATA + 100))),
            Error(None),
        ),
        ws(
            "client event name over 200 chars",
            Setup::SubscribePrivate("private-chat"),
            |_| {
                text(
                    json!({"event": format!("client-{}", "n".repeat(200)), "channel": "private-chat", "data": {}}),
                )
            },
            Error(None),
        ),
        // --- connection URLs ---
        ws_path(
            "unsupported protocol 8",
            "/app/hostile-key?protocol=8",
            ErrorThenClose(4007),
        ),
        ws_path("protocol missing", "/app/hostile-key", ErrorThenClose(4008)),
        ws_path(
            "unknown key with odd characters",
            "/app/%E2%98%83%20x?protocol=7",
            ErrorThenClose(4001),
        ),
        ws_path(
            "path below the app",
            "/app/hostile-key/extra?protocol=7",
            ErrorThenClose(4005),
        ),
        // --- HTTP API: authentication ---
        http(
            "bad signature",
            |api| post_signed(&api.key, "wrong", &api.path("/events"), now_secs()),
            401,
        ),
        http(
            "stale timestamp (past)",
            |api| {
                post_signed(
                    &api.key,
                    &api.secret,
                    &api.path("/events"),
                    now_secs() - 601 - 60,
                )
            },
            401,
        ),
        http(
            "stale timestamp (future)",
            |api| {
                post_signed(
                    &api.key,
                    &api.secret,
                    &api.path("/events"),
                    now_secs() + 601 + 60,
                )
            },
            401,
        ),
        http(
            "missing body_md5",
            |api| {
                let path = api.path("/events");
                let q = api.sign("POST", &path, &[], b"");
                ("POST", format!("{path}?{q}"), event_body())
            },
            401,
        ),
        http(
            "body_md5 mismatch",
            |api| {
                let path = api.path("/events");
                let q = api.sign("POST", &path, &[], b"{\"name\":\"other\"}");
                ("POST", format!("{path}?{q}"), event_body())
            },
            401,
        ),
        http(
            "app id not the key's app",
            |api| post_signed(&api.key, &api.secret, "/apps/8/events", now_secs()),
            401,
        ),
        http(
            "unknown key",
            |api| post_signed("who-knows", &api.secret, &api.path("/events"), now_secs()),
            401,
        ),
        http(
            "signed with another app's credentials",
            |api| post_signed(OTHER_KEY, OTHER_SECRET, &api.path("/events"), now_secs()),
            401,
        ),
        http(
            "no auth parameters",
            |api| ("POST", api.path("/events"), event_body()),
            400,
        ),
        http(
            "auth_version 2.0",
            |api| {
                let (m, t, b) =
                    post_signed(&api.key, &api.secret, &api.path("/events"), now_secs());
                (m, t.replace("auth_version=1.0", "auth_version=2.0"), b)
            },
            400,
        ),
        http(
            "timestamp not a number",
            |api| {
                let path = api.path("/events");
                (
                    "POST",
                    format!(
                        "{path}?auth_key={}&auth_timestamp=soon&auth_version=1.0&auth_signature=00",
                        api.key
                    ),
                    event_body(),
                )
            },
            400,
        ),
        http(
            "percent-garbage query",
            |api| {
                let path = api.path("/channels");
                ("GET", format!("{path}?auth_key=%zz%&auth_timestamp=%ff%fe&auth_version=1.0&auth_signature=%"), Vec::new())
            },
            400,
        ),
        // --- HTTP API: bodies ---
        http(
            "malformed JSON body",
            |api| {
                let path = api.path("/events");
                let body = b"{\"name\": \"x\", ".to_vec();
                let q = api.sign("POST", &path, &[], &body);
                ("POST", format!("{path}?{q}"), body)
            },
            400,
        ),
        http(
            "body a JSON array",
            |api| post(api, "/events", json!([1, 2])),
            400,
        ),
        http(
            "missing name",
            |api| post(api, "/events", json!({"channel": "c", "data": "1"})),
            400,
        ),
        http(
            "missing data",
            |api| post(api, "/events", json!({"name": "x", "channel": "c"})),
            400,
        ),
        http(
            "missing channel",
            |api| post(api, "/events", json!({"name": "x", "data": "1"})),
            400,
        ),
        http(
            "channels not a list",
            |api| {
                post(
                    api,
                    "/events",
                    json!({"name": "x", "channels": "c", "data": "1"}),
                )
            },
            400,
        ),
        http(
            "over 100 channels",
            |api| {
                post(
                    api,
                    "/events",
                    json!({"name": "x", "channels": (0..101).map(|i| format!("c{i}")).collect::<Vec<_>>(), "data": "1"}),
                )
            },
            400,
        ),
        http(
            "empty channels",
            |api| {
                post(
                    api,
                    "/events",
                    json!({"name": "x", "channels": [], "data": "1"}),
                )
            },
            400,
        ),
        http(
            "invalid channel name",
            |api| {
                post(
                    api,
                    "/events",
                    json!({"name": "x", "channel": "no spaces", "data": "1"}),
                )
            },
            400,
        ),
        http(
            "event name over 200 chars",
            |api| {
                post(
                    api,
                    "/events",
                    json!({"name": "n".repeat(201), "channel": "c", "data": "1"}),
                )
            },
            400,
        ),
        http(
            "data over the app limit",
            |api| {
                post(
                    api,
                    "/events",
                    json!({"name": "x", "channel": "c", "data": "d".repeat(MAX_DATA + 1)}),
                )
            },
            413,
        ),
        http(
            "invalid socket_id",
            |api| {
                post(
                    api,
                    "/events",
                    json!({"name": "x", "channel": "c", "data": "1", "socket_id": "1.2.3"}),
                )
            },
            400,
        ),
        http(
            "socket_id not decimal",
            |api| {
                post(
                    api,
                    "/events",
                    json!({"name": "x", "channel": "c", "data": "1", "socket_id": "abc.def"}),
                )
            },
            400,
        ),
        http(
            "unknown info attribute",
            |api| {
                post(
                    api,
                    "/events",
                    json!({"name": "x", "channel": "c", "data": "1", "info": "secrets"}),
                )
            },
            400,
        ),
        http(
            "batch of 11",
            |api| {
                post(
                    api,
                    "/batch_events",
                    json!({"batch": (0..11).map(|i| json!({"name": "x", "channel": format!("c{i}"), "data": "1"})).collect::<Vec<_>>()}),
                )
            },
            400,
        ),
        http(
            "empty batch",
            |api| post(api, "/batch_events", json!({"batch": []})),
            400,
        ),
        http(
            "batch not a list",
            |api| post(api, "/batch_events", json!({"batch": {"name": "x"}})),
            400,
        ),
        http(
            "batch item over the data limit",
            |api| {
                post(
                    api,
                    "/batch_events",
                    json!({"batch": [{"name": "x", "channel": "c", "data": "d".repeat(MAX_DATA + 1)}]}),
                )
            },
            413,
        ),
        http(
            "body over the API body limit",
            |api| {
                let path = api.path("/events");
                let body = json!({"name": "x", "channel": "c", "data": "d".repeat(2 << 20)})
                    .to_string()
                    .into_bytes();
                let q = api.sign("POST", &path, &[], &body);
                ("POST", format!("{path}?{q}"), body)
            },
            413,
        ),
        // --- HTTP API: queries ---
        http(
            "user_count on a non-presence channel",
            |api| get(api, "/channels/news", &[("info", "user_count")]),
            400,
        ),
        http(
            "cache info on a non-cache channel",
            |api| get(api, "/channels/news", &[("info", "cache")]),
            400,
        ),
        http(
            "users of a non-presence channel",
            |api| get(api, "/channels/news/users", &[]),
            400,
        ),
        http(
            "list with user_count and no presence prefix",
            |api| get(api, "/channels", &[("info", "user_count")]),
            400,
        ),
        http(
            "list with subscription_count",
            |api| get(api, "/channels", &[("info", "subscription_count")]),
            400,
        ),
        http(
            "channel name with an encoded space",
            |api| get(api, "/channels/a%20b", &[]),
            400,
        ),
        http("unknown endpoint", |api| get(api, "/nothing", &[]), 404),
    ]
}

async fn setup(client: &mut TestClient, app: &App, setup: Setup) {
    match setup {
        Setup::None => {}
        Setup::Subscribe(ch) => {
            client.subscribe(ch).await;
        }
        Setup::SubscribePrivate(ch) => {
            client.subscribe_private(app, ch).await;
        }
        Setup::Signin(user) => {
            client.signin(app, user).await;
        }
    }
}

/// Run one WebSocket row; returns the client when the connection must stay open.
async fn run_ws(
    node: &TestNode,
    app: &App,
    row: &Row,
    path: Option<&str>,
    setup_step: Setup,
    send: Option<fn(&str) -> Message>,
) -> Option<TestClient> {
    let name = row.name;
    let mut c = match path {
        Some(p) => node.connect(p).await,
        None => node.client(KEY).await,
    };
    setup(&mut c, app, setup_step).await;
    if let Some(send) = send {
        let msg = send(&c.socket_id);
        assert!(c.try_send_raw(msg).await, "{name}: send failed");
    }
    match row.expect {
        Expect::Error(code) => {
            let err = c
                .try_recv_event("pusher:error", WAIT)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                err["data"]["code"],
                code.map_or(Value::Null, Value::from),
                "{name}: {err}"
            );
            assert!(
                err["data"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "{name}: {err}"
            );
        }
        Expect::SubError(status) => {
            let err = c
                .try_recv_event("pusher:subscription_error", WAIT)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(err["data"]["status"], status, "{name}: {err}");
            assert!(
                err["data"]["type"].is_string() && err["data"]["error"].is_string(),
                "{name}: {err}"
            );
            assert!(err["channel"].is_string(), "{name}: {err}");
        }
        Expect::ErrorThenClose(code) => {
            let err = c
                .try_recv_event("pusher:error", WAIT)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(err["data"]["code"], code, "{name}: {err}");
            assert_eq!(c.expect_close(WAIT).await, Some(code), "{name}");
            return None;
        }
        Expect::Close(code) => {
            assert_eq!(c.expect_close(WAIT).await, Some(code), "{name}");
            return None;
        }
        Expect::Status(_) => unreachable!("{name}: HTTP expectation on a WebSocket row"),
    }
    c.assert_alive().await;
    Some(c)
}

#[tokio::test]
async fn hostile_inputs_are_refused_and_the_node_keeps_serving() {
    let mut app = App::new(ID, KEY, SECRET);
    app.enable_client_messages = true;
    app.max_presence_members = 2;
    app.max_event_payload_bytes = MAX_DATA;
    let other = App::new("8", OTHER_KEY, OTHER_SECRET);
    let mut s = settings(vec![app.clone(), other]);
    s.max_frame_bytes = MAX_FRAME;
    let node = TestNode::start(s).await;
    let api = node.api(&app);

    let mut kept: Vec<(&'static str, TestClient)> = Vec::new();
    for (i, user) in ["f1", "f2"].into_iter().enumerate() {
        let mut c = node.client(KEY).await;
        c.subscribe_presence(&app, FULL, user, json!({"i": i}))
            .await;
        kept.push(("presence filler", c));
    }

    let rows = rows();
    assert!(rows.len() >= 30, "{} rows", rows.len());
    for row in &rows {
        match &row.action {
            Action::Ws { path, setup, send } => {
                if let Some(c) = run_ws(&node, &app, row, *path, *setup, *send).await {
                    kept.push((row.name, c));
                }
            }
            Action::Http(req) => {
                let (method, target, body) = req(&api);
                let (status, body) = api.raw(method, &target, body).await;
                let Expect::Status(expected) = row.expect else {
                    unreachable!("{}: WebSocket expectation on an HTTP row", row.name)
                };
                assert_eq!(status, expected, "{}: {body}", row.name);
                assert_json_error(expected, &body);
            }
        }
    }

    // Nothing hostile was published or let in.
    let (status, users) = api.get(&format!("/channels/{FULL}/users"), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(users["users"].as_array().map(Vec::len), Some(2), "{users}");
    let (_, list) = api.get("/channels", &[]).await;
    let mut names: Vec<&String> = list["channels"]
        .as_object()
        .expect("channels")
        .keys()
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["news", FULL, "private-chat", "private-encrypted-x"],
        "{list}"
    );

    // A fresh, well-behaved client gets the full service.
    let mut fresh = node.client(KEY).await;
    fresh.subscribe("after").await;
    fresh.subscribe_private(&app, "private-after").await;
    api.trigger("after", "ok", "fine").await;
    assert_eq!(fresh.recv_event("ok", WAIT).await["data"], "fine");

    // Every earlier client that was not closed still works.
    for (_, c) in &mut kept {
        c.subscribe("after").await;
    }
    api.trigger("after", "again", "2").await;
    fresh.recv_event("again", WAIT).await;
    for (name, c) in &mut kept {
        let ev = c
            .try_recv_event("again", WAIT)
            .await
            .unwrap_or_else(|e| panic!("client kept after {name:?}: {e}"));
        assert_eq!(ev["data"], "2");
        c.assert_alive().await;
    }
    let mut peer = node.client(KEY).await;
    peer.subscribe_private(&app, "private-after").await;
    peer.client_event("private-after", "client-hi", json!({"ok": true}))
        .await;
    assert_eq!(
        fresh.recv_event("client-hi", WAIT).await["data"],
        json!({"ok": true})
    );
}
