"""The Docker volume plugin.

Layering: protocol (VolumeDriver requests as dicts, no networking) over
supervisor (FUSE workers and mount counts); http (HTTP/1.1 on trio with h11,
knowing nothing of Docker); daemon wires them to the plugin socket.
"""
