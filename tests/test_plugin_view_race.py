"""A view's folder swapped for a symlink to the host, in a loop, while the view mounts.

Whoever can write to a source volume (any container given it) can replace the
view's folder by a symlink at any moment. However the swaps and the Mount calls
interleave, the view must show the volume's folder or fail: never the host.

CI runs 80 rounds (a check-then-bind failed within 3 to 36 rounds); FUSEVOL_RACE_ROUNDS=3000
runs a longer form by hand.
"""

import os
import subprocess
import sys
import uuid

import pytest

from conftest import needs_fuse
from plugin_daemon import PluginDaemon

ROUNDS = int(os.environ.get("FUSEVOL_RACE_ROUNDS", "80"))
MARKER = "HOST-MARKER"


@pytest.fixture
def daemon(tmp_path):
    d = PluginDaemon(str(tmp_path / "store"), str(tmp_path / "run" / "fv-race.sock"),
                     str(tmp_path / "serve.log"))
    d.start()
    yield d
    d.cleanup()


# Runs in its own process, so it never waits on the test's GIL: as fast as the mount allows.
SWAPPER = """
import errno, os, signal, sys
folder, host = sys.argv[1:]
swaps = 0
def report(*_):
    print(swaps, flush=True)
    os._exit(0)
signal.signal(signal.SIGTERM, report)
steps = (os.rmdir, lambda p: os.symlink(host, p), os.unlink, os.mkdir)
quiet = (errno.ENOENT, errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.ENOTEMPTY, errno.EBUSY)
while True:
    for step in steps:
        try:
            step(folder)
        except OSError as e:
            if e.errno not in quiet:
                raise
    swaps += 1
"""


def start_swapper(folder: str, host: str) -> subprocess.Popen:
    """Turns `folder` into a symlink to `host` and back until terminated."""
    return subprocess.Popen([sys.executable, "-c", SWAPPER, folder, host],
                            stdout=subprocess.PIPE, text=True)


def stop_swapper(proc: subprocess.Popen) -> int:
    """Its number of swaps; fails if it died of an unexpected error."""
    assert proc.poll() is None, "the swapper died"
    proc.terminate()
    out, _ = proc.communicate(timeout=30)
    return int(out)


def _probe(view: str, writable: bool, host: str) -> list[str]:
    """What went wrong when looking through a mounted view (nothing, if all is well)."""
    problems = []
    try:
        if MARKER in os.listdir(view):
            problems.append(f"{view} shows the host folder")
        if writable:
            probe = os.path.join(view, "probe-" + uuid.uuid4().hex[:8])
            try:
                with open(probe, "w") as f:
                    f.write("x")
            except OSError:
                pass  # the folder it showed was removed meanwhile
            else:
                if os.listdir(host) != [MARKER]:
                    problems.append(f"a file written through {view} landed in the host folder")
                os.unlink(probe)
    except OSError:
        pass  # a folder removed under the view: empty and stale, never the host
    return problems


@needs_fuse
def test_view_never_shows_the_host(daemon, tmp_path):
    host = tmp_path / "host"
    host.mkdir()
    (host / MARKER).write_text("outside every volume")
    assert daemon.call("/VolumeDriver.Create", {"Name": "src"}) == (200, {})
    for name, ro in (("roview", "true"), ("rwview", "false")):
        assert daemon.call("/VolumeDriver.Create", {"Name": name, "Opts": {
            "source": "src", "subpath": "pub", "readonly": ro}}) == (200, {})
    status, reply = daemon.call("/VolumeDriver.Mount", {"Name": "src", "ID": "writer"})
    assert status == 200, reply
    folder = os.path.join(reply["Mountpoint"], "pub")
    os.mkdir(folder)

    swapper = start_swapper(folder, str(host))
    problems, mounted = [], 0
    try:
        for i in range(ROUNDS):
            name = ("roview", "rwview")[i % 2]
            mount_id = uuid.uuid4().hex
            status, reply = daemon.call("/VolumeDriver.Mount", {"Name": name, "ID": mount_id})
            if status == 200:
                mounted += 1
                problems += _probe(reply["Mountpoint"], name == "rwview", str(host))
            else:
                assert "pub" in reply["Err"], reply  # the folder was a symlink or missing: refused
            assert daemon.call("/VolumeDriver.Unmount", {"Name": name, "ID": mount_id}) == (200, {})
            if problems:
                break
    finally:
        swaps = stop_swapper(swapper)
    assert problems == [], f"after {i + 1} rounds ({swaps} swaps): {problems}"
    assert sorted(os.listdir(host)) == [MARKER]
    assert mounted > 0, "no Mount of a view succeeded: the race was never run"
    assert swaps > ROUNDS, swaps  # the folder did change under the Mount calls
    assert daemon.call("/VolumeDriver.Unmount", {"Name": "src", "ID": "writer"}) == (200, {})
