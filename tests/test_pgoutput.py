"""pgoutput messages: the C `tuple_values` against the Python reference, and `parse`
on messages a real server wrote.

The differential half builds TupleData buffers itself (random values, escapes, NULLs,
unchanged TOAST markers, MB values, 0 and 1600 columns) and requires the two versions
to agree exactly, and both to raise on truncated or corrupt input.  The server half
decodes a slot through `pg_logical_slot_peek_binary_changes` and checks every message.
"""

from __future__ import annotations

import random
import re
import struct
import tracemalloc
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recovery.capture import pgoutput
from recovery.capture.pgoutput import Values, _py_tuple_values

try:
    from recovery.capture._pgoutput import tuple_values as _c_tuple_values  # type: ignore[import-not-found]
except ImportError:  # not built (no compiler at install time): only the Python half runs
    _c_tuple_values = None

TupleFn = Callable[[bytes, int], "tuple[Values, int]"]
# One column as a TupleData carries it: ("t", text), ("n", None) or ("u", None).
Column = tuple[str, bytes | None]
# Truncation as the Python reference reports it: struct.error (a too-short Int16 or
# Int32), IndexError (a missing kind byte).  The C version raises ValueError for all.
TRUNCATED = (ValueError, IndexError, struct.error)


def c_version() -> TupleFn:
    if _c_tuple_values is None:
        pytest.skip("recovery.capture._pgoutput is not built")
    fn: TupleFn = _c_tuple_values
    return fn


def encode(cols: list[Column]) -> bytes:
    out = [struct.pack(">h", len(cols))]
    for kind, value in cols:
        out.append(kind.encode())
        if kind == "t":
            assert value is not None
            out.append(struct.pack(">I", len(value)))
            out.append(value)
    return b"".join(out)


def copy_text(cols: list[Column]) -> Values:
    """What the values must become, written independently of both versions."""
    table = {ord("\\"): b"\\\\", ord("\n"): b"\\n", ord("\r"): b"\\r", ord("\t"): b"\\t"}
    out: Values = []
    for kind, value in cols:
        if kind == "t":
            assert value is not None
            out.append(b"".join(table.get(b, bytes([b])) for b in value))
        else:
            out.append(b"\\N" if kind == "n" else None)
    return out


_SPECIALS = b"\\\t\n\r"


def random_value(rng: random.Random) -> bytes:
    size = rng.choice([0, 1, 2, 5, 17, 100, 1000])
    style = rng.randrange(5)
    if style == 0:  # escape-heavy ASCII
        return bytes(rng.choice(b"ab\\\t\n\r ") for _ in range(size))
    if style == 1:  # non-ASCII UTF-8 text with the odd special
        chars = "aé€😀\\\t\n\rz"
        return "".join(rng.choice(chars) for _ in range(size)).encode()
    if style == 2:  # any byte at all (NUL included): the parser must not care
        return rng.randbytes(size)
    if style == 3:  # nothing to escape: the one-copy path
        return bytes(rng.choice(b'abcxyz0123 {}",:') for _ in range(size))
    return b""


def random_columns(rng: random.Random, n: int) -> list[Column]:
    cols: list[Column] = []
    for _ in range(n):
        r = rng.random()
        if r < 0.15:
            cols.append(("n", None))
        elif r < 0.25:
            cols.append(("u", None))
        else:
            cols.append(("t", random_value(rng)))
    return cols


def framed(rng: random.Random, body: bytes) -> tuple[bytes, int]:
    """The body inside a message: bytes before it (pos > 0) and after it (not consumed)."""
    head = rng.randbytes(rng.choice([0, 1, 6, 30]))
    return head + body + rng.randbytes(rng.choice([0, 1, 9])), len(head)


def check_same(data: bytes, pos: int, expected: Values | None = None) -> None:
    py = _py_tuple_values(data, pos)
    c = c_version()(data, pos)
    assert type(c) is tuple and type(c[0]) is list
    assert all(v is None or type(v) is bytes for v in c[0])
    assert c == py
    if expected is not None:
        assert py[0] == expected


# --- the differential test ---------------------------------------------------------


def test_the_module_uses_the_c_version_when_built() -> None:
    assert pgoutput.tuple_values is c_version()


@pytest.mark.parametrize("seed", range(20))
def test_random_tuples_agree(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(100):
        cols = random_columns(rng, rng.choice([0, 1, 2, 3, 10, 40]))
        body = encode(cols)
        data, pos = framed(rng, body)
        check_same(data, pos, copy_text(cols))
        assert c_version()(data, pos)[1] == pos + len(body)


@pytest.mark.parametrize("n", [0, 1600])
def test_zero_and_1600_columns(n: int) -> None:
    rng = random.Random(n)
    cols = random_columns(rng, n)
    data, pos = framed(rng, encode(cols))
    check_same(data, pos, copy_text(cols))
    assert len(c_version()(data, pos)[0]) == n


@pytest.mark.parametrize("specials", [False, True], ids=["plain", "escaped"])
def test_values_of_several_megabytes(specials: bool) -> None:
    rng = random.Random(3)
    alphabet = b"abcdef\\\t\n\r\xc3\xa9" if specials else b"abcdef0123456789"
    big = bytes(rng.choice(alphabet) for _ in range(3_000_000))
    cols: list[Column] = [("t", b"1"), ("t", big), ("u", None), ("t", big[:1_500_000])]
    data = encode(cols)
    check_same(data, 0, copy_text(cols))


def test_each_escape_alone_and_together() -> None:
    cols: list[Column] = [("t", bytes([b])) for b in _SPECIALS]
    cols += [("t", _SPECIALS * 3), ("t", b"\\N"), ("t", b""), ("n", None), ("u", None)]
    check_same(encode(cols), 0, copy_text(cols))
    assert copy_text(cols)[4] == b"\\\\\\t\\n\\r" * 3
    assert copy_text(cols)[5] == b"\\\\N"  # a text "\N" is not NULL


def test_negative_column_count_reads_no_columns() -> None:
    # ">h" is signed: both versions read a count of -1 as an empty row.
    check_same(b"\xff\xff" + encode([("n", None)]), 0, [])


def truncations(data: bytes) -> list[int]:
    """Every cut point of a short buffer; a sample of a long one."""
    if len(data) <= 400:
        return list(range(len(data)))
    rng = random.Random(len(data))
    return sorted({0, 1, len(data) - 1, *rng.sample(range(len(data)), 300)})


def cut_inside_last_value(cols: list[Column], cut: int) -> bool:
    """Whether `cut` falls inside the bytes of the last column's text value.

    The one truncation the Python reference does not notice: its slice comes back
    short and nothing is read after it, so it returns an offset past the end.
    """
    if not cols or cols[-1][0] != "t":
        return False
    value = cols[-1][1]
    assert value is not None
    full = len(encode(cols))
    return full - len(value) <= cut < full


def check_truncated(data: bytes, pos: int, cols: list[Column], cut: int) -> None:
    with pytest.raises(ValueError, match="truncated"):
        c_version()(data, pos)
    if cut_inside_last_value(cols, cut):
        _values, end = _py_tuple_values(data, pos)
        assert end > len(data)
    else:
        with pytest.raises(TRUNCATED):
            _py_tuple_values(data, pos)


@pytest.mark.parametrize("seed", range(10))
def test_truncated_buffers_raise(seed: int) -> None:
    rng = random.Random(1000 + seed)
    for _ in range(10):
        cols = random_columns(rng, rng.choice([1, 2, 5, 20]))
        body = encode(cols)
        for cut in truncations(body):
            check_truncated(body[:cut], 0, cols, cut)
        # The same cut inside a longer message: the buffer ends where the cut is.
        head = rng.randbytes(7)
        cut = rng.randrange(len(body))
        check_truncated(head + body[:cut], len(head), cols, cut)


def test_lengths_beyond_the_buffer_raise() -> None:
    c = c_version()
    for ln in (5, 2**31 - 1, 2**31, 2**32 - 1):
        data = struct.pack(">hcI", 2, b"t", ln) + b"abcd" + b"n"
        with pytest.raises(ValueError, match="truncated"):
            c(data, 0)
    with pytest.raises(ValueError, match="truncated"):
        c(b"\x00\x01t\xff\xff\xff\xff", 0)


@pytest.mark.parametrize("pos", [2, 3, 10, 2**40, 2**70])
def test_offsets_at_or_past_the_end_raise(pos: int) -> None:
    data = b"\x00\x00\x00"  # pos 0: an empty row; pos 2: a one-byte count
    with pytest.raises(ValueError):
        c_version()(data, pos)
    with pytest.raises(TRUNCATED + (OverflowError,)):
        _py_tuple_values(data, pos)


def test_bad_arguments() -> None:
    c = c_version()
    with pytest.raises(ValueError, match="negative"):
        c(b"\x00\x00", -1)
    with pytest.raises(TypeError):
        c(b"\x00\x00", 1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        c("\x00\x00", 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        c(b"\x00\x00")  # type: ignore[call-arg]
    # Any buffer is read; the values are bytes all the same.
    cols: list[Column] = [("t", b"a\tb"), ("n", None)]
    for buf in (bytearray(encode(cols)), memoryview(encode(cols))):
        assert c(buf, 0) == (copy_text(cols), 11)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(5))
def test_unknown_kinds_raise_the_same_error(seed: int) -> None:
    rng = random.Random(2000 + seed)
    for _ in range(50):
        cols = random_columns(rng, rng.choice([1, 3, 8]))
        body = bytearray(encode(cols))
        # The kind bytes sit at known offsets: replace one by something else.
        offsets, at = [], 2
        for kind, value in cols:
            offsets.append(at)
            at += 1 + (4 + len(value) if kind == "t" and value is not None else 0)
        bad = rng.choice([b for b in range(256) if b not in b"tnu"])
        body[rng.choice(offsets)] = bad
        with pytest.raises(ValueError) as py_err:
            _py_tuple_values(bytes(body), 0)
        with pytest.raises(ValueError) as c_err:
            c_version()(bytes(body), 0)
        assert (
            str(c_err.value)
            == str(py_err.value)
            == (f"pgoutput: unexpected column kind {chr(bad)!r}")
        )


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=60), st.integers(min_value=0, max_value=64))
def test_arbitrary_bytes(data: bytes, pos: int) -> None:
    """Any input at all: the same answer, or both raise (C: always ValueError)."""
    c = c_version()
    try:
        py: tuple[Values, int] | None = _py_tuple_values(data, pos)
    except (ValueError, IndexError, struct.error):
        py = None
    if py is not None and py[1] <= len(data):
        assert c(data, pos) == py
    else:  # the reference raised, or ran past the end (a truncated last value)
        with pytest.raises(ValueError):
            c(data, pos)


def test_no_leak_on_success_or_error_paths() -> None:
    c = c_version()
    good = encode([("t", b"x" * 500), ("t", b"a\tb" * 100), ("n", None), ("u", None)])
    bad_kind = encode([("t", b"x" * 500), ("t", b"a\tb" * 100), ("n", None)]) + b"\x00"
    bad_kind = struct.pack(">h", 4) + bad_kind[2:]
    short = good[:-1] + b"\x00\x01t"

    def run() -> None:
        for _ in range(2000):
            c(good, 0)
            for data in (bad_kind, good[:-10], short):
                try:
                    c(data, 0)
                except ValueError:
                    pass

    run()  # warm up (caches, freelists)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        run()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # A leaked value per call would be MBs here; allow for interpreter noise.
    assert grown < 100_000


# --- real messages from a real server ----------------------------------------------


def _hex(b: bytes) -> bytes:
    return b"\\\\x" + b.hex().encode()  # bytea's hex output, its backslash escaped for COPY


def test_parse_real_messages(conn: psycopg.Connection[Any]) -> None:
    conn.autocommit = True
    if conn.execute("SHOW wal_level").fetchone() != ("logical",):
        pytest.skip("the test cluster does not have wal_level = logical")

    # Random hex does not compress to under the TOAST threshold: stored out of line.
    big = random.Random(5).randbytes(700_000).hex()
    assert len(big) > 1_000_000
    raw = b"\x00\x01\\\xff"
    name = "tab\there, back\\slash, newline\nand CR\r, é€"
    conn.execute("CREATE TABLE pgo (id int PRIMARY KEY, name text, raw bytea, doc jsonb, big text)")
    conn.execute("ALTER TABLE pgo REPLICA IDENTITY FULL")
    conn.execute("CREATE PUBLICATION pgo_pub FOR TABLE pgo")
    relid = conn.execute("SELECT 'pgo'::regclass::oid").fetchone()[0]  # type: ignore[index]
    slot = conn.execute("SELECT 'pgo_' || current_database()").fetchone()[0]  # type: ignore[index]
    # Decoding stops at the flushed WAL: the test cluster runs with synchronous_commit
    # off, so commit these writes synchronously or the last ones are not seen yet.
    conn.execute("SET synchronous_commit = on")
    conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [slot])
    try:
        xids = []

        def txn(sql: str, params: list[object] | None = None) -> None:
            with conn.transaction():
                conn.execute(sql, params)
                xids.append(int(conn.execute("SELECT pg_current_xact_id()::text").fetchone()[0]))  # type: ignore[index]

        started = datetime.now(timezone.utc)
        txn(
            "INSERT INTO pgo VALUES (1, %s, %s, %s, %s)",
            [name, raw, '{"b": [true, null], "a": "x\\ty"}', big],
        )
        txn("INSERT INTO pgo (id, name) VALUES (2, '')")
        txn("UPDATE pgo SET name = 'renamed' WHERE id = 1")  # big untouched: 'u'
        txn("DELETE FROM pgo WHERE id = 2")
        txn("SELECT pg_logical_emit_message(true, 'p', 'hello')")

        changes = conn.execute(
            "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL,"
            " 'proto_version', '1', 'publication_names', 'pgo_pub', 'messages', 'true')",
            [slot],
        ).fetchall()
    finally:
        conn.execute("SELECT pg_drop_replication_slot(%s)", [slot])
    msgs = [pgoutput.parse(bytes(data)) for (data,) in changes]

    esc_name = b"tab\\there, back\\\\slash, newline\\nand CR\\r, " + "é€".encode()
    doc = b'{"a": "x\\\\ty", "b": [true, null]}'  # jsonb's own key order and spacing
    row1 = [b"1", esc_name, _hex(raw), doc, big.encode()]
    row2 = [b"2", b"", b"\\N", b"\\N", b"\\N"]
    renamed = [b"1", b"renamed", _hex(raw), doc, big.encode()]
    expected_bodies: list[list[tuple[object, ...]]] = [
        [
            ("R", relid, "public", "pgo", "f", ["id", "name", "raw", "doc", "big"]),
            ("I", relid, None, row1),
        ],
        [("I", relid, None, row2)],
        # REPLICA IDENTITY FULL logs the old row with its TOAST inlined; the new row
        # leaves the untouched out-of-line value out ('u' -> None).
        [("U", relid, row1, [*renamed[:4], None], "O")],
        [("D", relid, row2, None, "O")],
        [("M", True, "p", b"hello")],
    ]

    # Five transactions, each B ... C, in commit order.
    assert [m[0] for m in msgs] == list("BRICBICBUCBDCBMC")
    bodies: list[list[tuple[object, ...]]] = []
    for xid in xids:
        begin, msgs = msgs[0], msgs[1:]
        end = next(i for i, m in enumerate(msgs) if m[0] == "C")
        body, commit, msgs = msgs[:end], msgs[end], msgs[end + 1 :]
        bodies.append(body)
        assert begin[0] == "B" and commit[0] == "C"
        _, lsn, ts, begin_xid = begin
        _, commit_lsn, end_lsn, commit_ts = commit
        assert begin_xid == xid
        assert isinstance(lsn, int) and isinstance(end_lsn, int) and isinstance(ts, int)
        assert commit_lsn == lsn and end_lsn > lsn
        assert commit_ts == ts
        when = pgoutput.pg_time(ts)
        assert started - timedelta(seconds=5) <= when <= datetime.now(timezone.utc)
    assert msgs == []
    assert bodies == expected_bodies
    # Every value came out in COPY form: no raw special byte survives.
    for body in bodies:
        for m in body:
            if m[0] in ("I", "U", "D"):
                for row in m[2:4]:
                    assert row is None or isinstance(row, list)
                    for v in row or ():
                        assert v is None or not re.search(rb"[\t\n\r]", v)
