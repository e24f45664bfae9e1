-- Capture (the trigger source): the generator of the capture functions and
-- triggers, the DDL followers, and the helpers they use.
--
-- This text is composed with psycopg.sql before it runs: every {s} becomes the
-- quoted schema identifier and {s_lit} the schema name as a string literal.
-- Literal braces are doubled.  Everything here is idempotent: `recovery init`
-- runs it on every call (schema.py runs the files in order: tables, capture,
-- guard, approval, grants).

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

-- Journals written by versions before 4 stored non-built-in types as themselves,
-- which pins the type (see storage_type): convert such columns of table tid's journal
-- to their text form, in place, once.  Run by build_capture, and by `recovery init`
-- for every journal, that of a disabled or dropped table too (its history must not
-- be lost to a DROP TYPE ... CASCADE either).  The SET clause fixes the output
-- settings the text forms are written with.
CREATE OR REPLACE FUNCTION {s}.journal_as_text(tid int) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    SET datestyle = 'ISO, YMD' SET intervalstyle = 'postgres' SET extra_float_digits = 3
    SET bytea_output = 'hex' AS $fn$
DECLARE
    jparent  text := 'j_' || tid;
    cur      record;
BEGIN
    IF to_regclass(format('%I.%I', {s_lit}, jparent)) IS NULL THEN
        RETURN;
    END IF;
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
END
$fn$;

-- The pieces of a capture function that both sources' generators use.
-- Target list of a relation's journal INSERT: its columns in its own order (a
-- partition may differ from the parent), mapped by name onto the parent's (tid's)
-- latest journal columns.
CREATE OR REPLACE FUNCTION {s}._target_list(tid int, root oid, rel oid) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT string_agg(quote_ident(col.jcol), ', ' ORDER BY pa.attnum)
    FROM pg_attribute pa
    JOIN pg_attribute ta ON ta.attrelid = root AND ta.attname = pa.attname
                        AND ta.attnum > 0 AND NOT ta.attisdropped
    JOIN LATERAL (SELECT jcol FROM {s}.columns
                  WHERE table_id = tid AND attnum = ta.attnum
                  ORDER BY since_stmt DESC LIMIT 1) col ON true
    WHERE pa.attrelid = rel AND pa.attnum > 0 AND NOT pa.attisdropped
$$;

-- The first statement of a capture function: it checks the table's shape and skips
-- capture (the write still succeeds) when it changed and capture was not rebuilt;
-- `capture status` reports that.  Needed even where the event trigger exists now: it
-- can be dropped or disabled later, and does not fire in replica mode.  The query is
-- shape()'s without the md5 and the sort (an array of the same attnum:type:typmod
-- items read in index order, compared with the one built in): it runs once per
-- captured statement, so it is kept to one index scan of pg_attribute (about half the
-- cost of shape() per call).
CREATE OR REPLACE FUNCTION {s}._shape_guard(rel oid) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT format('IF ARRAY(SELECT attnum || '':'' || atttypid || '':'' || atttypmod '
                  'FROM pg_attribute WHERE attrelid = TG_RELID AND attnum > 0 '
                  'AND NOT attisdropped ORDER BY attnum) IS DISTINCT FROM %L::text[] '
                  'THEN RETURN NULL; END IF;',
                  ARRAY(SELECT pa.attnum || ':' || pa.atttypid || ':' || pa.atttypmod
                        FROM pg_attribute pa WHERE pa.attrelid = rel AND pa.attnum > 0
                        AND NOT pa.attisdropped ORDER BY pa.attnum)::text)
$$;

-- Values of non-built-in types reach the journal as their text form (see
-- storage_type): written with fixed output settings, so that they read back the same
-- in any session.  Only a relation with such a column pays for the extra settings.
CREATE OR REPLACE FUNCTION {s}._text_settings(rel oid) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN EXISTS (
        SELECT 1 FROM pg_attribute pa
        WHERE pa.attrelid = rel AND pa.attnum > 0 AND NOT pa.attisdropped
          AND {s}.storage_type(pa.atttypid, pa.atttypmod) = 'text'
          AND pa.atttypid NOT IN ('text'::regtype, 'varchar'::regtype, 'bpchar'::regtype,
                                  'name'::regtype))
    THEN 'SET datestyle = ''ISO, YMD'' SET intervalstyle = ''postgres'' '
         'SET extra_float_digits = 3 SET bytea_output = ''hex''' ELSE '' END
$$;

-- Makes sure the journal chunk of table tid and the statement chunk for generation g
-- exist: for build_capture, and for the WAL source's drain (which writes a table
-- disabled since, whose chunk prune did not create).
CREATE OR REPLACE FUNCTION {s}.ensure_chunk(tid int, g int) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    IF to_regclass(format('%I.%I', {s_lit}, 'j_' || tid || '_' || g)) IS NULL THEN
        EXECUTE format('CREATE TABLE %I.%I PARTITION OF %I.%I FOR VALUES IN (%s)',
                       {s_lit}, 'j_' || tid || '_' || g, {s_lit}, 'j_' || tid, g);
    END IF;
    IF to_regclass(format('%I.%I', {s_lit}, 'stmt_' || g)) IS NULL THEN
        EXECUTE format('CREATE TABLE %I.%I PARTITION OF %I.stmt FOR VALUES IN (%s)',
                       {s_lit}, 'stmt_' || g, {s_lit}, g);
        EXECUTE format('CREATE INDEX ON %I.%I USING brin (stmt_id)', {s_lit}, 'stmt_' || g);
    END IF;
END
$fn$;

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
    PERFORM {s}.ensure_chunk(tid, gen);

    PERFORM {s}.journal_as_text(tid);

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
        ELSIF cur.type_name <> a.typ AND c.source = 'wal' THEN
            -- The WAL source: the drain may still hold changes made before the retype,
            -- written to the old version when it reaches them; so no version is ever
            -- replaced, and the new one holds values from the statement the drain
            -- gives the first change after this DDL (it sets since_stmt when it reads
            -- this build's shape message; until then no statement id reaches it).
            EXECUTE format('ALTER TABLE %I.%I ADD COLUMN %I %s', {s_lit}, jparent,
                           'c' || a.attnum || '_w' || (SELECT count(*) FROM {s}.columns
                                                       WHERE table_id = tid AND attnum = a.attnum),
                           a.typ);
            INSERT INTO {s}.columns (table_id, attnum, jcol, type_name, since_stmt)
            VALUES (tid, a.attnum, 'c' || a.attnum || '_w' || (SELECT count(*) FROM {s}.columns
                                                               WHERE table_id = tid AND attnum = a.attnum),
                    a.typ, {s}.wal_pending() + (SELECT count(*) FROM {s}.columns
                                                  WHERE table_id = tid AND attnum = a.attnum));
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

    IF c.source = 'wal' THEN
        -- The WAL source has its own hooks (wal.sql); the trigger source's go.
        PERFORM {s}._drop_named_triggers(c.relid, ARRAY['_capture_b', '_capture_i', '_capture_u',
                                                        '_capture_d', '_capture_t']);
        PERFORM {s}._build_wal(tid, jleaf, gen);
        PERFORM {s}._drop_capture_objects(tid, c.relid);
        PERFORM set_config('recovery.building', '', true);
        RETURN;
    END IF;
    PERFORM {s}._drop_named_triggers(c.relid, ARRAY['_wal_who', '_wal_cap', '_wal_t']);

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
        tgt := {s}._target_list(tid, c.relid, rel.oid);
        guard := {s}._shape_guard(rel.oid);
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
        EXECUTE format('CREATE OR REPLACE FUNCTION %I.%I() RETURNS trigger LANGUAGE plpgsql '
                       'SECURITY DEFINER SET search_path = pg_catalog, pg_temp %s AS %L',
                       {s_lit}, fname, {s}._text_settings(rel.oid), body);
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

-- The enabled captures a relation belongs to: its own, or that of a partitioned
-- table it is a partition of (for the event triggers).
CREATE OR REPLACE FUNCTION {s}._captured_of(rel oid) RETURNS TABLE (table_id int)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT c.table_id FROM {s}.captured c
    WHERE c.enabled AND (c.relid = rel
          OR c.relid IN (SELECT relid FROM pg_partition_ancestors(rel)))
$$;

-- Rebuild the capture of table tid after a DDL (tag: its command tag), for the event
-- triggers.  Capture never makes the application's DDL fail: if the rebuild does (a
-- privilege, a limit), it is undone alone (the block is a subtransaction), the table
-- is marked stopped with the reason, its capture function skips capture from now on
-- (its shape check no longer matches), and `capture status` says so until `capture
-- enable` again.
CREATE OR REPLACE FUNCTION {s}._follow(tid int, tag text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    BEGIN
        PERFORM {s}.build_capture(tid);
        INSERT INTO {s}.events (table_id, kind, detail, stmt_hwm)
        VALUES (tid, 'ddl', 'capture rebuilt after ' || tag,
                (SELECT last_value FROM {s}.stmt_seq));
    EXCEPTION WHEN OTHERS THEN
        UPDATE {s}.captured
        SET stopped = format('capture could not follow %s (%s): run `recovery capture enable` again',
                             tag, SQLERRM)
        WHERE table_id = tid;
        INSERT INTO {s}.events (table_id, kind, detail, stmt_hwm)
        VALUES (tid, 'ddl', 'capture stopped after ' || tag || ': ' || SQLERRM,
                (SELECT last_value FROM {s}.stmt_seq));
    END;
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
        FOR t IN SELECT table_id FROM {s}._captured_of(r.objid) LOOP
            PERFORM {s}._follow(t.table_id, tg_tag);
        END LOOP;
    END LOOP;
END
$fn$;

-- Event trigger body for DROP TYPE / DOMAIN / EXTENSION ... CASCADE: a captured
-- table's column dropped with the type changes the table's shape without an ALTER
-- TABLE, so rebuild its capture here (as on_ddl does), or capture would stop there.
-- Like on_ddl, it never makes the DDL fail.
CREATE OR REPLACE FUNCTION {s}.on_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    t record;
BEGIN
    IF current_setting('recovery.building', true) = 'on' THEN
        RETURN;
    END IF;
    FOR t IN
        SELECT DISTINCT c.table_id FROM pg_event_trigger_dropped_objects() d,
             LATERAL {s}._captured_of(d.objid) c
        WHERE d.object_type = 'table column' AND d.classid = 'pg_class'::regclass
    LOOP
        PERFORM {s}._follow(t.table_id, tg_tag);
    END LOOP;
END
$fn$;

-- Event trigger body for ALTER TYPE: when a value of an enum that captured columns
-- use was renamed, rewrite the labels in the journal columns holding that enum (as
-- a value or in an array, directly or through a domain), so that older changes read
-- back as the same value.  (A label inside a composite value is left as it was: an
-- undo reading it says which value no longer exists.)  Like on_ddl, it never makes
-- the DDL fail: an error here is recorded as an event and the journal left as is.
-- Known limits: RENAME VALUE takes no lock against writers, so a change captured by a
-- transaction still open during the rename keeps the old label (its undo then names
-- the value that no longer exists); and the rewrite scans those journal columns in
-- the DDL's transaction.  Translating labels when the journal is read, by the history
-- of each enum value's oid, would remove both (left for the undo engine's rework).
CREATE OR REPLACE FUNCTION {s}.on_type_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    r     record;
    col   record;
    map   jsonb;
BEGIN
    FOR r IN SELECT DISTINCT objid FROM pg_event_trigger_ddl_commands()
             WHERE classid = 'pg_type'::regclass AND objid IS NOT NULL
    LOOP
        BEGIN
            -- Every label that differs from the one remembered, as one map applied in
            -- one pass: renames that were not followed (a b -> a after a a -> tmp) are
            -- then applied together, never one over the result of another.
            SELECT jsonb_object_agg(l.label, e.enumlabel) INTO map
            FROM {s}.enum_labels l JOIN pg_enum e ON e.oid = l.enum_oid
            WHERE l.enumtypid = r.objid AND e.enumlabel <> l.label;
            IF map IS NOT NULL THEN
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
                        EXECUTE format('UPDATE %I.%I SET %I = ARRAY(SELECT coalesce($1 ->> e, e) '
                                       'FROM unnest(%I::text[]) e)::text '
                                       'WHERE %I::text[] && ARRAY(SELECT jsonb_object_keys($1))',
                                       {s_lit}, col.journal, col.jcol, col.jcol, col.jcol)
                        USING map;
                    ELSE
                        EXECUTE format('UPDATE %I.%I SET %I = $1 ->> %I WHERE $1 ? %I',
                                       {s_lit}, col.journal, col.jcol, col.jcol, col.jcol)
                        USING map;
                    END IF;
                END LOOP;
                UPDATE {s}.enum_labels l SET label = e.enumlabel
                FROM pg_enum e WHERE e.oid = l.enum_oid AND l.enumtypid = r.objid
                  AND e.enumlabel <> l.label;
                INSERT INTO {s}.events (kind, detail, stmt_hwm)
                VALUES ('ddl', format('enum values of %s renamed (%s): journal labels rewritten',
                                      r.objid::regtype, map),
                        (SELECT last_value FROM {s}.stmt_seq));
            END IF;
            -- Values added since (ADD VALUE): known from now on.
            INSERT INTO {s}.enum_labels (enum_oid, enumtypid, label)
            SELECT e.oid, e.enumtypid, e.enumlabel FROM pg_enum e
            WHERE e.enumtypid = r.objid
              AND EXISTS (SELECT 1 FROM {s}.enum_labels l WHERE l.enumtypid = r.objid)
            ON CONFLICT (enum_oid) DO UPDATE SET enumtypid = excluded.enumtypid,
                label = excluded.label WHERE {s}.enum_labels.enumtypid <> excluded.enumtypid;
        EXCEPTION WHEN OTHERS THEN
            INSERT INTO {s}.events (kind, detail, stmt_hwm)
            VALUES ('ddl', 'journal labels not rewritten after ' || tg_tag || ': ' || SQLERRM,
                    (SELECT last_value FROM {s}.stmt_seq));
        END;
    END LOOP;
END
$fn$;
