"""mount(8)'s helpers: `mount -t fuse.fusevol NAME DIR -o OPTS` and `umount DIR`.

mount(8) runs /sbin/mount.fuse.fusevol as `SOURCE MOUNTPOINT [-sfnv] [-o OPTS]
[-t fuse.fusevol]` and umount(8) runs /sbin/umount.fuse.fusevol as `MOUNTPOINT
[-flnrv] [-t fuse.fusevol]`, both possibly with an empty PATH (at boot, from
mount.fuse3). scripts/install-mount-helpers.sh (run by scripts/setup.sh) writes
both with the venv's python as their interpreter: nothing is looked up on PATH.

The mount helper returns once the volume serves (the worker's readiness
report); the worker runs on in its own session. Which store a mountpoint
belongs to is noted under /run/fusevol/mounts, so umount can wait until the
worker has stored everything and exited, as unmounting a disk does.
"""

import getopt
import hashlib
import json
import os
import sys

import click

from .app import main as fusevol_main

INDEX_DIR = "/run/fusevol/mounts"
# What a shell at boot would search; mount.fuse3 and systemd may hand us none.
UMOUNT = "/bin/umount"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _index_path(mountpoint: str) -> str:
    digest = hashlib.sha256(os.path.abspath(mountpoint).encode(errors="surrogateescape"))
    return os.path.join(INDEX_DIR, digest.hexdigest()[:32])


def _usage(message: str) -> int:
    click.echo(f"fusevol: {message}", err=True)
    return 1  # mount(8)'s "incorrect invocation or permissions"


def _run_cli(args: list[str]) -> int:
    try:
        # Not standalone, click returns a deliberate exit's code instead of exiting.
        code = fusevol_main.main(args, prog_name="fusevol", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.Abort:
        return 130
    return code if isinstance(code, int) else 0


def mount_main(argv: list[str] | None = None) -> int:
    from ..fs import mountopts

    os.environ["PATH"] = os.environ.get("PATH") or DEFAULT_PATH
    try:
        opts, args = getopt.gnu_getopt(sys.argv[1:] if argv is None else argv, "sfnvho:t:N:")
    except getopt.GetoptError as e:
        return _usage(f"{e}; usage: mount.fuse.fusevol VOLUME MOUNTPOINT [-o OPTIONS]")
    flags = {flag: value for flag, value in opts}
    if "-h" in flags or len(args) != 2:
        return _usage("usage: mount.fuse.fusevol VOLUME MOUNTPOINT [-o OPTIONS] (mount(8) "
                      "runs it for `mount -t fuse.fusevol`)")
    if "-N" in flags:
        return _usage("mounting in another mount namespace (-N) is not supported")
    text = ",".join(value for flag, value in opts if flag == "-o")
    name, mountpoint = args
    if name.startswith("fusevol:"):  # the source as /proc/mounts shows it
        name = name[len("fusevol:"):]
    try:
        parsed = mountopts.parse(text, sloppy="-s" in flags)
    except Exception as e:
        return _usage(str(e))
    if "-f" in flags:  # mount -f: pretend
        return 0
    store = parsed.store or os.environ.get("FUSEVOL_STORE") or "/var/lib/fusevol"
    parsed.store = None
    code = _run_cli(["--store", store, "mount", name, mountpoint, "--background",
                     "-o", parsed.to_text(), "--fsname", name])
    if code == 0:
        _note_store(mountpoint, store)
    return code


def _note_store(mountpoint: str, store: str) -> None:
    try:
        os.makedirs(INDEX_DIR, mode=0o700, exist_ok=True)
        with open(_index_path(mountpoint), "w") as f:
            json.dump({"mountpoint": os.path.abspath(mountpoint),
                       "store": os.path.abspath(store)}, f)
    except OSError as e:  # umount still works; it only cannot wait for the worker
        click.echo(f"fusevol: cannot note the store of {mountpoint}: {e}", err=True)


def umount_main(argv: list[str] | None = None) -> int:
    os.environ["PATH"] = os.environ.get("PATH") or DEFAULT_PATH
    try:
        opts, args = getopt.gnu_getopt(sys.argv[1:] if argv is None else argv, "flnrvht:N:")
    except getopt.GetoptError as e:
        return _usage(f"{e}; usage: umount.fuse.fusevol MOUNTPOINT [-l]")
    flags = {flag for flag, _ in opts}
    if "-h" in flags or len(args) != 1:
        return _usage("usage: umount.fuse.fusevol MOUNTPOINT [-l] (umount(8) runs it)")
    mountpoint = os.path.abspath(args[0])
    index = _index_path(mountpoint)
    try:
        with open(index) as f:
            store = json.load(f)["store"]
    except (OSError, ValueError, KeyError):
        # Not mounted by mount.fuse.fusevol (a Docker volume, a view's bind mount):
        # unmount it as umount(8) would without this helper.
        os.execv(UMOUNT, ["umount", "-i", *(f for f, _ in opts if f in ("-l", "-f", "-n", "-v")),
                          mountpoint])
    code = _run_cli(["--store", store, "umount", mountpoint] + (["--lazy"] if "-l" in flags else []))
    if code == 0:
        try:
            os.unlink(index)
        except FileNotFoundError:
            pass
    return code


def mount_entry() -> None:
    sys.exit(mount_main())


def umount_entry() -> None:
    sys.exit(umount_main())
