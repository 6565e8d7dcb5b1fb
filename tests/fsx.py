"""A random-operation file tester in the spirit of fsx.

Seeded random sequences of write, read, truncate, mmap reads and writes,
copy_file_range, fsync, close/reopen, optional O_DIRECT reads and writes and
remounts run on one or two files; every byte read is compared with an
in-memory model of what the files must hold. On a mismatch the tester raises
FsxFailure (an AssertionError) naming the seed, the first bad offset, the
expected and the read bytes, and the last operations.

As a script:

    python tests/fsx.py --dir PATH --seed N --ops N [--files 2] [--direct]
    python tests/fsx.py --fusevol STORE --seed N --ops N [--no-writeback] [--quota 20M]

With --fusevol the tester creates a volume in STORE, mounts it and remounts it
between steps (fusevol's CLI must be importable: PYTHONPATH=the checkout).

The model. Written data never contains a zero byte (zeros are written only by
the zero-write operation), so zeros where data is expected stand out.

Without allowed errors (the default) every operation must succeed and every
read must return exactly what the model holds.

With allowed errors (a volume with a quota: EDQUOT and ENOSPC may come from
any operation that stores data) the model follows what the filesystem
acknowledged, byte by byte:

  - A successful write, copy, truncate or mmap write + msync is acknowledged:
    its bytes must read back exactly, now and after a remount, unless a later
    sync of that file fails (below).
  - A write or copy that fails may have been applied in part: each byte of its
    range holds its earlier value or the new one (EITHER); a byte hit again by
    a failure may hold any of its candidate values (NONZERO if none of them is
    zero, else ANY). The file's size is read back with fstat and must lie
    between the old size and the end of the write.
  - A failed fsync, fdatasync, close or msync means that what was written to
    that file since its last successful sync may not be stored: each byte
    changed since then may hold any value it held since (NONZERO, or ANY if
    one of those values was zero, the file's end included), and its size after
    a remount may be any size it had since then.
  - Never allowed: a zero in a byte all of whose candidate values are nonzero,
    which is exactly a range acknowledged and not truncated since. A hole
    punched into acknowledged data is always caught.

A byte returns to exact checking once written again successfully.
"""

import argparse
import collections
import errno
import functools
import mmap
import os
import pickle
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

KiB = 1 << 10
MiB = 1 << 20
BLOCK = 128 * KiB      # fusevol's block size: writes aim at its boundaries
PAGE = 4096            # O_DIRECT alignment
LOG_TAIL = 50

DEFAULT_WEIGHTS = {
    "write": 20, "read": 16, "zero_write": 1, "truncate": 5, "map_read": 6,
    "map_write": 6, "copy_range": 6, "fsync": 3, "fdatasync": 2, "reopen": 3,
    "open_trunc": 1, "stat": 2, "grow": 0,
}
DIRECT_WEIGHTS = {"direct_read": 6, "direct_write": 6}

# Byte states of the tolerant model (see the module docstring).
KNOWN, EITHER, NONZERO, ANY = 0, 1, 2, 3
STATE_NAMES = {KNOWN: "exact", EITHER: "old-or-new", NONZERO: "any nonzero", ANY: "any"}


def _table(fn) -> bytes:
    return bytes(fn(i) for i in range(256))


NONZERO_DATA = _table(lambda b: b or 1)               # random bytes -> data without zeros
IS_ZERO = _table(lambda b: 1 if b == 0 else 0)
IS_NONZERO = _table(lambda b: 1 if b else 0)
STATE_IS = {s: _table(lambda b, s=s: 1 if b == s else 0) for s in STATE_NAMES}
ALL_ONES = _table(lambda b: 0xFF if b else 0)        # a 0/1 lane -> 0x00/0xFF
TIMES = {k: _table(lambda b, k=k: (b * k) & 0xFF) for k in (2, 4, 8)}
# failed write: code = state*8 + old_is_zero*4 + alt_is_zero*2 + new_is_zero
AFTER_FAILED_WRITE = _table(lambda c: (
    EITHER if c >> 3 == KNOWN else
    (ANY if c & 7 else NONZERO) if c >> 3 == EITHER else
    (ANY if c & 1 else NONZERO) if c >> 3 == NONZERO else ANY) if c < 32 else ANY)
# failed sync: code = state*4 + touched*2 + maybe_zero
AFTER_FAILED_SYNC = _table(lambda c: ((ANY if c & 1 else NONZERO) if c & 2 else c >> 2)
                           if c < 16 else ANY)


# -- whole-range byte arithmetic (each byte one lane, in C via big ints) -----

def _int(b) -> int:
    return int.from_bytes(b, "little")


def _lanes(*parts) -> bytes:
    """Sum of byte arrays of 0..255 lanes that never carry."""
    n = len(parts[0])
    return sum(_int(p) for p in parts).to_bytes(n, "little")


def _and(a, b) -> bytes:
    return (_int(a) & _int(b)).to_bytes(len(a), "little")


def _or(a, b) -> bytes:
    return (_int(a) | _int(b)).to_bytes(len(a), "little")


def _xor(a, b) -> bytes:
    return (_int(a) ^ _int(b)).to_bytes(len(a), "little")


def _all_zero(b) -> bool:
    return b.count(0) == len(b)


def _first_set(b) -> int | None:
    v = _int(b)
    return None if v == 0 else ((v & -v).bit_length() - 1) // 8


class FsxFailure(AssertionError):
    """A read that differs from the model, or an operation that failed."""


class FileModel:
    """What one file must hold. `data` beyond `size` is zero (exact part)."""

    def __init__(self, capacity: int, tolerant: bool):
        self.capacity = capacity
        self.tolerant = tolerant
        self.data = bytearray(capacity)
        self.size = 0
        self.tracer = None  # called with every change, for --trace
        if tolerant:
            self.state = bytearray(capacity)                 # KNOWN everywhere
            self.alt = bytearray(capacity)                   # the "new" of EITHER
            self.touched = bytearray(capacity)               # changed since the last good sync
            self.maybe_zero = bytearray(b"\x01") * capacity  # a zero (or the end) was a value since
            self.lo = self.hi = 0                            # sizes a remount may show
            self.since_lo = self.since_hi = 0                # sizes since the last good sync

    # -- acknowledged changes -------------------------------------------

    def write(self, off: int, buf: bytes, state=None, alt=None) -> None:
        if self.tracer:
            self.tracer("write", off, bytes(buf))
        end = off + len(buf)
        self.data[off:end] = buf
        self.size = max(self.size, end)
        if self.tolerant:
            n = len(buf)
            state = state if state is not None else bytes(n)
            self.state[off:end] = state
            if alt is not None:
                self.alt[off:end] = alt
            self.touched[off:end] = b"\x01" * n
            zero = self._zero_candidates(buf, state, alt if alt is not None else bytes(n))
            self.maybe_zero[off:end] = _or(self.maybe_zero[off:end], zero)
            self.lo, self.hi = max(self.lo, end), max(self.hi, end)
            self.since_hi = max(self.since_hi, self.size)

    def truncate(self, size: int) -> None:
        if self.tracer:
            self.tracer("truncate", size)
        old = self.size
        if size < old:
            n = old - size
            self.data[size:old] = bytes(n)
            if self.tolerant:
                self.state[size:old] = bytes(n)
                self.touched[size:old] = b"\x01" * n
                self.maybe_zero[size:old] = b"\x01" * n
        self.size = size
        if self.tolerant:
            self.lo = self.hi = size
            self.since_lo, self.since_hi = min(self.since_lo, size), max(self.since_hi, size)

    def piece(self, off: int, n: int):
        """(data, state, alt) of a range, for a copy."""
        if not self.tolerant:
            return bytes(self.data[off:off + n]), None, None
        return (bytes(self.data[off:off + n]), bytes(self.state[off:off + n]),
                bytes(self.alt[off:off + n]))

    # -- what failures leave ------------------------------------------

    def failed_write(self, off: int, buf: bytes, kernel_size: int) -> str | None:
        """A write of buf at off failed: each byte is old or new. Returns a
        complaint if the size the kernel now reports is impossible."""
        if self.tracer:
            self.tracer("failed_write", off, bytes(buf), kernel_size)
        end, n = off + len(buf), len(buf)
        state = self.state[off:end]
        code = _lanes(state.translate(TIMES[8]),
                      self.data[off:end].translate(IS_ZERO).translate(TIMES[4]),
                      self.alt[off:end].translate(IS_ZERO).translate(TIMES[2]),
                      buf.translate(IS_ZERO))
        known = _int(state.translate(STATE_IS[KNOWN]).translate(ALL_ONES))
        self.alt[off:end] = ((_int(buf) & known) | (_int(self.alt[off:end]) & ~known)
                             ).to_bytes(n, "little")
        self.state[off:end] = code.translate(AFTER_FAILED_WRITE)
        self.touched[off:end] = b"\x01" * n
        self.maybe_zero[off:end] = _or(self.maybe_zero[off:end], buf.translate(IS_ZERO))
        if not self.size <= kernel_size <= max(self.size, end):
            return (f"after a failed write of [{off:#x}, {end:#x}) the size is {kernel_size:#x}, "
                    f"outside [{self.size:#x}, {max(self.size, end):#x}]")
        self.size = kernel_size
        self.hi = max(self.hi, kernel_size)
        self.since_hi = max(self.since_hi, kernel_size)
        return None

    def unknown_range(self, off: int, end: int) -> None:
        """Bytes that may hold anything (a failed copy of uncertain bytes, a failed truncate)."""
        if self.tracer:
            self.tracer("unknown", off, end)
        n = end - off
        self.state[off:end] = bytes([ANY]) * n
        self.touched[off:end] = b"\x01" * n
        self.maybe_zero[off:end] = b"\x01" * n

    def sync_ok(self) -> None:
        if self.tracer:
            self.tracer("sync_ok")
        if not self.tolerant:
            return
        size = self.size
        self.touched[:] = bytes(self.capacity)
        head = self._zero_candidates(self.data[:size], self.state[:size], self.alt[:size])
        self.maybe_zero[:size] = head
        self.maybe_zero[size:] = b"\x01" * (self.capacity - size)
        self.since_lo = self.since_hi = size

    def sync_failed(self) -> None:
        if self.tracer:
            self.tracer("sync_failed")
        code = _lanes(self.state.translate(TIMES[4]), self.touched.translate(TIMES[2]),
                      self.maybe_zero)
        self.state[:] = code.translate(AFTER_FAILED_SYNC)
        self.lo, self.hi = min(self.lo, self.since_lo), max(self.hi, self.since_hi)

    def adopt_size(self, size: int) -> str | None:
        """The size a fresh look (fstat, a remount) shows: check it and follow it."""
        if self.tracer and size != self.size:
            self.tracer("size", size)
        if not self.tolerant:
            if size != self.size:
                return f"size is {size:#x}, expected {self.size:#x}"
            return None
        if not self.lo <= size <= self.hi and size != self.size:
            return f"size is {size:#x}, expected {self.size:#x} (or within [{self.lo:#x}, {self.hi:#x}])"
        old = self.size
        if size < old:
            self.data[size:old] = bytes(old - size)
            self.state[size:old] = bytes(old - size)
        elif size > old:
            self.unknown_range(old, size)
        if size != old:
            self.touched[min(size, old):max(size, old)] = b"\x01" * abs(size - old)
            self.maybe_zero[min(size, old):max(size, old)] = b"\x01" * abs(size - old)
        self.size = size
        self.since_lo, self.since_hi = min(self.since_lo, size), max(self.since_hi, size)
        return None

    @staticmethod
    def _zero_candidates(data, state, alt) -> bytes:
        """1 where zero is among a byte's possible values."""
        if _all_zero(state):
            return data.translate(IS_ZERO)
        zd, za = _int(data.translate(IS_ZERO)), _int(alt.translate(IS_ZERO))
        k = _int(state.translate(STATE_IS[KNOWN]))
        e = _int(state.translate(STATE_IS[EITHER]))
        a = _int(state.translate(STATE_IS[ANY]))
        return ((zd & (k | e)) | (za & e) | a).to_bytes(len(data), "little")

    # -- checking -------------------------------------------------------

    def first_bad(self, off: int, got: bytes) -> int | None:
        """Index in got of the first byte the model does not allow."""
        n = len(got)
        expected = self.data[off:off + n]
        if expected == got:
            return None
        if not self.tolerant or _all_zero(self.state[off:off + n]):
            return _first_difference(expected, got)
        state = self.state[off:off + n]
        ff = ALL_ONES
        differs = _xor(expected, got).translate(IS_NONZERO).translate(ff)
        differs_alt = _xor(self.alt[off:off + n], got).translate(IS_NONZERO).translate(ff)
        zero = got.translate(IS_ZERO).translate(ff)
        known = state.translate(STATE_IS[KNOWN]).translate(ff)
        either = state.translate(STATE_IS[EITHER]).translate(ff)
        nonzero = state.translate(STATE_IS[NONZERO]).translate(ff)
        bad = _or(_or(_and(differs, known), _and(_and(differs, differs_alt), either)),
                  _and(zero, nonzero))
        return _first_set(bad)

    def describe(self, off: int) -> str:
        if not self.tolerant:
            return "exact"
        return STATE_NAMES[self.state[off]]


def _first_difference(a, b) -> int | None:
    n = min(len(a), len(b))
    step = 4096
    for start in range(0, n, step):
        if a[start:start + step] != b[start:start + step]:
            for i in range(start, min(n, start + step)):
                if a[i] != b[i]:
                    return i
    return None if len(a) == len(b) else n


class Fsx:
    """One seeded sequence of operations on `files` files in `directory`."""

    def __init__(self, directory: str, seed: int, ops: int, *, files: int = 1,
                 max_len: int = 4 * MiB, direct: bool = False, remount=None,
                 remount_every: int = 1000, allowed_errnos: frozenset = frozenset(),
                 weights: dict | None = None, check_every: int = 0, label: str = "",
                 progress: bool = False, trace: str | None = None, repeat: str = ""):
        if max_len % PAGE:
            raise ValueError("max_len must be a multiple of 4096")
        self.dir = directory
        self.seed, self.ops, self.nfiles = seed, ops, files
        self.max_len = max_len
        self.direct = direct
        self.remount, self.remount_every = remount, remount_every
        self.allowed = frozenset(allowed_errnos)
        self.check_every = check_every
        self.label = label
        self.repeat = repeat  # the command that runs this sequence again, for the report
        self.progress = progress
        w = dict(DEFAULT_WEIGHTS if weights is None else weights)
        if direct:
            for k, v in DIRECT_WEIGHTS.items():
                w.setdefault(k, v)
        self.kinds = [k for k, v in w.items() if v > 0]
        self.cum = list(_cumulative([w[k] for k in self.kinds]))
        self.rng = random.Random(seed)
        self.models = [FileModel(max_len, tolerant=bool(self.allowed)) for _ in range(files)]
        self.fds: list[int | None] = [None] * files
        self.dfds: list[int | None] = [None] * files
        self.names = [f"fsx{i}" for i in range(files)]
        self.log: collections.deque = collections.deque(maxlen=LOG_TAIL)
        self.n = 0
        self.stats: collections.Counter = collections.Counter()
        self.trace = open(trace, "wb") if trace else None
        if self.trace:
            for i, m in enumerate(self.models):
                m.tracer = functools.partial(self._trace, i)

    def _trace(self, f: int, event: str, *args) -> None:
        pickle.dump((self.n, f, event, args), self.trace)

    # -- running ----------------------------------------------------------

    def run(self) -> dict:
        started = time.monotonic()
        for i in range(self.nfiles):
            path = self._path(i)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            os.ftruncate(fd, 0)  # not O_TRUNC: that is an operation under test
            self.fds[i] = fd
        try:
            for self.n in range(1, self.ops + 1):
                if self.remount is not None and self.rng.randrange(self.remount_every) == 0:
                    self._remount()
                else:
                    kind = self.kinds[_pick(self.rng, self.cum)]
                    getattr(self, "op_" + kind)(self.rng.randrange(self.nfiles))
                    self.stats[kind] += 1
                    total = sum(m.size for m in self.models)
                    if total > self.stats["peak bytes"]:
                        self.stats["peak bytes"] = total
                if self.check_every and self.n % self.check_every == 0:
                    self.check_all("periodic check")
                if self.progress and self.n % 10000 == 0:
                    print(f"fsx seed {self.seed}: {self.n} ops", file=sys.stderr)
            self.n += 1
            self.check_all("final check")
            if self.remount is not None:
                self._remount()
        finally:
            self._close_all(quiet=True)
            if self.trace:
                self.trace.close()
        self.stats["seconds"] = round(time.monotonic() - started, 1)
        return dict(self.stats)

    def _path(self, i: int) -> str:
        return os.path.join(self.dir, self.names[i])

    # -- the operations -------------------------------------------------

    def op_write(self, f: int) -> None:
        off, n = self._write_range(f)
        buf = self.rng.randbytes(n).translate(NONZERO_DATA)
        self._write(f, "write", off, buf)

    def op_grow(self, f: int) -> None:
        """A large write at or past the end: fills a volume (a quota) quickly."""
        m, rng = self.models[f], self.rng
        off = min(m.size + rng.choice((0, 0, rng.randrange(BLOCK))), self.max_len - 1)
        n = min(rng.randint(BLOCK, 8 * BLOCK), self.max_len - off)
        if n < BLOCK:  # full: rewrite somewhere instead
            off, n = self._write_range(f)
        self._write(f, "grow", off, self.rng.randbytes(n).translate(NONZERO_DATA))

    def op_zero_write(self, f: int) -> None:
        off, n = self._write_range(f)
        self._write(f, "zero_write", off, bytes(n))

    def _write(self, f: int, kind: str, off: int, buf: bytes) -> None:
        self._logop(kind, f, off, len(buf))
        try:
            done = os.pwrite(self.fds[f], buf, off)
        except OSError as e:
            self._failed_write(f, off, buf, e)
            return
        self._acknowledge_write(f, off, buf, done)

    def _acknowledge_write(self, f: int, off: int, buf: bytes, done: int) -> None:
        m = self.models[f]
        if done < len(buf) and not m.tolerant:
            self._fail(f"short write: {done} of {len(buf)} bytes", f)
        m.write(off, buf[:done])

    def _failed_write(self, f: int, off: int, buf: bytes, e: OSError) -> None:
        self._allow(e, f)
        m = self.models[f]
        complaint = m.failed_write(off, buf, os.fstat(self.fds[f]).st_size)
        if complaint:
            self._fail(complaint, f)

    def op_read(self, f: int) -> None:
        m = self.models[f]
        off, n = self._read_range(m.size)
        self._logop("read", f, off, n)
        got = self._io(f, os.pread, self.fds[f], n, off)
        if got is not None:
            self._check(f, off, n, got, "read")

    def op_map_read(self, f: int) -> None:
        m = self.models[f]
        self._logop("map_read", f, 0, 0)
        self._size_agrees(f)  # a map past the end would be SIGBUS
        if m.size == 0:
            return self._log_note("skipped: empty")
        off, n = self._read_range(m.size)
        n = min(n, m.size - off)
        if n <= 0:
            off, n = 0, min(m.size, 1)
        self.log[-1][3:5] = [off, n]
        base = off - off % mmap.ALLOCATIONGRANULARITY
        with mmap.mmap(self.fds[f], off + n - base, offset=base, access=mmap.ACCESS_READ) as mm:
            got = mm[off - base: off + n - base]
        self._check(f, off, n, got, "map_read")

    def op_map_write(self, f: int) -> None:
        m = self.models[f]
        self._logop("map_write", f, 0, 0)
        self._size_agrees(f)
        off, n = self._write_range(f)
        end = off + n
        buf = self.rng.randbytes(n).translate(NONZERO_DATA)
        self.log[-1][3:5] = [off, n]
        if end > m.size:
            self._log_note(f"extends to {end:#x} first")
        if end > m.size:
            if not self._truncate(f, end):
                return
        base = off - off % mmap.ALLOCATIONGRANULARITY
        with mmap.mmap(self.fds[f], end - base, offset=base) as mm:
            mm[off - base: end - base] = buf
            m.write(off, buf)  # in the page cache now, whatever msync says
            try:
                mm.flush()
            except OSError as e:
                self._allow(e, f)
                m.sync_failed()
                self._log_note(f"msync: {_errname(e)}")

    def op_truncate(self, f: int) -> None:
        m, rng = self.models[f], self.rng
        choice = rng.random()
        if choice < 0.45:
            size = rng.randint(m.size // 2, m.size)
        elif choice < 0.55:
            size = rng.randint(0, min(m.size, BLOCK))
        elif choice < 0.7:
            size = _near_boundary(rng, max(m.size, BLOCK), 64)
        else:
            size = m.size + rng.randint(1, 2 * BLOCK)
        size = max(0, min(size, self.max_len))
        self._logop("truncate", f, size, 0, f"from {m.size:#x}")
        self._truncate(f, size)

    def _truncate(self, f: int, size: int) -> bool:
        m = self.models[f]
        try:
            os.ftruncate(self.fds[f], size)
        except OSError as e:
            self._allow(e, f)
            self._log_note(f"truncate: {_errname(e)}")
            now = os.fstat(self.fds[f]).st_size
            lo, hi = min(m.size, size), max(m.size, size)
            if not lo <= now <= hi:
                self._fail(f"after a failed truncate to {size:#x} the size is {now:#x}", f)
            m.unknown_range(lo, hi)
            m.size = now
            m.lo, m.hi = min(m.lo, lo), max(m.hi, hi)
            m.since_lo, m.since_hi = min(m.since_lo, lo), max(m.since_hi, hi)
            return False
        m.truncate(size)
        return True

    def op_copy_range(self, f: int) -> None:
        rng = self.rng
        src = rng.randrange(self.nfiles)
        ms, md = self.models[src], self.models[f]
        if ms.size == 0:
            return self._skip("copy_range", f, "empty source")
        soff = rng.randrange(ms.size)
        n = min(ms.size - soff, _length(rng))
        for _ in range(10):
            doff = min(_offset(rng, md.size), self.max_len - 1)
            n_ok = min(n, self.max_len - doff)
            if src != f or soff + n_ok <= doff or doff + n_ok <= soff:
                break
        else:
            return self._skip("copy_range", f, "overlap")
        n = n_ok
        self._logop("copy_range", f, doff, n, f"from f{src} {soff:#x}")
        data, state, alt = ms.piece(soff, n)
        done = 0
        while done < n:
            try:
                c = os.copy_file_range(self.fds[src], self.fds[f], n - done,
                                       soff + done, doff + done)
            except OSError as e:
                self._allow(e, f)
                self._log_note(f"copy_file_range: {_errname(e)} after {done:#x}")
                rest = slice(done, n)
                if state is None or _all_zero(state[rest]):
                    complaint = md.failed_write(doff + done, data[rest],
                                                os.fstat(self.fds[f]).st_size)
                    if complaint:
                        self._fail(complaint, f)
                else:
                    md.unknown_range(doff + done, doff + n)
                return
            if c == 0:
                break
            part = slice(done, done + c)
            md.write(doff + done, data[part], state[part] if state else None,
                     alt[part] if alt else None)
            done += c
        if done < n:
            self._fail(f"copy_file_range copied {done:#x} of {n:#x} bytes", f)

    def op_fsync(self, f: int) -> None:
        self._sync(f, "fsync", os.fsync)

    def op_fdatasync(self, f: int) -> None:
        self._sync(f, "fdatasync", os.fdatasync)

    def _sync(self, f: int, kind: str, call) -> None:
        self._logop(kind, f, 0, 0)
        try:
            call(self.fds[f])
        except OSError as e:
            self._allow(e, f)
            self._log_note(f"{kind}: {_errname(e)}")
            self.models[f].sync_failed()
            return
        self.models[f].sync_ok()

    def op_reopen(self, f: int) -> None:
        self._logop("reopen", f, 0, 0)
        self._close(f)
        self.fds[f] = os.open(self._path(f), os.O_RDWR)
        self._size_agrees(f)

    def op_open_trunc(self, f: int) -> None:
        self._logop("open_trunc", f, 0, 0, "open(O_TRUNC)")
        self._close(f)
        try:
            self.fds[f] = os.open(self._path(f), os.O_RDWR | os.O_TRUNC)
        except OSError as e:
            self._allow(e, f)
            self.fds[f] = os.open(self._path(f), os.O_RDWR)
            self.models[f].unknown_range(0, self.models[f].size)
            return
        self.models[f].truncate(0)
        self._size_agrees(f)

    def op_stat(self, f: int) -> None:
        self._logop("stat", f, 0, 0)
        self._size_agrees(f)

    def op_direct_read(self, f: int) -> None:
        m = self.models[f]
        off = _align_down(self.rng.randrange(m.size + BLOCK))
        n = PAGE * self.rng.randint(1, 64)
        self._logop("direct_read", f, off, n)
        with mmap.mmap(-1, n) as buf:  # page-aligned
            got = self._io(f, os.preadv, self._direct_fd(f), [buf], off)
            if got is not None:
                self._check(f, off, n, buf[:got], "direct_read")

    def op_direct_write(self, f: int) -> None:
        m = self.models[f]
        off = min(_align_down(_offset(self.rng, m.size)), self.max_len - PAGE)
        n = min(PAGE * self.rng.randint(1, 64), self.max_len - off)
        data = self.rng.randbytes(n).translate(NONZERO_DATA)
        self._logop("direct_write", f, off, n)
        with mmap.mmap(-1, n) as buf:
            buf[:] = data
            try:
                done = os.pwritev(self._direct_fd(f), [buf], off)
            except OSError as e:
                self._failed_write(f, off, data, e)
                return
        self._acknowledge_write(f, off, data, done)

    def _direct_fd(self, f: int) -> int:
        if self.dfds[f] is None:
            self.dfds[f] = os.open(self._path(f), os.O_RDWR | os.O_DIRECT)
        return self.dfds[f]

    # -- remounts and whole-file checks -----------------------------------

    def _remount(self) -> None:
        self._logop("remount", -1, 0, 0)
        self._close_all()
        self.dir = self.remount()
        self.stats["remount"] += 1
        for i in range(self.nfiles):
            self.fds[i] = os.open(self._path(i), os.O_RDWR)
        self.check_all("check after remount")

    def check_all(self, what: str) -> None:
        for f in range(self.nfiles):
            if not self._size_agrees(f, what):
                continue
            m, fd = self.models[f], self.fds[f]
            for off in range(0, m.size, MiB):
                n = min(MiB, m.size - off)
                got = os.pread(fd, n, off)
                self._check(f, off, n, got, what)
            if os.pread(fd, 1, m.size) != b"":
                self._fail(f"{what}: bytes past the end {m.size:#x}", f)

    def _size_agrees(self, f: int, what: str = "fstat") -> bool:
        complaint = self.models[f].adopt_size(os.fstat(self.fds[f]).st_size)
        if complaint:
            self._fail(f"{what}: {complaint}", f)
        return True

    def _check(self, f: int, off: int, n: int, got: bytes, what: str) -> None:
        m = self.models[f]
        expected_len = max(0, min(n, m.size - off))
        if len(got) != expected_len:
            self._fail(f"{what} of [{off:#x}, +{n:#x}) returned {len(got):#x} bytes, "
                       f"expected {expected_len:#x} (size {m.size:#x})", f)
        bad = m.first_bad(off, got)
        if bad is not None:
            self._fail_bytes(f, off, got, bad, what)

    # -- errors -----------------------------------------------------------

    def _io(self, f: int, call, *args):
        try:
            return call(*args)
        except OSError as e:
            self._fail(f"{call.__name__}: {_errname(e)} ({e.strerror})", f)

    def _allow(self, e: OSError, f: int) -> None:
        if e.errno not in self.allowed:
            self._fail(f"unexpected error {_errname(e)} ({e.strerror})", f)
        self.stats["error " + _errname(e)] += 1

    def _close(self, f: int, quiet: bool = False) -> None:
        for fds in (self.dfds, self.fds):
            fd, fds[f] = fds[f], None
            if fd is None:
                continue
            try:
                os.close(fd)  # closed even when it reports an error
            except OSError as e:
                if quiet:
                    continue
                self._allow(e, f)
                self._log_note(f"close: {_errname(e)}")
                self.models[f].sync_failed()

    def _close_all(self, quiet: bool = False) -> None:
        for f in range(self.nfiles):
            self._close(f, quiet)

    def _fail_bytes(self, f: int, off: int, whole: bytes, bad: int, what: str) -> None:
        m = self.models[f]
        at, got = off + bad, whole[bad:]
        n = min(len(got), 32)
        expected = bytes(m.data[at:at + n])
        zeros = ""
        if got[:1] == b"\0":
            # The whole run of zeros the read returned around the bad byte: where
            # it starts and ends says which blocks or pages came back empty.
            start = off + len(whole[:bad].rstrip(b"\0"))
            end = at + len(got) - len(got.lstrip(b"\0"))
            zeros = (f"\n  the read returned zeros over [{start:#x}, {end:#x}) "
                     f"= [{_where(start)}, {_where(end)}) of the read [{off:#x}, {off + len(whole):#x})")
        runs = _bad_runs(m.data[off:off + len(whole)], whole, bad)
        ranges = ", ".join(f"[{off + a:#x}, {off + b:#x}) {kind}" for a, b, kind in runs)
        lines = [f"{what}: first bad byte of f{f} at offset {at:#x} ({at}; {_where(at)}), "
                 f"allowed: {m.describe(at)}{zeros}",
                 f"  bytes that differ from the model in this read: {ranges}",
                 f"  expected {expected.hex(' ')}"]
        if m.tolerant and m.state[at] == EITHER:
            lines.append(f"  or       {bytes(m.alt[at:at + n]).hex(' ')}")
        lines.append(f"  got      {got[:n].hex(' ')}")
        self._fail("\n".join(lines), f, at)

    def _fail(self, message: str, f: int, at: int | None = None) -> None:
        raise FsxFailure(self.report(message, f, at))

    def report(self, message: str, f: int, at: int | None) -> str:
        head = (f"fsx{(' ' + self.label) if self.label else ''}: seed {self.seed}, "
                f"operation {self.n} of {self.ops}, files {self.nfiles}, "
                f"direct {'on' if self.direct else 'off'}, "
                f"max length {self.max_len:#x}, remounts {self.stats['remount']}")
        current = ""
        if self.log and self.log[-1][0] == self.n:
            current = "in: " + _format_entry(self.log[-1], f, None).strip() + "\n"
        if self.repeat:
            head += f"\nrepeat: {self.repeat}"
        lines = [head, current + message, f"last {len(self.log)} operations "
                 "(* = touched the bad offset):"]
        for entry in self.log:
            lines.append(_format_entry(entry, f, at))
        return "\n".join(lines)

    # -- the log ------------------------------------------------------------

    def _logop(self, kind: str, f: int, off: int, n: int, note: str = "") -> None:
        self.log.append([self.n, kind, f, off, n, note])
        if self.trace:
            self._trace(f, "op", kind)

    def _log_note(self, note: str) -> None:
        entry = self.log[-1]
        entry[5] = f"{entry[5]}; {note}" if entry[5] else note

    def _skip(self, kind: str, f: int, why: str) -> None:
        self._logop(kind, f, 0, 0, "skipped: " + why)

    # -- choosing offsets and lengths -------------------------------------

    def _write_range(self, f: int) -> tuple[int, int]:
        m, rng = self.models[f], self.rng
        choice = rng.random()
        if choice < 0.25:      # across a block boundary
            off = _near_boundary(rng, max(m.size, BLOCK), 4096)
            n = rng.randint(2, 3 * BLOCK)
        elif choice < 0.35:    # far past the end, leaving a hole
            off = m.size + rng.randint(BLOCK, 8 * BLOCK)
            n = _length(rng)
        elif choice < 0.45:    # an append
            off, n = m.size, _length(rng)
        else:
            off, n = _offset(rng, m.size), _length(rng)
        off = min(off, self.max_len - 1)
        return off, max(1, min(n, self.max_len - off))

    def _read_range(self, size: int) -> tuple[int, int]:
        rng = self.rng
        if rng.random() < 0.3:
            off = _near_boundary(rng, max(size, BLOCK), 4096)
        else:
            off = rng.randrange(size + PAGE)
        return off, _length(rng)


# -- random helpers -------------------------------------------------------------

def _cumulative(weights):
    total = 0
    for w in weights:
        total += w
        yield total


def _pick(rng: random.Random, cum: list[int]) -> int:
    x = rng.random() * cum[-1]
    for i, c in enumerate(cum):
        if x < c:
            return i
    return len(cum) - 1


def _length(rng: random.Random) -> int:
    """Mostly small, sometimes a few blocks."""
    r = rng.random()
    if r < 0.3:
        return rng.randint(1, 512)
    if r < 0.75:
        return rng.randint(1, 64 * KiB)
    if r < 0.95:
        return rng.randint(64 * KiB, 2 * BLOCK)
    return rng.randint(2 * BLOCK, 8 * BLOCK)


def _offset(rng: random.Random, size: int) -> int:
    return rng.randrange(size + BLOCK)


def _near_boundary(rng: random.Random, size: int, spread: int) -> int:
    boundary = BLOCK * rng.randint(1, max(1, size // BLOCK))
    return max(0, boundary + rng.randint(-spread, spread))


def _align_down(x: int) -> int:
    return x - x % PAGE


def _bad_runs(expected, got: bytes, first: int, limit: int = 6) -> list:
    """The ranges (at most `limit`) where got differs from expected, from index
    first on, each marked zeros (got zeros) or data (other bytes)."""
    runs, i, n = [], first, len(got)
    while i is not None and i < n and len(runs) < limit:
        j = i
        while j < n and got[j] != expected[j]:
            j += 1
        runs.append((i, j, "zeros" if _all_zero(got[i:j]) else "data"))
        rest = _first_difference(expected[j:], got[j:])
        i = None if rest is None else j + rest
    if i is not None and i < n:
        runs.append((i, n, "and more"))
    return runs


def _where(offset: int) -> str:
    return f"block {offset // BLOCK} + {offset % BLOCK:#x}"


def _errname(e: OSError) -> str:
    return errno.errorcode.get(e.errno, str(e.errno))


def _format_entry(entry, f: int, at: int | None) -> str:
    n, kind, ef, off, length, note = entry
    touched = (at is not None and ef == f and kind not in ("read", "map_read", "direct_read")
               and (off <= at < off + length or (kind == "truncate" and at >= off)))
    target = "" if ef < 0 else f"f{ef} "
    span = f"[{off:#x}, +{length:#x})" if length else (f"{off:#x}" if kind == "truncate" else "")
    return (f"{'*' if touched else ' '} {n:8d} {kind:<12} {target}{span}"
            f"{('  ' + note) if note else ''}")


def explain(trace: str, f: int, offset: int, width: int = 8) -> None:
    """Print every change of one byte (and the next few) that a trace recorded."""
    with open(trace, "rb") as fh:
        while True:
            try:
                n, ef, event, args = pickle.load(fh)
            except EOFError:
                break
            if ef not in (f, -1) or (event == "op" and args[0] != "remount"):
                continue
            line = None
            if event == "op":
                line = ""
            if event in ("write", "failed_write"):
                off, data = args[0], args[1]
                if off <= offset < off + len(data):
                    at = offset - off
                    line = f"[{off:#x}, +{len(data):#x}) -> {data[at:at + width].hex(' ')}"
            elif event == "truncate" and args[0] <= offset:
                line = f"to {args[0]:#x}"
            elif event == "unknown" and args[0] <= offset < args[1]:
                line = f"[{args[0]:#x}, {args[1]:#x})"
            elif event in ("sync_ok", "sync_failed", "size"):
                line = " ".join(f"{a:#x}" for a in args)
            if line is not None:
                print(f"{n:8d} f{ef} {event:<12} {line}")


# -- a fusevol volume for the script --------------------------------------------

class FusevolVolume:
    """A volume of a store, mounted and remounted through fusevol's CLI."""

    def __init__(self, store: str, *, quota: str | None = None, env: dict | None = None):
        self.store = store
        self.name = "fsx-" + uuid.uuid4().hex[:8]
        self.env = {**os.environ, **(env or {})}
        self.base = tempfile.mkdtemp(prefix="fsx-mnt-")
        self.mountpoint: str | None = None
        args = ["volume", "create", self.name] + (["-o", f"size={quota}"] if quota else [])
        self._cli(*args)

    def _cli(self, *args: str) -> None:
        proc = subprocess.run([sys.executable, "-m", "fusevol", "--store", self.store, *args],
                              capture_output=True, text=True, env=self.env)
        if proc.returncode:
            raise RuntimeError(f"fusevol {' '.join(args)}: {proc.stderr.strip()}")

    def mount(self) -> str:
        self.mountpoint = os.path.join(self.base, uuid.uuid4().hex[:6])
        os.mkdir(self.mountpoint)
        self._cli("mount", self.name, self.mountpoint, "--background")
        return self.mountpoint

    def remount(self) -> str:
        self.umount()
        return self.mount()

    def umount(self) -> None:
        if self.mountpoint:
            self._cli("umount", self.mountpoint)
            os.rmdir(self.mountpoint)
            self.mountpoint = None

    def close(self) -> None:
        try:
            self.umount()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


def _size(text: str) -> int:
    units = {"K": KiB, "M": MiB, "G": 1 << 30}
    if text[-1:].upper() in units:
        return int(text[:-1]) * units[text[-1:].upper()]
    return int(text)


def _repeat_args(argv, seed: int) -> list[str]:
    """This command line for one seed."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--seed", "--seeds"):
            skip = True
        elif not arg.startswith(("--seed=", "--seeds=")):
            out.append(arg)
    return out + ["--seed", str(seed)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = p.add_mutually_exclusive_group()
    where.add_argument("--dir", help="run in this directory (any filesystem)")
    where.add_argument("--fusevol", metavar="STORE",
                       help="create a volume in STORE, mount it and remount it between steps")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--seeds", type=int, default=1, help="run seeds SEED .. SEED+SEEDS-1")
    p.add_argument("--ops", type=int, default=10000)
    p.add_argument("--files", type=int, default=1, choices=(1, 2))
    p.add_argument("--direct", action="store_true", help="mix O_DIRECT reads and writes in")
    p.add_argument("--max-len", type=_size, default=4 * MiB, help="largest file size")
    p.add_argument("--remount-every", type=int, default=1000,
                   help="a remount every N operations on average (--fusevol)")
    p.add_argument("--no-writeback", action="store_true",
                   help="mount without the kernel's writeback cache (--fusevol)")
    p.add_argument("--quota", help="give the volume this size (--fusevol); allows EDQUOT/ENOSPC")
    p.add_argument("--allow-enospc", action="store_true",
                   help="allow EDQUOT and ENOSPC (a small filesystem under --dir)")
    p.add_argument("--allow", action="append", default=[], metavar="ERRNO",
                   help="also allow this error where EDQUOT is allowed (e.g. EIO), to look past it")
    p.add_argument("--weight", action="append", default=[], metavar="KIND=N",
                   help="change an operation's weight (0 turns it off)")
    p.add_argument("--check-every", type=int, default=0, help="check whole files every N ops")
    p.add_argument("--trace", metavar="FILE",
                   help="record every change (data included) for --explain; large")
    p.add_argument("--explain", nargs=2, metavar=("FILE_INDEX", "OFFSET"),
                   help="with --trace: print the history of one offset of one file")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    if not (args.dir or args.fusevol or args.explain):
        p.error("one of --dir, --fusevol or --explain is required")
    if args.explain:
        explain(args.trace, int(args.explain[0]), int(args.explain[1], 0))
        return 0

    weights = dict(DEFAULT_WEIGHTS)
    for item in args.weight:
        kind, _, value = item.partition("=")
        if kind not in DEFAULT_WEIGHTS and kind not in DIRECT_WEIGHTS:
            p.error(f"unknown operation {kind!r}")
        weights[kind] = int(value)
    allowed = set()
    if args.quota or args.allow_enospc:
        allowed |= {errno.EDQUOT, errno.ENOSPC}
    for name in args.allow:
        if not hasattr(errno, name):
            p.error(f"unknown errno {name}")
        allowed.add(getattr(errno, name))
    failed = 0
    for seed in range(args.seed, args.seed + args.seeds):
        volume = None
        if args.fusevol:
            env = {"FUSEVOL_WRITEBACK_CACHE": "0"} if args.no_writeback else {}
            volume = FusevolVolume(args.fusevol, quota=args.quota, env=env)
            directory, remount = volume.mount(), volume.remount
        else:
            directory, remount = args.dir, None
        try:
            fsx = Fsx(directory, seed, args.ops, files=args.files, max_len=args.max_len,
                      direct=args.direct, remount=remount, remount_every=args.remount_every,
                      allowed_errnos=frozenset(allowed), weights=weights, check_every=args.check_every,
                      progress=True, trace=args.trace,
                      repeat=" ".join(["python tests/fsx.py"] + _repeat_args(argv, seed)))
            stats = fsx.run()
            print(f"seed {seed}: ok {stats}")
        except FsxFailure as e:
            failed += 1
            print(f"seed {seed}: FAILED\n{e}\n")
        finally:
            if volume is not None:
                volume.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
