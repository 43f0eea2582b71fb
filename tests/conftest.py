"""Shared fixtures: keep HOME, the token and run folders inside each test's tmp_path."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from testing import postgres
from testing.postgres import PgServer

if TYPE_CHECKING:
    from testing.s3server import S3Bucket, S3Server

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("RUNCOMFY_TOKEN", raising=False)
    monkeypatch.delenv("RUNCOMFY_MODEL_API_BASE", raising=False)
    monkeypatch.delenv("BATCHRUN_SCHEMA_DIR", raising=False)


@pytest.fixture
def repo() -> Path:
    """The source checkout (manifests/, schemas/)."""
    return REPO


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A real PostgreSQL server of this test process, started at first use (about 1 s).

    Without the server binaries the tests that need one are skipped, unless
    BATCHRUN_REQUIRE_POSTGRES=1 (CI) makes that a failure."""
    if not postgres.available():
        if os.environ.get("BATCHRUN_REQUIRE_POSTGRES") == "1":
            pytest.fail("PostgreSQL's initdb and pg_ctl are not installed")
        pytest.skip("PostgreSQL's initdb and pg_ctl are not installed")
    # Not under tmp_path_factory: as root the server runs as `postgres`, which must reach it.
    root = Path(tempfile.mkdtemp(prefix="batchrun-pg-"))
    server = postgres.start_server(root)
    try:
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """The URL of a new, empty database on the test process's server."""
    return pg_server.create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 in server mode on 127.0.0.1 (a free port), one per test process."""
    from testing.s3server import S3Server

    server = S3Server()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> S3Bucket:
    """A real S3 server (`s3_server`) emptied for this test, with one empty bucket,
    `batchrun-test`. For this test only, boto3 finds fake credentials and the server through
    its standard chain (AWS_ACCESS_KEY_ID..., AWS_ENDPOINT_URL), and no file of the user's."""
    from testing.s3server import FAKE_KEY_ID, FAKE_SECRET, S3Bucket

    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-role lookup
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    s3_server.reset()  # no bucket, object, count or fault of an earlier test
    bucket = S3Bucket(s3_server, "batchrun-test")
    bucket.client().create_bucket(Bucket=bucket.name)
    return bucket
