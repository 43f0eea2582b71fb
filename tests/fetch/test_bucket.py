"""fetch/bucket.py against a real S3 server (moto's server mode on 127.0.0.1): content-addressed
uploads sent once, presigned and public URLs fetched without credentials, expiry, mirroring,
retries, and messages that name the bucket and key and never a signature."""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

import pytest
import requests

from batchrun.errors import BucketError, BucketUrlError, MissingDependencyError
from batchrun.fetch import bucket as bk
from batchrun.fetch.bucket import Bucket, require_boto3
from testing.s3server import FAKE_SECRET, S3Bucket

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


def _file(folder: Path, name: str, data: bytes) -> tuple[Path, str]:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def _no_secret(text: str) -> None:
    assert "X-Amz-Signature" not in text and "Signature=" not in text
    assert "X-Amz-Credential" not in text and FAKE_SECRET not in text


def test_put_once_sends_a_file_once_across_buckets_and_folders(s3: S3Bucket, tmp_path: Path):
    path, sha = _file(tmp_path / "photos", "cat.png", PNG)
    first = Bucket.from_url(s3.url("inputs"))
    key = first.put_once(path, sha, "image/png")
    assert key == f"s3://{s3.name}/inputs/{sha}.png"
    assert first.sent == 1 and s3.puts("inputs/") == 1
    body, meta = s3.get(f"inputs/{sha}.png")
    assert body == PNG and meta == {"sha256": sha}

    # Another run (a new Bucket), the same bytes in another folder under another name.
    again, same = _file(tmp_path / "elsewhere", "renamed.png", PNG)
    second = Bucket.from_url(s3.url("inputs/"))
    assert second.put_once(again, same, "image/png") == key
    assert second.sent == 0 and s3.puts("inputs/") == 1  # counted by the server
    assert s3.server.count("HEAD", f"/{s3.name}/inputs/") == 2

    other, other_sha = _file(tmp_path / "photos", "dog.jpg", b"\xff\xd8\xff" + b"dog" * 50)
    assert second.put_once(other, other_sha, "image/jpeg").endswith(f"/{other_sha}.jpg")
    assert s3.puts("inputs/") == 2
    assert s3.keys("inputs/") == sorted([f"inputs/{sha}.png", f"inputs/{other_sha}.jpg"])


def test_a_presigned_url_is_fetched_without_credentials(s3: S3Bucket, tmp_path: Path):
    path, sha = _file(tmp_path, "cat.png", PNG)
    bucket = Bucket.from_url(s3.url("in"))
    url = bucket.get_url(bucket.put_once(path, sha, "image/png"), 600)
    assert url.startswith(f"{s3.endpoint}/{s3.name}/in/{sha}.png?")
    assert "X-Amz-Expires=600" in url and "X-Amz-Signature=" in url
    got = requests.get(url, timeout=10)  # a plain GET: no cookies, no credentials
    assert got.status_code == 200 and got.content == PNG
    # Without the signature the object is private.
    assert requests.get(url.split("?")[0], timeout=10).status_code == 403


def test_an_expired_presigned_url_is_refused(s3: S3Bucket, tmp_path: Path):
    path, sha = _file(tmp_path, "cat.png", PNG)
    bucket = Bucket.from_url(s3.url("in"))
    url = bucket.get_url(bucket.put_once(path, sha, "image/png"), 1)
    deadline = time.monotonic() + 5
    status = 200
    while status == 200 and time.monotonic() < deadline:
        status = requests.get(url, timeout=10).status_code
        time.sleep(0.2)
    assert status == 403
    assert "Request has expired" in requests.get(url, timeout=10).text


def test_public_base_urls_are_not_signed(s3: S3Bucket, tmp_path: Path):
    path, sha = _file(tmp_path, "cat.png", PNG)
    bucket = Bucket.from_url(s3.url("in"), public_base="https://cdn.example/batchrun-inputs/")
    key = bucket.put_once(path, sha, "image/png")
    assert bucket.get_url(key, 600) == f"https://cdn.example/batchrun-inputs/{sha}.png"
    assert (
        bucket.get_url("runs/a b.png", 600) == "https://cdn.example/batchrun-inputs/runs/a%20b.png"
    )


def test_an_explicit_endpoint_url_wins_over_the_environment(
    s3: S3Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")  # nothing listens there
    path, sha = _file(tmp_path, "cat.png", PNG)
    bucket = Bucket.from_url(s3.url("in"), endpoint_url=s3.endpoint)
    bucket.put_once(path, sha, "image/png")
    assert s3.puts("in/") == 1


def test_mirror_skips_an_object_of_the_same_size_and_sha256(s3: S3Bucket, tmp_path: Path):
    path, sha = _file(tmp_path, "out.png", PNG)
    bucket = Bucket.from_url(s3.url("mirror"))
    assert bucket.mirror(path, "run/files/j1/out.png") is True
    assert bucket.mirror(path, "run/files/j1/out.png", sha256=sha) is False
    assert s3.puts("mirror/") == 1
    assert s3.get("mirror/run/files/j1/out.png") == (PNG, {"sha256": sha})
    path.write_bytes(PNG + b"changed")  # another file under the key: sent again
    assert bucket.mirror(path, "run/files/j1/out.png") is True
    assert s3.puts("mirror/") == 2
    assert bucket.url("run/files/j1/out.png") == f"s3://{s3.name}/mirror/run/files/j1/out.png"


def test_a_busy_store_is_retried_with_backoff(s3: S3Bucket, tmp_path: Path):
    path, _ = _file(tmp_path, "out.png", PNG)
    waits: list[float] = []
    bucket = Bucket.from_url(s3.url("m"))
    bucket.sleep = waits.append
    s3.server.fail("PUT", 2)  # two 503 SlowDown, then the store takes it
    assert bucket.mirror(path, "a.png") is True
    assert s3.keys("m/") == ["m/a.png"] and s3.puts("m/") == 3
    assert len(waits) == 2 and 0.25 <= waits[0] <= 0.5 and 0.5 <= waits[1] <= 1.0


def test_a_store_failing_for_good_gives_up_with_a_clean_message(s3: S3Bucket, tmp_path: Path):
    path, _ = _file(tmp_path, "out.png", PNG)
    bucket = Bucket.from_url(s3.url("m"))
    bucket.sleep = lambda s: None
    s3.server.fail("PUT", bk.ATTEMPTS)
    with pytest.raises(BucketError) as caught:
        bucket.mirror(path, "a.png")
    assert str(caught.value) == (
        f"s3://{s3.name}/m/a.png: upload failed: HTTP 503 SlowDown injected by the test "
        f"(after {bk.ATTEMPTS} attempts); the store is failing or busy: rerun later"
    )
    assert caught.value.exit_code == 1 and s3.keys("m/") == []


def test_no_such_bucket_names_the_bucket_key_and_fix(s3: S3Bucket, tmp_path: Path):
    path, sha = _file(tmp_path, "cat.png", PNG)
    bucket = Bucket.from_url("s3://no-such-bucket/in")
    with pytest.raises(BucketError) as caught:
        bucket.put_once(path, sha, "image/png")
    message = str(caught.value)
    assert message.startswith(f"s3://no-such-bucket/in/{sha}.png: upload failed: HTTP 404 ")
    assert "NoSuchBucket" in message and "create the bucket no-such-bucket" in message
    assert caught.value.bucket == "no-such-bucket" and caught.value.key == f"in/{sha}.png"
    _no_secret(message)


def test_an_unreachable_endpoint_is_retried_then_said(tmp_path: Path, s3: S3Bucket):
    path, _ = _file(tmp_path, "out.png", PNG)
    bucket = Bucket.from_url(s3.url("m"), endpoint_url="http://127.0.0.1:1")
    waits: list[float] = []
    bucket.sleep = waits.append
    with pytest.raises(BucketError) as caught:
        bucket.mirror(path, "a.png")
    message = str(caught.value)
    assert message.startswith(f"s3://{s3.name}/m/a.png: look up failed: Could not connect")
    assert message.endswith(
        f"(after {bk.ATTEMPTS} attempts); check the network and the endpoint (endpoint_url, "
        "AWS_ENDPOINT_URL), then rerun"
    )
    assert len(waits) == bk.ATTEMPTS - 1


def test_missing_credentials_are_said(s3: S3Bucket, tmp_path: Path, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    path, _ = _file(tmp_path, "out.png", PNG)
    with pytest.raises(BucketError) as caught:
        Bucket.from_url(s3.url("m")).mirror(path, "a.png")
    assert str(caught.value) == (
        f"s3://{s3.name}/m/a.png: look up failed: no AWS credentials found; give boto3 "
        "credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or "
        "~/.aws/credentials (its standard chain)"
    )


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("s3:/x", "it must start with s3://"),
        ("https://bucket.s3.amazonaws.com/in", "it must start with s3://"),
        ("s3://Bad_Bucket/in", "'Bad_Bucket' is not a bucket name"),
        ("s3://ok-bucket/a/../b", "has an empty, '.' or '..' part"),
        ("s3://", "'' is not a bucket name"),
    ],
)
def test_a_bad_location_is_a_clean_usage_error(url: str, said: str):
    with pytest.raises(BucketUrlError) as caught:
        Bucket.from_url(url)
    assert said in str(caught.value) and "write e.g. s3://my-bucket/batchrun" in str(caught.value)
    assert caught.value.exit_code == 2


def test_presigning_a_key_of_another_bucket_is_refused(s3: S3Bucket):
    bucket = Bucket.from_url(s3.url("in"))
    with pytest.raises(BucketUrlError, match="is not an object of s3://batchrun-test/in"):
        bucket.get_url("s3://other-bucket/in/x.png", 60)
    with pytest.raises(BucketError, match="a presigned URL lives 1 s to 7 days, not 0 s"):
        bucket.get_url("x.png", 0)


def test_no_message_carries_a_signature(s3: S3Bucket, tmp_path: Path):
    """Every failure a test can provoke, each message checked for a signature or a secret."""
    path, sha = _file(tmp_path, "cat.png", PNG)
    bucket = Bucket.from_url(s3.url("in"))
    url = bucket.get_url(bucket.put_once(path, sha, "image/png"), 600)
    assert "X-Amz-Signature=" in url  # there is one to leak
    messages = [bk.scrub(f"failed to fetch {url}: HTTP 403"), bk.scrub(f"GET {url}")]
    unreachable = Bucket.from_url(s3.url("x"), endpoint_url="http://127.0.0.1:1")
    unreachable.sleep = lambda s: None
    for call in (
        lambda: Bucket.from_url("s3://no-such-bucket/x").put_once(path, sha, "image/png"),
        lambda: Bucket.from_url(url),
        lambda: bucket.get_url(url, 60),
        lambda: unreachable.mirror(path, "a"),
    ):
        with pytest.raises(BucketError) as caught:
            call()
        messages.append(str(caught.value))
    assert len(messages) == 6
    for message in messages:
        _no_secret(message)
    assert messages[0] == f"failed to fetch {s3.endpoint}/{s3.name}/in/{sha}.png: HTTP 403"


def test_without_boto3_a_bucket_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 now raises ImportError
    with pytest.raises(MissingDependencyError) as caught:
        require_boto3()
    assert str(caught.value) == ("an s3:// bucket needs boto3: pip install 'runcomfy-batchrun[s3]'")
    assert caught.value.exit_code == 2 and caught.value.extra == "s3"
    with pytest.raises(MissingDependencyError):
        Bucket.from_url("s3://some-bucket/in")
