"""Commands that read a mounted volume first make its worker store everything."""

import os

from conftest import needs_fuse, run_cli


@needs_fuse
def test_flush_after_a_deleted_file(mounts, store_path):
    # The kernel writes back the times of the deleted file; the worker no
    # longer knows it. That must not stop a snapshot of the volume.
    mp = mounts.mount("vol")
    with open(os.path.join(mp, "doomed"), "w") as f:
        f.write("soon gone")
    with open(os.path.join(mp, "kept"), "w") as f:
        f.write("kept")
    os.unlink(os.path.join(mp, "doomed"))
    run_cli(store_path, "snapshot", "create", "vol@after-unlink")
    assert run_cli(store_path, "diff", "vol@after-unlink", "vol").stdout.strip() == b""
    run_cli(store_path, "volume", "create", "empty")
    run_cli(store_path, "snapshot", "create", "empty@none")
    listed = run_cli(store_path, "diff", "empty@none", "vol@after-unlink").stdout.decode().splitlines()
    assert listed == ["A\tkept"]
