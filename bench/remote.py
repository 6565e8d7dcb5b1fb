"""Remotes: push and pull against an S3 server, beside a plain upload and
download of one big object with the same client library (boto3) in the same run.

    PYTHONPATH=. /opt/fusevol/bin/python bench/remote.py [--size 1G] [--json FILE]

By default it starts the tests' one-node Ceph cluster (tests/ceph_cluster.py);
`--endpoint URL` uses a server of your own (credentials from the AWS chain).
Steps: a volume of SIZE random bytes (one file, written through a mount);
the plain upload and download of a file of the same size (and the fsync of
the downloaded file, which a durable pull pays too); a full push; a full
pull into a second store (the second host); 1 MiB rewritten in the middle of
the file, a snapshot, and an incremental push and pull.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid

import boto3
import botocore.config

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
MiB = 1 << 20


def cli(store, *args, env=None):
    proc = subprocess.run([sys.executable, "-m", "fusevol", "--store", store, *args],
                          capture_output=True, env={**os.environ, **(env or {})})
    if proc.returncode:
        raise SystemExit(f"fusevol {' '.join(args)}: {proc.stderr.decode().strip()}")
    return proc.stdout


def timed(fn):
    t = time.monotonic()
    out = fn()
    return time.monotonic() - t, out


def write_random(path: str, size: int, offset: int = 0) -> None:
    with open(path, "r+b" if offset else "wb") as f:
        f.seek(offset)
        left = size
        while left:
            n = min(left, 8 * MiB)
            f.write(os.urandom(n))
            left -= n
        os.fsync(f.fileno())


def fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def with_mount(store: str, volume: str, base: str, fn) -> None:
    mnt = os.path.join(base, f"mnt-{uuid.uuid4().hex[:6]}")
    os.makedirs(mnt)
    cli(store, "mount", volume, mnt, "--background")
    try:
        fn(mnt)
    finally:
        cli(store, "umount", mnt)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1G", help="volume size (K, M, G suffix)")
    ap.add_argument("--endpoint", help="an S3 endpoint of your own (default: start Ceph)")
    ap.add_argument("--bucket", default=f"fv-bench-{uuid.uuid4().hex[:8]}")
    ap.add_argument("--base", default="/var/tmp", help="where stores and files go")
    ap.add_argument("--json", help="write the figures as JSON too")
    args = ap.parse_args()
    size = int(args.size[:-1]) << {"K": 10, "M": 20, "G": 30}[args.size[-1].upper()] \
        if args.size[-1].isalpha() else int(args.size)

    cluster = None
    env = {}
    if args.endpoint is None:
        from ceph_cluster import CephCluster

        cluster = CephCluster().start()
        endpoint = cluster.endpoint
        env = {"AWS_ACCESS_KEY_ID": cluster.access_key, "AWS_SECRET_ACCESS_KEY": cluster.secret_key,
               "AWS_EC2_METADATA_DISABLED": "true"}
        os.environ.update(env)
        print(f"ceph: started in {cluster.start_seconds:.1f} s", file=sys.stderr)
    else:
        endpoint = args.endpoint
    work = tempfile.mkdtemp(dir=args.base, prefix="fusevol-bench-remote-")
    a, b = os.path.join(work, "a"), os.path.join(work, "b")
    fig = {"size_bytes": size}
    try:
        s3 = boto3.client("s3", endpoint_url=endpoint, config=botocore.config.Config(
            s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
            response_checksum_validation="when_required"), region_name="us-east-1")
        cli(a, "remote", "add", "r", f"s3://{args.bucket}/fv", "--endpoint", endpoint,
            "--create-bucket")
        cli(b, "remote", "add", "r", f"s3://{args.bucket}/fv", "--endpoint", endpoint)

        cli(a, "volume", "create", "data")
        with_mount(a, "data", work, lambda m: write_random(os.path.join(m, "file"), size))
        cli(a, "snapshot", "create", "data@one")

        plain = os.path.join(work, "plain")
        write_random(plain, size)
        fig["plain_upload_s"], _ = timed(lambda: s3.upload_file(plain, args.bucket, "plain"))
        os.unlink(plain)
        subprocess.run(["sync"])
        fig["plain_download_s"], _ = timed(lambda: s3.download_file(args.bucket, "plain", plain))
        # download_file leaves the data in the page cache; a pull's commit is durable.
        fig["plain_fsync_s"], _ = timed(lambda: fsync_file(plain))
        os.unlink(plain)
        s3.delete_object(Bucket=args.bucket, Key="plain")

        t, out = timed(lambda: cli(a, "push", "data@one", "r", "--json"))
        fig["push_s"], fig["push_bytes"] = t, json.loads(out)["uploaded_bytes"]
        t, out = timed(lambda: cli(b, "pull", "r", "data@one", "--json"))
        fig["pull_s"], fig["pull_bytes"] = t, json.loads(out)["downloaded_bytes"]

        with_mount(a, "data", work, lambda m: write_random(os.path.join(m, "file"), MiB, size // 2))
        cli(a, "snapshot", "create", "data@two")
        t, out = timed(lambda: cli(a, "push", "data@two", "r", "--json"))
        fig["incremental_push_s"], fig["incremental_push_bytes"] = t, json.loads(out)["uploaded_bytes"]
        t, out = timed(lambda: cli(b, "pull", "r", "data@two", "--json"))
        fig["incremental_pull_s"], fig["incremental_pull_bytes"] = t, json.loads(out)["downloaded_bytes"]
        if cluster:
            fig["ceph_rss_bytes"] = cluster.memory_bytes()
    finally:
        subprocess.run(["rm", "-rf", work])
        if cluster:
            cluster.stop()

    mb = size / 1e6
    rows = [
        ("plain upload, one object (boto3 upload_file)", fig["plain_upload_s"], size),
        ("fusevol push, full", fig["push_s"], fig["push_bytes"]),
        ("plain download, one object (boto3 download_file)", fig["plain_download_s"], size),
        ("the same, then fsync of the file", fig["plain_download_s"] + fig["plain_fsync_s"], size),
        ("fusevol pull, full (into a second store)", fig["pull_s"], fig["pull_bytes"]),
        ("fusevol push after 1 MiB rewritten", fig["incremental_push_s"], fig["incremental_push_bytes"]),
        ("fusevol pull of that snapshot", fig["incremental_pull_s"], fig["incremental_pull_bytes"]),
    ]
    print(f"| {args.size} volume, one file of random bytes | seconds | bytes moved | MB/s of the volume |")
    print("|---|---:|---:|---:|")
    for name, s, n in rows:
        print(f"| {name} | {s:.2f} | {n / MiB:.1f} MiB | {mb / s:.0f} |")
    durable = fig["plain_download_s"] + fig["plain_fsync_s"]
    print(f"\npush / plain upload: {fig['plain_upload_s'] / fig['push_s']:.2f}x, "
          f"pull / plain download: {fig['plain_download_s'] / fig['pull_s']:.2f}x "
          f"(with its fsync: {durable / fig['pull_s']:.2f}x) (of the speed)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(fig, f, indent=2)


if __name__ == "__main__":
    main()
