"""An S3 bucket, or an S3-compatible store (R2, MinIO, GCS interop), for a run's files: inputs
uploaded once under their sha256, presigned GET URLs for them, outputs mirrored idempotently.

boto3 is optional (the `[s3]` extra) and imported only when a bucket is used. Credentials come
from boto3's own chain (environment, profile, SSO, instance role) and are never written
anywhere. A presigned URL is a credential for its object: no message here carries one (nor
any URL's query string).
"""

from __future__ import annotations

import hashlib
import mimetypes
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from batchrun.api.ratelimit import backoff
from batchrun.errors import BucketError, BucketUrlError, MissingDependencyError
from batchrun.util.s3url import S3Location, parse_s3_url

INSTALL = "pip install 'runcomfy-batchrun[s3]'"
ATTEMPTS = 5  # tries of one call when the store fails or is busy (5xx, 429, SlowDown, network)
BACKOFF_BASE_S = 0.5  # 0.5 s, 1 s, 2 s, 4 s between them (with jitter)
BACKOFF_CAP_S = 8.0
MAX_EXPIRES_S = 7 * 24 * 3600  # the longest a SigV4 presigned URL may live
MULTIPART_BYTES = 64 * 2**20  # larger files go up in parts (upload_file), smaller in one PUT
SHA_META = "sha256"  # the object metadata (x-amz-meta-sha256) holding the file's sha256
CHUNK = 1 << 20

_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestLimitExceeded",
        "TooManyRequests",
        "InternalError",
        "ServiceUnavailable",
    }
)
_TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
_CREDENTIALS_REFUSED = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"}
)
# Suffixes of the types people sweep, as the object keys carry them (mimetypes has gaps:
# image/webp is missing on some systems, audio/mpeg gives .mp2 on others).
_EXTENSIONS = {
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/webp": "webp",
    "image/gif": "gif",
    "image/bmp": "bmp",
    "video/mp4": "mp4",
    "video/webm": "webm",
    "video/quicktime": "mov",
    "audio/mpeg": "mp3",
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/flac": "flac",
    "audio/ogg": "ogg",
    "audio/mp4": "m4a",
}
# A URL's query string, up to a space or quote (a last : , ; . or ) is the sentence's).
_QUERY = re.compile(r"(\w+://[^\s?\"'<>]*)\?[^\s\"'<>]*?(?=[:,;.)]?(?:[\s\"'<>]|$))")
_SIGNED = re.compile(r"(Signature|X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token)=[^&\s]*")

T = TypeVar("T")


def require_boto3() -> None:
    """MissingDependencyError (exit 2) saying how to install boto3 when it is missing."""
    try:
        import boto3  # noqa: F401  # optional: the [s3] extra
    except ImportError:
        raise MissingDependencyError(
            f"an s3:// bucket needs boto3: {INSTALL}", package="boto3", extra="s3"
        ) from None


def extension(mime: str) -> str:
    """The suffix an object of type `mime` gets ('bin' when the type is unknown)."""
    base = mime.split(";")[0].strip().lower()
    if base in _EXTENSIONS:
        return _EXTENSIONS[base]
    guessed = mimetypes.guess_extension(base) if base else None
    return guessed.lstrip(".") if guessed else "bin"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def scrub(text: str) -> str:
    """`text` without any URL's query string or signature (a presigned URL is a credential)."""
    return _SIGNED.sub(r"\1=...", _QUERY.sub(r"\1", text))


@dataclass(frozen=True)
class _Failure:
    detail: str
    fix: str
    transient: bool


class Bucket:
    """One bucket and a prefix in it, over one boto3 client (thread-safe: uploads may run in
    parallel). `sent` counts the files uploaded through it."""

    def __init__(
        self,
        where: S3Location,
        client: Any,
        *,
        public_base: str | None = None,
        attempts: int = ATTEMPTS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.where = where
        self.client = client
        self.public_base = public_base.rstrip("/") if public_base else None
        self.attempts = max(1, attempts)
        self.sleep = sleep
        self.sent = 0
        self._count = threading.Lock()
        self._random = random.Random()

    @classmethod
    def from_url(
        cls, url: str, *, endpoint_url: str | None = None, public_base: str | None = None
    ) -> Bucket:
        """The bucket of `s3://BUCKET/PREFIX`; its endpoint is `endpoint_url`, else boto3's own
        configuration (AWS_ENDPOINT_URL, a profile's endpoint_url, AWS itself)."""
        try:
            where = parse_s3_url(url)
        except ValueError as exc:
            raise BucketUrlError(
                str(exc), what="read the location", fix="write e.g. s3://my-bucket/batchrun"
            ) from None
        require_boto3()
        return cls(where, _client(where, endpoint_url), public_base=public_base)

    def __str__(self) -> str:
        return str(self.where)

    # ---- inputs: content-addressed, sent once -------------------------------------------

    def put_once(self, path: Path, sha256: str, mime: str) -> str:
        """Upload `path` as PREFIX/<sha256>.<ext> unless an object of its size is there already
        (sent by any run, from any folder); its s3:// URL."""
        key = self.where.key(f"{sha256}.{extension(mime)}")
        size = _size(path, self.where, key)
        found = self._head(key)
        if found is None or found[0] != size:
            self._put(path, key, sha256, mime)
        return self.where.url(key)

    def get_url(self, key: str, expires_s: int) -> str:
        """A URL anyone can GET `key` with (an s3:// URL put_once returned, or a key under the
        prefix): public_base + its path when the bucket is public, else a presigned URL valid
        for `expires_s` seconds."""
        object_key = self._object_key(key)
        if self.public_base:
            prefix = f"{self.where.prefix}/" if self.where.prefix else ""
            path = object_key[len(prefix) :] if object_key.startswith(prefix) else object_key
            return f"{self.public_base}/{quote(path)}"
        if not 1 <= expires_s <= MAX_EXPIRES_S:
            raise BucketError(
                f"{self.where.url(object_key)}: a presigned URL lives 1 s to 7 days, not "
                f"{expires_s} s; set uploads.expires within that",
                bucket=self.where.bucket, key=object_key, what="presign",
                fix="set uploads.expires between 1s and 7 days",
            )  # fmt: skip
        params = {"Bucket": self.where.bucket, "Key": object_key}
        url: str = self._retried(
            "presign a GET URL",
            object_key,
            lambda: self.client.generate_presigned_url(
                "get_object", Params=params, ExpiresIn=int(expires_s)
            ),
        )
        return url

    # ---- outputs: mirrored, idempotent --------------------------------------------------

    def mirror(self, path: Path, key: str, *, sha256: str | None = None) -> bool:
        """Upload `path` to PREFIX/`key` unless an object of the same size and sha256
        (metadata) is there; whether it was sent. `sha256`: the file's, when known."""
        object_key = self.where.key(key)
        size = _size(path, self.where, object_key)
        sha = sha256 or file_sha256(path)
        if self._head(object_key) == (size, sha):
            return False
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        self._put(path, object_key, sha, mime)
        return True

    def url(self, key: str) -> str:
        """s3://BUCKET/PREFIX/`key`."""
        return self.where.url(self.where.key(key))

    # ---- calls --------------------------------------------------------------------------

    def _head(self, key: str) -> tuple[int, str] | None:
        """(size, sha256 metadata) of the object at `key`; None when there is none."""

        def head() -> tuple[int, str] | None:
            try:
                found = self.client.head_object(Bucket=self.where.bucket, Key=key)
            except Exception as exc:
                if _status(exc) == 404:  # a missing bucket too: the PUT then says which
                    return None
                raise
            meta = found.get("Metadata") or {}
            return int(found.get("ContentLength", -1)), str(meta.get(SHA_META, ""))

        return self._retried("look up", key, head)

    def _put(self, path: Path, key: str, sha256: str, mime: str) -> None:
        extra = {"Metadata": {SHA_META: sha256}, "ContentType": mime}
        bucket = self.where.bucket

        def put() -> None:
            if path.stat().st_size > MULTIPART_BYTES:
                self.client.upload_file(str(path), bucket, key, ExtraArgs=extra)
                return
            with open(path, "rb") as body:  # opened again on each try: a retry sends it all
                self.client.put_object(Bucket=bucket, Key=key, Body=body, **extra)

        self._retried("upload", key, put)
        with self._count:
            self.sent += 1

    def _retried(self, what: str, key: str, call: Callable[[], T]) -> T:
        """`call()`, tried again with backoff while the store fails or is busy; BucketError
        (bucket, key, what failed, the fix) once it gives up or is refused."""
        attempt = 0
        while True:
            try:
                return call()
            except Exception as exc:
                failure = _failure(exc, self.where)
                if failure is None:
                    raise
                attempt += 1
                if failure.transient and attempt < self.attempts:
                    self.sleep(
                        backoff(attempt, base=BACKOFF_BASE_S, cap=BACKOFF_CAP_S, rng=self._random)
                    )
                    continue
                tries = f" (after {attempt} attempts)" if attempt > 1 else ""
                raise BucketError(
                    f"{self.where.url(key)}: {what} failed: {failure.detail}{tries}; "
                    f"{failure.fix}",
                    bucket=self.where.bucket, key=key, what=what, fix=failure.fix,
                ) from None  # fmt: skip

    def _object_key(self, key: str) -> str:
        if "://" in key and not key.startswith("s3://"):
            raise BucketUrlError(
                f"{scrub(key)} is not an object of {self.where}: give its s3:// URL or its key",
                bucket=self.where.bucket, what="read the key",
            )  # fmt: skip
        if not key.startswith("s3://"):
            return self.where.key(key)
        try:
            where = parse_s3_url(key)
        except ValueError as exc:
            raise BucketUrlError(str(exc), what="read the key") from None
        if where.bucket != self.where.bucket or not where.prefix:
            raise BucketUrlError(
                f"{key} is not an object of {self.where}", bucket=self.where.bucket, key=key
            )
        return where.prefix


def _client(where: S3Location, endpoint_url: str | None) -> Any:
    import boto3  # optional: the [s3] extra (require_boto3 said how to install it)
    from botocore.config import Config

    # boto3's own retries are off: _retried retries, with the backoff of every other call.
    config = Config(
        signature_version="s3v4",
        retries={"mode": "standard", "total_max_attempts": 1},
        connect_timeout=10,
        read_timeout=120,
    )
    try:
        return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)
    except ValueError as exc:  # botocore: "Invalid endpoint: ..."
        raise BucketUrlError(
            f"{where}: endpoint_url {scrub(str(endpoint_url))!r} is not usable "
            f"({scrub(str(exc))}); "
            "give the store's https:// address, e.g. https://ACCOUNT.r2.cloudflarestorage.com",
            bucket=where.bucket, what="connect", fix="correct endpoint_url",
        ) from None  # fmt: skip


def _size(path: Path, where: S3Location, key: str) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise BucketError(
            f"{path}: cannot be read ({exc.strerror}), so it was not sent to {where.url(key)}",
            bucket=where.bucket, key=key, what="read", fix=f"check {path}",
        ) from None  # fmt: skip


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status if isinstance(status, int) else None


def _failure(exc: BaseException, where: S3Location) -> _Failure | None:
    """What a failed call means, its fix, and whether to try again; None when `exc` is not a
    failure of the store (a bug, which then propagates)."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectionError as StoreUnreachable,
        NoCredentialsError,
        PartialCredentialsError,
    )

    if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, ClientError):
        exc = exc.__context__  # upload_file (large files) wraps what the store said
    if isinstance(exc, ClientError):
        return _refusal(exc, where)
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return _Failure(
            "no AWS credentials found",
            "give boto3 credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
            "or ~/.aws/credentials (its standard chain)",
            transient=False,
        )
    if isinstance(exc, StoreUnreachable):
        return _Failure(
            scrub(str(exc)),
            "check the network and the endpoint (endpoint_url, AWS_ENDPOINT_URL), then rerun",
            transient=True,
        )
    if isinstance(exc, (BotoCoreError, S3UploadFailedError)):
        return _Failure(scrub(str(exc)), "check the bucket and the endpoint", transient=False)
    if isinstance(exc, OSError):
        return _Failure(f"the local file cannot be read ({exc.strerror})", "check it", False)
    return None


def _refusal(exc: Any, where: S3Location) -> _Failure:
    """A ClientError: the store answered with an error."""
    error = exc.response.get("Error", {})
    code, message = str(error.get("Code", "")), scrub(str(error.get("Message", "")))
    status = _status(exc)
    detail = " ".join(p for p in (f"HTTP {status}" if status else "", code, message) if p)
    if status in _TRANSIENT_STATUS or code in _TRANSIENT_CODES:
        return _Failure(detail, "the store is failing or busy: rerun later", transient=True)
    if code == "NoSuchBucket":
        fix = (
            f"create the bucket {where.bucket}, or correct the s3:// location (an S3-compatible "
            "store also needs its endpoint_url or AWS_ENDPOINT_URL)"
        )
    elif code in _CREDENTIALS_REFUSED:
        fix = "the credentials boto3 found were refused: check AWS_PROFILE or AWS_ACCESS_KEY_ID"
    elif code == "AccessDenied" or status == 403:
        fix = (
            f"the credentials boto3 found may not do this in {where.bucket}: check the bucket's "
            "policy and which credentials are used (AWS_PROFILE, AWS_ACCESS_KEY_ID)"
        )
    else:
        fix = "check the bucket and the endpoint"
    return _Failure(detail, fix, transient=False)
