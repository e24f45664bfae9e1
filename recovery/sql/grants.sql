-- Privileges: run last, after every table and function exists.
--
-- This text is composed with psycopg.sql before it runs: every {s} becomes the
-- quoted schema identifier and {s_lit} the schema name as a string literal.
-- Literal braces are doubled.  Everything here is idempotent: `recovery init`
-- runs it on every call (schema.py runs the files in order: tables, capture,
-- guard, approval, grants).

REVOKE ALL ON ALL TABLES IN SCHEMA {s} FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA {s} FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA {s} FROM PUBLIC;
-- Read-only helpers that the viewing commands (diff, capture status) call: harmless,
-- and unreachable without USAGE on the schema, which only granted roles have.
GRANT EXECUTE ON FUNCTION {s}.shape(oid), {s}.storage_type(oid, int) TO PUBLIC;
-- The WAL source's names (every command that reads the journal looks for the slot
-- first; a database without WAL capture has none, and the command goes on).
GRANT EXECUTE ON FUNCTION {s}.wal_slot(), {s}.wal_publication() TO PUBLIC;
