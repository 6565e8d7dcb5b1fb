"""Real tools at work on a mounted volume: cp, tar, git, sqlite3, shutil; and remounts."""

import os
import shutil
import sqlite3
import stat
import subprocess

import pytest

from conftest import needs_fuse
from posix_helpers import tree_state

pytestmark = needs_fuse


def make_tree(root: str) -> None:
    """A small tree with every kind of entry, odd modes, old times and hardlinks."""
    os.makedirs(os.path.join(root, "a/b/c"))
    os.makedirs(os.path.join(root, "empty"))
    files = {
        "a/text": b"hello\n" * 1000,
        "a/b/random": os.urandom(700_000),
        "a/b/c/zeros": bytes(300_000),
        "a/b/c/tiny": b"t",
        "top": b"top",
        "exec.sh": b"#!/bin/sh\necho hi\n",
        "with space & \xc3\xa9.txt".encode(): b"unicode name",
    }
    for name, data in files.items():
        name = os.fsdecode(name)
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)
    os.chmod(os.path.join(root, "exec.sh"), 0o755)
    os.chmod(os.path.join(root, "a/b/c/tiny"), 0o600)
    os.chmod(os.path.join(root, "a/b"), 0o750)
    os.link(os.path.join(root, "top"), os.path.join(root, "a/top-hardlink"))
    os.symlink("../top", os.path.join(root, "a/top-symlink"))
    os.symlink("dangling", os.path.join(root, "empty-link"))
    os.mkfifo(os.path.join(root, "a/fifo"), 0o640)
    os.chown(os.path.join(root, "a/text"), 1234, 4321)
    for i, (dirpath, dirnames, filenames) in enumerate(sorted(os.walk(root), reverse=True)):
        for name in filenames + dirnames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.utime(path, ns=(1_500_000_000_123_456_789 + i, 1_400_000_000_987_654_321 + i))
    os.utime(root, ns=(1_500_000_000_000_000_000, 1_400_000_000_000_000_000))


def run(*cmd, cwd=None, **kw):
    # stdin from /dev/null: git's pack-objects reads revisions from an inherited
    # stdin, which under pytest may be a capture file holding other tests' logs.
    proc = subprocess.run(cmd, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=120, **kw)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr}"
    return proc


def test_cp_a_in_and_out_keeps_everything(mounts, tmp_path):
    src = str(tmp_path / "src")
    make_tree(src)
    mp = mounts.mount("vol")
    run("cp", "-a", src, os.path.join(mp, "copy"))
    assert tree_state(os.path.join(mp, "copy")) == tree_state(src)
    back = str(tmp_path / "back")
    run("cp", "-a", os.path.join(mp, "copy"), back)
    # diff reports fifos as differing whatever they are: leave them to tree_state.
    run("diff", "-r", "--no-dereference", "-x", "fifo", src, back)
    assert tree_state(back) == tree_state(src)
    mounts.umount(mp)
    mp = mounts.mount("vol")
    assert tree_state(os.path.join(mp, "copy")) == tree_state(src)


def test_tar_create_and_extract_inside_the_volume(vol, tmp_path):
    src = os.path.join(vol, "src")
    make_tree(src)
    run("tar", "--xattrs", "-cf", os.path.join(vol, "tree.tar"), "-C", vol, "src")
    listing = run("tar", "-tvf", os.path.join(vol, "tree.tar")).stdout
    assert "src/a/b/random" in listing and " link to src/" in listing  # the hardlink
    os.mkdir(os.path.join(vol, "out"))
    run("tar", "--xattrs", "-xpf", os.path.join(vol, "tree.tar"), "-C", os.path.join(vol, "out"))
    assert tree_state(os.path.join(vol, "out", "src")) == tree_state(src)
    # And a compressed one, extracted on the host.
    run("tar", "--format=posix", "-czf", os.path.join(vol, "tree.tgz"), "-C", vol, "src")
    host = str(tmp_path / "host")
    os.mkdir(host)
    run("tar", "-xzpf", os.path.join(vol, "tree.tgz"), "-C", host)
    assert tree_state(os.path.join(host, "src")) == tree_state(src)


@pytest.mark.skipif(not shutil.which("git"), reason="git is not installed")
def test_git_repository_inside_the_volume(mounts):
    mp = mounts.mount("vol")
    repo = os.path.join(mp, "repo")
    os.mkdir(repo)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org",
           "HOME": mp, "GIT_CONFIG_NOSYSTEM": "1"}

    def git(*args):
        return run("git", *args, cwd=repo, env=env).stdout

    git("init", "-q", "-b", "main")
    for n in range(12):
        os.makedirs(os.path.join(repo, f"dir{n % 3}"), exist_ok=True)
        with open(os.path.join(repo, f"dir{n % 3}", f"file{n}.txt"), "w") as f:
            f.write(f"content {n}\n" * (n * 100 + 1))
        git("add", "-A")
        git("commit", "-q", "-m", f"commit {n}")
    os.rename(os.path.join(repo, "dir0"), os.path.join(repo, "moved"))
    git("add", "-A")
    git("commit", "-q", "-m", "move")
    assert git("status", "--porcelain") == ""
    log = git("log", "--format=%s").splitlines()
    assert log[0] == "move" and log[-1] == "commit 0" and len(log) == 13
    git("gc", "-q", "--aggressive", "--prune=now")
    git("fsck", "--full", "--strict")
    assert git("count-objects", "-v").count("packs: 1") == 1
    assert git("show", "HEAD~5:dir1/file7.txt") == "content 7\n" * 701
    head = git("rev-parse", "HEAD")
    mounts.umount(mp)
    mp = mounts.mount("vol")
    repo = os.path.join(mp, "repo")
    assert git("rev-parse", "HEAD") == head
    assert git("status", "--porcelain") == ""
    git("fsck", "--full", "--strict")


@pytest.mark.parametrize("journal", ["DELETE", "WAL"])
def test_sqlite_many_transactions(mounts, journal):
    mp = mounts.mount("vol")
    path = os.path.join(mp, "db.sqlite")
    con = sqlite3.connect(path)
    assert con.execute(f"PRAGMA journal_mode={journal}").fetchone()[0].upper() == journal
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, blob BLOB)")
    con.execute("CREATE INDEX t_v ON t(v)")
    for i in range(200):
        with con:  # one transaction each
            con.execute("INSERT INTO t (v, blob) VALUES (?, ?)", (f"v{i}", os.urandom(i * 7)))
            if i % 10 == 9:
                con.execute("UPDATE t SET v = v || '!' WHERE id % 7 = ?", (i % 7,))
            if i % 25 == 24:
                con.execute("DELETE FROM t WHERE id = ?", (i - 20,))
    # A second connection (another process's view) sees every commit.
    other = subprocess.run(["sqlite3", path, "SELECT count(*) FROM t; PRAGMA integrity_check;"],
                           capture_output=True, text=True, timeout=60) if shutil.which("sqlite3") \
        else None
    count = con.execute("SELECT count(*) FROM t").fetchone()[0]
    assert count == 200 - 8
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    if other is not None:
        assert other.returncode == 0, other.stderr
        assert other.stdout.split() == [str(count), "ok"]
    # A rolled-back transaction leaves no trace.
    try:
        with con:
            con.execute("DELETE FROM t")
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    assert con.execute("SELECT count(*) FROM t").fetchone()[0] == count
    con.execute("VACUUM")
    con.close()
    mounts.umount(mp)
    mp = mounts.mount("vol")
    con = sqlite3.connect(os.path.join(mp, "db.sqlite"))
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("SELECT count(*) FROM t").fetchone()[0] == count
    con.close()


def test_shutil_copytree_and_rmtree(mounts, tmp_path):
    src = str(tmp_path / "src")
    make_tree(src)
    os.unlink(os.path.join(src, "a/fifo"))  # copytree cannot copy fifos
    mp = mounts.mount("vol")
    dst = os.path.join(mp, "tree")
    shutil.copytree(src, dst, symlinks=True)
    state = tree_state(dst)
    original = tree_state(src)
    for rel, entry in original.items():
        if rel == "<hardlink groups>":
            continue  # copytree copies hardlinks as separate files
        got = state[rel]
        assert got.get("sha256") == entry.get("sha256") and got.get("target") == entry.get("target")
        assert got["mode"] == entry["mode"], rel
        if "mtime_ns" in entry and not stat.S_ISDIR(entry["mode"]):
            assert got["mtime_ns"] == entry["mtime_ns"], rel
    shutil.copytree(dst, os.path.join(mp, "tree2"), symlinks=True)
    shutil.rmtree(dst)
    assert os.listdir(mp) == ["tree2"]
    shutil.rmtree(os.path.join(mp, "tree2"))
    assert os.listdir(mp) == []
    assert os.stat(mp).st_nlink == 2


def test_content_equal_after_remount(mounts, tmp_path):
    mp = mounts.mount("vol")
    make_tree(os.path.join(mp, "tree"))
    with open(os.path.join(mp, "tree/big"), "wb") as f:
        f.write(os.urandom(20 << 20))
    os.setxattr(os.path.join(mp, "tree/top"), "user.k", b"v")
    before = tree_state(mp)
    mounts.umount(mp)
    mp = mounts.mount("vol")
    assert tree_state(mp) == before
    assert os.getxattr(os.path.join(mp, "tree/top"), "user.k") == b"v"
    assert os.path.samestat(os.stat(os.path.join(mp, "tree/top")),
                            os.stat(os.path.join(mp, "tree/a/top-hardlink")))
