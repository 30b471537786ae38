//! A private Prometheus server (Debian's `prometheus` binary) on a free loopback port, with its
//! own config, rules and data directory, stopped on drop.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::kit::{tool, TempDir};

#[derive(Debug)]
pub struct Prometheus {
    child: Child,
    url: String,
    dir: TempDir,
}

/// A duration as Prometheus reads it (`1000ms`).
fn duration(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

impl Prometheus {
    /// Start scraping `targets` (job `sockudo`) every `scrape`, evaluating `rules` (YAML text)
    /// every `eval`; returns once `/-/ready` answers.
    pub async fn start(
        targets: &[SocketAddr],
        rules: &str,
        scrape: Duration,
        eval: Duration,
    ) -> Prometheus {
        let bin = tool("prometheus", "SOCKUDO_PROMETHEUS");
        let dir = TempDir::new("prometheus");
        std::fs::write(dir.path().join("rules.yml"), rules).unwrap();
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: {s}\n  scrape_timeout: {s}\n  evaluation_interval: {e}\n\
             rule_files: [rules.yml]\n\
             scrape_configs:\n  - job_name: sockudo\n    static_configs:\n      - targets: [{t}]\n",
            s = duration(scrape),
            e = duration(eval),
            t = targets.join(", ")
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(&bin)
            .current_dir(dir.path())
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {bin:?}: {e}"));
        let mut prom = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        };
        prom.wait_ready().await;
        prom
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let http = reqwest::Client::new();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited with {status}:\n{}", self.log());
            }
            let ready = http
                .get(format!("{}/-/ready", self.url))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within 30 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let resp = reqwest::Client::new()
            .get(format!("{}{path}", self.url))
            .query(query)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let body: Value = resp
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        body
    }

    /// The active alerts (`/api/v1/alerts`): pending and firing.
    pub async fn alerts(&self) -> Vec<Value> {
        let body = self.api("/api/v1/alerts", &[]).await;
        body["data"]["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// An instant query; the whole API answer (`status`, `data` or `error`).
    pub async fn query(&self, promql: &str) -> Value {
        self.api("/api/v1/query", &[("query", promql)]).await
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
