"""Processes that load mounted volumes: writers that append records and
announce what they fsync'ed, and a reader that checks every announcement.

A record is one line, `WID SEQ HEX\\n`, whose hex body follows from (WID, SEQ)
and whose length varies (every 16th spans more than a 128 KiB block), so a
line that is torn, zeroed, doubled or out of order is seen at once.

Each writer appends every record to its own file and to a file shared with
the volume's other writers (both O_APPEND, one write(2) each), fsyncs both
every few records, and then appends the SEQ it fsync'ed to its announcement
file (outside the volume). It ends with `done N` once N records are written.

Both run until the file STOP exists: `python load.py writer STOP VOLUME_DIR
WID ANNOUNCE FSYNC_EVERY`, `python load.py reader STOP VOLUME_DIR:ANNOUNCE_DIR...`.
"""

import os
import random
import re
import sys

LINE = re.compile(rb"(\d+) (\d+) ([0-9a-f]+)\n")


def record(wid: int, seq: int) -> bytes:
    rng = random.Random(f"{wid}:{seq}")
    n = 150_000 if seq % 16 == 15 else rng.randrange(20, 3000)
    return f"{wid} {seq} ".encode() + rng.randbytes(n // 2).hex().encode() + b"\n"


def own_file(wid: int) -> str:
    return f"w{wid}.log"


SHARED = "shared.log"


# -- writer --------------------------------------------------------------------------

def writer(stop: str, volume_dir: str, wid: int, announce: str, fsync_every: int) -> None:
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
    own = os.open(os.path.join(volume_dir, own_file(wid)), flags, 0o644)
    shared = os.open(os.path.join(volume_dir, SHARED), flags, 0o644)
    with open(announce, "a", buffering=1) as ann:
        seq = 0
        while not os.path.exists(stop):
            rec = record(wid, seq)
            for fd in (own, shared):
                if os.write(fd, rec) != len(rec):
                    raise SystemExit(f"writer {wid}: short write of record {seq}")
            if seq % fsync_every == fsync_every - 1:
                os.fsync(own)
                os.fsync(shared)
                ann.write(f"{seq}\n")
            seq += 1
        os.fsync(own)
        os.fsync(shared)
        ann.write(f"{seq - 1}\ndone {seq}\n")
    os.close(own)
    os.close(shared)


# -- checking ------------------------------------------------------------------------

def announced(path: str) -> tuple[int, int | None]:
    """(last fsync'ed SEQ, or -1; total written once the writer is done, else None)."""
    try:
        with open(path) as f:
            lines = f.read().split("\n")
    except FileNotFoundError:
        return -1, None
    last, done = -1, None
    for line in lines[:-1]:  # the last piece may be a line being written
        if line.startswith("done "):
            done = int(line[5:])
        else:
            last = int(line)
    return last, done


class Damage(Exception):
    pass


def parse(data: bytes, where: str) -> dict[int, list[int]]:
    """SEQs of each writer's records in a file, in file order; Damage for any
    bad line. A last line without its newline may be a write in progress:
    it must be the start of the record that comes next."""
    seqs: dict[int, list[int]] = {}
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        if end == -1:
            tail = data[pos:]
            m = re.match(rb"(\d+) (\d+) ", tail)
            if m is None:  # cut inside the header: `WID` or `WID SE`
                ok = re.fullmatch(rb"\d+( \d*)?", tail) is not None
            else:
                ok = record(int(m[1]), int(m[2])).startswith(tail)
            if not ok:
                raise Damage(f"{where}: bad partial line at offset {pos}: {tail[:60]!r}")
            break
        line = data[pos:end + 1]
        m = LINE.fullmatch(line)
        if m is None or record(int(m[1]), int(m[2])) != line:
            raise Damage(f"{where}: bad record at offset {pos}: {line[:60]!r}... "
                         f"({line.count(0)} zero bytes in {len(line)})")
        seqs.setdefault(int(m[1]), []).append(int(m[2]))
        pos = end + 1
    return seqs


def check_file(data: bytes, where: str, wids, at_least: dict[int, int],
               exactly: dict[int, int] | None = None) -> None:
    """Each writer's records 0, 1, 2... in order, each once, up to at least
    at_least[wid] (and exactly up to exactly[wid] - 1 when given)."""
    seqs = parse(data, where)
    for wid in wids:
        got = seqs.get(wid, [])
        if got != list(range(len(got))):
            first = next(i for i, s in enumerate(got) if s != i)
            raise Damage(f"{where}: writer {wid}: record {got[first]} where {first} was due")
        if len(got) - 1 < at_least.get(wid, -1):
            raise Damage(f"{where}: writer {wid}: records up to {len(got) - 1}, "
                         f"{at_least[wid]} was fsync'ed and announced")
        if exactly is not None and len(got) != exactly[wid]:
            raise Damage(f"{where}: writer {wid}: {len(got)} records, {exactly[wid]} were written")
    stray = set(seqs) - set(wids)
    if stray:
        raise Damage(f"{where}: records of unknown writers {sorted(stray)}")


def read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def reader(stop: str, targets: list[tuple[str, str]]) -> int:
    """Until told to stop: read what each writer announced, then its files in
    the volume, which must hold it all. Prints the checks done."""
    checks = 0
    while not os.path.exists(stop):
        for volume_dir, ann_dir in targets:
            wids = sorted(int(n[1:-4]) for n in os.listdir(ann_dir) if n.endswith(".ann"))
            # Announcements first: what they say was fsync'ed before the reads start.
            floor = {w: announced(os.path.join(ann_dir, f"w{w}.ann"))[0] for w in wids}
            files = [(own_file(w), [w]) for w in wids] + [(SHARED, wids)]
            for name, writers in files:
                try:
                    data = read_file(os.path.join(volume_dir, name))
                except FileNotFoundError:
                    if any(floor[w] >= 0 for w in writers):
                        raise Damage(f"{volume_dir}/{name} is missing, records were announced")
                    continue  # its writers have not started yet
                check_file(data, f"{volume_dir}/{name}", writers, floor)
            checks += 1
    print(checks)
    return checks


def main(argv: list[str]) -> None:
    if argv[0] == "writer":
        writer(argv[1], argv[2], int(argv[3]), argv[4], int(argv[5]))
    elif argv[0] == "reader":
        try:
            reader(argv[1], [tuple(t.split(":", 1)) for t in argv[2:]])
        except Damage as e:
            raise SystemExit(f"stale or damaged read: {e}")
    else:
        raise SystemExit(f"unknown role {argv[0]}")


if __name__ == "__main__":
    main(sys.argv[1:])
