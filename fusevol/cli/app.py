"""The root of the `fusevol` command line: global options and the command families.

Each family lives in its own module (volumes, mounting, docker, space,
snapshots, replication, remotes, upkeep, archives); group.py holds what they share.
"""

import logging

import click

from . import archives, docker, mounting, remotes, replication, snapshots, space, upkeep, volumes
from .group import group


@group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log what happens.")
def main(verbose):
    """fusevol: deduplicating FUSE volumes for Docker."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


for _command in (
    volumes.volume,
    mounting.mount, mounting.umount,
    docker.serve,
    space.df,
    snapshots.snapshot, snapshots.clone, snapshots.rollback, snapshots.diff,
    replication.send, replication.receive,
    remotes.remote, remotes.push, remotes.pull,
    upkeep.gc, upkeep.verify,
    archives.export, archives.import_,
):
    main.add_command(_command)
