"""The C helpers and their pure-Python twins give the same answers on the same inputs."""

import os
import stat
import subprocess
import sys

import pytest

from fusevol import native

try:
    from fusevol import _fusevol_native
except ImportError:  # not built: scripts/test.sh builds it, and then requires it
    _fusevol_native = None

REQUIRED = os.environ.get("FUSEVOL_REQUIRE_NATIVE") == "1"

IMPLEMENTATIONS = [
    pytest.param(native.is_zero_py, id="python"),
    pytest.param(getattr(_fusevol_native, "is_zero", None), id="c", marks=pytest.mark.skipif(
        _fusevol_native is None and not REQUIRED,
        reason="C extension not built (python setup.py build_ext --inplace)")),
]

BS = 128 << 10


def inputs():
    yield b""
    yield b"\0"
    yield b"\1"
    for n in (15, 16, 17, 4096, BS - 1, BS):
        yield bytes(n)
        for pos in sorted({0, 1, 15, 16, 17, n // 2, n - 1}):
            if pos < n:
                data = bytearray(n)
                data[pos] = 0x80
                yield bytes(data)
    yield os.urandom(BS)
    yield b"\0" * (BS - 1) + b"\xff"


@pytest.mark.parametrize("is_zero", IMPLEMENTATIONS)
def test_is_zero_matches_a_byte_by_byte_check(is_zero):
    for data in inputs():
        expected = all(b == 0 for b in data)
        assert is_zero(data) is expected, (len(data), data.find(b"\x80"))


@pytest.mark.parametrize("is_zero", IMPLEMENTATIONS)
def test_is_zero_takes_any_contiguous_buffer(is_zero):
    block = bytearray(BS)
    assert is_zero(block) and is_zero(memoryview(block)) and is_zero(memoryview(block)[100:200])
    block[150] = 1
    assert not is_zero(block) and not is_zero(memoryview(block)[100:200])
    assert is_zero(memoryview(block)[151:])


@pytest.mark.parametrize("is_zero", IMPLEMENTATIONS)
def test_is_zero_refuses_what_is_not_a_buffer(is_zero):
    with pytest.raises(TypeError):
        is_zero(12)


def test_c_extension_is_built_when_required():
    if not REQUIRED:
        pytest.skip("FUSEVOL_REQUIRE_NATIVE=1 is set by scripts/test.sh, which builds the extension")
    assert _fusevol_native is not None
    assert native.IMPLEMENTATION == "c"
    assert native.rows is not None


@pytest.mark.parametrize("setting,expected", [("0", "python"), ("1", None)])
def test_env_switch_chooses_the_implementation(setting, expected):
    env = {**os.environ, "FUSEVOL_NATIVE": setting}
    out = subprocess.run([sys.executable, "-c", "from fusevol import native; print(native.IMPLEMENTATION)"],
                         env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert out == (expected or ("c" if _fusevol_native is not None else "python"))


# -- inode records (native/_fusevol_rows.c InodeCodec; twins: schema.Inode's methods) --

from fusevol.store import schema  # noqa: E402
from fusevol.store.schema import NO_TREE, Inode  # noqa: E402

try:
    from fusevol import _fusevol_rows
except ImportError:
    _fusevol_rows = None

needs_rows = pytest.mark.skipif(_fusevol_rows is None and not REQUIRED,
                                reason="C extension not built (python setup.py build_ext --inplace)")


def _c_codec():
    names = list(schema.INODE_FIELDS)
    codec = _fusevol_rows.InodeCodec(Inode, names, schema.unpack_py, schema.pack_py,
                                     schema.copy_py)
    return codec.unpack, codec.pack, codec.copy


CODECS = [
    pytest.param(lambda: (schema.unpack_py, schema.pack_py, schema.copy_py), id="python"),
    pytest.param(_c_codec, id="c", marks=needs_rows),
]

NS = 10**9
I64 = (1 << 63) - 1


def sample_inodes():
    yield Inode(stat.S_IFREG | 0o644, 0, 0)
    yield Inode(stat.S_IFREG | 0o600, 1000, 1000, 1, 4096, 1, 2, 3, 0, 0, 4096, 0)
    yield Inode(stat.S_IFDIR | 0o755, 2**32 - 1, 7, 2**32 - 1, 2**64 - 1, -1, -(1 << 63), I64,
                2**64 - 1, 5, 2**64 - 1, 2**32 - 1 & ~schema.WIDE_TIMES, os.urandom(32))
    yield Inode(stat.S_IFLNK | 0o777, 0, 0, 1, 6, 5, 5, 5, target=b"target")
    yield Inode(stat.S_IFREG | 0o644, 0, 0, flags=schema.LAZY | schema.WIDE_TIMES)  # flag cleared
    yield Inode(stat.S_IFREG | 0o644, 0, 0, atime_ns=(I64 + 1), mtime_ns=-(1 << 63) - 1,
                ctime_ns=3000 * 365 * 86400 * NS, target=b"t")  # wide times
    yield Inode(stat.S_IFREG | 0o644, 0, 0, tree_id=b"\1" + bytes(31), flags=schema.LAZY)


def bad_inodes():
    yield Inode(schema.MODE_MAX + 1, 0, 0)  # FsError(EINVAL)
    yield Inode(stat.S_IFREG, -1, 0)  # struct.error
    yield Inode(stat.S_IFREG, 0, 2**32)
    yield Inode(stat.S_IFREG, 0, 0, size=2**64)
    yield Inode(stat.S_IFREG, 0, 0, size=1.5)
    yield Inode(stat.S_IFREG, 0, 0, target="text")


def _outcome(fn, *args):
    try:
        return "ok", fn(*args)
    except Exception as e:  # the same error type either way
        return "error", type(e)


@pytest.mark.parametrize("codec", CODECS)
def test_inode_records_match_the_python_encoding(codec):
    unpack, pack, copy = codec()
    for inode in sample_inodes():
        raw = schema.pack_py(inode)
        assert pack(inode) == raw
        for form in (raw, memoryview(raw), schema.short_row(raw), bytearray(raw)):
            back = unpack(form)
            assert type(back) is Inode and back == schema.unpack_py(raw)
            assert back.flags == inode.flags & ~schema.WIDE_TIMES
        dup = copy(inode)
        assert type(dup) is Inode and dup == inode and dup is not inode
        dup.size += 1
        assert dup != inode


@pytest.mark.parametrize("codec", CODECS)
def test_inode_records_fail_as_python_does(codec):
    unpack, pack, _ = codec()
    for inode in bad_inodes():
        assert _outcome(pack, inode) == _outcome(schema.pack_py, inode), inode
    raw = schema.pack_py(Inode(stat.S_IFREG, 0, 0))
    for bad in (b"", raw[:50], b"\x07" + raw[1:], b"\x01\x80"):
        assert _outcome(unpack, bad) == _outcome(schema.unpack_py, bad), bad
    assert _outcome(unpack, 12) == _outcome(schema.unpack_py, 12)


@pytest.mark.parametrize("codec", CODECS)
def test_inode_records_of_a_subclass_or_a_missing_field_take_the_python_way(codec):
    unpack, pack, copy = codec()

    class Marked(Inode):
        __slots__ = ()

    marked = Marked(stat.S_IFREG | 0o644, 3, 4, size=9)
    assert pack(marked) == schema.pack_py(marked)
    assert type(copy(marked)) is type(schema.copy_py(marked))
    empty = Inode.__new__(Inode)
    assert _outcome(pack, empty) == _outcome(schema.pack_py, empty)
    assert _outcome(copy, empty) == _outcome(schema.copy_py, empty)
    assert unpack(schema.pack_py(marked)) == Inode(stat.S_IFREG | 0o644, 3, 4, size=9)


def test_inode_methods_are_the_c_ones_when_built():
    if _fusevol_rows is None or native.rows is None:
        pytest.skip("C extension not built, or FUSEVOL_NATIVE=0")
    inode = Inode(stat.S_IFREG | 0o644, 0, 0, size=5)
    assert Inode.unpack is schema.INODE_CODEC.unpack or Inode.unpack == schema.INODE_CODEC.unpack
    assert inode.pack() == schema.pack_py(inode) and inode.copy() == inode
    assert Inode.unpack(inode.pack()) == inode


# -- attributes answered to the kernel (AttrBuilder; twin: fs/attributes.py's AttrBuilderPy) --

import pyfuse3  # noqa: E402

from fusevol.fs import attributes  # noqa: E402

ATTR_FIELDS = ("st_ino", "generation", "entry_timeout", "attr_timeout", "st_mode", "st_nlink",
               "st_uid", "st_gid", "st_rdev", "st_size", "st_blksize", "st_blocks",
               "st_atime_ns", "st_mtime_ns", "st_ctime_ns")


def _builders():
    py = attributes.AttrBuilderPy(pyfuse3.EntryAttributes, 60.0, 30.0, 128 << 10)
    yield "python", py.build
    if _fusevol_rows is not None:
        codec = _fusevol_rows.InodeCodec(Inode, list(schema.INODE_FIELDS),
                                         schema.unpack_py, schema.pack_py, schema.copy_py)
        for name, with_codec in (("c", codec), ("c without codec", None)):
            yield name, _fusevol_rows.AttrBuilder(pyfuse3.EntryAttributes, 60.0, 30.0, 128 << 10,
                                                  with_codec, py.build).build


def _answer(build, *args):
    try:
        e = build(*args)
    except Exception as err:
        return "error", type(err)
    return "ok", tuple(getattr(e, f) for f in ATTR_FIELDS)


def attr_cases():
    class Marked(Inode):
        __slots__ = ()

    for inode in sample_inodes():
        yield 7, inode, inode.size, inode.data_bytes
    reg = Inode(stat.S_IFREG | 0o644, 5, 6, 2, 1000, -5, 7, 9, rdev=0, data_bytes=4096)
    for size, data in ((0, 0), (1, 0), (511, 512), (513, 4096), (10**6, 1), (2**40, 2**40 + 1)):
        yield 9, reg, size, data
    yield pyfuse3.ROOT_INODE, Inode(stat.S_IFDIR | 0o755, 0, 0, 2, 4096), 4096, 0
    yield 3, Inode(stat.S_IFCHR | 0o600, 0, 0, rdev=(8 << 8) | 1), 0, 0
    yield 4, Marked(stat.S_IFREG | 0o600, 1, 2, size=5), 5, 4096
    yield 5, reg, -1, 0  # not a u64: the twin's way (and its error)
    yield 5, reg, 2**64, 0
    yield 5, reg, 10, 2**70
    yield 5, Inode(stat.S_IFREG, 0, 0, atime_ns=2**70), 0, 0
    yield 5, Inode.__new__(Inode), 0, 0


def test_attributes_match_the_python_twin():
    builders = dict(_builders())
    if len(builders) == 1 and not REQUIRED:
        pytest.skip("C extension not built (python setup.py build_ext --inplace)")
    for case in attr_cases():
        expected = _answer(builders["python"], *case)
        for name, build in builders.items():
            assert _answer(build, *case) == expected, (name, case)
    assert _answer(builders["python"], 9, Inode(stat.S_IFREG, 0, 0), 513, 4096)[1][11] == 2


def test_volume_answers_with_the_c_attributes_when_built():
    if _fusevol_rows is None or native.rows is None:
        pytest.skip("C extension not built, or FUSEVOL_NATIVE=0")
    assert type(attributes.attr_builder(1.0, 1.0, 4096)) is _fusevol_rows.AttrBuilder
