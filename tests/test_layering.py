"""The layers import only what is below them: the store knows nothing of FUSE,
the plugin or the CLI; the CLI loads the store, pyfuse3 and trio only when a
command runs; the outside view of workers (registry, forkserver's daemon
side) and the plugin's protocol module stay free of pyfuse3 and trio."""

import json
import pkgutil
import subprocess
import sys

import pytest

import fusevol.store

STORE_MODULES = sorted(f"fusevol.store.{m.name}" for m in pkgutil.iter_modules(fusevol.store.__path__))
ABOVE_THE_STORE = ("fusevol.fs", "fusevol.plugin", "fusevol.cli", "fusevol.remote", "pyfuse3",
                   "trio", "boto3", "botocore")


def _imported_by(module: str) -> set[str]:
    """Every module a fresh interpreter holds after importing `module`."""
    code = f"import importlib, json, sys; importlib.import_module({module!r}); print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


def _offending(module: str, forbidden) -> list[str]:
    return sorted(m for m in _imported_by(module)
                  if any(m == f or m.startswith(f + ".") for f in forbidden))


@pytest.mark.parametrize("module", STORE_MODULES)
def test_the_store_imports_nothing_above_it(module):
    assert _offending(module, ABOVE_THE_STORE) == []


def test_the_cli_loads_the_store_and_fuse_only_when_a_command_runs():
    assert _offending("fusevol.cli.app", ("lmdb", "pyfuse3", "trio", "blake3", "zstandard",
                                          "fusevol.store.env", "fusevol.fs.operations",
                                          "fusevol.remote", "boto3", "botocore")) == []


def test_the_plugin_loads_the_s3_client_only_when_a_remote_is_used():
    assert _offending("fusevol.plugin.daemon", ("fusevol.remote", "boto3", "botocore")) == []


@pytest.mark.parametrize("module", ["fusevol.fs.registry", "fusevol.fs.forkserver",
                                    "fusevol.plugin.protocol"])
def test_outside_views_of_workers_stay_free_of_fuse_and_trio(module):
    assert _offending(module, ("pyfuse3", "trio", "fusevol.fs.operations", "fusevol.fs.mount")) == []
