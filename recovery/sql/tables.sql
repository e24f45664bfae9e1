-- The recovery schema, version 5 (1 + snapshots in 2, approvals and runbooks in 3, journal
-- values of non-built-in types stored as text in 4, the WAL capture source in 5).
--
-- This text is composed with psycopg.sql before it runs: every {s} becomes the
-- quoted schema identifier and {s_lit} the schema name as a string literal.
-- Literal braces are doubled.  Everything here is idempotent: `recovery init`
-- runs it on every call, and CREATE ... IF NOT EXISTS / CREATE OR REPLACE keep
-- captured data intact.

CREATE SCHEMA IF NOT EXISTS {s};
REVOKE ALL ON SCHEMA {s} FROM PUBLIC;

CREATE TABLE IF NOT EXISTS {s}.meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);
INSERT INTO {s}.meta (key, value) VALUES ('gen', '1') ON CONFLICT (key) DO NOTHING;

-- One row per table under capture (past or present).  relid is the table's oid;
-- names are refreshed whenever the table is renamed.  key_attnums are the
-- parent table's attribute numbers of the row key, so renames do not matter.
CREATE TABLE IF NOT EXISTS {s}.captured (
    table_id     serial PRIMARY KEY,
    relid        oid NOT NULL,
    schema_name  text NOT NULL,
    table_name   text NOT NULL,
    key_attnums  int2[] NOT NULL,
    key_source   text NOT NULL,
    enabled      boolean NOT NULL DEFAULT true,
    enabled_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    disabled_at  timestamptz,
    stopped      text
);
-- Version 5: the capture source of each table, 'trigger' (statement triggers write the
-- journal) or 'wal' (a logical replication slot is drained into it: wal.sql); for the
-- WAL source, the replica identity each relation of the table had before capture set
-- it to FULL (relid -> 'd', 'n', 'f' or 'i:<index name>', put back on disable), and the
-- columns the drain maps pgoutput's values onto (the last shape message it read).
ALTER TABLE {s}.captured ADD COLUMN IF NOT EXISTS source text NOT NULL DEFAULT 'trigger';
ALTER TABLE {s}.captured ADD COLUMN IF NOT EXISTS prev_identity jsonb;
ALTER TABLE {s}.captured ADD COLUMN IF NOT EXISTS wal_shape jsonb;
CREATE UNIQUE INDEX IF NOT EXISTS captured_relid_enabled ON {s}.captured (relid) WHERE enabled;

-- Journal column of each captured attribute; a retyped column gets a new journal
-- column and the old one is kept (with valid_until) so older changes stay readable.
CREATE TABLE IF NOT EXISTS {s}.columns (
    table_id    int NOT NULL REFERENCES {s}.captured,
    attnum      int2 NOT NULL,
    jcol        text NOT NULL,
    type_name   text NOT NULL,
    since_stmt  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (table_id, jcol)
);

-- Labels of the enums that captured columns use (directly, in an array or through a
-- domain), by the oid of each enum value (version 4).  The journal holds enum values
-- as their labels (see storage_type); when `ALTER TYPE ... RENAME VALUE` renames one,
-- on_type_ddl() compares with this table and rewrites the journal's labels, so that
-- older changes still read back as the same enum value.
CREATE TABLE IF NOT EXISTS {s}.enum_labels (
    enum_oid   oid PRIMARY KEY,
    enumtypid  oid NOT NULL,
    label      text NOT NULL
);

CREATE SEQUENCE IF NOT EXISTS {s}.stmt_seq;

-- One row per captured statement that changed rows; partitioned by generation
-- so that prune drops whole chunks.
CREATE TABLE IF NOT EXISTS {s}.stmt (
    gen       int NOT NULL,
    stmt_id   bigint NOT NULL,
    table_id  int NOT NULL,
    op        "char" NOT NULL,
    txid      bigint NOT NULL,
    at        timestamptz NOT NULL,
    db_user   text NOT NULL,
    app       text,
    tag       text,
    depth     int NOT NULL,
    nrows     bigint NOT NULL
) PARTITION BY LIST (gen);

CREATE TABLE IF NOT EXISTS {s}.events (
    id        bigserial PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    table_id  int,
    kind      text NOT NULL,
    detail    text,
    db_user   text NOT NULL DEFAULT session_user,
    stmt_hwm  bigint
);

-- Named points in time (`recovery mark`), accepted wherever a time is.
CREATE TABLE IF NOT EXISTS {s}.marks (
    name        text PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    stmt_hwm    bigint,
    created_by  text NOT NULL DEFAULT session_user,
    note        text
);

CREATE TABLE IF NOT EXISTS {s}.operations (
    op_id         bigserial PRIMARY KEY,
    kind          text NOT NULL,
    status        text NOT NULL,
    requested_by  text NOT NULL DEFAULT session_user,
    started_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at   timestamptz,
    selector      jsonb,
    options       jsonb,
    summary       jsonb,
    error         text,
    tag           text
);

-- In-database snapshots (`recovery snapshot create`, the default store): the
-- manifest (the same document a directory snapshot writes as manifest.json) and,
-- per saved table, a data table {s}.snap_<snap_id>_<n>.  A snapshot is written in
-- one transaction, so a killed one leaves nothing behind.  (Version 2.)
CREATE TABLE IF NOT EXISTS {s}.snapshots (
    snap_id     bigserial PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    created_by  text NOT NULL DEFAULT session_user,
    manifest    jsonb NOT NULL
);

-- Two-person approval (version 3).  An operation whose plan is larger than the
-- thresholds is recorded here as pending and does not run; approvals come from
-- other database users (session_user), for the exact plan (its SHA-256), and are
-- consumed when the operation runs.  Thresholds live in meta: approval_rows,
-- approval_tables, approvals_required.
CREATE TABLE IF NOT EXISTS {s}.approval_requests (
    req_id        bigserial PRIMARY KEY,
    kind          text NOT NULL,
    plan          jsonb NOT NULL,
    plan_hash     text NOT NULL,
    rows          bigint NOT NULL,
    tables        int NOT NULL,
    required      int NOT NULL,
    requested_by  text NOT NULL DEFAULT session_user,
    requested_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    status        text NOT NULL DEFAULT 'pending',
    executed_at   timestamptz,
    executed_by   text
);
CREATE TABLE IF NOT EXISTS {s}.approvals (
    req_id       bigint NOT NULL REFERENCES {s}.approval_requests,
    approved_by  text NOT NULL DEFAULT session_user,
    approved_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    plan_hash    text NOT NULL,
    PRIMARY KEY (req_id, approved_by)
);
INSERT INTO {s}.meta (key, value) VALUES ('approval_rows', '10000'), ('approval_tables', '5'),
    ('approvals_required', '1') ON CONFLICT (key) DO NOTHING;

-- Runbook runs (version 3): one row per run, one per step, so that `runbook
-- resume` continues where a run stopped without repeating finished steps.
CREATE TABLE IF NOT EXISTS {s}.runbook_runs (
    run_id       bigserial PRIMARY KEY,
    name         text NOT NULL,
    file         text,
    params       jsonb NOT NULL DEFAULT '{{}}',
    definition   jsonb NOT NULL,
    status       text NOT NULL,
    dry_run      boolean NOT NULL DEFAULT false,
    started_by   text NOT NULL DEFAULT session_user,
    started_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at  timestamptz,
    error        text
);
CREATE TABLE IF NOT EXISTS {s}.runbook_steps (
    run_id       bigint NOT NULL REFERENCES {s}.runbook_runs,
    step_no      int NOT NULL,
    step_id      text NOT NULL,
    kind         text NOT NULL,
    status       text NOT NULL,
    started_at   timestamptz,
    finished_at  timestamptz,
    result       jsonb,
    error        text,
    PRIMARY KEY (run_id, step_id)
);
