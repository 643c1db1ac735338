//! Profiles and segment memberships read from PostgreSQL: how a platform hands the host its
//! unified profiles. The profiles come from a table, a view or a query (one row a profile,
//! every column a field); the memberships from another, with the columns `profile_id` and
//! `segment`, as the file source's `memberships.csv`. A run's rows stream through a
//! server-side cursor (a portal, fetched a page at a time) on a thread of its own, through a
//! bounded channel: the segment is never in memory whole. A connection lost on the way (a
//! database restart, a dropped link) is made again and the rows read again from the start;
//! the run's side hands on only the rows it had not had yet.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use anyhow::{Context, Result, bail};
use tokio_postgres::Client;

use super::{Profile, ProfileSource, ProfileStream, Row, SkipReason, SkippedRow, hash128};

/// Rows fetched from the cursor at a time.
const PAGE: i32 = 5_000;
/// How long the source keeps trying to reach the database after losing it, in all.
const PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);
/// Rows waiting for the run at most (the channel's bound).
const QUEUED_ROWS: usize = 2 * PAGE as usize;

/// A PostgreSQL database holding profiles and memberships.
#[derive(Clone)]
pub struct PostgresSource {
    url: String,
    profiles: String,
    memberships: String,
    id_column: String,
}

impl PostgresSource {
    /// A source over the database at `url` (its password, if any, from `PGPASSWORD`):
    /// `profiles` and `memberships` each name a table or view (`schema.name` allowed) or are a
    /// parenthesised query; `id_column` is the profiles' id.
    pub fn new(url: &str, profiles: &str, memberships: &str, id_column: &str) -> Result<Self> {
        crate::pg::postgres_config(url)?;
        Ok(PostgresSource {
            url: url.to_string(),
            profiles: relation(profiles).context("the profiles table")?,
            memberships: relation(memberships).context("the memberships table")?,
            id_column: id_column.to_string(),
        })
    }

    /// Checks a `profiles` setting that is a PostgreSQL URL: it must parse, and carry no
    /// password (settings are stored as they are; the password comes from PGPASSWORD).
    pub fn check_url(url: &str) -> Result<()> {
        let config: tokio_postgres::Config = url
            .parse()
            .with_context(|| format!("`{}` is not a PostgreSQL URL", crate::pg::redacted(url)))?;
        if config.get_password().is_some() {
            bail!(
                "settings are stored as they are: give the URL without its password, and the password in PGPASSWORD to the processes that run exports"
            );
        }
        Ok(())
    }

    /// Checks that `text` names a table or view, or is a parenthesised query, as the
    /// `profiles-table` and `memberships-table` settings must.
    pub fn check_relation(text: &str) -> Result<()> {
        relation(text).map(drop)
    }

    fn id(&self) -> String {
        format!("p.{}", quote(&self.id_column))
    }

    /// Runs `work` with a connection, on a thread and runtime of its own (the source's methods
    /// are blocking, and may be called from within another runtime); a connection lost on the
    /// way is made again and `work` tried again, for a while.
    fn with_client<T: Send>(
        &self,
        work: impl AsyncFn(&Client) -> Result<T> + Send + Sync,
    ) -> Result<T> {
        let url = self.url.clone();
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    runtime.block_on(patiently(async || {
                        let client = connect(&url).await?;
                        work(&client).await
                    }))
                })
                .join()
                .unwrap_or_else(|_| bail!("the PostgreSQL source's thread panicked"))
        })
    }
}

/// Whether `error` is the profile database out of reach for a while (a restart, a dropped
/// connection), worth another try.
fn out_of_reach(error: &anyhow::Error) -> bool {
    crate::pg::is_transient(error)
}

/// Runs `work` until it succeeds, fails for another reason than the database being out of
/// reach, or [`PATIENCE`] is spent.
async fn patiently<T>(work: impl AsyncFn() -> Result<T>) -> Result<T> {
    let started = std::time::Instant::now();
    let mut wait = std::time::Duration::from_millis(200);
    loop {
        match work().await {
            Err(e) if out_of_reach(&e) && started.elapsed() < PATIENCE => {
                tracing::warn!("the profile database cannot be reached ({e:#}); trying again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(5));
            }
            other => return other,
        }
    }
}

async fn connect(url: &str) -> Result<Client> {
    let config = crate::pg::postgres_config(url)?;
    let (client, connection) = config
        .connect(crate::pg::postgres_tls()?)
        .await
        .with_context(|| {
            format!(
                "cannot reach the profile database {}",
                crate::pg::redacted(url)
            )
        })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!("the profile database connection ended: {e}");
        }
    });
    Ok(client)
}

/// A relation as SQL: a quoted (schema-qualified) name, or a parenthesised query as given.
fn relation(text: &str) -> Result<String> {
    let text = text.trim();
    if text.starts_with('(') && text.ends_with(')') {
        return Ok(text.to_string());
    }
    let parts: Vec<&str> = text.split('.').collect();
    let name = |p: &&str| {
        !p.is_empty()
            && p.chars().all(|c| c.is_alphanumeric() || c == '_')
            && !p.starts_with(|c: char| c.is_ascii_digit())
    };
    if parts.len() > 2 || !parts.iter().all(name) {
        bail!(
            "`{text}` is neither a table or view name (letters, digits, _; `schema.name` allowed) nor a query in parentheses"
        );
    }
    Ok(parts.iter().map(|p| quote(p)).collect::<Vec<_>>().join("."))
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl ProfileSource for PostgresSource {
    fn columns(&self) -> Result<Vec<String>> {
        let sql = format!("SELECT * FROM {} AS p LIMIT 0", self.profiles);
        let columns: Vec<String> = self.with_client(async |client| {
            let statement = client
                .prepare(&sql)
                .await
                .context("reading the profiles table's columns")?;
            Ok(statement
                .columns()
                .iter()
                .map(|c| c.name().to_string())
                .collect())
        })?;
        if !columns.contains(&self.id_column) {
            bail!(
                "the profiles table has no `{}` id column (it has: {})",
                self.id_column,
                columns.join(", ")
            );
        }
        Ok(columns)
    }

    fn segments(&self) -> Result<BTreeMap<String, u64>> {
        let sql = format!(
            "SELECT m.segment::text, COUNT(DISTINCT m.profile_id) FROM {} AS m
             WHERE m.segment IS NOT NULL AND m.profile_id IS NOT NULL GROUP BY 1",
            self.memberships
        );
        self.with_client(async |client| {
            let rows = client
                .query(&sql, &[])
                .await
                .context("reading the memberships table")?;
            Ok(rows
                .iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64))
                .collect())
        })
    }

    fn profiles(&self, segments: &[String]) -> Result<ProfileStream> {
        let columns = self.columns()?;
        let members = format!(
            "SELECT m.profile_id::text FROM {} AS m WHERE m.segment::text = ANY($1)",
            self.memberships
        );
        let total_sql = format!(
            "SELECT COUNT(DISTINCT m.profile_id::text) FROM {} AS m
             WHERE m.segment::text = ANY($1) AND m.profile_id IS NOT NULL",
            self.memberships
        );
        let segments = segments.to_vec();
        let total = {
            let segments = segments.clone();
            self.with_client(async move |client| {
                let row = client.query_one(&total_sql, &[&segments]).await?;
                Ok(row.get::<_, i64>(0) as u64)
            })?
        };
        let values = columns
            .iter()
            .map(|c| format!("p.{}::text", quote(c)))
            .collect::<Vec<_>>()
            .join(", ");
        let queries = StreamQueries {
            profiles: format!(
                "SELECT {values} FROM {} AS p WHERE {}::text IN ({members})",
                self.profiles,
                self.id()
            ),
            unknown: format!(
                "SELECT DISTINCT k.id FROM ({members}) AS k(id) WHERE k.id IS NOT NULL
                 AND NOT EXISTS (SELECT 1 FROM {} AS p WHERE {}::text = k.id)",
                self.profiles,
                self.id()
            ),
            id_index: columns
                .iter()
                .position(|c| *c == self.id_column)
                .expect("checked by columns()"),
        };
        let (sender, receiver) = sync_channel(QUEUED_ROWS);
        let url = self.url.clone();
        std::thread::Builder::new()
            .name("postgres-source".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = sender.send(Item::Row(Err(e.into())));
                        return;
                    }
                };
                let failed = runtime.block_on(stream_patiently(&url, &queries, &segments, &sender));
                if let Err(e) = failed {
                    let _ = sender.send(Item::Row(Err(e)));
                }
            })?;
        Ok(ProfileStream {
            total: Some(total),
            rows: Box::new(Rows::new(receiver)),
        })
    }
}

struct StreamQueries {
    profiles: String,
    unknown: String,
    id_index: usize,
}

/// What the source's thread hands the run: a row, or word that the rows are read again from
/// the start (the connection was lost and made again).
enum Item {
    Row(Result<Row>),
    Again,
}

/// [`stream`], read again from the start when the connection is lost on the way (for
/// [`PATIENCE`] in all).
async fn stream_patiently(
    url: &str,
    queries: &StreamQueries,
    segments: &[String],
    sender: &SyncSender<Item>,
) -> Result<()> {
    let started = std::time::Instant::now();
    let mut wait = std::time::Duration::from_millis(200);
    loop {
        match stream(url, queries, segments, sender).await {
            Err(e) if out_of_reach(&e) && started.elapsed() < PATIENCE => {
                tracing::warn!(
                    "the profile database connection was lost ({e:#}); reading the segment again"
                );
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(5));
                if sender.send(Item::Again).is_err() {
                    return Ok(());
                }
            }
            other => return other,
        }
    }
}

/// Streams the chosen members' profiles, then the members no profile has, a page at a time
/// from server-side cursors. Returns when done or when the run stops listening.
async fn stream(
    url: &str,
    queries: &StreamQueries,
    segments: &[String],
    sender: &SyncSender<Item>,
) -> Result<()> {
    let mut client = connect(url).await?;
    let tx = client.transaction().await?;
    let profiles = tx.prepare(&queries.profiles).await?;
    let portal = tx.bind(&profiles, &[&segments]).await?;
    loop {
        let page = tx.query_portal(&portal, PAGE).await?;
        if page.is_empty() {
            break;
        }
        for r in &page {
            let values: Vec<Option<String>> = (0..r.len()).map(|i| r.get(i)).collect();
            let row = match values[queries.id_index].clone() {
                Some(id) if !id.trim().is_empty() => Row::Profile(Profile { id, values }),
                _ => Row::Skipped(SkippedRow {
                    profile_id: None,
                    reason: SkipReason::Unreadable,
                    location: "the profiles table".into(),
                    detail: "a profile with no id".into(),
                }),
            };
            if sender.send(Item::Row(Ok(row))).is_err() {
                return Ok(());
            }
        }
    }
    let unknown = tx.prepare(&queries.unknown).await?;
    let portal = tx.bind(&unknown, &[&segments]).await?;
    loop {
        let page = tx.query_portal(&portal, PAGE).await?;
        if page.is_empty() {
            break;
        }
        for r in &page {
            let id: String = r.get(0);
            let row = Row::Skipped(SkippedRow {
                profile_id: Some(id.clone()),
                reason: SkipReason::UnknownProfile,
                location: "the memberships table".into(),
                detail: format!(
                    "the membership names profile `{id}`, which the profiles table does not have"
                ),
            });
            if sender.send(Item::Row(Ok(row))).is_err() {
                return Ok(());
            }
        }
    }
    tx.commit().await?;
    Ok(())
}

/// The run's side of the stream: a repeated profile id is skipped (its first row is used).
/// After the rows are read again from the start, a row handed on before is not handed on
/// again: a profile whose id an earlier reading had, and as many repeats and skipped rows of a
/// kind as were handed on already.
struct Rows {
    receiver: Receiver<Item>,
    /// Profile ids (hashed) of this reading.
    seen: HashSet<u128>,
    /// Profile ids of the readings before this one, once there was one.
    earlier: Option<HashSet<u128>>,
    /// Repeats and skipped rows (by what they say) handed on so far, and met in this reading.
    handed: HashMap<u128, u32>,
    met: HashMap<u128, u32>,
}

impl Rows {
    fn new(receiver: Receiver<Item>) -> Rows {
        Rows {
            receiver,
            seen: HashSet::new(),
            earlier: None,
            handed: HashMap::new(),
            met: HashMap::new(),
        }
    }

    /// The row to hand on for `row` of this reading, if it was not handed on before.
    fn decide(&mut self, row: Row) -> Option<Row> {
        let row = match row {
            Row::Profile(p) => {
                let id = hash128(&p.id);
                if self.seen.insert(id) {
                    if self.earlier.as_ref().is_some_and(|e| e.contains(&id)) {
                        return None;
                    }
                    return Some(Row::Profile(p));
                }
                Row::Skipped(SkippedRow {
                    profile_id: Some(p.id.clone()),
                    reason: SkipReason::RepeatedId,
                    location: "the profiles table".into(),
                    detail: format!("repeats profile id `{}`; its first row is used", p.id),
                })
            }
            skipped => skipped,
        };
        let Row::Skipped(skipped) = &row else {
            return Some(row);
        };
        let kind = hash128(&format!(
            "{:?}\u{0}{}\u{0}{}",
            skipped.profile_id, skipped.location, skipped.detail
        ));
        let met = self.met.entry(kind).or_default();
        *met += 1;
        let handed = self.handed.entry(kind).or_default();
        if *met <= *handed {
            return None;
        }
        *handed = *met;
        Some(row)
    }
}

impl Iterator for Rows {
    type Item = Result<Row>;

    fn next(&mut self) -> Option<Result<Row>> {
        loop {
            match self.receiver.recv().ok()? {
                Item::Row(Err(e)) => return Some(Err(e)),
                Item::Row(Ok(row)) => {
                    if let Some(row) = self.decide(row) {
                        return Some(Ok(row));
                    }
                }
                Item::Again => {
                    let earlier = self.earlier.get_or_insert_with(HashSet::new);
                    earlier.extend(self.seen.drain());
                    self.met.clear();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(id: &str) -> Item {
        Item::Row(Ok(Row::Profile(Profile {
            id: id.into(),
            values: vec![Some(id.into())],
        })))
    }

    fn ids(rows: Vec<Result<Row>>) -> Vec<String> {
        rows.into_iter()
            .map(|r| match r.unwrap() {
                Row::Profile(p) => p.id,
                Row::Skipped(s) => format!("skipped {:?} {:?}", s.reason, s.profile_id),
            })
            .collect()
    }

    #[test]
    fn rows_read_again_after_a_lost_connection_are_handed_on_once() {
        let (sender, receiver) = sync_channel(100);
        for item in [
            profile("a"),
            profile("b"),
            profile("a"),
            Item::Again,
            // The second reading comes in another order, and goes further.
            profile("b"),
            profile("a"),
            profile("a"),
            profile("c"),
            profile("c"),
        ] {
            sender.send(item).unwrap();
        }
        drop(sender);
        let rows = Rows::new(receiver);
        assert_eq!(
            ids(rows.collect()),
            [
                "a",
                "b",
                "skipped RepeatedId Some(\"a\")",
                "c",
                "skipped RepeatedId Some(\"c\")"
            ]
        );
    }
}
