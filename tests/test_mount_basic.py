"""A mounted volume keeps what it is given, across unmount and remount."""

import hashlib
import os

from conftest import needs_fuse
from posix_helpers import sha256


@needs_fuse
def test_content_survives_remount(mounts):
    mp = mounts.mount("data")
    payload = os.urandom(3 * 1024 * 1024 + 17)
    with open(os.path.join(mp, "blob"), "wb") as f:
        f.write(payload)
    os.mkdir(os.path.join(mp, "dir"))
    os.symlink("../blob", os.path.join(mp, "dir", "link"))
    before = sha256(os.path.join(mp, "blob"))
    mounts.umount(mp)

    mp = mounts.mount("data")
    assert sha256(os.path.join(mp, "blob")) == before == hashlib.sha256(payload).hexdigest()
    assert os.readlink(os.path.join(mp, "dir", "link")) == "../blob"
    with open(os.path.join(mp, "dir", "link"), "rb") as f:
        assert f.read() == payload


@needs_fuse
def test_the_kernel_holds_more_of_a_volumes_written_pages_and_reads_ahead_far(mounts):
    # FUSE's default (1% of the dirty page limit) sends random writes one or two
    # pages at a time; FUSEVOL_DIRTY_RATIO and FUSEVOL_READ_AHEAD_KB set the two.
    for env, ratio, read_ahead in ((None, "10", "4096"),
                                   ({"FUSEVOL_DIRTY_RATIO": "3", "FUSEVOL_READ_AHEAD_KB": "512"},
                                    "3", "512")):
        mp = mounts.mount("data", env=env)
        dev = os.stat(mp).st_dev
        bdi = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}"
        with open(f"{bdi}/max_ratio") as f:
            assert f.read().strip() == ratio
        with open(f"{bdi}/read_ahead_kb") as f:
            assert f.read().strip() == read_ahead
        mounts.umount(mp)
