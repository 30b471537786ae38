//! `sockudo`: run a node. With no app configured it serves the development app (`app-id` /
//! `app-key` / `app-secret`) from memory on `127.0.0.1:6001` and says so loudly: its secret is
//! public knowledge. Every setting is in docs/configuration.md.

use std::collections::HashMap;
use std::process::ExitCode;

use clap::Parser;
use sockudo_server::config::{CliOverrides, NodeSettings};

#[derive(Debug, Parser)]
#[command(name = "sockudo", version, about = "Pusher-compatible realtime server")]
struct Cli {
    /// TOML config file.
    #[arg(long)]
    config: Option<String>,
    /// Listen address (overrides HOST).
    #[arg(long)]
    host: Option<String>,
    /// Listen port (overrides PORT).
    #[arg(long)]
    port: Option<u16>,
    /// Runtime worker threads (default: one per CPU). Sizes the node to a share of the
    /// machine, and lets a benchmark show how delivery scales with cores.
    #[arg(long, env = "WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    worker_threads: Option<u16>,
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Bind with a deep accept backlog: a reconnect storm (a node drained behind a load balancer)
/// arrives as thousands of SYNs at once, and an overflowing backlog turns into 1 s SYN
/// retransmits on the clients' side.
async fn listen(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    let mut last = std::io::Error::new(
        std::io::ErrorKind::AddrNotAvailable,
        "address resolved to nothing",
    );
    for sa in tokio::net::lookup_host(addr).await? {
        let socket = if sa.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(sa).and_then(|()| socket.listen(4096)) {
            Ok(l) => return Ok(l),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Logged as a warning (and, with text logs, also printed as a plain line a person cannot
/// miss): a node reachable with the public dev secret lets anyone publish and authorize.
/// With `LOG_FORMAT=json` stderr carries JSON lines only, so the log line is the warning.
fn warn_dev_secret(host: &str, log_format: &str) {
    let reach = if host == "127.0.0.1" || host == "::1" || host == "localhost" {
        "only this machine can reach it"
    } else {
        "IT IS REACHABLE FROM OTHER MACHINES"
    };
    let advice = "configure your own apps ([[apps]] in --config, or \
                  SOCKUDO_DEFAULT_APP_ID/_KEY/_SECRET) before serving anyone";
    if log_format != "json" {
        eprintln!(
            "sockudo: WARNING: an app signs with the public development secret `app-secret` \
             (no app configured, or a config that copied it); listening on {host}: {reach}. \
             {advice}."
        );
    }
    tracing::warn!(%host, reach, advice, "serving an app with the public development secret `app-secret`");
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env: HashMap<String, String> = std::env::vars().collect();
    let overrides = CliOverrides {
        config: cli.config,
        host: cli.host,
        port: cli.port,
        dev_app: true,
    };
    let settings = match NodeSettings::load(&overrides, &env) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sockudo: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(&settings.log_format);
    if settings.serves_dev_secret() {
        warn_dev_secret(&settings.host, &settings.log_format);
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = cli.worker_threads {
        builder.worker_threads(usize::from(n));
    }
    let runtime = match builder.build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sockudo: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let addr = format!("{}:{}", settings.host, settings.port);
        let listener = match listen(&addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("sockudo: cannot listen on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(%addr, node_id = %settings.node_id, apps = settings.apps.len(), "sockudo listening");
        let node = match sockudo_server::build_node(settings).await {
            Ok(node) => node,
            Err(e) => {
                eprintln!("sockudo: {e}");
                return ExitCode::FAILURE;
            }
        };
        match sockudo_server::serve(listener, node, shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sockudo: server error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
