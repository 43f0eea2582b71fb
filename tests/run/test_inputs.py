"""Local input files made sendable at submit time (run/inputs.py): inline data: URIs of the
planned bytes, bucket URLs signed per submit, and nothing of a sent value (a data: URI, a
signature) in an error an answer echoes."""

from __future__ import annotations

import base64
import textwrap
from pathlib import Path
from typing import Any

import pytest

from batchrun.api import answers
from batchrun.errors import BatchrunError, InputDeliveryError, InvalidInputError
from batchrun.plan.build import Plan, build_plan
from batchrun.run.inputs import LocalInputs, Uploader
from batchrun.util.safetext import unsigned
from testing.media import FLUX, write_image

SIGNED_URL = (
    "https://bucket.s3.amazonaws.com/in/abc.png?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIAEXAMPLE%2F20261204%2Fus-east-1%2Fs3%2Faws4_request"
    "&X-Amz-Date=20261204T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
    "&X-Amz-Signature=0123456789abcdef0123456789abcdef"
)


class FakeBucket:
    """The bucket interface run uses, counting its calls (the S3 side is tested end to end)."""

    def __init__(self, fail: bool = False) -> None:
        self.puts: list[str] = []
        self.signed = 0
        self.fail = fail

    def put_once(self, path: Path, sha256: str, mime: str) -> str:
        if self.fail:
            raise BatchrunError("s3://bucket/in: upload failed: SlowDown")
        self.puts.append(sha256)
        return f"s3://bucket/in/{sha256}.png"

    def get_url(self, key: str, expires_s: int) -> str:
        self.signed += 1
        return SIGNED_URL


def plan_of(folder: Path, uploads: str = "") -> Plan:
    write_image(folder / "a.png", (10, 20, 30))
    path = folder / "m.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            version: 1
            matrix:
              seed: [1, 2]
            models:
              - id: {FLUX}
                inputs: {{prompt: p, image_url: {{local: a.png}}}}
            """
        )
        + uploads,
        encoding="utf-8",
    )
    return build_plan(path)


def local_inputs(plan: Plan, bucket: Uploader | None = None) -> LocalInputs:
    m = plan.manifest
    return LocalInputs(
        m.path.parent,
        m.uploads,
        [j.inputs for j in plan.jobs],
        bucket=lambda _: bucket or FakeBucket(),
    )


def test_inline_sends_the_planned_bytes_with_their_type(tmp_path: Path) -> None:
    plan = plan_of(tmp_path)
    sent, shown = local_inputs(plan).prepare(plan.jobs[0].inputs)
    head, _, data = sent["image_url"].partition(",")
    assert head == "data:image/png;base64"
    assert base64.b64decode(data) == (tmp_path / "a.png").read_bytes()
    assert shown == {sent["image_url"]: "a.png"}
    assert plan.jobs[0].inputs["image_url"]["local"] == "a.png"  # the job keeps its reference


def test_a_bucket_uploads_once_and_signs_each_submit(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, "uploads: {to: s3://bucket/in, inline: never}\n")
    bucket = FakeBucket()
    local = local_inputs(plan, bucket)
    for job in plan.jobs:
        sent, shown = local.prepare(job.inputs)
        assert sent["image_url"] == SIGNED_URL
        assert shown[SIGNED_URL].startswith("s3://bucket/in/")
    assert len(bucket.puts) == 1 and bucket.signed == 2


def test_an_echoed_url_or_data_uri_never_reaches_the_error(tmp_path: Path) -> None:
    for uploads in ("", "uploads: {to: s3://bucket/in, inline: never}\n"):
        plan = plan_of(tmp_path, uploads)
        local = local_inputs(plan)

        def refuse(model_id: str, inputs: dict[str, Any]) -> str:
            value = inputs["image_url"]
            raise InvalidInputError(
                f"cannot read {value} ({value.replace('/', chr(92) + '/')})",
                status=422,
                detail=[{"loc": ["body", "image_url"], "input": value}],
            )

        with pytest.raises(InvalidInputError) as caught:
            local.submit(refuse)(FLUX, plan.jobs[0].inputs)
        text = f"{caught.value} {caught.value.detail} {caught.value!r}"
        assert "X-Amz-Signature=0123" not in text and "base64," not in text
        assert "AKIAEXAMPLE" not in text
        assert ("s3://bucket/in/" if uploads else "a.png") in text


def test_a_failed_upload_is_retried_and_a_changed_file_fails_the_job(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, "uploads: {to: s3://bucket/in, inline: never}\n")
    with pytest.raises(InputDeliveryError) as caught:
        local_inputs(plan, FakeBucket(fail=True)).prepare(plan.jobs[0].inputs)
    assert caught.value.retry and answers.submit_verdict(caught.value) == answers.RETRY
    write_image(tmp_path / "a.png", (99, 20, 30))
    with pytest.raises(InputDeliveryError) as caught:
        local_inputs(plan).prepare(plan.jobs[0].inputs)
    assert "changed since the run was planned" in str(caught.value)
    assert answers.submit_verdict(caught.value) == answers.FAILED


def test_unsigned_removes_signatures_of_every_common_scheme() -> None:
    text = unsigned(
        f"{SIGNED_URL} and https://b.s3.amazonaws.com/k?AWSAccessKeyId=AKIAOLD&Signature=s3cr3t"
        "&Expires=1 and https://storage.googleapis.com/b/k?X-Goog-Signature=beef"
    )
    for secret in ("0123456789abcdef", "AKIAEXAMPLE", "AKIAOLD", "s3cr3t", "beef"):
        assert secret not in text
    assert "https://bucket.s3.amazonaws.com/in/abc.png" in text
