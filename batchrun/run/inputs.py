"""Local input files made into what is sent, right before each submit is built (never
earlier): an image inline as a `data:` URI, anything else as a URL of the bucket
(`uploads.to`), uploaded once under its sha256 and signed for this job. plan/delivery.py
decides which way each file goes; `validate` has already refused what cannot go at all.

A presigned URL is a credential for its object: it lives only in the request sent. What is
recorded (state.db, the reports, log lines) is the reference (the local path) and the s3://
key; an error answer that echoes a URL back has it replaced before anyone reads it.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from batchrun.errors import ApiError, BatchrunError, InputDeliveryError
from batchrun.plan import delivery
from batchrun.plan.build import Plan
from batchrun.plan.localfiles import FileProblem, read_facts
from batchrun.plan.settings import UploadSettings
from batchrun.util import localref
from batchrun.util.safetext import unsigned


class Uploader(Protocol):
    """What run needs of fetch/bucket.py's Bucket."""

    def put_once(self, path: Path, sha256: str, mime: str) -> str: ...

    def get_url(self, key: str, expires_s: int) -> str: ...


def open_bucket(uploads: UploadSettings) -> Uploader:
    """The bucket of `uploads.to` (MissingDependencyError without boto3)."""
    from batchrun.fetch.bucket import Bucket, require_boto3

    require_boto3()
    assert uploads.to is not None
    return Bucket.from_url(
        uploads.to, endpoint_url=uploads.endpoint_url, public_base=uploads.public_base
    )


def check_ready(uploads: UploadSettings, has_local: bool) -> None:
    """Exit 2 before anything is sent when a bucket is named and boto3 is missing, or its
    location is not one (opening it reads the location and makes a client, no call)."""
    if has_local and uploads.to is not None:
        open_bucket(uploads)


class LocalInputs:
    """Makes the inputs of a job sendable (`prepare`) and submits them (`submit`).

    `base` is the manifest's folder (references are relative to it); `jobs_inputs`, the
    plan's jobs' inputs, say where each file (by sha256) is now: a folder moved since an
    earlier run keeps its jobs, and their files are read from where they are now.
    """

    def __init__(
        self,
        base: Path,
        uploads: UploadSettings,
        jobs_inputs: Iterable[dict[str, Any]],
        *,
        bucket: Callable[[UploadSettings], Uploader] = open_bucket,
    ) -> None:
        self.base = base
        self.uploads = uploads
        self.paths: dict[str, Path] = {}
        for inputs in jobs_inputs:
            for _, ref in localref.refs(inputs):
                self.paths.setdefault(ref["sha256"], base / ref["local"])
        self._open_bucket = bucket
        self._bucket: Uploader | None = None
        self._keys: dict[str, str] = {}  # sha256 -> s3:// key, uploaded (or found) this run
        self._lock = threading.Lock()
        self._file_locks: dict[str, threading.Lock] = {}

    def submit(self, submit: Callable[[str, dict[str, Any]], str]) -> Callable[..., str]:
        """`submit(model_id, inputs)` with the inputs made sendable first."""

        def send(model_id: str, inputs: dict[str, Any]) -> str:
            sent, shown = self.prepare(inputs)
            try:
                return submit(model_id, sent)
            except ApiError as exc:
                raise _scrubbed(exc, shown) from None

        return send

    def prepare(self, inputs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        """The inputs as sent, and what each sent value is shown as instead (its path or
        s3:// key) should an answer echo it."""
        routes = delivery.routes(inputs, self.uploads)
        if not routes:
            return inputs, {}
        made: dict[int, str] = {}  # id of a reference -> what is sent for it
        shown: dict[str, str] = {}
        for route in routes:
            if id(route.ref) in made:
                continue
            if route.way == delivery.INLINE:
                value = self._inline(route.ref)
                shown[value] = route.ref["local"]
            elif route.way == delivery.BUCKET:
                key = self._upload(route.ref)
                value = self._sign(key)
                shown[value] = key
            else:
                raise InputDeliveryError(f"{route.why}; nothing was sent")
            made[id(route.ref)] = value
        sent: dict[str, Any] = {}
        for name, value in inputs.items():
            if localref.is_ref(value):
                sent[name] = made[id(value)]
            elif type(value) is list and any(localref.is_ref(v) for v in value):
                sent[name] = [made[id(v)] if localref.is_ref(v) else v for v in value]
            else:
                sent[name] = value
        return sent, shown

    def _path(self, ref: dict[str, Any]) -> Path:
        """Where the file is now, checked to still hold the bytes the job was planned with."""
        path: Path = self.paths.get(ref["sha256"], self.base / ref["local"])
        try:
            facts = read_facts(path)
        except FileProblem as exc:
            raise InputDeliveryError(f"input {ref['local']}: {exc}; nothing was sent") from None
        if facts.sha256 != ref["sha256"]:
            raise InputDeliveryError(
                f"input {ref['local']} changed since the run was planned (its sha256 is no "
                "longer the one this job was made of); nothing was sent. Run again: the new "
                "bytes make a new job"
            )
        return path

    def _inline(self, ref: dict[str, Any]) -> str:
        path = self._path(ref)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InputDeliveryError(
                f"input {ref['local']}: cannot read {path}: {exc.strerror or exc}; nothing was sent"
            ) from None
        if hashlib.sha256(data).hexdigest() != ref["sha256"]:
            raise InputDeliveryError(
                f"input {ref['local']} changed while it was read; nothing was sent. Run again"
            )
        return f"data:{ref['mime']};base64,{base64.b64encode(data).decode('ascii')}"

    def _upload(self, ref: dict[str, Any]) -> str:
        sha = ref["sha256"]
        with self._lock:
            lock = self._file_locks.setdefault(sha, threading.Lock())
        with lock:  # one upload of a file at a time, however many jobs share it
            if sha not in self._keys:
                path = self._path(ref)
                try:
                    self._keys[sha] = self._get_bucket().put_once(path, sha, ref["mime"])
                except BatchrunError as exc:
                    raise InputDeliveryError(
                        f"input {ref['local']}: upload to {self.uploads.to} failed: "
                        f"{unsigned(str(exc))}; nothing was sent, it is tried again",
                        retry=not isinstance(exc, InputDeliveryError),
                    ) from None
            return self._keys[sha]

    def _sign(self, key: str) -> str:
        try:
            return self._get_bucket().get_url(key, int(self.uploads.expires_s))
        except BatchrunError as exc:
            raise InputDeliveryError(
                f"cannot make a URL for {key}: {unsigned(str(exc))}; nothing was sent",
                retry=True,
            ) from None

    def _get_bucket(self) -> Uploader:
        with self._lock:
            if self._bucket is None:
                self._bucket = self._open_bucket(self.uploads)
            return self._bucket


def _scrubbed(exc: ApiError, shown: dict[str, str]) -> ApiError:
    """`exc` with every sent value an answer echoed (a data: URI, a signed URL) replaced by
    its path or s3:// key, and any URL signature left over removed."""

    def clean(text: str) -> str:
        for value, name in shown.items():
            if value in text:
                text = text.replace(value, name)
            escaped = value.replace("/", "\\/")
            if escaped in text:
                text = text.replace(escaped, name)
        return unsigned(text)

    exc.message = clean(exc.message)
    exc.detail = clean(str(exc.detail)) if exc.detail is not None else None
    exc.args = tuple(clean(a) if isinstance(a, str) else a for a in exc.args)
    return exc


def submitter(
    plan: Plan, submit: Callable[[str, dict[str, Any]], str]
) -> Callable[[str, dict[str, Any]], str] | None:
    """`submit` making the plan's local input files sendable first; None when it has none."""
    manifest = plan.manifest
    if not manifest.has_local:
        return None
    jobs = plan.jobs if plan.sweep is None else plan.sweep  # (a streamed plan: one more pass)
    local = LocalInputs(manifest.path.parent, manifest.uploads, (job.inputs for job in jobs))
    return local.submit(submit)
