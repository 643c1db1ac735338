//! The one door to the database for the repositories: statements written once, in SQL both
//! engines speak (`?1` placeholders, `ON CONFLICT`, `RETURNING`), run by the engine the state
//! was opened with. Values cross it as [`Value`]s, so that a repository never sees a driver
//! type; what only one engine can do well (a run's journal, leases, the queue's claim) lives
//! in that engine's module.

use std::borrow::Cow;
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use futures_util::{StreamExt, pin_mut};
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

/// Calls to the store by this process (each statement, batch or engine-specific use), for
/// measuring what an operation costs ([`crate::Workspace::store_calls`]).
static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// [`CALLS`] so far.
pub(crate) fn calls() -> u64 {
    CALLS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Counts one call to the store made past [`Db`]'s own methods (an engine's own work).
pub(crate) fn count() {
    CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// The engines.
pub(crate) enum Db {
    /// One connection, shared by the process (SQLite allows one writer at a time anyway).
    Sqlite(Mutex<rusqlite::Connection>),
    Postgres(deadpool_postgres::Pool),
}

/// A value of a statement's parameter or of a row's column.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// One row of a result.
#[derive(Debug)]
pub(crate) struct DbRow(Vec<Value>);

/// One statement of a [`Db::batch`].
pub(crate) struct Step<'a> {
    pub sql: Cow<'a, str>,
    pub params: Vec<Value>,
    /// The whole batch is rolled back, and returns `None`, when this statement touches no row.
    pub required: bool,
}

impl<'a> Step<'a> {
    pub fn new(sql: impl Into<Cow<'a, str>>, params: Vec<Value>) -> Step<'a> {
        Step {
            sql: sql.into(),
            params,
            required: false,
        }
    }

    pub fn required(sql: impl Into<Cow<'a, str>>, params: Vec<Value>) -> Step<'a> {
        Step {
            sql: sql.into(),
            params,
            required: true,
        }
    }
}

/// Parameters as [`Value`]s: `params![a, b]`.
macro_rules! params {
    ($($v:expr),* $(,)?) => { vec![$($crate::state::db::Value::from($v)),*] };
}
pub(crate) use params;

impl Db {
    /// Runs a statement; how many rows it changed.
    pub async fn execute(&self, sql: &str, params: Vec<Value>) -> Result<u64> {
        count();
        match self {
            Db::Sqlite(db) => {
                let db = lock(db);
                Ok(db.execute(sql, rusqlite::params_from_iter(params.iter()))? as u64)
            }
            Db::Postgres(pool) => {
                let client = pool.get().await.context("no PostgreSQL connection")?;
                let sql = postgres_sql(sql);
                let statement = client.prepare_cached(&sql).await?;
                Ok(client.execute(&statement, &refs(&params)).await?)
            }
        }
    }

    /// Runs a query; every row of its result.
    pub async fn query(&self, sql: &str, params: Vec<Value>) -> Result<Vec<DbRow>> {
        count();
        let mut rows = vec![];
        self.query_each(sql, params, &mut |row| {
            rows.push(row);
            Ok(())
        })
        .await?;
        Ok(rows)
    }

    /// Runs a query; its first row, if any.
    pub async fn query_opt(&self, sql: &str, params: Vec<Value>) -> Result<Option<DbRow>> {
        Ok(self.query(sql, params).await?.into_iter().next())
    }

    /// Runs a query that gives one row.
    pub async fn query_one(&self, sql: &str, params: Vec<Value>) -> Result<DbRow> {
        self.query_opt(sql, params)
            .await?
            .context("the query gave no row")
    }

    /// Runs a query, handing each row to `each` as it is read (a result may be larger than
    /// memory).
    pub async fn query_each(
        &self,
        sql: &str,
        params: Vec<Value>,
        each: &mut (dyn FnMut(DbRow) -> Result<()> + Send),
    ) -> Result<()> {
        count();
        match self {
            Db::Sqlite(db) => {
                let db = lock(db);
                let mut q = db.prepare_cached(sql)?;
                let width = q.column_count();
                let mut rows = q.query(rusqlite::params_from_iter(params.iter()))?;
                while let Some(row) = rows.next()? {
                    each(sqlite_row(row, width)?)?;
                }
                Ok(())
            }
            Db::Postgres(pool) => {
                let client = pool.get().await.context("no PostgreSQL connection")?;
                let sql = postgres_sql(sql);
                let statement = client.prepare_cached(&sql).await?;
                let rows = client.query_raw(&statement, refs(&params)).await?;
                pin_mut!(rows);
                while let Some(row) = rows.next().await {
                    each(postgres_row(&row?)?)?;
                }
                Ok(())
            }
        }
    }

    /// Runs statements in one transaction; the rows each returned (empty for one returning
    /// none), or `None` when a required step touched no row and so nothing was changed.
    pub async fn batch(&self, steps: &[Step<'_>]) -> Result<Option<Vec<Vec<DbRow>>>> {
        count();
        match self {
            Db::Sqlite(db) => {
                let mut db = lock(db);
                let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let mut results = vec![];
                for step in steps {
                    let mut q = tx.prepare_cached(&step.sql)?;
                    let width = q.column_count();
                    let (rows, touched) = if width == 0 {
                        let n = q.execute(rusqlite::params_from_iter(step.params.iter()))?;
                        (vec![], n)
                    } else {
                        let mut rows = vec![];
                        let mut read = q.query(rusqlite::params_from_iter(step.params.iter()))?;
                        while let Some(row) = read.next()? {
                            rows.push(sqlite_row(row, width)?);
                        }
                        let n = rows.len();
                        (rows, n)
                    };
                    if step.required && touched == 0 {
                        return Ok(None);
                    }
                    results.push(rows);
                }
                tx.commit()?;
                Ok(Some(results))
            }
            Db::Postgres(pool) => {
                let mut client = pool.get().await.context("no PostgreSQL connection")?;
                let tx = client.transaction().await?;
                let mut results = vec![];
                for step in steps {
                    let statement = tx.prepare_cached(&postgres_sql(&step.sql)).await?;
                    let (rows, touched) = if statement.columns().is_empty() {
                        let n = tx.execute(&statement, &refs(&step.params)).await?;
                        (vec![], n as usize)
                    } else {
                        let rows = tx
                            .query(&statement, &refs(&step.params))
                            .await?
                            .iter()
                            .map(postgres_row)
                            .collect::<Result<Vec<_>>>()?;
                        let n = rows.len();
                        (rows, n)
                    };
                    if step.required && touched == 0 {
                        return Ok(None);
                    }
                    results.push(rows);
                }
                tx.commit().await?;
                Ok(Some(results))
            }
        }
    }

    /// Whether this is the PostgreSQL engine.
    pub fn is_postgres(&self) -> bool {
        matches!(self, Db::Postgres(_))
    }

    /// The SQLite connection, for the SQLite engine's own work (its journal). Blocks.
    pub fn sqlite(&self) -> Option<std::sync::MutexGuard<'_, rusqlite::Connection>> {
        match self {
            Db::Sqlite(db) => Some(lock(db)),
            Db::Postgres(_) => None,
        }
    }

    /// The PostgreSQL pool, for the PostgreSQL engine's own work.
    pub fn postgres(&self) -> Option<&deadpool_postgres::Pool> {
        match self {
            Db::Sqlite(_) => None,
            Db::Postgres(pool) => Some(pool),
        }
    }
}

pub(crate) fn lock(
    db: &Mutex<rusqlite::Connection>,
) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
    db.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// `?N` placeholders as PostgreSQL's `$N` (a `?` not followed by a digit is left alone).
pub(crate) fn postgres_sql(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        let placeholder = c == '?' && chars.peek().is_some_and(char::is_ascii_digit);
        out.push(if placeholder { '$' } else { c });
    }
    out
}

fn refs(params: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

fn sqlite_row(row: &rusqlite::Row, width: usize) -> Result<DbRow> {
    use rusqlite::types::ValueRef;
    let mut values = Vec::with_capacity(width);
    for i in 0..width {
        values.push(match row.get_ref(i)? {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(n) => Value::Int(n),
            ValueRef::Real(x) => Value::Real(x),
            ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        });
    }
    Ok(DbRow(values))
}

fn postgres_row(row: &tokio_postgres::Row) -> Result<DbRow> {
    let mut values = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        let ty = column.type_();
        let value = if *ty == Type::INT8 {
            row.try_get::<_, Option<i64>>(i)?.map(Value::Int)
        } else if *ty == Type::INT4 {
            row.try_get::<_, Option<i32>>(i)?
                .map(|n| Value::Int(n.into()))
        } else if *ty == Type::INT2 {
            row.try_get::<_, Option<i16>>(i)?
                .map(|n| Value::Int(n.into()))
        } else if *ty == Type::BOOL {
            row.try_get::<_, Option<bool>>(i)?
                .map(|b| Value::Int(b.into()))
        } else if *ty == Type::FLOAT8 {
            row.try_get::<_, Option<f64>>(i)?.map(Value::Real)
        } else if *ty == Type::FLOAT4 {
            row.try_get::<_, Option<f32>>(i)?
                .map(|x| Value::Real(x.into()))
        } else if *ty == Type::BYTEA {
            row.try_get::<_, Option<Vec<u8>>>(i)?.map(Value::Blob)
        } else if [Type::TEXT, Type::VARCHAR, Type::NAME, Type::BPCHAR].contains(ty) {
            row.try_get::<_, Option<String>>(i)?.map(Value::Text)
        } else {
            bail!(
                "column `{}` has the PostgreSQL type {ty}, which the host does not read",
                column.name()
            );
        };
        values.push(value.unwrap_or(Value::Null));
    }
    Ok(DbRow(values))
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(n) => ValueRef::Integer(*n),
            Value::Real(x) => ValueRef::Real(*x),
            Value::Text(t) => ValueRef::Text(t.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(n) if *ty == Type::INT4 => i32::try_from(*n)?.to_sql(ty, out),
            Value::Int(n) if *ty == Type::INT2 => i16::try_from(*n)?.to_sql(ty, out),
            Value::Int(n) if *ty == Type::BOOL => (*n != 0).to_sql(ty, out),
            Value::Int(n) if *ty == Type::FLOAT8 => (*n as f64).to_sql(ty, out),
            Value::Int(n) => n.to_sql(ty, out),
            Value::Real(x) => x.to_sql(ty, out),
            Value::Text(t) => t.to_sql(ty, out),
            Value::Blob(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

impl From<i64> for Value {
    fn from(n: i64) -> Value {
        Value::Int(n)
    }
}

impl From<u64> for Value {
    fn from(n: u64) -> Value {
        Value::Int(n as i64)
    }
}

impl From<u8> for Value {
    fn from(n: u8) -> Value {
        Value::Int(n.into())
    }
}

impl From<f64> for Value {
    fn from(x: f64) -> Value {
        Value::Real(x)
    }
}

impl From<&str> for Value {
    fn from(t: &str) -> Value {
        Value::Text(t.to_string())
    }
}

impl From<&String> for Value {
    fn from(t: &String) -> Value {
        Value::Text(t.clone())
    }
}

impl From<String> for Value {
    fn from(t: String) -> Value {
        Value::Text(t)
    }
}

impl From<Vec<u8>> for Value {
    fn from(b: Vec<u8>) -> Value {
        Value::Blob(b)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

impl From<&Option<String>> for Value {
    fn from(v: &Option<String>) -> Value {
        v.clone().into()
    }
}

/// A column's value as a Rust type.
pub(crate) trait FromValue: Sized {
    fn from_value(value: &Value) -> Option<Self>;
}

impl FromValue for i64 {
    fn from_value(value: &Value) -> Option<i64> {
        match value {
            Value::Int(n) => Some(*n),
            _ => None,
        }
    }
}

impl FromValue for u64 {
    fn from_value(value: &Value) -> Option<u64> {
        i64::from_value(value).and_then(|n| u64::try_from(n).ok())
    }
}

impl FromValue for u8 {
    fn from_value(value: &Value) -> Option<u8> {
        i64::from_value(value).and_then(|n| u8::try_from(n).ok())
    }
}

impl FromValue for bool {
    fn from_value(value: &Value) -> Option<bool> {
        i64::from_value(value).map(|n| n != 0)
    }
}

impl FromValue for f64 {
    fn from_value(value: &Value) -> Option<f64> {
        match value {
            Value::Real(x) => Some(*x),
            Value::Int(n) => Some(*n as f64),
            _ => None,
        }
    }
}

impl FromValue for String {
    fn from_value(value: &Value) -> Option<String> {
        match value {
            Value::Text(t) => Some(t.clone()),
            _ => None,
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(value: &Value) -> Option<Vec<u8>> {
        match value {
            Value::Blob(b) => Some(b.clone()),
            _ => None,
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: &Value) -> Option<Option<T>> {
        match value {
            Value::Null => Some(None),
            other => T::from_value(other).map(Some),
        }
    }
}

impl DbRow {
    /// Column `i` as a `T`.
    pub fn get<T: FromValue>(&self, i: usize) -> Result<T> {
        let value = self.0.get(i).with_context(|| format!("no column {i}"))?;
        T::from_value(value).with_context(|| {
            format!(
                "column {i} holds {value:?}, not a {}",
                std::any::type_name::<T>()
            )
        })
    }

    /// Column `i`, JSON text, as a `T`.
    pub fn json<T: serde::de::DeserializeOwned>(&self, i: usize) -> Result<T> {
        let text: String = self.get(i)?;
        serde_json::from_str(&text).with_context(|| format!("column {i} is not the JSON expected"))
    }

    /// Column `i`, a serde enum's kebab-case name, as a `T`.
    pub fn name<T: serde::de::DeserializeOwned>(&self, i: usize) -> Result<T> {
        let text: String = self.get(i)?;
        serde_json::from_value(serde_json::Value::String(text.clone()))
            .with_context(|| format!("column {i} holds an unknown name `{text}`"))
    }
}
