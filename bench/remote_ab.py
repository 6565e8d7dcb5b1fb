"""Full pulls of two (or more) source trees of fusevol, A/B in the same minutes,
each beside a plain download of one object of the same size from the same server.

    PYTHONPATH=. /opt/fusevol/bin/python bench/remote_ab.py main=/path/to/main new=. \\
        [--size 1G] [--rounds 6] [--endpoint URL]

On a shared machine one pull's time moves by 2x with the others' load, so a
comparison of two runs minutes apart says little: here every round runs the
plain download and one pull by each tree (each into a fresh store, as a
command of its own, like bench/remote.py), the order rotating from round to
round, and reports each round's pull/plain ratio and the CPU seconds each
command took (user + system), which move less with load than its time. The
volume (one file of random bytes) is made and pushed once, by the first tree.
"""

import argparse
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
sys.path.insert(0, HERE)
from remote import _PLAIN, parse_size, server, write_random  # noqa: E402 (the same baseline as bench/remote.py)


def run(argv: list[str], pythonpath: str | None = None) -> tuple[float, float]:
    """(seconds, CPU seconds) of a command."""
    env = {**os.environ, **({"PYTHONPATH": pythonpath} if pythonpath else {})}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, env=env)
    seconds = time.monotonic() - t
    if proc.returncode:
        raise SystemExit(f"{' '.join(argv[:6])}: {proc.stderr.decode().strip()}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return seconds, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def fusevol(tree: str, store: str, *args: str) -> tuple[float, float]:
    return run([sys.executable, "-m", "fusevol", "--store", store, *args], tree)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trees", nargs="+", metavar="NAME=DIR", help="a source tree of fusevol, named")
    ap.add_argument("--size", default="1G", help="volume size (K, M, G suffix)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--endpoint", help="an S3 endpoint of your own (default: start Ceph)")
    ap.add_argument("--base", default="/var/tmp", help="where stores and files go")
    args = ap.parse_args()
    trees = dict(t.split("=", 1) for t in args.trees)
    size = parse_size(args.size)
    first = next(iter(trees.values()))
    bucket = f"fv-ab-{uuid.uuid4().hex[:8]}"

    cluster, endpoint = server(args.endpoint)
    work = tempfile.mkdtemp(dir=args.base, prefix="fusevol-bench-ab-")
    times = {name: [] for name in ["plain", *trees]}
    cpus = {name: [] for name in times}
    try:
        a, mnt, path = (os.path.join(work, n) for n in ("a", "mnt", "plain"))
        fusevol(first, a, "remote", "add", "r", f"s3://{bucket}/fv", "--endpoint", endpoint,
                "--create-bucket")
        fusevol(first, a, "volume", "create", "data")
        os.makedirs(mnt)
        fusevol(first, a, "mount", "data", mnt, "--background")
        try:
            write_random(os.path.join(mnt, "file"), size)
        finally:
            fusevol(first, a, "umount", mnt)
        fusevol(first, a, "snapshot", "create", "data@one")
        fusevol(first, a, "push", "data@one", "r")
        write_random(path, size)
        run([sys.executable, "-c", _PLAIN, endpoint, bucket, "plain", path, "up"])
        os.unlink(path)

        steps = list(times)
        for i in range(args.rounds):
            for name in steps[i % len(steps):] + steps[:i % len(steps)]:
                subprocess.run(["sync"])
                if name == "plain":
                    seconds, cpu = run([sys.executable, "-c", _PLAIN, endpoint, bucket, "plain",
                                        path, "down"])
                    os.unlink(path)
                else:
                    store = os.path.join(work, f"b-{name}")
                    fusevol(trees[name], store, "remote", "add", "r", f"s3://{bucket}/fv",
                            "--endpoint", endpoint)
                    seconds, cpu = fusevol(trees[name], store, "pull", "r", "data@one")
                    subprocess.run(["rm", "-rf", store])
                times[name].append(seconds)
                cpus[name].append(cpu)
            plain = times["plain"][-1]
            print(f"round {i + 1}: plain {plain:.2f} s; " + "; ".join(
                f"{n} {times[n][-1]:.2f} s ({plain / times[n][-1]:.2f}x)" for n in trees),
                file=sys.stderr)
    finally:
        subprocess.run(["rm", "-rf", work])
        if cluster:
            cluster.stop()
        else:
            s3 = boto3.resource("s3", endpoint_url=endpoint, region_name="us-east-1",
                                config=botocore.config.Config(s3={"addressing_style": "path"}))
            s3.Bucket(bucket).objects.all().delete()
            s3.Bucket(bucket).delete()

    print(f"| {args.size} pull, {args.rounds} rounds | median s | median CPU s | pull/plain, each round |")
    print("|---|---:|---:|---|")
    for name in times:
        ratios = "" if name == "plain" else ", ".join(
            f"{p / t:.2f}" for p, t in zip(times["plain"], times[name]))
        median = "" if name == "plain" else f" (median {statistics.median(p / t for p, t in zip(times['plain'], times[name])):.2f}x)"
        print(f"| {name} | {statistics.median(times[name]):.2f} | {statistics.median(cpus[name]):.2f} "
              f"| {ratios}{median} |")


if __name__ == "__main__":
    main()
