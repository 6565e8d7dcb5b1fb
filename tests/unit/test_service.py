"""The volume service on a temporary store (no FUSE, no root): what holds a
volume, mount resolution, and errors that carry data which each edge words
its own way. A worker is a real entry in the worker registry, under this
test's own (live) pid: nothing is mounted."""

import ast
import io
import os
import pathlib
import re
import subprocess
import sys

import pytest

import fusevol.store
from fusevol.cli.advice import worded as cli_worded
from fusevol.cli.app import COMMANDS
from fusevol.errors import Busy, FusevolError, InUse, InvalidArgument, NotFound, RemoteDamaged
from fusevol.fs import registry
from fusevol.plugin.protocol import worded as plugin_worded
from fusevol.progress import NoProgress
from fusevol.records import Worker
from fusevol.service import VolumeService
from fusevol.store import Inodes, Store, remotes, snapshots, stream, tar_export, tar_import, volumes
from fusevol.store.schema import ROOT_INO

from .conftest import FILE


@pytest.fixture
def service(store) -> VolumeService:
    return VolumeService(store)


_registrations = {}


def serve_fake(store, volume: str, mountpoint: str = "/nowhere/vol") -> Worker:
    """Register a worker for `volume` as a real one does, under this process's pid."""
    worker = Worker(pid=os.getpid(), volume=volume, mounted_as=volume, mountpoint=mountpoint,
                    pidns=os.stat("/proc/self/ns/pid").st_ino)
    _registrations[volume] = registry.register(store.path, worker)
    return worker


def make(store, name: str, opts: dict | None = None):
    with store.write() as txn:
        return volumes.create(txn, name, opts)


# -- mount resolution: views and read-only, in one place -------------------------------


def test_mount_spec_of_a_data_volume(store):
    make(store, "vol", {"readonly": "true"})
    with store.read() as txn:
        spec = volumes.mount_spec(txn, "vol", subpath="./a//b/")
    assert (spec.data.name, spec.subpath, spec.readonly) == ("vol", "a/b", True)


@pytest.mark.parametrize("source_ro, view_ro, mount_ro, expected", [
    (False, False, False, False), (True, False, False, True),
    (False, True, False, True), (False, False, True, True)])
def test_a_view_serves_its_sources_folder_read_only_if_anyone_says_so(
        store, source_ro, view_ro, mount_ro, expected):
    make(store, "vol", {"readonly": str(source_ro).lower()})
    make(store, "site", {"source": "vol", "subpath": "public", "readonly": str(view_ro).lower()})
    with store.read() as txn:
        spec = volumes.mount_spec(txn, "site", subpath="img", readonly=mount_ro)
    assert (spec.name, spec.data.name, spec.subpath, spec.readonly) == \
        ("site", "vol", "public/img", expected)


def test_a_view_before_its_source_names_it(store):
    make(store, "site", {"source": "vol", "subpath": "public"})
    with store.read() as txn, pytest.raises(NotFound, match="view of volume vol, which does not"):
        volumes.mount_spec(txn, "site")


def test_a_removed_source_is_served_for_its_views_only(store):
    make(store, "vol")
    make(store, "site", {"source": "vol", "subpath": "public"})
    with store.write() as txn:
        assert volumes.remove(txn, "vol") == []  # kept for its view
    with store.read() as txn:
        with pytest.raises(NotFound, match="was removed"):
            volumes.mount_spec(txn, "vol")
        assert volumes.mount_spec(txn, "vol", removed_ok=True).data.removed
        assert volumes.mount_spec(txn, "site").data.name == "vol"


def test_mount_counts_per_id(store):
    make(store, "vol")
    with store.write() as txn:
        assert volumes.count_mount(txn, "vol", "a", +1).mounts == {"a": 1}
        assert volumes.count_mount(txn, "vol", "a", +1).mount_count == 2
        assert volumes.count_mount(txn, "vol", "b", +1).mounts == {"a": 2, "b": 1}
        assert volumes.count_mount(txn, "vol", "a", -2).mounts == {"b": 1}
        assert volumes.count_mount(txn, "vol", "nobody", -1).mounts == {"b": 1}
        assert volumes.count_mount(txn, "nosuch", "a", +1) is None


# -- what holds a volume ---------------------------------------------------------------


def test_holders_gathers_counts_workers_and_the_mount_table(store, service):
    make(store, "vol")
    make(store, "site", {"source": "vol", "subpath": "public"})
    with store.write() as txn:
        volumes.count_mount(txn, "site", "id1", +1)
    worker = serve_fake(store, "vol")
    held = service.holders("vol")
    assert (held.family_mounts, held.worker, held.mounted_at_driver) == ({"site": 1}, worker, None)
    assert service.holders("site").worker == worker  # a view is served by its source's worker


def test_remove_refused_while_held_and_done_when_free(store, service, tmp_path):
    make(store, "vol")
    with store.write() as txn:
        volumes.count_mount(txn, "vol", "id1", +1)
    with pytest.raises(InUse) as e:
        service.remove("vol")
    assert e.value.holder == "containers"
    with store.write() as txn:
        volumes.count_mount(txn, "vol", "id1", -1)
    serve_fake(store, "vol")
    with pytest.raises(InUse) as e:
        service.remove("vol")
    assert e.value.holder == "worker"
    _registrations.pop("vol").close()
    assert service.remove("vol") == ["vol"]
    assert service.volume("vol", missing_ok=True) is None


def test_a_view_is_removed_while_its_source_is_served(store, service):
    make(store, "vol")
    make(store, "site", {"source": "vol", "subpath": "public"})
    serve_fake(store, "vol")
    assert service.remove("site") == ["site"]


def test_rollback_refused_while_served_unless_forced(store, service):
    make(store, "vol")
    with store.write() as txn:
        snapshots.create(txn, "vol", "s1")
    serve_fake(store, "vol")
    with pytest.raises(InUse) as e:
        service.rollback("vol", "s1")
    assert "--force" in cli_worded(e.value) and "--force" not in str(e.value)
    assert "--force" not in plugin_worded(e.value)


def test_receive_target_served(store, service):
    make(store, "vol")
    assert not service.receive_target_served("vol")
    serve_fake(store, "vol")
    assert service.receive_target_served("vol") and not service.receive_target_served("other")


def test_snapshots_and_clones_through_the_service_are_typed(store, service):
    make(store, "vol")
    snap = service.snapshot("vol", "s1")  # no worker: nothing to flush
    assert (snap.ref, snap.logical_bytes) == ("vol@s1", 0)
    [(listed, alone, on_disk)] = service.snapshots("vol")
    assert (listed, alone, on_disk) == (snap, 0, 0)  # the live volume holds the same tree
    copy = service.clone("vol", "s1", "copy")
    assert (copy.name, copy.options["from-snapshot"], copy.is_view) == ("copy", "vol@s1", False)


# -- errors carry data; the edges word them ----------------------------------------------


def _raised(fn) -> FusevolError:
    with pytest.raises(FusevolError) as e:
        fn()
    return e.value


def test_store_errors_say_what_not_what_to_type(store):
    make(store, "vol")
    with store.write() as txn:
        snapshots.create(txn, "vol", "s1")
    with store.write() as txn:
        busy = _raised(lambda: volumes.remove(txn, "vol"))
    with store.read() as txn:
        no_remote = _raised(lambda: remotes.get(txn, "backup"))
    bad_remote = _raised(lambda: volumes.parse_options({"remote": "no such"}))
    for error, reason in ((busy, "has_snapshots"), (no_remote, "no_remote"),
                          (bad_remote, "remote_name")):
        assert error.reason == reason
        assert "fusevol" not in str(error) and "--" not in str(error)
        assert cli_worded(error).startswith(str(error)) and "fusevol " in cli_worded(error)
    assert "fusevol snapshot rm vol@NAME" in cli_worded(busy)
    assert "on the host" in plugin_worded(busy)


def test_receive_into_a_changed_volume_words_force_on_the_cli_only(tmp_path):
    a, b = (Store.open(str(tmp_path / n)) for n in ("a", "b"))
    try:
        make(a, "vol")
        full, incr = io.BytesIO(), io.BytesIO()
        with a.write() as txn:
            snapshots.create(txn, "vol", "s1")
        stream.send(a, "vol", "s1", full)
        with a.write() as txn:
            snapshots.create(txn, "vol", "s2")
        stream.send(a, "vol", "s2", incr, base=("vol", "s1"))
        stream.receive(b, "vol", io.BytesIO(full.getvalue()))
        with b.write() as txn:  # a change on the receiving side since its snapshot
            record = volumes.get(txn, "vol")
            Inodes(record.vid, b.block_size).create(txn, ROOT_INO, b"new", FILE, 0, 0)
        with pytest.raises(InUse) as served:
            stream.receive(b, "vol", io.BytesIO(incr.getvalue()), mounted=True)
        assert served.value.action == "receive"
        with pytest.raises(Busy) as changed:
            stream.receive(b, "vol", io.BytesIO(incr.getvalue()))
        assert changed.value.reason == "changed_since_snapshot"
        assert "--force" not in str(changed.value) and "--force" not in plugin_worded(changed.value)
        assert cli_worded(changed.value).endswith("(snapshot it first, or use --force)")
        stream.receive(b, "vol", io.BytesIO(incr.getvalue()), force=True)
    finally:
        for s in (a, b):
            Store._instances.pop(s.path, None)
            s.close()


STORE_DIR = pathlib.Path(fusevol.store.__file__).parent
# A command of the CLI, or a flag: its words ("a fusevol send stream" names a format).
CLI_WORDS = re.compile(rf"\bfusevol ({'|'.join(COMMANDS)})\b(?! stream)|(^|\s)--?[a-zA-Z]")


REMOTE_DIR = STORE_DIR.parent / "remote"


@pytest.mark.parametrize("path", sorted([*STORE_DIR.glob("*.py"), *REMOTE_DIR.glob("*.py")]),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_store_or_remote_error_names_a_command_or_flag(path):
    """The store's and the remotes' errors reach Docker users too (a Mount
    pulls a volume that follows a remote): advice belongs to each edge."""
    wrong = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Raise) and node.exc is not None:
            for part in ast.walk(node.exc):
                if isinstance(part, ast.Constant) and isinstance(part.value, str) \
                        and CLI_WORDS.search(part.value):
                    wrong.append(f"line {node.lineno}: {part.value!r}")
    assert wrong == []


def test_the_cli_adds_its_hint_and_exit_code(store):
    make(store, "vol")
    with store.write() as txn:
        snapshots.create(txn, "vol", "s1")
    out = subprocess.run([sys.executable, "-m", "fusevol", "--store", store.path, "volume", "rm",
                          "vol"], capture_output=True, text=True)
    assert out.returncode == Busy.exit_code
    assert out.stderr.strip() == ("fusevol: volume vol has 1 snapshot(s); delete them first "
                                  "(fusevol snapshot ls vol; fusevol snapshot rm vol@NAME)")


# -- one progress protocol ---------------------------------------------------------------


class Recorder:
    def __init__(self):
        self.phases, self.advanced, self.warnings = [], 0, []

    def start(self, what, total=None):
        self.phases.append((what, total))

    def advance(self, n):
        self.advanced += n

    def warn(self, message):
        self.warnings.append(message)


def test_export_and_import_report_through_the_protocol(store, tmp_path):
    record = make(store, "vol")
    with store.write() as txn:
        inodes = Inodes(record.vid, store.block_size)
        ino, _ = inodes.create(txn, ROOT_INO, b"f", FILE, 0, 0)
        inodes.write_blocks(txn, ino, [(0, b"x" * 5000)], 5000)
    out, seen = io.BytesIO(), Recorder()
    tar_export.export(store, "vol", out, progress=seen)
    assert (seen.phases, seen.advanced) == ([("export", 5000)], 5000)

    archive, back = out.getvalue(), Recorder()
    tar_import.import_tar(store, "copy", io.BytesIO(archive), size=len(archive), progress=back)
    assert back.phases == [("import", len(archive))] and back.advanced == len(archive)

    import tarfile  # an archive with a member that must be skipped, and said so

    bad = io.BytesIO()
    with tarfile.open(fileobj=bad, mode="w") as tar:
        tar.addfile(tarfile.TarInfo("../escape"))
    warned = Recorder()
    tar_import.import_tar(store, "other", io.BytesIO(bad.getvalue()), progress=warned)
    assert warned.warnings == ["../escape: member name contains '..', skipped"]


def test_the_null_progress_logs_warnings(caplog):
    NoProgress().warn("member skipped")
    assert "member skipped" in caplog.text


@pytest.mark.parametrize("error, cli, docker", [
    (Busy("volume v holds data here that was never pushed, and remote r has v@s: the copies "
          "diverged", reason="diverged", volume="v", remote="r", snapshot="s"),
     "(fusevol push v@SNAPSHOT r, or fusevol pull r v@s NEWVOLUME)",
     "keep one by hand on the host (fusevol push or fusevol pull)"),
    (Busy("remote r has a push running (by host)", reason="push_running", remote="r"),
     "or with --break-locks if that push is known to be dead", None),
    (NotFound("remote r has no snapshot v@s", reason="no_remote_snapshot", remote="r",
              volume="v"),
     "(fusevol remote snapshots r lists them)", "(fusevol remote snapshots r on the host"),
    (RemoteDamaged("remote r: chunk 00 that a snapshot reaches is in no pack this prune can "
                   "read; prune changes nothing", reason="remote_damaged", remote="r"),
     "(fusevol remote verify r names what is wrong)", "on the host names what is wrong"),
    (InvalidArgument("volume v exists here and has no snapshot to pull onto",
                     reason="no_snapshot_to_pull_onto", volume="v"),
     ": pull into a new volume (give NEWVOLUME), or snapshot it first", None),
    (Busy("volume v is mounted", reason="in_use", volume="v", holder="mount", action="pull"),
     "; unmount it before pulling into it", None),
    (FusevolError("chunks this pull had stored were freed meanwhile (did a gc run?)",
                  reason="pull_raced_gc"), "; pull again", None),
])
def test_remote_errors_are_worded_at_each_edge(error, cli, docker):
    assert cli_worded(error).startswith(str(error)) and cli_worded(error).endswith(cli)
    if docker:
        assert plugin_worded(error).startswith(str(error)) and docker in plugin_worded(error)
        assert "--" not in plugin_worded(error)


def test_errors_without_data_are_worded_as_they_are():
    plain = InvalidArgument("bad thing")
    assert cli_worded(plain) == plugin_worded(plain) == "bad thing"
