//! Writes to the apps table ([`AppStore`]).

use async_trait::async_trait;

use super::{row, SqlAppManager, SqlDialect};
use crate::app::{App, AppManager, AppManagerError, AppStore, AppStoreError};

fn unavailable(e: sqlx::Error) -> AppStoreError {
    if let sqlx::Error::Database(d) = &e {
        if d.is_unique_violation() {
            return AppStoreError::Conflict;
        }
    }
    AppStoreError::Backend(AppManagerError::Unavailable(e.to_string()))
}

impl SqlAppManager {
    /// `CAST(<param> AS <the column's type>)` on PostgreSQL (values travel as text); the bare
    /// parameter on MySQL, which converts text itself.
    fn cast_param(&self, column: &str, n: usize) -> Result<String, AppStoreError> {
        let p = self.dialect.param(n);
        match self.dialect {
            SqlDialect::MySql => Ok(p),
            SqlDialect::Postgres => {
                let ty = self
                    .present
                    .get(column)
                    .map(String::as_str)
                    .unwrap_or("text");
                // The type name comes from the catalog, yet it is still SQL text: only plain
                // type names are used.
                if !ty
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == ' ' || c == '_')
                {
                    return Err(AppStoreError::Backend(AppManagerError::Unavailable(
                        format!("column {column} has an unexpected type {ty:?}"),
                    )));
                }
                Ok(format!("CAST({p} AS {ty})"))
            }
        }
    }

    /// The app's values, refusing when the table lacks a column the app needs.
    fn stored_values(&self, app: &App) -> Result<Vec<(&'static str, String)>, AppStoreError> {
        let values = row::values(app);
        let missing: Vec<&str> = values
            .iter()
            .map(|(c, _)| *c)
            .filter(|c| !self.present.contains_key(c))
            .collect();
        if !missing.is_empty() {
            return Err(AppStoreError::Backend(AppManagerError::Unavailable(
                format!(
                    "table {:?} lacks column(s) {missing:?}: apply the shipped migration to write apps",
                    self.table
                ),
            )));
        }
        Ok(values)
    }

    async fn execute(&self, sql: &str, binds: &[String]) -> Result<u64, AppStoreError> {
        let mut q = sqlx::query(sql);
        for b in binds {
            q = q.bind(b.as_str());
        }
        match tokio::time::timeout(self.timeout, q.execute(&self.pool)).await {
            Ok(Ok(done)) => Ok(done.rows_affected()),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(AppStoreError::Backend(AppManagerError::Unavailable(
                format!("no answer within {:?}", self.timeout),
            ))),
        }
    }

    fn touch(&self, column: &str) -> Option<String> {
        self.present
            .contains_key(column)
            .then(|| format!("{} = CURRENT_TIMESTAMP", self.dialect.quote(column)))
    }
}

#[async_trait]
impl AppStore for SqlAppManager {
    async fn create(&self, app: &App) -> Result<(), AppStoreError> {
        let values = self.stored_values(app)?;
        // A key differing only in case from an existing one: refused here too, whatever the
        // table's collation.
        if self.find_by_key(&app.key).await?.is_some() || self.find_by_id(&app.id).await?.is_some()
        {
            return Err(AppStoreError::Conflict);
        }
        let mut cols: Vec<String> = Vec::new();
        let mut params: Vec<String> = Vec::new();
        for (i, (c, _)) in values.iter().enumerate() {
            cols.push(self.dialect.quote(c));
            params.push(self.cast_param(c, i + 1)?);
        }
        for ts in ["created_at", "updated_at"] {
            if self.present.contains_key(ts) {
                cols.push(self.dialect.quote(ts));
                params.push("CURRENT_TIMESTAMP".into());
            }
        }
        let sql = format!(
            "INSERT INTO {} ({}) VALUES ({})",
            self.dialect.quote(&self.table),
            cols.join(", "),
            params.join(", ")
        );
        let binds: Vec<String> = values.into_iter().map(|(_, v)| v).collect();
        self.execute(&sql, &binds).await.map(|_| ())
    }

    async fn update(&self, app: &App) -> Result<(), AppStoreError> {
        let values = self.stored_values(app)?;
        let mut sets = Vec::new();
        let mut binds = Vec::new();
        for (c, v) in values.into_iter().filter(|(c, _)| *c != "id") {
            binds.push(v);
            sets.push(format!(
                "{} = {}",
                self.dialect.quote(c),
                self.cast_param(c, binds.len())?
            ));
        }
        sets.extend(self.touch("updated_at"));
        binds.push(app.id.clone());
        let sql = format!(
            "UPDATE {} SET {} WHERE {} = {}",
            self.dialect.quote(&self.table),
            sets.join(", "),
            self.dialect.quote("id"),
            self.dialect.param(binds.len())
        );
        if self.execute(&sql, &binds).await? == 0 && self.find_by_id(&app.id).await?.is_none() {
            // MySQL counts changed rows only: zero may also mean "nothing to change".
            return Err(AppStoreError::NotFound);
        }
        Ok(())
    }

    async fn delete(&self, id: &str) -> Result<bool, AppStoreError> {
        let Some(app) = self.find_by_id(id).await? else {
            return Ok(false);
        };
        let sql = format!(
            "DELETE FROM {} WHERE {} = {}",
            self.dialect.quote(&self.table),
            self.dialect.quote("id"),
            self.dialect.param(1)
        );
        Ok(self.execute(&sql, std::slice::from_ref(&app.id)).await? > 0)
    }

    async fn get(&self, id: &str) -> Result<Option<App>, AppStoreError> {
        Ok(self.find_by_id(id).await?.map(|a| (*a).clone()))
    }

    async fn list(&self) -> Result<Vec<App>, AppStoreError> {
        Ok(self
            .all()
            .await?
            .into_iter()
            .map(|a| (*a).clone())
            .collect())
    }
}
