"""A table's definition as a snapshot manifest keeps it, and its recreation from there.

The definition is read with search_path set to pg_catalog only, so every name in it
(types, sequences, functions in defaults) comes out schema-qualified and means the
same thing in another database.  What is recreated: columns (type, collation, NOT
NULL, default, identity, generated expression), primary key, unique, check and
exclusion constraints, other indexes, the user-defined types the columns use (enum,
domain, composite, range) and serial sequences.  Foreign keys are recreated when the
table they reference exists.  A partitioned table is recreated with its partition key
and its partitions (bounds, sub-partitions, the default partition); the parent's
indexes and constraints reach every partition as PostgreSQL clones them.  A partition
is recreated as a partition of its parent when the parent exists (else as a plain
table, with a note saying how to attach it), with the constraints and indexes it has
beyond its parent's.  Partitions that are foreign tables are not kept.

`catalog` reads names schema-qualified (catalog_path) and a relation's columns;
`definition` describes a table for a manifest; `rebuild` recreates it from there.
"""

from .catalog import catalog_path, columns
from .definition import describe
from .rebuild import after_load, missing_partitions, recreate

__all__ = [
    "after_load",
    "catalog_path",
    "columns",
    "describe",
    "missing_partitions",
    "recreate",
]
