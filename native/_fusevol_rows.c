/* Row helpers of the request path in C, each with a pure-Python twin that gives the same
 * answers (tests/test_native.py runs both; FUSEVOL_NATIVE=0 uses the twins).
 *
 * Every small file costs the FUSE thread about 9 inode records decoded, 5 encoded and
 * 2 inodes copied (fusevol/store/schema.py: Inode.unpack, pack, copy), and about 35
 * reads and writes of a change worked out ahead (fusevol/fs/speculate.py: SpecTxn.get,
 * put, delete). Each is a few dictionary operations or one struct, wrapped in Python
 * that costs many times the work itself.
 *
 * InodeCodec(cls, names, unpack, pack, copy): unpack(raw), pack(inode) and copy(inode)
 * for the slots dataclass `cls` (fields `names`, in record order). The common record
 * (fixed form, int64 nanosecond times, exact ints and bytes) is made here, its slots
 * read and written in place; anything else (a short record at rest, wide times, a
 * value out of range, a subclass) goes to the Python function given, which also
 * raises the errors.
 *
 * SpecCore: the base of SpecTxn, holding what its reads and writes touch (cache,
 * writes, reads, seq, _reader), with get, put and delete as speculate.py's twin has
 * them. spec_configure(NeedsStore, WORKER_TABLES, NAME_TABLES) first.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stddef.h>
#include <string.h>

/* ---------------------------------------------------------------- inode records -- */

/* ">IIIIQqqqQQQI32s": mode uid gid nlink size atime mtime ctime rdev parent data_bytes
 * flags tree_id, then the target (schema._INODE). */
#define NFIELDS 14
#define F_TREE 12
#define F_TARGET 13
#define FIXED 108
#define FLAGS_AT 72
#define TREE_AT 76
#define WIDE_TIMES 2u
#define MODE_MAX ((1u << 24) - 1)

static const int offsets[12] = {0, 4, 8, 12, 16, 24, 32, 40, 48, 56, 64, 72};
/* 'I' u32, 'Q' u64, 'q' i64 */
static const char kinds[12] = {'I', 'I', 'I', 'I', 'Q', 'q', 'q', 'q', 'Q', 'Q', 'Q', 'I'};

typedef struct {
    PyObject_HEAD
    PyTypeObject *cls;
    Py_ssize_t slot[NFIELDS]; /* byte offset of each field's slot in an instance */
    PyObject *unpack_slow, *pack_slow, *copy_slow;
    PyObject *no_tree, *empty;
} Codec;

static inline uint32_t rd32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline uint64_t rd64(const unsigned char *p)
{
    return ((uint64_t)rd32(p) << 32) | rd32(p + 4);
}

static inline void wr32(unsigned char *p, uint32_t v)
{
    p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}

static inline void wr64(unsigned char *p, uint64_t v)
{
    wr32(p, (uint32_t)(v >> 32));
    wr32(p + 4, (uint32_t)v);
}

#define SLOT(obj, c, i) (*(PyObject **)((char *)(obj) + (c)->slot[i]))

static int
codec_traverse(Codec *c, visitproc visit, void *arg)
{
    Py_VISIT(c->cls);
    Py_VISIT(c->unpack_slow);
    Py_VISIT(c->pack_slow);
    Py_VISIT(c->copy_slow);
    return 0;
}

static int
codec_clear(Codec *c)
{
    Py_CLEAR(c->cls);
    Py_CLEAR(c->unpack_slow);
    Py_CLEAR(c->pack_slow);
    Py_CLEAR(c->copy_slow);
    Py_CLEAR(c->no_tree);
    Py_CLEAR(c->empty);
    return 0;
}

static void
codec_dealloc(Codec *c)
{
    PyObject_GC_UnTrack(c);
    codec_clear(c);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

static PyObject *
codec_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    PyObject *cls, *names, *unpack_slow, *pack_slow, *copy_slow;
    if (kw != NULL && PyDict_GET_SIZE(kw)) {
        PyErr_SetString(PyExc_TypeError, "InodeCodec takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "O!OOOO:InodeCodec", &PyType_Type, &cls, &names,
                          &unpack_slow, &pack_slow, &copy_slow))
        return NULL;
    PyObject *seq = PySequence_Fast(names, "names must be a sequence");
    if (seq == NULL)
        return NULL;
    if (PySequence_Fast_GET_SIZE(seq) != NFIELDS) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "an inode has %d fields", NFIELDS);
        return NULL;
    }
    Codec *c = (Codec *)type->tp_alloc(type, 0);
    if (c == NULL) {
        Py_DECREF(seq);
        return NULL;
    }
    for (int i = 0; i < NFIELDS; i++) {
        /* Each field must be a slot of cls itself (dataclass(slots=True)). */
        PyObject *d = PyDict_GetItemWithError(((PyTypeObject *)cls)->tp_dict,
                                              PySequence_Fast_GET_ITEM(seq, i));
        if (d == NULL || !Py_IS_TYPE(d, &PyMemberDescr_Type)
                || ((PyMemberDescrObject *)d)->d_member->type != T_OBJECT_EX) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_TypeError, "%R is not a slot of the class",
                             PySequence_Fast_GET_ITEM(seq, i));
            Py_DECREF(seq);
            Py_DECREF(c);
            return NULL;
        }
        c->slot[i] = ((PyMemberDescrObject *)d)->d_member->offset;
    }
    Py_DECREF(seq);
    c->cls = (PyTypeObject *)Py_NewRef(cls);
    c->unpack_slow = Py_NewRef(unpack_slow);
    c->pack_slow = Py_NewRef(pack_slow);
    c->copy_slow = Py_NewRef(copy_slow);
    c->no_tree = PyBytes_FromStringAndSize(NULL, 32);
    c->empty = PyBytes_FromStringAndSize(NULL, 0);
    if (c->no_tree == NULL || c->empty == NULL) {
        Py_DECREF(c);
        return NULL;
    }
    memset(PyBytes_AS_STRING(c->no_tree), 0, 32);
    return (PyObject *)c;
}

static const unsigned char zeros[32];

static PyObject *
codec_unpack(Codec *c, PyObject *raw)
{
    Py_buffer view;
    if (PyObject_GetBuffer(raw, &view, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        return PyObject_CallOneArg(c->unpack_slow, raw);
    }
    const unsigned char *p = view.buf;
    Py_ssize_t n = view.len;
    if (n < FIXED || p[0] != 0 || (rd32(p + FLAGS_AT) & WIDE_TIMES)) {
        /* A short record (at rest), wide times, or not a record: Python's way. */
        PyBuffer_Release(&view);
        return PyObject_CallOneArg(c->unpack_slow, raw);
    }
    PyObject *values[NFIELDS];
    for (int i = 0; i < 12; i++) {
        const unsigned char *at = p + offsets[i];
        switch (kinds[i]) {
        case 'I': values[i] = PyLong_FromUnsignedLong(rd32(at)); break;
        case 'Q': values[i] = PyLong_FromUnsignedLongLong(rd64(at)); break;
        default: values[i] = PyLong_FromLongLong((long long)rd64(at)); break;
        }
        if (values[i] == NULL) {
            for (int j = 0; j < i; j++)
                Py_DECREF(values[j]);
            PyBuffer_Release(&view);
            return NULL;
        }
    }
    values[F_TREE] = memcmp(p + TREE_AT, zeros, 32) == 0
        ? Py_NewRef(c->no_tree) : PyBytes_FromStringAndSize((const char *)p + TREE_AT, 32);
    values[F_TARGET] = n == FIXED
        ? Py_NewRef(c->empty) : PyBytes_FromStringAndSize((const char *)p + FIXED, n - FIXED);
    PyBuffer_Release(&view);
    PyObject *obj = NULL;
    if (values[F_TREE] != NULL && values[F_TARGET] != NULL)
        obj = c->cls->tp_alloc(c->cls, 0);
    if (obj == NULL) {
        for (int i = 0; i < NFIELDS; i++)
            Py_XDECREF(values[i]);
        return NULL;
    }
    for (int i = 0; i < NFIELDS; i++)
        SLOT(obj, c, i) = values[i]; /* a new object's slots are empty: the references move */
    return obj;
}

/* The field's value as an integer the record can hold, else -1 (Python's way then). */
static int
field_int(PyObject *v, char kind, uint64_t *out)
{
    if (!PyLong_CheckExact(v))
        return -1;
    if (kind == 'q') {
        int overflow;
        long long s = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow || (s == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return -1;
        }
        *out = (uint64_t)s;
        return 0;
    }
    unsigned long long u = PyLong_AsUnsignedLongLong(v);
    if (u == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    if (kind == 'I' && u > 0xFFFFFFFFull)
        return -1;
    *out = u;
    return 0;
}

static PyObject *
codec_pack(Codec *c, PyObject *obj)
{
    if (Py_TYPE(obj) != c->cls)
        return PyObject_CallOneArg(c->pack_slow, obj);
    uint64_t ints[12];
    for (int i = 0; i < 12; i++) {
        PyObject *v = SLOT(obj, c, i);
        if (v == NULL || field_int(v, kinds[i], &ints[i]) < 0)
            return PyObject_CallOneArg(c->pack_slow, obj);
    }
    PyObject *tree = SLOT(obj, c, F_TREE), *target = SLOT(obj, c, F_TARGET);
    if (ints[0] > MODE_MAX || tree == NULL || target == NULL || !PyBytes_CheckExact(tree)
            || PyBytes_GET_SIZE(tree) != 32 || !PyBytes_CheckExact(target))
        return PyObject_CallOneArg(c->pack_slow, obj);
    Py_ssize_t tlen = PyBytes_GET_SIZE(target);
    PyObject *out = PyBytes_FromStringAndSize(NULL, FIXED + tlen);
    if (out == NULL)
        return NULL;
    unsigned char *p = (unsigned char *)PyBytes_AS_STRING(out);
    ints[11] &= ~(uint64_t)WIDE_TIMES; /* times in int64 nanoseconds: no extension */
    for (int i = 0; i < 12; i++) {
        if (kinds[i] == 'I')
            wr32(p + offsets[i], (uint32_t)ints[i]);
        else
            wr64(p + offsets[i], ints[i]);
    }
    memcpy(p + TREE_AT, PyBytes_AS_STRING(tree), 32);
    memcpy(p + FIXED, PyBytes_AS_STRING(target), tlen);
    return out;
}

static PyObject *
codec_copy(Codec *c, PyObject *obj)
{
    if (Py_TYPE(obj) != c->cls)
        return PyObject_CallOneArg(c->copy_slow, obj);
    for (int i = 0; i < NFIELDS; i++)
        if (SLOT(obj, c, i) == NULL)
            return PyObject_CallOneArg(c->copy_slow, obj);
    PyObject *new = c->cls->tp_alloc(c->cls, 0);
    if (new == NULL)
        return NULL;
    for (int i = 0; i < NFIELDS; i++)
        SLOT(new, c, i) = Py_NewRef(SLOT(obj, c, i));
    return new;
}

static PyMethodDef codec_methods[] = {
    {"unpack", (PyCFunction)codec_unpack, METH_O, "unpack(raw) -> the inode of a packed record"},
    {"pack", (PyCFunction)codec_pack, METH_O, "pack(inode) -> its record"},
    {"copy", (PyCFunction)codec_copy, METH_O, "copy(inode) -> a new inode of the same fields"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CodecType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "fusevol._fusevol_rows.InodeCodec",
    .tp_basicsize = sizeof(Codec),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "InodeCodec(cls, names, unpack, pack, copy): inode records in C, "
              "the Python functions for what they leave out.",
    .tp_new = codec_new,
    .tp_dealloc = (destructor)codec_dealloc,
    .tp_traverse = (traverseproc)codec_traverse,
    .tp_clear = (inquiry)codec_clear,
    .tp_methods = codec_methods,
};

static PyObject *
first_item(PyObject *entry)
{
    if (PyTuple_CheckExact(entry) && PyTuple_GET_SIZE(entry) > 0)
        return Py_NewRef(PyTuple_GET_ITEM(entry, 0));
    PyObject *zero = PyLong_FromLong(0);
    if (zero == NULL)
        return NULL;
    PyObject *v = PyObject_GetItem(entry, zero);
    Py_DECREF(zero);
    return v;
}

/* ------------------------------------------------- attributes answered to the kernel -- */

/* AttrBuilder(EntryAttributes, entry_timeout, attr_timeout, block_size, codec, slow):
 * build(kino, inode, size, data_bytes) -> the attributes of an inode as the kernel
 * gets them (fs/attributes.py's twin), about 5 a small file. The inode's fields are read
 * from its slots (the codec knows where); what does not fit u64 goes to `slow`. */

#define N_ATTR_FIELDS 8
static const int attr_fields[N_ATTR_FIELDS] = {0, 3, 1, 2, 8, 5, 6, 7};
static const char *attr_names[N_ATTR_FIELDS] = {
    "st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_atime_ns", "st_mtime_ns",
    "st_ctime_ns"};
static const char *inode_names[N_ATTR_FIELDS] = {
    "mode", "nlink", "uid", "gid", "rdev", "atime_ns", "mtime_ns", "ctime_ns"};
static PyObject *attr_strs[N_ATTR_FIELDS], *inode_strs[N_ATTR_FIELDS];
static PyObject *str_st_ino, *str_entry_timeout, *str_attr_timeout, *str_st_size,
    *str_st_blksize, *str_st_blocks;

typedef struct {
    PyObject_HEAD
    PyObject *factory, *entry_timeout, *attr_timeout, *block_size, *codec, *slow, *one;
} AttrBuilder;

static int
attr_traverse(AttrBuilder *a, visitproc visit, void *arg)
{
    Py_VISIT(a->factory);
    Py_VISIT(a->entry_timeout);
    Py_VISIT(a->attr_timeout);
    Py_VISIT(a->block_size);
    Py_VISIT(a->codec);
    Py_VISIT(a->slow);
    return 0;
}

static int
attr_clear(AttrBuilder *a)
{
    Py_CLEAR(a->factory);
    Py_CLEAR(a->entry_timeout);
    Py_CLEAR(a->attr_timeout);
    Py_CLEAR(a->block_size);
    Py_CLEAR(a->codec);
    Py_CLEAR(a->slow);
    Py_CLEAR(a->one);
    return 0;
}

static void
attr_dealloc(AttrBuilder *a)
{
    PyObject_GC_UnTrack(a);
    attr_clear(a);
    Py_TYPE(a)->tp_free((PyObject *)a);
}

static PyObject *
attr_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    PyObject *factory, *entry_timeout, *attr_timeout, *block_size, *codec, *slow;
    if (kw != NULL && PyDict_GET_SIZE(kw)) {
        PyErr_SetString(PyExc_TypeError, "AttrBuilder takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OOOOOO:AttrBuilder", &factory, &entry_timeout, &attr_timeout,
                          &block_size, &codec, &slow))
        return NULL;
    if (codec != Py_None && !Py_IS_TYPE(codec, &CodecType)) {
        PyErr_SetString(PyExc_TypeError, "codec must be an InodeCodec or None");
        return NULL;
    }
    AttrBuilder *a = (AttrBuilder *)type->tp_alloc(type, 0);
    if (a == NULL)
        return NULL;
    a->factory = Py_NewRef(factory);
    a->entry_timeout = Py_NewRef(entry_timeout);
    a->attr_timeout = Py_NewRef(attr_timeout);
    a->block_size = Py_NewRef(block_size);
    a->codec = Py_NewRef(codec);
    a->slow = Py_NewRef(slow);
    a->one = PyLong_FromLong(1);
    if (a->one == NULL) {
        Py_DECREF(a);
        return NULL;
    }
    return (PyObject *)a;
}

static int
as_u64(PyObject *v, uint64_t *out)
{
    if (!PyLong_CheckExact(v))
        return -1;
    unsigned long long u = PyLong_AsUnsignedLongLong(v);
    if (u == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    *out = u;
    return 0;
}

static PyObject *
attr_build(AttrBuilder *a, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "build(kino, inode, size, data_bytes)");
        return NULL;
    }
    PyObject *inode = args[1], *size = args[2], *data_bytes = args[3];
    PyObject *values[N_ATTR_FIELDS];
    Codec *c = a->codec == Py_None ? NULL : (Codec *)a->codec;
    int i, n = 0;
    uint64_t mode, usize, udata;
    if (c != NULL && Py_TYPE(inode) == c->cls) {
        for (i = 0; i < N_ATTR_FIELDS; i++) {
            values[i] = SLOT(inode, c, attr_fields[i]);
            if (values[i] == NULL)
                goto slow;
            Py_INCREF(values[i]);
            n++;
        }
    } else {
        for (i = 0; i < N_ATTR_FIELDS; i++) {
            values[i] = PyObject_GetAttr(inode, inode_strs[i]);
            if (values[i] == NULL) {
                PyErr_Clear();
                goto slow;
            }
            n++;
        }
    }
    if (as_u64(values[0], &mode) < 0 || as_u64(size, &usize) < 0
            || as_u64(data_bytes, &udata) < 0)
        goto slow;
    PyObject *blocks;
    if ((mode & 0170000) == 0100000) { /* S_ISREG */
        uint64_t b = udata / 512 + (udata % 512 != 0), s = usize / 512 + (usize % 512 != 0);
        blocks = PyLong_FromUnsignedLongLong(b < s ? b : s);
        if (blocks == NULL)
            goto fail;
    } else {
        blocks = Py_NewRef(a->one);
    }
    PyObject *e = PyObject_CallNoArgs(a->factory);
    if (e == NULL) {
        Py_DECREF(blocks);
        goto fail;
    }
    /* The order of the twin's sets: the same object whatever a setter does with them. */
    int rc = PyObject_SetAttr(e, str_st_ino, args[0]) < 0
        || PyObject_SetAttr(e, str_entry_timeout, a->entry_timeout) < 0
        || PyObject_SetAttr(e, str_attr_timeout, a->attr_timeout) < 0;
    for (i = 0; !rc && i < N_ATTR_FIELDS; i++) {
        rc = PyObject_SetAttr(e, attr_strs[i], values[i]) < 0;
        if (!rc && i == 4)
            rc = PyObject_SetAttr(e, str_st_size, size) < 0
                || PyObject_SetAttr(e, str_st_blksize, a->block_size) < 0
                || PyObject_SetAttr(e, str_st_blocks, blocks) < 0;
    }
    Py_DECREF(blocks);
    for (i = 0; i < n; i++)
        Py_DECREF(values[i]);
    if (rc) {
        Py_DECREF(e);
        return NULL;
    }
    return e;
slow:
    for (i = 0; i < n; i++)
        Py_DECREF(values[i]);
    return PyObject_Vectorcall(a->slow, args, nargs, NULL);
fail:
    for (i = 0; i < n; i++)
        Py_DECREF(values[i]);
    return NULL;
}

static PyMethodDef attr_methods[] = {
    {"build", (PyCFunction)(void (*)(void))attr_build, METH_FASTCALL,
     "build(kino, inode, size, data_bytes): the inode's attributes for the kernel"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject AttrBuilderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "fusevol._fusevol_rows.AttrBuilder",
    .tp_basicsize = sizeof(AttrBuilder),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The attributes of an inode as the kernel gets them.",
    .tp_new = attr_new,
    .tp_dealloc = (destructor)attr_dealloc,
    .tp_traverse = (traverseproc)attr_traverse,
    .tp_clear = (inquiry)attr_clear,
    .tp_methods = attr_methods,
};

/* ------------------------------------------------------- the worker's row cache -- */

/* RowOwner(vid): owner(table, key), the inode a row of volume vid belongs to, or None
 * (store/workerrows.py row_owner's twin): a key (vid, ino, ...) of any table but meta. */

static PyObject *str_meta;

typedef struct {
    PyObject_HEAD
    unsigned long long vid;
} RowOwner;

static PyObject *
owner_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    unsigned long long vid;
    if (kw != NULL && PyDict_GET_SIZE(kw)) {
        PyErr_SetString(PyExc_TypeError, "RowOwner takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "K:RowOwner", &vid))
        return NULL;
    RowOwner *o = (RowOwner *)type->tp_alloc(type, 0);
    if (o != NULL)
        o->vid = vid;
    return (PyObject *)o;
}

/* A new reference: the inode number, or None. */
static PyObject *
owner_of(RowOwner *o, PyObject *table, PyObject *key)
{
    int meta = PyObject_RichCompareBool(table, str_meta, Py_EQ);
    if (meta < 0)
        return NULL;
    if (meta)
        Py_RETURN_NONE;
    Py_buffer view;
    if (PyObject_GetBuffer(key, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *ino = NULL;
    if (view.len < 16 || rd64(view.buf) != o->vid)
        ino = Py_NewRef(Py_None);
    else
        ino = PyLong_FromUnsignedLongLong(rd64((const unsigned char *)view.buf + 8));
    PyBuffer_Release(&view);
    return ino;
}

static PyObject *
owner_call(RowOwner *o, PyObject *args, PyObject *kw)
{
    PyObject *table, *key;
    if (kw != NULL && PyDict_GET_SIZE(kw)) {
        PyErr_SetString(PyExc_TypeError, "owner(table, key)");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OO:owner", &table, &key))
        return NULL;
    return owner_of(o, table, key);
}

static PyTypeObject RowOwnerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "fusevol._fusevol_rows.RowOwner",
    .tp_basicsize = sizeof(RowOwner),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "RowOwner(vid)(table, key): the inode a row of volume vid belongs to, or None.",
    .tp_new = owner_new,
    .tp_call = (ternaryfunc)owner_call,
};



/* CacheCore: the base of fs/cache.py's RowCache, holding its rows, the rows handed
 * over to apply before the next read (`later`, applied by the subclass's _catch_up)
 * and the shared decoded rows; get (a miss goes to the subclass's _get_missing),
 * decoded and decoded_if_held as cache.py's twin has them. */

static PyObject *str_catch_up, *str_get_missing, *str_later, *str_rows, *str_get;
static Py_ssize_t max_decoded = 200000;

typedef struct {
    PyObject_HEAD
    PyObject *rows, *later, *decoded, *first_fresh, *owner;
} CacheCore;

static int
cache_traverse(CacheCore *c, visitproc visit, void *arg)
{
    Py_VISIT(c->rows);
    Py_VISIT(c->later);
    Py_VISIT(c->decoded);
    Py_VISIT(c->first_fresh);
    Py_VISIT(c->owner);
    return 0;
}

static int
cache_clear(CacheCore *c)
{
    Py_CLEAR(c->rows);
    Py_CLEAR(c->later);
    Py_CLEAR(c->decoded);
    Py_CLEAR(c->first_fresh);
    Py_CLEAR(c->owner);
    return 0;
}

static void
cache_dealloc(CacheCore *c)
{
    PyObject_GC_UnTrack(c);
    cache_clear(c);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

/* Rows handed over by the store thread are applied before any read. */
static int
cache_catch_up(CacheCore *c)
{
    if (c->later == NULL) {
        PyErr_SetString(PyExc_AttributeError, "RowCache is not set up");
        return -1;
    }
    int pending = PyObject_IsTrue(c->later);
    if (pending <= 0)
        return pending;
    PyObject *r = PyObject_CallMethodNoArgs((PyObject *)c, str_catch_up);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* rows.get((table, key)): a new reference or NULL, without an error when absent. */
static PyObject *
cache_entry(CacheCore *c, PyObject *k)
{
    if (c->rows == NULL) {
        PyErr_SetString(PyExc_AttributeError, "RowCache is not set up");
        return NULL;
    }
    if (PyDict_CheckExact(c->rows)) {
        PyObject *entry = PyDict_GetItemWithError(c->rows, k);
        return Py_XNewRef(entry);
    }
    PyObject *entry = PyObject_CallMethodObjArgs(c->rows, str_get, k, NULL);
    if (entry == Py_None)
        Py_CLEAR(entry);
    return entry;
}

static PyObject *
cache_get(CacheCore *c, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "get(table, key, reader)");
        return NULL;
    }
    if (cache_catch_up(c) < 0)
        return NULL;
    PyObject *k = PyTuple_Pack(2, args[0], args[1]);
    if (k == NULL)
        return NULL;
    PyObject *entry = cache_entry(c, k);
    Py_DECREF(k);
    if (entry != NULL) {
        PyObject *value = first_item(entry);
        Py_DECREF(entry);
        return value;
    }
    if (PyErr_Occurred())
        return NULL;
    if (c->first_fresh != NULL && c->first_fresh != Py_None && c->owner != NULL
            && c->owner != Py_None) {
        /* A row of an inode this worker made is here or does not exist. */
        PyObject *ino = Py_IS_TYPE(c->owner, &RowOwnerType)
            ? owner_of((RowOwner *)c->owner, args[0], args[1])
            : PyObject_CallFunctionObjArgs(c->owner, args[0], args[1], NULL);
        if (ino == NULL)
            return NULL;
        int fresh = ino != Py_None ? PyObject_RichCompareBool(ino, c->first_fresh, Py_GE) : 0;
        Py_DECREF(ino);
        if (fresh < 0)
            return NULL;
        if (fresh)
            Py_RETURN_NONE;
    }
    return PyObject_CallMethodObjArgs((PyObject *)c, str_get_missing, args[0], args[1], args[2],
                                      NULL);
}

/* decode(raw) of row raw under key, shared: a new reference. */
static PyObject *
cache_decoded_impl(CacheCore *c, PyObject *key, PyObject *raw, PyObject *decode)
{
    if (raw == Py_None)
        Py_RETURN_NONE;
    if (c->decoded == NULL || !PyDict_Check(c->decoded)) {
        PyErr_SetString(PyExc_AttributeError, "RowCache is not set up");
        return NULL;
    }
    PyObject *seen = PyDict_GetItemWithError(c->decoded, key);
    if (seen != NULL && PyTuple_CheckExact(seen) && PyTuple_GET_SIZE(seen) == 3
            && PyTuple_GET_ITEM(seen, 0) == raw && PyTuple_GET_ITEM(seen, 1) == decode)
        return Py_NewRef(PyTuple_GET_ITEM(seen, 2));
    if (seen == NULL && PyErr_Occurred())
        return NULL;
    PyObject *value = PyObject_CallOneArg(decode, raw);
    if (value == NULL)
        return NULL;
    if (PyDict_GET_SIZE(c->decoded) >= max_decoded)
        PyDict_Clear(c->decoded);
    PyObject *entry = PyTuple_Pack(3, raw, decode, value);
    if (entry == NULL || PyDict_SetItem(c->decoded, key, entry) < 0) {
        Py_XDECREF(entry);
        Py_DECREF(value);
        return NULL;
    }
    Py_DECREF(entry);
    return value;
}

static PyObject *
cache_decoded(CacheCore *c, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "decoded(key, raw, decode)");
        return NULL;
    }
    return cache_decoded_impl(c, args[0], args[1], args[2]);
}

static PyObject *
cache_decoded_if_held(CacheCore *c, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "decoded_if_held(table, key, decode)");
        return NULL;
    }
    if (cache_catch_up(c) < 0)
        return NULL;
    PyObject *k = PyTuple_Pack(2, args[0], args[1]);
    if (k == NULL)
        return NULL;
    PyObject *entry = cache_entry(c, k);
    Py_DECREF(k);
    if (entry == NULL) {
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_NONE;
    }
    PyObject *raw = first_item(entry);
    Py_DECREF(entry);
    if (raw == NULL)
        return NULL;
    PyObject *value = cache_decoded_impl(c, args[1], raw, args[2]);
    Py_DECREF(raw);
    return value;
}

static PyMethodDef cache_methods[] = {
    {"get", (PyCFunction)(void (*)(void))cache_get, METH_FASTCALL,
     "get(table, key, reader): the row, from here or else from what is committed"},
    {"decoded", (PyCFunction)(void (*)(void))cache_decoded, METH_FASTCALL,
     "decoded(key, raw, decode): decode(raw), shared: not to be changed"},
    {"decoded_if_held", (PyCFunction)(void (*)(void))cache_decoded_if_held, METH_FASTCALL,
     "decoded_if_held(table, key, decode): decoded of the row when held here, else None"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef cache_members[] = {
    {"rows", T_OBJECT, offsetof(CacheCore, rows), 0, NULL},
    {"later", T_OBJECT, offsetof(CacheCore, later), 0, NULL},
    {"_decoded", T_OBJECT, offsetof(CacheCore, decoded), 0, NULL},
    {"_first_fresh", T_OBJECT, offsetof(CacheCore, first_fresh), 0, NULL},
    {"owner", T_OBJECT, offsetof(CacheCore, owner), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject CacheCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "fusevol._fusevol_rows.CacheCore",
    .tp_basicsize = sizeof(CacheCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .tp_doc = "The reads of the worker's row cache (RowCache's base).",
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)cache_dealloc,
    .tp_traverse = (traverseproc)cache_traverse,
    .tp_clear = (inquiry)cache_clear,
    .tp_methods = cache_methods,
    .tp_members = cache_members,
};

/* ------------------------------------------------- a change's reads and writes -- */

static PyObject *needs_store, *worker_tables, *name_tables, *made_by_name;

typedef struct {
    PyObject_HEAD
    PyObject *cache, *writes, *reads, *seq, *reader;
    PyObject *now_ns, *room, *deferred, *deferred_bytes, *vstat_delta;
} SpecCore;

static int
spec_traverse(SpecCore *s, visitproc visit, void *arg)
{
    Py_VISIT(s->cache);
    Py_VISIT(s->writes);
    Py_VISIT(s->reads);
    Py_VISIT(s->seq);
    Py_VISIT(s->reader);
    Py_VISIT(s->now_ns);
    Py_VISIT(s->room);
    Py_VISIT(s->deferred);
    Py_VISIT(s->deferred_bytes);
    Py_VISIT(s->vstat_delta);
    return 0;
}

static int
spec_clear(SpecCore *s)
{
    Py_CLEAR(s->cache);
    Py_CLEAR(s->writes);
    Py_CLEAR(s->reads);
    Py_CLEAR(s->seq);
    Py_CLEAR(s->reader);
    Py_CLEAR(s->now_ns);
    Py_CLEAR(s->room);
    Py_CLEAR(s->deferred);
    Py_CLEAR(s->deferred_bytes);
    Py_CLEAR(s->vstat_delta);
    return 0;
}

static PyObject *str_reader;

/* SpecTxn(cache, now_ns, seq=0, room=None, reader=None), as speculate.py's twin. */
static int
spec_init(SpecCore *s, PyObject *args, PyObject *kw)
{
    static char *names[] = {"cache", "now_ns", "seq", "room", "reader", NULL};
    PyObject *cache, *now_ns, *seq = NULL, *room = Py_None, *reader = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|OOO:SpecTxn", names, &cache, &now_ns, &seq,
                                     &room, &reader))
        return -1;
    if (reader == Py_None) {
        reader = PyObject_CallMethodNoArgs(cache, str_reader);
        if (reader == NULL)
            return -1;
    } else {
        Py_INCREF(reader);
    }
    Py_XSETREF(s->reader, reader);
    Py_XSETREF(s->cache, Py_NewRef(cache));
    Py_XSETREF(s->now_ns, Py_NewRef(now_ns));
    Py_XSETREF(s->seq, seq != NULL ? Py_NewRef(seq) : PyLong_FromLong(0));
    Py_XSETREF(s->room, Py_NewRef(room));  /* room(incoming) -> True if that many bytes surely fit */
    Py_XSETREF(s->deferred, PyList_New(0));
    Py_XSETREF(s->deferred_bytes, PyLong_FromLong(0));
    Py_XSETREF(s->reads, PyDict_New());
    Py_XSETREF(s->writes, PyDict_New());
    Py_XSETREF(s->vstat_delta, PyDict_New());
    if (s->seq == NULL || s->deferred == NULL || s->deferred_bytes == NULL || s->reads == NULL
            || s->writes == NULL || s->vstat_delta == NULL)
        return -1;
    return 0;
}

static void
spec_dealloc(SpecCore *s)
{
    PyObject_GC_UnTrack(s);
    spec_clear(s);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static int
spec_ready(SpecCore *s)
{
    if (needs_store == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "spec_configure was not called");
        return -1;
    }
    if (s->cache == NULL || s->writes == NULL || s->reads == NULL || s->seq == NULL
            || s->reader == NULL || !PyDict_Check(s->writes) || !PyDict_Check(s->reads)) {
        PyErr_SetString(PyExc_AttributeError, "SpecTxn is not set up");
        return -1;
    }
    return 0;
}

/* SpecTxn.get: a new reference, or NULL with an error (NeedsStore among them). */
static PyObject *
spec_get_impl(SpecCore *s, PyObject *table, PyObject *key)
{
    PyObject *k = PyTuple_Pack(2, table, key);
    if (k == NULL)
        return NULL;
    PyObject *value = NULL;
    PyObject *entry = PyDict_GetItemWithError(s->writes, k);
    if (entry != NULL && entry != Py_None) {
        value = first_item(entry);
        goto done;
    }
    if (entry == NULL && PyErr_Occurred())
        goto done;
    value = PyDict_GetItemWithError(s->reads, k);
    if (value != NULL) { /* what this run saw of it, and what the store thread checks */
        Py_INCREF(value);
        goto done;
    }
    if (PyErr_Occurred())
        goto done;
    /* The cache's row as RowCache.get would answer it: one dictionary lookup. */
    PyObject *later, *rows;
    int held = PyObject_TypeCheck(s->cache, &CacheCoreType);
    if (held) {
        later = Py_XNewRef(((CacheCore *)s->cache)->later);
        rows = Py_XNewRef(((CacheCore *)s->cache)->rows);
        if (later == NULL || rows == NULL) {
            Py_XDECREF(later);
            Py_XDECREF(rows);
            PyErr_SetString(PyExc_AttributeError, "RowCache is not set up");
            goto done;
        }
    } else {
        later = PyObject_GetAttr(s->cache, str_later);
        if (later == NULL)
            goto done;
        rows = NULL;
    }
    int pending = PyObject_IsTrue(later);
    Py_DECREF(later);
    if (pending < 0) {
        Py_XDECREF(rows);
        goto done;
    }
    entry = NULL;
    if (!pending) {
        if (rows == NULL)
            rows = PyObject_GetAttr(s->cache, str_rows);
        if (rows == NULL)
            goto done;
        if (PyDict_CheckExact(rows)) {
            entry = PyDict_GetItemWithError(rows, k);
            Py_XINCREF(entry);
        } else {
            entry = PyObject_CallMethodObjArgs(rows, str_get, k, NULL);
        }
    }
    Py_XDECREF(rows);
    if (entry == NULL && PyErr_Occurred())
        goto done;
    if (entry != NULL && entry != Py_None) {
        value = first_item(entry);
        Py_DECREF(entry);
        if (value == NULL)
            goto done;
    } else {
        Py_XDECREF(entry);
        int ours = PySequence_Contains(worker_tables, table);
        if (ours < 0)
            goto done;
        if (!ours) {
            PyErr_SetNone(needs_store);
            goto done;
        }
        value = PyObject_CallMethodObjArgs(s->cache, str_get, table, key, s->reader, NULL);
        if (value == NULL)
            goto done;
        if (value != Py_None && !PyBytes_CheckExact(value))
            Py_SETREF(value, PyBytes_FromObject(value));
        if (value == NULL)
            goto done;
    }
    if (PyDict_SetItem(s->reads, k, value) < 0)
        Py_CLEAR(value);
done:
    Py_DECREF(k);
    return value;
}

static PyObject *
spec_get(SpecCore *s, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "get(table, key)");
        return NULL;
    }
    if (spec_ready(s) < 0)
        return NULL;
    return spec_get_impl(s, args[0], args[1]);
}

/* writes[table, bytes(key)] = (value, seq) */
static int
spec_write(SpecCore *s, PyObject *table, PyObject *key, PyObject *value)
{
    PyObject *bkey = PyBytes_FromObject(key);
    if (bkey == NULL)
        return -1;
    PyObject *k = PyTuple_Pack(2, table, bkey);
    Py_DECREF(bkey);
    if (k == NULL)
        return -1;
    PyObject *entry = PyTuple_Pack(2, value, s->seq);
    int rc = entry == NULL ? -1 : PyDict_SetItem(s->writes, k, entry);
    Py_XDECREF(entry);
    Py_DECREF(k);
    return rc;
}

static PyObject *
spec_put(SpecCore *s, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *overwrite = Py_True;
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    if (nargs + nkw > 4 || nargs < 3 || (nkw == 1 && (nargs != 3 || !PyUnicode_Check(
            PyTuple_GET_ITEM(kwnames, 0)) || PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0),
                                                                                "overwrite") != 0))) {
        PyErr_SetString(PyExc_TypeError, "put(table, key, value, overwrite=True)");
        return NULL;
    }
    if (nargs + nkw == 4)
        overwrite = args[3];
    if (spec_ready(s) < 0)
        return NULL;
    int over = PyObject_IsTrue(overwrite);
    if (over < 0)
        return NULL;
    if (!over) {
        PyErr_SetNone(needs_store);
        return NULL;
    }
    PyObject *table = args[0], *key = args[1];
    int names = PySequence_Contains(name_tables, table);
    if (names < 0)
        return NULL;
    if (!names) {
        /* The row it replaces is part of what this run saw: the store thread checks it. */
        PyObject *seen = spec_get_impl(s, table, key);
        if (seen == NULL)
            return NULL;
        Py_DECREF(seen);
    }
    PyObject *value = PyBytes_FromObject(args[2]);
    if (value == NULL)
        return NULL;
    int rc = spec_write(s, table, key, value);
    Py_DECREF(value);
    if (rc < 0)
        return NULL;
    Py_RETURN_TRUE;
}

static PyObject *
spec_delete(SpecCore *s, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "delete(table, key)");
        return NULL;
    }
    if (spec_ready(s) < 0)
        return NULL;
    PyObject *seen = spec_get_impl(s, args[0], args[1]);
    if (seen == NULL)
        return NULL;
    int absent = seen == Py_None;
    Py_DECREF(seen);
    if (absent) /* nothing to delete: nothing is written (speculate.py's twin says why) */
        Py_RETURN_FALSE;
    if (spec_write(s, args[0], args[1], Py_None) < 0)
        return NULL;
    Py_RETURN_TRUE;
}

static PyMethodDef spec_methods[] = {
    {"get", (PyCFunction)(void (*)(void))spec_get, METH_FASTCALL,
     "get(table, key): the row as this change sees it"},
    {"put", (PyCFunction)(void (*)(void))spec_put, METH_FASTCALL | METH_KEYWORDS,
     "put(table, key, value, overwrite=True): collect a row written"},
    {"delete", (PyCFunction)(void (*)(void))spec_delete, METH_FASTCALL,
     "delete(table, key): collect a row deleted; whether there was one"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef spec_members[] = {
    {"cache", T_OBJECT, offsetof(SpecCore, cache), 0, NULL},
    {"writes", T_OBJECT, offsetof(SpecCore, writes), 0, NULL},
    {"reads", T_OBJECT, offsetof(SpecCore, reads), 0, NULL},
    {"seq", T_OBJECT, offsetof(SpecCore, seq), 0, NULL},
    {"_reader", T_OBJECT, offsetof(SpecCore, reader), 0, NULL},
    {"now_ns", T_OBJECT, offsetof(SpecCore, now_ns), 0, NULL},
    {"room", T_OBJECT, offsetof(SpecCore, room), 0, NULL},
    {"deferred", T_OBJECT, offsetof(SpecCore, deferred), 0, NULL},
    {"deferred_bytes", T_OBJECT, offsetof(SpecCore, deferred_bytes), 0, NULL},
    {"vstat_delta", T_OBJECT, offsetof(SpecCore, vstat_delta), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject SpecCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "fusevol._fusevol_rows.SpecCore",
    .tp_basicsize = sizeof(SpecCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .tp_doc = "The reads and writes of a change worked out ahead (SpecTxn's base).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)spec_init,
    .tp_dealloc = (destructor)spec_dealloc,
    .tp_traverse = (traverseproc)spec_traverse,
    .tp_clear = (inquiry)spec_clear,
    .tp_methods = spec_methods,
    .tp_members = spec_members,
};

static PyObject *
spec_configure(PyObject *self, PyObject *args)
{
    PyObject *ns, *wt, *nt, *mn;
    if (!PyArg_ParseTuple(args, "OOOO:spec_configure", &ns, &wt, &nt, &mn))
        return NULL;
    Py_XSETREF(made_by_name, Py_NewRef(mn));
    Py_XSETREF(needs_store, Py_NewRef(ns));
    Py_XSETREF(worker_tables, Py_NewRef(wt));
    Py_XSETREF(name_tables, Py_NewRef(nt));
    Py_RETURN_NONE;
}

/* --------------------------------------------- the store thread's replay of changes -- */



/* reads_unchanged(reads, pending, written, first, end, owner, get): speculate.py's
 * _reads_unchanged: whether every row a change read (reads: (table, key) -> value)
 * still holds what it saw, about 8 rows a small file on the store thread. */
static PyObject *
reads_unchanged(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError,
                        "reads_unchanged(reads, pending, written, first, end, owner, get)");
        return NULL;
    }
    PyObject *reads = args[0], *pending = args[1], *written = args[2], *owner = args[5],
        *get = args[6];
    if (needs_store == NULL || made_by_name == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "spec_configure was not called");
        return NULL;
    }
    if (!PyDict_Check(reads) || !PyDict_Check(pending)
            || (written != Py_None && !PyDict_Check(written))) {
        PyErr_SetString(PyExc_TypeError, "reads, pending and written must be dicts");
        return NULL;
    }
    long long first = PyLong_AsLongLong(args[3]), end = PyLong_AsLongLong(args[4]);
    if (PyErr_Occurred())
        return NULL;
    Py_ssize_t pos = 0;
    PyObject *k, *seen;
    while (PyDict_Next(reads, &pos, &k, &seen)) {
        if (!PyTuple_CheckExact(k) || PyTuple_GET_SIZE(k) != 2) {
            PyErr_SetString(PyExc_TypeError, "a read's key is (table, key)");
            return NULL;
        }
        Py_INCREF(k);
        Py_INCREF(seen);
        PyObject *table = PyTuple_GET_ITEM(k, 0), *key = PyTuple_GET_ITEM(k, 1), *now = NULL;
        int differs = -1, names = PySequence_Contains(name_tables, table);
        if (names < 0)
            goto fail;
        if (names) {  /* rows of names are what the change read (speculate.py) */
            Py_DECREF(k);
            Py_DECREF(seen);
            continue;
        }
        PyObject *entry = PyDict_GetItemWithError(pending, k);
        if (entry == NULL && PyErr_Occurred())
            goto fail;
        if (entry == NULL && written != Py_None) {
            entry = PyDict_GetItemWithError(written, k);
            if (entry == NULL && PyErr_Occurred())
                goto fail;
        }
        if (entry != NULL && entry != Py_None) {
            now = first_item(entry);
            if (now == NULL)
                goto fail;
        } else {
            if (seen == Py_None) {
                int absent = PySequence_Contains(made_by_name, table);
                if (absent < 0)
                    goto fail;
                if (!absent && first < end) {
                    PyObject *o = PyObject_CallFunctionObjArgs(owner, table, key, NULL);
                    if (o == NULL)
                        goto fail;
                    long long ino = 0;
                    if (o != Py_None) {
                        int truth = PyObject_IsTrue(o);
                        if (truth < 0) {
                            Py_DECREF(o);
                            goto fail;
                        }
                        if (truth)
                            ino = PyLong_AsLongLong(o);
                    }
                    Py_DECREF(o);
                    if (ino == -1 && PyErr_Occurred())
                        goto fail;
                    absent = first <= ino && ino < end;
                }
                if (absent) {  /* absent still: made by no change but of names, or numbered here */
                    Py_DECREF(k);
                    Py_DECREF(seen);
                    continue;
                }
            }
            now = PyObject_CallFunctionObjArgs(get, table, key, NULL); /* lets go of the GIL */
            if (now == NULL)
                goto fail;
            if (now != Py_None && !PyBytes_CheckExact(now)) {
                Py_SETREF(now, PyBytes_FromObject(now));
                if (now == NULL)
                    goto fail;
            }
        }
        differs = PyObject_RichCompareBool(now, seen, Py_NE);
        Py_DECREF(now);
        if (differs < 0)
            goto fail;
        Py_DECREF(k);
        Py_DECREF(seen);
        if (differs)
            Py_RETURN_FALSE;
        continue;
fail:
        Py_DECREF(k);
        Py_DECREF(seen);
        return NULL;
    }
    Py_RETURN_TRUE;
}

/* rows_by_table(pending) -> [(table, deletes, puts)]: speculate.write_rows' grouping of
 * the rows collected ((table, key) -> (value or None, seq)), tables in order, each one's
 * keys in order: deletes a list of keys, puts a list of (key, value). */
static PyObject *
rows_by_table(PyObject *self, PyObject *pending)
{
    if (!PyDict_Check(pending)) {
        PyErr_SetString(PyExc_TypeError, "pending must be a dict");
        return NULL;
    }
    PyObject *tables = PyDict_New(), *out = NULL, *names = NULL;
    if (tables == NULL)
        return NULL;
    Py_ssize_t pos = 0;
    PyObject *k, *entry;
    while (PyDict_Next(pending, &pos, &k, &entry)) {
        if (!PyTuple_CheckExact(k) || PyTuple_GET_SIZE(k) != 2) {
            PyErr_SetString(PyExc_TypeError, "a row's key is (table, key)");
            goto done;
        }
        PyObject *table = PyTuple_GET_ITEM(k, 0);
        PyObject *rows = PyDict_GetItemWithError(tables, table);
        if (rows == NULL) {
            if (PyErr_Occurred())
                goto done;
            rows = PyList_New(0);
            if (rows == NULL || PyDict_SetItem(tables, table, rows) < 0) {
                Py_XDECREF(rows);
                goto done;
            }
            Py_DECREF(rows);
        }
        PyObject *value = first_item(entry);
        if (value == NULL)
            goto done;
        PyObject *row = PyTuple_Pack(2, PyTuple_GET_ITEM(k, 1), value);
        Py_DECREF(value);
        if (row == NULL || PyList_Append(rows, row) < 0) {
            Py_XDECREF(row);
            goto done;
        }
        Py_DECREF(row);
    }
    names = PyDict_Keys(tables);
    if (names == NULL || PyList_Sort(names) < 0)
        goto done;
    out = PyList_New(0);
    if (out == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(names); i++) {
        PyObject *table = PyList_GET_ITEM(names, i);
        PyObject *rows = PyDict_GetItemWithError(tables, table);
        PyObject *keys = NULL, *ks = NULL, *deletes = NULL, *puts = NULL, *item = NULL;
        int ok = 0;
        if (rows == NULL)
            goto table_done;
        /* In key order: sort the keys, each row found again by its key (keys differ). */
        Py_ssize_t n = PyList_GET_SIZE(rows);
        PyObject *by_key = PyDict_New();
        keys = PyList_New(n);
        if (by_key == NULL || keys == NULL) {
            Py_XDECREF(by_key);
            goto table_done;
        }
        for (Py_ssize_t j = 0; j < n; j++) {
            PyObject *row = PyList_GET_ITEM(rows, j);
            PyList_SET_ITEM(keys, j, Py_NewRef(PyTuple_GET_ITEM(row, 0)));
            if (PyDict_SetItem(by_key, PyTuple_GET_ITEM(row, 0), PyTuple_GET_ITEM(row, 1)) < 0) {
                Py_DECREF(by_key);
                goto table_done;
            }
        }
        if (PyList_Sort(keys) < 0) {
            Py_DECREF(by_key);
            goto table_done;
        }
        deletes = PyList_New(0);
        puts = PyList_New(0);
        if (deletes == NULL || puts == NULL) {
            Py_DECREF(by_key);
            goto table_done;
        }
        for (Py_ssize_t j = 0; j < n; j++) {
            PyObject *key = PyList_GET_ITEM(keys, j);
            PyObject *value = PyDict_GetItemWithError(by_key, key);
            if (value == NULL) {
                if (!PyErr_Occurred())
                    PyErr_SetObject(PyExc_KeyError, key);
                Py_DECREF(by_key);
                goto table_done;
            }
            int rc;
            if (value == Py_None) {
                rc = PyList_Append(deletes, key);
            } else {
                PyObject *put = PyTuple_Pack(2, key, value);
                rc = put == NULL ? -1 : PyList_Append(puts, put);
                Py_XDECREF(put);
            }
            if (rc < 0) {
                Py_DECREF(by_key);
                goto table_done;
            }
        }
        Py_DECREF(by_key);
        item = PyTuple_Pack(3, table, deletes, puts);
        ok = item != NULL && PyList_Append(out, item) == 0;
table_done:
        Py_XDECREF(item);
        Py_XDECREF(keys);
        Py_XDECREF(ks);
        Py_XDECREF(deletes);
        Py_XDECREF(puts);
        if (!ok) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_RuntimeError, "rows_by_table failed");
            Py_CLEAR(out);
            goto done;
        }
    }
done:
    Py_XDECREF(names);
    Py_DECREF(tables);
    return out;
}

static PyObject *
cache_configure(PyObject *self, PyObject *arg)
{
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    max_decoded = n;
    Py_RETURN_NONE;
}

static PyObject *
as_method(PyObject *self, PyObject *func)
{
    return PyInstanceMethod_New(func);
}

static PyMethodDef module_methods[] = {
    {"reads_unchanged", (PyCFunction)(void (*)(void))reads_unchanged, METH_FASTCALL,
     "reads_unchanged(reads, pending, written, first, end, owner, get): whether every row "
     "a change read still holds what it saw"},
    {"rows_by_table", rows_by_table, METH_O,
     "rows_by_table(pending) -> [(table, deletes, puts)], tables and keys in order"},
    {"cache_configure", cache_configure, METH_O,
     "cache_configure(MAX_ROWS): the decoded rows CacheCore keeps at most"},
    {"as_method", as_method, METH_O,
     "as_method(callable): a class attribute that calls it with the instance first "
     "(for InodeCodec's pack and copy as the class's methods)"},
    {"spec_configure", spec_configure, METH_VARARGS,
     "spec_configure(NeedsStore, WORKER_TABLES, NAME_TABLES, MADE_BY_NAME_CHANGES): what "
     "SpecCore and reads_unchanged raise and check"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fusevol_rows", "Row helpers of the request path in C.", -1,
    module_methods,
};

PyMODINIT_FUNC
PyInit__fusevol_rows(void)
{
    str_later = PyUnicode_InternFromString("later");
    str_rows = PyUnicode_InternFromString("rows");
    str_get = PyUnicode_InternFromString("get");
    str_reader = PyUnicode_InternFromString("reader");
    str_meta = PyUnicode_InternFromString("meta");
    str_catch_up = PyUnicode_InternFromString("_catch_up");
    str_get_missing = PyUnicode_InternFromString("_get_missing");
    if (str_later == NULL || str_rows == NULL || str_get == NULL || str_reader == NULL
            || str_catch_up == NULL || str_get_missing == NULL || str_meta == NULL)
        return NULL;
    for (int i = 0; i < N_ATTR_FIELDS; i++) {
        attr_strs[i] = PyUnicode_InternFromString(attr_names[i]);
        inode_strs[i] = PyUnicode_InternFromString(inode_names[i]);
        if (attr_strs[i] == NULL || inode_strs[i] == NULL)
            return NULL;
    }
    str_st_ino = PyUnicode_InternFromString("st_ino");
    str_entry_timeout = PyUnicode_InternFromString("entry_timeout");
    str_attr_timeout = PyUnicode_InternFromString("attr_timeout");
    str_st_size = PyUnicode_InternFromString("st_size");
    str_st_blksize = PyUnicode_InternFromString("st_blksize");
    str_st_blocks = PyUnicode_InternFromString("st_blocks");
    if (str_st_ino == NULL || str_entry_timeout == NULL || str_attr_timeout == NULL
            || str_st_size == NULL || str_st_blksize == NULL || str_st_blocks == NULL)
        return NULL;
    if (PyType_Ready(&CodecType) < 0 || PyType_Ready(&SpecCoreType) < 0
            || PyType_Ready(&CacheCoreType) < 0 || PyType_Ready(&AttrBuilderType) < 0
            || PyType_Ready(&RowOwnerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "InodeCodec", (PyObject *)&CodecType) < 0
            || PyModule_AddObjectRef(m, "SpecCore", (PyObject *)&SpecCoreType) < 0
            || PyModule_AddObjectRef(m, "CacheCore", (PyObject *)&CacheCoreType) < 0
            || PyModule_AddObjectRef(m, "AttrBuilder", (PyObject *)&AttrBuilderType) < 0
            || PyModule_AddObjectRef(m, "RowOwner", (PyObject *)&RowOwnerType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
