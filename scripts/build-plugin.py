"""Build fusevol as a Docker managed plugin, offline: a rootfs assembled from this
machine's Python, the packages fusevol needs, the shared libraries they link and the
two tools it runs (fusermount3, umount), plus the plugin's config.json.

    /opt/fusevol/bin/python scripts/build-plugin.py DIR [--create NAME]

DIR gets config.json and rootfs/ (what `docker plugin create NAME DIR` takes);
--create runs that too (DOCKER_HOST and the like are honoured). Then:

    docker plugin set NAME store.source=/var/lib/fusevol   # the store, on the host
    docker plugin enable NAME

Run it with the interpreter of the venv fusevol is installed in (scripts/setup.sh):
the packages are taken from that venv, fusevol itself from this checkout.
"""

import argparse
import compileall
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = "/usr/local"          # where Python lives in the rootfs
STORE = "/var/lib/fusevol"     # the store inside the plugin: a bind mount of the host's
MOUNT_DIR = "/mnt/volumes"     # the propagated mount: volumes mounted here reach the host
TOOLS = ("fusermount3", "umount")
# Parts of the standard library a daemon never imports.
STDLIB_SKIP = {"site-packages", "test", "idlelib", "tkinter", "turtledemo", "ensurepip",
               "lib2to3", "pydoc_data", "unittest/test", "distutils/tests"}
STDLIB_SKIP_PREFIXES = ("config-", "lib-dynload/_tkinter", "lib-dynload/_test", "lib-dynload/xx")


def config() -> dict:
    return {
        "description": "fusevol: deduplicated, compressed FUSE volumes in one store per host",
        "documentation": "README.md of fusevol, section Docker managed plugin",
        "entrypoint": [f"{PREFIX}/bin/python3", "-m", "fusevol", "serve", "--store", STORE,
                       "--mount-dir", MOUNT_DIR],
        "args": {"name": "args", "description": "more options for fusevol serve",
                 "settable": ["value"], "value": []},
        "env": [
            {"name": "PATH", "value": f"{PREFIX}/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
            {"name": "FUSEVOL_FORKSERVER", "value": "1", "settable": ["value"]},
        ],
        "interface": {"socket": "fusevol.sock", "types": ["docker.volumedriver/1.0"]},
        "linux": {"capabilities": ["CAP_SYS_ADMIN"], "devices": [{"path": "/dev/fuse"}]},
        "mounts": [{"name": "store", "description": "the store on the host",
                    "source": STORE, "destination": STORE, "type": "bind",
                    "options": ["rbind", "rw"], "settable": ["source"]}],
        "network": {"type": "none"},
        "propagatedMount": MOUNT_DIR,
    }


def _copy(src: str, dst: str) -> None:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if os.path.islink(src) and not os.path.exists(dst):
        target = os.readlink(src)
        os.symlink(target, dst)
        if not os.path.isabs(target):  # the file it names comes along
            _copy(os.path.join(os.path.dirname(src), target),
                  os.path.join(os.path.dirname(dst), target))
    elif not os.path.lexists(dst):
        shutil.copy2(src, dst)


def _skip_stdlib(rel: str) -> bool:
    return any(rel == s or rel.startswith(s + "/") for s in STDLIB_SKIP) \
        or rel.startswith(STDLIB_SKIP_PREFIXES)


def copy_python(rootfs: str) -> str:
    """The interpreter and its standard library under PREFIX; returns site-packages."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    stdlib = sysconfig.get_paths()["stdlib"]
    dst_lib = os.path.join(rootfs, PREFIX.lstrip("/"), "lib", version)
    for folder, dirs, files in os.walk(stdlib):
        rel = os.path.relpath(folder, stdlib)
        dirs[:] = [d for d in dirs if not _skip_stdlib(os.path.normpath(os.path.join(rel, d)))]
        for name in files:
            if not _skip_stdlib(os.path.normpath(os.path.join(rel, name))):
                _copy(os.path.join(folder, name), os.path.join(dst_lib, rel, name))
    executable = os.path.realpath(sys._base_executable if hasattr(sys, "_base_executable")
                                  else sys.executable)
    _copy(executable, os.path.join(rootfs, PREFIX.lstrip("/"), "bin", version))
    os.symlink(version, os.path.join(rootfs, PREFIX.lstrip("/"), "bin", "python3"))
    return os.path.join(dst_lib, "site-packages")


def _requirement_names(dist) -> list[str]:
    """The distributions `dist` needs on this platform, extras left out."""
    try:
        from packaging.requirements import Requirement
    except ImportError:
        from pip._vendor.packaging.requirements import Requirement
    names = []
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            names.append(req.name)
    return names


def copy_packages(site_packages: str) -> list[str]:
    """fusevol's dependencies (and theirs) from this venv, fusevol from this checkout."""
    with open(os.path.join(ROOT_DIR, "pyproject.toml")) as f:
        block = f.read().split("dependencies = [", 1)[1].split("]", 1)[0]
    wanted = re.findall(r'"([A-Za-z0-9_.-]+)', block)
    done: set[str] = set()
    while wanted:
        name = wanted.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in done:
            continue
        done.add(key)
        dist = importlib.metadata.distribution(name)
        for file in dist.files or []:
            src = dist.locate_file(file)
            if "__pycache__" not in file.parts and os.path.isfile(src) \
                    and not str(file).startswith(".."):
                _copy(str(src), os.path.join(site_packages, str(file)))
        wanted += _requirement_names(dist)
    for folder, dirs, files in os.walk(os.path.join(ROOT_DIR, "fusevol")):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith((".py", ".so")):
                src = os.path.join(folder, name)
                _copy(src, os.path.join(site_packages, os.path.relpath(src, ROOT_DIR)))
    return sorted(done)


def copy_tools(rootfs: str) -> None:
    for tool in TOOLS:
        path = shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin")
        if path is None:
            sys.exit(f"build-plugin: {tool} is not installed (scripts/setup.sh installs it)")
        _copy(os.path.realpath(path), os.path.join(rootfs, "usr/bin", tool))


def copy_libraries(rootfs: str) -> int:
    """Every shared library an executable or extension in the rootfs links, where the
    loader finds it."""
    objects = []
    for folder, _, files in os.walk(rootfs):
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path) and (".so" in name or os.access(path, os.X_OK)):
                objects.append(path)
    libraries = set()
    for path in objects:
        out = subprocess.run(["ldd", path], capture_output=True, text=True).stdout
        for line in out.splitlines():
            match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
            if match:
                libraries.add(match.group(1))
    system_dir = os.path.dirname(os.path.realpath(next(l for l in libraries if "/libc.so" in l)))
    for lib in sorted(libraries):
        real = os.path.realpath(lib)
        if lib.startswith(sys.base_prefix):
            # libpython, found by its build's rpath here: where the loader looks by itself.
            _copy(real, os.path.join(rootfs, system_dir.lstrip("/"), os.path.basename(lib)))
            continue
        # The file where it really is, and the name it is linked by (which may
        # be a symlink, absolute or relative, to it).
        _copy(real, os.path.join(rootfs, real.lstrip("/")))
        _copy(lib, os.path.join(rootfs, lib.lstrip("/")))
    return len(libraries)


def build(out: str) -> None:
    rootfs = os.path.join(out, "rootfs")
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(os.path.join(rootfs, "usr"))
    for top in ("bin", "sbin", "lib", "lib64"):  # merged /usr as on this host
        if os.path.islink(f"/{top}"):
            target = os.readlink(f"/{top}")
            os.makedirs(os.path.join(rootfs, target.lstrip("/")), exist_ok=True)
            os.symlink(target, os.path.join(rootfs, top))
    for folder in ("dev", "proc", "sys", "tmp", "run/docker/plugins", STORE.lstrip("/"),
                   MOUNT_DIR.lstrip("/"), "etc"):
        os.makedirs(os.path.join(rootfs, folder), exist_ok=True)
    os.chmod(os.path.join(rootfs, "tmp"), 0o1777)
    with open(os.path.join(rootfs, "etc/passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/nonexistent\n")
    site_packages = copy_python(rootfs)
    packages = copy_packages(site_packages)
    copy_tools(rootfs)
    libraries = copy_libraries(rootfs)
    # Compiled once here, so each start of the plugin does not compile them again.
    compileall.compile_dir(site_packages, quiet=1, workers=1)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config(), f, indent=2)
    size = sum(os.lstat(os.path.join(d, n)).st_size for d, _, fs in os.walk(rootfs) for n in fs)
    print(f"{out}: rootfs of {size / 2**20:.0f} MiB, {len(packages)} packages "
          f"({', '.join(packages)}), {libraries} libraries")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="folder to build the plugin in (replaced)")
    parser.add_argument("--create", metavar="NAME", help="then run docker plugin create NAME")
    args = parser.parse_args()
    build(args.out)
    if args.create:
        proc = subprocess.run(["docker", "plugin", "create", args.create, args.out])
        sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
