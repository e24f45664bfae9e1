"""What a migration file could destroy: the scope of `recovery snapshot create --for-sql FILE`.

The file is parsed with PostgreSQL's own parser (pglast) and every statement is mapped to
*targets*: rows (a WHERE over the table as the statement named it) or columns of existing
tables that running it could overwrite or remove. The snapshot engine saves them first.

Decisions:

* Supersets are fine, subsets are not. Conditions that only narrow further are ignored
  (MERGE's `WHEN MATCHED AND cond`, ON CONFLICT's `DO UPDATE ... WHERE`, partial unique
  indexes), and an UPDATE puts whole rows at risk (its triggers may change any column).
* Every WHERE is evaluated before the file runs. A WHERE reading a table that an earlier
  statement of the file writes (other than its own target) is widened to the whole table
  (bounded=False); so is one that does not plan before the file runs (e.g. it names a
  column an earlier ALTER TABLE adds). bounded=False always comes with where=None.
* What cannot be bounded (DO, CALL, volatile user functions, EXECUTE, unknown statements)
  falls back to the whole of every existing table its code names in a destructive statement
  or in a string literal (dynamic SQL). Trigger bodies are not followed.
* Foreign-key actions (ON DELETE / ON UPDATE CASCADE, SET NULL, SET DEFAULT) are followed
  from every row target, recursively; TRUNCATE ... CASCADE empties referencing tables.
* Names are resolved with the connection's search_path; after a `SET search_path` in the
  file, with that one, and the statement's tables are then written schema-qualified.
  Function names and names in function bodies always use the connection's search_path.
* Only catalog reads and EXPLAINs (in savepoints) are sent; nothing is written.
"""

from .analysis import analyze
from .estimates import estimate
from .model import Statement, Target
from .plan import describe, plan_for_sql, read_sql_file

__all__ = [
    "Statement",
    "Target",
    "analyze",
    "describe",
    "estimate",
    "plan_for_sql",
    "read_sql_file",
]
