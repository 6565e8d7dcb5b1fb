"""`fusevol export` and `fusevol import`: standard tar archives in and out of volumes,
checked against real mounts and GNU tar."""

import gzip
import io
import json
import os
import pty
import stat
import subprocess
import sys
import tarfile

import pytest

from conftest import needs_fuse, run_cli
from posix_helpers import sha256

MTIME = 1_600_000_000_123_456_789  # nanoseconds matter
GNU_TAR = ["tar", "--xattrs", "--xattrs-include=*"]


def build_tree(root: str) -> None:
    """A tree with every kind of file and attribute tar carries."""
    p = lambda *parts: os.path.join(root, *parts)  # noqa: E731
    os.makedirs(p("docs", "deep", "deeper"))
    os.mkdir(p("shared"), 0o755)
    os.chmod(p("shared"), 0o2775)  # setgid directory
    os.mkdir(p("tmp"))
    os.chmod(p("tmp"), 0o1777)
    with open(p("big.bin"), "wb") as f:
        f.write(os.urandom(5 * 1024 * 1024 + 4321))
    open(p("empty"), "wb").close()
    with open(p("sparse"), "wb") as f:  # a hole, then data, then a hole to the end
        f.seek(3 * 1024 * 1024)
        f.write(b"middle of nowhere")
        f.truncate(8 * 1024 * 1024)
    with open(p("docs", "deep", "deeper", "note.txt"), "w") as f:
        f.write("deep note\n")
    with open(p("shared", "group-file"), "w") as f:
        f.write("shared\n")
    with open(p("setuid-tool"), "wb") as f:
        f.write(b"#!/bin/sh\necho hi\n")
    os.chmod(p("setuid-tool"), 0o4755)
    with open(p("docs", "original"), "w") as f:
        f.write("two names, one file\n")
    os.link(p("docs", "original"), p("shared", "second-name"))
    os.symlink("../big.bin", p("docs", "link-to-big"))
    os.symlink("/nowhere/absolute", p("dangling"))
    os.mkfifo(p("fifo"), 0o640)
    os.mknod(p("null-device"), stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.setxattr(p("docs", "original"), "user.comment", b"hello xattr")
    os.setxattr(p("big.bin"), "user.binary", bytes(range(256)))
    os.setxattr(p("docs"), "user.on-a-dir", b"yes")
    os.chown(p("docs", "original"), 1001, 1002)
    os.chown(p("shared", "group-file"), 2001, 2002)
    os.chown(p("shared"), 3001, 3002)
    os.chown(p("dangling"), 4001, 4002, follow_symlinks=False)
    # Times last, children before their directories (making entries changes them).
    for n, (dirpath, dirnames, filenames) in enumerate(sorted(os.walk(root), reverse=True)):
        for name in dirnames + filenames:
            if not os.path.isdir(os.path.join(dirpath, name)) or os.path.islink(os.path.join(dirpath, name)):
                os.utime(os.path.join(dirpath, name), ns=(MTIME, MTIME + n * 1_000_001), follow_symlinks=False)
        os.utime(dirpath, ns=(MTIME, MTIME - n * 7_000_003))


def tree_state(root: str, xattrs: bool = True, ns: bool = True) -> dict:
    """Everything tar should carry, per path; plus which paths share an inode."""
    state, by_ino = {}, {}
    for dirpath, dirnames, filenames in os.walk(root):
        names = [dirpath] + [os.path.join(dirpath, n) for n in filenames + dirnames
                             if os.path.islink(os.path.join(dirpath, n))
                             or not os.path.isdir(os.path.join(dirpath, n))]
        for path in names:
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            entry = {"type": stat.S_IFMT(st.st_mode), "mode": oct(stat.S_IMODE(st.st_mode)),
                     "uid": st.st_uid, "gid": st.st_gid,
                     "mtime": st.st_mtime_ns if ns else st.st_mtime_ns // 10**9}
            if stat.S_ISREG(st.st_mode):
                entry["size"], entry["sha256"] = st.st_size, sha256(path)
            elif stat.S_ISLNK(st.st_mode):
                entry["target"] = os.readlink(path)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                entry["rdev"] = st.st_rdev
            if xattrs and not stat.S_ISLNK(st.st_mode):
                entry["xattrs"] = {k: os.getxattr(path, k) for k in sorted(os.listxattr(path))}
            if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
                by_ino.setdefault(st.st_ino, []).append(rel)
            state[rel] = entry
    state["hardlinks"] = sorted(sorted(group) for group in by_ino.values())
    return state


def cli_json(store_path: str, *args) -> dict:
    return json.loads(run_cli(store_path, *args, "--json").stdout)


@needs_fuse
def test_round_trip_through_mounted_volumes_and_gnu_tar(mounts, store_path, tmp_path):
    src = mounts.mount("src")
    build_tree(src)
    expected = tree_state(src)
    assert expected["hardlinks"] == [["docs/original", "shared/second-name"]]
    archive = str(tmp_path / "src.tar")

    # Exported while mounted (the worker is flushed), imported into a new volume.
    run_cli(store_path, "export", "src", "-o", archive)
    unique_before = cli_json(store_path, "df")["unique_bytes"]
    assert run_cli(store_path, "import", "copy", archive).stdout.decode().strip() == "copy"
    copy = mounts.mount("copy", create=False)
    assert tree_state(copy) == expected
    assert os.lstat(os.path.join(copy, "sparse")).st_blocks * 512 < 1024 * 1024  # holes stay holes
    # The same content is stored once (the sparse file's one data block may be cut differently).
    assert cli_json(store_path, "df")["unique_bytes"] - unique_before <= 128 * 1024

    # GNU tar extracts our archive to the same tree.
    plain = tmp_path / "plain"
    plain.mkdir()
    subprocess.run([*GNU_TAR, "-xpf", archive, "-C", str(plain)], check=True)
    assert tree_state(str(plain)) == expected


@needs_fuse
def test_gnu_tar_archive_imports_to_an_equal_volume(mounts, store_path, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    build_tree(str(plain))
    expected = tree_state(str(plain))
    archive = tmp_path / "plain.tar.gz"
    subprocess.run([*GNU_TAR, "--format=posix", "-czpf", str(archive), "-C", str(plain), "."], check=True)
    # Compressed, from stdin.
    run_cli(store_path, "import", "fromtar", input=archive.read_bytes())
    mp = mounts.mount("fromtar", create=False)
    assert tree_state(mp) == expected


@needs_fuse
def test_docker_backup_recipe_restores(mounts, store_path, tmp_path):
    """`tar cvf backup.tar /dbdata` (GNU format: whole seconds, no xattrs) restored
    into a new volume as `tar xvf backup.tar --strip 1` would."""
    dbdata = tmp_path / "dbdata"
    dbdata.mkdir()
    build_tree(str(dbdata))
    archive = tmp_path / "backup.tar"
    subprocess.run(["tar", "cf", str(archive), str(dbdata)], check=True, capture_output=True)
    depth = len(dbdata.parts) - 1  # tar drops the leading '/'
    run_cli(store_path, "import", "restored", str(archive), "--strip-components", str(depth))
    mp = mounts.mount("restored", create=False)
    expected = tree_state(str(dbdata), xattrs=False, ns=False)
    got = tree_state(mp, xattrs=False, ns=False)
    del expected["."], got["."]  # the stripped top folder was the volume's root
    assert got == expected


@needs_fuse
def test_export_of_a_snapshot_keeps_its_content(mounts, store_path, tmp_path):
    mp = mounts.mount("live")
    with open(os.path.join(mp, "kept"), "wb") as f:
        f.write(b"v1" * 100_000)
    with open(os.path.join(mp, "doomed"), "w") as f:
        f.write("soon gone")
    run_cli(store_path, "snapshot", "create", "live@before")
    with open(os.path.join(mp, "kept"), "r+b") as f:
        f.write(b"v2")
    os.unlink(os.path.join(mp, "doomed"))
    with open(os.path.join(mp, "new"), "w") as f:
        f.write("new")

    def members(ref: str) -> dict:
        out = run_cli(store_path, "export", ref).stdout
        with tarfile.open(fileobj=io.BytesIO(out)) as tar:
            return {m.name: tar.extractfile(m).read() for m in tar if m.isreg()}

    assert members("live@before") == {"./doomed": b"soon gone", "./kept": b"v1" * 100_000}
    assert members("live") == {"./kept": b"v2" + b"v1" * 99_999, "./new": b"new"}
    # The live export's own snapshot is gone again.
    assert [s["name"] for s in cli_json(store_path, "snapshot", "ls", "live")] == ["before"]


def _sample_tar() -> tuple[bytes, list[tarfile.TarInfo]]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, size in (("a.bin", 400_000), ("b.txt", 10), ("c.bin", 300_000)):
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(os.urandom(size)))
        members = tar.getmembers()
    return buf.getvalue(), members


def _damaged_archives() -> dict[str, bytes]:
    good, members = _sample_tar()
    second = members[1]
    end_of_second = second.offset_data + 512  # b.txt's data, padded to a block
    flipped = bytearray(good)
    flipped[members[2].offset + 10] ^= 0xFF  # inside c.bin's header: checksum fails
    return {
        "cut inside file data": good[: members[0].offset_data + 200_000],
        "cut at a member boundary": good[:end_of_second],
        "cut inside a header": good[: end_of_second + 100],
        "damaged header": bytes(flipped),
        "truncated gzip": gzip.compress(good)[:-100],
        "not a tar": b"hello, this is no archive\n" * 100,
    }


@pytest.mark.parametrize("case", list(_damaged_archives()))
def test_damaged_archive_fails_and_leaves_no_volume(store_path, tmp_path, case):
    good, _ = _sample_tar()
    run_cli(store_path, "import", "kept", input=good)
    before = cli_json(store_path, "df")
    for what in ("store_file_bytes", "disk_bytes", "overhead"):
        before.pop(what)  # the file may grow; what it holds may not
    path = tmp_path / "bad.tar"
    path.write_bytes(_damaged_archives()[case])

    proc = run_cli(store_path, "import", "broken", str(path), check=False)
    message = proc.stderr.decode()
    assert proc.returncode != 0
    assert message.startswith("fusevol: ") and "Traceback" not in message
    assert "archive" in message
    assert run_cli(store_path, "volume", "inspect", "broken", check=False).returncode == 2
    after = cli_json(store_path, "df")
    for what in ("store_file_bytes", "disk_bytes", "overhead"):
        after.pop(what)
    assert after == before


def test_unsafe_member_names_stay_inside_the_volume(store_path, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    buf = io.BytesIO()

    def add(tar, name, data=b"x", **fields):
        info = tarfile.TarInfo(name)
        for key, value in fields.items():
            setattr(info, key, value)
        if info.isreg():
            info.size = len(data)
        tar.addfile(info, io.BytesIO(data) if info.isreg() else None)

    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        add(tar, "../escaped")
        add(tar, "a/../../escaped-too")
        add(tar, str(outside / "absolute"))
        add(tar, "link", type=tarfile.SYMTYPE, linkname=str(outside))
        add(tar, "link/through-symlink")
        add(tar, "hard", type=tarfile.LNKTYPE, linkname="../etc/passwd")
        add(tar, "fine", b"fine")
    run_cli(store_path, "volume", "create", "unrelated")
    proc = run_cli(store_path, "import", "safe", input=buf.getvalue())
    warnings = proc.stderr.decode()
    assert "contains '..'" in warnings and "removing leading '/'" in warnings
    assert "through-symlink" in warnings

    assert list(outside.iterdir()) == []
    assert not (tmp_path / "escaped").exists() and not (tmp_path.parent / "escaped").exists()
    out = run_cli(store_path, "export", "safe").stdout
    with tarfile.open(fileobj=io.BytesIO(out)) as tar:
        names = {m.name for m in tar}
        assert tar.extractfile("./fine").read() == b"fine"
    parts = str(outside / "absolute").lstrip("/").split("/")  # made inside, as tar does
    made = {"./" + "/".join(parts[:i]) for i in range(1, len(parts) + 1)}
    assert names == {".", "./link", "./fine"} | made


def test_export_refuses_a_terminal(store_path):
    run_cli(store_path, "volume", "create", "tty")
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "fusevol", "--store", store_path, "export", "tty"],
                              stdout=terminal, stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(terminal)
        os.close(controller)
    assert proc.returncode == 4
    assert b"terminal" in proc.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")
def test_export_to_a_device_writes_to_it_and_keeps_it(store_path, tmp_path):
    # -o /dev/null: the archive goes to the device; a file renamed over the
    # path (how a regular file appears whole) would replace the device itself.
    run_cli(store_path, "volume", "create", "dev")
    null = str(tmp_path / "null")
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    run_cli(store_path, "export", "dev", "-o", null)
    assert stat.S_ISCHR(os.stat(null).st_mode)
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", fifo], stdout=subprocess.PIPE)
    run_cli(store_path, "export", "dev", "-o", fifo)
    archive = reader.communicate(timeout=60)[0]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert tarfile.open(fileobj=io.BytesIO(archive)).getnames() == ["."]


@pytest.mark.parametrize("compress", ["zstd", "xz", "bz2"])
def test_compressed_archive_and_export_of_a_view(store_path, tmp_path, compress):
    import bz2
    import lzma

    import zstandard

    good, _ = _sample_tar()
    packed = {"zstd": zstandard.ZstdCompressor().compress, "xz": lzma.compress, "bz2": bz2.compress}[compress](good)
    run_cli(store_path, "import", "packed", "--strip-components", "0", input=packed)
    with tarfile.open(fileobj=io.BytesIO(good)) as tar:
        expected = {"./" + m.name: tar.extractfile(m).read() for m in tar}
    out = run_cli(store_path, "export", "packed").stdout
    with tarfile.open(fileobj=io.BytesIO(out)) as tar:
        assert {m.name: tar.extractfile(m).read() for m in tar if m.isreg()} == expected

    # A view exports the folder it shows, as its root.
    run_cli(store_path, "import", "nested", "-", input=_tar_of({"top/sub/file": b"deep", "top/other": b"x"}))
    run_cli(store_path, "volume", "create", "view", "-o", "source=nested", "-o", "subpath=top/sub")
    with tarfile.open(fileobj=io.BytesIO(run_cli(store_path, "export", "view").stdout)) as tar:
        assert [m.name for m in tar] == [".", "./file"]


def _tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@needs_fuse
def test_export_writes_holes_as_holes_that_gnu_tar_restores(mounts, store_path, tmp_path):
    src = mounts.mount("holey")
    with open(os.path.join(src, "disk.img"), "wb") as f:  # 64 MiB: data at 1 MiB and at 40 MiB
        f.seek(1 << 20)
        f.write(b"boot" * 50_000)
        f.seek(40 << 20)
        f.write(b"data" * 1000)
        f.truncate(64 << 20)
    with open(os.path.join(src, "tail"), "wb") as f:  # ends with data after a hole
        f.seek(5 << 20)
        f.write(b"end")
    archive = str(tmp_path / "holey.tar")
    run_cli(store_path, "export", "holey", "-o", archive)
    assert os.path.getsize(archive) < 1 << 20  # not the 69 MiB of zeros

    plain = tmp_path / "plain"
    plain.mkdir()
    subprocess.run([*GNU_TAR, "-xpf", archive, "-C", str(plain)], check=True)
    for name in ("disk.img", "tail"):
        with open(os.path.join(src, name), "rb") as a, open(plain / name, "rb") as b:
            assert a.read() == b.read(), name
    assert os.lstat(plain / "disk.img").st_size == 64 << 20
    assert os.lstat(plain / "disk.img").st_blocks * 512 < 2 << 20  # GNU tar made holes
    assert sorted(os.listdir(plain)) == ["disk.img", "tail"]

    # And it comes back in: holes stay holes in the volume too.
    run_cli(store_path, "import", "back", archive)
    back = mounts.mount("back", create=False)
    with open(os.path.join(src, "disk.img"), "rb") as a, open(os.path.join(back, "disk.img"), "rb") as b:
        assert a.read() == b.read()
    assert os.lstat(os.path.join(back, "disk.img")).st_blocks * 512 < 2 << 20
