"""A remote's bucket through boto3: the few calls fusevol makes, every error
turned into one line (RemoteError) that names the remote and what failed.

Credentials come from boto3's standard chain only (AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY, AWS_PROFILE and the shared credentials file, ...):
fusevol never stores or prints them. A boto3 client is safe to share between
threads; uploads and downloads run in a thread pool over one client.
"""

import email.utils
import http.client
import logging

import boto3
import botocore.config
import botocore.exceptions
import urllib3.exceptions

from ..errors import RemoteError

# The server cannot be reached, or went away in the middle of a request or its body.
_CONNECTION_LOST = (botocore.exceptions.EndpointConnectionError,
                    botocore.exceptions.ConnectionClosedError,
                    botocore.exceptions.ConnectTimeoutError,
                    botocore.exceptions.ReadTimeoutError,
                    botocore.exceptions.ResponseStreamingError,
                    botocore.exceptions.IncompleteReadError,
                    urllib3.exceptions.ProtocolError,
                    http.client.IncompleteRead)

log = logging.getLogger(__name__)
# boto3 tells at INFO where it found credentials: not a user's business, and
# the CLI logs INFO to the terminal.
logging.getLogger("botocore").setLevel(logging.WARNING)
logging.getLogger("boto3").setLevel(logging.WARNING)

# Refusals that mean "these credentials do not work here".
_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken",
               "ExpiredToken", "AuthorizationHeaderMalformed", "InvalidClientTokenId", "403"}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
_PRECONDITION_CODES = {"PreconditionFailed", "412", "ConditionalRequestConflict"}


class Bucket:
    """The objects under one remote's prefix."""

    def __init__(self, record: dict, max_pool: int = 8):
        self.name = record["name"]
        self.bucket = record["bucket"]
        self.prefix = record["prefix"] + "/" if record["prefix"] else ""
        self.endpoint = record.get("endpoint")
        self.region = record.get("region")
        self.where = self.endpoint or "S3"
        config = botocore.config.Config(
            region_name=record.get("region") or "us-east-1",
            signature_version="s3v4",
            # A custom endpoint (radosgw, MinIO, Garage) is reached by path, not
            # by a bucket host name its DNS may not have.
            s3={"addressing_style": "path" if self.endpoint else "auto",
                # No SHA-256 of every body for the signature (UNSIGNED-PAYLOAD):
                # a second hash of every byte, on both sides, which the blobs'
                # own ids check end to end already (at a pull, `remote verify`).
                "payload_signing_enabled": False},
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5, read_timeout=60, max_pool_connections=max_pool,
            # Checksums of the newest protocol revisions are not known to every
            # S3-compatible server; fusevol checks every blob by its own hash.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        try:
            self.client = boto3.session.Session().client("s3", endpoint_url=self.endpoint,
                                                         config=config)
        except (botocore.exceptions.BotoCoreError, ValueError) as e:
            raise RemoteError(f"remote {self.name}: {e}") from None

    def key(self, name: str) -> str:
        return self.prefix + name

    # -- errors ------------------------------------------------------------------
    def _error(self, e: Exception, what: str) -> RemoteError:
        if isinstance(e, (botocore.exceptions.NoCredentialsError,
                          botocore.exceptions.PartialCredentialsError)):
            return RemoteError("no AWS credentials found: set AWS_ACCESS_KEY_ID and "
                               "AWS_SECRET_ACCESS_KEY, or a profile in ~/.aws/credentials "
                               "(AWS_PROFILE)")
        if isinstance(e, _CONNECTION_LOST):
            return RemoteError(f"remote {self.name}: cannot reach {self.where} while {what} "
                               f"({type(e).__name__})")
        if isinstance(e, botocore.exceptions.ClientError):
            code = str(e.response.get("Error", {}).get("Code", ""))
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in _AUTH_CODES:
                return RemoteError(f"remote {self.name}: {self.where} refused the credentials "
                                   f"({code}); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
                                   "or the profile")
            if code == "NoSuchBucket":
                return RemoteError(f"remote {self.name}: bucket {self.bucket} does not exist on "
                                   f"{self.where}")
            message = e.response.get("Error", {}).get("Message") or ""
            return RemoteError(f"remote {self.name}: {what}: {code or status} {message}".rstrip())
        if isinstance(e, botocore.exceptions.BotoCoreError):
            return RemoteError(f"remote {self.name}: {what}: {e}")
        return RemoteError(f"remote {self.name}: {what}: {type(e).__name__}: {e}")

    @staticmethod
    def _code(e: Exception) -> str:
        if isinstance(e, botocore.exceptions.ClientError):
            code = str(e.response.get("Error", {}).get("Code", ""))
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return code or str(status)
        return ""

    def _call(self, what: str, fn, **kwargs):
        try:
            return fn(Bucket=self.bucket, **kwargs)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            raise self._error(e, what) from None

    # -- calls -------------------------------------------------------------------
    def check(self) -> None:
        """Reach the bucket with the credentials (one request), or say why not."""
        self._call("checking the bucket", self.client.head_bucket)

    def create_bucket(self) -> None:
        kwargs = {}
        if self.region and self.region != "us-east-1":  # AWS wants it named; us-east-1 refuses it
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self.client.create_bucket(Bucket=self.bucket, **kwargs)
        except botocore.exceptions.ClientError as e:
            if self._code(e) not in ("BucketAlreadyOwnedByYou",):
                raise self._error(e, f"creating bucket {self.bucket}") from None
        except botocore.exceptions.BotoCoreError as e:
            raise self._error(e, f"creating bucket {self.bucket}") from None

    def put(self, name: str, data: bytes) -> None:
        self._call(f"uploading {name}", self.client.put_object, Key=self.key(name), Body=data)

    def put_new(self, name: str, data: bytes) -> bool:
        """Upload only if no object has that name (a conditional PUT);
        False if one had it already."""
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.key(name), Body=data,
                                   IfNoneMatch="*")
            return True
        except botocore.exceptions.ClientError as e:
            if self._code(e) in _PRECONDITION_CODES:
                return False
            raise self._error(e, f"uploading {name}") from None
        except botocore.exceptions.BotoCoreError as e:
            raise self._error(e, f"uploading {name}") from None

    def get(self, name: str, start: int | None = None, length: int | None = None,
            suffix: int | None = None) -> bytes | None:
        """The object (or bytes start..start+length-1 of it, or its last
        `suffix` bytes); None if there is no such object."""
        kwargs = {"Key": self.key(name)}
        if suffix is not None:
            kwargs["Range"] = f"bytes=-{suffix}"
        elif start is not None:
            kwargs["Range"] = f"bytes={start}-{start + length - 1}"
        try:
            return self.client.get_object(Bucket=self.bucket, **kwargs)["Body"].read()
        except botocore.exceptions.ClientError as e:
            if self._code(e) in _MISSING_CODES:
                return None
            raise self._error(e, f"downloading {name}") from None
        except botocore.exceptions.BotoCoreError as e:
            raise self._error(e, f"downloading {name}") from None

    def get_with_meta(self, name: str):
        """(data, ETag, LastModified, the server's Date) of an object, or None."""
        try:
            reply = self.client.get_object(Bucket=self.bucket, Key=self.key(name))
            data = reply["Body"].read()
        except botocore.exceptions.ClientError as e:
            if self._code(e) in _MISSING_CODES:
                return None
            raise self._error(e, f"downloading {name}") from None
        except botocore.exceptions.BotoCoreError as e:
            raise self._error(e, f"downloading {name}") from None
        date = reply["ResponseMetadata"].get("HTTPHeaders", {}).get("date")
        now = email.utils.parsedate_to_datetime(date) if date else reply["LastModified"]
        return data, reply["ETag"], reply["LastModified"], now

    def etag_of(self, name: str) -> str:
        return self._call(f"reading {name}", self.client.head_object, Key=self.key(name))["ETag"]

    def put_if_match(self, name: str, data: bytes, etag: str) -> str | None:
        """Replace the object only if its ETag is still `etag` (compare and
        swap); its new ETag, or None if it changed meanwhile."""
        for sent in (etag, etag.strip('"')):
            try:
                reply = self.client.put_object(Bucket=self.bucket, Key=self.key(name), Body=data,
                                               IfMatch=sent)
                return reply.get("ETag") or self.etag_of(name)
            except botocore.exceptions.ClientError as e:
                if self._code(e) not in _PRECONDITION_CODES:
                    raise self._error(e, f"uploading {name}") from None
            except botocore.exceptions.BotoCoreError as e:
                raise self._error(e, f"uploading {name}") from None
            # radosgw 16 compares If-Match with the ETag unquoted: try that
            # only when the object still has the ETag we hold.
            try:
                if self.etag_of(name) != etag:
                    return None
            except RemoteError:
                return None
        return None

    def list_objects(self, under: str) -> list[tuple[str, int, object]]:
        """(name relative to the prefix, size, last modified) of every object under `under`."""
        out = []
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.key(under)):
                for item in page.get("Contents", ()):
                    out.append((item["Key"][len(self.prefix):], item["Size"], item["LastModified"]))
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            raise self._error(e, f"listing {under}") from None
        return out

    def delete(self, names: list[str]) -> None:
        for start in range(0, len(names), 1000):  # S3's limit per request
            batch = [{"Key": self.key(n)} for n in names[start:start + 1000]]
            reply = self._call("deleting objects", self.client.delete_objects,
                               Delete={"Objects": batch, "Quiet": True})
            if reply.get("Errors"):
                first = reply["Errors"][0]
                raise RemoteError(f"remote {self.name}: deleting {first.get('Key')}: "
                                  f"{first.get('Code')} {first.get('Message', '')}".rstrip())
