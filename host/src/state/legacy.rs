//! The two engines' schema histories from before the schema was written once: SQLite's
//! versions 1 to 9 and PostgreSQL's 1 to 5. Frozen: a state still at one of them is brought to
//! [`super::schema::BASELINE`] through them, then goes on through the one schema.

/// SQLite versions 1 to 9 (`PRAGMA user_version` counted them); 9 is the baseline.
pub(super) const SQLITE: &[&str] = &[
    // 1: connections, exports, runs, undelivered contacts, checkpoints.
    r#"
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE connections (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        connector TEXT NOT NULL,
        base_url TEXT,
        data_centre TEXT,
        credential_kind TEXT NOT NULL,
        credential BLOB,
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
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        connection_id INTEGER NOT NULL REFERENCES connections(id),
        settings TEXT NOT NULL,
        mapping TEXT NOT NULL,
        segments TEXT NOT NULL,
        schedule TEXT,
        created_by TEXT NOT NULL,
        created_at TEXT NOT NULL,
        removed_by TEXT,
        removed_at TEXT
    );
    CREATE UNIQUE INDEX exports_by_name ON exports(name) WHERE removed_at IS NULL;
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        export_id INTEGER NOT NULL REFERENCES exports(id),
        trigger TEXT NOT NULL,
        started_by TEXT NOT NULL,
        status TEXT NOT NULL,
        error TEXT,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        attempts INTEGER NOT NULL DEFAULT 1,
        profiles INTEGER NOT NULL DEFAULT 0,
        sent INTEGER NOT NULL DEFAULT 0,
        created INTEGER NOT NULL DEFAULT 0,
        updated INTEGER NOT NULL DEFAULT 0,
        suppressed INTEGER NOT NULL DEFAULT 0,
        rejected INTEGER NOT NULL DEFAULT 0,
        duplicates INTEGER NOT NULL DEFAULT 0,
        batches INTEGER NOT NULL DEFAULT 0,
        resumed_batches INTEGER NOT NULL DEFAULT 0,
        requests INTEGER NOT NULL DEFAULT 0,
        retries INTEGER NOT NULL DEFAULT 0,
        seconds REAL NOT NULL DEFAULT 0
    );
    CREATE INDEX runs_by_export ON runs(export_id, id);
    CREATE TABLE run_batches (
        run_id INTEGER NOT NULL REFERENCES runs(id),
        batch INTEGER NOT NULL,
        digest BLOB NOT NULL,
        profiles INTEGER NOT NULL,
        sent INTEGER NOT NULL,
        created INTEGER NOT NULL,
        updated INTEGER NOT NULL,
        suppressed INTEGER NOT NULL,
        rejected INTEGER NOT NULL,
        duplicates INTEGER NOT NULL,
        PRIMARY KEY (run_id, batch)
    );
    CREATE TABLE run_issues (
        run_id INTEGER NOT NULL REFERENCES runs(id),
        batch INTEGER NOT NULL,
        profile_id TEXT NOT NULL,
        email TEXT NOT NULL,
        kind TEXT NOT NULL,
        code TEXT NOT NULL,
        message TEXT NOT NULL
    );
    CREATE INDEX run_issues_by_run ON run_issues(run_id, batch);
    "#,
    // 2: administrators' approvals of connectors; what the host refused each run.
    r#"
    CREATE TABLE connector_approvals (
        connector TEXT PRIMARY KEY,
        digest TEXT NOT NULL,
        hosts TEXT NOT NULL,
        default_base_url TEXT NOT NULL,
        version TEXT NOT NULL,
        approved_by TEXT NOT NULL,
        approved_at TEXT NOT NULL
    );
    ALTER TABLE runs ADD COLUMN refusals TEXT NOT NULL DEFAULT '[]';
    "#,
    // 3: each export's sync state; a run's counts as one record; issues by stage; leave actions.
    r#"
    CREATE TABLE sync_contacts (
        export_id INTEGER NOT NULL,
        email TEXT NOT NULL,
        digest INTEGER NOT NULL,
        state INTEGER NOT NULL,
        run_id INTEGER NOT NULL,
        PRIMARY KEY (export_id, email)
    ) WITHOUT ROWID;
    CREATE TABLE sync_reasons (
        export_id INTEGER NOT NULL,
        email TEXT NOT NULL,
        code TEXT NOT NULL,
        message TEXT NOT NULL,
        since TEXT NOT NULL,
        PRIMARY KEY (export_id, email)
    ) WITHOUT ROWID;
    CREATE TABLE sync_basis (
        export_id INTEGER PRIMARY KEY,
        basis TEXT NOT NULL,
        run_id INTEGER NOT NULL
    );
    ALTER TABLE exports ADD COLUMN leave_action TEXT;
    ALTER TABLE runs ADD COLUMN counts TEXT;
    ALTER TABLE runs ADD COLUMN mode TEXT;
    ALTER TABLE runs ADD COLUMN leave_action TEXT;
    UPDATE runs SET counts = json_object('profiles', profiles, 'created', created,
        'updated', updated, 'suppressed', suppressed, 'rejected', rejected,
        'duplicates', duplicates, 'batches', batches)
        WHERE profiles > 0;
    ALTER TABLE run_issues ADD COLUMN stage TEXT NOT NULL DEFAULT 'sent';
    ALTER TABLE run_issues ADD COLUMN since TEXT;
    UPDATE run_issues SET stage = 'skipped', kind = 'invalid' WHERE code = 'missing-email';
    UPDATE run_issues SET stage = 'skipped' WHERE kind = 'duplicate';
    DROP TABLE run_batches;
    "#,
    // 4: settled contacts are appended to a log (cheap, in order) and folded into
    // sync_contacts in key order once the log grows past an eighth of it.
    r#"
    CREATE TABLE sync_log (
        seq INTEGER PRIMARY KEY,
        export_id INTEGER NOT NULL,
        email TEXT NOT NULL,
        digest INTEGER NOT NULL,
        state INTEGER NOT NULL,
        run_id INTEGER NOT NULL
    );
    "#,
    // 5: the segment's size as the source knew it before reading.
    r#"
    ALTER TABLE runs ADD COLUMN segment_size INTEGER;
    "#,
    // 6: the run queue: queued runs (a full sync asked for or not), the worker of each
    // attempt, and each schedule's fires (one run per fire, whoever fires it).
    r#"
    ALTER TABLE runs ADD COLUMN worker TEXT;
    ALTER TABLE runs ADD COLUMN full_sync INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE run_attempts (
        run_id INTEGER NOT NULL REFERENCES runs(id),
        attempt INTEGER NOT NULL,
        worker TEXT NOT NULL,
        started_at TEXT NOT NULL,
        PRIMARY KEY (run_id, attempt)
    );
    INSERT INTO run_attempts (run_id, attempt, worker, started_at)
        SELECT id, 1, 'unknown', started_at FROM runs WHERE counts IS NOT NULL;
    CREATE TABLE schedule_fires (
        export_id INTEGER NOT NULL,
        fire_at TEXT NOT NULL,
        run_id INTEGER NOT NULL,
        PRIMARY KEY (export_id, fire_at)
    );
    CREATE INDEX runs_by_status ON runs(status, id);
    -- At most one queued run an export: asking again gives that one.
    CREATE UNIQUE INDEX runs_queued ON runs(export_id) WHERE status = 'queued';
    "#,
    // 7: people (users, API tokens, console sessions), the audit log of changes, and the
    // platform's OAuth applications with the vendors.
    r#"
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
        id INTEGER PRIMARY KEY,
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
        client_secret BLOB NOT NULL,
        updated_by TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    "#,
    // 8: fencing: the generation of the lock an attempt holds, which every write of the run
    // carries; attempts that ended in a failure of the worker (a panic), counted.
    r#"
    ALTER TABLE runs ADD COLUMN lease_token TEXT;
    ALTER TABLE runs ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
    "#,
    // 9: who each contact of a sync state is (a hash of the profile id it was sent for;
    // 0 for contacts settled before), so that a person still in the segment under an unusable
    // or new address is not taken for a leaver.
    r#"
    ALTER TABLE sync_contacts ADD COLUMN person INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE sync_log ADD COLUMN person INTEGER NOT NULL DEFAULT 0;
    -- What each attempt cost, recorded as it goes: a run's figures are its attempts' sums.
    ALTER TABLE run_attempts ADD COLUMN requests INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE run_attempts ADD COLUMN retries INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE run_attempts ADD COLUMN batches INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE run_attempts ADD COLUMN seconds REAL NOT NULL DEFAULT 0;
    "#,
];

/// PostgreSQL versions 1 to 5 (`schema_version` counted them); 5 is the baseline.
pub(super) const POSTGRES: &[&str] = &[
    // 1: everything the SQLite engine keeps, plus the export leases.
    r#"
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE connections (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        name TEXT NOT NULL,
        connector TEXT NOT NULL,
        base_url TEXT,
        data_centre TEXT,
        credential_kind TEXT NOT NULL,
        credential BYTEA,
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
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        name TEXT NOT NULL,
        connection_id BIGINT NOT NULL REFERENCES connections(id),
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
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        export_id BIGINT NOT NULL REFERENCES exports(id),
        trigger TEXT NOT NULL,
        started_by TEXT NOT NULL,
        status TEXT NOT NULL,
        error TEXT,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        attempts BIGINT NOT NULL DEFAULT 1,
        requests BIGINT NOT NULL DEFAULT 0,
        retries BIGINT NOT NULL DEFAULT 0,
        seconds DOUBLE PRECISION NOT NULL DEFAULT 0,
        refusals TEXT NOT NULL DEFAULT '[]',
        counts TEXT,
        mode TEXT,
        leave_action TEXT,
        segment_size BIGINT,
        worker TEXT,
        full_sync BIGINT NOT NULL DEFAULT 0
    );
    CREATE INDEX runs_by_export ON runs(export_id, id);
    CREATE INDEX runs_by_status ON runs(status, id);
    -- At most one queued run an export: asking again gives that one.
    CREATE UNIQUE INDEX runs_queued ON runs(export_id) WHERE status = 'queued';
    CREATE TABLE run_attempts (
        run_id BIGINT NOT NULL REFERENCES runs(id),
        attempt BIGINT NOT NULL,
        worker TEXT NOT NULL,
        started_at TEXT NOT NULL,
        PRIMARY KEY (run_id, attempt)
    );
    -- Named as SQLite's implicit row id, so that one query orders issues on both engines.
    CREATE TABLE run_issues (
        rowid BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        run_id BIGINT NOT NULL REFERENCES runs(id),
        batch BIGINT NOT NULL,
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
    CREATE TABLE sync_contacts (
        export_id BIGINT NOT NULL,
        email TEXT NOT NULL,
        digest BIGINT NOT NULL,
        state SMALLINT NOT NULL,
        run_id BIGINT NOT NULL,
        PRIMARY KEY (export_id, email)
    );
    CREATE TABLE sync_reasons (
        export_id BIGINT NOT NULL,
        email TEXT NOT NULL,
        code TEXT NOT NULL,
        message TEXT NOT NULL,
        since TEXT NOT NULL,
        PRIMARY KEY (export_id, email)
    );
    CREATE TABLE sync_basis (
        export_id BIGINT PRIMARY KEY,
        basis TEXT NOT NULL,
        run_id BIGINT NOT NULL
    );
    CREATE TABLE schedule_fires (
        export_id BIGINT NOT NULL,
        fire_at TEXT NOT NULL,
        run_id BIGINT NOT NULL,
        PRIMARY KEY (export_id, fire_at)
    );
    CREATE TABLE export_leases (
        export_id BIGINT PRIMARY KEY,
        worker TEXT NOT NULL,
        token TEXT NOT NULL,
        expires_ms BIGINT NOT NULL
    );
    "#,
    // 2: vendor accounts' simultaneous requests, counted across workers.
    r#"
    CREATE TABLE account_slots (
        account TEXT NOT NULL,
        slot INTEGER NOT NULL,
        token TEXT NOT NULL DEFAULT '',
        worker TEXT NOT NULL DEFAULT '',
        expires_ms BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (account, slot)
    );
    "#,
    // 3: people (users, API tokens, console sessions), the audit log of changes, and the
    // platform's OAuth applications with the vendors.
    r#"
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
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
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
        client_secret BYTEA NOT NULL,
        updated_by TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    "#,
    // 4: fencing: the generation of the lease an attempt holds, which every write of the run
    // carries; attempts that ended in a failure of the worker (a panic), counted.
    r#"
    ALTER TABLE runs ADD COLUMN lease_token TEXT;
    ALTER TABLE runs ADD COLUMN failures BIGINT NOT NULL DEFAULT 0;
    "#,
    // 5: who each contact of a sync state is (a hash of the profile id it was sent for;
    // 0 for contacts settled before), so that a person still in the segment under an unusable
    // or new address is not taken for a leaver.
    r#"
    ALTER TABLE sync_contacts ADD COLUMN person BIGINT NOT NULL DEFAULT 0;
    -- What each attempt cost, recorded as it goes: a run's figures are its attempts' sums.
    ALTER TABLE run_attempts ADD COLUMN requests BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE run_attempts ADD COLUMN retries BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE run_attempts ADD COLUMN batches BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE run_attempts ADD COLUMN seconds DOUBLE PRECISION NOT NULL DEFAULT 0;
    "#,
];
