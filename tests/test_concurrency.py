"""Many processes writing several volumes at once, with snapshot, send, gc and
snapshot rm running under that load (see load.py for the writers and the reader).

No deadlock: every process and command ends within its timeout. No lost write:
after a clean unmount every record written is there, once, in order; every
snapshot holds what was fsync'ed and announced before it was taken, and so
does the volume received from its stream. No stale read: a reader process
finds in the volume everything the writers announced as fsync'ed.

FUSEVOL_LOAD_SECONDS (default 15) sets how long the load lasts at least (and
at least two rounds of snapshot, send, rm and gc run under it); by hand, e.g.
FUSEVOL_LOAD_SECONDS=600 FUSEVOL_LOAD_WRITERS=8.
"""

import json
import os
import subprocess
import sys
import tarfile
import time

from conftest import needs_fuse, run_cli
import load

SECONDS = float(os.environ.get("FUSEVOL_LOAD_SECONDS", "15"))
WRITERS = int(os.environ.get("FUSEVOL_LOAD_WRITERS", "3"))  # per volume
VOLUMES = ("load-a", "load-b", "load-c")
FSYNC_EVERY = {0: 1, 1: 4}  # writer 0 fsyncs every record, the others every 4
CLI_TIMEOUT = 120  # a command that takes longer is taken for a deadlock


def _announced(ann_dir: str) -> dict[int, int]:
    return {w: load.announced(os.path.join(ann_dir, f"w{w}.ann"))[0] for w in range(WRITERS)}


@needs_fuse
def test_writers_readers_snapshots_send_and_gc_at_once(mounts, tmp_path):
    here = os.path.dirname(os.path.abspath(__file__))
    store = mounts.store_path
    points, ann_dirs = {}, {}
    for vol in VOLUMES:
        points[vol] = mounts.mount(vol)
        ann_dirs[vol] = str(tmp_path / f"ann-{vol}")
        os.makedirs(ann_dirs[vol])
    streams = tmp_path / "streams"
    streams.mkdir()
    stop = str(tmp_path / "stop")

    writers = []
    for vol in VOLUMES:
        for w in range(WRITERS):
            ann = os.path.join(ann_dirs[vol], f"w{w}.ann")
            open(ann, "w").close()
            writers.append((vol, w, subprocess.Popen(
                [sys.executable, os.path.join(here, "load.py"), "writer", stop, points[vol], str(w), ann,
                 str(FSYNC_EVERY.get(w, 4))], stderr=subprocess.PIPE)))
    reader = subprocess.Popen(
        [sys.executable, os.path.join(here, "load.py"), "reader", stop,
         *(f"{points[v]}:{ann_dirs[v]}" for v in VOLUMES)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    # Under the load, one volume after the other: a snapshot (with what was
    # announced before it began), its stream, removal of the volume's
    # previous snapshot; gc every second round. Each volume gets a snapshot,
    # and one at least a second, before the load stops.
    newest: dict[str, tuple[str, dict, str]] = {}
    ops = {"snapshot": 0, "send": 0, "snapshot rm": 0, "gc": 0}
    deadline = time.monotonic() + SECONDS
    round_ = 0
    while round_ <= len(VOLUMES) or time.monotonic() < deadline:
        vol, name = VOLUMES[round_ % len(VOLUMES)], f"s{round_}"
        floor = _announced(ann_dirs[vol])
        run_cli(store, "snapshot", "create", f"{vol}@{name}", timeout=CLI_TIMEOUT)
        stream = str(streams / f"{vol}@{name}")
        run_cli(store, "send", f"{vol}@{name}", "-o", stream, timeout=CLI_TIMEOUT)
        if vol in newest:
            run_cli(store, "snapshot", "rm", f"{vol}@{newest[vol][0]}", timeout=CLI_TIMEOUT)
            ops["snapshot rm"] += 1
        newest[vol] = (name, floor, stream)
        ops["snapshot"] += 1
        ops["send"] += 1
        if round_ % 2:
            report = json.loads(run_cli(store, "gc", "--json", timeout=CLI_TIMEOUT).stdout)
            assert not report["missing"], report
            ops["gc"] += 1
        round_ += 1
    open(stop, "w").close()
    elapsed = SECONDS + time.monotonic() - deadline

    written = {}
    for vol, w, proc in writers:
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"writer {w} of {vol} is stuck (last announced "
                                 f"{_announced(ann_dirs[vol])[w]})")
        assert proc.returncode == 0, f"writer {w} of {vol}: {err.decode()}"
        last, done = load.announced(os.path.join(ann_dirs[vol], f"w{w}.ann"))
        assert done is not None and done > 0
        written[vol, w] = done
    out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err.decode()
    reads = int(out)
    assert reads > 0

    # After a clean unmount, all of it: every record written, once, in order.
    for vol in VOLUMES:
        mounts.umount(points[vol])
    assert run_cli(store, "verify").returncode == 0
    for vol in VOLUMES:
        points[vol] = mounts.mount(vol, create=False)
        every = {w: written[vol, w] for w in range(WRITERS)}
        at_least = {w: n - 1 for w, n in every.items()}
        for w in range(WRITERS):
            load.check_file(load.read_file(os.path.join(points[vol], load.own_file(w))),
                            f"{vol}/{load.own_file(w)}", [w], at_least, {w: every[w]})
        load.check_file(load.read_file(os.path.join(points[vol], load.SHARED)),
                        f"{vol}/{load.SHARED}", list(range(WRITERS)), at_least, every)

    # The volume received from each volume's newest stream (the snapshot sent
    # under load) holds what was announced before the snapshot was taken.
    for vol, (name, floor, stream) in newest.items():
        with open(stream, "rb") as f:
            run_cli(store, "receive", f"{vol}-got", input=f.read(), timeout=CLI_TIMEOUT)
        archive = str(tmp_path / f"{vol}-got.tar")
        run_cli(store, "export", f"{vol}-got", "-o", archive, timeout=CLI_TIMEOUT)
        with tarfile.open(archive) as tar:
            files = {m.name.removeprefix("./"): tar.extractfile(m).read()
                     for m in tar.getmembers() if m.isfile()}
        where = f"{vol}@{name} received"
        for w in range(WRITERS):
            if floor[w] >= 0:
                load.check_file(files[load.own_file(w)], f"{where}/{load.own_file(w)}", [w], floor)
        if any(v >= 0 for v in floor.values()):
            load.check_file(files[load.SHARED], f"{where}/{load.SHARED}", list(range(WRITERS)), floor)
    assert run_cli(store, "verify").returncode == 0
    print(f"\n{sum(written.values())} records by {len(writers)} writers on {len(VOLUMES)} volumes "
          f"in {elapsed:.0f} s; {reads} reader passes; {ops}")
