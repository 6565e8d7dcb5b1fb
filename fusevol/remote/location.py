"""Remote URLs (s3://BUCKET/PREFIX) and the record a store keeps of a remote."""

import re
import urllib.parse

from ..errors import InvalidArgument

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
# S3's rules for bucket names (the strictest of the servers fusevol speaks to).
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise InvalidArgument(f"invalid remote name {name!r}: use 1 to 63 characters from "
                              "[A-Za-z0-9_.-], starting with a letter or digit")
    return name


def parse_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of s3://BUCKET[/PREFIX]; the prefix has no leading or
    trailing slash ('' for the bucket's root)."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "s3" or not parsed.netloc or parsed.query or parsed.fragment:
        raise InvalidArgument(f"remote URL {url!r} is not s3://BUCKET[/PREFIX]")
    if not BUCKET_RE.match(parsed.netloc):
        raise InvalidArgument(f"invalid bucket name {parsed.netloc!r}: 3 to 63 characters from "
                              "[a-z0-9.-], starting and ending with a letter or digit")
    prefix = parsed.path.strip("/")
    if "//" in parsed.path or any(part in (".", "..") for part in prefix.split("/")):
        raise InvalidArgument(f"remote URL {url!r} has an empty, '.' or '..' part in its prefix")
    return parsed.netloc, prefix


def check_endpoint(endpoint: str) -> str:
    parsed = urllib.parse.urlsplit(endpoint)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise InvalidArgument(f"endpoint {endpoint!r} is not an http:// or https:// URL")
    return endpoint.rstrip("/")


def make_record(name: str, url: str, endpoint: str | None, region: str | None) -> dict:
    bucket, prefix = parse_url(url)
    return {"name": check_name(name), "url": f"s3://{bucket}/{prefix}".rstrip("/"),
            "bucket": bucket, "prefix": prefix,
            "endpoint": check_endpoint(endpoint) if endpoint else None,
            "region": region or None}
