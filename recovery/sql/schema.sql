-- The recovery schema, version 4 (1 + snapshots in 2, approvals and runbooks in 3, journal
-- values of non-built-in types stored as text in 4).
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

-- Attribute shape of a relation: number, type and typmod of every live column.
-- The capture function of a table remembers the shape it was built for and
-- stops (rather than fail the application's write) if it no longer matches.
CREATE OR REPLACE FUNCTION {s}.shape(rel oid) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT md5(coalesce(string_agg(attnum || ':' || atttypid || ':' || atttypmod, ',' ORDER BY attnum), ''))
    FROM pg_attribute WHERE attrelid = rel AND attnum > 0 AND NOT attisdropped
$$;

-- Storage type of a column in the journal.  The journal must never hold a
-- dependency that blocks the application's DDL: a journal column of an enum,
-- composite, range or extension type would make `DROP TYPE` (or DROP EXTENSION)
-- fail, and with CASCADE silently drop that journal column and its history.  So
-- only built-in types (oid below FirstNormalObjectId, 16384) are stored as
-- themselves; any other type is stored as its text form (assignment from any type
-- to text is an I/O conversion, so the capture INSERT needs no cast), and the undo
-- casts it back to the column's current type.  A domain is stored as its base
-- type (text when that is not built-in), so that a later change to the domain's
-- constraints cannot reject journal rows, and DROP DOMAIN is not blocked either.
CREATE OR REPLACE FUNCTION {s}.storage_type(typ oid, typmod int) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH RECURSIVE d(t, m, depth) AS (
        SELECT typ, typmod, 0
        UNION ALL
        SELECT pt.typbasetype, pt.typtypmod, d.depth + 1
        FROM d JOIN pg_type pt ON pt.oid = d.t
        WHERE pt.typtype = 'd' AND d.depth < 20
    )
    SELECT CASE WHEN t >= 16384::oid THEN 'text' ELSE format_type(t, m) END
    FROM d ORDER BY depth DESC LIMIT 1
$$;

-- The enum a column of type typ holds values of: typ itself, the element of an
-- array, either through domains; NULL for any other type.
CREATE OR REPLACE FUNCTION {s}.enum_of(typ oid) RETURNS oid
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH RECURSIVE d(t, depth) AS (
        SELECT typ, 0
        UNION ALL
        SELECT CASE WHEN pt.typtype = 'd' THEN pt.typbasetype ELSE pt.typelem END, d.depth + 1
        FROM d JOIN pg_type pt ON pt.oid = d.t
        WHERE (pt.typtype = 'd' OR (pt.typcategory = 'A' AND pt.typelem <> 0)) AND d.depth < 20
    )
    SELECT d.t FROM d JOIN pg_type pt ON pt.oid = d.t WHERE pt.typtype = 'e' LIMIT 1
$$;

-- Creates the journal chunk for the current generation, brings the journal's
-- columns in line with the table, and (re)generates the capture function and
-- triggers on the table and on every partition of it.
CREATE OR REPLACE FUNCTION {s}.build_capture(tid int) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    SET datestyle = 'ISO, YMD' SET intervalstyle = 'postgres' SET extra_float_digits = 3
    SET bytea_output = 'hex' AS $fn$
DECLARE
    c          {s}.captured;
    gen        int;
    jparent    text := 'j_' || tid;
    jleaf      text;
    a          record;
    cur        record;
    rel        record;
    fname      text;
    tgt        text;
    body       text;
    guard      text;
    textform   boolean;
    hwm        bigint;
    missing    text;
BEGIN
    SELECT * INTO c FROM {s}.captured WHERE table_id = tid;
    IF NOT FOUND OR NOT c.enabled THEN
        RETURN;
    END IF;
    SELECT n.nspname, cl.relname INTO c.schema_name, c.table_name
    FROM pg_class cl JOIN pg_namespace n ON n.oid = cl.relnamespace WHERE cl.oid = c.relid;
    IF NOT FOUND THEN
        UPDATE {s}.captured SET enabled = false, disabled_at = clock_timestamp(),
               stopped = 'table was dropped' WHERE table_id = tid;
        RETURN;
    END IF;
    UPDATE {s}.captured SET schema_name = c.schema_name, table_name = c.table_name, stopped = NULL
    WHERE table_id = tid;
    -- The DDL below (journal tables, ENABLE ALWAYS TRIGGER) fires the event
    -- trigger again; on_ddl skips while this is set, or it would recurse once per
    -- trigger created (and exhaust the stack on a table with many partitions).
    PERFORM set_config('recovery.building', 'on', true);
    gen := (SELECT value::int FROM {s}.meta WHERE key = 'gen');
    jleaf := jparent || '_' || gen;
    -- Highest statement id issued so far: a journal column added now holds the
    -- values of statements from hwm + 1 on.
    hwm := (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {s}.stmt_seq);

    IF to_regclass(format('%I.%I', {s_lit}, jparent)) IS NULL THEN
        EXECUTE format('CREATE TABLE %I.%I (rec_gen int NOT NULL, rec_stmt bigint NOT NULL, '
                       'rec_ord int NOT NULL, rec_img "char" NOT NULL) PARTITION BY LIST (rec_gen)',
                       {s_lit}, jparent);
        EXECUTE format('CREATE INDEX ON %I.%I USING brin (rec_stmt)', {s_lit}, jparent);
    END IF;
    IF to_regclass(format('%I.%I', {s_lit}, jleaf)) IS NULL THEN
        EXECUTE format('CREATE TABLE %I.%I PARTITION OF %I.%I FOR VALUES IN (%s)',
                       {s_lit}, jleaf, {s_lit}, jparent, gen);
    END IF;
    IF to_regclass(format('%I.%I', {s_lit}, 'stmt_' || gen)) IS NULL THEN
        EXECUTE format('CREATE TABLE %I.%I PARTITION OF %I.stmt FOR VALUES IN (%s)',
                       {s_lit}, 'stmt_' || gen, {s_lit}, gen);
        EXECUTE format('CREATE INDEX ON %I.%I USING brin (stmt_id)', {s_lit}, 'stmt_' || gen);
    END IF;

    -- Journals written by versions before 4 stored non-built-in types as
    -- themselves, which pins the type (see storage_type): convert such columns to
    -- their text form, in place, once.  The function's SET clause fixes the output
    -- settings the text forms are written with.
    FOR cur IN
        SELECT col.jcol FROM {s}.columns col
        JOIN pg_attribute ja ON ja.attrelid = format('%I.%I', {s_lit}, jparent)::regclass
                            AND ja.attname = col.jcol AND NOT ja.attisdropped
        WHERE col.table_id = tid AND ja.atttypid >= 16384::oid
    LOOP
        EXECUTE format('ALTER TABLE %I.%I ALTER COLUMN %I TYPE text USING %I::text',
                       {s_lit}, jparent, cur.jcol, cur.jcol);
        UPDATE {s}.columns SET type_name = 'text' WHERE table_id = tid AND jcol = cur.jcol;
    END LOOP;

    -- Journal columns follow the table's live columns, by attribute number.
    FOR a IN
        SELECT att.attnum, {s}.storage_type(att.atttypid, att.atttypmod) AS typ
        FROM pg_attribute att
        WHERE att.attrelid = c.relid AND att.attnum > 0 AND NOT att.attisdropped
        ORDER BY att.attnum
    LOOP
        SELECT * INTO cur FROM {s}.columns
        WHERE table_id = tid AND attnum = a.attnum ORDER BY since_stmt DESC LIMIT 1;
        IF NOT FOUND THEN
            -- A column added to a captured table with a non-volatile default: the
            -- table's existing rows read that value (attmissingval), so journal rows
            -- from before the column existed must read it too, or undoing a DELETE
            -- made before it was added would re-insert NULL.  ADD COLUMN with that
            -- default (then dropped) sets exactly that, without rewriting the journal.
            missing := (SELECT attmissingval::text FROM pg_attribute
                        WHERE attrelid = c.relid AND attnum = a.attnum AND atthasmissing);
            EXECUTE format('ALTER TABLE %I.%I ADD COLUMN IF NOT EXISTS %I %s %s',
                           {s_lit}, jparent, 'c' || a.attnum, a.typ,
                           CASE WHEN missing IS NOT NULL
                                THEN format('DEFAULT ((%L::text[])[1])::%s', missing, a.typ) END);
            IF missing IS NOT NULL THEN
                EXECUTE format('ALTER TABLE %I.%I ALTER COLUMN %I DROP DEFAULT',
                               {s_lit}, jparent, 'c' || a.attnum);
            END IF;
            INSERT INTO {s}.columns (table_id, attnum, jcol, type_name, since_stmt)
            VALUES (tid, a.attnum, 'c' || a.attnum, a.typ, 0);
        ELSIF cur.type_name <> a.typ THEN
            -- Retyped column: keep the old values in their old type, add a new one.
            IF cur.since_stmt > hwm THEN
                -- Retyped again before any statement was captured: that version
                -- holds no value, replace it.
                EXECUTE format('ALTER TABLE %I.%I DROP COLUMN %I', {s_lit}, jparent, cur.jcol);
                DELETE FROM {s}.columns WHERE table_id = tid AND jcol = cur.jcol;
            END IF;
            EXECUTE format('ALTER TABLE %I.%I ADD COLUMN %I %s',
                           {s_lit}, jparent, 'c' || a.attnum || '_' || (hwm + 1), a.typ);
            INSERT INTO {s}.columns (table_id, attnum, jcol, type_name, since_stmt)
            VALUES (tid, a.attnum, 'c' || a.attnum || '_' || (hwm + 1), a.typ, hwm + 1);
        END IF;
    END LOOP;

    -- Remember the labels of the enums its columns use (new ones only: a label
    -- already known is updated by on_type_ddl() when it is renamed).
    INSERT INTO {s}.enum_labels (enum_oid, enumtypid, label)
    SELECT e.oid, e.enumtypid, e.enumlabel FROM pg_enum e
    WHERE e.enumtypid IN (SELECT {s}.enum_of(att.atttypid) FROM pg_attribute att
                          WHERE att.attrelid = c.relid AND att.attnum > 0 AND NOT att.attisdropped)
    ON CONFLICT (enum_oid) DO NOTHING;

    -- One capture function per relation that can be written: the table and,
    -- when partitioned, every partition (a write aimed at a partition fires only
    -- that partition's statement triggers).
    FOR rel IN
        SELECT pc.oid, pc.relkind, n.nspname, pc.relname
        FROM (SELECT c.relid AS relid
              UNION SELECT t.relid FROM pg_partition_tree(c.relid) t WHERE t.relid <> c.relid) r
        JOIN pg_class pc ON pc.oid = r.relid
        JOIN pg_namespace n ON n.oid = pc.relnamespace
        WHERE pc.relkind IN ('r', 'p')
    LOOP
        fname := 'cap_' || tid || '_' || rel.oid;
        -- Target list in the relation's own column order (partitions may differ
        -- from the parent), mapped by name onto the parent's journal columns.
        SELECT string_agg(quote_ident(col.jcol), ', ' ORDER BY pa.attnum) INTO tgt
        FROM pg_attribute pa
        JOIN pg_attribute ta ON ta.attrelid = c.relid AND ta.attname = pa.attname
                            AND ta.attnum > 0 AND NOT ta.attisdropped
        JOIN LATERAL (SELECT jcol FROM {s}.columns
                      WHERE table_id = tid AND attnum = ta.attnum
                      ORDER BY since_stmt DESC LIMIT 1) col ON true
        WHERE pa.attrelid = rel.oid AND pa.attnum > 0 AND NOT pa.attisdropped;

        -- The function checks the table's shape first and skips capture (the write
        -- still succeeds) when it changed and capture was not rebuilt; `capture
        -- status` reports that.  Needed even where the event trigger exists now: it
        -- can be dropped or disabled later, and does not fire in replica mode.  The
        -- query is shape()'s without the md5 and the sort (an array of the same
        -- attnum:type:typmod items read in index order, compared with the one
        -- built in): it runs once per captured statement, so it is kept to one
        -- index scan of pg_attribute (about half the cost of shape() per call).
        guard := format('IF ARRAY(SELECT attnum || '':'' || atttypid || '':'' || atttypmod '
                        'FROM pg_attribute WHERE attrelid = TG_RELID AND attnum > 0 '
                        'AND NOT attisdropped ORDER BY attnum) IS DISTINCT FROM %L::text[] '
                        'THEN RETURN NULL; END IF;',
                        ARRAY(SELECT pa.attnum || ':' || pa.atttypid || ':' || pa.atttypmod
                              FROM pg_attribute pa WHERE pa.attrelid = rel.oid AND pa.attnum > 0
                              AND NOT pa.attisdropped ORDER BY pa.attnum)::text);
        -- Every name the body declares is referenced qualified by its block label
        -- inside SQL statements (cap.s), where a column of the captured table with
        -- the same name (`s` is an ordinary column name: size, score) would
        -- otherwise make the reference ambiguous and every write to the table fail.
        -- No FROM item in the body is named cap.
        body := format($b$
<<cap>>
DECLARE
    s bigint;
    n bigint := 0;
BEGIN
    -- built for shape %2$s
    %9$s
    s := nextval(%3$L);
    -- One statement per captured statement: the journal rows and the statement
    -- row are written by a single executor run (cheap for one-row OLTP writes).
    -- For an UPDATE, PostgreSQL appends each row's old and new version to the two
    -- transition tables together, so their scan order pairs them: row_number()
    -- gives a before-image and its after-image the same rec_ord.
    IF TG_OP = 'UPDATE' THEN
        WITH j AS (
            INSERT INTO %4$s (rec_gen, rec_stmt, rec_ord, rec_img, %5$s)
            SELECT %6$s, cap.s, row_number() OVER (), 'B', r.* FROM rec_old r
            UNION ALL
            SELECT %6$s, cap.s, row_number() OVER (), 'A', r.* FROM rec_new r)
        %11$s FROM (SELECT count(*) AS n FROM rec_old) c WHERE c.n > 0
        RETURNING nrows INTO n;
    ELSIF TG_OP = 'INSERT' THEN
        WITH j AS (
            INSERT INTO %4$s (rec_gen, rec_stmt, rec_ord, rec_img, %5$s)
            SELECT %6$s, cap.s, row_number() OVER (), 'A', r.* FROM rec_new r)
        %11$s FROM (SELECT count(*) AS n FROM rec_new) c WHERE c.n > 0
        RETURNING nrows INTO n;
    ELSIF TG_OP = 'DELETE' THEN
        WITH j AS (
            INSERT INTO %4$s (rec_gen, rec_stmt, rec_ord, rec_img, %5$s)
            SELECT %6$s, cap.s, row_number() OVER (), 'B', r.* FROM rec_old r)
        %11$s FROM (SELECT count(*) AS n FROM rec_old) c WHERE c.n > 0
        RETURNING nrows INTO n;
    ELSE
        EXECUTE format('INSERT INTO %4$s (rec_gen, rec_stmt, rec_ord, rec_img, %5$s) '
                       'SELECT %6$s, $1, row_number() OVER (), ''B'', r.* FROM ONLY %%I.%%I r',
                       TG_TABLE_SCHEMA, TG_TABLE_NAME) USING s;
        GET DIAGNOSTICS n = ROW_COUNT;
        IF n > 0 THEN
            INSERT INTO %7$s (gen, stmt_id, table_id, op, txid, at, db_user, app, tag, depth,
                              nrows)
            VALUES (%6$s, cap.s, %8$s, 'T', txid_current(), clock_timestamp(), session_user,
                    current_setting('application_name', true),
                    nullif(current_setting('recovery.tag', true), ''), pg_trigger_depth(), cap.n);
        END IF;
    END IF;
    -- Blast-radius caps (recovery guard --max-rows, or SET recovery.max_rows): only
    -- a session that set one pays for the check.
    IF coalesce(n, 0) > 0 AND (coalesce(current_setting('recovery.max_rows', true), '') <> ''
            OR coalesce(current_setting('recovery.max_rows_per_table', true), '') <> '') THEN
        PERFORM %1$s.check_cap(%8$s, n);
    END IF;
    RETURN NULL;
END
$b$,
            format('%I', {s_lit}),
            {s}.shape(rel.oid),
            format('%I.stmt_seq', {s_lit}),
            format('%I.%I', {s_lit}, jleaf),
            replace(tgt, '%', '%%'),
            gen,
            format('%I.%I', {s_lit}, 'stmt_' || gen),
            tid,
            guard,
            'recovery.depth_' || rel.oid,
            -- The statement row, the same for INSERT, UPDATE and DELETE.
            format('INSERT INTO %I.%I (gen, stmt_id, table_id, op, txid, at, db_user, app, tag,'
                   ' depth, nrows) SELECT %s, cap.s, %s, left(TG_OP, 1), txid_current(),'
                   ' clock_timestamp(), session_user, current_setting(''application_name'', true),'
                   ' nullif(current_setting(''recovery.tag'', true), ''''),'
                   ' coalesce(nullif(current_setting(%L, true), '''')::int, 1), c.n',
                   {s_lit}, 'stmt_' || gen, gen, tid, 'recovery.depth_' || rel.oid));
        -- Values of non-built-in types reach the journal as their text form (see
        -- storage_type): written with fixed output settings, so that they read back
        -- the same in any session.  Only such tables pay for the extra settings.
        textform := EXISTS (
            SELECT 1 FROM pg_attribute pa
            WHERE pa.attrelid = rel.oid AND pa.attnum > 0 AND NOT pa.attisdropped
              AND {s}.storage_type(pa.atttypid, pa.atttypmod) = 'text'
              AND pa.atttypid NOT IN ('text'::regtype, 'varchar'::regtype, 'bpchar'::regtype,
                                      'name'::regtype));
        EXECUTE format('CREATE OR REPLACE FUNCTION %I.%I() RETURNS trigger LANGUAGE plpgsql '
                       'SECURITY DEFINER SET search_path = pg_catalog, pg_temp %s AS %L',
                       {s_lit}, fname,
                       CASE WHEN textform THEN
                           'SET datestyle = ''ISO, YMD'' SET intervalstyle = ''postgres'' '
                           'SET extra_float_digits = 3 SET bytea_output = ''hex''' ELSE '' END,
                       body);
        EXECUTE format('REVOKE ALL ON FUNCTION %I.%I() FROM PUBLIC', {s_lit}, fname);

        -- Before the statement, pg_trigger_depth() tells a statement the application
        -- ran (1) from one a trigger ran, such as a foreign-key cascade (2 or more);
        -- the AFTER trigger cannot tell them apart, as cascades fire it at the outer
        -- level.  The depth is kept per relation for the rest of the transaction.
        -- This runs on every statement, so it is as light as a function can be: no
        -- SECURITY DEFINER, no SET clause (both cost a GUC switch per call); every
        -- name in it is schema-qualified, so no search_path can redirect it, and it
        -- only sets a setting of the session's own.
        EXECUTE format('CREATE OR REPLACE FUNCTION %I.%I() RETURNS trigger LANGUAGE plpgsql AS %L',
                       {s_lit}, fname || '_b',
                       format('BEGIN PERFORM pg_catalog.set_config(%L, '
                              'pg_catalog.pg_trigger_depth()::pg_catalog.text, true); '
                              'RETURN NULL; END', 'recovery.depth_' || rel.oid));
        EXECUTE format('REVOKE ALL ON FUNCTION %I.%I() FROM PUBLIC', {s_lit}, fname || '_b');
        PERFORM {s}._ensure_trigger(rel.oid, {s_lit} || '_capture_b',
            'BEFORE INSERT OR UPDATE OR DELETE', '', fname || '_b');
        PERFORM {s}._ensure_trigger(rel.oid, {s_lit} || '_capture_i',
            'AFTER INSERT', 'REFERENCING NEW TABLE AS rec_new', fname);
        PERFORM {s}._ensure_trigger(rel.oid, {s_lit} || '_capture_u',
            'AFTER UPDATE', 'REFERENCING OLD TABLE AS rec_old NEW TABLE AS rec_new', fname);
        PERFORM {s}._ensure_trigger(rel.oid, {s_lit} || '_capture_d',
            'AFTER DELETE', 'REFERENCING OLD TABLE AS rec_old', fname);
        IF rel.relkind = 'r' THEN
            -- TRUNCATE of a parent fires the trigger of every leaf; only leaves copy rows.
            PERFORM {s}._ensure_trigger(rel.oid, {s_lit} || '_capture_t',
                'BEFORE TRUNCATE', '', fname);
        END IF;
    END LOOP;

    -- A partition detached since the last build keeps its triggers: remove them,
    -- or its writes would go on being journaled (and undone) as the table's.
    PERFORM {s}._drop_capture_objects(tid, c.relid);
    PERFORM set_config('recovery.building', '', true);
END
$fn$;

CREATE OR REPLACE FUNCTION {s}._ensure_trigger(rel oid, tname text, timing text, referencing text, fname text)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = rel AND tgname = tname) THEN
        EXECUTE format('CREATE TRIGGER %I %s ON %s %s FOR EACH STATEMENT EXECUTE FUNCTION %I.%I()',
                       tname, timing, rel::regclass, referencing, {s_lit}, fname);
        -- ALWAYS: capture also what a session in replica mode writes.
        EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', rel::regclass, tname);
    ELSIF EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = rel AND tgname = tname
                  AND tgenabled <> 'A') THEN
        -- Disabled (e.g. by DISABLE TRIGGER ALL) or left at ENABLE: capture again.
        EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', rel::regclass, tname);
    END IF;
END
$fn$;

-- Counts the rows this transaction wrote (in all, and to table tid) and raises when
-- a cap set by the session (recovery.max_rows, recovery.max_rows_per_table =
-- 'schema.table=N,table=N') is exceeded: the statement fails, which aborts the
-- writing transaction unless it catches the error with a savepoint.  The counts live in session settings keyed by the
-- transaction id (a setting made LOCAL inside a function with a SET clause would
-- not outlive the call), so each transaction starts from zero.
CREATE OR REPLACE FUNCTION {s}.check_cap(tid int, n bigint) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    cap     text := nullif(current_setting('recovery.max_rows', true), '');
    per     text := nullif(current_setting('recovery.max_rows_per_table', true), '');
    xid     text := txid_current()::text;
    total   bigint;
    item    text;
    tname   text;
    bare    text;
    tcap    bigint;
BEGIN
    IF cap IS NOT NULL THEN
        total := {s}._count_rows('recovery.rows_written', xid, n);
        IF total > cap::bigint THEN
            RAISE EXCEPTION 'recovery: blast-radius cap hit: this transaction wrote % rows, more than recovery.max_rows = %; the statement fails, and its transaction is rolled back unless it catches the error (a savepoint keeps what came before it)', total, cap
                USING ERRCODE = 'RC001',
                      HINT = 'if the change really must touch more rows, raise the cap (recovery guard --max-rows N)';
        END IF;
    END IF;
    IF per IS NOT NULL THEN
        SELECT schema_name || '.' || table_name, table_name INTO tname, bare
        FROM {s}.captured WHERE table_id = tid;
        FOREACH item IN ARRAY string_to_array(per, ',') LOOP
            IF btrim(split_part(item, '=', 1)) IN (tname, bare) THEN
                tcap := btrim(split_part(item, '=', 2))::bigint;
                total := {s}._count_rows('recovery.rows_written_' || tid, xid, n);
                IF total > tcap THEN
                    RAISE EXCEPTION 'recovery: blast-radius cap hit: this transaction wrote % rows to %, more than its cap of % (recovery.max_rows_per_table); the statement fails, and its transaction is rolled back unless it catches the error (a savepoint keeps what came before it)', total, tname, tcap
                        USING ERRCODE = 'RC001',
                              HINT = 'if the change really must touch more rows, raise the cap (recovery guard --max-rows-per-table TABLE=N)';
                END IF;
                EXIT;
            END IF;
        END LOOP;
    END IF;
END
$fn$;

CREATE OR REPLACE FUNCTION {s}._count_rows(setting text, xid text, n bigint) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    prev  text := coalesce(current_setting(setting, true), '');
    total bigint := n;
BEGIN
    IF split_part(prev, ':', 1) = xid THEN
        total := total + split_part(prev, ':', 2)::bigint;
    END IF;
    PERFORM set_config(setting, xid || ':' || total, false);
    RETURN total;
END
$fn$;

-- Removes the capture triggers of capture id tid from every relation outside the
-- partition tree of `keep` (from all of them when keep is NULL), then the capture
-- functions no trigger uses any more.
CREATE OR REPLACE FUNCTION {s}._drop_capture_objects(tid int, keep oid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT tg.tgrelid, tg.tgname
        FROM pg_trigger tg JOIN pg_proc p ON p.oid = tg.tgfoid
        JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = {s_lit} AND p.proname LIKE 'cap\_' || tid || '\_%'
          AND (keep IS NULL OR (tg.tgrelid <> keep
               AND tg.tgrelid NOT IN (SELECT x.relid FROM pg_partition_tree(keep) x)))
    LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', t.tgname, t.tgrelid::regclass);
    END LOOP;
    FOR t IN
        SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = {s_lit} AND p.proname LIKE 'cap\_' || tid || '\_%'
          AND NOT EXISTS (SELECT 1 FROM pg_trigger tg WHERE tg.tgfoid = p.oid)
    LOOP
        EXECUTE format('DROP FUNCTION IF EXISTS %I.%I()', {s_lit}, t.proname);
    END LOOP;
END
$fn$;

-- Removes capture triggers and functions from a table and its partitions.
CREATE OR REPLACE FUNCTION {s}.drop_capture(tid int) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    PERFORM {s}._drop_capture_objects(tid, NULL);
END
$fn$;

-- Event trigger body: after DDL on a captured table (or on a partition of one),
-- rebuild its capture so that it follows the new shape.
CREATE OR REPLACE FUNCTION {s}.on_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    r record;
    t record;
BEGIN
    IF current_setting('recovery.building', true) = 'on' THEN
        RETURN;  -- DDL that build_capture itself runs
    END IF;
    FOR r IN SELECT DISTINCT objid FROM pg_event_trigger_ddl_commands()
             WHERE classid = 'pg_class'::regclass AND objid IS NOT NULL
    LOOP
        FOR t IN
            SELECT c.table_id FROM {s}.captured c
            WHERE c.enabled AND (c.relid = r.objid
                  OR c.relid IN (SELECT relid FROM pg_partition_ancestors(r.objid)))
        LOOP
            -- Capture never makes the application's DDL fail: if the rebuild does
            -- (a privilege, a limit), it is undone alone (the block is a
            -- subtransaction), the table is marked stopped with the reason, its
            -- capture function skips capture from now on (its shape check no longer
            -- matches), and `capture status` says so until `capture enable` again.
            BEGIN
                PERFORM {s}.build_capture(t.table_id);
                INSERT INTO {s}.events (table_id, kind, detail, stmt_hwm)
                VALUES (t.table_id, 'ddl', 'capture rebuilt after ' || tg_tag,
                        (SELECT last_value FROM {s}.stmt_seq));
            EXCEPTION WHEN OTHERS THEN
                UPDATE {s}.captured
                SET stopped = format('capture could not follow %s (%s): run `recovery capture enable` again',
                                     tg_tag, SQLERRM)
                WHERE table_id = t.table_id;
                INSERT INTO {s}.events (table_id, kind, detail, stmt_hwm)
                VALUES (t.table_id, 'ddl', 'capture stopped after ' || tg_tag || ': ' || SQLERRM,
                        (SELECT last_value FROM {s}.stmt_seq));
            END;
        END LOOP;
    END LOOP;
END
$fn$;

-- Event trigger body for ALTER TYPE: when a value of an enum that captured columns
-- use was renamed, rewrite the labels in the journal columns holding that enum (as
-- a value or in an array, directly or through a domain), so that older changes read
-- back as the same value.  (A label inside a composite value is left as it was: an
-- undo reading it says which value no longer exists.)  Like on_ddl, it never makes
-- the DDL fail: an error here is recorded as an event and the journal left as is.
CREATE OR REPLACE FUNCTION {s}.on_type_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    r    record;
    x    record;
    col  record;
BEGIN
    FOR r IN SELECT DISTINCT objid FROM pg_event_trigger_ddl_commands()
             WHERE classid = 'pg_type'::regclass AND objid IS NOT NULL
    LOOP
        BEGIN
            FOR x IN
                SELECT l.enum_oid, l.label AS old_label, e.enumlabel AS new_label
                FROM {s}.enum_labels l JOIN pg_enum e ON e.oid = l.enum_oid
                WHERE l.enumtypid = r.objid AND e.enumlabel <> l.label
            LOOP
                FOR col IN
                    SELECT 'j_' || c.table_id AS journal, v.jcol, pt.typcategory = 'A' AS arr
                    FROM {s}.captured c
                    JOIN pg_attribute a ON a.attrelid = c.relid AND a.attnum > 0
                                       AND NOT a.attisdropped
                    JOIN pg_type pt ON pt.oid = a.atttypid
                    JOIN LATERAL (SELECT jcol, type_name FROM {s}.columns
                                  WHERE table_id = c.table_id AND attnum = a.attnum
                                  ORDER BY since_stmt DESC LIMIT 1) v ON v.type_name = 'text'
                    WHERE {s}.enum_of(a.atttypid) = r.objid
                LOOP
                    IF col.arr THEN
                        EXECUTE format('UPDATE %I.%I SET %I = array_replace(%I::text[], $1, $2)::text '
                                       'WHERE $1 = ANY (%I::text[])',
                                       {s_lit}, col.journal, col.jcol, col.jcol, col.jcol)
                        USING x.old_label, x.new_label;
                    ELSE
                        EXECUTE format('UPDATE %I.%I SET %I = $2 WHERE %I = $1',
                                       {s_lit}, col.journal, col.jcol, col.jcol)
                        USING x.old_label, x.new_label;
                    END IF;
                END LOOP;
                UPDATE {s}.enum_labels SET label = x.new_label WHERE enum_oid = x.enum_oid;
                INSERT INTO {s}.events (kind, detail, stmt_hwm)
                VALUES ('ddl', format('enum value %s of %s renamed to %s: journal labels rewritten',
                                      x.old_label, r.objid::regtype, x.new_label),
                        (SELECT last_value FROM {s}.stmt_seq));
            END LOOP;
            -- Values added since (ADD VALUE): known from now on.
            INSERT INTO {s}.enum_labels (enum_oid, enumtypid, label)
            SELECT e.oid, e.enumtypid, e.enumlabel FROM pg_enum e
            WHERE e.enumtypid = r.objid
              AND EXISTS (SELECT 1 FROM {s}.enum_labels l WHERE l.enumtypid = r.objid)
            ON CONFLICT (enum_oid) DO NOTHING;
        EXCEPTION WHEN OTHERS THEN
            INSERT INTO {s}.events (kind, detail, stmt_hwm)
            VALUES ('ddl', 'journal labels not rewritten after ' || tg_tag || ': ' || SQLERRM,
                    (SELECT last_value FROM {s}.stmt_seq));
        END;
    END LOOP;
END
$fn$;

-- Two-person approval (version 3): the only way to write the approval tables.
-- SECURITY DEFINER, so a role granted EXECUTE on them and nothing on the tables can
-- request, approve, refuse or consume an approval, but never forge one: each records
-- session_user (the login role, which SET ROLE does not change) and the time.
-- A request is for one exact plan, by its SHA-256 (plan_hash); an approval is for
-- that hash; authorize() consumes the request in the transaction that applies the
-- operation, so an apply that fails leaves it unconsumed.  For a refused request,
-- executed_at and executed_by say when and by whom it was refused.
-- Errors: SQLSTATE RC002 approval still needed (the CLI exits 3), RC003 no such
-- request, RC004 not possible on this request.
CREATE OR REPLACE FUNCTION {s}.request_approval(kind text, plan jsonb, plan_hash text,
                                                nrows bigint, ntables int)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    id bigint;
BEGIN
    IF kind IS NULL OR plan IS NULL OR plan_hash IS NULL OR nrows IS NULL OR ntables IS NULL THEN
        RAISE EXCEPTION 'recovery: an approval request needs a kind, a plan, its hash and its counts'
            USING ERRCODE = 'RC004';
    END IF;
    -- The same plan asked twice by the same user is one request, also when two
    -- sessions ask at once.
    PERFORM pg_advisory_xact_lock(hashtext('recovery-approval:' || request_approval.plan_hash));
    SELECT r.req_id INTO id FROM {s}.approval_requests r
    WHERE r.kind = request_approval.kind AND r.plan_hash = request_approval.plan_hash
      AND r.requested_by = session_user::text AND r.status IN ('pending', 'approved')
    ORDER BY r.req_id LIMIT 1;
    IF id IS NOT NULL THEN
        RETURN id;
    END IF;
    INSERT INTO {s}.approval_requests (kind, plan, plan_hash, rows, tables, required,
                                       requested_by)
    VALUES (request_approval.kind, request_approval.plan, request_approval.plan_hash, nrows,
            ntables, greatest(coalesce((SELECT m.value::int FROM {s}.meta m
                                        WHERE m.key = 'approvals_required'), 1), 1),
            session_user)
    RETURNING req_id INTO id;
    RETURN id;
END
$fn$;

-- Request req, locked for the rest of the calling transaction; RC003 when there is
-- none.  For approve(), refuse_approval() and authorize(), which run as the owner
-- (EXECUTE is revoked from PUBLIC with every function of the schema).
CREATE OR REPLACE FUNCTION {s}._locked_request(req bigint) RETURNS {s}.approval_requests
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    r  {s}.approval_requests;
BEGIN
    SELECT * INTO r FROM {s}.approval_requests x WHERE x.req_id = req FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'recovery: no approval request %', req USING ERRCODE = 'RC003',
            HINT = '`recovery approve --list` lists the open ones';
    END IF;
    RETURN r;
END
$fn$;

-- Records session_user's approval of request req for the plan whose hash the approver
-- saw; returns the request's status ('approved' once enough users other than the
-- requester approved it).  Approving twice is a no-op.
CREATE OR REPLACE FUNCTION {s}.approve(req bigint, hash text) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    r  {s}.approval_requests;
    n  bigint;
BEGIN
    r := {s}._locked_request(req);
    IF r.status NOT IN ('pending', 'approved') THEN
        RAISE EXCEPTION 'recovery: approval request % is % already: it can no longer be approved',
            req, r.status USING ERRCODE = 'RC004';
    END IF;
    IF hash IS DISTINCT FROM r.plan_hash THEN
        RAISE EXCEPTION 'recovery: the plan changed: approval request % is for plan %, not %',
            req, left(r.plan_hash, 12), left(coalesce(hash, '(none)'), 12) USING ERRCODE = 'RC004';
    END IF;
    IF session_user::text = r.requested_by THEN
        RAISE EXCEPTION 'recovery: approval request % was requested by %: an approval by the user who requested the operation does not count',
            req, r.requested_by USING ERRCODE = 'RC002',
            HINT = 'another database user (their own login role) must approve it';
    END IF;
    INSERT INTO {s}.approvals (req_id, approved_by, plan_hash) VALUES (req, session_user, hash)
    ON CONFLICT (req_id, approved_by) DO NOTHING;
    SELECT count(*) INTO n FROM {s}.approvals a
    WHERE a.req_id = req AND a.plan_hash = r.plan_hash AND a.approved_by <> r.requested_by;
    IF r.status = 'pending' AND n >= r.required THEN
        UPDATE {s}.approval_requests x SET status = 'approved' WHERE x.req_id = req;
        r.status := 'approved';
    END IF;
    RETURN r.status;
END
$fn$;

-- Closes request req without running it (by the requester, or by an approver).
CREATE OR REPLACE FUNCTION {s}.refuse_approval(req bigint) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    r  {s}.approval_requests;
BEGIN
    r := {s}._locked_request(req);
    IF r.status NOT IN ('pending', 'approved') THEN
        RAISE EXCEPTION 'recovery: approval request % is % already: it can no longer be refused',
            req, r.status USING ERRCODE = 'RC004';
    END IF;
    UPDATE {s}.approval_requests x SET status = 'refused', executed_at = clock_timestamp(),
           executed_by = session_user
    WHERE x.req_id = req;
    RETURN 'refused';
END
$fn$;

-- Called by the transaction that applies the operation, before it writes: raises
-- unless request req is approved, for this very plan, by enough users other than the
-- requester and the user running it; then marks it executed (one use).
CREATE OR REPLACE FUNCTION {s}.authorize(req bigint, hash text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    r  {s}.approval_requests;
    n  bigint;
BEGIN
    r := {s}._locked_request(req);
    IF r.status = 'executed' THEN
        RAISE EXCEPTION 'recovery: approval request % was used already (by % at %): an approval is good for one run',
            req, r.executed_by, r.executed_at USING ERRCODE = 'RC002';
    END IF;
    IF r.status = 'refused' THEN
        RAISE EXCEPTION 'recovery: approval request % was refused (by % at %)',
            req, r.executed_by, r.executed_at USING ERRCODE = 'RC002';
    END IF;
    IF hash IS DISTINCT FROM r.plan_hash THEN
        RAISE EXCEPTION 'recovery: the plan changed since it was approved: it needs a new approval (request % is for plan %, this is plan %)',
            req, left(r.plan_hash, 12), left(coalesce(hash, '(none)'), 12) USING ERRCODE = 'RC002';
    END IF;
    IF r.status <> 'approved' THEN
        RAISE EXCEPTION 'recovery: approval request % is %: it is not approved yet', req, r.status
            USING ERRCODE = 'RC002';
    END IF;
    SELECT count(*) INTO n FROM {s}.approvals a
    WHERE a.req_id = req AND a.plan_hash = r.plan_hash
      AND a.approved_by NOT IN (r.requested_by, session_user::text);
    IF n < r.required THEN
        RAISE EXCEPTION 'recovery: approval request % has % approval(s) by users other than its requester and %, % needed: an approval by the user who runs the operation does not count',
            req, n, session_user, r.required USING ERRCODE = 'RC002';
    END IF;
    UPDATE {s}.approval_requests x SET status = 'executed', executed_at = clock_timestamp(),
           executed_by = session_user
    WHERE x.req_id = req;
END
$fn$;

REVOKE ALL ON ALL TABLES IN SCHEMA {s} FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA {s} FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA {s} FROM PUBLIC;
-- Read-only helpers that the viewing commands (diff, capture status) call: harmless,
-- and unreachable without USAGE on the schema, which only granted roles have.
GRANT EXECUTE ON FUNCTION {s}.shape(oid), {s}.storage_type(oid, int) TO PUBLIC;
