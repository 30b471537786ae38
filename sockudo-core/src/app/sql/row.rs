//! Columns of the apps table and the mapping between a row and an [`App`].

use std::collections::HashMap;

use sqlx::any::AnyRow;
use sqlx::Row;

use super::SqlDialect;
use crate::app::{App, AppManagerError, WebhookTarget};

/// How a column's value is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Text,
    /// Integers and booleans alike: read as a 64-bit integer.
    Int,
    /// JSON, read as text.
    Json,
}

/// One column of upstream's layout.
#[derive(Debug)]
pub(super) struct Column {
    pub name: &'static str,
    pub kind: Kind,
    pub required: bool,
}

const fn col(name: &'static str, kind: Kind, required: bool) -> Column {
    Column {
        name,
        kind,
        required,
    }
}

/// Every column the manager reads or writes (`created_at` / `updated_at` are only written).
pub(super) const COLUMNS: &[Column] = &[
    col("id", Kind::Text, true),
    col("key", Kind::Text, true),
    col("secret", Kind::Text, true),
    col("enabled", Kind::Int, false),
    col("max_connections", Kind::Int, false),
    col("enable_client_messages", Kind::Int, false),
    col("max_client_events_per_second", Kind::Int, false),
    col("max_presence_members_per_channel", Kind::Int, false),
    col("max_presence_member_size_in_kb", Kind::Int, false),
    col("max_event_payload_in_kb", Kind::Int, false),
    col("max_event_channels_at_once", Kind::Int, false),
    col("max_event_name_length", Kind::Int, false),
    col("max_event_batch_size", Kind::Int, false),
    col("enable_user_authentication", Kind::Int, false),
    col("webhooks", Kind::Json, false),
    col("created_at", Kind::Text, false),
    col("updated_at", Kind::Text, false),
];

/// Columns that are timestamps kept by the database, not app fields.
fn is_timestamp(name: &str) -> bool {
    matches!(name, "created_at" | "updated_at")
}

/// `SELECT <expr AS name>, … FROM <table>`: each present column cast to its canonical type,
/// each absent one `NULL` (the app default).
pub(super) fn select_list(
    d: SqlDialect,
    present: &HashMap<&'static str, String>,
    table: &str,
) -> String {
    let exprs: Vec<String> = COLUMNS
        .iter()
        .filter(|c| !is_timestamp(c.name))
        .map(|c| {
            let q = d.quote(c.name);
            let e = if !present.contains_key(c.name) {
                "NULL".to_owned()
            } else {
                match (d, c.kind) {
                    (SqlDialect::Postgres, Kind::Int) => {
                        // A boolean casts to INTEGER but not to BIGINT.
                        format!("CAST(CAST({q} AS INTEGER) AS BIGINT)")
                    }
                    (SqlDialect::Postgres, _) => format!("CAST({q} AS TEXT)"),
                    (SqlDialect::MySql, Kind::Int) => format!("CAST({q} AS SIGNED)"),
                    // Plain CHAR comes back with the binary charset (a BLOB to the driver).
                    (SqlDialect::MySql, _) => format!("CAST({q} AS CHAR CHARACTER SET utf8mb4)"),
                }
            };
            format!("{e} AS {q}")
        })
        .collect();
    format!("SELECT {} FROM {}", exprs.join(", "), d.quote(table))
}

fn malformed(id: &str, message: String) -> AppManagerError {
    AppManagerError::Malformed {
        id: id.to_owned(),
        message,
    }
}

fn text(r: &AnyRow, name: &str) -> Result<Option<String>, AppManagerError> {
    any_text(r, name).map_err(|e| malformed("?", format!("column {name}: {e}")))
}

/// A text column of either database. MySQL reports long text (`TEXT`, `JSON`, catalog
/// columns) as a BLOB type to the `Any` driver, which then refuses to decode a `String`:
/// read the bytes and check they are UTF-8.
pub(super) fn any_text<I: sqlx::ColumnIndex<AnyRow> + Copy>(
    r: &AnyRow,
    index: I,
) -> Result<Option<String>, sqlx::Error> {
    match r.try_get::<Option<String>, _>(index) {
        Ok(v) => Ok(v),
        Err(text_err) => match r.try_get::<Option<Vec<u8>>, _>(index) {
            Ok(None) => Ok(None),
            Ok(Some(bytes)) => String::from_utf8(bytes)
                .map(Some)
                .map_err(|e| sqlx::Error::Decode(Box::new(e))),
            Err(_) => Err(text_err),
        },
    }
}

/// A non-negative integer column that fits `T`; `None` when NULL (or the column is absent).
fn int<T: TryFrom<i64>>(r: &AnyRow, id: &str, name: &str) -> Result<Option<T>, AppManagerError> {
    let v = r
        .try_get::<Option<i64>, _>(name)
        .map_err(|e| malformed(id, format!("column {name}: {e}")))?;
    match v {
        None => Ok(None),
        Some(n) if n < 0 => Err(malformed(id, format!("{name} = {n} is negative"))),
        Some(n) => T::try_from(n)
            .map(Some)
            .map_err(|_| malformed(id, format!("{name} = {n} is out of range"))),
    }
}

fn kb(r: &AnyRow, id: &str, name: &str) -> Result<Option<usize>, AppManagerError> {
    match int::<usize>(r, id, name)? {
        None => Ok(None),
        Some(n) => n
            .checked_mul(1024)
            .map(Some)
            .ok_or_else(|| malformed(id, format!("{name} = {n} is out of range"))),
    }
}

/// A row as an app. Absent or NULL optional columns keep the [`App::new`] defaults.
pub(super) fn to_app(
    r: &AnyRow,
    present: &HashMap<&'static str, String>,
) -> Result<App, AppManagerError> {
    let id = text(r, "id")?.ok_or_else(|| malformed("?", "id is NULL".into()))?;
    let key = text(r, "key")?.ok_or_else(|| malformed(&id, "key is NULL".into()))?;
    let secret = text(r, "secret")?.ok_or_else(|| malformed(&id, "secret is NULL".into()))?;
    if key.is_empty() || secret.is_empty() {
        return Err(malformed(&id, "key and secret must not be empty".into()));
    }
    let mut app = App::new(id.clone(), key, secret);
    let id = id.as_str();
    if let Some(v) = int::<i64>(r, id, "enabled")? {
        app.enabled = v != 0;
    }
    if let Some(v) = int::<i64>(r, id, "enable_client_messages")? {
        app.enable_client_messages = v != 0;
    }
    if let Some(v) = int(r, id, "max_connections")? {
        app.max_connections = v;
    }
    if let Some(v) = int(r, id, "max_client_events_per_second")? {
        app.max_client_events_per_second = v;
    }
    if let Some(v) = int(r, id, "max_presence_members_per_channel")? {
        app.max_presence_members = v;
    }
    if let Some(v) = kb(r, id, "max_presence_member_size_in_kb")? {
        app.max_presence_user_info_bytes = v;
    }
    if let Some(v) = kb(r, id, "max_event_payload_in_kb")? {
        app.max_event_payload_bytes = v;
    }
    if let Some(v) = int(r, id, "max_event_channels_at_once")? {
        app.max_event_channels_at_once = v;
    }
    if let Some(v) = int(r, id, "max_event_name_length")? {
        app.max_event_name_length = v;
    }
    if let Some(v) = int(r, id, "max_event_batch_size")? {
        app.max_event_batch_size = v;
    }
    if int::<i64>(r, id, "enable_user_authentication")?.unwrap_or(0) != 0 {
        // Upstream's "sign in within a deadline or be disconnected" is not enforced by this
        // version: say so instead of pretending.
        tracing::warn!(app_id = %id, "enable_user_authentication is set but not enforced by this version (connections need not sign in)");
    }
    if present.contains_key("webhooks") {
        if let Some(json) = text(r, "webhooks")? {
            app.webhooks = webhooks(id, &json)?;
        }
    }
    Ok(app)
}

/// The `webhooks` column: a JSON array of targets as upstream writes them (`url`,
/// `event_types`, `headers` as a map or as `{"headers": map}`). Targets this version cannot
/// deliver (AWS Lambda, filters) are left out with a warning; anything else malformed refuses
/// the app.
fn webhooks(id: &str, json: &str) -> Result<Vec<WebhookTarget>, AppManagerError> {
    use serde_json::Value;
    let bad = |m: &str| malformed(id, format!("webhooks: {m}"));
    let v: Value = serde_json::from_str(json).map_err(|e| bad(&e.to_string()))?;
    let items = match v {
        Value::Null => return Ok(Vec::new()),
        Value::Array(items) => items,
        _ => return Err(bad("not a JSON array")),
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Object(mut o) = item else {
            return Err(bad("an entry is not an object"));
        };
        let unsupported: Vec<&str> = ["lambda", "lambda_function", "filter"]
            .into_iter()
            .filter(|k| o.get(*k).is_some_and(|v| !v.is_null()))
            .collect();
        if !unsupported.is_empty() {
            tracing::warn!(app_id = %id, fields = ?unsupported, "webhook target left out: this version delivers plain HTTP targets without filters only");
            continue;
        }
        let url = match o.remove("url") {
            Some(Value::String(u)) if !u.is_empty() => u,
            _ => return Err(bad("an entry has no url")),
        };
        let event_types = match o.remove("event_types") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => serde_json::from_value(v).map_err(|e| bad(&e.to_string()))?,
        };
        let headers = match o.remove("headers") {
            None | Some(Value::Null) => HashMap::new(),
            Some(Value::Object(mut h)) if h.len() == 1 && h.get("headers").is_some() => {
                let inner = h.remove("headers").unwrap_or(Value::Null);
                serde_json::from_value(inner).map_err(|e| bad(&e.to_string()))?
            }
            Some(v) => serde_json::from_value(v).map_err(|e| bad(&e.to_string()))?,
        };
        out.push(WebhookTarget {
            url,
            event_types,
            headers,
        });
    }
    Ok(out)
}

fn flag(b: bool) -> String {
    if b { "1" } else { "0" }.to_owned()
}

/// The values an app is stored as, by column (text; the SQL casts them), for every column
/// an app has. Byte limits are stored in KB: callers check they are whole KB.
pub(super) fn values(app: &App) -> Vec<(&'static str, String)> {
    let webhooks = serde_json::to_string(&app.webhooks).unwrap_or_else(|_| "[]".to_owned());
    vec![
        ("id", app.id.clone()),
        ("key", app.key.clone()),
        ("secret", app.secret.clone()),
        ("enabled", flag(app.enabled)),
        ("max_connections", app.max_connections.to_string()),
        ("enable_client_messages", flag(app.enable_client_messages)),
        (
            "max_client_events_per_second",
            app.max_client_events_per_second.to_string(),
        ),
        (
            "max_presence_members_per_channel",
            app.max_presence_members.to_string(),
        ),
        (
            "max_presence_member_size_in_kb",
            (app.max_presence_user_info_bytes / 1024).to_string(),
        ),
        (
            "max_event_payload_in_kb",
            (app.max_event_payload_bytes / 1024).to_string(),
        ),
        (
            "max_event_channels_at_once",
            app.max_event_channels_at_once.to_string(),
        ),
        (
            "max_event_name_length",
            app.max_event_name_length.to_string(),
        ),
        ("max_event_batch_size", app.max_event_batch_size.to_string()),
        ("enable_user_authentication", flag(false)),
        ("webhooks", webhooks),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_webhook_shapes_parse() {
        let t = webhooks(
            "a",
            r#"[{"url":"http://h/x","event_types":["member_added"],"headers":{"headers":{"A":"b"}}},
                {"url":"http://h/y","headers":{"C":"d"}},
                {"lambda":{"function_name":"f"},"event_types":[]}]"#,
        )
        .unwrap();
        assert_eq!(t.len(), 2, "the lambda target is left out");
        assert_eq!(t[0].headers.get("A").map(String::as_str), Some("b"));
        assert_eq!(t[1].headers.get("C").map(String::as_str), Some("d"));
        assert!(webhooks("a", "null").unwrap().is_empty());
        for bad in [
            "{",
            "{}",
            "[1]",
            r#"[{"event_types":[]}]"#,
            r#"[{"url":"x","headers":[1]}]"#,
        ] {
            assert!(webhooks("a", bad).is_err(), "{bad}");
        }
    }
}
