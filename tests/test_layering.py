"""The layers import only what is below them: the store knows nothing of FUSE,
the plugin or the CLI; the CLI loads the store, pyfuse3 and trio only when a
command runs; the outside view of workers (registry, forkserver's daemon
side) and the plugin's protocol module stay free of pyfuse3 and trio. Read
statically too (imports inside functions included): no layer names one above
it, and only the store names its schema (tables, key layouts)."""

import ast
import json
import pathlib
import pkgutil
import subprocess
import sys

import pytest

import fusevol
import fusevol.store
from fusevol.store.schema import TABLES

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


def test_the_volume_service_loads_what_starts_or_binds_workers_only_when_it_does():
    """`fusevol volume ls` and `snapshot create` open the service and the registry:
    they pay for no process-spawning, ctypes or worker start-up code."""
    assert _offending("fusevol.service", ("subprocess", "ctypes", "select", "fusevol.fs.bind",
                                          "fusevol.fs.startup")) == []


def test_the_plugin_loads_the_s3_client_only_when_a_remote_is_used():
    assert _offending("fusevol.plugin.daemon", ("fusevol.remote", "boto3", "botocore")) == []


@pytest.mark.parametrize("module", ["fusevol.fs.registry", "fusevol.fs.forkserver",
                                    "fusevol.fs.startup", "fusevol.service.mounts",
                                    "fusevol.service.keeper", "fusevol.plugin.protocol"])
def test_outside_views_of_workers_stay_free_of_fuse_and_trio(module):
    assert _offending(module, ("pyfuse3", "trio", "fusevol.fs.operations", "fusevol.fs.mount")) == []


# -- static checks: every import statement, those inside functions too ------------

PACKAGE = pathlib.Path(fusevol.__file__).parent
SCHEMA = "fusevol.store.schema"
# Modules outside the store that still name its key layout. Each is a place
# where a table's rows are read or written past the store's own functions;
# move the access into fusevol/store/ and drop the module from this list.
KNOWN_SCHEMA_USERS: dict[str, str] = {}
# Each layer and the layers it must not import (lazily or not).
ABOVE = {
    # the vocabulary every layer shares: it names nothing of the project
    "fusevol.errors": ("fusevol.",),
    "fusevol.records": ("fusevol.",),
    "fusevol.progress": ("fusevol.",),
    "fusevol.store": ("fusevol.fs", "fusevol.remote", "fusevol.service", "fusevol.plugin",
                      "fusevol.cli"),
    "fusevol.fs": ("fusevol.remote", "fusevol.service", "fusevol.plugin", "fusevol.cli"),
    # remotes sit on the store beside the FUSE side, below the plugin and the CLI
    "fusevol.remote": ("fusevol.fs", "fusevol.service", "fusevol.plugin", "fusevol.cli"),
    # the volume service: on the store and the workers, below the plugin and the CLI
    "fusevol.service": ("fusevol.remote", "fusevol.plugin", "fusevol.cli"),
    "fusevol.plugin": ("fusevol.cli",),
}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def _imports(module: str, path: pathlib.Path) -> set[str]:
    """Every module an import statement of the file names (with, for `from X
    import a`, X.a too: it may be a submodule)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def _under(name: str, package: str) -> bool:
    if package.endswith("."):  # anything in the package
        return name.startswith(package)
    return name == package or name.startswith(package + ".")


def test_the_resolver_sees_relative_and_lazy_imports(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("from ..store.schema import vkey\n"
                      "def f():\n    from ..store import schema\n    import fusevol.cli.app\n")
    found = _imports("fusevol.fs.sample", sample)
    assert {"fusevol.store.schema", "fusevol.store.schema.vkey", "fusevol.cli.app"} <= found


def test_only_the_store_imports_its_schema():
    users = {module for module, path in _modules()
             if not _under(module, "fusevol.store")
             and any(_under(name, SCHEMA) for name in _imports(module, path))}
    assert users - set(KNOWN_SCHEMA_USERS) == set(), "import from fusevol.store, not its schema"
    assert set(KNOWN_SCHEMA_USERS) - users == set(), \
        "no longer imports the schema: remove it from KNOWN_SCHEMA_USERS"


# How code names a table: the first argument of a transaction's row methods,
# a set of them, or a comparison with one.
ROW_METHODS = {"get", "put", "delete", "delete_prefix", "scan", "cursor", "peek", "committed"}


def _table_names(path: pathlib.Path, tables) -> list[tuple[int, str]]:
    """(line, table) of every place the file names one of `tables` as a table."""
    def is_table(node) -> bool:
        return isinstance(node, ast.Constant) and node.value in tables

    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in ROW_METHODS and node.args and is_table(node.args[0]):
            found.append((node.lineno, node.args[0].value))
        elif isinstance(node, (ast.Set, ast.Tuple, ast.List)) and node.elts \
                and all(is_table(e) for e in node.elts):
            found.extend((node.lineno, e.value) for e in node.elts)
        elif isinstance(node, ast.Compare):
            found.extend((node.lineno, n.value) for n in [node.left, *node.comparators]
                         if is_table(n))
    return found


def test_the_resolver_sees_tables_named_in_rows_sets_and_comparisons(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("T = frozenset({'inodes', 'dirents'})\n"
                      "def f(txn, table, key):\n"
                      "    if table != 'meta':\n        return txn.get('blocks', key)\n"
                      "    return {'chunks': 1}, ('volumes', 'volume'), txn.get('x', key)\n")
    assert sorted(t for _, t in _table_names(sample, TABLES)) == \
        ["blocks", "dirents", "inodes", "meta"]


def test_no_module_outside_the_store_names_a_table():
    """The worker's copy of its rows (fs/cache.py, fs/speculate.py) and every
    other layer go through the store's interface (store/workerrows.py): the
    store alone knows which table holds what."""
    wrong = sorted(f"{module}:{line} names the table {table!r}" for module, path in _modules()
                   if not _under(module, "fusevol.store")
                   for line, table in _table_names(path, TABLES))
    assert wrong == []


# The worker serves the MountSpec it is handed; it resolves nothing by name.
WORKER_MODULES = ("fusevol.fs.worker", "fusevol.fs.mount", "fusevol.fs.forkserver",
                  "fusevol.fs.startup")


def test_the_worker_never_looks_a_volume_up():
    wrong = sorted(f"{module} imports {name}" for module, path in _modules()
                   if module in WORKER_MODULES
                   for name in _imports(module, path)
                   if _under(name, "fusevol.store.volumes") or _under(name, "fusevol.service")
                   or name == "fusevol.store.volumes")
    assert wrong == []
    assert not any(_under(m, "fusevol.cli") for m in _imported_by("fusevol.fs.worker"))


def test_no_layer_imports_a_layer_above_it():
    wrong = sorted(f"{module} imports {name}"
                   for module, path in _modules()
                   for layer, above in ABOVE.items() if _under(module, layer)
                   for name in _imports(module, path)
                   if any(_under(name, a) for a in above))
    assert wrong == []


# -- the sealed store: each table written by one module ---------------------------

STORE_DIR = PACKAGE / "store"
WRITES = ("put", "delete", "delete_prefix")
# Tables written by more than one module, and why. `meta` holds store-wide
# settings and counters, one key family per owner (see META_KEYS).
SHARED_TABLES = {
    "meta": "one key family per owner (META_KEYS)",
    # A snapshot's walk stores the object an inode row was written as in that row.
    "inodes": "treewriter.py sets tree_id, the snapshot's bookkeeping",
}
META_KEYS = {b"format": "env", b"block_size": "env", b"chunk_totals": "env",
             b"next_ino": "inoderows", b"next_pack": "packs", b"next_vid": "volumes",
             b"store_id": "remotes", b"recompressed_to": "recompress", b"dense_to": "densify",
             b"next_datafile": "datafiles"}


def _is_txn(node) -> bool:
    """Whether a call's receiver is a transaction: `txn`, `child`, or `X.txn`."""
    return isinstance(node, ast.Name) and node.id in ("txn", "child") or \
        isinstance(node, ast.Attribute) and node.attr == "txn"


def _table_writes(path: pathlib.Path, unnamed: list | None = None):
    """(table, first key part if a literal, line) of every txn.put/delete/delete_prefix
    whose table is named by a literal or a module constant; a transaction's
    write whose table is neither (a loop over tables) goes to `unnamed`."""
    tree = ast.parse(path.read_text())
    consts = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign)
              and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
              for t in n.targets if isinstance(t, ast.Name)}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in WRITES and len(node.args) >= 2):
            continue
        first = node.args[0]
        table = first.value if isinstance(first, ast.Constant) else \
            consts.get(first.id) if isinstance(first, ast.Name) else None
        if not isinstance(table, str):
            if unnamed is not None and _is_txn(node.func.value):
                unnamed.append(f"{path.stem}:{node.lineno}")
            continue
        key = node.args[1]
        while isinstance(key, ast.BinOp):
            key = key.left
        yield table, key.value if isinstance(key, ast.Constant) else None, node.lineno


def test_each_table_is_written_by_one_module():
    writers: dict[str, set[str]] = {}
    meta = []
    unnamed: list[str] = []
    for path in sorted(STORE_DIR.glob("*.py")):
        for table, key, line in _table_writes(path, unnamed if path.stem != "env" else None):
            writers.setdefault(table, set()).add(path.stem)
            if table == "meta" and isinstance(key, bytes):
                owner = next((o for k, o in META_KEYS.items() if key.startswith(k)), None)
                if owner != path.stem:
                    meta.append(f"{path.stem}:{line} writes meta key {key!r}")
    shared = {t: sorted(w) for t, w in writers.items() if len(w) > 1 and t not in SHARED_TABLES}
    assert shared == {}, "a table written from several modules"
    assert sorted(writers["inodes"]) == ["inoderows", "treewriter"]
    assert meta == []
    assert unnamed == [], "name the table each write goes to, so that its writer is known"
    outside = sorted(f"{module}:{line} writes {table}" for module, path in _modules()
                     if not _under(module, "fusevol.store")
                     for table, _, line in _table_writes(path) if table in writers)
    assert outside == [], "only the store writes its tables"


# The store's core (rows and objects) stands apart from the operations over it.
STORE_CORE = ("env", "schema", "chunks", "countrows", "restforms", "packs", "trees", "pieces", "folders", "dirchanges",
              "inodes", "inoderows", "namespace", "blockmap", "xattrs", "treerows", "volumes",
              "remotes", "blobs", "intentlog", "workerrows", "names", "datafiles")
STORE_OPERATIONS = ("snapshots", "treewriter", "treepairs", "diff", "stream", "tar_export",
                    "tar_import", "check", "recompress", "densify", "compaction", "resttree", "freepages", "repack")


def test_the_writers_check_sees_a_write_to_a_table_it_cannot_name(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("TABLE = 'blocks'\n"
                      "def drop(txn, prefix):\n    txn.delete_prefix(TABLE, prefix)\n"
                      "    for table in ('dirents', 'parents'):\n"
                      "        txn.delete_prefix(table, prefix)\n")
    unnamed: list[str] = []
    assert [t for t, _, _ in _table_writes(sample, unnamed)] == ["blocks"]
    assert unnamed == ["sample:5"]


def test_the_store_core_imports_none_of_its_operations():
    wrong = sorted(f"{module} imports {name}" for module, path in _modules()
                   if module.rpartition(".")[2] in STORE_CORE and _under(module, "fusevol.store")
                   for name in _imports(module, path)
                   if any(_under(name, f"fusevol.store.{op}") for op in STORE_OPERATIONS))
    assert wrong == []
    every = {p.stem for p in STORE_DIR.glob("*.py")} - {"__init__"}
    assert every == set(STORE_CORE) | set(STORE_OPERATIONS), "place a new store module"
