"""What a submit's answer means: a 200 with a request id is accepted when its error_code is
absent, null, 0 or empty; with a real error_code its request id is kept and read (it may run
and be billed), never dropped for a failure that --retry-failed would pay for again. A
refusal that repeats for every job of a model stops that model after the first."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

import pytest

from batchrun.store import state as st

from .conftest import MODEL, SimFactory, read_report, run_cli, sweep, write_manifest
from .hostile_api import Call, HostileApi, Reply, manifest_for, run_here


@pytest.mark.parametrize("code", [None, 0, "", "0"], ids=["null", "zero", "empty", "zero-text"])
def test_a_200_with_a_request_id_and_no_real_error_code_is_accepted(
    tmp_path: Path, code: object
) -> None:
    def answer(call: Call) -> Reply | None:
        if call.kind == "submit":
            return Reply(body={"request_id": f"r{call.n}", "error_code": code})
        return None

    manifest_for(tmp_path, 2)
    with HostileApi(answer) as api:
        exit_code, _, rows = run_here(tmp_path, api)
    assert exit_code == 0
    assert [r.status for r in rows] == [st.SUCCEEDED, st.SUCCEEDED]
    assert sorted(r.request_id or "" for r in rows) == ["r1", "r2"]
    assert api.calls["submit"] == 2


def test_a_200_with_a_request_id_and_an_error_code_is_kept_and_read(tmp_path: Path) -> None:
    def answer(call: Call) -> Reply | None:
        if call.kind == "submit":
            body = {"request_id": f"r{call.n}", "error_code": 500001, "error_message": "odd"}
            return Reply(body=body)
        return None

    manifest_for(tmp_path, 1)
    with HostileApi(answer) as api:
        exit_code, _, rows = run_here(tmp_path, api)
        assert [(r.status, r.request_id) for r in rows] == [(st.SUCCEEDED, "r1")]
        assert api.calls["result"] >= 1  # the paid request was read
        again, _, rows = run_here(tmp_path, api, retry_failed=True)
    assert api.calls["submit"] == 1  # nothing to pay for again
    assert (exit_code, again) == (0, 0)


@pytest.mark.parametrize("error_code", [None, 500001], ids=["accepted", "kept-with-error-code"])
@pytest.mark.parametrize("request_id", [".", ".."])
def test_a_dot_segment_request_id_is_never_put_in_a_url(
    tmp_path: Path, request_id: str, error_code: int | None
) -> None:
    """`/v1/requests/../result` would read another path: such a request id is not used. The
    submit may have been billed all the same: the job is unknown, not failed, not sent again."""

    def answer(call: Call) -> Reply | None:
        if call.kind == "submit":
            return Reply(body={"request_id": request_id, "error_code": error_code})
        return None

    manifest_for(tmp_path, 1)
    with HostileApi(answer) as api:
        exit_code, _, rows = run_here(tmp_path, api)
        again, _, rows = run_here(tmp_path, api)
    assert [r.status for r in rows] == [st.UNKNOWN]
    assert exit_code == again == 1
    assert [c.kind for c in api.log] == ["submit"]  # one submit, nothing read, nothing resent


@pytest.mark.parametrize("request_id", ["../../models/acme/x", "a/b", "r1?x=1#f", "r%2F1"])
def test_a_request_id_is_one_escaped_path_segment_of_its_reads(
    tmp_path: Path, request_id: str
) -> None:
    """A request id with a slash, a query or an escape in it reads its own request, never
    another endpoint: it goes into the URL as one escaped segment."""

    def answer(call: Call) -> Reply | None:
        if call.kind == "submit":
            return Reply(body={"request_id": request_id})
        if call.kind == "result":
            return Reply(body={"request_id": request_id, "status": "succeeded", "output": {}})
        return None

    manifest_for(tmp_path, 1)
    with HostileApi(answer) as api:
        exit_code, _, rows = run_here(tmp_path, api)
    assert [(r.status, r.request_id) for r in rows] == [(st.SUCCEEDED, request_id)]
    reads = [c.path.split("?")[0] for c in api.log if c.kind != "submit"]  # less the query
    assert reads and exit_code == 0
    for path in reads:
        parts = path.split("/")
        assert parts[:3] == ["", "v1", "requests"] and parts[4] in ("result", "status"), path
        assert unquote(parts[3]) == request_id and len(parts) == 5, path


def test_a_model_refused_for_every_job_stops_after_its_first_submit(
    tmp_path: Path, simulator: SimFactory
) -> None:
    sim = simulator("--run-time", "0.05", "--workers", "0")
    data = sweep(4, outputs={"download": False})
    typo = "acme/imaginary-model/v1"  # no schema here, near none: only the API can refuse it
    data["models"].append({"id": typo, "inputs": dict(data["models"][0]["inputs"])})
    manifest = write_manifest(tmp_path / "sweep.yaml", data)
    result = run_cli(
        "run", str(manifest), "--api-base", sim.base_url, "--run-dir", str(tmp_path / "run")
    )
    assert result.returncode == 1, result.stderr
    stats = sim.stats()
    assert stats["calls"]["submit"] == 5  # 4 of the good model, 1 of the typo
    rows = read_report(tmp_path / "run")
    assert sorted(r["status"] for r in rows if r["model_id"] == MODEL) == ["succeeded"] * 4
    assert (
        sorted(r["status"] for r in rows if r["model_id"] == typo) == ["failed"] + ["pending"] * 3
    )
    last = result.stderr.splitlines()[-1]
    assert last.startswith(
        f"model {typo} refused: POST /v1/models/{typo} HTTP 400 error_code 400001"
    )
    assert last.endswith(
        "its other 3 jobs not sent (they stay pending). Check the model id in the manifest "
        "(batchrun models list --search acme lists the catalog's), then rerun the "
        "same command"
    )
    assert "--retry-failed" not in result.stderr  # a retry would be refused again
