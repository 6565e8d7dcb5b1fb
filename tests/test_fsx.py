"""Random operation sequences (tests/fsx.py) on mounted volumes, every read
checked against a model; the same engine on a plain directory checks the tester.

CI runs one seed per variant with a few thousand operations. The long forms
(see the README): FUSEVOL_FSX_OPS sets the operations per run and
FUSEVOL_FSX_SEEDS the seeds ("1-20" or "3,7,11"), for every variant.
"""

import dataclasses
import errno
import os

import pytest

import fsx
from fusevol.fs.registry import worker_of

MiB = 1 << 20


def _seeds(text: str) -> list[int]:
    seeds = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        seeds += range(int(lo), int(hi or lo) + 1)
    return seeds


OPS = int(os.environ.get("FUSEVOL_FSX_OPS", "1000"))
SEEDS = _seeds(os.environ["FUSEVOL_FSX_SEEDS"]) if os.environ.get("FUSEVOL_FSX_SEEDS") else None
REMOUNT_EVERY = min(2000, OPS)  # on average; plus one at the end of every run

# open(O_TRUNC) has a test of its own below, so that the data-path sequences
# show data-path defects only.
MIX = {**fsx.DEFAULT_WEIGHTS, "open_trunc": 0}
# Over a quota: two files that grow to 12 MiB each cross 16M quickly.
QUOTA_MIX = {**MIX, "grow": 8, "truncate": 2}


@dataclasses.dataclass(frozen=True)
class Variant:
    seed: int                  # the seed CI runs
    writeback: bool = True
    files: int = 1
    direct: bool = False
    quota: str | None = None
    max_len: int = 4 * MiB
    weights: dict = dataclasses.field(default_factory=lambda: MIX)


VARIANTS = {
    "cache": Variant(seed=1),
    "nocache": Variant(seed=2, writeback=False),
    "cache-2files": Variant(seed=3, files=2),
    "nocache-2files": Variant(seed=4, writeback=False, files=2),
    "cache-direct": Variant(seed=5, direct=True),
    "nocache-direct": Variant(seed=6, writeback=False, direct=True),
    "quota-cache": Variant(seed=7, files=2, quota="16M", max_len=12 * MiB, weights=QUOTA_MIX),
    "quota-nocache": Variant(seed=8, writeback=False, files=2, quota="16M", max_len=12 * MiB,
                             weights=QUOTA_MIX),
}

# Runs that fail on today's code, with the defect that makes them fail. Each
# entry goes once its defect is fixed (strict=False: a lucky pass is no error).
KNOWN_FAILURES: dict[tuple[str, int], str] = {}


def _cases():
    for name, variant in VARIANTS.items():
        for seed in SEEDS or [variant.seed]:
            marks = []
            reason = KNOWN_FAILURES.get((name, seed))
            if reason:
                marks.append(pytest.mark.xfail(strict=False, reason=reason))
            yield pytest.param(name, seed, id=f"{name}-seed{seed}", marks=marks)


def _repeat(name: str, seed: int) -> str:
    """The script's command line for this run."""
    v = VARIANTS[name]
    args = [f"--seed {seed} --ops {OPS} --remount-every {REMOUNT_EVERY}"]
    args += ["--no-writeback"] * (not v.writeback) + ["--files 2"] * (v.files == 2)
    args += ["--direct"] * v.direct
    if v.quota:
        args.append(f"--quota {v.quota} --max-len {v.max_len >> 20}M")
    args += [f"--weight {k}={w}" for k, w in v.weights.items() if w != fsx.DEFAULT_WEIGHTS[k]]
    return "PYTHONPATH=. python tests/fsx.py --fusevol /tmp/fsx-store " + " ".join(args)


def _env(variant: Variant) -> dict:
    return {"FUSEVOL_WRITEBACK_CACHE": "1" if variant.writeback else "0"}


def _mount(mounts, name: str, env: dict) -> str:
    mountpoint = mounts.mount(name, env=env)
    # The knob is read by the worker at mount time: make sure it got there.
    info = worker_of(mounts.store_path, mountpoint=mountpoint)
    with open(f"/proc/{info.pid}/environ", "rb") as f:
        seen = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
    for key, value in env.items():
        assert seen.get(key.encode()) == value.encode(), f"{key} did not reach the worker"
    return mountpoint


@pytest.mark.parametrize("name,seed", list(_cases()))
def test_fsx_on_a_volume(mounts, name, seed):
    variant = VARIANTS[name]
    env = _env(variant)
    if variant.quota:
        mounts.create("vol", f"size={variant.quota}")
    current = [_mount(mounts, "vol", env)]

    def remount() -> str:
        mounts.umount(current[0])
        current[0] = _mount(mounts, "vol", env)
        return current[0]

    allowed = frozenset({errno.EDQUOT, errno.ENOSPC}) if variant.quota else frozenset()
    tester = fsx.Fsx(current[0], seed, OPS, files=variant.files, max_len=variant.max_len,
                     direct=variant.direct, remount=remount, remount_every=REMOUNT_EVERY,
                     allowed_errnos=allowed, weights=variant.weights, label=name,
                     repeat=_repeat(name, seed))
    stats = tester.run()
    assert stats["remount"] >= 1
    if variant.quota and OPS >= 1000:
        # The sequence must have reached the quota, or the variant tests nothing more.
        assert stats.get("error EDQUOT", 0) + stats.get("error ENOSPC", 0) > 0, stats


@pytest.mark.parametrize("writeback", [True, False], ids=["cache", "nocache"])
def test_fsx_open_with_o_trunc(mounts, writeback):
    env = {"FUSEVOL_WRITEBACK_CACHE": "1" if writeback else "0"}
    current = [_mount(mounts, "vol", env)]

    def remount() -> str:
        mounts.umount(current[0])
        current[0] = _mount(mounts, "vol", env)
        return current[0]

    weights = {**MIX, "open_trunc": 4}
    fsx.Fsx(current[0], 11, min(OPS, 1000), remount=remount, remount_every=REMOUNT_EVERY,
            weights=weights, label="open_trunc").run()


# -- the tester itself, on a plain directory (ext4 or whatever holds tmp) -----

@pytest.mark.parametrize("files,direct", [(1, False), (2, True)], ids=["1file", "2files-direct"])
def test_fsx_passes_on_a_plain_directory(tmp_path, files, direct):
    """What the tester checks, the kernel's own filesystems do."""
    tester = fsx.Fsx(str(tmp_path), 100 + files, OPS, files=files, direct=direct,
                     remount=lambda: str(tmp_path), remount_every=REMOUNT_EVERY,
                     label="plain directory")
    tester.run()


def test_fsx_reports_a_hole_punched_behind_its_back(tmp_path):
    """A 'remount' that zeroes 4 KiB of the file must be caught, with the seed,
    the first bad offset and the log in the message."""
    def corrupting_remount() -> str:
        path = tmp_path / "fsx0"
        size = path.stat().st_size
        if size > 3 * fsx.PAGE:
            with open(path, "r+b") as f:
                f.seek(size // 2)
                f.write(bytes(fsx.PAGE))
        return str(tmp_path)

    weights = {**MIX, "zero_write": 0}
    tester = fsx.Fsx(str(tmp_path), 5, 3000, remount=corrupting_remount, remount_every=300,
                     weights=weights)
    with pytest.raises(fsx.FsxFailure) as failure:
        tester.run()
    text = str(failure.value)
    assert "seed 5" in text and "first bad byte of f0" in text and "returned zeros over" in text
    assert "last 50 operations" in text


# -- the tolerant model's rules (what a failed write or sync may leave) -------

def _model(data: bytes) -> fsx.FileModel:
    m = fsx.FileModel(64, tolerant=True)
    m.write(0, data)
    m.sync_ok()
    return m


def test_model_after_a_failed_write_allows_old_or_new_bytes_only():
    m = _model(b"a" * 16)
    assert m.failed_write(4, b"b" * 8, kernel_size=16) is None
    assert m.first_bad(0, b"aaaabbbbaaaaaaaa") is None       # partly applied
    assert m.first_bad(0, b"a" * 16) is None                  # not applied
    assert m.first_bad(0, b"aaaabbbbbbbbaaaa") is None        # all applied
    assert m.first_bad(0, b"aaaabbbbbbbb\0aaa") == 12          # never a zero in old data
    assert m.first_bad(0, b"aaaacaaaaaaaaaaa") == 4           # nor a third value


def test_model_after_a_failed_write_past_the_end():
    m = _model(b"a" * 8)
    assert m.failed_write(8, b"b" * 8, kernel_size=12) is None  # four bytes got in
    assert m.size == 12
    assert m.first_bad(0, b"aaaaaaaab\0bb") is None             # the end was zeros before
    assert m.failed_write(8, b"c" * 8, kernel_size=40) is not None  # a size never written


def test_model_after_a_failed_sync_keeps_acknowledged_data_nonzero():
    m = _model(b"a" * 16)
    m.write(0, b"b" * 8)       # acknowledged, then its sync fails
    m.write(16, b"c" * 8)      # grew the file since the last good sync
    m.sync_failed()
    assert m.first_bad(0, b"a" * 16 + b"c" * 8) is None         # lost: an earlier value
    assert m.first_bad(0, b"b" * 8 + b"x" * 8) == 8              # untouched bytes stay exact
    assert m.first_bad(0, b"bbb\0" + b"a" * 12) == 3             # a hole in acknowledged data
    assert m.first_bad(0, b"a" * 16 + b"\0" * 8) is None         # the end may be lost
    assert m.adopt_size(16) is None                              # and the size with it


def test_model_truncate_then_failed_sync_allows_the_cut_bytes_back():
    m = _model(b"a" * 16)
    m.truncate(4)
    m.write(8, b"b" * 4)       # a gap of zeros at [4, 8)
    m.sync_failed()
    assert m.first_bad(0, b"aaaa\0\0\0\0bbbb") is None
    assert m.first_bad(0, b"aaaaaaaabbbb") is None               # the truncate was lost


def test_model_a_good_write_makes_bytes_exact_again():
    m = _model(b"a" * 16)
    m.write(0, b"b" * 16)
    m.sync_failed()
    m.write(0, b"c" * 16)
    assert m.first_bad(0, b"a" * 16) == 0
