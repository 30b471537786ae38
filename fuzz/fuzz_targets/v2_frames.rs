//! Fuzz protocol V2 frames on a live connection: `sockudo:resume` (any positions, serials,
//! stream ids, channel names) and `sockudo:channel_history` (limits, cursors, serial bounds,
//! directions), plus subscribes to make positions real, against one in-process node on
//! memory backends over a loopback socket. A panic in the node (a task or the connection's
//! own handling, which closes with 1011) aborts, so libFuzzer reports it.
//!
//! Run with `scripts/fuzz.sh v2_frames 60`.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use sockudo_core::app::App;
use sockudo_server::config::NodeSettings;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct World {
    rt: tokio::runtime::Runtime,
    addr: SocketAddr,
    ws: Mutex<Option<Ws>>,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        std::panic::set_hook(Box::new(|info| {
            eprintln!("{info}");
            std::process::abort();
        }));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let addr = rt.block_on(async {
            let mut settings = NodeSettings::default();
            settings.apps = vec![App::new("app-id", "app-key", "app-secret")];
            let node = sockudo_server::build_node_memory(settings);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            tokio::spawn(sockudo_server::serve(listener, node, std::future::pending()));
            addr
        });
        World { rt, addr, ws: Mutex::new(None) }
    })
}

/// Reads little-endian numbers and short strings off the input.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }
    fn u64(&mut self) -> u64 {
        (0..8).fold(0u64, |acc, i| acc | (u64::from(self.byte()) << (8 * i)))
    }
    fn text(&mut self) -> String {
        let n = usize::from(self.byte() % 24);
        let take = n.min(self.0.len());
        let (s, rest) = self.0.split_at(take);
        self.0 = rest;
        String::from_utf8_lossy(s).into_owned()
    }
    fn number(&mut self) -> Value {
        match self.byte() % 5 {
            0 => json!(self.u64()),
            1 => json!(-(self.u64() as i64)),
            2 => json!(f64::from_bits(self.u64())),
            3 => json!(self.text()),
            _ => json!(u64::MAX),
        }
    }
}

fn frame(b: &mut Bytes<'_>) -> String {
    let channel = match b.byte() % 3 {
        0 => "feed".to_owned(),
        1 => format!("presence-{}", b.text()),
        _ => b.text(),
    };
    match b.byte() % 4 {
        0 => json!({"event": "sockudo:subscribe", "data": {"channel": channel}}).to_string(),
        1 => {
            let n = usize::from(b.byte() % 4);
            let mut positions = serde_json::Map::new();
            for _ in 0..n {
                let name = b.text();
                let pos = json!({"serial": b.number(), "stream_id": b.text(), "last_message_id": b.text()});
                positions.insert(name, pos);
            }
            let pos = json!({"serial": b.number(), "stream_id": b.text()});
            positions.insert(channel, pos);
            json!({"event": "sockudo:resume", "data": {"channel_positions": positions}}).to_string()
        }
        2 => json!({"event": "sockudo:channel_history", "data": {
            "channel": channel, "limit": b.number(), "direction": b.text(), "cursor": b.text(),
            "start_serial": b.number(), "end_serial": b.number(), "until_attach": b.byte() % 2 == 0
        }})
        .to_string(),
        _ => String::from_utf8_lossy(b.0).into_owned(),
    }
}

async fn connect(addr: SocketAddr) -> Option<Ws> {
    let url = format!("ws://{addr}/app/app-key?protocol=2&client=fuzz&version=1.0");
    let (ws, _) = tokio_tungstenite::connect_async(url).await.ok()?;
    Some(ws)
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let mut bytes = Bytes(data);
    let text = frame(&mut bytes);
    let mut slot = w.ws.lock().expect("lock");
    w.rt.block_on(async {
        if slot.is_none() {
            *slot = connect(w.addr).await;
        }
        let Some(ws) = slot.as_mut() else { return };
        if ws.send(Message::text(text)).await.is_err() {
            *slot = None;
            return;
        }
        // Read what comes back for a moment; a 1011 close means the node panicked.
        while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(5), ws.next()).await {
            match msg {
                Ok(Message::Close(Some(f))) if u16::from(f.code) == 1011 => {
                    panic!("the node closed the connection with 1011 (a panic in its handling)")
                }
                Ok(Message::Close(_)) | Err(_) => {
                    *slot = None;
                    return;
                }
                Ok(_) => {}
            }
        }
    });
});
