"""A worker's idle upkeep (fs/upkeep.py): once its volume is quiet the store gets
as dense as `fusevol gc` makes it, with nobody running gc; then the worker rests.
It never runs beside a gc, and FUSEVOL_IDLE_UPKEEP=0 turns it off."""

import os
import random
import time

import zstandard

from conftest import run_cli
from fusevol.fs import upkeepstate
from fusevol.fs.upkeepstate import held_for_gc
from fusevol.store import Store, chunks, recompress

QUIET = {"FUSEVOL_IDLE_UPKEEP_AFTER": "1"}
WORDS = [bytes(random.Random(w).choices(b"abcdefghijklmnopqrstuvwxyz", k=1 + w % 9))
         for w in range(300)]


def _text(seed: int, size: int) -> bytes:
    """Compressible text, as source files are: zstd's level 9 stores it in
    fewer bytes than the level 1 whole blocks are written at."""
    rnd = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rnd.choices(WORDS, k=12)) + b"\n"
    return bytes(out[:size])


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _wait_upkeep(store_path: str, volume: str, since: float, timeout: float = 60) -> dict:
    """The status once an upkeep that started after `since` has ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = upkeepstate.read_status(store_path, volume)
        if status and status["started"] > since and not status["running"]:
            return status
        time.sleep(0.1)
    raise AssertionError(f"the idle upkeep did not get there in {timeout} s: "
                         f"{upkeepstate.read_status(store_path, volume)}")


def _forms(store_path: str) -> tuple[int, int]:
    """(packed compressed chunks, those stored larger than recompress.LEVEL stores them)."""
    store = Store.open(store_path)
    level = zstandard.ZstdCompressor(level=recompress.LEVEL)
    total = larger = 0
    try:
        with store.read() as txn:
            for cid, _ in list(chunks.locations(txn)):
                stored = chunks.stored(txn, cid)
                if stored[:1] != bytes((chunks.ZSTD,)):
                    continue
                total += 1
                larger += len(stored) > 1 + len(level.compress(chunks.decode(stored)))
    finally:
        store.close()
    return total, larger


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def test_a_quiet_volume_gets_dense_then_its_worker_rests(mounts):
    store_path = mounts.store_path
    mp = mounts.mount("quiet", env=QUIET)
    # Whole blocks of text (level 1 as written), and a file deleted: free pages.
    text, gone = _text(1, 6 << 20), _text(2, 3 << 20)
    _write(os.path.join(mp, "text"), text)
    _write(os.path.join(mp, "gone"), gone)
    os.unlink(os.path.join(mp, "gone"))
    since = time.time()
    status = _wait_upkeep(store_path, "quiet", since)
    last = status["last"]
    assert last["outcome"] == "done", last
    assert last["recompressed"]["chunks_recompressed"] >= 40, last
    assert last["holes"]["punched"] and last["holes"]["free_pages"] > 0, last
    # Every compressed chunk is at the level gc leaves it at, or smaller.
    total, larger = _forms(store_path)
    assert total >= 48 and larger == 0, (total, larger)
    data = os.path.join(store_path, "db", "data.mdb")
    st = os.stat(data)
    assert st.st_blocks * 512 < st.st_size, "no hole in the store file"
    with open(os.path.join(mp, "text"), "rb") as f:
        assert f.read() == text
    proc = run_cli(store_path, "verify")
    assert b"ok" in proc.stdout
    # Then nothing: no CPU and no run, until the volume changes again.
    pid = status["pid"]
    ticks = _cpu_ticks(pid)
    time.sleep(4)
    assert _cpu_ticks(pid) - ticks <= 1, "an idle worker used CPU"
    assert upkeepstate.read_status(store_path, "quiet")["runs"] == status["runs"]
    _write(os.path.join(mp, "more"), _text(3, 1 << 20))
    again = _wait_upkeep(store_path, "quiet", time.time())
    assert again["last"]["outcome"] == "done", again["last"]
    assert again["last"]["recompressed"]["chunks_recompressed"] >= 4, again["last"]


def test_no_upkeep_beside_a_gc(mounts):
    """While gc holds the store's upkeep lock, the quiet worker waits; it runs
    once gc is done."""
    store_path = mounts.store_path
    mp = mounts.mount("besidegc", env=QUIET)
    text = _text(4, 2 << 20)
    with held_for_gc(store_path):
        _write(os.path.join(mp, "text"), text)
        time.sleep(4)  # quiet for 1 s, then 3 s in which an upkeep could have run
        assert upkeepstate.read_status(store_path, "besidegc") is None
    status = _wait_upkeep(store_path, "besidegc", 0)
    assert status["last"]["recompressed"]["chunks_recompressed"] > 0


def test_turned_off(mounts):
    mp = mounts.mount("off", env={**QUIET, "FUSEVOL_IDLE_UPKEEP": "0"})
    _write(os.path.join(mp, "text"), _text(5, 2 << 20))
    time.sleep(4)
    assert upkeepstate.read_status(mounts.store_path, "off") is None
    total, larger = _forms(mounts.store_path)
    assert larger > 0, "chunks compressed again with the upkeep off"
