"""Remotes: push and pull against an S3 server, beside a plain upload and
download of one big object with the same client library (boto3) in the same run.

    PYTHONPATH=. /opt/fusevol/bin/python bench/remote.py [--size 1G] [--rounds 3] [--json FILE]

By default it starts the tests' one-node Ceph cluster (tests/ceph_cluster.py);
`--endpoint URL` uses a server of your own (credentials from the AWS chain).
A volume of SIZE random bytes (one file, written through a mount) is made
once; then each round times a full push (to a fresh prefix) beside a plain
upload, and a full pull (into a fresh store: the second host) beside a plain
download, the order alternating from round to round; the table gives the
median of the rounds and every round's ratio. Last, 1 MiB is rewritten in the
middle of the file, snapshotted, and pushed and pulled incrementally.

The baseline is what a user would run instead: a command that starts Python,
imports boto3 and calls upload_file / download_file (multipart, 10 threads)
on one object of the volume's size, the upload with UNSIGNED-PAYLOAD as
fusevol sends (the same upload with a SHA-256 of the body, boto3's default
over http, is shown too), and for the download fsyncs the file
before it exits, since a pull returns only once its data is durable. It is
timed as a command, like `fusevol pull`, so both pay an interpreter's start.
The same download timed inside one process, without the fsync, is shown too.
"""

import argparse
import json
import os
import resource
import statistics
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


# The baseline as a command of its own (see the docstring): argv is
# endpoint, bucket, key, file, "up" or "down".
_PLAIN = """
import os, sys, boto3, botocore.config
endpoint, bucket, key, path, way = sys.argv[1:]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", config=botocore.config.Config(
    s3={"addressing_style": "path", "payload_signing_enabled": way != "up-signed"},
    request_checksum_calculation="when_required", response_checksum_validation="when_required"))
if way.startswith("up"):
    s3.upload_file(path, bucket, key)
else:
    s3.download_file(bucket, key, path)
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
"""


def empty_bucket(endpoint: str, bucket: str) -> None:
    s3 = boto3.resource("s3", endpoint_url=endpoint, region_name="us-east-1",
                        config=botocore.config.Config(s3={"addressing_style": "path"}))
    try:
        s3.Bucket(bucket).objects.all().delete()
        s3.Bucket(bucket).delete()
    except Exception as e:  # the figures matter more than the cleanup
        print(f"could not empty bucket {bucket}: {e}", file=sys.stderr)


def child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def command(argv: list[str]) -> tuple[float, float, bytes]:
    """(seconds, CPU seconds of the command, its stdout)."""
    cpu, t = child_cpu(), time.monotonic()
    proc = subprocess.run(argv, capture_output=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(argv[:4])}: {proc.stderr.decode().strip()}")
    return time.monotonic() - t, child_cpu() - cpu, proc.stdout


def plain(endpoint: str, bucket: str, key: str, path: str, way: str) -> tuple[float, float]:
    seconds, cpu, _ = command([sys.executable, "-c", _PLAIN, endpoint, bucket, key, path, way])
    return seconds, cpu


def fusevol(store: str, *args: str) -> tuple[float, float, dict]:
    seconds, cpu, out = command([sys.executable, "-m", "fusevol", "--store", store, *args, "--json"])
    return seconds, cpu, json.loads(out)


def one_round(i: int, fig: dict, s3, endpoint: str, bucket: str, work: str, a: str) -> None:
    """Push to a fresh prefix and pull into a fresh store, each beside its plain
    transfer; which goes first alternates with the round."""
    remote, b = f"r{i}", os.path.join(work, f"b{i}")
    cli(a, "remote", "add", remote, f"s3://{bucket}/fv{i}", "--endpoint", endpoint)
    cli(b, "remote", "add", remote, f"s3://{bucket}/fv{i}", "--endpoint", endpoint)
    path = os.path.join(work, "plain")
    row = {}

    def push():
        row["push_s"], row["push_cpu_s"], out = fusevol(a, "push", "data@one", remote)
        row["push_bytes"] = out["uploaded_bytes"]

    def upload():
        write_random(path, fig["size_bytes"])
        row["plain_upload_s"], row["plain_upload_cpu_s"] = plain(endpoint, bucket, "plain", path, "up")
        # boto3's default over http: a SHA-256 of every part for the signature
        # (fusevol sends UNSIGNED-PAYLOAD, as boto3 does over https).
        row["plain_upload_signed_s"], _ = plain(endpoint, bucket, "plain", path, "up-signed")
        os.unlink(path)

    def pull():
        row["pull_s"], row["pull_cpu_s"], out = fusevol(b, "pull", remote, "data@one")
        row["pull_bytes"] = out["downloaded_bytes"]

    def download():
        row["plain_download_s"], row["plain_download_cpu_s"] = plain(endpoint, bucket, "plain",
                                                                     path, "down")
        os.unlink(path)
        # The same in this process, without the fsync (what earlier runs compared with).
        row["plain_download_inproc_s"], _ = timed(lambda: s3.download_file(bucket, "plain", path))
        os.unlink(path)

    steps = [(upload, push), (download, pull)] if i % 2 == 0 else [(push, upload), (pull, download)]
    for first, second in steps:
        subprocess.run(["sync"])
        first()
        subprocess.run(["sync"])
        second()
    s3.delete_object(Bucket=bucket, Key="plain")
    subprocess.run(["rm", "-rf", b])
    row["push_ratio"] = row["plain_upload_s"] / row["push_s"]
    row["pull_ratio"] = row["plain_download_s"] / row["pull_s"]
    row["pull_ratio_inproc"] = row["plain_download_inproc_s"] / row["pull_s"]
    print(f"round {i + 1}: push {row['push_s']:.2f} s / upload {row['plain_upload_s']:.2f} s "
          f"({row['push_ratio']:.2f}x), pull {row['pull_s']:.2f} s / download "
          f"{row['plain_download_s']:.2f} s ({row['pull_ratio']:.2f}x)", file=sys.stderr)
    fig["rounds"].append(row)


def parse_size(text: str) -> int:
    """Bytes of "1G", "64M", "512K" or a plain number."""
    return int(text[:-1]) << {"K": 10, "M": 20, "G": 30}[text[-1].upper()] \
        if text[-1].isalpha() else int(text)


def server(endpoint: str | None):
    """(the Ceph cluster started here or None, the S3 endpoint): the one given,
    or a one-node cluster's, whose credentials go to the environment."""
    if endpoint is not None:
        return None, endpoint
    from ceph_cluster import CephCluster

    cluster = CephCluster().start()
    os.environ.update({"AWS_ACCESS_KEY_ID": cluster.access_key,
                       "AWS_SECRET_ACCESS_KEY": cluster.secret_key,
                       "AWS_EC2_METADATA_DISABLED": "true"})
    print(f"ceph: started in {cluster.start_seconds:.1f} s", file=sys.stderr)
    return cluster, cluster.endpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1G", help="volume size (K, M, G suffix)")
    ap.add_argument("--rounds", type=int, default=3, help="alternated rounds of full push and pull")
    ap.add_argument("--endpoint", help="an S3 endpoint of your own (default: start Ceph)")
    ap.add_argument("--bucket", default=f"fv-bench-{uuid.uuid4().hex[:8]}")
    ap.add_argument("--base", default="/var/tmp", help="where stores and files go")
    ap.add_argument("--json", help="write the figures as JSON too")
    args = ap.parse_args()
    size = parse_size(args.size)
    cluster, endpoint = server(args.endpoint)
    work = tempfile.mkdtemp(dir=args.base, prefix="fusevol-bench-remote-")
    a = os.path.join(work, "a")
    fig = {"size_bytes": size, "rounds": []}
    try:
        s3 = boto3.client("s3", endpoint_url=endpoint, config=botocore.config.Config(
            s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
            response_checksum_validation="when_required"), region_name="us-east-1")
        cli(a, "remote", "add", "r", f"s3://{args.bucket}/fv", "--endpoint", endpoint,
            "--create-bucket")
        cli(a, "volume", "create", "data")
        with_mount(a, "data", work, lambda m: write_random(os.path.join(m, "file"), size))
        cli(a, "snapshot", "create", "data@one")
        for i in range(args.rounds):
            one_round(i, fig, s3, endpoint, args.bucket, work, a)

        # Incremental: after round 1's push and pull (its store is made again here).
        b = os.path.join(work, "b")
        cli(b, "remote", "add", "r", f"s3://{args.bucket}/fv0", "--endpoint", endpoint)
        fusevol(b, "pull", "r", "data@one")
        with_mount(a, "data", work, lambda m: write_random(os.path.join(m, "file"), MiB, size // 2))
        cli(a, "snapshot", "create", "data@two")
        fig["incremental_push_s"], _, out = fusevol(a, "push", "data@two", "r0")
        fig["incremental_push_bytes"] = out["uploaded_bytes"]
        fig["incremental_pull_s"], _, out = fusevol(b, "pull", "r", "data@two")
        fig["incremental_pull_bytes"] = out["downloaded_bytes"]
        if cluster:
            fig["ceph_rss_bytes"] = cluster.memory_bytes()
    finally:
        subprocess.run(["rm", "-rf", work])
        if cluster:
            cluster.stop()
        else:
            empty_bucket(endpoint, args.bucket)  # a server of one's own keeps no bench data
    report(fig, args.size)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(fig, f, indent=2)


def report(fig: dict, size_name: str) -> None:
    rounds, mb = fig["rounds"], fig["size_bytes"] / 1e6

    def med(key):
        return statistics.median(r[key] for r in rounds)

    def each(key, fmt="{:.2f}"):
        return ", ".join(fmt.format(r[key]) for r in rounds)

    print(f"| {size_name} volume, one file of random bytes, median of {len(rounds)} rounds "
          "| seconds | client CPU s | MB/s of the volume | each round (s) |")
    print("|---|---:|---:|---:|---|")
    for name, key, cpu in [
        ("plain upload, one object (a command: boto3 upload_file, UNSIGNED-PAYLOAD)",
         "plain_upload_s", "plain_upload_cpu_s"),
        ("the same upload with a SHA-256 of the body (boto3's default over http)",
         "plain_upload_signed_s", None),
        ("fusevol push, full", "push_s", "push_cpu_s"),
        ("plain download, one object (a command: boto3 download_file, fsync)", "plain_download_s",
         "plain_download_cpu_s"),
        ("the same download in-process, no fsync", "plain_download_inproc_s", None),
        ("fusevol pull, full (into a fresh store)", "pull_s", "pull_cpu_s"),
    ]:
        cpu_text = f"{med(cpu):.2f}" if cpu else ""
        print(f"| {name} | {med(key):.2f} | {cpu_text} | {mb / med(key):.0f} | {each(key)} |")
    for name, key in [("fusevol push after 1 MiB rewritten", "incremental_push"),
                      ("fusevol pull of that snapshot", "incremental_pull")]:
        print(f"| {name} ({fig[key + '_bytes'] / MiB:.1f} MiB moved) | {fig[key + '_s']:.2f} | | | |")
    print(f"\npush / plain upload: median {med('push_ratio'):.2f}x ({each('push_ratio')}); "
          f"pull / plain download: median {med('pull_ratio'):.2f}x ({each('pull_ratio')}); "
          f"pull / in-process download without fsync: median {med('pull_ratio_inproc'):.2f}x "
          f"({each('pull_ratio_inproc')}) (ratios of speed, each within its round)")


if __name__ == "__main__":
    main()
