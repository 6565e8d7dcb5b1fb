"""Does the idle upkeep slow the writes that end a quiet period? A sequential write
timed as it starts into a running upkeep, against the same without one.

Each repetition: a fresh volume takes FIRST MiB of source text (Python's
standard library; 16 random bytes at the head of every 128 KiB block, so none
is deduplicated; chunks the upkeep compresses again: zstd level 1
as written, 9 after), fsynced, then stays quiet until its upkeep runs
(fs/upkeep.py: quiet after FUSEVOL_IDLE_UPKEEP_AFTER seconds, counted from the
intent log's checkpoint that stores the fsynced data, up to 5 s later), or
for WAIT seconds without one, so that the timed write of SECOND MiB (+ fsync)
starts while the upkeep is busy with that data. The worker's CPU and the write's rate are
printed, and what the upkeep did (it must give way at its next step: its run
says "stopped: the volume is written again").

    PYTHONPATH=. python bench/upkeep_write.py [--reps 3] [--first 256] [--second 512] [--off]

--off sets FUSEVOL_IDLE_UPKEEP=0 (the code before the upkeep behaves so), for an
A/B in alternation: run it with and without, or against another checkout's
PYTHONPATH.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from targets import MiB, Volume  # noqa: E402

WAIT = 15.0
SOURCE = "/usr/lib/python3.11"
BLOCK = 128 << 10


def _text(size: int, source: str = SOURCE) -> bytes:
    """size bytes of source files (Python's standard library: what a build or
    a checkout writes), repeated if need be."""
    out = bytearray()
    for folder, _, names in sorted(os.walk(source)):
        for name in sorted(names):
            if name.endswith(".py"):
                with open(os.path.join(folder, name), "rb") as f:
                    out += f.read()
            if len(out) >= size:
                return bytes(out[:size])
    return bytes((out * (size // max(1, len(out)) + 1))[:size])


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _write(path: str, text: bytes, total: int) -> None:
    """total bytes of text, 16 random bytes at the head of each block (no two alike)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    buf = bytearray(8 * MiB)
    try:
        done = 0
        while done < total:
            buf[:] = text
            for at in range(0, len(buf), BLOCK):
                buf[at: at + 16] = os.urandom(16)
            done += os.write(fd, buf)
        os.fsync(fd)
    finally:
        os.close(fd)


def _upkeep_running(status_path: str) -> bool:
    try:
        with open(status_path) as f:
            return bool(json.load(f).get("running"))
    except (OSError, ValueError):
        return False


def once(base: str, first: int, second: int, env: dict) -> dict:
    vol = Volume(base, env)
    try:
        status_path = os.path.join(vol.store, "run", "upkeep", f"{vol.volume}.json")
        text = _text(8 * MiB)
        _write(os.path.join(vol.dir, "first"), text, first * MiB)
        quiet = time.monotonic()
        while time.monotonic() - quiet < WAIT and not _upkeep_running(status_path):
            time.sleep(0.05)
        time.sleep(0.2)  # well into its run
        pid = vol.worker_pid()
        cpu, start = _cpu(pid), time.monotonic()
        _write(os.path.join(vol.dir, "second"), text, second * MiB)
        seconds = time.monotonic() - start
        row = {"mib_s": round(second / seconds, 1), "worker_cpu_s": round(_cpu(pid) - cpu, 2),
               "waited_s": round(start - quiet, 2)}
        if os.path.exists(status_path):
            with open(status_path) as f:
                status = json.load(f)
            row["upkeep"] = {k: status.get(k) for k in ("runs", "completed", "stopped")}
            last = status.get("last") or {}
            row["upkeep_last"] = {k: last.get(k) for k in ("outcome", "seconds", "longest_step_ms")}
            row["upkeep_last"]["chunks"] = (last.get("recompressed") or {}).get("chunks_recompressed")
        return row
    finally:
        vol.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--first", type=int, default=256, help="MiB written before the quiet period")
    ap.add_argument("--second", type=int, default=512, help="MiB of the timed write")
    ap.add_argument("--off", action="store_true", help="FUSEVOL_IDLE_UPKEEP=0")
    ap.add_argument("--base", default="/var/tmp")
    args = ap.parse_args()
    env = {"FUSEVOL_IDLE_UPKEEP": "0"} if args.off else {}
    for rep in range(args.reps):
        print(json.dumps(once(args.base, args.first, args.second, env)), flush=True)


if __name__ == "__main__":
    main()
