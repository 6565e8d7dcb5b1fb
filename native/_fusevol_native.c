/* Native helpers for fusevol's block hot path (fusevol/native.py has the pure-Python twins).
 *
 * is_zero(buffer) -> bool: whether every byte of a buffer is zero. write_blocks asks it of
 * every block it stores (an all-zero block becomes a hole), so it runs over every byte
 * written. bytes.count(0) scans the whole block, always, holding the GIL; this stops at
 * the first non-zero byte, lets libc's vectorised memcmp do the scan, and lets the other
 * thread of the worker run while it scans a large block.
 *
 * populate(map, offset, length): the pages of map[offset:offset + length] (a file's map)
 * read and mapped in one madvise(MADV_POPULATE_READ), without the GIL: the call waits for
 * the disk, and mmap.madvise holds the GIL through it (every other thread of the worker
 * stopped meanwhile).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

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

static PyObject *
populate(PyObject *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t offset, length;
    int rc, err = 0;

    if (!PyArg_ParseTuple(args, "y*nn", &view, &offset, &length))
        return NULL;
    if (offset < 0 || length < 0 || offset > view.len || length > view.len - offset) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "populate: range outside the buffer");
        return NULL;
    }
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t first = (uintptr_t)view.buf + (uintptr_t)offset;
    uintptr_t start = first & ~(page - 1);
    size_t span = (size_t)(first + (uintptr_t)length - start);
    Py_BEGIN_ALLOW_THREADS
    rc = length ? madvise((void *)start, span, MADV_POPULATE_READ) : 0;
    if (rc)
        err = errno;
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    if (rc) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"is_zero", is_zero, METH_O, "is_zero(buffer) -> bool: every byte of the buffer is zero."},
    {"populate", populate, METH_VARARGS,
     "populate(map, offset, length): read and map the pages of map[offset:offset + length]."},
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
