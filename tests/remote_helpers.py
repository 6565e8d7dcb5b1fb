"""What the remote tests share: AWS settings for the test cluster, volumes
made from tar archives (no FUSE needed), and a look into the bucket."""

import hashlib
import io
import json
import os
import tarfile
import uuid

import boto3
import botocore.config

from conftest import run_cli


def aws_env(cluster, **more) -> dict:
    """The credentials of the cluster's user and nothing else of the AWS chain
    (no config files; no instance metadata lookup, which would leave the host)."""
    return {"AWS_ACCESS_KEY_ID": cluster.access_key, "AWS_SECRET_ACCESS_KEY": cluster.secret_key,
            "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
            "AWS_EC2_METADATA_DISABLED": "true", **more}


def new_bucket() -> str:
    return f"fv-{uuid.uuid4().hex[:16]}"


def s3_client(cluster):
    return boto3.client("s3", endpoint_url=cluster.endpoint, aws_access_key_id=cluster.access_key,
                        aws_secret_access_key=cluster.secret_key, region_name="us-east-1",
                        config=botocore.config.Config(s3={"addressing_style": "path"},
                                                      request_checksum_calculation="when_required",
                                                      response_checksum_validation="when_required"))


def keys(cluster, bucket: str, prefix: str = "") -> dict[str, int]:
    out = {}
    for page in s3_client(cluster).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", ()):
            out[item["Key"]] = item["Size"]
    return out


def make_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def tar_digests(data: bytes) -> dict[str, str]:
    """sha256 of every regular file of a tar archive, by name."""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar:
            if member.isfile():
                out[member.name.lstrip("./")] = hashlib.sha256(tar.extractfile(member).read()).hexdigest()
    return out


def volume_digests(store: str, ref: str) -> dict[str, str]:
    return tar_digests(run_cli(store, "export", ref).stdout)


class Host:
    """One store standing for one host, with a remote `r` to the test bucket."""

    def __init__(self, cluster, store: str, env: dict | None = None):
        self.cluster, self.store = cluster, store
        self.env = env or aws_env(cluster)

    def add_remote(self, bucket: str, name: str = "r", create: bool = True) -> None:
        self.run("remote", "add", name, f"s3://{bucket}/fv", "--endpoint", self.cluster.endpoint,
                 *(["--create-bucket"] if create else []))

    def run(self, *args, check: bool = True, env: dict | None = None, timeout: float = 300):
        return run_cli(self.store, *args, check=check, env={**self.env, **(env or {})},
                       timeout=timeout)

    def json(self, *args, env: dict | None = None) -> dict:
        return json.loads(self.run(*args, "--json", env=env).stdout)

    def import_files(self, volume: str, files: dict[str, bytes]) -> None:
        run_cli(self.store, "import", volume, input=make_tar(files))


def two_hosts(cluster, base) -> tuple[Host, Host, str]:
    """Two stores standing for two hosts, each with remote `r` on one new bucket."""
    bucket = new_bucket()
    a, b = Host(cluster, str(base / "a")), Host(cluster, str(base / "b"))
    a.add_remote(bucket)
    b.add_remote(bucket, create=False)
    return a, b, bucket
