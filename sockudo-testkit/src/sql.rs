//! [`ScratchDb`]: a uniquely named database on the machine's PostgreSQL or MariaDB/MySQL
//! server, dropped when the value is dropped (also when the test panics).
//!
//! The servers are the machine's shared ones (`.ci/run` makes sure they run): PostgreSQL at
//! `SOCKUDO_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`) and MySQL
//! at `SOCKUDO_TEST_MYSQL_URL` (default `mysql://root@127.0.0.1:3306/test`). A server that does
//! not answer is a test failure that says so, never a skip.

use std::net::SocketAddr;

use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;

use crate::TestkitError;

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlServer {
    /// PostgreSQL.
    Postgres,
    /// MariaDB / MySQL.
    MySql,
}

impl SqlServer {
    fn admin_url(self) -> String {
        let (var, default) = match self {
            SqlServer::Postgres => (
                "SOCKUDO_TEST_POSTGRES_URL",
                "postgres://postgres@127.0.0.1:5432/test",
            ),
            SqlServer::MySql => ("SOCKUDO_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"),
        };
        std::env::var(var).unwrap_or_else(|_| default.to_owned())
    }

    /// `APP_MANAGER_DRIVER` for this server.
    pub fn driver(self) -> &'static str {
        match self {
            SqlServer::Postgres => "postgres",
            SqlServer::MySql => "mysql",
        }
    }
}

/// A database created for one test (or run) and dropped with this value.
#[derive(Debug)]
pub struct ScratchDb {
    server: SqlServer,
    admin_url: String,
    name: String,
    url: String,
}

/// `scheme://auth@host:port/db?q` → its parts around the database name.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| i + scheme_end);
    format!("{}/{db}{query}", &base[..path_start])
}

async fn admin_pool(server: SqlServer, url: &str) -> Result<AnyPool, TestkitError> {
    sqlx::any::install_default_drivers();
    AnyPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|e| {
            TestkitError::Node(format!(
                "the {server:?} server at {url} does not answer ({e}); `.ci/run` starts it"
            ))
        })
}

impl ScratchDb {
    /// Create a fresh database on `server`.
    pub async fn create(server: SqlServer) -> Result<ScratchDb, TestkitError> {
        let admin_url = server.admin_url();
        let name = format!(
            "sockudo_t_{}_{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let pool = admin_pool(server, &admin_url).await?;
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&pool)
            .await
            .map_err(|e| TestkitError::Node(format!("CREATE DATABASE {name}: {e}")))?;
        pool.close().await;
        let url = with_database(&admin_url, &name);
        Ok(ScratchDb {
            server,
            admin_url,
            name,
            url,
        })
    }

    /// The URL of the scratch database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The same database through another address (a [`crate::proxy::TcpProxy`]).
    pub fn url_via(&self, addr: SocketAddr) -> String {
        let scheme_end = self.url.find("://").map_or(0, |i| i + 3);
        let rest = &self.url[scheme_end..];
        let host_start = rest.rfind('@').map_or(0, |i| i + 1);
        let host_end = rest.find('/').unwrap_or(rest.len());
        format!(
            "{}{}{addr}{}",
            &self.url[..scheme_end],
            &rest[..host_start],
            &rest[host_end..]
        )
    }

    /// Where the server listens (for a proxy in front of it).
    pub fn server_addr(&self) -> Result<SocketAddr, TestkitError> {
        let rest = self.url.split_once("://").map_or("", |x| x.1);
        let host_start = rest.rfind('@').map_or(0, |i| i + 1);
        let host_end = rest.find('/').unwrap_or(rest.len());
        let hostport = &rest[host_start..host_end];
        hostport
            .parse()
            .map_err(|_| TestkitError::Usage(format!("{hostport:?} is not an ip:port")))
    }

    /// Which server it lives on.
    pub fn server(&self) -> SqlServer {
        self.server
    }

    /// A pool on the scratch database (for tests that write rows by hand).
    pub async fn pool(&self) -> Result<AnyPool, TestkitError> {
        admin_pool(self.server, &self.url).await
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        let (server, admin_url, name) = (self.server, self.admin_url.clone(), self.name.clone());
        // Async cleanup from a sync drop, inside or outside a runtime: a thread of its own.
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let pool = admin_pool(server, &admin_url).await.ok()?;
                let force = match server {
                    SqlServer::Postgres => " WITH (FORCE)",
                    SqlServer::MySql => "",
                };
                let r = sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name}{force}"))
                    .execute(&pool)
                    .await;
                if let Err(e) = r {
                    eprintln!("testkit: could not drop scratch database {name}: {e}");
                }
                Some(())
            })
        });
        let _ = done.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_rewritten() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/test", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("mysql://root@127.0.0.1:3306/test?ssl-mode=disabled", "x"),
            "mysql://root@127.0.0.1:3306/x?ssl-mode=disabled"
        );
        let db = ScratchDb {
            server: SqlServer::Postgres,
            admin_url: String::new(),
            name: "x".into(),
            url: "postgres://u:p@127.0.0.1:5432/x".into(),
        };
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(db.url_via(addr), "postgres://u:p@127.0.0.1:9/x");
        assert_eq!(db.server_addr().unwrap().port(), 5432);
        std::mem::forget(db);
    }
}
