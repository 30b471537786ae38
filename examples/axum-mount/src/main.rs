//! `axum-mount`: an existing axum app (its own routes and state) serving Sockudo under
//! `/realtime`, plus its own route behind the core tower layers. The router is built in
//! `lib.rs` ([`axum_mount::app`]).
//!
//! # Run with
//! ```text
//! cargo run -p axum-mount                          # listens on 127.0.0.1:3000
//! cargo run -p axum-mount -- 0.0.0.0:3000          # or any address
//! curl http://127.0.0.1:3000/api/todos             # the app's own API
//! curl -XPOST -H 'content-type: application/json' -d '{"title":"ship it"}' http://127.0.0.1:3000/api/todos
//! ```
//! The node uses the usual settings (memory defaults, `SOCKUDO_DEFAULT_APP_ID/_KEY/_SECRET`,
//! `ADAPTER_DRIVER`, … from the environment) except the listen address, which is the app's.
//! Like the `sockudo` binary, this example opts in to the development app `app-id` / `app-key` /
//! `app-secret` when no app is configured (and warns): a library caller gets
//! `ConfigError::NoApps` instead.
//!
//! pusher-js connects through the prefix with
//! `new Pusher('app-key', { wsHost: '127.0.0.1', wsPort: 3000, wsPath: '/realtime', forceTLS: false, enabledTransports: ['ws'], cluster: 'mt1' })`
//! (the socket opens `ws://127.0.0.1:3000/realtime/app/app-key`); subscribe to `todos` to see
//! `todo-created` events. The Pusher HTTP API is at `/realtime/apps/app-id/...`: sign the full
//! path, e.g. `sign_api_request("app-key", "app-secret", "POST", "/realtime/apps/app-id/events", …)`.
//! `POST /realtime-admin/publish` takes `{"channel","event","data"}` signed the same way over
//! `/realtime-admin/publish`, 3 requests back to back then 1 per second, and honours
//! `X-Idempotency-Key`.
//!
//! Ctrl-C drains the node (unready, sockets closed with 4200 after the grace period) and then
//! stops the server.

use std::collections::HashMap;
use std::error::Error;
use std::process::ExitCode;
use std::sync::Arc;

use sockudo_server::config::{CliOverrides, NodeSettings};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("axum-mount: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".into());
    let env: HashMap<String, String> = std::env::vars().collect();
    let cli = CliOverrides {
        dev_app: true,
        ..Default::default()
    };
    let settings = NodeSettings::load(&cli, &env)?;
    if settings.serves_dev_secret() {
        eprintln!("axum-mount: WARNING: serving the public development secret `app-secret`");
    }
    let node = sockudo_server::build_node(settings).await?;

    let app = axum_mount::app(Arc::clone(&node));

    let listener = TcpListener::bind(&addr).await?;
    let local = listener.local_addr()?;
    println!("todo app on http://{local}/  (GET /api/todos)");
    println!("sockudo WebSocket at ws://{local}/realtime/app/{{key}}, Pusher HTTP API at http://{local}/realtime/apps/{{id}}/...");
    println!("layered admin route: POST http://{local}/realtime-admin/publish");

    // The node answers `/realtime/ready` with 503 "starting" until it is told it is served.
    node.mark_serving();
    let drain_node = Arc::clone(&node);
    axum::serve(listener, app.into_make_service())
        .with_graceful_shutdown(async move {
            let _ = tokio::signal::ctrl_c().await;
            sockudo_server::drain(&drain_node).await;
        })
        .await?;
    Ok(())
}
