//! # sockudo-bench
//!
//! Load tool for one Sockudo node speaking Pusher protocol 7: opens N WebSocket subscribers on
//! one (or K) public channel(s), publishes through the signed HTTP API at a fixed rate, and
//! reports connection setup rate, deliveries per second, publish → receipt latency percentiles,
//! loss, publish HTTP statuses and, given the server's pid, its RSS per idle connection.
//!
//! ## Run with
//!
//! ```text
//! # a node to measure (dev app: app-id / app-key / app-secret)
//! cargo build --release -p sockudo-server --bin sockudo
//! $CARGO_TARGET_DIR/release/sockudo --port 6001 &
//!
//! # 1,000 subscribers, 20 publishes/s for 10 s after 2 s warmup, server RSS per connection
//! cargo run --release -p sockudo-bench -- --connections 1000 --rate 20 --duration 10 \
//!     --server-pid $(pgrep -n sockudo)
//!
//! # connection setup rate and idle RSS only
//! cargo run --release -p sockudo-bench -- --mode connect-only --connections 10000 \
//!     --connect-concurrency 200 --server-pid $(pgrep -n sockudo)
//!
//! # spread over 10 channels, 4 KiB payloads, 8 publishers, JSON output
//! cargo run --release -p sockudo-bench -- --connections 5000 --channels 10 --rate 200 \
//!     --publishers 8 --payload-bytes 4096 --json
//!
//! # multi-process modes: the tool starts redis-server and release `sockudo` nodes itself
//! # (BENCHMARKS.md has the commands and results)
//! SOCKUDO_BIN=$CARGO_TARGET_DIR/release/sockudo cargo run --release -p sockudo-bench -- \
//!     --mode cluster-fanout --connections 1000 --publishers 32     # 3 nodes + Redis, rising rates
//! ... --mode resume-storm --connections 5000 --connect-concurrency 500   # SIGKILL A, resume on B
//! ... --mode webhooks --webhook-rate 500                                # webhooks via the Redis queue
//! ... --mode push --push-nodes 3                                        # push admission + dispatch
//! ```
//!
//! `--help` lists every option. Progress goes to stderr; the result (table or `--json`) to stdout.
//!
//! ## How it measures
//! - Connect phase: all clients start at once, at most `--connect-concurrency` handshakes
//!   (TCP + upgrade + `pusher:connection_established` + subscribe + `subscription_succeeded`) in
//!   flight. Setup rate = subscribed clients / (last subscribe − first attempt).
//! - Memory: server `VmRSS` before connecting and after everyone subscribed and `--idle` seconds
//!   passed; the difference over the connection count is the RSS per idle connection. Use a
//!   freshly started server: an allocator keeps freed pages, so after an earlier run "before"
//!   already holds the old connections' memory and the per-connection figure comes out near zero.
//! - Publish phase: publish `n` is due at `n / rate`; its `data` carries the send time as
//!   nanoseconds since a process-wide monotonic origin (publishers and clients share one process),
//!   so latency = receipt − send with no clock skew. Messages sent during `--warmup` are
//!   delivered but not measured; after the window, clients get `--drain` seconds to catch up.
//!   Expected = Σ (200-answered in-window publishes × subscribers of that channel).
//!
//! ## Layout
//! [`cli`] options · [`client`] subscriber tasks · [`publisher`] HTTP publishers ·
//! [`payload`] message build/parse · [`histogram`] log-linear histogram · [`clock`] time origin ·
//! [`rss`] `/proc` memory · [`limits`] open-file limit · [`run`] phases · [`report`] output.
//! Multi-process modes: [`cluster_fanout`], [`resume_storm`], [`webhooks`], [`push`], on [`procs`] (child
//! redis-server / sockudo), [`adapters`] (the broker of `--adapter`), [`api`] (signed publishes to any node) and [`wsc`] (V1/V2 sockets).

mod adapters;
mod api;
mod bare;
mod channel_flood;
mod cli;
mod client;
mod clock;
mod cluster_fanout;
mod histogram;
mod http_sink;
mod interest_bytes;
mod limits;
mod payload;
mod procs;
mod publisher;
mod push;
mod report;
mod resume_storm;
mod rss;
mod run;
mod webhooks;
mod wsc;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let clock = clock::Clock::start();
    let args = cli::Args::parse();
    if let Err(e) = args.validate() {
        eprintln!("sockudo-bench: {e}");
        return ExitCode::from(2);
    }

    let nofile = match limits::raise_nofile_limit() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("sockudo-bench: cannot raise RLIMIT_NOFILE: {e}");
            return ExitCode::from(2);
        }
    };
    let publishers = if args.mode == cli::Mode::Publish {
        args.publishers
    } else {
        0
    };
    if let Err(msg) = limits::check_capacity(args.connections as u64, publishers as u64, nofile) {
        eprintln!("sockudo-bench: {msg}");
        return ExitCode::from(2);
    }

    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(t) = args.threads {
        builder.worker_threads(t.max(1));
    }
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sockudo-bench: cannot start the tokio runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let multi = match args.mode {
        cli::Mode::ClusterFanout => Some(runtime.block_on(cluster_fanout::run(&args, clock))),
        cli::Mode::ResumeStorm => Some(runtime.block_on(resume_storm::run(&args, clock))),
        cli::Mode::Webhooks => Some(runtime.block_on(webhooks::run(&args, clock))),
        cli::Mode::Push => Some(runtime.block_on(push::run(&args))),
        cli::Mode::InterestBytes => Some(runtime.block_on(interest_bytes::run(&args))),
        cli::Mode::ChannelFlood => Some(runtime.block_on(channel_flood::run(&args))),
        cli::Mode::BareServer => Some(runtime.block_on(bare::run(args.bare_ws, args.bare_http))),
        cli::Mode::Publish | cli::Mode::ConnectOnly => None,
    };
    if let Some(result) = multi {
        // Child processes are killed as their handles drop inside the mode.
        return match result {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sockudo-bench: {e}");
                ExitCode::from(1)
            }
        };
    }
    let json = args.json;
    let report = runtime.block_on(run::run(args, clock, nofile));
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
    }
    if report.connect.connected == 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
