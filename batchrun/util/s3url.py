"""`s3://BUCKET/PREFIX` locations: parsed and checked once, for the manifest and the bucket."""

from __future__ import annotations

import re
from dataclasses import dataclass

# S3's rules for a bucket name (and R2's, MinIO's): 3-63 lower-case letters, digits, dots and
# hyphens, starting and ending with a letter or digit.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
EXAMPLE = "s3://my-bucket/batchrun"


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key prefix in it ('' or without a leading or trailing slash)."""

    bucket: str
    prefix: str = ""

    def key(self, *parts: str) -> str:
        """PREFIX/part/part..., the object key of a name under the prefix."""
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p.strip("/"))

    def url(self, key: str) -> str:
        """s3://BUCKET/KEY of an object key."""
        return f"s3://{self.bucket}/{key}"

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def parse_s3_url(url: object) -> S3Location:
    """`s3://BUCKET[/PREFIX]` as an S3Location; ValueError saying what is wrong and the fix."""
    if not isinstance(url, str):
        raise ValueError(f"{url!r} is not an s3:// location; write e.g. {EXAMPLE}")
    text = url.strip()
    # Shown without a query string: a presigned URL pasted here carries a credential.
    url = text.split("?")[0] + ("?..." if "?" in text else "")
    if not text.startswith("s3://"):
        raise ValueError(
            f"{url!r} is not an s3:// location (it must start with s3://); write e.g. {EXAMPLE}"
            " (an S3-compatible store such as R2 or MinIO takes its endpoint_url separately)"
        )
    bucket, _, prefix = text[len("s3://") :].partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ValueError(
            f"{url!r}: {bucket!r} is not a bucket name (3-63 lower-case letters, digits, dots "
            f"and hyphens); write e.g. {EXAMPLE}"
        )
    prefix = prefix.strip("/")
    parts = prefix.split("/") if prefix else []
    if any(p in ("", ".", "..") for p in parts) or any(c in prefix for c in "?#\\"):
        raise ValueError(
            f"{url!r}: the prefix {prefix!r} has an empty, '.' or '..' part or a ?, # or \\; "
            f"write e.g. {EXAMPLE}"
        )
    return S3Location(bucket, prefix)
