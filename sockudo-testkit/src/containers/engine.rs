//! [`DockerEngine`]: a bollard client with a negotiated API version, on its own runtime.
//!
//! Current testcontainers releases speak one fixed, recent Docker API version and an older
//! engine answers them with `400 client version too new`. bollard can ask the engine first
//! (`GET /version`) and lower its own version to the engine's ([`Docker::negotiate_version`]),
//! so the same code talks to Docker 20.10 (API 1.41) and to current engines (1.5x).
//!
//! The client lives on a dedicated small runtime owned by the engine value. That keeps the
//! client's connection tasks independent of the (often short-lived, current-thread) runtime of
//! the test, and it lets synchronous code — [`Drop`], `kill()` — wait for a Docker call by
//! blocking on a channel instead of nesting runtimes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, KillContainerOptions, ListContainersOptions,
    LogsOptions, RemoveContainerOptions, StartContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;
use tokio::runtime::Runtime;

use crate::TestkitError;

/// How long connecting and negotiating may take before the engine counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound for one blocking Docker call (kill, remove) made from synchronous code.
const BLOCKING_TIMEOUT: Duration = Duration::from_secs(30);
/// The label every testkit container carries (value: the owning process id).
pub(crate) const OWNER_LABEL: &str = "sockudo-testkit.pid";
/// The label naming the host (kernel hostname) of the owning process.
const HOST_LABEL: &str = "sockudo-testkit.host";

/// The versions seen when connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineVersion {
    /// The engine's release, e.g. `20.10.24+dfsg1`.
    pub engine: String,
    /// The newest API version the engine speaks, e.g. `1.41`.
    pub engine_api: String,
    /// The API version the testkit uses: the lower of bollard's and the engine's.
    pub negotiated_api: String,
}

/// A connection to a Docker Engine. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct DockerEngine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    runtime: Option<Runtime>,
    docker: Docker,
    version: EngineVersion,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropping a runtime inside another runtime's context panics; this does not.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl DockerEngine {
    /// Connect the way the `docker` CLI does (`DOCKER_HOST`, else the local socket), negotiate
    /// the API version and read the engine's version. Fails within a few seconds when no
    /// engine answers.
    pub async fn connect() -> Result<DockerEngine, TestkitError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("testkit-docker")
            .enable_all()
            .build()
            .map_err(|e| TestkitError::io("build the Docker client runtime", e))?;
        let connecting = runtime.spawn(async {
            let docker = Docker::connect_with_local_defaults()
                .map_err(|e| format!("cannot configure a client: {e}"))?;
            let docker = docker
                .negotiate_version()
                .await
                .map_err(|e| format!("no engine answered GET /version: {e}"))?;
            let version = docker
                .version()
                .await
                .map_err(|e| format!("GET /version: {e}"))?;
            let negotiated_api = docker.client_version().to_string();
            let version = EngineVersion {
                engine: version.version.unwrap_or_default(),
                engine_api: version.api_version.unwrap_or_default(),
                negotiated_api,
            };
            Ok::<_, String>((docker, version))
        });
        let (docker, version) = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(Ok(pair))) => pair,
            Ok(Ok(Err(message))) => {
                runtime.shutdown_background();
                return Err(TestkitError::Docker(format!(
                    "engine not reachable: {message}"
                )));
            }
            Ok(Err(join)) => {
                runtime.shutdown_background();
                return Err(TestkitError::Docker(format!(
                    "the connect task failed: {join}"
                )));
            }
            Err(_) => {
                runtime.shutdown_background();
                return Err(TestkitError::Docker(format!(
                    "engine not reachable: no answer within {CONNECT_TIMEOUT:?}"
                )));
            }
        };
        tracing::debug!(engine = %version.engine, api = %version.engine_api, negotiated = %version.negotiated_api, "connected to Docker");
        let engine = DockerEngine {
            inner: Arc::new(Inner {
                runtime: Some(runtime),
                docker,
                version,
            }),
        };
        engine.remove_orphans().await;
        Ok(engine)
    }

    /// The versions seen when connecting.
    pub fn version(&self) -> &EngineVersion {
        &self.inner.version
    }

    /// The bollard client (API version already negotiated). Use it through
    /// [`call`](Self::call) so it runs on the engine's runtime.
    pub fn client(&self) -> &Docker {
        &self.inner.docker
    }

    /// Run one Docker request on the engine's runtime and await it from any runtime.
    pub async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T, TestkitError>
    where
        F: FnOnce(Docker) -> Fut,
        Fut: Future<Output = Result<T, bollard::errors::Error>> + Send + 'static,
        T: Send + 'static,
    {
        let handle = self.handle()?;
        match handle.spawn(f(self.inner.docker.clone())).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(TestkitError::Docker(format!("{what}: {e}"))),
            Err(join) => Err(TestkitError::Docker(format!(
                "{what}: the request task failed: {join}"
            ))),
        }
    }

    /// Like [`call`](Self::call), for synchronous code: blocks this thread (not the engine's
    /// runtime) until the request completes or 30 s pass. Safe to use
    /// inside a tokio runtime and in `Drop`.
    pub fn call_blocking<T, F, Fut>(&self, what: &str, f: F) -> Result<T, TestkitError>
    where
        F: FnOnce(Docker) -> Fut,
        Fut: Future<Output = Result<T, bollard::errors::Error>> + Send + 'static,
        T: Send + 'static,
    {
        let handle = self.handle()?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let request = f(self.inner.docker.clone());
        handle.spawn(async move {
            let _ = tx.send(request.await);
        });
        match rx.recv_timeout(BLOCKING_TIMEOUT) {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(TestkitError::Docker(format!("{what}: {e}"))),
            Err(_) => Err(TestkitError::timeout(
                format!("docker: {what}"),
                BLOCKING_TIMEOUT,
            )),
        }
    }

    fn handle(&self) -> Result<tokio::runtime::Handle, TestkitError> {
        self.inner
            .runtime
            .as_ref()
            .map(|rt| rt.handle().clone())
            .ok_or_else(|| TestkitError::Docker("the client runtime is gone".into()))
    }

    /// Create a container labelled as this process's, named `name`; returns its id.
    pub(crate) async fn create(
        &self,
        name: &str,
        mut body: ContainerCreateBody,
    ) -> Result<String, TestkitError> {
        let labels = body.labels.get_or_insert_with(Default::default);
        labels.insert(OWNER_LABEL.into(), std::process::id().to_string());
        labels.insert(HOST_LABEL.into(), hostname());
        let options = CreateContainerOptions {
            name: Some(name.to_string()),
            ..Default::default()
        };
        let created = self
            .call(&format!("create container {name}"), |d| async move {
                d.create_container(Some(options), body).await
            })
            .await?;
        for warning in &created.warnings {
            tracing::debug!(container = name, %warning, "docker create warning");
        }
        Ok(created.id)
    }

    /// `docker start`.
    pub(crate) async fn start(&self, id: &str) -> Result<(), TestkitError> {
        let owned = id.to_string();
        self.call(&format!("start container {}", short(id)), |d| async move {
            d.start_container(&owned, None::<StartContainerOptions>)
                .await
        })
        .await
    }

    /// `docker kill -s SIGNAL`. A container that is not running is not an error.
    pub(crate) async fn signal(&self, id: &str, signal: &str) -> Result<(), TestkitError> {
        let owned = id.to_string();
        let options = KillContainerOptions {
            signal: signal.to_string(),
        };
        let result = self
            .call(
                &format!("kill -s {signal} container {}", short(id)),
                |d| async move { d.kill_container(&owned, Some(options)).await },
            )
            .await;
        ignore_not_running(result)
    }

    /// `docker kill` (SIGKILL), blocking. A container that is not running is not an error.
    pub(crate) fn kill_blocking(&self, id: &str) -> Result<(), TestkitError> {
        let owned = id.to_string();
        let options = KillContainerOptions {
            signal: "SIGKILL".into(),
        };
        let result = self.call_blocking(&format!("kill container {}", short(id)), |d| async move {
            d.kill_container(&owned, Some(options)).await
        });
        ignore_not_running(result)?;
        // `kill` returns when the signal is sent; wait until the engine reports the stop, so
        // that a following `start` does not race the old process for its port.
        let deadline = std::time::Instant::now() + BLOCKING_TIMEOUT;
        while std::time::Instant::now() < deadline {
            let owned = id.to_string();
            let state = self.call_blocking("inspect container", |d| async move {
                d.inspect_container(&owned, None::<InspectContainerOptions>)
                    .await
            })?;
            if !state.state.and_then(|s| s.running).unwrap_or(false) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(TestkitError::timeout(
            format!("container {} to stop after SIGKILL", short(id)),
            BLOCKING_TIMEOUT,
        ))
    }

    /// `docker rm -f`, blocking (for `Drop`).
    pub(crate) fn remove_blocking(&self, id: &str) -> Result<(), TestkitError> {
        let owned = id.to_string();
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        self.call_blocking(&format!("remove container {}", short(id)), |d| async move {
            d.remove_container(&owned, Some(options)).await
        })
    }

    /// Whether the container runs, and its exit code when it does not.
    pub(crate) async fn state(&self, id: &str) -> Result<(bool, Option<i64>), TestkitError> {
        let owned = id.to_string();
        let info = self
            .call("inspect container", |d| async move {
                d.inspect_container(&owned, None::<InspectContainerOptions>)
                    .await
            })
            .await?;
        let state = info.state.unwrap_or_default();
        Ok((state.running.unwrap_or(false), state.exit_code))
    }

    /// The container's IP address on the default bridge network, if it has one.
    pub(crate) async fn bridge_ip(&self, id: &str) -> Result<Option<String>, TestkitError> {
        let owned = id.to_string();
        let info = self
            .call("inspect container", |d| async move {
                d.inspect_container(&owned, None::<InspectContainerOptions>)
                    .await
            })
            .await?;
        let networks = info
            .network_settings
            .and_then(|n| n.networks)
            .unwrap_or_default();
        Ok(networks
            .values()
            .filter_map(|n| n.ip_address.clone())
            .find(|ip| !ip.is_empty()))
    }

    /// The last `lines` lines of the container's stdout and stderr (best effort).
    pub async fn log_tail(&self, id: &str, lines: usize) -> String {
        let owned = id.to_string();
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            tail: lines.to_string(),
            ..Default::default()
        };
        let collected = self
            .call("container logs", |d| async move {
                let mut out = String::new();
                let mut stream = d.logs(&owned, Some(options));
                while let Some(chunk) = stream.next().await {
                    out.push_str(&chunk?.to_string());
                }
                Ok(out)
            })
            .await;
        collected.unwrap_or_else(|e| format!("(logs unavailable: {e})"))
    }

    /// Remove containers left behind by testkit processes that no longer exist (a test run
    /// killed before its `Drop`s ran). Best effort; only on Linux, where `/proc` tells.
    async fn remove_orphans(&self) {
        if !std::path::Path::new("/proc/self").exists() {
            return;
        }
        let mut filters = std::collections::HashMap::new();
        filters.insert("label".to_string(), vec![OWNER_LABEL.to_string()]);
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let Ok(list) = self
            .call("list containers", |d| async move {
                d.list_containers(Some(options)).await
            })
            .await
        else {
            return;
        };
        for container in list {
            let Some(id) = container.id else { continue };
            let label = |name: &str| {
                container
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(name))
                    .cloned()
                    .unwrap_or_default()
            };
            let owner = label(OWNER_LABEL);
            // Only this host's containers: a pid means nothing in another machine's namespace.
            if owner.is_empty() || label(HOST_LABEL) != hostname() || process_alive(&owner) {
                continue;
            }
            let options = RemoveContainerOptions {
                force: true,
                v: true,
                ..Default::default()
            };
            let removed = self
                .call("remove orphan", |d| async move {
                    d.remove_container(&id, Some(options)).await
                })
                .await;
            tracing::debug!(owner, ?removed, "removed an orphaned testkit container");
        }
    }
}

/// Whether a Docker Engine answers (connect + negotiate). `Err` says why not.
pub async fn docker_available() -> Result<EngineVersion, TestkitError> {
    DockerEngine::connect()
        .await
        .map(|engine| engine.version().clone())
}

fn ignore_not_running(result: Result<(), TestkitError>) -> Result<(), TestkitError> {
    match result {
        // 409: "container … is not running".
        Err(TestkitError::Docker(message))
            if message.contains("is not running") || message.contains("409") =>
        {
            Ok(())
        }
        other => other,
    }
}

/// Whether process `pid` exists and is not a zombie (a killed test process may stay one for
/// a while when nobody reaps it).
fn process_alive(pid: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) S ...`: the state follows the last ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

/// The kernel's hostname (empty when unknown).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The first 12 characters of an id, as the CLI shows them.
pub(crate) fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}
