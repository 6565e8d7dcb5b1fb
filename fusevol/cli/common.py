"""Small helpers the command modules share: the store, options, output."""

import json

import click

from .. import errors
from .answers import human  # noqa: F401 (the commands' modules take it from here)
from .group import store_path

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
quiet_option = click.option("-q", "--quiet", is_flag=True, help="No progress bar.")


def open_store(ctx: click.Context):
    from ..store import Store

    return Store.open(store_path(ctx))


def open_service(ctx: click.Context):
    """The volume service (fusevol/service/) on the command's store."""
    from ..service import VolumeService

    return VolumeService(open_store(ctx))


def emit(data, as_json: bool, text: str) -> None:
    click.echo(json.dumps(data, indent=2) if as_json else text)


def parse_opts(pairs) -> dict:
    opts = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise errors.InvalidArgument(f"option {pair!r} is not KEY=VALUE")
        opts[key] = value
    return opts
