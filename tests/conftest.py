"""Shared fixtures: keep HOME, the token and run folders inside each test's tmp_path."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from testing import postgres
from testing.postgres import PgServer

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
