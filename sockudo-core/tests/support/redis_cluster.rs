//! A Redis Cluster of `redis-server` child processes for the core's Redis Cluster tests:
//! three primaries (no replicas: these tests exercise routing and scripts, not failover,
//! which the testkit's launcher covers) on free loopback ports whose cluster bus ports
//! (+10000) are free too, joined with `redis-cli --cluster create`; killed on drop.
#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::redis_server::free_port;

/// Three cluster-mode `redis-server`s forming one cluster; killed when dropped.
#[derive(Debug)]
pub struct RedisClusterProcess {
    ports: Vec<u16>,
    children: Vec<Child>,
    dir: std::path::PathBuf,
}

fn cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port < u16::MAX - 10_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run redis-cli (must be on PATH): {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl RedisClusterProcess {
    /// Start three primaries and wait until every one reports `cluster_state:ok`.
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "sockudo-core-redis-cluster-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ports: Vec<u16> = (0..3).map(|_| cluster_port()).collect();
        let mut children = Vec::new();
        for port in &ports {
            let conf = dir.join(format!("nodes-{port}.conf"));
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                .arg("--cluster-config-file")
                .arg(&conf)
                .arg("--dir")
                .arg(&dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start redis-server (must be on PATH): {e}"));
            children.push(child);
        }
        let cluster = RedisClusterProcess {
            ports,
            children,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        for port in &cluster.ports {
            while !crate::redis_server::ping(*port) {
                assert!(
                    Instant::now() < deadline,
                    "redis-server {port} did not start"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let mut create = vec!["--cluster".to_owned(), "create".to_owned()];
        create.extend(cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")));
        create.push("--cluster-yes".into());
        let out = Command::new("redis-cli")
            .args(&create)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        for port in &cluster.ports {
            while !cli(*port, &["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                assert!(Instant::now() < deadline, "the Redis Cluster did not form");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        cluster
    }

    /// `redis://127.0.0.1:P` of every server (the seeds).
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// Every key of every server (for leak checks).
    pub fn all_keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        for port in &self.ports {
            keys.extend(
                cli(*port, &["KEYS", "*"])
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned),
            );
        }
        keys
    }
}

impl Drop for RedisClusterProcess {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
