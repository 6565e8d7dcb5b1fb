"""The command line as a user meets it: every command maps errors the same way
(a message and an exit code, never a traceback), takes --store before or after
its name, and starts without importing what only mounting needs."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib

import click
import lmdb
import pytest

from conftest import needs_fuse, run_cli
from fusevol import errors

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fusevol(*args, env=None, **kwargs) -> subprocess.CompletedProcess:
    """`fusevol ARGS...` with no --store of run_cli's in front."""
    return subprocess.run([sys.executable, "-m", "fusevol", *args], capture_output=True,
                          timeout=120, env=env, **kwargs)


def one_line(stderr: bytes) -> str:
    text = stderr.decode()
    assert "Traceback" not in text, text
    assert len(text.strip().splitlines()) == 1, text
    return text.strip()


# -- one error mapping ---------------------------------------------------------------

def test_unknown_volume_is_one_line_and_its_exit_code(store_path):
    run_cli(store_path, "volume", "create", "present")
    for args in (["volume", "inspect", "nosuch"], ["volume", "rm", "nosuch"],
                 ["snapshot", "create", "nosuch"], ["export", "nosuch", "-o", os.path.join(store_path, "x.tar")],
                 ["mount", "nosuch", "/tmp", "--background"]):
        proc = run_cli(store_path, *args, check=False)
        line = one_line(proc.stderr)
        assert line == "fusevol: no such volume: nosuch", (args, line)
        assert proc.returncode == errors.NotFound.exit_code, args


def test_bad_option_is_a_usage_error(store_path):
    for args in (["volume", "ls", "--bogus"], ["snapshot", "create"], ["--bogus", "df"], ["nosuch"]):
        proc = run_cli(store_path, *args, check=False)
        assert proc.returncode == 2, args
        text = proc.stderr.decode()
        assert "Traceback" not in text and "Error:" in text and "Usage:" in text, (args, text)


def test_os_error_is_one_line_naming_the_file(store_path, tmp_path):
    run_cli(store_path, "volume", "create", "vol")
    target = tmp_path / "no" / "such" / "dir" / "v.tar"
    proc = run_cli(store_path, "export", "vol", "-o", str(target), check=False)
    assert proc.returncode == 1
    line = one_line(proc.stderr)
    assert str(target.parent) in line and "No such file or directory" in line, line


def test_a_bug_is_one_line_and_a_traceback_in_the_log(store_path):
    """A volume record damaged by hand (not JSON) is nothing the code expects:
    the user sees one line, the traceback goes to the store's CLI log."""
    run_cli(store_path, "volume", "create", "vol")
    env = lmdb.open(os.path.join(store_path, "db"), max_dbs=32, map_size=1 << 40)
    try:
        with env.begin(write=True, db=env.open_db(b"volumes")) as txn:
            txn.put(b"vol", b"{damaged")
    finally:
        env.close()
    proc = run_cli(store_path, "volume", "ls", check=False)
    assert proc.returncode == 70
    line = one_line(proc.stderr)
    log_path = os.path.join(store_path, "run", "log", "cli.log")
    assert line.startswith("fusevol: internal error: JSONDecodeError: "), line
    assert line.endswith(f"(traceback in {log_path})"), line
    with open(log_path) as f:
        logged = f.read()
    assert "internal error in: fusevol --store" in logged and "volume ls" in logged
    assert "Traceback (most recent call last)" in logged and "json.decoder.JSONDecodeError" in logged
    assert proc.stdout == b""


def _vid(store_path: str, name: str) -> int:
    env = lmdb.open(os.path.join(store_path, "db"), max_dbs=32, map_size=1 << 40, readonly=True)
    try:
        with env.begin(db=env.open_db(b"volumes", create=False)) as txn:
            return json.loads(txn.get(name.encode()))["vid"]
    finally:
        env.close()


def _damage(store_path: str, table: bytes, key: bytes, value: bytes) -> None:
    env = lmdb.open(os.path.join(store_path, "db"), max_dbs=32, map_size=1 << 40)
    try:
        with env.begin(write=True, db=env.open_db(table)) as txn:
            txn.put(key, value)
    finally:
        env.close()


@needs_fuse
def test_mount_exits_alike_with_and_without_background(store_path, tmp_path):
    """The worker's error reaches the CLI as the error it is (class, errno, data):
    the same exit code whether the command serves in the foreground or a worker
    was started for it (--background). Each case is one the worker meets itself,
    or one met before it starts."""
    for name in ("vol", "other", "bug", "broken"):
        run_cli(store_path, "volume", "create", name)
    taken = str(tmp_path / "taken")
    os.makedirs(taken)
    run_cli(store_path, "mount", "vol", taken, "--background")
    # A bug in the worker: a volume's counters damaged (the worker reads them to serve).
    bug_vid = _vid(store_path, "bug")
    _damage(store_path, b"vstats", bug_vid.to_bytes(8, "big"), b"bad")
    # A bug before the worker starts: a volume record that is not JSON.
    _damage(store_path, b"volumes", b"broken", b"{damaged")
    free = str(tmp_path / "free")
    os.makedirs(free)
    try:
        cases = {("nosuch", free): errors.NotFound.exit_code,
                 ("other", taken): errors.Busy.exit_code,
                 ("bug", free): None, ("broken", free): 70}
        for (name, mountpoint), code in cases.items():
            seen = []
            for extra in ([], ["--background"]):
                proc = run_cli(store_path, "mount", name, mountpoint, *extra, check=False,
                               timeout=120)
                # In the foreground the command is the worker: it logs to the terminal
                # too, never a traceback (that goes to the volume's log).
                assert "Traceback" not in proc.stderr.decode(), (name, extra, proc.stderr)
                last = proc.stderr.decode().strip().splitlines()[-1]
                seen.append((proc.returncode, last if code != 70 else None))
                assert not os.path.ismount(free)
            assert seen[0] == seen[1], (name, seen)
            assert code is None or seen[0][0] == code, (name, seen)
            assert seen[0][0] != 0
    finally:
        run_cli(store_path, "umount", taken)


def _blocked_reading_stdin(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/syscall") as f:
            fields = f.read().split()
    except OSError:
        return False
    return len(fields) > 1 and fields[0] == "0" and int(fields[1], 16) == 0  # read(0, ...)


def test_ctrl_c_exits_130_without_a_traceback(store_path):
    # SIGINT as at a terminal's foreground: a job started in the background by
    # a shell without job control (a CI runner's) inherits it ignored.
    proc = subprocess.Popen([sys.executable, "-m", "fusevol", "--store", store_path, "receive", "vol"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while not _blocked_reading_stdin(proc.pid):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "receive never read its stdin"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        # Its input stays open until it has exited: the answer is to the signal,
        # not to the end of the stream.
        proc.wait(timeout=60)
        stderr = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            pipe.close()
    assert proc.returncode == 130
    assert one_line(stderr) == "fusevol: interrupted"


def _all_commands(command: click.Command, path=()):
    yield path, command
    if isinstance(command, click.Group):  # through click's API: the root loads them lazily
        ctx = click.Context(command)
        for name in command.list_commands(ctx):
            yield from _all_commands(command.get_command(ctx, name), path + (name,))


def test_every_command_maps_errors_and_takes_store():
    from fusevol.cli.app import main
    from fusevol.cli.group import Group

    found = list(_all_commands(main))
    assert len(found) > 15
    for path, command in found:
        assert any("--store" in p.opts for p in command.params), path
        if isinstance(command, click.Group):
            assert isinstance(command, Group), path  # the group that maps errors


# -- --store anywhere ------------------------------------------------------------------

def test_store_after_the_subcommand(tmp_path):
    store, other = str(tmp_path / "store"), str(tmp_path / "other")
    env = dict(os.environ, FUSEVOL_STORE=str(tmp_path / "from-env"))
    proc = fusevol("volume", "create", "v1", "--store", store, env=env)
    assert proc.returncode == 0, proc.stderr
    proc = fusevol("verify", "--store", store, env=env)
    assert proc.returncode == 0, proc.stderr
    assert b"1 volumes" in proc.stdout
    assert b"v1" in fusevol("volume", "--store", store, "ls", env=env).stdout
    # The one given last wins, wherever it stands.
    assert b"v1" in fusevol("--store", other, "volume", "ls", "--store", store, env=env).stdout
    assert b"v1" not in fusevol("--store", store, "volume", "ls", "--store", other, env=env).stdout
    # Without any, $FUSEVOL_STORE.
    assert b"v1" not in fusevol("volume", "ls", env=env).stdout
    assert os.path.isdir(str(tmp_path / "from-env"))


# -- start-up: import what a command needs ------------------------------------------------

MOUNT_ONLY = ("pyfuse3", "trio", "rich")


def test_commands_that_do_not_mount_import_neither_fuse_nor_trio_nor_rich(store_path):
    run_cli(store_path, "volume", "create", "small")
    script = (
        "import sys\n"
        "from fusevol.cli import main\n"
        f"loaded = [m for m in {MOUNT_ONLY!r} if m in sys.modules]\n"
        "assert not loaded, ('import fusevol.cli', loaded)\n"
        "for args in sys.argv[2:]:\n"
        "    code = main(['--store', sys.argv[1], *args.split()], standalone_mode=False)\n"
        "    assert not code, (args, code)\n"
        f"    loaded = [m for m in {MOUNT_ONLY!r} if m in sys.modules]\n"
        "    assert not loaded, (args, loaded)\n"
    )
    commands = ["--help", "volume ls", "volume create other", "volume inspect small",
                "snapshot create small@s", "snapshot ls", "diff small@s small", "df",
                "gc --json", "verify --json", "clone small@s copy", "umount --help"]
    proc = subprocess.run([sys.executable, "-c", script, store_path, *commands],
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()


def test_console_script_entry_point(store_path):
    with open(os.path.join(ROOT_DIR, "pyproject.toml"), "rb") as f:
        target = tomllib.load(f)["project"]["scripts"]["fusevol"]
    module, _, attr = target.partition(":")
    script = (f"import sys; from {module} import {attr} as main; "
              "sys.argv[0] = 'fusevol'; sys.exit(main())")
    proc = subprocess.run([sys.executable, "-c", script, "--store", store_path, "volume", "ls"],
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(b"NAME")
    proc = subprocess.run([sys.executable, "-c", script, "--help"], capture_output=True, timeout=60)
    assert proc.returncode == 0 and b"Usage: fusevol" in proc.stdout


@pytest.mark.parametrize("args", [["--help"], ["volume", "--help"], ["snapshot", "create", "--help"]])
def test_help_lists_store(args):
    proc = fusevol(*args)
    assert proc.returncode == 0 and b"--store" in proc.stdout


def test_volume_rm_removes_the_worker_log(mounts, store_path):
    mnt = mounts.mount("logged")
    mounts.umount(mnt)
    log = os.path.join(store_path, "run", "log", "logged.log")
    assert os.path.exists(log)
    run_cli(store_path, "volume", "rm", "logged")
    assert not os.path.exists(log)


NO_CLICK = ("import atexit, os, sys\n"
            "atexit.register(lambda: 'click' in sys.modules and os._exit(99))\n"
            "from fusevol.cli import main; sys.argv[0] = 'fusevol'; main()\n")
CLICK = "from fusevol.cli.app import main; main(prog_name='fusevol')\n"


def _as_seen(proc, store: str) -> tuple:
    """Exit code, stdout and stderr, without what differs from run to run (the
    store's path, times, log lines)."""
    def lines(data: bytes):
        return [line for line in data.replace(store.encode(), b"STORE").splitlines()
                if b'"created_' not in line and not re.match(rb"\d{4}-\d\d-\d\d ", line)]
    return proc.returncode, lines(proc.stdout), lines(proc.stderr)


def test_common_commands_answer_without_click_as_click_does(store_path, tmp_path):
    """`volume ls` and `snapshot create` run without importing click (most of a
    short command's start) and answer as click's commands do, errors included;
    a line that is not a plain one (a usage error, --help) is still click's."""
    run_cli(store_path, "volume", "create", "small", "-o", "size=1G")
    run_cli(store_path, "volume", "create", "other")
    twin = str(tmp_path / "twin")
    for words in (["volume", "ls"], ["volume", "ls", "--json"], ["-v", "volume", "--store", "S", "ls"],
                  ["snapshot", "create", "small@a"], ["snapshot", "create", "--json", "small@b"],
                  ["snapshot", "create", "nosuch"], ["snapshot", "create", "small@a"],
                  ["snapshot", "create", "bad@name@x"]):
        shutil.rmtree(twin, ignore_errors=True)
        shutil.copytree(store_path, twin)  # the same store, for click's run of the same line
        seen = []
        for script, store in ((NO_CLICK, store_path), (CLICK, twin)):
            proc = subprocess.run([sys.executable, "-c", script, *[store if w == "S" else w for w in words]],
                                  capture_output=True, timeout=60, env=dict(os.environ, FUSEVOL_STORE=store))
            seen.append(_as_seen(proc, store))
        assert seen[0][0] != 99, (words, "click imported")
        assert seen[0] == seen[1], words
    for words in (["volume", "ls", "--bogus"], ["snapshot", "create"], ["volume", "ls", "--help"],
                  ["volume", "ls", "extra"], ["--store"], ["volume", "ls", "--store"]):
        proc = subprocess.run([sys.executable, "-c", NO_CLICK, *words], capture_output=True,
                              timeout=60, env=dict(os.environ, FUSEVOL_STORE=store_path))
        assert proc.returncode == 99, words  # click's to answer


# Standard modules and the store's that the two commands run most from scripts
# need not load (a tenth to a third of their start each): records and rows are
# written out without dataclasses (which imports inspect), times made with
# time.strftime, and chunks and packs (typing, zstandard with platform) loaded
# only when an object is stored or a chunk read.
NOT_AT_START = ("click", "dataclasses", "inspect", "typing", "datetime", "zstandard", "platform",
                "fusevol.store.chunks", "fusevol.store.packs")


def test_volume_ls_and_an_unchanged_volumes_snapshot_load_no_heavy_modules(store_path):
    """`volume ls`, and `snapshot create` of an unmounted volume with no change
    since its last snapshot (the store opened here, its tree written before),
    as the script runs them: none of NOT_AT_START is loaded."""
    run_cli(store_path, "volume", "create", "small")
    run_cli(store_path, "snapshot", "create", "small@first")
    script = ("import atexit, os, sys\n"
              f"heavy = {NOT_AT_START!r}\n"
              "def check():\n"
              "    loaded = [m for m in heavy if m in sys.modules]\n"
              "    if loaded:\n"
              "        sys.stderr.write(f'loaded: {loaded}\\n'); sys.stderr.flush(); os._exit(99)\n"
              "atexit.register(check)\n"
              "from fusevol.cli import main; sys.argv[0] = 'fusevol'; main()\n")
    for words in (["volume", "ls"], ["volume", "ls", "--json"], ["snapshot", "create", "small@again"],
                  ["snapshot", "create", "small"]):
        proc = subprocess.run([sys.executable, "-c", script, "--store", store_path, *words],
                              capture_output=True, timeout=60)
        assert proc.returncode == 0, (words, proc.stderr.decode())
    listed = json.loads(run_cli(store_path, "snapshot", "ls", "small", "--json").stdout)
    names = [snap["name"] for snap in listed]
    assert names[:2] == ["first", "again"] and len(names) == 3


def test_what_the_store_logs_reaches_stderr_formatted_without_click(store_path):
    """The commands run without click load logging only when something logs,
    and then with the command line's settings (the format; DEBUG with -v)."""
    run_cli(store_path, "volume", "create", "vol")
    shutil.rmtree(os.path.join(store_path, "intent"), ignore_errors=True)
    with open(os.path.join(store_path, "intent"), "w"):  # not a folder: its listing fails, a warning
        pass
    for script in (NO_CLICK, CLICK):
        proc = subprocess.run([sys.executable, "-c", script, "--store", store_path, "volume", "ls"],
                              capture_output=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert re.match(rb"\d{4}-\d\d-\d\d [\d:,]+ fusevol.store.intentlog WARNING cannot list the "
                        rb"intent logs of ", proc.stderr), proc.stderr
        assert b"vol" in proc.stdout
