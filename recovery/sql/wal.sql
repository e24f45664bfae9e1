-- Capture, the WAL source (schema version 5; docs/WAL_CAPTURE.md): the hooks left on
-- the write path of a table captured from the WAL, its publication and replica
-- identity, and the server side of the drain (recovery/capture/wal.py).
--
-- This text is composed with psycopg.sql before it runs: every {s} becomes the
-- quoted schema identifier and {s_lit} the schema name as a string literal.
-- Literal braces are doubled.  Everything here is idempotent.

-- The slot this database and recovery schema drain: slots are cluster-wide, so the
-- name is made from the database's oid (a database cloned from a template must not
-- take its template's slot) and the schema.  Computed, never stored.
CREATE OR REPLACE FUNCTION {s}.wal_slot() RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT 'recovery_' || d.oid || '_' || left(md5({s_lit}), 8)
    FROM pg_database d WHERE d.datname = current_database()
$$;

-- The key the hooks put in every message they emit: pg_logical_emit_message is open to
-- every role, so the drain believes a message only with this key in it (a message
-- without it is ignored and recorded).  Readable by the schema's owner only (the hooks
-- and the drain run as that owner).
CREATE TABLE IF NOT EXISTS {s}.wal_key (k text NOT NULL);
INSERT INTO {s}.wal_key (k)
    SELECT replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '')  -- strong random
    WHERE NOT EXISTS (SELECT 1 FROM {s}.wal_key);

-- One drain, slot drop or WAL enable at a time per recovery schema (transaction-level).
CREATE OR REPLACE FUNCTION {s}.wal_lock() RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_advisory_xact_lock(1380144727, hashtext({s_lit}))
$$;

-- Whether this session holds that lock already (a drain earlier in its transaction).
CREATE OR REPLACE FUNCTION {s}.wal_lock_held() RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted
                   AND pid = pg_backend_pid() AND classid = 1380144727::oid
                   AND objid::bigint = (hashtext({s_lit})::bigint + 4294967296) % 4294967296
                   AND objsubid = 2)
$$;

-- The publication over the WAL-captured tables (publications belong to a database).
CREATE OR REPLACE FUNCTION {s}.wal_publication() RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT 'recovery_' || left(md5({s_lit}), 8)
$$;

-- Creates the publication when it is missing.  It must exist before the slot: pgoutput
-- reads the publication as of each change it decodes, and fails on a change made
-- before the publication existed.
CREATE OR REPLACE FUNCTION {s}.wal_prepare() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = {s}.wal_publication()) THEN
        EXECUTE format('CREATE PUBLICATION %I WITH (publish = %L, publish_via_partition_root = true)',
                       {s}.wal_publication(), 'insert, update, delete');
    END IF;
END
$fn$;

-- Flushes the WAL up to here when its transaction commits with synchronous_commit on
-- (a transaction that wrote no WAL is not flushed; this writes a message).
-- Returns the end of that message: a record boundary.
DROP FUNCTION IF EXISTS {s}.wal_flush();
CREATE FUNCTION {s}.wal_flush() RETURNS pg_lsn
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_logical_emit_message(true, 'recovery.flush', '')
$$;

-- since_stmt of a journal column version the drain has not reached yet: above every
-- statement id, so no reader picks it until the drain sets the real one.
CREATE OR REPLACE FUNCTION {s}.wal_pending() RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$ SELECT 9000000000000000000::bigint $$;

-- The changes waiting in the slot, up to an LSN, as pgoutput messages (protocol 1,
-- text values).  The SET clause fixes the text forms the values are written with
-- (those the trigger source writes with, see storage_type), so that the journal
-- reads them back the same in any session.  SECURITY DEFINER: reading the slot needs
-- the REPLICATION attribute, which the schema's owner has and an operator need not.
CREATE OR REPLACE FUNCTION {s}.wal_peek(upto pg_lsn) RETURNS TABLE (data bytea)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    SET datestyle = 'ISO, YMD' SET intervalstyle = 'postgres' SET extra_float_digits = 3
    SET bytea_output = 'hex' AS $$
    SELECT p.data FROM pg_logical_slot_peek_binary_changes(
        {s}.wal_slot(), upto, NULL, VARIADIC ARRAY['proto_version', '1',
        'publication_names', {s}.wal_publication(), 'messages', 'true']
        || CASE WHEN current_setting('server_version_num')::int >= 160000
                     AND NOT EXISTS (SELECT 1 FROM pg_replication_origin
                                     WHERE roname <> {s}.wal_slot())
                THEN ARRAY['origin', 'none'] ELSE ARRAY[]::text[] END) p
$$;

-- The drain's own writes (the journal rows it copies in) are WAL the slot must read
-- past.  From PostgreSQL 16 pgoutput skips a change that has a replication origin
-- before decoding it (origin = none above), so the drain marks its session with one
-- while it writes: the next drain does not decode the previous one's journal rows.
-- True when the session has the origin; false where it cannot (PostgreSQL 15, or an
-- owner that may not use origins): the drain then works the same, only slower.  Where
-- any other replication origin exists (a subscription applies changes here), every
-- origin's changes are read (origin = none would drop what the subscription applied,
-- which capture must see), and the drain's own rows are read past as on 15.
CREATE OR REPLACE FUNCTION {s}.wal_origin_begin() RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    IF current_setting('server_version_num')::int < 160000 THEN
        RETURN false;
    END IF;
    IF pg_replication_origin_oid({s}.wal_slot()) IS NULL THEN
        PERFORM pg_replication_origin_create({s}.wal_slot());
    END IF;
    IF NOT pg_replication_origin_session_is_setup() THEN
        PERFORM pg_replication_origin_session_setup({s}.wal_slot());
    END IF;
    RETURN true;
EXCEPTION WHEN OTHERS THEN
    RETURN false;
END
$fn$;

CREATE OR REPLACE FUNCTION {s}.wal_origin_end() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    IF pg_replication_origin_session_is_setup() THEN
        PERFORM pg_replication_origin_session_reset();
    END IF;
END
$fn$;

-- Drops the triggers named <schema><suffix> from a table and its partitions.
CREATE OR REPLACE FUNCTION {s}._drop_named_triggers(root oid, suffixes text[]) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT tg.tgrelid, tg.tgname FROM pg_trigger tg
        WHERE tg.tgrelid IN (SELECT root UNION SELECT relid FROM pg_partition_tree(root))
          AND tg.tgname IN (SELECT {s_lit} || x FROM unnest(suffixes) x)
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', t.tgname, t.tgrelid::regclass);
    END LOOP;
END
$fn$;

CREATE OR REPLACE FUNCTION {s}._ensure_wal_trigger(rel oid, tname text, timing text, tail text,
                                                   fname text)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = rel AND tgname = tname) THEN
        EXECUTE format('CREATE TRIGGER %I %s ON %s %s EXECUTE FUNCTION %I.%I()',
                       tname, timing, rel::regclass, tail, {s_lit}, fname);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = rel AND tgname = tname
                   AND tgenabled = 'A') THEN
        -- ALWAYS: also what a session in replica mode writes.
        EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', rel::regclass, tname);
    END IF;
END
$fn$;

-- The replica identity of a relation as _build_wal remembers it.
CREATE OR REPLACE FUNCTION {s}._identity_of(rel oid) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN c.relreplident = 'i' THEN
                'i:' || coalesce((SELECT quote_ident(ic.relname) FROM pg_index i
                                  JOIN pg_class ic ON ic.oid = i.indexrelid
                                  WHERE i.indrelid = rel AND i.indisreplident), '')
           ELSE c.relreplident::text END
    FROM pg_class c WHERE c.oid = rel
$$;

-- The WAL source's part of build_capture(tid): the table in the publication, every
-- relation of it at REPLICA IDENTITY FULL (the old row then travels in the WAL whole),
-- the hooks, and the shape message that tells the drain which journal column each of
-- pgoutput's columns goes to from this point of the stream on.
--   who:  a BEFORE ... FOR EACH STATEMENT trigger whose WHEN is false once the
--         transaction said who it is (and under which tag): it emits one
--         transactional message (user, application, tag, trigger depth) per
--         transaction and tag.  A statement run by a trigger (a foreign-key cascade)
--         says so too, and the statement after it again: the drain journals the
--         cascaded changes at their depth, as the trigger source does.
--   cap:  an AFTER ... FOR EACH ROW trigger whose WHEN is true only in a session that
--         set a blast-radius cap: others pay one expression per row, nothing queued.
--   truncate: TRUNCATE's rows are not in the WAL: a BEFORE TRUNCATE trigger copies them
--         into the journal under a provisional (negative) statement id and emits a
--         message; the drain gives them their id in commit order.
CREATE OR REPLACE FUNCTION {s}._build_wal(tid int, jleaf text, gen int) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    SET datestyle = 'ISO, YMD' SET intervalstyle = 'postgres' SET extra_float_digits = 3
    SET bytea_output = 'hex' AS $fn$
DECLARE
    c        {s}.captured;
    pub      text := {s}.wal_publication();
    prev     jsonb;
    rel      record;
    tgt      text;
    guard    text;
    shape    jsonb;
BEGIN
    SELECT * INTO c FROM {s}.captured WHERE table_id = tid;
    -- Serialised with a drain that may drop the slot (the last table disabled): a table
    -- is never published to a slot that is going away.
    PERFORM {s}.wal_lock();
    IF NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = {s}.wal_slot()) THEN
        -- (capture enable makes the slot first; this is a slot dropped meanwhile)
        UPDATE {s}.captured SET stopped = format('replication slot %s is missing: run '
            '`recovery capture enable --source wal` to capture again', {s}.wal_slot())
        WHERE table_id = tid;
        RETURN;
    END IF;
    PERFORM {s}.wal_prepare();
    IF NOT EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                   WHERE p.pubname = pub AND pr.prrelid = c.relid) THEN
        EXECUTE format('ALTER PUBLICATION %I ADD TABLE %s', pub, c.relid::regclass);
    END IF;
    prev := coalesce(c.prev_identity, '{{}}'::jsonb);

    -- The who hook's function: SECURITY DEFINER (emitting a message needs a right the
    -- application's role may not have) but no SET clause, which would undo the
    -- set_config at the function's exit; so every name in it is qualified, operators
    -- included, and no search_path can redirect it.
    -- Emitting fails when wal_level was lowered since (a restart): that must never fail
    -- the application's write, so it is checked first.  (Not an exception block: the
    -- message would then belong to a subtransaction, which the decoder puts after the
    -- first row the statement changed.)
    EXECUTE format('CREATE OR REPLACE FUNCTION %I.%I() RETURNS trigger LANGUAGE plpgsql '
                   'SECURITY DEFINER AS %L', {s_lit}, 'cap_' || tid || '_who',
        'BEGIN IF pg_catalog.current_setting(''wal_level'') OPERATOR(pg_catalog.=) ''logical'' THEN '
        'PERFORM pg_catalog.pg_logical_emit_message(true, ' || quote_literal('recovery.who:' || {s_lit}) || ', '
        'pg_catalog.json_build_array(SESSION_USER, pg_catalog.current_setting(''application_name'', true), '
        'pg_catalog.current_setting(''recovery.tag'', true), pg_catalog.pg_trigger_depth(), '
        || tid || ', (SELECT k FROM ' || format('%I', {s_lit}) || '.wal_key))::pg_catalog.text); '
        'END IF; '
        'PERFORM pg_catalog.set_config(''recovery.said'', CASE WHEN pg_catalog.pg_trigger_depth() '
        'OPERATOR(pg_catalog.>) 1 THEN ''cascade'' ELSE pg_catalog.concat(''='', '
        'pg_catalog.current_setting(''recovery.tag'', true)) END, true); RETURN NULL; END');
    EXECUTE format('REVOKE ALL ON FUNCTION %I.%I() FROM PUBLIC', {s_lit}, 'cap_' || tid || '_who');
    EXECUTE format('CREATE OR REPLACE FUNCTION %I.%I() RETURNS trigger LANGUAGE plpgsql '
                   'SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS %L',
                   {s_lit}, 'cap_' || tid || '_cap',
                   format('BEGIN PERFORM %I.check_cap(%s, 1); RETURN NULL; END', {s_lit}, tid));
    EXECUTE format('REVOKE ALL ON FUNCTION %I.%I() FROM PUBLIC', {s_lit}, 'cap_' || tid || '_cap');

    FOR rel IN
        SELECT pc.oid, pc.relkind
        FROM (SELECT c.relid AS relid
              UNION SELECT t.relid FROM pg_partition_tree(c.relid) t WHERE t.relid <> c.relid) r
        JOIN pg_class pc ON pc.oid = r.relid
        WHERE pc.relkind IN ('r', 'p')
    LOOP
        IF (SELECT relreplident FROM pg_class WHERE oid = rel.oid) <> 'f' THEN
            IF NOT prev ? rel.oid::text THEN
                prev := prev || jsonb_build_object(rel.oid::text, {s}._identity_of(rel.oid));
            END IF;
            EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', rel.oid::regclass);
        END IF;
        PERFORM {s}._ensure_wal_trigger(rel.oid, {s_lit} || '_wal_who',
            'BEFORE INSERT OR UPDATE OR DELETE',
            'FOR EACH STATEMENT WHEN (pg_catalog.current_setting(''recovery.said'', true) IS DISTINCT '
            'FROM pg_catalog.concat(''='', pg_catalog.current_setting(''recovery.tag'', true)) '
            'OR pg_catalog.pg_trigger_depth() > 0)',
            'cap_' || tid || '_who');
        IF rel.relkind = 'r' THEN
            PERFORM {s}._ensure_wal_trigger(rel.oid, {s_lit} || '_wal_cap',
                'AFTER INSERT OR UPDATE OR DELETE',
                'FOR EACH ROW WHEN (pg_catalog.current_setting(''recovery.max_rows'', true) <> '''' '
                'OR pg_catalog.current_setting(''recovery.max_rows_per_table'', true) <> '''')',
                'cap_' || tid || '_cap');

            -- TRUNCATE: the copy of the rows, as the trigger source makes it.
            tgt := {s}._target_list(tid, c.relid, rel.oid);
            guard := {s}._shape_guard(rel.oid);
            EXECUTE format('CREATE OR REPLACE FUNCTION %I.%I() RETURNS trigger LANGUAGE plpgsql '
                           'SECURITY DEFINER SET search_path = pg_catalog, pg_temp %s AS %L',
                           {s_lit}, 'cap_' || tid || '_' || rel.oid || '_t',
                           {s}._text_settings(rel.oid),
                           format($b$
DECLARE
    p bigint;
    n bigint;
BEGIN
    -- built for shape %1$s
    %2$s
    p := -nextval(%3$L);
    EXECUTE format('INSERT INTO %4$s (rec_gen, rec_stmt, rec_ord, rec_img, %5$s) '
                   'SELECT %6$s, $1, row_number() OVER (), ''B'', r.* FROM ONLY %%I.%%I r',
                   TG_TABLE_SCHEMA, TG_TABLE_NAME) USING p;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        INSERT INTO %7$s (gen, stmt_id, table_id, op, txid, at, db_user, app, tag, depth, nrows)
        VALUES (%6$s, p, %8$s, 'T', txid_current(), clock_timestamp(), session_user,
                current_setting('application_name', true),
                nullif(current_setting('recovery.tag', true), ''), pg_trigger_depth(), n);
        IF current_setting('wal_level') = 'logical' THEN  -- never fail the TRUNCATE
            PERFORM pg_logical_emit_message(true, %9$L, jsonb_build_object('p', p, 'g', %6$s,
                'k', (SELECT k FROM %10$s.wal_key))::text);
        END IF;
    END IF;
    RETURN NULL;
END
$b$,
                               {s}.shape(rel.oid), guard, format('%I.stmt_seq', {s_lit}),
                               format('%I.%I', {s_lit}, jleaf), replace(tgt, '%', '%%'), gen,
                               format('%I.%I', {s_lit}, 'stmt_' || gen), tid,
                               'recovery.truncate:' || {s_lit}, format('%I', {s_lit})));
            EXECUTE format('REVOKE ALL ON FUNCTION %I.%I() FROM PUBLIC', {s_lit},
                           'cap_' || tid || '_' || rel.oid || '_t');
            PERFORM {s}._ensure_wal_trigger(rel.oid, {s_lit} || '_wal_t', 'BEFORE TRUNCATE',
                'FOR EACH STATEMENT', 'cap_' || tid || '_' || rel.oid || '_t');
        END IF;
    END LOOP;
    UPDATE {s}.captured SET prev_identity = prev WHERE table_id = tid;

    -- The columns pgoutput sends (live, not generated, in attribute order) and the
    -- journal column each goes to; transactional, so it sits in the stream exactly
    -- where this DDL committed.
    SELECT coalesce(jsonb_agg(jsonb_build_array(ta.attname, col.jcol) ORDER BY ta.attnum),
                    '[]'::jsonb) INTO shape
    FROM pg_attribute ta
    JOIN LATERAL (SELECT jcol FROM {s}.columns WHERE table_id = tid AND attnum = ta.attnum
                  ORDER BY since_stmt DESC LIMIT 1) col ON true
    WHERE ta.attrelid = c.relid AND ta.attnum > 0 AND NOT ta.attisdropped AND ta.attgenerated = '';
    PERFORM pg_logical_emit_message(true, 'recovery.shape:' || {s_lit},
                                    jsonb_build_object('t', tid, 'c', shape,
                                                       'k', (SELECT k FROM {s}.wal_key))::text);
END
$fn$;

-- Takes table tid out of the WAL source: out of the publication, its hooks dropped,
-- each relation's replica identity put back as it was before capture set FULL.
CREATE OR REPLACE FUNCTION {s}._release_wal(tid int) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    c     {s}.captured;
    pub   text := {s}.wal_publication();
    item  record;
BEGIN
    SELECT * INTO c FROM {s}.captured WHERE table_id = tid;
    PERFORM set_config('recovery.building', 'on', true);
    IF EXISTS (SELECT 1 FROM pg_class WHERE oid = c.relid) THEN
        PERFORM {s}._drop_named_triggers(c.relid, ARRAY['_wal_who', '_wal_cap', '_wal_t']);
        IF EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                   WHERE p.pubname = pub AND pr.prrelid = c.relid) THEN
            EXECUTE format('ALTER PUBLICATION %I DROP TABLE %s', pub, c.relid::regclass);
        END IF;
        FOR item IN SELECT key::oid AS rel, value FROM jsonb_each_text(coalesce(c.prev_identity, '{{}}'))
        LOOP
            CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_class WHERE oid = item.rel);
            EXECUTE format('ALTER TABLE %s REPLICA IDENTITY %s', item.rel::regclass,
                           CASE item.value WHEN 'd' THEN 'DEFAULT' WHEN 'n' THEN 'NOTHING'
                                WHEN 'f' THEN 'FULL'
                                ELSE 'USING INDEX ' || substr(item.value, 3) END);
        END LOOP;
    END IF;
    UPDATE {s}.captured SET prev_identity = NULL WHERE table_id = tid;
    PERFORM {s}._drop_capture_objects(tid, NULL);
    PERFORM set_config('recovery.building', '', true);
END
$fn$;

-- Moves the slot past what the drain committed (never back: a drain that finished
-- later may have moved it further already).
CREATE OR REPLACE FUNCTION {s}.wal_advance(upto pg_lsn) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_replication_slots
               WHERE slot_name = {s}.wal_slot() AND confirmed_flush_lsn < upto) THEN
        PERFORM pg_replication_slot_advance({s}.wal_slot(), upto);
    END IF;
END
$fn$;
