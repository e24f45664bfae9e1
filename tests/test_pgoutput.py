"""pgoutput messages: the C `tuple_values` and `change` against the Python references,
and `parse` on messages a real server wrote.

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
from recovery.capture.pgoutput import Values, _py_change, _py_tuple_values

try:
    from recovery.capture._pgoutput import tuple_values as _c_tuple_values  # type: ignore[import-not-found]
except ImportError:  # not built (no compiler at install time): only the Python half runs
    _c_tuple_values = None
try:
    from recovery.capture._pgoutput import change as _c_change  # type: ignore[import-not-found, unused-ignore]
except ImportError:
    _c_change = None

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


# --- change(): one I/U/D message, C against the Python reference ---------------------

Change = tuple[
    int, str, bytes | None, bytes | None, tuple[bytes, ...] | None, tuple[bytes, ...] | None, int
]
ChangeFn = Callable[[bytes, "tuple[int, ...]"], Change]


def py_change(data: bytes, key_pos: tuple[int, ...]) -> Change:
    """The reference, all in Python: `_py_change` calls whatever `tuple_values` the
    module has (the C one when built), so it is swapped for `_py_tuple_values` here."""
    saved = pgoutput.tuple_values
    pgoutput.tuple_values = _py_tuple_values
    try:
        return _py_change(data, key_pos)
    finally:
        pgoutput.tuple_values = saved


def c_change() -> ChangeFn:
    if _c_change is None:
        pytest.skip("recovery.capture._pgoutput is not built")
    fn: ChangeFn = _c_change
    return fn


def change_message(
    kind: str, relid: int, old: list[Column] | None, new: list[Column] | None, tag: str = "O"
) -> bytes:
    """An INSERT ("I" relid "N" new), UPDATE ("U" relid [tag old] "N" new) or DELETE
    ("D" relid tag old) message."""
    out = kind.encode() + struct.pack(">I", relid)
    if old is not None:
        out += tag.encode() + encode(old)
    if new is not None:
        out += b"N" + encode(new)
    return out


def without_unchanged(rng: random.Random, cols: list[Column]) -> list[Column]:
    return [("t", random_value(rng)) if k == "u" else (k, v) for k, v in cols]


def random_key_pos(rng: random.Random, n: int) -> tuple[int, ...]:
    """0 to 3 positions in any order, repeats and negative (from the end) included."""
    if n == 0:
        return ()
    pos = [rng.randrange(n) for _ in range(rng.randrange(4))]
    return tuple(p - n if rng.random() < 0.1 else p for p in pos)


def random_change(rng: random.Random, n: int | None = None) -> tuple[bytes, tuple[int, ...]]:
    """A well-formed message (now and then one of the reference's ValueErrors: a 'u'
    without the old row or in it), the odd trailing byte after it, and a key_pos."""
    if n is None:
        n = rng.choice([0, 1, 2, 3, 5, 10, 40])
    kind = rng.choice("IUD")
    relid = rng.choice([0, 1, 255, 256, 16384, 2**31, 2**32 - 1])
    tag = rng.choice("OK")

    def row(unchanged_ok: bool) -> list[Column]:
        cols = random_columns(rng, n)
        return cols if unchanged_ok or rng.random() < 0.03 else without_unchanged(rng, cols)

    old: list[Column] | None = None
    new: list[Column] | None = None
    if kind == "I":
        new = row(False)
    elif kind == "U":
        if rng.random() < 0.7:
            old = row(False)
        new = row(old is not None)
    else:
        old = row(False)
    data = change_message(kind, relid, old, new, tag)
    if rng.random() < 0.2:  # not read by either version
        data += rng.randbytes(rng.choice([1, 5]))
    return data, random_key_pos(rng, n)


def expected_change(
    kind: str,
    relid: int,
    old: list[Column] | None,
    new: list[Column] | None,
    tag: str,
    key: tuple[int, ...],
) -> Change:
    """What change() must return for a valid message, written independently of both."""
    old_v = copy_text(old) if old is not None else None
    new_v = copy_text(new) if new is not None else None
    if new_v is not None and old_v is not None:
        new_v = [o if v is None else v for v, o in zip(new_v, old_v)]

    def line(v: Values | None) -> bytes | None:
        return None if v is None else b"\t".join(x for x in v if x is not None)

    def keys(v: Values | None) -> tuple[bytes, ...] | None:
        return None if v is None else tuple(v[i] or b"" for i in key)

    row = new if new is not None else old
    assert row is not None
    return (
        relid,
        tag if old is not None else "",
        line(old_v),
        line(new_v),
        keys(old_v),
        keys(new_v),
        len(row),
    )


def check_change_same(data: bytes, key_pos: tuple[int, ...]) -> None:
    """Both return the same, or both raise the same class (and, for ValueError, the same
    message: a well-formed message has no truncation to be reported differently)."""
    c = c_change()
    try:
        py = py_change(data, key_pos)
    except (ValueError, IndexError, TypeError) as err:
        with pytest.raises(type(err)) as c_err:
            c(data, key_pos)
        if isinstance(err, ValueError):
            assert str(c_err.value) == str(err)
        return
    got = c(data, key_pos)
    assert got == py
    assert type(got) is tuple and len(got) == 7
    assert type(got[0]) is int and type(got[1]) is str and type(got[6]) is int
    for i in (2, 3):
        assert got[i] is None or type(got[i]) is bytes
    for i in (4, 5):
        k = got[i]
        assert k is None or (type(k) is tuple and all(type(v) is bytes for v in k))


def test_the_module_uses_the_c_change_when_built() -> None:
    assert pgoutput.change is c_change()


@pytest.mark.parametrize("seed", range(20))
def test_random_changes_agree(seed: int) -> None:
    rng = random.Random(5000 + seed)
    for _ in range(200):
        data, key_pos = random_change(rng)
        check_change_same(data, key_pos)


@pytest.mark.parametrize("kind", ["I", "U-none", "U-O", "U-K", "D-O", "D-K"])
def test_valid_changes_give_the_expected_lines(kind: str) -> None:
    rng = random.Random(kind)
    for _ in range(50):
        n = rng.choice([0, 1, 5, 30])
        k, _, tag = kind.partition("-")
        tag = "" if tag == "none" else tag
        old = without_unchanged(rng, random_columns(rng, n)) if tag else None
        new = None if k == "D" else random_columns(rng, n)
        if new is not None and old is None:
            new = without_unchanged(rng, new)
        key = random_key_pos(rng, n)
        data = change_message(k, 77, old, new, tag)
        want = expected_change(k, 77, old, new, tag, key)
        assert py_change(data, key) == want
        assert c_change()(data, key) == want


@pytest.mark.parametrize("n", [0, 1600])
def test_change_of_zero_and_1600_columns(n: int) -> None:
    rng = random.Random(n + 1)
    for kind in ("I", "U", "D"):
        old = without_unchanged(rng, random_columns(rng, n))
        new = random_columns(rng, n) if kind != "D" else None
        data = change_message(kind, 9, None if kind == "I" else old, new)
        if kind == "I":
            assert new is not None
            data = change_message(kind, 9, None, without_unchanged(rng, new))
        key = random_key_pos(rng, n) + ((n - 1, 0, n // 2) if n else ())
        check_change_same(data, key)
        got = c_change()(data, key)
        assert got[6] == n
        line = got[3] if got[3] is not None else got[2]
        # Escaped fields hold no raw tab: the tabs are exactly the separators.
        assert line is not None and line.count(b"\t") == max(n - 1, 0)


@pytest.mark.parametrize("specials", [False, True], ids=["plain", "escaped"])
def test_change_with_values_of_several_megabytes(specials: bool) -> None:
    rng = random.Random(4)
    alphabet = b"abcdef\\\t\n\r\xc3\xa9" if specials else b"abcdef0123456789"
    big = bytes(rng.choice(alphabet) for _ in range(3_000_000))
    old: list[Column] = [("t", b"1"), ("t", big), ("t", big[:2_000_000]), ("n", None)]
    new: list[Column] = [("t", b"1"), ("u", None), ("t", big[7:]), ("u", None)]
    data = change_message("U", 5, old, new)
    for key in [(), (1,), (2, 0)]:
        check_change_same(data, key)
    key = (3, 1, 2)  # the independent expectation is slow on MBs: once
    assert c_change()(data, key) == expected_change("U", 5, old, new, "O", key)
    check_change_same(change_message("I", 5, None, old), (1,))
    check_change_same(change_message("D", 5, old, None, "K"), (2,))


def test_change_escapes_nulls_and_empty_strings() -> None:
    cols: list[Column] = [("t", bytes([b])) for b in _SPECIALS]
    cols += [("t", _SPECIALS * 3), ("t", b"\\N"), ("t", b""), ("n", None), ("t", b"")]
    key = (5, 6, 7)
    got = c_change()(change_message("I", 1, None, cols), key)
    assert got[3] == b"\\\\\t\\t\t\\n\t\\r\t" + b"\\\\\\t\\n\\r" * 3 + b"\t\\\\N\t\t\\N\t"
    assert got[5] == (b"\\\\N", b"", b"\\N")  # a text "\N" is not NULL
    check_change_same(change_message("U", 1, cols, cols[::-1]), key)
    check_change_same(change_message("D", 1, cols, None), key)


def test_unchanged_values_come_from_the_old_row_key_fields_too() -> None:
    old: list[Column] = [("t", b"k\t1"), ("t", b"big\\"), ("n", None)]
    new: list[Column] = [("u", None), ("u", None), ("u", None)]
    got = c_change()(change_message("U", 3, old, new), (0, 1, 2))
    assert got == (
        3,
        "O",
        b"k\\t1\tbig\\\\\t\\N",
        b"k\\t1\tbig\\\\\t\\N",
        (b"k\\t1", b"big\\\\", b"\\N"),
        (b"k\\t1", b"big\\\\", b"\\N"),
        3,
    )
    check_change_same(change_message("U", 3, old, new), (0, 1, 2))


def test_a_delete_keeps_its_tag_as_it_came() -> None:
    # The reference returns chr(data[5]) for a DELETE, whatever the byte.
    for tag in (b"O", b"K", b"N", b"\x00", b"\xe9"):
        data = b"D" + struct.pack(">I", 1) + tag + encode([("t", b"a")])
        check_change_same(data, (0,))
        assert c_change()(data, (0,))[1] == chr(tag[0])


def test_an_update_with_another_tag_has_no_old_row() -> None:
    # Only 'K' and 'O' announce an old row; anything else is where the new row starts.
    data = b"U" + struct.pack(">I", 1) + b"X" + encode([("t", b"a")])
    check_change_same(data, (0,))
    assert c_change()(data, (0,)) == (1, "", None, b"a", None, (b"a",), 1)


@pytest.mark.parametrize(
    "data",
    [
        change_message("I", 1, None, [("t", b"a"), ("u", None)]),
        change_message("U", 1, None, [("u", None)]),
        change_message("U", 1, [("t", b"a"), ("u", None)], [("t", b"b"), ("t", b"c")]),
        change_message("U", 1, [("u", None)], [("u", None)]),
        change_message("D", 1, [("t", b"a"), ("u", None)], None, "K"),
        change_message("U", 1, [("t", b"a")], [("t", b"a"), ("t", b"b")]),
        change_message("U", 1, [("t", b"a"), ("u", None)], [("t", b"a")], "K"),
        change_message("U", 1, [("t", b"a"), ("x", None)], [("t", b"a")]),
        change_message("U", 1, [("t", b"a")], [("b", None)]),
        b"B" + bytes(20),
        b"C" + bytes(25),
        b"R\x00\x00\x00\x01public\x00t\x00d\x00\x00",
        b"\x00" * 6,
        b"\xff" * 10,
    ],
)
def test_invalid_changes_raise_the_same_value_error(data: bytes) -> None:
    with pytest.raises(ValueError) as py_err:
        py_change(data, (0,))
    with pytest.raises(ValueError) as c_err:
        c_change()(data, (0,))
    assert str(c_err.value) == str(py_err.value)


@pytest.mark.parametrize("key_pos", [(2,), (0, 5), (-3,), (1, 0, 99), (2**40,), (2**70,)])
def test_key_positions_out_of_range_raise_index_error(key_pos: tuple[int, ...]) -> None:
    for data in (
        change_message("I", 1, None, [("t", b"a"), ("n", None)]),
        change_message("U", 1, [("t", b"a"), ("n", None)], [("t", b"b"), ("u", None)]),
        change_message("D", 1, [("t", b"a"), ("n", None)], None),
    ):
        with pytest.raises(IndexError):
            py_change(data, key_pos)
        with pytest.raises(IndexError):
            c_change()(data, key_pos)
    # Any position is out of range in a row of no columns.
    with pytest.raises(IndexError):
        c_change()(change_message("I", 1, None, []), (0,))


def test_value_errors_come_before_the_index_error() -> None:
    data = change_message("U", 1, [("t", b"a")], [("t", b"a"), ("t", b"b")])
    for fn in (py_change, c_change()):
        with pytest.raises(ValueError, match="number of columns"):
            fn(data, (9,))


def test_change_bad_arguments() -> None:
    c = c_change()
    data = change_message("U", 1, [("t", b"a\tb"), ("n", None)], [("t", b"c"), ("u", None)])
    with pytest.raises(TypeError):
        c(data, ("0",))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        c(data, (0.0,))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        c(data, 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        c("U", ())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        c(data)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        c(data, (), ())  # type: ignore[call-arg]
    want = py_change(data, (1, 0))
    assert want == (1, "O", b"a\\tb\t\\N", b"c\t\\N", (b"\\N", b"a\\tb"), (b"\\N", b"c"), 2)
    # Any buffer is read; any sequence of int-like positions is taken.
    for buf in (bytearray(data), memoryview(data)):
        assert c(buf, (1, 0)) == want  # type: ignore[arg-type]
    assert c(data, [1, 0]) == want  # type: ignore[arg-type]
    assert c(data, (True, False)) == want
    assert c(data, tuple(range(2)) * 20) == py_change(data, tuple(range(2)) * 20)


@pytest.mark.parametrize(
    ("data", "py_error"),
    [
        (b"", IndexError),  # no kind byte
        (b"I\x00\x00", struct.error),  # no whole relid
        (b"B\x00", struct.error),  # the relid is read before the kind is checked
        (b"U\x00\x00\x00\x01", IndexError),  # no old-row tag
        (b"D\x00\x00\x00\x01", IndexError),
        (b"I\x00\x00\x00\x01", struct.error),  # no column count
        (b"I\x00\x00\x00\x01N\x00", struct.error),
        (b"I\x00\x00\x00\x01N\x00\x01", IndexError),  # no column kind
        (b"I\x00\x00\x00\x01N\x00\x01t\x00\x00", struct.error),  # no whole length
        (b"U\x00\x00\x00\x01O\x00\x01n", struct.error),  # no new row after the old
        (b"U\x00\x00\x00\x01K\x00\x01nN\x00\x02n", IndexError),
        (b"D\x00\x00\x00\x01K\x00\x02t\x00\x00\x00\x01a", IndexError),
    ],
)
def test_short_buffers_are_value_errors_in_c(data: bytes, py_error: type[Exception]) -> None:
    with pytest.raises(py_error):
        py_change(data, ())
    with pytest.raises(ValueError, match="truncated"):
        c_change()(data, ())


def test_a_cut_inside_the_last_value_is_noticed() -> None:
    # The reference returns the short value; C sees the length pass the end.
    data = change_message("I", 1, None, [("t", b"abc"), ("t", b"defgh")])[:-2]
    assert py_change(data, (1,))[3] == b"abc\tdef"
    with pytest.raises(ValueError, match="truncated"):
        c_change()(data, (1,))


def change_truncations(data: bytes) -> list[int]:
    if len(data) <= 300:
        return list(range(len(data)))
    rng = random.Random(len(data))
    return sorted({0, 1, 4, 5, 6, len(data) - 1, *rng.sample(range(len(data)), 200)})


@pytest.mark.parametrize("seed", range(10))
def test_truncated_changes_raise_value_error(seed: int) -> None:
    """Every cut of a whole message: ValueError from C; the reference raises
    struct.error or IndexError, or returns a short last value."""
    rng = random.Random(6000 + seed)
    c = c_change()
    for _ in range(15):
        data, key_pos = random_change(rng, rng.choice([0, 1, 3, 8]))
        try:
            py_change(data, key_pos)
        except (ValueError, IndexError):
            continue  # not a valid message to begin with
        full, end = py_change(data, ()), len(data)
        while end > 0:  # drop the trailing bytes nobody reads: the message ends at `end`
            try:
                if py_change(data[: end - 1], ()) != full:
                    break
            except (ValueError, IndexError, struct.error):
                break
            end -= 1
        for cut in change_truncations(data[:end]):
            with pytest.raises(ValueError, match="truncated"):
                c(data[:cut], key_pos)
            try:
                py_change(data[:cut], ())
            except (ValueError, IndexError, struct.error):
                pass


def check_corrupt(data: bytes, key_pos: tuple[int, ...]) -> None:
    """Any input: where the reference's answer is complete (bytes appended after the
    message change nothing) C gives the same; otherwise C raises ValueError."""
    c = c_change()
    exceptions = (ValueError, IndexError, struct.error)
    try:
        py: Change | None = py_change(data, key_pos)
    except exceptions:
        py = None
    try:
        padded: Change | None = py_change(data + b"\x00" * 8, key_pos)
    except exceptions:
        padded = None
    if py is not None and py == padded:
        assert c(data, key_pos) == py
    else:
        with pytest.raises(ValueError):
            c(data, key_pos)


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from([b"I", b"U", b"D"]),
    st.sampled_from([b"", b"O", b"K", b"N"]),
    st.binary(max_size=60),
)
def test_change_of_arbitrary_bytes(kind: bytes, tag: bytes, rest: bytes) -> None:
    check_corrupt(kind + b"\x00\x00\x00\x01" + tag + rest, ())


@pytest.mark.parametrize("seed", range(5))
def test_corrupted_changes(seed: int) -> None:
    rng = random.Random(7000 + seed)
    for _ in range(300):
        data, _key = random_change(rng, rng.choice([1, 2, 5]))
        mutated = bytearray(data)
        for _ in range(rng.choice([1, 2, 3])):
            mutated[rng.randrange(len(mutated))] = rng.choice(
                [0, 1, 0x74, 0x6E, 0x75, 0xFF, rng.randrange(256)]
            )
        check_corrupt(bytes(mutated), ())


def test_change_no_leak_on_success_or_error_paths() -> None:
    c = c_change()
    rng = random.Random(8)
    wide_old = without_unchanged(rng, random_columns(rng, 100))  # past the stack arrays
    wide_new = random_columns(rng, 100)
    good = [
        (change_message("U", 1, wide_old, wide_new), (0, 50, 99)),
        (change_message("U", 1, wide_old, wide_new), tuple(range(40))),
        (change_message("I", 1, None, [("t", b"a\tb" * 100), ("n", None)]), (0,)),
        (change_message("D", 2**32 - 1, [("t", b"x" * 500)], None, "K"), ()),
    ]
    bad: list[tuple[bytes, Any]] = [
        (change_message("U", 1, wide_old, wide_new), (0, 100)),  # IndexError after the lines
        (change_message("U", 1, wide_old, wide_new), tuple(range(40)) + (-101,)),
        (change_message("U", 1, wide_old, wide_new), (0, "x")),  # TypeError
        (change_message("U", 1, wide_new, wide_old), (0,)),  # 'u' in the old row
        (change_message("U", 1, wide_old, wide_new)[:-3], (0,)),  # truncated new row
        (change_message("U", 1, wide_old, wide_new[:99]), (0,)),  # column counts
        (change_message("I", 1, None, wide_new), (0,)),  # 'u' without the old row
        (b"B" + bytes(20), ()),
    ]

    def run() -> None:
        for _ in range(300):
            for data, key in good:
                c(data, key)
            for data, bad_key in bad:
                try:
                    c(data, bad_key)
                except (ValueError, IndexError, TypeError):
                    pass

    run()  # warm up (caches, freelists)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        run()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 100_000


def test_change_refcounts_of_the_shared_objects() -> None:
    import sys

    c = c_change()
    data = change_message("U", 1, [("t", b"a"), ("n", None)], [("t", b"b"), ("u", None)])
    key = (1, 0)
    null = c(data, key)[3]
    assert null is not None
    before = sys.getrefcount(key), sys.getrefcount(data), sys.getrefcount("O")
    for _ in range(1000):
        c(data, key)
        try:
            c(data, (5,))
        except IndexError:
            pass
    assert (sys.getrefcount(key), sys.getrefcount(data), sys.getrefcount("O")) == before


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
