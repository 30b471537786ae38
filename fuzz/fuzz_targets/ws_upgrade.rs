//! Fuzz what the node does with an HTTP request before and during a WebSocket upgrade: the
//! path (app key), the query (`protocol`, `client`, `version`), the upgrade headers, and the
//! API routes next to it, through the node's own router (one in-process node on memory
//! backends). A panic anywhere aborts, so libFuzzer reports it.
//!
//! Input: first line `METHOD PATH?QUERY`, then `name: value` header lines, a blank line, the
//! body. Run with `scripts/fuzz.sh ws_upgrade 60`.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use sockudo_core::app::App;
use sockudo_server::config::NodeSettings;
use sockudo_server::Node;
use tower::ServiceExt;

struct World {
    rt: tokio::runtime::Runtime,
    node: Arc<Node>,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        std::panic::set_hook(Box::new(|info| {
            eprintln!("{info}");
            std::process::abort();
        }));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let mut settings = NodeSettings::default();
        settings.apps = vec![App::new("app-id", "app-key", "app-secret")];
        let node = rt.block_on(async { sockudo_server::build_node_memory(settings) });
        World { rt, node }
    })
}

fn request(data: &[u8]) -> Option<http::Request<axum::body::Body>> {
    let text = std::str::from_utf8(data).ok()?;
    let (head, body) = text.split_once("\n\n").unwrap_or((text, ""));
    let mut lines = head.lines();
    let (method, uri) = lines.next()?.split_once(' ')?;
    let mut req = http::Request::builder().method(method).uri(uri);
    for line in lines {
        let (name, value) = line.split_once(':')?;
        req = req.header(name.trim(), value.trim());
    }
    req.body(axum::body::Body::from(body.to_owned())).ok()
}

fuzz_target!(|data: &[u8]| {
    let Some(req) = request(data) else { return };
    let w = world();
    let router = sockudo_server::router(Arc::clone(&w.node));
    w.rt.block_on(async {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), router.oneshot(req)).await;
    });
});
