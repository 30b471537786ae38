//! `--mode channel-flood`: the node's RSS before, during and after a subscribe flood.
//!
//! One release node on memory defaults, except short retentions (`HOT_BUFFER_SECS`,
//! `HISTORY_MAX_AGE_SECS`, `MESSAGE_DEDUP_SECS` = `--flood-retention-secs`) so reclamation
//! shows within the run, and `MAX_SUBSCRIPTIONS_PER_CONNECTION` / `SUBSCRIBE_BURST` raised to
//! the channels per connection. `--connections` sockets (`--protocol 7` or `2`) each
//! subscribe to `--channels` distinct channels (pipelined, then every success awaited); RSS
//! of the node is read from `/proc` before, once everything is subscribed, right after every
//! socket closed, and once the retention has passed twice.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::cli::Args;
use crate::procs;
use crate::rss::vm_rss_kib;
use crate::wsc::{self, Family};

fn mib(kib: Option<u64>) -> String {
    kib.map_or("?".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

/// Run the mode; returns the report text.
pub async fn run(args: &Args) -> Result<String, String> {
    let family = if args.protocol == 2 {
        Family::V2
    } else {
        Family::V1
    };
    let per_conn = args.channels.max(1);
    let conns = args.connections.max(1);
    let retention = args.flood_retention_secs.max(1);
    let dir = procs::scratch_dir()?;
    let bin = procs::sockudo_bin(args.sockudo_bin.as_deref())?;
    let env: Vec<(String, String)> = [
        ("HOT_BUFFER_SECS", retention.to_string()),
        ("HISTORY_MAX_AGE_SECS", retention.to_string()),
        ("MESSAGE_DEDUP_SECS", retention.to_string()),
        ("MAX_SUBSCRIPTIONS_PER_CONNECTION", per_conn.to_string()),
        ("SUBSCRIBE_BURST", per_conn.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let node = procs::start_node(&bin, &dir, "flood", &env, None).await?;
    let pid = node.pid().ok_or("the node is not running")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = vm_rss_kib(pid);
    let url = wsc::url(&node.ws_base(), &args.key, family);
    let mut rows = Vec::new();
    // Twice: memory the node kept after the first flood must be reused by the second (a
    // leak would add up), and the allocator should give back what stays unused.
    for round in 1..=2 {
        let sockets = flood(&url, family, conns, per_conn, round).await?;
        let during = vm_rss_kib(pid);
        for mut ws in sockets {
            let _ = ws.close(None).await;
            while let Some(Ok(_)) = ws.next().await {}
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let closed = vm_rss_kib(pid);
        tokio::time::sleep(Duration::from_secs(retention * 2 + 2)).await;
        let after = vm_rss_kib(pid);
        rows.push((round, during, closed, after));
    }
    drop(node);
    let mut out = format!(
        "channel-flood: {conns} connections x {per_conn} channels = {} subscriptions, protocol {}, retention {retention} s\n\
         node RSS MiB before: {}\n",
        conns * per_conn,
        family.protocol(),
        mib(before),
    );
    for (round, during, closed, after) in rows {
        out.push_str(&format!(
            "round {round}: subscribed {}  closed {}  after 2x retention {}\n",
            mib(during),
            mib(closed),
            mib(after)
        ));
    }
    Ok(out)
}

/// Connect `conns` sockets, each subscribing `per_conn` distinct channels; returns them once
/// every subscription succeeded.
async fn flood(
    url: &str,
    family: Family,
    conns: usize,
    per_conn: usize,
    round: usize,
) -> Result<Vec<wsc::Ws>, String> {
    let mut sockets = Vec::with_capacity(conns);
    for c in 0..conns {
        let (mut ws, _) = wsc::connect(url, family).await?;
        for i in 0..per_conn {
            let frame = wsc::subscribe_frame(family, &format!("flood-{round}-{c}-{i}"), None);
            ws.send(Message::text(frame))
                .await
                .map_err(|e| format!("send: {e}"))?;
        }
        let ok = format!("{}subscription_succeeded", family.internal());
        for _ in 0..per_conn {
            wsc::wait_for(&mut ws, family, &ok, None).await?;
        }
        sockets.push(ws);
    }
    Ok(sockets)
}
