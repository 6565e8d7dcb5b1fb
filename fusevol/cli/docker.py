"""`fusevol serve`: the Docker volume plugin."""

import click

from .group import command, store_path


@command()
@click.option("--socket", "socket_path", default="/run/docker/plugins/fusevol.sock", show_default=True,
              help="Plugin socket; dockerd names the driver after its basename.")
@click.option("--worker-start-timeout", type=click.FloatRange(min=0.1), default=60.0,
              show_default=True, metavar="SECONDS",
              help="A Mount fails if the volume's worker does not serve within this time.")
@click.option("--metrics", "metrics_address", default=None, metavar="ADDR",
              help="Serve Prometheus metrics at http://ADDR/metrics: HOST:PORT, :PORT or "
                   "unix:PATH (off unless given).")
@click.pass_context
def serve(ctx, socket_path, worker_start_timeout, metrics_address):
    """Serve the Docker volume plugin protocol until SIGTERM."""
    from ..plugin.daemon import serve as serve_plugin

    serve_plugin(store_path(ctx), socket_path, worker_start_timeout, metrics_address)
