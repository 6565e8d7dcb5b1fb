"""syncfs after deleting files: the kernel writes back the times of files that are gone."""

import os
import subprocess

from conftest import needs_fuse, run_cli


@needs_fuse
def test_syncfs_and_snapshot_after_unlink(mounts, store_path):
    mp = mounts.mount("vol")
    for i in range(20):
        with open(os.path.join(mp, f"f{i}"), "wb") as f:
            f.write(os.urandom(1000 + i))
    run_cli(store_path, "snapshot", "create", "vol@one")  # writes back the kernel's times once
    for i in range(20):
        os.unlink(os.path.join(mp, f"f{i}"))  # each unlink dirties the cached inode's ctime again
    # `sync -f` is syncfs(2): it must not fail for files that are gone.
    proc = subprocess.run(["sync", "-f", mp], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for i in range(20, 40):
        with open(os.path.join(mp, f"f{i}"), "wb") as f:
            f.write(b"x")
        os.unlink(os.path.join(mp, f"f{i}"))
    run_cli(store_path, "snapshot", "create", "vol@two")
    assert os.listdir(mp) == []
