//! Apps in a PostgreSQL or MySQL/MariaDB table (features `postgres` / `mysql`).
//!
//! The table follows upstream Sockudo's `applications` layout (see `migrations/` of this
//! crate), so a deployment can point a node at the table it already has:
//! - columns are read by name, and only the ones the table has: at connect the node reads the
//!   table's columns from `information_schema`; a missing optional column takes the app
//!   default, unknown columns are ignored, and `id`, `key`, `secret` are required;
//! - every value is cast in SQL to one canonical type (64-bit integer or text), so `INTEGER`
//!   vs `BIGINT` or `BOOLEAN` vs `TINYINT(1)` do not matter;
//! - the table name comes from configuration: it is checked as a plain identifier and quoted,
//!   never interpolated unchecked; every value travels as a bound parameter.
//!
//! One implementation serves both databases through sqlx's `Any` driver: queries are built at
//! run time anyway (configurable table, introspected columns), and the two dialects differ
//! only in quoting, placeholders and casts ([`SqlDialect`]).

mod row;
mod store;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::AnyPool;

use super::{App, AppManager, AppManagerError};
use row::COLUMNS;

/// Which SQL database the table lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlDialect {
    /// PostgreSQL (`postgres://`).
    Postgres,
    /// MySQL or MariaDB (`mysql://`).
    MySql,
}

impl SqlDialect {
    /// The dialect a `DATABASE_URL` names, from its scheme.
    pub fn from_url(url: &str) -> Option<SqlDialect> {
        let scheme = url.split_once("://")?.0;
        match scheme {
            "postgres" | "postgresql" => Some(SqlDialect::Postgres),
            "mysql" | "mariadb" => Some(SqlDialect::MySql),
            _ => None,
        }
    }

    fn quote(self, ident: &str) -> String {
        match self {
            SqlDialect::Postgres => format!("\"{ident}\""),
            SqlDialect::MySql => format!("`{ident}`"),
        }
    }

    /// The `n`th (1-based) bound parameter.
    fn param(self, n: usize) -> String {
        match self {
            SqlDialect::Postgres => format!("${n}"),
            SqlDialect::MySql => "?".to_owned(),
        }
    }

    fn migration(self) -> &'static str {
        match self {
            SqlDialect::Postgres => {
                include_str!("../../../migrations/postgres/0001_applications.sql")
            }
            SqlDialect::MySql => include_str!("../../../migrations/mysql/0001_applications.sql"),
        }
    }

    fn columns_query(self) -> &'static str {
        match self {
            SqlDialect::Postgres => {
                "SELECT CAST(column_name AS TEXT), CAST(data_type AS TEXT) \
                 FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = $1"
            }
            SqlDialect::MySql => {
                "SELECT CAST(column_name AS CHAR CHARACTER SET utf8mb4), \
                 CAST(column_type AS CHAR CHARACTER SET utf8mb4) \
                 FROM information_schema.columns \
                 WHERE table_schema = DATABASE() AND table_name = ?"
            }
        }
    }
}

/// How to reach the table.
#[derive(Clone)]
pub struct SqlOptions {
    /// `postgres://…` or `mysql://…`.
    pub url: String,
    /// The table (a plain identifier: letters, digits, `_`; default `applications`).
    pub table: String,
    /// Connections in the pool.
    pub max_connections: u32,
    /// Longest wait for a pooled connection or one statement: beyond it the backend counts
    /// as unavailable (a handshake must not hang on a dead database).
    pub timeout: Duration,
    /// Create the table from the shipped migration when it does not exist.
    pub create_table: bool,
}

impl std::fmt::Debug for SqlOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlOptions")
            .field("table", &self.table)
            .field("max_connections", &self.max_connections)
            .field("timeout", &self.timeout)
            .field("create_table", &self.create_table)
            .finish_non_exhaustive()
    }
}

impl SqlOptions {
    /// Defaults for `url`: table `applications`, 5 connections, 3 s timeout, create the table.
    pub fn new(url: impl Into<String>) -> Self {
        SqlOptions {
            url: url.into(),
            table: "applications".into(),
            max_connections: 5,
            timeout: Duration::from_secs(3),
            create_table: true,
        }
    }
}

/// Why the SQL app manager could not start.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// The URL names no supported database (or its feature is not built in).
    #[error("DATABASE_URL must start with postgres:// or mysql:// (for a driver this build has)")]
    UnsupportedUrl,
    /// The table name is not a plain identifier.
    #[error("APP_MANAGER_TABLE {0:?} must be 1-63 letters, digits or underscores, not starting with a digit")]
    BadTable(String),
    /// The database could not be reached or refused a statement.
    #[error("database: {0}")]
    Database(String),
    /// The table lacks a column the manager cannot do without.
    #[error("table {table:?} lacks required column(s) {missing:?}")]
    MissingColumns {
        /// The configured table.
        table: String,
        /// Required columns it does not have.
        missing: Vec<String>,
    },
}

/// Check a table name: the only text ever put into SQL that came from configuration.
pub fn validate_table(name: &str) -> Result<(), SqlError> {
    let mut chars = name.chars();
    let ok = name.len() <= 63
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(SqlError::BadTable(name.to_owned()))
    }
}

/// Apps read from (and, through [`super::AppStore`], written to) a SQL table.
#[derive(Clone)]
pub struct SqlAppManager {
    pool: AnyPool,
    dialect: SqlDialect,
    table: String,
    /// The table's columns we know, with their SQL type as the catalog names it.
    present: Arc<HashMap<&'static str, String>>,
    /// `SELECT <every known column, cast> FROM <table>`.
    select: Arc<str>,
    timeout: Duration,
}

impl std::fmt::Debug for SqlAppManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlAppManager")
            .field("dialect", &self.dialect)
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

fn db_err(e: sqlx::Error) -> SqlError {
    SqlError::Database(e.to_string())
}

impl SqlAppManager {
    /// Connect, create the table when it is missing (and `create_table`), and read which
    /// columns it has. Fails when the database cannot be reached: a node does not start
    /// without its apps.
    pub async fn connect(opts: SqlOptions) -> Result<Self, SqlError> {
        validate_table(&opts.table)?;
        let dialect = SqlDialect::from_url(&opts.url).ok_or(SqlError::UnsupportedUrl)?;
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(opts.max_connections.max(1))
            .acquire_timeout(opts.timeout)
            .connect(&opts.url)
            .await
            .map_err(|e| match e {
                sqlx::Error::Configuration(_) => SqlError::UnsupportedUrl,
                other => db_err(other),
            })?;
        let mut present = columns(&pool, dialect, &opts.table).await?;
        if present.is_empty() && opts.create_table {
            let ddl = dialect.migration().replacen(
                "CREATE TABLE IF NOT EXISTS applications",
                &format!("CREATE TABLE IF NOT EXISTS {}", dialect.quote(&opts.table)),
                1,
            );
            let created = sqlx::raw_sql(&ddl).execute(&pool).await;
            present = columns(&pool, dialect, &opts.table).await?;
            match created {
                Ok(_) => tracing::info!(table = %opts.table, "created the apps table"),
                // Nodes starting together race to create it (PostgreSQL then reports a
                // duplicate type): fine when the table is there now.
                Err(e) if present.is_empty() => return Err(db_err(e)),
                Err(_) => {}
            }
        }
        let missing: Vec<String> = COLUMNS
            .iter()
            .filter(|c| c.required && !present.contains_key(c.name))
            .map(|c| c.name.to_owned())
            .collect();
        if !missing.is_empty() {
            return Err(SqlError::MissingColumns {
                table: opts.table,
                missing,
            });
        }
        let select = row::select_list(dialect, &present, &opts.table);
        Ok(SqlAppManager {
            pool,
            dialect,
            table: opts.table,
            present: Arc::new(present),
            select: Arc::from(select),
            timeout: opts.timeout,
        })
    }

    /// The database this manager talks to.
    pub fn dialect(&self) -> SqlDialect {
        self.dialect
    }

    /// Run a query with the manager's timeout; every failure is "unavailable".
    async fn rows(&self, sql: &str, binds: &[&str]) -> Result<Vec<AnyRow>, AppManagerError> {
        let mut q = sqlx::query(sql);
        for b in binds {
            q = q.bind(*b);
        }
        match tokio::time::timeout(self.timeout, q.fetch_all(&self.pool)).await {
            Ok(Ok(rows)) => Ok(rows),
            // The server answered, refusing this statement (a value it cannot compare, a
            // dropped column): not an outage, so it must not make the node refuse every
            // unknown key. It is logged by the caller of the failed lookup.
            Ok(Err(sqlx::Error::Database(e))) => Err(AppManagerError::Malformed {
                id: binds
                    .first()
                    .map(|b| b.chars().take(64).collect())
                    .unwrap_or_default(),
                message: format!("the database refused the lookup: {e}"),
            }),
            Ok(Err(e)) => Err(AppManagerError::Unavailable(e.to_string())),
            Err(_) => Err(AppManagerError::Unavailable(format!(
                "no answer within {:?}",
                self.timeout
            ))),
        }
    }

    /// The apps whose `column` equals `value` exactly. The comparison is repeated here
    /// because a MySQL table of upstream may use a case-insensitive collation.
    async fn find_where(
        &self,
        column: &'static str,
        value: &str,
    ) -> Result<Option<Arc<App>>, AppManagerError> {
        if !plausible(value) {
            return Ok(None);
        }
        let sql = format!(
            "{} WHERE {} = {}",
            self.select,
            self.dialect.quote(column),
            self.dialect.param(1)
        );
        for r in self.rows(&sql, &[value]).await? {
            let app = row::to_app(&r, &self.present)?;
            let exact = match column {
                "key" => app.key == value,
                _ => app.id == value,
            };
            if exact {
                return Ok(Some(Arc::new(app)));
            }
        }
        Ok(None)
    }
}

/// Whether `value` can be an id or key of a stored app at all. Anything else is answered "no
/// such app" without a query: a NUL byte is refused by PostgreSQL as a statement error, and
/// both migrations store at most 255 characters.
fn plausible(value: &str) -> bool {
    !value.is_empty() && value.chars().count() <= 255 && !value.contains('\0')
}

/// The table's columns this manager knows, with their catalog type (empty: no such table).
async fn columns(
    pool: &AnyPool,
    dialect: SqlDialect,
    table: &str,
) -> Result<HashMap<&'static str, String>, SqlError> {
    let rows = sqlx::query(dialect.columns_query())
        .bind(table)
        .fetch_all(pool)
        .await
        .map_err(db_err)?;
    let mut out = HashMap::new();
    for r in rows {
        let name = row::any_text(&r, 0).map_err(db_err)?.unwrap_or_default();
        let ty = row::any_text(&r, 1).map_err(db_err)?.unwrap_or_default();
        if let Some(c) = COLUMNS.iter().find(|c| c.name.eq_ignore_ascii_case(&name)) {
            out.insert(c.name, ty.to_ascii_lowercase());
        }
    }
    Ok(out)
}

#[async_trait]
impl AppManager for SqlAppManager {
    async fn find_by_id(&self, id: &str) -> Result<Option<Arc<App>>, AppManagerError> {
        self.find_where("id", id).await
    }

    async fn find_by_key(&self, key: &str) -> Result<Option<Arc<App>>, AppManagerError> {
        self.find_where("key", key).await
    }

    async fn all(&self) -> Result<Vec<Arc<App>>, AppManagerError> {
        let sql = format!("{} ORDER BY {}", self.select, self.dialect.quote("id"));
        let rows = self.rows(&sql, &[]).await?;
        rows.iter()
            .map(|r| row::to_app(r, &self.present).map(Arc::new))
            .collect()
    }

    async fn find_many(&self, ids: &[String]) -> Result<Vec<Arc<App>>, AppManagerError> {
        let mut out = Vec::with_capacity(ids.len());
        // Bounded statements: databases cap the number of parameters.
        let ids: Vec<&String> = ids.iter().filter(|id| plausible(id)).collect();
        for chunk in ids.chunks(500) {
            let params: Vec<String> = (1..=chunk.len()).map(|n| self.dialect.param(n)).collect();
            let sql = format!(
                "{} WHERE {} IN ({})",
                self.select,
                self.dialect.quote("id"),
                params.join(", ")
            );
            let binds: Vec<&str> = chunk.iter().map(|s| s.as_str()).collect();
            for r in self.rows(&sql, &binds).await? {
                match row::to_app(&r, &self.present) {
                    Ok(app) if chunk.contains(&&app.id) => out.push(Arc::new(app)),
                    Ok(_) => {}
                    // One bad row must not stop the others from being refreshed: it is left
                    // out, so a cache drops it (fail closed) and says why here.
                    Err(e) => tracing::error!(error = %e, "app row cannot be served"),
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_identifiers() {
        for ok in ["applications", "apps_v2", "_x", "A1"] {
            assert!(validate_table(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(64);
        for bad in [
            "",
            "1apps",
            "apps;drop",
            "a-b",
            "a.b",
            "a b",
            "\"x\"",
            "`x`",
            &long,
        ] {
            assert!(validate_table(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dialect_from_url() {
        assert_eq!(
            SqlDialect::from_url("postgres://u@h/db"),
            Some(SqlDialect::Postgres)
        );
        assert_eq!(
            SqlDialect::from_url("mysql://u@h/db"),
            Some(SqlDialect::MySql)
        );
        assert_eq!(SqlDialect::from_url("sqlite://x"), None);
        assert_eq!(SqlDialect::from_url("nonsense"), None);
    }
}
