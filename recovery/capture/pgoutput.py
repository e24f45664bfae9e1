"""Reading `pgoutput` messages (logical replication protocol version 1, text values).

The WAL source (`wal.py`) reads its slot through `pg_logical_slot_peek_binary_changes`,
one `bytea` per message.  `parse()` turns one message into a small tuple; the values
of a row arrive already in the form the journal's `COPY ... FROM STDIN` (text format)
takes: escaped, `\\N` for NULL, and `None` where pgoutput sent "unchanged TOAST" (an
UPDATE that did not touch an out-of-line value: the caller takes it from the old row).

The message layouts are PostgreSQL's ("Logical Replication Message Formats" in the
manual): every integer is big-endian; strings are NUL-terminated.  An accelerated
`tuple_values` in C (`_pgoutput`) is used when it was built; this module is the
reference it must match byte for byte.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

# One row: a COPY field per column, or None for an unchanged TOAST value.
Values = list[bytes | None]

_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)
_NEEDS_ESCAPE = re.compile(rb"[\\\n\r\t]")
_NULL = b"\\N"

_BEGIN = struct.Struct(">qqI")  # final (commit) LSN, commit time, xid
_COMMIT = struct.Struct(">BqqQ")  # flags, commit LSN, end LSN, commit time
_REL = struct.Struct(">I")
_HALF = struct.Struct(">h")
_LEN = struct.Struct(">I")
_MSG = struct.Struct(">Bq")  # flags, LSN


def pg_time(us: int) -> datetime:
    """A pgoutput timestamp (microseconds since 2000-01-01 UTC) as a datetime."""
    return _EPOCH + timedelta(microseconds=us)


def _escape(v: bytes) -> bytes:
    if _NEEDS_ESCAPE.search(v) is None:
        return v
    v = v.replace(b"\\", b"\\\\").replace(b"\n", b"\\n")
    return v.replace(b"\r", b"\\r").replace(b"\t", b"\\t")


def _py_tuple_values(data: bytes, pos: int) -> tuple[Values, int]:
    """The values of a TupleData at `pos`, and the offset after it."""
    (n,) = _HALF.unpack_from(data, pos)
    pos += 2
    out: Values = []
    append = out.append
    for _ in range(n):
        kind = data[pos]
        pos += 1
        if kind == 0x74:  # 't': text value
            (ln,) = _LEN.unpack_from(data, pos)
            pos += 4
            append(_escape(data[pos : pos + ln]))
            pos += ln
        elif kind == 0x6E:  # 'n': NULL
            append(_NULL)
        elif kind == 0x75:  # 'u': unchanged TOAST value
            append(None)
        else:  # 'b' (binary) is never requested
            raise ValueError(f"pgoutput: unexpected column kind {chr(kind)!r}")
    return out, pos


tuple_values: Callable[[bytes, int], tuple[Values, int]] = _py_tuple_values
try:  # the C version, when the extension was built (pip install compiles it)
    from ._pgoutput import tuple_values as _c_tuple_values  # type: ignore[import-not-found]

    tuple_values = _c_tuple_values
except ImportError:  # pragma: no cover - depends on the build
    pass


def _cstring(data: bytes, pos: int) -> tuple[str, int]:
    end = data.index(0, pos)
    return data[pos:end].decode(), end + 1


# The parsed forms, by first byte:
#   ("B", commit_lsn, commit_time_us, xid)
#   ("C", commit_lsn, end_lsn, commit_time_us)
#   ("R", relid, namespace, name, replica_identity, [column names])
#   ("I", relid, None, new)                  new: Values
#   ("U", relid, old or None, new, old_kind)  old_kind: "O" (whole row), "K" (key) or ""
#   ("D", relid, old, None, old_kind)
#   ("M", transactional, prefix, content)
#   ("T", [relids])                          TRUNCATE (not published by recovery)
#   ("Y",) / ("O",)                          type and origin: not needed
Message = tuple[Any, ...]


def parse(data: bytes) -> Message:
    """Parse one pgoutput message."""
    kind = data[0]
    if kind == 0x49:  # 'I'
        (relid,) = _REL.unpack_from(data, 1)
        new, _ = tuple_values(data, 6)  # after the 'N' byte
        return ("I", relid, None, new)
    if kind == 0x55:  # 'U'
        (relid,) = _REL.unpack_from(data, 1)
        tag = data[5]
        old: Values | None = None
        old_kind = ""
        pos = 6
        if tag in (0x4B, 0x4F):  # 'K' or 'O', then 'N'
            old, pos = tuple_values(data, 6)
            old_kind = chr(tag)
            pos += 1
        new, _ = tuple_values(data, pos)
        return ("U", relid, old, new, old_kind)
    if kind == 0x44:  # 'D'
        (relid,) = _REL.unpack_from(data, 1)
        tag = data[5]
        old, _ = tuple_values(data, 6)
        return ("D", relid, old, None, chr(tag))
    if kind == 0x42:  # 'B'
        lsn, ts, xid = _BEGIN.unpack_from(data, 1)
        return ("B", lsn, ts, xid)
    if kind == 0x43:  # 'C'
        _flags, lsn, end, ts = _COMMIT.unpack_from(data, 1)
        return ("C", lsn, end, ts)
    if kind == 0x52:  # 'R'
        (relid,) = _REL.unpack_from(data, 1)
        nsp, pos = _cstring(data, 5)
        name, pos = _cstring(data, pos)
        ident = chr(data[pos])
        (ncols,) = _HALF.unpack_from(data, pos + 1)
        pos += 3
        cols = []
        for _ in range(ncols):
            col, pos = _cstring(data, pos + 1)  # after the flags byte
            pos += 8  # type oid, typmod
            cols.append(col)
        return ("R", relid, nsp, name, ident, cols)
    if kind == 0x4D:  # 'M'
        flags, _lsn = _MSG.unpack_from(data, 1)
        prefix, pos = _cstring(data, 10)
        (ln,) = _LEN.unpack_from(data, pos)
        return ("M", bool(flags & 1), prefix, data[pos + 4 : pos + 4 + ln])
    if kind == 0x54:  # 'T'
        (nrel,) = _LEN.unpack_from(data, 1)
        return ("T", [_REL.unpack_from(data, 6 + 4 * i)[0] for i in range(nrel)])
    return (chr(kind),)


def _py_change(
    data: bytes, key_pos: tuple[int, ...]
) -> tuple[
    int, str, bytes | None, bytes | None, tuple[bytes, ...] | None, tuple[bytes, ...] | None, int
]:
    """One INSERT, UPDATE or DELETE message as the drain needs it, in one call:
    (relid, old_kind, old_line, new_line, old_key, new_key, ncols).

    old_kind is "O" (whole old row), "K" (key only) or "" (none); a line is the row's
    COPY fields joined by tabs; an unchanged TOAST value of the new row is taken from
    the old row (ValueError when there is none); a key is the fields at key_pos; ncols
    the number of columns (ValueError when the old and new rows differ in it)."""
    kind = data[0]
    (relid,) = _REL.unpack_from(data, 1)
    old: Values | None = None
    new: Values | None = None
    old_kind = ""
    if kind == 0x49:  # 'I'
        new, _ = tuple_values(data, 6)
    elif kind == 0x55:  # 'U'
        pos = 6
        if data[5] in (0x4B, 0x4F):
            old_kind = chr(data[5])
            old, pos = tuple_values(data, 6)
            pos += 1
        new, _ = tuple_values(data, pos)
    elif kind == 0x44:  # 'D'
        old_kind = chr(data[5])
        old, _ = tuple_values(data, 6)
    else:
        raise ValueError(f"pgoutput: not a change message: {chr(kind)!r}")
    if old is not None and new is not None and len(old) != len(new):
        raise ValueError("pgoutput: old and new rows differ in their number of columns")
    if new is not None and None in new:
        if old is None:
            raise ValueError("pgoutput: an unchanged TOAST value without the old row")
        new = [o if v is None else v for v, o in zip(new, old)]
    if old is not None and None in old:
        raise ValueError("pgoutput: an unchanged TOAST value in an old row")
    row = new if new is not None else old
    assert row is not None
    return (
        relid,
        old_kind,
        b"\t".join(old) if old is not None else None,  # type: ignore[arg-type]
        b"\t".join(new) if new is not None else None,  # type: ignore[arg-type]
        tuple(old[i] for i in key_pos) if old is not None else None,  # type: ignore[misc]
        tuple(new[i] for i in key_pos) if new is not None else None,  # type: ignore[misc]
        len(row),
    )


change = _py_change
try:  # the C version, when the extension was built
    from ._pgoutput import change as _c_change  # type: ignore[import-not-found, unused-ignore]

    change = _c_change
except ImportError:  # pragma: no cover - depends on the build
    pass
