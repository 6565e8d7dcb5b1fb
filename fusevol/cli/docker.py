"""`fusevol serve`: the Docker volume plugin."""

import os

import click

from .group import command, store_path


@command()
@click.option("--socket", "socket_path", default="/run/docker/plugins/fusevol.sock", show_default=True,
              help="Plugin socket; dockerd names the driver after its basename.")
@click.option("--worker-start-timeout", type=click.FloatRange(min=0.1), default=60.0,
              show_default=True, metavar="SECONDS",
              help="A Mount fails if the volume's worker does not serve within this time.")
@click.option("--idle-worker-time", type=click.FloatRange(min=0), default=3.0, show_default=True,
              metavar="SECONDS",
              help="Keep a volume's worker this long after the last container using it "
                   "stopped, so that the next one starts at once (0: stop it then).")
@click.option("--metrics", "metrics_address", default=None, metavar="ADDR",
              help="Serve Prometheus metrics at http://ADDR/metrics: HOST:PORT, :PORT or "
                   "unix:PATH (off unless given).")
@click.option("--mount-dir", default=None, metavar="DIR",
              help="Mount volumes in DIR instead of STORE/mnt (a managed plugin's "
                   "propagated mount).")
@click.pass_context
def serve(ctx, socket_path, worker_start_timeout, idle_worker_time, metrics_address, mount_dir):
    """Serve the Docker volume plugin protocol until SIGTERM."""
    from ..plugin.daemon import serve as serve_plugin

    if mount_dir:
        os.makedirs(mount_dir, mode=0o755, exist_ok=True)
        os.environ["FUSEVOL_MOUNT_DIR"] = os.path.abspath(mount_dir)  # the workers' too

    serve_plugin(store_path(ctx), socket_path, worker_start_timeout, metrics_address,
                 idle_worker_time)
