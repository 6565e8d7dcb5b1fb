"""The times a mounted volume shows are the times it stores (the kernel's writeback
cache keeps mtime and ctime; the store must not stamp its own clock on a flush)."""

import os

from conftest import needs_fuse


def times(root: str) -> dict:
    out = {}
    for name in sorted(os.listdir(root)):
        st = os.lstat(os.path.join(root, name))
        out[name] = (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    return out


@needs_fuse
def test_times_shown_are_times_stored(mounts):
    mp = mounts.mount("vol")
    for i in range(40):
        with open(os.path.join(mp, f"sparse{i}"), "wb") as f:
            f.truncate(1 << 20)   # a size change, then a write in the same clock tick
            f.seek(1000)
            f.write(b"data")
        with open(os.path.join(mp, f"plain{i}"), "wb") as f:
            f.write(os.urandom(5000))
    shown = times(mp)
    mounts.umount(mp)
    mp = mounts.mount("vol")
    assert times(mp) == shown
