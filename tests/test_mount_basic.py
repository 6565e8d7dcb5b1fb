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
