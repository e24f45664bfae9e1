-- Guardrails enforced by the capture hooks: blast-radius caps per transaction.
--
-- This text is composed with psycopg.sql before it runs: every {s} becomes the
-- quoted schema identifier and {s_lit} the schema name as a string literal.
-- Literal braces are doubled.  Everything here is idempotent: `recovery init`
-- runs it on every call (schema.py runs the files in order: tables, capture,
-- guard, approval, grants).

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
