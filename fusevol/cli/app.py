"""The root of the `fusevol` command line: global options and the command families.

Each family lives in its own module (volumes, mounting, docker, space,
snapshots, replication, remotes, upkeep, archives); group.py holds what they share.
A command's module is imported only when that command runs (or --help lists
them all): `fusevol volume ls` need not load tar, stream or FUSE code.
"""

import importlib

import click

from .entry import configure_logging
from .group import Group

# command name -> (module in this package, attribute)
COMMANDS = {
    "volume": ("volumes", "volume"),
    "mount": ("mounting", "mount"),
    "umount": ("mounting", "umount"),
    "serve": ("docker", "serve"),
    "df": ("space", "df"),
    "snapshot": ("snapshots", "snapshot"),
    "clone": ("snapshots", "clone"),
    "rollback": ("snapshots", "rollback"),
    "diff": ("snapshots", "diff"),
    "send": ("replication", "send"),
    "receive": ("replication", "receive"),
    "remote": ("remotes", "remote"),
    "push": ("remotes", "push"),
    "pull": ("remotes", "pull"),
    "gc": ("upkeep", "gc"),
    "verify": ("upkeep", "verify"),
    "export": ("archives", "export"),
    "import": ("archives", "import_"),
}


class LazyGroup(Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name]
        return getattr(importlib.import_module(f".{module}", __package__), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log what happens.")
def main(verbose):
    """fusevol: deduplicating FUSE volumes for Docker."""
    configure_logging(verbose)
