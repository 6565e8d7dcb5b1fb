"""Regular files on a mounted volume: contents, concurrency, sizes, holes, big offsets."""

import errno
import mmap
import os
import random
import shutil
import subprocess
import sys
import threading

import pytest

from conftest import needs_fuse
from posix_helpers import df, fallocate, sha256

pytestmark = needs_fuse

MiB = 1 << 20
GiB = 1 << 30


def read_all(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_random_offset_writes_match_a_model(mounts):
    mp = mounts.mount("vol")
    path = os.path.join(mp, "f")
    rng = random.Random(1234)
    model = bytearray()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        for i in range(300):
            off = rng.randrange(0, 3 * MiB)
            data = rng.randbytes(rng.choice([1, 17, 4096, 5000, 128 * 1024, 300_000]))
            assert os.pwrite(fd, data, off) == len(data)
            if len(model) < off:
                model.extend(bytes(off - len(model)))
            model[off:off + len(data)] = data
            if i % 50 == 49:  # read back through the same fd, partly from buffers
                check = rng.randrange(0, len(model))
                assert os.pread(fd, 70_000, check) == bytes(model[check:check + 70_000])
            if i == 150:
                os.fsync(fd)  # some blocks stored, others still buffered
        assert os.fstat(fd).st_size == len(model)
    finally:
        os.close(fd)
    assert read_all(path) == model
    mounts.umount(mp)
    mp = mounts.mount("vol")
    assert read_all(os.path.join(mp, "f")) == model


def test_overwrite_in_place_keeps_the_rest(vol):
    path = os.path.join(vol, "f")
    original = os.urandom(1 * MiB)
    with open(path, "wb") as f:
        f.write(original)
    with open(path, "r+b") as f:
        f.seek(131_000)
        f.write(b"Z" * 200)  # across a block boundary (128 KiB)
    expected = original[:131_000] + b"Z" * 200 + original[131_200:]
    assert read_all(path) == expected
    st = os.stat(path)
    assert st.st_size == MiB and st.st_blocks == MiB // 512  # random data: all of it stored
    # Rewriting a file through a new open with O_TRUNC, while another fd is open.
    with open(path, "rb") as reader:
        with open(path, "wb") as f:
            f.write(b"short")
        assert reader.read() == b"short"
    assert read_all(path) == b"short" and os.stat(path).st_size == 5


def test_threads_write_disjoint_regions_of_one_file(vol):
    path = os.path.join(vol, "shared")
    region = 700_001  # not block aligned: neighbours share blocks
    parts = [os.urandom(region) for _ in range(6)]
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    errors = []

    def writer(i):
        try:
            data = parts[i]
            for off in range(0, region, 9_999):  # many small writes, interleaved
                os.pwrite(fd, data[off:off + 9_999], i * region + off)
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(len(parts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    os.close(fd)
    assert not errors
    assert read_all(path) == b"".join(parts)


WRITER = """
import os, sys
path, index, region, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
import random
data = random.Random(seed).randbytes(region)
fd = os.open(path, os.O_WRONLY)
for off in range(0, region, 12_345):
    os.pwrite(fd, data[off:off + 12_345], index * region + off)
os.fsync(fd)
os.close(fd)
"""


def test_processes_write_disjoint_regions_of_one_file(vol):
    import random

    path = os.path.join(vol, "shared")
    region = 1_000_003
    open(path, "wb").close()
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, path, str(i), str(region), str(i)])
             for i in range(4)]
    assert [p.wait(120) for p in procs] == [0] * 4
    expected = b"".join(random.Random(i).randbytes(region) for i in range(4))
    assert read_all(path) == expected


def test_o_append_from_several_writers(vol):
    path = os.path.join(vol, "log")
    with open(path, "wb") as f:
        f.write(b"head\n")
    a = os.open(path, os.O_WRONLY | os.O_APPEND)
    b = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.lseek(a, 0, os.SEEK_SET)  # O_APPEND ignores the position
        os.write(a, b"a1\n")
        os.write(b, b"b1\n")
        os.pwrite(a, b"a2\n", 0)  # Linux: pwrite on O_APPEND appends too
        os.write(b, b"b2\n")
    finally:
        os.close(a)
        os.close(b)
    assert read_all(path) == b"head\na1\nb1\na2\nb2\n"

    # Processes appending lines at once: every line lands whole, none is lost.
    code = ("import os,sys\nfd=os.open(sys.argv[1], os.O_WRONLY|os.O_APPEND)\n"
            "for i in range(200): os.write(fd, f'{sys.argv[2]}-{i:04d}\\n'.encode())\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, path, f"p{k}"]) for k in range(3)]
    assert [p.wait(60) for p in procs] == [0, 0, 0]
    lines = read_all(path).decode().splitlines()
    assert lines[:5] == ["head", "a1", "b1", "a2", "b2"]
    assert sorted(lines[5:]) == sorted(f"p{k}-{i:04d}" for k in range(3) for i in range(200))
    for k in range(3):  # each writer's lines in its own order
        mine = [ln for ln in lines if ln.startswith(f"p{k}-")]
        assert mine == sorted(mine)


@pytest.mark.parametrize("how", ["path", "fd", "fd-unflushed"])
def test_truncate_down_then_up_reads_zeros(mounts, how):
    mp = mounts.mount("vol")
    path = os.path.join(mp, "t")
    data = os.urandom(MiB + 5000)
    with open(path, "wb") as f:
        f.write(data)
    fd = os.open(path, os.O_RDWR | (os.O_DIRECT if how == "fd-unflushed" else 0))
    try:
        if how == "fd-unflushed":
            # O_DIRECT bypasses the page cache, so the volume holds this write
            # buffered (not yet stored) when the truncate comes.
            buf = mmap.mmap(-1, 4096)
            buf.write(b"D" * 4096)
            assert os.pwrite(fd, buf, 0) == 4096
            data = b"D" * 4096 + data[4096:]
        if how == "path":
            os.truncate(path, 100)
            os.truncate(path, 3 * MiB)
        else:
            os.ftruncate(fd, 100)
            os.ftruncate(fd, 3 * MiB)
    finally:
        os.close(fd)
    expected = data[:100] + bytes(3 * MiB - 100)
    assert os.stat(path).st_size == 3 * MiB
    assert read_all(path) == expected
    # The dropped tail is gone from the store too, not only from the caches.
    assert df(mounts.store_path)["volumes"]["vol"] <= 128 * 1024
    mounts.umount(mp)
    mp = mounts.mount("vol")
    assert read_all(os.path.join(mp, "t")) == expected


def test_truncate_within_a_block_then_write_past_it(vol):
    path = os.path.join(vol, "t")
    with open(path, "wb") as f:
        f.write(b"x" * 100_000)
    with open(path, "r+b") as f:
        f.truncate(10)
        f.seek(50_000)
        f.write(b"y")  # the bytes between 10 and 50000 were dropped: zeros
    assert read_all(path) == b"x" * 10 + bytes(49_990) + b"y"


def test_sparse_5gib_file_costs_nothing_and_reads_zeros(mounts):
    mp = mounts.mount("vol")
    path = os.path.join(mp, "sparse")
    size = 5 * GiB
    islands = {0: b"first", 1 * GiB + 12_345: os.urandom(300_000),
               (1 << 32) - 3: b"across-4GiB", size - 1: b"!"}
    with open(path, "wb") as f:
        for off, data in islands.items():
            f.seek(off)
            f.write(data)
    st = os.stat(path)
    assert st.st_size == size
    # Only the blocks that hold islands are stored (128 KiB blocks; one island spans 4).
    assert st.st_blocks * 512 <= 8 * 128 * 1024
    usage = df(mounts.store_path)
    assert usage["volumes"]["vol"] <= 8 * 128 * 1024
    assert usage["stored_bytes"] <= 8 * 128 * 1024
    vfs = os.statvfs(mp)
    assert vfs.f_bfree * vfs.f_bsize > 0

    def check(mp):
        rng = random.Random(5)
        with open(os.path.join(mp, "sparse"), "rb") as f:
            for off, data in islands.items():
                start = max(0, off - 200_000)
                f.seek(start)
                got = f.read(off - start + len(data) + 200_000)
                assert got[off - start: off - start + len(data)] == data
                before, after = got[:off - start], got[off - start + len(data):]
                assert before.count(0) == len(before) and after.count(0) == len(after)
            for _ in range(12):  # holes far from every island
                off = rng.randrange(2 * GiB, (1 << 32) - 2 * MiB)
                f.seek(off)
                assert f.read(MiB) == bytes(MiB)
            f.seek(size - 1)
            assert f.read(10) == b"!"

    check(mp)
    mounts.umount(mp)
    mp = mounts.mount("vol")
    check(mp)
    assert os.stat(os.path.join(mp, "sparse")).st_blocks * 512 <= 8 * 128 * 1024


def test_offsets_above_4gib_do_not_alias_low_ones(mounts):
    mp = mounts.mount("vol")
    path = os.path.join(mp, "big")
    low, high = os.urandom(200_000), os.urandom(200_000)
    offsets = [(7, low), ((1 << 32) + 7, high), ((1 << 33) + (1 << 31) + 1, b"far")]
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        for off, data in offsets:
            os.pwrite(fd, data, off)
    finally:
        os.close(fd)

    def check(mp):
        fd = os.open(os.path.join(mp, "big"), os.O_RDONLY)
        try:
            for off, data in offsets:
                assert os.pread(fd, len(data), off) == data
            assert os.fstat(fd).st_size == (1 << 33) + (1 << 31) + 4
        finally:
            os.close(fd)

    check(mp)
    mounts.umount(mp)
    mp = mounts.mount("vol")
    check(mp)


def test_fallocate_is_a_clean_error(vol):
    """pyfuse3 has no fallocate handler: the kernel answers EOPNOTSUPP (and stops
    asking). glibc's posix_fallocate then falls back to writing zeros itself."""
    path = os.path.join(vol, "f")
    with open(path, "wb") as f:
        f.write(b"abc")
    fd = os.open(path, os.O_RDWR)
    try:
        for _ in range(2):  # the second call is answered by the kernel alone
            with pytest.raises(OSError) as info:
                fallocate(fd, 0, 0, MiB)
            assert info.value.errno == errno.EOPNOTSUPP
        assert os.fstat(fd).st_size == 3
        os.posix_fallocate(fd, 0, MiB)  # emulated by glibc
        assert os.fstat(fd).st_size == MiB
    finally:
        os.close(fd)
    assert read_all(path) == b"abc" + bytes(MiB - 3)
    if shutil.which("fallocate"):
        proc = subprocess.run(["fallocate", "-l", "1M", os.path.join(vol, "g")],
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode != 0 and "not supported" in proc.stderr
    # The mount is still alive and well.
    with open(os.path.join(vol, "after"), "wb") as f:
        f.write(b"ok")
    assert read_all(os.path.join(vol, "after")) == b"ok"


def test_fifo_passes_data_between_processes(vol):
    path = os.path.join(vol, "pipe")
    os.mkfifo(path, 0o600)
    st = os.lstat(path)
    assert st.st_mode & 0o170000 == 0o010000 and st.st_mode & 0o777 == 0o600
    # More than a pipe buffer; the writer blocks in open() until we open to read.
    writer = subprocess.Popen(
        [sys.executable, "-c",
         "import random, sys; f = open(sys.argv[1], 'wb'); "
         "f.write(random.Random(7).randbytes(300_000)); f.close()", path])
    with open(path, "rb") as f:
        got = f.read()
    assert writer.wait(60) == 0
    assert got == random.Random(7).randbytes(300_000)
    assert os.path.exists(path) and os.stat(path).st_size == 0


def test_statvfs_is_sane(mounts):
    mp = mounts.mount("vol")
    vfs = os.statvfs(mp)
    host = os.statvfs(mounts.store_path)
    assert vfs.f_bsize == 4096 and vfs.f_frsize == 4096
    assert vfs.f_namemax == 255
    assert vfs.f_blocks * vfs.f_frsize == pytest.approx(host.f_blocks * host.f_frsize, rel=0.01)
    assert 0 < vfs.f_bavail <= vfs.f_blocks
    assert vfs.f_files > vfs.f_ffree > 0
    with pytest.raises(OSError) as info:
        open(os.path.join(mp, "n" * 256), "wb")
    assert info.value.errno == errno.ENAMETOOLONG
    open(os.path.join(mp, "n" * 255), "wb").close()


def test_statvfs_of_a_sized_volume_shows_its_quota(mounts):
    mounts.create("small", "size=64M")
    mp = mounts.mount("small")
    vfs = os.statvfs(mp)
    assert vfs.f_blocks * vfs.f_frsize == 64 * MiB
    before = vfs.f_bavail
    with open(os.path.join(mp, "f"), "wb") as f:
        f.write(os.urandom(8 * MiB))
    after = os.statvfs(mp).f_bavail
    assert before - after == 8 * MiB // 4096
    assert sha256(os.path.join(mp, "f"))


def test_every_call_on_an_over_long_name_is_enametoolong(vol):
    long = os.path.join(vol, "n" * 256)
    ok = os.path.join(vol, "n" * 255)
    open(ok, "w").close()
    os.mkdir(os.path.join(vol, "d"))
    calls = {
        "stat": lambda: os.stat(long),
        "lstat": lambda: os.lstat(long),
        "open": lambda: open(long, "rb"),
        "access": lambda: os.access(long, os.F_OK) or os.stat(long),
        "unlink": lambda: os.unlink(long),
        "rmdir": lambda: os.rmdir(long),
        "chmod": lambda: os.chmod(long, 0o600),
        "chown": lambda: os.chown(long, 1, 1),
        "lchown": lambda: os.lchown(long, 1, 1),
        "truncate": lambda: os.truncate(long, 0),
        "utime": lambda: os.utime(long),
        "readlink": lambda: os.readlink(long),
        "getxattr": lambda: os.getxattr(long, "user.x"),
        "link from": lambda: os.link(long, os.path.join(vol, "x")),
        "link to": lambda: os.link(ok, long),
        "rename from": lambda: os.rename(long, os.path.join(vol, "x")),
        "rename to": lambda: os.rename(ok, long),
        "below": lambda: os.stat(os.path.join(long, "f")),
        "mkdir": lambda: os.mkdir(long),
        "symlink": lambda: os.symlink("t", long),
    }
    got = {}
    for name, call in calls.items():
        try:
            call()
            got[name] = "ok"
        except OSError as e:
            got[name] = errno.errorcode[e.errno]
    assert got == {name: "ENAMETOOLONG" for name in calls}
    assert sorted(os.listdir(vol)) == ["d", "n" * 255]
