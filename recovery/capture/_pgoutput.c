/* The hot loops of pgoutput.py, in C: `tuple_values(data, pos)` and
 * `change(data, key_pos)`.
 *
 * Reads one pgoutput TupleData (Int16 column count, then per column a kind
 * byte: 't' Int32 length + text, 'n' NULL, 'u' unchanged TOAST) and returns
 * (values, offset_after).  Each value is already in COPY text form: escaped,
 * b"\\N" for NULL, None for unchanged TOAST.  pgoutput._py_tuple_values is
 * the reference; the results must be identical byte for byte.
 *
 * One deliberate difference: every read is bounds-checked, so a truncated
 * buffer always raises ValueError (the Python version returns a short last
 * value when only the final text value is cut off), and a negative `pos`
 * is rejected instead of being counted from the end.
 *
 * change() (reference: pgoutput._py_change) reads a whole I/U/D message and
 * builds each row's COPY line straight into one bytes object: the fields are
 * first scanned into a small array of (pointer, length, escaped length)
 * without any Python object, then the line is allocated at its exact size
 * and filled.  Only the key fields become bytes objects of their own.
 * Truncated or corrupt input is always ValueError (never IndexError or
 * struct.error as in the reference), and nothing is read out of bounds.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    PyObject *null_field; /* b"\\N", shared by every NULL column */
    PyObject *kind_o;     /* "O" */
    PyObject *kind_k;     /* "K" */
    PyObject *kind_none;  /* "" */
} module_state;

/* The second byte of the COPY text escape for each byte that needs one, else 0. */
static const unsigned char escape_char[256] = {
    ['\\'] = '\\', ['\n'] = 'n', ['\r'] = 'r', ['\t'] = 't',
};

static inline uint32_t
read_u32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8)
           | (uint32_t)p[3];
}

/* Signed like the ">h" of the Python version. */
static inline int16_t
read_i16(const unsigned char *p)
{
    return (int16_t)(((uint16_t)p[0] << 8) | p[1]);
}

/* How many bytes of src[0:len] need a COPY escape (each becomes two). */
static inline Py_ssize_t
count_escapes(const unsigned char *src, Py_ssize_t len)
{
    Py_ssize_t extra = 0;
    for (Py_ssize_t i = 0; i < len; i++)
        extra += escape_char[src[i]] != 0;
    return extra;
}

/* Write the COPY escape of src[0:len] at dst; returns the end of what was written. */
static inline char *
escape_into(char *dst, const unsigned char *src, Py_ssize_t len)
{
    for (Py_ssize_t i = 0; i < len; i++) {
        unsigned char c = src[i];
        if (escape_char[c]) {
            *dst++ = '\\';
            *dst++ = (char)escape_char[c];
        }
        else {
            *dst++ = (char)c;
        }
    }
    return dst;
}

static PyObject *
truncated(Py_ssize_t at)
{
    PyErr_Format(PyExc_ValueError, "pgoutput: truncated TupleData at offset %zd", at);
    return NULL;
}

/* A COPY text field for src[0:len]: one copy when nothing needs escaping
 * (the common case), else the escaped length is counted first so the
 * result is allocated once and filled in a single pass. */
static PyObject *
copy_field(const unsigned char *src, Py_ssize_t len)
{
    Py_ssize_t extra = count_escapes(src, len);
    if (extra == 0)
        return PyBytes_FromStringAndSize((const char *)src, len);
    /* extra <= len and len < 2**32, so len + extra cannot overflow. */
    PyObject *out = PyBytes_FromStringAndSize(NULL, len + extra);
    if (out == NULL)
        return NULL;
    escape_into(PyBytes_AS_STRING(out), src, len);
    return out;
}

static PyObject *
parse_tuple(module_state *st, const unsigned char *buf, Py_ssize_t size, Py_ssize_t pos)
{
    if (pos < 0) {
        PyErr_SetString(PyExc_ValueError, "pgoutput: negative TupleData offset");
        return NULL;
    }
    if (pos > size || size - pos < 2)
        return truncated(pos);
    /* Signed like the ">h" of the Python version: a negative count is no columns. */
    int16_t n = read_i16(buf + pos);
    pos += 2;

    PyObject *values = PyList_New(n > 0 ? n : 0);
    if (values == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v;
        if (pos >= size)
            goto fail_truncated;
        unsigned char kind = buf[pos++];
        if (kind == 't') {
            if (size - pos < 4)
                goto fail_truncated;
            uint32_t ln = read_u32(buf + pos);
            pos += 4;
            /* Compare against what is left, never pos + ln (could overflow on 32-bit). */
            if ((uint64_t)ln > (uint64_t)(size - pos))
                goto fail_truncated;
            v = copy_field(buf + pos, (Py_ssize_t)ln);
            if (v == NULL)
                goto fail;
            pos += (Py_ssize_t)ln;
        }
        else if (kind == 'n') {
            v = Py_NewRef(st->null_field);
        }
        else if (kind == 'u') {
            v = Py_NewRef(Py_None);
        }
        else {
            /* Same message as the Python version: chr(kind)!r. */
            PyObject *ch = PyUnicode_FromOrdinal(kind);
            if (ch != NULL) {
                PyErr_Format(PyExc_ValueError, "pgoutput: unexpected column kind %R", ch);
                Py_DECREF(ch);
            }
            goto fail;
        }
        /* Steals v; the slots not yet filled are NULL, which list dealloc skips. */
        PyList_SET_ITEM(values, i, v);
    }
    PyObject *next = PyLong_FromSsize_t(pos);
    if (next == NULL)
        goto fail;
    PyObject *result = PyTuple_Pack(2, values, next);
    Py_DECREF(values);
    Py_DECREF(next);
    return result;

fail_truncated:
    truncated(pos);
fail:
    Py_DECREF(values);
    return NULL;
}

static PyObject *
tuple_values(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "tuple_values() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    /* __index__ like struct's offset; out-of-range ints clamp and then fail the bounds check. */
    Py_ssize_t pos = PyNumber_AsSsize_t(args[1], NULL);
    if (pos == -1 && PyErr_Occurred())
        return NULL;
    module_state *st = (module_state *)PyModule_GetState(module);
    if (PyBytes_CheckExact(args[0]))  /* the usual caller: no buffer export needed */
        return parse_tuple(st, (const unsigned char *)PyBytes_AS_STRING(args[0]),
                           PyBytes_GET_SIZE(args[0]), pos);
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *r = parse_tuple(st, (const unsigned char *)view.buf, view.len, pos);
    PyBuffer_Release(&view);
    return r;
}

/* --- change(data, key_pos) ------------------------------------------------ */

/* One field of a row as change() scans it: where its raw bytes are (in the
 * message, or null_text for a NULL; p == NULL for an unchanged TOAST value),
 * how many, and how long the field is once COPY-escaped. */
typedef struct {
    const unsigned char *p;
    Py_ssize_t len;
    Py_ssize_t out_len;
} field;

static const unsigned char null_text[2] = {'\\', 'N'};

/* Rows up to this many columns need no heap allocation at all. */
#define STACK_FIELDS 64

typedef struct {
    field *f; /* stack, or PyMem_Malloc'ed when n > STACK_FIELDS */
    Py_ssize_t n;
    int has_unchanged;
    field stack[STACK_FIELDS];
} row;

static void
row_init(row *r)
{
    r->f = r->stack;
    r->n = 0;
    r->has_unchanged = 0;
}

static void
row_free(row *r)
{
    if (r->f != r->stack)
        PyMem_Free(r->f);
    r->f = r->stack;
}

/* Scan the TupleData at *ppos into r (no Python objects), advancing *ppos past
 * it.  The same reading as parse_tuple, so the same errors in the same order. */
static int
scan_row(row *r, const unsigned char *buf, Py_ssize_t size, Py_ssize_t *ppos)
{
    Py_ssize_t pos = *ppos;
    if (pos > size || size - pos < 2) {
        truncated(pos);
        return -1;
    }
    int16_t n = read_i16(buf + pos);
    pos += 2;
    r->n = n > 0 ? n : 0;
    r->has_unchanged = 0;
    if (r->n > STACK_FIELDS) {
        r->f = PyMem_Malloc((size_t)r->n * sizeof(field));
        if (r->f == NULL) {
            r->f = r->stack;
            PyErr_NoMemory();
            return -1;
        }
    }
    for (Py_ssize_t i = 0; i < r->n; i++) {
        field *f = &r->f[i];
        if (pos >= size)
            goto fail_truncated;
        unsigned char kind = buf[pos++];
        if (kind == 't') {
            if (size - pos < 4)
                goto fail_truncated;
            uint32_t ln = read_u32(buf + pos);
            pos += 4;
            if ((uint64_t)ln > (uint64_t)(size - pos))
                goto fail_truncated;
            f->p = buf + pos;
            f->len = (Py_ssize_t)ln;
            f->out_len = f->len + count_escapes(f->p, f->len);
            pos += f->len;
        }
        else if (kind == 'n') {
            f->p = null_text;
            f->len = f->out_len = 2;
        }
        else if (kind == 'u') {
            f->p = NULL;
            f->len = f->out_len = 0;
            r->has_unchanged = 1;
        }
        else {
            PyObject *ch = PyUnicode_FromOrdinal(kind);
            if (ch != NULL) {
                PyErr_Format(PyExc_ValueError, "pgoutput: unexpected column kind %R", ch);
                Py_DECREF(ch);
            }
            return -1;
        }
    }
    *ppos = pos;
    return 0;

fail_truncated:
    truncated(pos);
    return -1;
}

/* The row's fields, escaped, joined by tabs: sized first, then filled. */
static PyObject *
build_line(const row *r)
{
    Py_ssize_t total = r->n > 0 ? r->n - 1 : 0;
    for (Py_ssize_t i = 0; i < r->n; i++) {
        if (r->f[i].out_len > PY_SSIZE_T_MAX - total)
            return PyErr_NoMemory();
        total += r->f[i].out_len;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL)
        return NULL;
    char *d = PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < r->n; i++) {
        const field *f = &r->f[i];
        if (i > 0)
            *d++ = '\t';
        if (f->out_len == f->len) {
            memcpy(d, f->p, (size_t)f->len);
            d += f->len;
        }
        else {
            d = escape_into(d, f->p, f->len);
        }
    }
    return out;
}

static PyObject *
build_key(module_state *st, const row *r, const Py_ssize_t *idx, Py_ssize_t k)
{
    PyObject *key = PyTuple_New(k);
    if (key == NULL)
        return NULL;
    for (Py_ssize_t j = 0; j < k; j++) {
        const field *f = &r->f[idx[j]];
        PyObject *v;
        if (f->p == null_text) {
            v = Py_NewRef(st->null_field);
        }
        else {
            v = PyBytes_FromStringAndSize(NULL, f->out_len);
            if (v == NULL) {
                Py_DECREF(key);
                return NULL;
            }
            if (f->out_len == f->len)
                memcpy(PyBytes_AS_STRING(v), f->p, (size_t)f->len);
            else
                escape_into(PyBytes_AS_STRING(v), f->p, f->len);
        }
        PyTuple_SET_ITEM(key, j, v);
    }
    return key;
}

/* key_pos as indexes into a row of n columns: negative ones count from the
 * end, like the reference's list indexing; out of range is IndexError. */
static int
resolve_keys(Py_ssize_t n, Py_ssize_t *idx, Py_ssize_t k, PyObject *const *items)
{
    for (Py_ssize_t j = 0; j < k; j++) {
        Py_ssize_t i;
        PyObject *item = items[j];
        if (PyLong_CheckExact(item)) {
            i = PyLong_AsSsize_t(item);
            if (i == -1 && PyErr_Occurred()) {
                if (!PyErr_ExceptionMatches(PyExc_OverflowError))
                    return -1;
                PyErr_Clear();
                goto out_of_range;
            }
        }
        else {
            i = PyNumber_AsSsize_t(item, PyExc_IndexError);
            if (i == -1 && PyErr_Occurred())
                return -1;
        }
        if (i < 0)
            i += n;
        if (i < 0 || i >= n)
            goto out_of_range;
        idx[j] = i;
    }
    return 0;

out_of_range:
    PyErr_SetString(PyExc_IndexError, "list index out of range");
    return -1;
}

#define STACK_KEYS 16

static PyObject *
change_impl(module_state *st, const unsigned char *buf, Py_ssize_t size, PyObject *key_pos)
{
    row old, new_;
    int has_old = 0, has_new = 0;
    PyObject *old_kind = NULL, *old_line = NULL, *new_line = NULL;
    PyObject *old_key = NULL, *new_key = NULL, *seq = NULL, *result = NULL;
    Py_ssize_t idx_stack[STACK_KEYS], *idx = idx_stack;
    Py_ssize_t pos = 6;

    row_init(&old);
    row_init(&new_);
    if (size < 5)
        return truncated(size);
    unsigned char kind = buf[0];
    uint32_t relid = read_u32(buf + 1);
    if (kind == 'I') {
        old_kind = Py_NewRef(st->kind_none);
        has_new = 1;
        if (scan_row(&new_, buf, size, &pos) < 0)
            goto done;
    }
    else if (kind == 'U' || kind == 'D') {
        if (size < 6) {
            truncated(size);
            goto done;
        }
        unsigned char tag = buf[5];
        if (tag == 'O')
            old_kind = Py_NewRef(st->kind_o);
        else if (tag == 'K')
            old_kind = Py_NewRef(st->kind_k);
        else if (kind == 'U')
            old_kind = Py_NewRef(st->kind_none);
        else /* a DELETE's tag as it came, like the reference's chr(data[5]) */
            old_kind = PyUnicode_FromOrdinal(tag);
        if (old_kind == NULL)
            goto done;
        if (kind == 'D' || tag == 'O' || tag == 'K') {
            has_old = 1;
            if (scan_row(&old, buf, size, &pos) < 0)
                goto done;
        }
        if (kind == 'U') {
            if (has_old)
                pos += 1; /* the 'N' before the new row */
            has_new = 1;
            if (scan_row(&new_, buf, size, &pos) < 0)
                goto done;
        }
    }
    else {
        PyObject *ch = PyUnicode_FromOrdinal(kind);
        if (ch != NULL) {
            PyErr_Format(PyExc_ValueError, "pgoutput: not a change message: %R", ch);
            Py_DECREF(ch);
        }
        return NULL;
    }

    if (has_old && has_new && old.n != new_.n) {
        PyErr_SetString(PyExc_ValueError,
                        "pgoutput: old and new rows differ in their number of columns");
        goto done;
    }
    if (has_new && new_.has_unchanged && !has_old) {
        PyErr_SetString(PyExc_ValueError,
                        "pgoutput: an unchanged TOAST value without the old row");
        goto done;
    }
    if (has_old && old.has_unchanged) {
        PyErr_SetString(PyExc_ValueError, "pgoutput: an unchanged TOAST value in an old row");
        goto done;
    }
    if (has_new && new_.has_unchanged) {
        for (Py_ssize_t i = 0; i < new_.n; i++)
            if (new_.f[i].p == NULL)
                new_.f[i] = old.f[i];
    }
    if (has_old && (old_line = build_line(&old)) == NULL)
        goto done;
    if (has_new && (new_line = build_line(&new_)) == NULL)
        goto done;

    Py_ssize_t ncols = has_new ? new_.n : old.n;
    PyObject *const *items;
    Py_ssize_t k;
    if (PyTuple_CheckExact(key_pos)) {
        items = &PyTuple_GET_ITEM(key_pos, 0);
        k = PyTuple_GET_SIZE(key_pos);
    }
    else {
        /* A tuple of our own (not PySequence_Fast's borrowed list items), so the
         * positions cannot change under us, with or without a GIL. */
        seq = PySequence_Tuple(key_pos);
        if (seq == NULL)
            goto done;
        items = &PyTuple_GET_ITEM(seq, 0);
        k = PyTuple_GET_SIZE(seq);
    }
    if (k > STACK_KEYS) {
        idx = PyMem_Malloc((size_t)k * sizeof(Py_ssize_t));
        if (idx == NULL) {
            idx = idx_stack;
            PyErr_NoMemory();
            goto done;
        }
    }
    if (resolve_keys(ncols, idx, k, items) < 0)
        goto done;
    if (has_old && (old_key = build_key(st, &old, idx, k)) == NULL)
        goto done;
    if (has_new && (new_key = build_key(st, &new_, idx, k)) == NULL)
        goto done;

    PyObject *relid_obj = PyLong_FromUnsignedLong(relid);
    if (relid_obj == NULL)
        goto done;
    PyObject *ncols_obj = PyLong_FromSsize_t(ncols);
    if (ncols_obj == NULL) {
        Py_DECREF(relid_obj);
        goto done;
    }
    result = PyTuple_New(7);
    if (result == NULL) {
        Py_DECREF(relid_obj);
        Py_DECREF(ncols_obj);
        goto done;
    }
#define TAKE(i, v)                                                                 \
    do {                                                                           \
        PyTuple_SET_ITEM(result, i, (v) != NULL ? (v) : Py_NewRef(Py_None));       \
        (v) = NULL;                                                                \
    } while (0)
    PyTuple_SET_ITEM(result, 0, relid_obj);
    TAKE(1, old_kind);
    TAKE(2, old_line);
    TAKE(3, new_line);
    TAKE(4, old_key);
    TAKE(5, new_key);
    PyTuple_SET_ITEM(result, 6, ncols_obj);
#undef TAKE

done:
    row_free(&old);
    row_free(&new_);
    if (idx != idx_stack)
        PyMem_Free(idx);
    Py_XDECREF(seq);
    Py_XDECREF(old_kind);
    Py_XDECREF(old_line);
    Py_XDECREF(new_line);
    Py_XDECREF(old_key);
    Py_XDECREF(new_key);
    return result;
}

static PyObject *
change(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "change() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    module_state *st = (module_state *)PyModule_GetState(module);
    if (PyBytes_CheckExact(args[0]))
        return change_impl(st, (const unsigned char *)PyBytes_AS_STRING(args[0]),
                           PyBytes_GET_SIZE(args[0]), args[1]);
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *r = change_impl(st, (const unsigned char *)view.buf, view.len, args[1]);
    PyBuffer_Release(&view);
    return r;
}

static PyMethodDef methods[] = {
    {"tuple_values", (PyCFunction)(void (*)(void))tuple_values, METH_FASTCALL,
     "tuple_values(data, pos) -> (values, offset)\n\n"
     "The COPY-text values of the pgoutput TupleData at pos, and the offset after it."},
    {"change", (PyCFunction)(void (*)(void))change, METH_FASTCALL,
     "change(data, key_pos) -> (relid, old_kind, old_line, new_line, old_key, new_key, ncols)\n\n"
     "One pgoutput INSERT/UPDATE/DELETE message as COPY lines and key tuples."},
    {NULL, NULL, 0, NULL},
};

static int
module_exec(PyObject *module)
{
    module_state *st = (module_state *)PyModule_GetState(module);
    st->null_field = PyBytes_FromStringAndSize("\\N", 2);
    st->kind_o = PyUnicode_FromString("O");
    st->kind_k = PyUnicode_FromString("K");
    st->kind_none = PyUnicode_FromString("");
    if (st->null_field == NULL || st->kind_o == NULL || st->kind_k == NULL
        || st->kind_none == NULL)
        return -1;
    return 0;
}

static int
module_traverse(PyObject *module, visitproc visit, void *arg)
{
    module_state *st = (module_state *)PyModule_GetState(module);
    Py_VISIT(st->null_field);
    Py_VISIT(st->kind_o);
    Py_VISIT(st->kind_k);
    Py_VISIT(st->kind_none);
    return 0;
}

static int
module_clear(PyObject *module)
{
    module_state *st = (module_state *)PyModule_GetState(module);
    Py_CLEAR(st->null_field);
    Py_CLEAR(st->kind_o);
    Py_CLEAR(st->kind_k);
    Py_CLEAR(st->kind_none);
    return 0;
}

static void
module_free(void *module)
{
    module_clear((PyObject *)module);
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, module_exec},
#ifdef Py_mod_multiple_interpreters
    /* Per-module state and static read-only tables: safe in subinterpreters. */
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
#ifdef Py_mod_gil
    /* No shared mutable state, so no GIL needed on free-threaded builds. */
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT,
    .m_name = "recovery.capture._pgoutput",
    .m_doc = "C versions of recovery.capture.pgoutput.tuple_values and change.",
    .m_size = sizeof(module_state),
    .m_methods = methods,
    .m_slots = slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC
PyInit__pgoutput(void)
{
    return PyModuleDef_Init(&moduledef);
}
