"""Modules a module names at its top but imports when one of its functions
first uses them.

The store's tree objects and block maps name the chunk and pack modules,
which bring typing and zstandard (with platform): a third of the start of
`fusevol snapshot create` of a volume unchanged since its last snapshot,
which stores no object and reads no chunk. Like fusevol/logs.py's loggers,
the stand-in is used once: its first attribute read imports the module and
puts it in the stand-in's place, so later reads cost what a plain import's
do. The import itself is a statement in the `load` function the caller
gives (the layering checks read it there).
"""


class OnFirstUse:
    """Stands for the module `load()` returns, named `name` in `namespace` (a
    module's globals), until an attribute of it is first read."""

    def __init__(self, namespace: dict, name: str, load):
        self._namespace = namespace
        self._name = name
        self._load = load

    def __getattr__(self, attr: str):
        module = self._load()  # (two threads at once: the import system runs it once)
        self._namespace[self._name] = module
        return getattr(module, attr)
