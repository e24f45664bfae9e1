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

static PyMethodDef methods[] = {
    {"tuple_values", (PyCFunction)(void (*)(void))tuple_values, METH_FASTCALL,
     "tuple_values(data, pos) -> (values, offset)\n\n"
     "The COPY-text values of the pgoutput TupleData at pos, and the offset after it."},
    {NULL, NULL, 0, NULL},
};

static int
module_exec(PyObject *module)
{
    module_state *st = (module_state *)PyModule_GetState(module);
    st->null_field = PyBytes_FromStringAndSize("\\N", 2);
    return st->null_field == NULL ? -1 : 0;
}

static int
module_traverse(PyObject *module, visitproc visit, void *arg)
{
    module_state *st = (module_state *)PyModule_GetState(module);
    Py_VISIT(st->null_field);
    return 0;
}

static int
module_clear(PyObject *module)
{
    module_state *st = (module_state *)PyModule_GetState(module);
    Py_CLEAR(st->null_field);
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
    .m_doc = "C version of recovery.capture.pgoutput.tuple_values.",
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
