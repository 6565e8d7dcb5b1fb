/* Native helpers for fusevol's block hot path (fusevol/native.py has the pure-Python twins).
 *
 * is_zero(buffer) -> bool: whether every byte of a buffer is zero. write_blocks asks it of
 * every block it stores (an all-zero block becomes a hole), so it runs over every byte
 * written. bytes.count(0) scans the whole block, always, holding the GIL; this stops at
 * the first non-zero byte, lets libc's vectorised memcmp do the scan, and lets the other
 * thread of the worker run while it scans a large block.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define HEAD 16                       /* bytes checked one by one before memcmp */
#define RELEASE_GIL_FROM (16 * 1024)  /* below this, releasing the GIL costs more than it buys */

static int
all_zero(const unsigned char *p, Py_ssize_t n)
{
    Py_ssize_t head = n < HEAD ? n : HEAD;
    for (Py_ssize_t i = 0; i < head; i++)
        if (p[i])
            return 0;
    /* The first HEAD bytes are zero, so the rest is zero iff it equals itself shifted by HEAD. */
    return n <= HEAD || memcmp(p, p + HEAD, (size_t)(n - HEAD)) == 0;
}

static PyObject *
is_zero(PyObject *self, PyObject *arg)
{
    Py_buffer view;
    int zero;

    if (PyObject_GetBuffer(arg, &view, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    if (view.len >= RELEASE_GIL_FROM && ((const unsigned char *)view.buf)[0] == 0) {
        Py_BEGIN_ALLOW_THREADS
        zero = all_zero(view.buf, view.len);
        Py_END_ALLOW_THREADS
    } else {
        zero = all_zero(view.buf, view.len);
    }
    PyBuffer_Release(&view);
    return PyBool_FromLong(zero);
}

static PyMethodDef methods[] = {
    {"is_zero", is_zero, METH_O, "is_zero(buffer) -> bool: every byte of the buffer is zero."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fusevol_native", "Native helpers for fusevol's block hot path.",
    -1, methods,
};

PyMODINIT_FUNC
PyInit__fusevol_native(void)
{
    return PyModule_Create(&module);
}
