"""A volume's lease on a remote, against a real server's conditional PUTs:
one holder at a time, taken over only when released or lapsed."""

import time

import pytest

from fusevol.errors import Busy
from fusevol.remote.lease import Lease, Lost
from fusevol.remote.s3 import Bucket
from remote_helpers import aws_env, new_bucket


@pytest.fixture
def bucket(ceph, monkeypatch):
    for k, v in aws_env(ceph).items():
        monkeypatch.setenv(k, v)
    b = Bucket({"name": "r", "bucket": new_bucket(), "prefix": "fv", "endpoint": ceph.endpoint,
                "region": None})
    b.create_bucket()
    return b


def test_one_holder_at_a_time(bucket):
    one, two = Lease(bucket, "data", "host-1"), Lease(bucket, "data", "host-2")
    one.take()
    with pytest.raises(Busy, match="volume data is in use on .* since"):
        two.take()
    one.renew()
    one.take()  # its own lease: taken again (a restarted daemon)
    one.release()
    two.take()
    with pytest.raises(Busy):
        one.take()
    Lease(bucket, "other", "host-1").take()  # another volume, another lease


def test_a_lapsed_lease_is_taken_over_and_its_old_holder_told(bucket):
    one, two = Lease(bucket, "data", "host-1", ttl=2), Lease(bucket, "data", "host-2", ttl=2)
    one.take()
    with pytest.raises(Busy):
        two.take()
    time.sleep(3.5)  # host-1 stopped renewing
    two.take()
    with pytest.raises(Lost):
        one.renew()
    one.release()  # changes nothing: not its lease any more
    with pytest.raises(Busy):
        Lease(bucket, "data", "host-3", ttl=2).take()
