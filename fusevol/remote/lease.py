"""A volume's lease on a remote: which host may write the volume now.

`leases/VOLUME` holds {"holder", "host", "since", "state"}. A host takes it
with a conditional PUT: `If-None-Match: *` when there is none, `If-Match:
ETAG` over a lease that was released, is its own, or was not renewed for
TTL seconds (its holder died); a PUT that loses the race answers 412 and the
other holder is named. The holder renews it (If-Match its last ETag) every
TTL/3 seconds and releases it (If-Match, state "released") when done: radosgw
16 ignores If-Match on DELETE, so a lease is never deleted. Ages are the
server's: LastModified against the Date of the same answer.
"""

import datetime
import json
import socket

from ..errors import Busy, RemoteError
from .s3 import Bucket

TTL = 90.0


class Lost(Busy):
    """The lease was taken by another host while we held it."""


def _name(volume: str) -> str:
    return f"leases/{volume}"


def _body(holder: str, state: str) -> bytes:
    return json.dumps({"holder": holder, "host": socket.gethostname(), "state": state,
                       "since": datetime.datetime.now(datetime.timezone.utc)
                       .strftime("%Y-%m-%dT%H:%M:%SZ")}).encode()


class Lease:
    def __init__(self, bucket: Bucket, volume: str, holder: str, ttl: float = TTL):
        self.bucket = bucket
        self.volume = volume
        self.holder = holder  # who we are: a host's store id
        self.ttl = ttl
        self.etag: str | None = None

    def _read(self) -> tuple[dict, str, float] | None:
        """(lease, ETag, age in seconds on the server's clock), or None."""
        got = self.bucket.get_with_meta(_name(self.volume))
        if got is None:
            return None
        data, etag, modified, server_now = got
        try:
            lease = json.loads(data)
        except ValueError:
            lease = {}
        return lease, etag, (server_now - modified).total_seconds()

    def take(self) -> None:
        """Hold the lease, or raise Busy naming the host that holds it."""
        name = _name(self.volume)
        if self.bucket.put_new(name, _body(self.holder, "held")):
            self.etag = self.bucket.etag_of(name)
            return
        current = self._read()
        if current is not None:
            lease, etag, age = current
            free = (lease.get("state") == "released" or lease.get("holder") == self.holder
                    or age > self.ttl)
            if free:
                new_etag = self.bucket.put_if_match(name, _body(self.holder, "held"), etag)
                if new_etag is not None:
                    self.etag = new_etag
                    return
                current = self._read() or current
            lease = current[0]
        else:  # released and gone between the two requests: try once more
            if self.bucket.put_new(name, _body(self.holder, "held")):
                self.etag = self.bucket.etag_of(name)
                return
            lease = (self._read() or ({}, "", 0.0))[0]
        raise Busy(f"volume {self.volume} is in use on {lease.get('host', 'another host')} "
                   f"since {lease.get('since', '?')} (its lease on remote {self.bucket.name} is "
                   f"held; it lapses {self.ttl:.0f} s after that host stops renewing it)")

    def renew(self) -> None:
        """Keep holding it; Lost if another host took it meanwhile."""
        new_etag = self.bucket.put_if_match(_name(self.volume), _body(self.holder, "held"), self.etag)
        if new_etag is None:
            raise Lost(f"volume {self.volume}: its lease on remote {self.bucket.name} was taken "
                       "by another host")
        self.etag = new_etag

    def release(self) -> None:
        if self.etag is None:
            return
        try:
            self.bucket.put_if_match(_name(self.volume), _body(self.holder, "released"), self.etag)
        except RemoteError:
            pass  # unreleased, it lapses after TTL
        self.etag = None
