"""What a crash may leave of a volume: the operation log of one round, and the
states it allows (no I/O here; the harness feeds it and asks it).

A round starts from a known, durable state (paths -> file ids, folders, the
content of each file). Every operation the workload starts is appended as an
Event before its system call and marked done when the call returns. Only the
last event can stay not done: the one in flight when the worker died (it may or
may not have happened).

Two properties of fusevol make precise checks possible:

- Namespace changes (create, mkdir, rmdir, rename, link, unlink) are store
  operations run one after the other on the worker's store thread and committed
  in that order, so after a crash the volume shows the state after a *prefix*
  of them: ``namespace(k)`` for some k. A returned fsync, fsyncdir or sync makes
  the commit that holds every earlier store operation durable, so k is at least
  the index of the last one that returned.
- File data goes through the kernel's writeback cache and the worker's block
  buffers, which reorder and tear it (at page granularity) until an fsync of the
  file, or a sync, stores it. So a byte may hold: its value at the file's last
  durable point, or any value a later write put there, or zero where a later
  truncate cut it or the file grew past its durable size. Bytes no later event
  touched must hold exactly their durable value: those are the fsync'ed bytes
  the harness counts (checked / lost).
"""

from dataclasses import dataclass, field

NAMESPACE_KINDS = {"create", "mkdir", "rmdir", "rename", "link", "unlink"}
DATA_KINDS = {"write", "trunc"}
PAGE = 4096


@dataclass
class Event:
    index: int
    kind: str  # create mkdir rmdir rename link unlink write trunc fsync fsyncdir sync
    path: str = ""
    path2: str = ""  # rename/link destination
    fid: int = 0
    off: int = 0
    data: bytes = b""
    size: int = 0
    done: bool = False

    def describe(self) -> str:
        state = "" if self.done else "  (in flight)"
        if self.kind == "write":
            what = f"write {self.path} fid {self.fid} [{self.off}, {self.off + len(self.data)})"
        elif self.kind == "trunc":
            what = f"truncate {self.path} fid {self.fid} to {self.size}"
        elif self.kind in ("rename", "link"):
            what = f"{self.kind} {self.path} -> {self.path2}"
        elif self.kind == "create":
            what = f"create {self.path} fid {self.fid}"
        elif self.kind == "fsync":
            what = f"fsync {self.path} fid {self.fid}"
        else:
            what = f"{self.kind} {self.path}".rstrip()
        return f"{self.index:4d} {what}{state}"


@dataclass
class Namespace:
    files: dict[str, int] = field(default_factory=dict)  # path -> fid
    dirs: set[str] = field(default_factory=set)          # paths of folders ("" is the root)

    def copy(self) -> "Namespace":
        return Namespace(dict(self.files), set(self.dirs))

    def apply(self, ev: Event) -> None:
        k = ev.kind
        if k == "create":
            self.files[ev.path] = ev.fid
        elif k == "mkdir":
            self.dirs.add(ev.path)
        elif k == "rmdir":
            self.dirs.discard(ev.path)
        elif k == "link":
            self.files[ev.path2] = self.files[ev.path]
        elif k == "unlink":
            del self.files[ev.path]
        elif k == "rename":
            if ev.path in self.dirs:
                moved = [p for p in self.files if _under(p, ev.path)]
                for p in moved:
                    self.files[ev.path2 + p[len(ev.path):]] = self.files.pop(p)
                for d in [d for d in self.dirs if d == ev.path or _under(d, ev.path)]:
                    self.dirs.discard(d)
                    self.dirs.add(ev.path2 + d[len(ev.path):])
            else:
                self.files[ev.path2] = self.files.pop(ev.path)

    def groups(self) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for path, fid in self.files.items():
            out.setdefault(fid, []).append(path)
        return {fid: sorted(paths) for fid, paths in out.items()}


def _under(path: str, folder: str) -> bool:
    return path.startswith(folder + "/")


@dataclass
class Observed:
    """A volume as read back: paths -> (inode number, link count), folders, content by inode."""
    files: dict[str, tuple[int, int]]
    dirs: set[str]
    content: dict[int, bytes]


class History:
    def __init__(self, start: Namespace, content: dict[int, bytes], next_fid: int):
        self.start = start
        self.start_content = content
        self.events: list[Event] = []
        self.next_fid = next_fid

    # -- recording (the workload) ------------------------------------------------

    def begin(self, kind: str, **kw) -> Event:
        ev = Event(len(self.events), kind, **kw)
        self.events.append(ev)
        return ev

    def new_fid(self) -> int:
        self.next_fid += 1
        return self.next_fid

    def completed(self) -> int:
        """Number of events that have returned (they form a prefix)."""
        n = len(self.events)
        return n - 1 if n and not self.events[-1].done else n

    # -- the states a crash may leave ---------------------------------------------

    def namespace(self, k: int) -> Namespace:
        """The namespace after the first k events."""
        ns = self.start.copy()
        for ev in self.events[:k]:
            if ev.kind in NAMESPACE_KINDS:
                ns.apply(ev)
        return ns

    def live(self) -> Namespace:
        return self.namespace(len(self.events))

    def durable_namespace_index(self, upto: int | None = None) -> int:
        """Events before the last fsync/fsyncdir/sync that returned (among the first `upto`)."""
        evs = self.events[:upto]
        for ev in reversed(evs):
            if ev.done and ev.kind in ("fsync", "fsyncdir", "sync"):
                return ev.index
        return 0

    def durable_data_index(self, fid: int, upto: int | None = None) -> int:
        """Events before the last returned fsync of this file, or sync, whose
        data must all be stored."""
        for ev in reversed(self.events[:upto]):
            if ev.done and (ev.kind == "sync" or (ev.kind == "fsync" and ev.fid == fid)):
                return ev.index
        return 0

    def content(self, fid: int, upto: int) -> bytearray:
        """The file's content after the first `upto` events."""
        buf = bytearray(self.start_content.get(fid, b""))
        for ev in self.events[:upto]:
            if ev.fid == fid and ev.kind in DATA_KINDS:
                _apply_data(buf, ev)
        return buf

    def candidates(self, fid: int, lo: int, hi: int) -> "FileCandidates":
        """What the file may hold if its data is durable up to event `lo` and
        events up to `hi` may have reached the store."""
        later = [ev for ev in self.events[lo:hi] if ev.fid == fid and ev.kind in DATA_KINDS]
        return FileCandidates(bytes(self.content(fid, lo)), later)

    def log(self) -> str:
        return "\n".join(ev.describe() for ev in self.events) or "    (no events)"


def _apply_data(buf: bytearray, ev: Event) -> None:
    if ev.kind == "write":
        end = ev.off + len(ev.data)
        if len(buf) < end:
            buf.extend(bytes(end - len(buf)))
        buf[ev.off:end] = ev.data
    else:
        if ev.size < len(buf):
            del buf[ev.size:]
        else:
            buf.extend(bytes(ev.size - len(buf)))


@dataclass
class ContentReport:
    durable_bytes: int   # bytes that had to hold exactly their durable value
    lost_bytes: int      # ...and did not (or lay past the end)
    problems: list[str]


class FileCandidates:
    """Per byte: the durable value, zero, or a later write's value (see the module docstring)."""

    def __init__(self, durable: bytes, later: list[Event]):
        self.durable = durable
        self.later = later
        sizes = [len(durable)]
        size = len(durable)
        for ev in later:
            size = max(size, ev.off + len(ev.data)) if ev.kind == "write" else ev.size
            sizes.append(size)
        self.min_size, self.max_size = min(sizes), max(sizes)
        # Offsets from which zero is a possible value: past the durable end, or
        # past a later truncate.
        self.zero_from = min([len(durable)] + [ev.size for ev in later if ev.kind == "trunc"])
        self.touched = _merge([(ev.off, ev.off + len(ev.data)) for ev in later if ev.kind == "write"]
                              + [(ev.size, len(durable)) for ev in later
                                 if ev.kind == "trunc" and ev.size < len(durable)])

    def check(self, actual: bytes) -> ContentReport:
        problems = []
        n = len(actual)
        if not self.min_size <= n <= self.max_size:
            problems.append(f"size {n}, expected between {self.min_size} and {self.max_size}")
        # Durable bytes no later event touched: exactly their value.
        durable_bytes = lost = 0
        for lo, hi in _gaps(self.touched, 0, len(self.durable)):
            durable_bytes += hi - lo
            want, got = self.durable[lo:hi], actual[lo:hi]
            if want != got:
                bad = sum(1 for a, b in zip(want, got) if a != b) + (hi - lo - len(got))
                lost += bad
                problems.append(f"durable bytes [{lo}, {hi}) changed: {bad} differ, first at "
                                f"{lo + _first_difference(want, got)}")
        # Every other byte: one of its candidate values.
        for lo, hi in self.touched + [(len(self.durable), n)]:
            hi = min(hi, n)
            if lo < hi:
                bad = self._odd_byte(actual, lo, hi)
                if bad is not None:
                    problems.append(f"byte {bad} is {actual[bad]:#04x}, a value no write, "
                                    f"truncate or durable state gives it")
        return ContentReport(durable_bytes, lost, problems)

    def _sources(self, lo: int, hi: int) -> list[tuple[int, bytes]]:
        """(start, bytes) pieces that may supply values in [lo, hi)."""
        out = [(0, self.durable)]
        out += [(ev.off, ev.data) for ev in self.later if ev.kind == "write"
                and ev.off < hi and ev.off + len(ev.data) > lo]
        return out

    def _odd_byte(self, actual: bytes, lo: int, hi: int) -> int | None:
        sources = self._sources(lo, hi)
        for page in range(lo - lo % PAGE, hi, PAGE):
            a, b = max(lo, page), min(hi, page + PAGE)
            got = actual[a:b]
            # Fast path: one source gives the whole page.
            if a >= self.zero_from and got == bytes(b - a):
                continue
            if any(start <= a and start + len(data) >= b and data[a - start:b - start] == got
                   for start, data in sources):
                continue
            for i in range(a, b):
                v = actual[i]
                if v == 0 and i >= self.zero_from:
                    continue
                if not any(start <= i < start + len(data) and data[i - start] == v
                           for start, data in sources):
                    return i
        return None


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for lo, hi in sorted(r for r in ranges if r[0] < r[1]):
        if out and lo <= out[-1][1]:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return [(lo, hi) for lo, hi in out]


def _gaps(ranges: list[tuple[int, int]], lo: int, hi: int):
    """Sub-ranges of [lo, hi) that none of the (merged, sorted) ranges covers."""
    pos = lo
    for a, b in ranges:
        if a > pos:
            yield pos, min(a, hi)
        pos = max(pos, b)
        if pos >= hi:
            return
    if pos < hi:
        yield pos, hi


def _first_difference(a: bytes, b: bytes) -> int:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def match_namespace(observed: Observed, expected: Namespace) -> str | None:
    """None if the volume shows exactly this namespace (same paths, folders,
    and hardlink groups with their link counts), else what differs."""
    if observed.dirs != expected.dirs:
        return (f"folders differ: extra {sorted(observed.dirs - expected.dirs)}, "
                f"missing {sorted(expected.dirs - observed.dirs)}")
    if set(observed.files) != set(expected.files):
        return (f"files differ: extra {sorted(set(observed.files) - set(expected.files))}, "
                f"missing {sorted(set(expected.files) - set(observed.files))}")
    for fid, paths in expected.groups().items():
        inos = {observed.files[p][0] for p in paths}
        if len(inos) != 1:
            return f"{paths} should be one file (hardlinks), they are {len(inos)}"
        nlinks = {observed.files[p][1] for p in paths}
        if nlinks != {len(paths)}:
            return f"{paths} should have link count {len(paths)}, have {sorted(nlinks)}"
    if len({observed.files[p][0] for p in observed.files}) != len(expected.groups()):
        return "separate files share an inode number"
    return None


def fid_to_ino(observed: Observed, expected: Namespace) -> dict[int, int]:
    return {fid: observed.files[paths[0]][0] for fid, paths in expected.groups().items()}
