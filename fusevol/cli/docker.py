"""`fusevol serve`: the Docker volume plugin."""

import click

from .group import command, store_path


@command()
@click.option("--socket", "socket_path", default="/run/docker/plugins/fusevol.sock", show_default=True,
              help="Plugin socket; dockerd names the driver after its basename.")
@click.pass_context
def serve(ctx, socket_path):
    """Serve the Docker volume plugin protocol until SIGTERM."""
    from ..plugin.daemon import serve as serve_plugin

    serve_plugin(store_path(ctx), socket_path)
