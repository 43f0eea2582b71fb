"""An S3 bucket (or an S3-compatible store) for local input files: each uploaded once under
its sha256, and presigned GET URLs for them. boto3 (the `[s3]` extra) is imported only when a
bucket is used; credentials come from boto3's own chain and are never written anywhere.

A minimal version of the bucket interface: `Bucket.from_url`, `put_once`, `get_url`,
`BucketError`, `require_boto3`.
"""

from __future__ import annotations

import mimetypes
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote

from batchrun.errors import BatchrunError, MissingDependencyError

INSTALL = "pip install 'runcomfy-batchrun[s3]'"
_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp", "video/mp4": "mp4"}


class BucketError(BatchrunError):
    """A bucket call failed; the message names the s3:// key, never a signed URL."""


def require_boto3() -> None:
    """MissingDependencyError (exit 2) saying how to install boto3 when it is missing."""
    try:
        import boto3  # noqa: F401  # optional: the [s3] extra
    except ImportError:
        raise MissingDependencyError(
            f"an s3:// bucket needs boto3: {INSTALL}", package="boto3", extra="s3"
        ) from None


def extension(mime: str) -> str:
    if mime in _EXTENSIONS:
        return _EXTENSIONS[mime]
    guessed = mimetypes.guess_extension(mime)
    return guessed.lstrip(".") if guessed else "bin"


class Bucket:
    """s3://BUCKET/PREFIX over one boto3 client (thread-safe)."""

    def __init__(self, bucket: str, prefix: str, client: Any, public_base: str | None) -> None:
        self.bucket, self.prefix, self.client = bucket, prefix, client
        self.public_base = public_base.rstrip("/") if public_base else None
        self.sent = 0
        self._lock = threading.Lock()

    @classmethod
    def from_url(
        cls, url: str, *, endpoint_url: str | None = None, public_base: str | None = None
    ) -> Bucket:
        require_boto3()
        import boto3

        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        client = boto3.session.Session().client("s3", endpoint_url=endpoint_url)
        return cls(bucket, prefix.strip("/"), client, public_base)

    def put_once(self, path: Path, sha256: str, mime: str) -> str:
        """Upload `path` as PREFIX/<sha256>.<ext> unless it is there; its s3:// URL."""
        name = f"{sha256}.{extension(mime)}"
        key = f"{self.prefix}/{name}" if self.prefix else name
        try:
            try:
                self.client.head_object(Bucket=self.bucket, Key=key)
            except Exception as exc:  # noqa: BLE001 - botocore's ClientError, not imported here
                if getattr(exc, "response", {}).get("Error", {}).get("Code") not in (
                    "404",
                    "NoSuchKey",
                    "NotFound",
                ):
                    raise
                with path.open("rb") as body:
                    self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=mime)
                with self._lock:
                    self.sent += 1
        except (OSError, BatchrunError) as exc:
            raise BucketError(f"s3://{self.bucket}/{key}: upload failed: {exc}") from None
        except Exception as exc:  # noqa: BLE001
            raise BucketError(
                f"s3://{self.bucket}/{key}: upload failed: {type(exc).__name__}"
            ) from None
        return f"s3://{self.bucket}/{key}"

    def get_url(self, key: str, expires_s: int) -> str:
        """A URL anyone can GET the object at `key` (an s3:// URL) with."""
        name = key.removeprefix(f"s3://{self.bucket}/")
        if self.public_base:
            base = name.removeprefix(f"{self.prefix}/") if self.prefix else name
            return f"{self.public_base}/{quote(base)}"
        url: str = self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": name}, ExpiresIn=int(expires_s)
        )
        return url
