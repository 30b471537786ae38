//! [`TestNode`]: a Sockudo node served in-process, on its own runtime and OS thread.
//!
//! Each node owns a dedicated multi-thread tokio runtime running [`sockudo_server::serve`].
//! That is what makes [`TestNode::kill`] honest: it drops the whole runtime, so every socket the
//! node holds (client WebSockets, its Redis connections) closes at once without a WebSocket
//! close frame, as if the process had crashed. [`TestNode::drain`] is the graceful path: the
//! same drain a SIGTERM triggers in the binary.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use sockudo_server::config::NodeSettings;
use sockudo_server::Node;
use tokio::net::TcpSocket;
use tokio::sync::oneshot;

use crate::TestkitError;

/// How long the runtime of a killed node gets to drop its tasks.
const KILL_TIMEOUT: Duration = Duration::from_millis(500);
/// Extra time a drain may take beyond the node's grace period (closing frames, runtime stop).
const DRAIN_SLACK: Duration = Duration::from_secs(10);
/// Worker threads per node runtime: enough for concurrency, few enough for many nodes.
const WORKER_THREADS: usize = 2;

/// A running (or killed) in-process node. Killed when dropped.
#[derive(Debug)]
pub struct TestNode {
    addr: SocketAddr,
    settings: NodeSettings,
    node: Arc<Node>,
    running: Option<Running>,
}

/// The handles of the node's thread while it runs.
#[derive(Debug)]
struct Running {
    drain: oneshot::Sender<()>,
    kill: oneshot::Sender<()>,
    done: oneshot::Receiver<()>,
    thread: JoinHandle<Result<(), String>>,
}

impl TestNode {
    /// Serve a node built from `settings` on `127.0.0.1:0`. `host` and `port` in the settings
    /// are replaced by the address actually bound.
    pub async fn start(settings: NodeSettings) -> Result<TestNode, TestkitError> {
        Self::start_on(settings, 0).await
    }

    /// Like [`start`](Self::start) on a given loopback port (0 picks one).
    pub async fn start_on(mut settings: NodeSettings, port: u16) -> Result<TestNode, TestkitError> {
        settings.host = Ipv4Addr::LOCALHOST.to_string();
        let (ready_tx, ready_rx) = oneshot::channel();
        let (drain_tx, drain_rx) = oneshot::channel();
        let (kill_tx, kill_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let name = format!("testnode-{}", settings.node_id);
        let thread_settings = settings.clone();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || run_node(thread_settings, port, ready_tx, drain_rx, kill_rx, done_tx))
            .map_err(|e| TestkitError::io("spawn the node thread", e))?;
        let running = Running {
            drain: drain_tx,
            kill: kill_tx,
            done: done_rx,
            thread,
        };
        match ready_rx.await {
            Ok(Ok((addr, node))) => {
                settings.port = addr.port();
                Ok(TestNode {
                    addr,
                    settings,
                    node,
                    running: Some(running),
                })
            }
            Ok(Err(message)) => {
                let _ = running.thread.join();
                Err(TestkitError::Node(message))
            }
            Err(_) => {
                let outcome = running.thread.join();
                Err(TestkitError::Node(format!(
                    "the node thread ended before the node was ready: {}",
                    thread_outcome(outcome)
                )))
            }
        }
    }

    /// The address the node listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:P`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The Pusher WebSocket URL for app `key` on this node.
    pub fn ws_url(&self, key: &str) -> String {
        crate::ws_url(self.addr, key)
    }

    /// The node's shared state (after a kill: the state of the dead node).
    pub fn node(&self) -> Arc<Node> {
        Arc::clone(&self.node)
    }

    /// The settings the node was started with (`host`/`port` as bound).
    pub fn settings(&self) -> &NodeSettings {
        &self.settings
    }

    /// Change the node id the next [`restart`](Self::restart) uses (the running node keeps
    /// its id).
    pub fn set_node_id(&mut self, node_id: &str) {
        self.settings.node_id = node_id.to_string();
    }

    /// Whether the node is serving (neither killed nor drained).
    pub fn is_running(&self) -> bool {
        self.running
            .as_ref()
            .is_some_and(|r| !r.thread.is_finished())
    }

    /// Crash the node: drop its runtime, closing every socket without a close frame.
    /// Blocks briefly while the runtime stops. Idempotent.
    pub fn kill(&mut self) -> Result<(), TestkitError> {
        let Some(running) = self.running.take() else {
            return Ok(());
        };
        let _ = running.kill.send(());
        match running.thread.join() {
            Ok(Ok(())) => Ok(()),
            outcome => Err(TestkitError::Node(format!(
                "node {} did not stop cleanly: {}",
                self.settings.node_id,
                thread_outcome(outcome)
            ))),
        }
    }

    /// Drain gracefully (unready, wait up to the grace period, close with 4200) and wait for
    /// the node to stop. Idempotent.
    pub async fn drain(&mut self) -> Result<(), TestkitError> {
        let Some(running) = self.running.take() else {
            return Ok(());
        };
        let _ = running.drain.send(());
        let limit = Duration::from_secs(self.settings.shutdown_grace_period) + DRAIN_SLACK;
        let finished = tokio::time::timeout(limit, running.done).await.is_ok();
        if !finished {
            // Do not leave a half-drained node behind.
            let _ = running.kill.send(());
        }
        let outcome = running.thread.join();
        if !finished {
            return Err(TestkitError::timeout(
                format!("node {} to drain", self.settings.node_id),
                limit,
            ));
        }
        match outcome {
            Ok(Ok(())) => Ok(()),
            outcome => Err(TestkitError::Node(format!(
                "node {} failed while draining: {}",
                self.settings.node_id,
                thread_outcome(outcome)
            ))),
        }
    }

    /// Kill the node if it runs, then start a fresh one (new state, same settings) on the
    /// same port.
    pub async fn restart(&mut self) -> Result<(), TestkitError> {
        self.kill()?;
        let fresh = TestNode::start_on(self.settings.clone(), self.addr.port()).await?;
        *self = fresh;
        Ok(())
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

type Ready = Result<(SocketAddr, Arc<Node>), String>;

/// The node thread: build a runtime, bind, build the node, serve until drained or killed, then
/// drop the runtime (and with it every task and socket).
fn run_node(
    mut settings: NodeSettings,
    port: u16,
    ready: oneshot::Sender<Ready>,
    drain: oneshot::Receiver<()>,
    kill: oneshot::Receiver<()>,
    done: oneshot::Sender<()>,
) -> Result<(), String> {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .enable_all()
        .thread_name("testnode-worker")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot build the node runtime: {e}")));
            return Ok(());
        }
    };
    let result = runtime.block_on(async move {
        let listener = match bind(port) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(format!("cannot listen on 127.0.0.1:{port}: {e}")));
                return Ok(());
            }
        };
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        settings.port = addr.port();
        let node = match build(settings).await {
            Ok(node) => node,
            Err(message) => {
                let _ = ready.send(Err(message));
                return Ok(());
            }
        };
        if ready.send(Ok((addr, Arc::clone(&node)))).is_err() {
            return Ok(()); // the starter gave up
        }
        let serve = sockudo_server::serve(listener, node, async move {
            let _ = drain.await;
        });
        tokio::select! {
            served = serve => served.map_err(|e| format!("serve failed: {e}")),
            _ = kill => Ok(()),
        }
    });
    // Dropping the runtime cancels every task; their sockets close without close frames.
    runtime.shutdown_timeout(KILL_TIMEOUT);
    let _ = done.send(());
    result
}

/// A listener with SO_REUSEADDR, so a restarted node can take its port back while the old
/// connections sit in TIME_WAIT.
fn bind(port: u16) -> std::io::Result<tokio::net::TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))?;
    socket.listen(1024)
}

/// Build the node with the backends its settings name, inside the node's runtime (so its
/// backend connections die with it).
async fn build(settings: NodeSettings) -> Result<Arc<Node>, String> {
    sockudo_server::build_node(settings)
        .await
        .map_err(|e| e.to_string())
}

fn thread_outcome(outcome: std::thread::Result<Result<(), String>>) -> String {
    match outcome {
        Ok(Ok(())) => "stopped".into(),
        Ok(Err(message)) => message,
        Err(panic) => match panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
        {
            Some(message) => format!("panicked: {message}"),
            None => "panicked".into(),
        },
    }
}
