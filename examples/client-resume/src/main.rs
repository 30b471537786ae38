//! `client-resume`: a Sockudo V2 client that prints every message with its serial and, after
//! each reconnect, resumes from its last position: the server replays what was missed or says
//! why it cannot (`RecoveryFailed`), before any new live message.
//!
//! # Run with
//! Against one node on memory defaults:
//! ```text
//! cargo run -p sockudo-server --bin sockudo          # app-key/app-secret on :6001, memory history
//! cargo run -p client-resume -- --publish            # second terminal: subscribe + publish a tick every 500 ms
//! ```
//! Arguments: `[--publish] [URL] [CHANNEL]`, defaults `ws://127.0.0.1:6001` and `ticker`
//! (without `--publish`, publish to the channel yourself through the HTTP API).
//! Each line shows `serial`, channel, event, data and the stream id.
//!
//! Now kill the node (Ctrl-C) and start it again. The client reconnects and sends
//! `sockudo:resume` with its last `(stream_id, serial)`, and is answered
//! `RecoveryFailed(stream_reset)`: a memory history lives in the node's process, so the
//! restarted node has a new, empty stream for the channel (serials start again at 1 under a
//! new stream id) and cannot prove what was published meanwhile. The client fails closed:
//! the failure comes before any new live message, so the app knows to reload state or
//! backfill. (A short network cut with the node still up resumes fine: the node still has
//! the messages and replays them.)
//!
//! Against a cluster, with no gap:
//! ```text
//! cargo run -p client-resume -- --cluster            # needs redis-server on PATH
//! ```
//! This starts Redis and 2 nodes in-process (sockudo-testkit) behind a round-robin balancer,
//! sharing Redis for fanout and for the V2 history. The client subscribes through the
//! balancer; a steady numbered stream is published through the other node; the client's node
//! is killed midway (a crash: no close frame). The client reconnects through the balancer to
//! the surviving node, which finds the client's position in the shared history and replays
//! what it missed. It ends with `recovered N messages, 0 lost, 0 duplicates` (exit status 1
//! if anything was lost or duplicated).

use std::process::ExitCode;
use std::time::Duration;

use client_resume::{follow, run_cluster, ClusterDemo, FollowOptions};

#[tokio::main]
async fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!(
            "usage: client-resume [--publish] [URL] [CHANNEL]\n       client-resume --cluster"
        );
        return ExitCode::SUCCESS;
    }
    if args.iter().any(|a| a == "--cluster") {
        return cluster().await;
    }
    let publish = take_flag(&mut args, "--publish");
    let opts = FollowOptions {
        url: args
            .first()
            .cloned()
            .unwrap_or_else(|| "ws://127.0.0.1:6001".into()),
        channel: args.get(1).cloned().unwrap_or_else(|| "ticker".into()),
        publish_every: publish.then_some(Duration::from_millis(500)),
    };
    match follow(opts).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("client-resume: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn cluster() -> ExitCode {
    match run_cluster(ClusterDemo::default()).await {
        Ok(report) => {
            println!(
                "published {}, received {}; killed node-{}, resumed on {}; {} resume(s) ok, {} failed; {} serial gap(s)",
                report.published,
                report.received,
                report.killed_node,
                report.resumed_on.map_or_else(|| "?".to_owned(), |i| format!("node-{i}")),
                report.recoveries,
                report.recovery_failures,
                report.serial_gaps
            );
            println!("{}", report.summary());
            if report.lost == 0 && report.duplicates == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("client-resume --cluster: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Remove `flag` from `args`; whether it was there.
fn take_flag(args: &mut Vec<String>, flag: &str) -> bool {
    let before = args.len();
    args.retain(|a| a != flag);
    args.len() != before
}
