//! The schema, written once for both engines, with one numbering. Each version is SQL both
//! engines speak, with a few words each spells its own way (`{id}` a generated key, `{int}` a
//! 64-bit integer, `{small}`, `{real}`, `{bytes}`, `{keyed}` a table stored by its key). A
//! change of the schema is one new entry at the end of [`VERSIONS`]; never edit a released one.
//!
//! A new state is made at [`BASELINE`] in one step. A state made before the schema was one is
//! brought there through its engine's frozen history ([`super::legacy`]), then goes on here.

use anyhow::{Result, bail};

use super::legacy;

/// Which engine a statement is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Engine {
    Sqlite,
    Postgres,
}

/// The version every state reaches first: a new one at once, an older one through its
/// engine's history.
pub(super) const BASELINE: u32 = 9;

/// The schema at [`BASELINE`], whole.
const BASELINE_SQL: &str = r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE connections (
    id {id},
    name TEXT NOT NULL,
    connector TEXT NOT NULL,
    base_url TEXT,
    data_centre TEXT,
    credential_kind TEXT NOT NULL,
    credential {bytes},
    fingerprint TEXT NOT NULL,
    token_expires_at TEXT,
    access TEXT NOT NULL,
    privacy_accepted_by TEXT NOT NULL,
    privacy_accepted_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    checked_at TEXT,
    removed_by TEXT,
    removed_at TEXT
);
CREATE UNIQUE INDEX connections_by_name ON connections(name) WHERE removed_at IS NULL;
CREATE TABLE exports (
    id {id},
    name TEXT NOT NULL,
    connection_id {int} NOT NULL REFERENCES connections(id),
    settings TEXT NOT NULL,
    mapping TEXT NOT NULL,
    segments TEXT NOT NULL,
    schedule TEXT,
    leave_action TEXT,
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    removed_by TEXT,
    removed_at TEXT
);
CREATE UNIQUE INDEX exports_by_name ON exports(name) WHERE removed_at IS NULL;
CREATE TABLE runs (
    id {id},
    export_id {int} NOT NULL REFERENCES exports(id),
    trigger TEXT NOT NULL,
    started_by TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    attempts {int} NOT NULL DEFAULT 1,
    requests {int} NOT NULL DEFAULT 0,
    retries {int} NOT NULL DEFAULT 0,
    seconds {real} NOT NULL DEFAULT 0,
    refusals TEXT NOT NULL DEFAULT '[]',
    counts TEXT,
    mode TEXT,
    leave_action TEXT,
    segment_size {int},
    worker TEXT,
    full_sync {int} NOT NULL DEFAULT 0,
    lease_token TEXT,
    failures {int} NOT NULL DEFAULT 0
);
CREATE INDEX runs_by_export ON runs(export_id, id);
CREATE INDEX runs_by_status ON runs(status, id);
-- At most one queued run an export: asking again gives that one.
CREATE UNIQUE INDEX runs_queued ON runs(export_id) WHERE status = 'queued';
-- What each attempt cost, recorded as it goes: a run's figures are its attempts' sums.
CREATE TABLE run_attempts (
    run_id {int} NOT NULL REFERENCES runs(id),
    attempt {int} NOT NULL,
    worker TEXT NOT NULL,
    started_at TEXT NOT NULL,
    requests {int} NOT NULL DEFAULT 0,
    retries {int} NOT NULL DEFAULT 0,
    batches {int} NOT NULL DEFAULT 0,
    seconds {real} NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, attempt)
);
-- Ordered by `rowid` on both engines (SQLite's own row id, named).
CREATE TABLE run_issues (
    rowid {id},
    run_id {int} NOT NULL REFERENCES runs(id),
    batch {int} NOT NULL,
    profile_id TEXT NOT NULL,
    email TEXT NOT NULL,
    kind TEXT NOT NULL,
    code TEXT NOT NULL,
    message TEXT NOT NULL,
    stage TEXT NOT NULL DEFAULT 'sent',
    since TEXT
);
CREATE INDEX run_issues_by_run ON run_issues(run_id, batch);
CREATE TABLE connector_approvals (
    connector TEXT PRIMARY KEY,
    digest TEXT NOT NULL,
    hosts TEXT NOT NULL,
    default_base_url TEXT NOT NULL,
    version TEXT NOT NULL,
    approved_by TEXT NOT NULL,
    approved_at TEXT NOT NULL
);
-- Each export's sync state: a contact's digest, state, run and person (a hash of the profile
-- id it was sent for).
CREATE TABLE sync_contacts (
    export_id {int} NOT NULL,
    email TEXT NOT NULL,
    digest {int} NOT NULL,
    state {small} NOT NULL,
    run_id {int} NOT NULL,
    person {int} NOT NULL DEFAULT 0,
    PRIMARY KEY (export_id, email)
) {keyed};
-- SQLite appends what a run settles here, folded into sync_contacts in key order later.
CREATE TABLE sync_log (
    seq {id},
    export_id {int} NOT NULL,
    email TEXT NOT NULL,
    digest {int} NOT NULL,
    state {small} NOT NULL,
    run_id {int} NOT NULL,
    person {int} NOT NULL DEFAULT 0
);
CREATE TABLE sync_reasons (
    export_id {int} NOT NULL,
    email TEXT NOT NULL,
    code TEXT NOT NULL,
    message TEXT NOT NULL,
    since TEXT NOT NULL,
    PRIMARY KEY (export_id, email)
) {keyed};
CREATE TABLE sync_basis (
    export_id {int} PRIMARY KEY,
    basis TEXT NOT NULL,
    run_id {int} NOT NULL
);
CREATE TABLE schedule_fires (
    export_id {int} NOT NULL,
    fire_at TEXT NOT NULL,
    run_id {int} NOT NULL,
    PRIMARY KEY (export_id, fire_at)
);
-- PostgreSQL's export leases and vendor account slots, shared by the workers.
CREATE TABLE export_leases (
    export_id {int} PRIMARY KEY,
    worker TEXT NOT NULL,
    token TEXT NOT NULL,
    expires_ms {int} NOT NULL
);
CREATE TABLE account_slots (
    account TEXT NOT NULL,
    slot INTEGER NOT NULL,
    token TEXT NOT NULL DEFAULT '',
    worker TEXT NOT NULL DEFAULT '',
    expires_ms {int} NOT NULL DEFAULT 0,
    PRIMARY KEY (account, slot)
);
CREATE TABLE users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    password_hash TEXT,
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE api_tokens (
    token_hash TEXT PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    user_name TEXT NOT NULL REFERENCES users(name),
    label TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    last_used_at TEXT
);
CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY,
    user_name TEXT NOT NULL REFERENCES users(name),
    csrf TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE TABLE audit_log (
    id {id},
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    role TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE TABLE oauth_apps (
    connector TEXT PRIMARY KEY,
    app TEXT NOT NULL,
    client_secret {bytes} NOT NULL,
    updated_by TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
"#;

/// The versions after [`BASELINE`], in order: (version, SQL).
const VERSIONS: &[(u32, &str)] = &[
    // 10: each engine's own tables on both, so that every state has the same schema (a state
    // made at the baseline has them already).
    (
        10,
        r#"
        CREATE TABLE IF NOT EXISTS sync_log (
            seq {id},
            export_id {int} NOT NULL,
            email TEXT NOT NULL,
            digest {int} NOT NULL,
            state {small} NOT NULL,
            run_id {int} NOT NULL,
            person {int} NOT NULL DEFAULT 0
        );
        CREATE TABLE IF NOT EXISTS export_leases (
            export_id {int} PRIMARY KEY,
            worker TEXT NOT NULL,
            token TEXT NOT NULL,
            expires_ms {int} NOT NULL
        );
        CREATE TABLE IF NOT EXISTS account_slots (
            account TEXT NOT NULL,
            slot INTEGER NOT NULL,
            token TEXT NOT NULL DEFAULT '',
            worker TEXT NOT NULL DEFAULT '',
            expires_ms {int} NOT NULL DEFAULT 0,
            PRIMARY KEY (account, slot)
        );
        "#,
    ),
    // 11: when a run under way is expected to end (its phase under way: sending, then
    // settling leavers), as its latest settled piece estimated.
    (11, "ALTER TABLE runs ADD COLUMN expected_end TEXT;"),
    // 12: a vendor account's rate windows, shared by every worker (PostgreSQL; SQLite's one
    // process paces in memory): the next time each window lets a request go.
    (
        12,
        r#"
        CREATE TABLE account_windows (
            account TEXT NOT NULL,
            window_key TEXT NOT NULL,
            next_ms {int} NOT NULL,
            PRIMARY KEY (account, window_key)
        );
        "#,
    ),
];

/// The version a state is up to date at.
pub(super) fn latest() -> u32 {
    VERSIONS.last().map_or(BASELINE, |(v, _)| *v)
}

/// The statements that bring a state of `engine` at `version` (0: new) up to date, each with
/// the version it reaches, one transaction each.
pub(super) fn steps(engine: Engine, version: u32) -> Result<Vec<(u32, String)>> {
    if version > latest() {
        bail!(
            "the state database has schema version {version}, newer than this connector-host knows ({}); use a newer connector-host",
            latest()
        );
    }
    let mut steps = vec![];
    match (engine, version) {
        (_, 0) => steps.push((BASELINE, render(BASELINE_SQL, engine))),
        // Before the schema was one: the engine's own history up to the baseline.
        (Engine::Sqlite, v) if v < BASELINE => {
            for (i, sql) in legacy::SQLITE.iter().enumerate().skip(v as usize) {
                steps.push((i as u32 + 1, sql.to_string()));
            }
        }
        (Engine::Postgres, v) if (v as usize) <= legacy::POSTGRES.len() => {
            for sql in legacy::POSTGRES.iter().skip(v as usize) {
                steps.push((0, sql.to_string()));
            }
            // PostgreSQL's last version is the baseline under its new number.
            steps.push((BASELINE, String::new()));
        }
        _ => {}
    }
    let from = version.max(BASELINE);
    for (v, sql) in VERSIONS.iter().filter(|(v, _)| *v > from) {
        steps.push((*v, render(sql, engine)));
    }
    // A legacy step of PostgreSQL reaches no version of the one numbering: it is applied
    // in the same transaction as the step that does.
    Ok(merge_unnumbered(steps))
}

/// Joins steps that reach no version (0) to the next step that does.
fn merge_unnumbered(steps: Vec<(u32, String)>) -> Vec<(u32, String)> {
    let mut merged: Vec<(u32, String)> = vec![];
    let mut pending = String::new();
    for (version, sql) in steps {
        if version == 0 {
            pending.push_str(&sql);
            pending.push_str(";\n");
            continue;
        }
        merged.push((version, format!("{pending}{sql}")));
        pending.clear();
    }
    merged
}

/// `sql` with each engine's own words.
pub(super) fn render(sql: &str, engine: Engine) -> String {
    let words: &[(&str, &str)] = match engine {
        Engine::Sqlite => &[
            ("{id}", "INTEGER PRIMARY KEY"),
            ("{int}", "INTEGER"),
            ("{small}", "INTEGER"),
            ("{real}", "REAL"),
            ("{bytes}", "BLOB"),
            ("{keyed}", "WITHOUT ROWID"),
        ],
        Engine::Postgres => &[
            (
                "{id}",
                "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
            ),
            ("{int}", "BIGINT"),
            ("{small}", "SMALLINT"),
            ("{real}", "DOUBLE PRECISION"),
            ("{bytes}", "BYTEA"),
            ("{keyed}", ""),
        ],
    };
    words.iter().fold(sql.to_string(), |sql, (word, spelt)| {
        sql.replace(word, spelt)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_word_is_spelt_for_each_engine() {
        for engine in [Engine::Sqlite, Engine::Postgres] {
            let sql = render(BASELINE_SQL, engine);
            assert!(!sql.contains('{'), "{engine:?}: {sql}");
        }
    }

    #[test]
    fn a_new_state_is_made_at_once_and_an_older_one_through_its_history() {
        let reached = |steps: Vec<(u32, String)>| steps.iter().map(|s| s.0).collect::<Vec<_>>();
        assert_eq!(
            reached(steps(Engine::Sqlite, 0).unwrap()),
            [BASELINE, 10, 11, 12]
        );
        assert_eq!(
            reached(steps(Engine::Sqlite, 6).unwrap()),
            [7, 8, 9, 10, 11, 12]
        );
        assert_eq!(
            reached(steps(Engine::Postgres, 3).unwrap()),
            [BASELINE, 10, 11, 12]
        );
        assert_eq!(
            reached(steps(Engine::Postgres, BASELINE).unwrap()),
            [10, 11, 12]
        );
        assert!(steps(Engine::Sqlite, latest()).unwrap().is_empty());
        assert!(steps(Engine::Sqlite, latest() + 1).is_err());
    }
}
