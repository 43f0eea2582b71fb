"""Hostile server (the simulator's malicious mode): output URLs that try to escape the run
folder, odd schemes, foreign hosts, a file over the cap, a body that stops early, a malformed
result and an HTTP 200 carrying error_code. Nothing is written outside the run folder, refused
URLs are reported, nothing over the cap or cut short is kept, and the run does not crash."""

from __future__ import annotations

import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote

import pytest
import requests

from testing.cli import batchrun_cmd

from .conftest import (
    TOKEN,
    SimFactory,
    clean_env,
    part_files,
    read_report,
    split_cell,
    sweep,
    tree_snapshot,
    write_manifest,
)

CAP = 100_000  # outputs.max_file_size; the simulator's "huge" file is 5 MB
ROUNDS = 2  # every malicious variant is met this many times
REFUSED = {"bare_path", "file_scheme", "ftp_scheme", "evil_host"}
ESCAPING = {"dotdot", "pct_dotdot", "backslash", "absolute"}
NOT_KEPT = {"huge", "truncated"}
BAD_RESULT = {"malformed_json", "error_200"}


def variant_of(base_url: str, request_id: str) -> str:
    """Which malicious variant the simulator gave a request (its X-Sim-Malicious header)."""
    r = requests.get(
        f"{base_url}/v1/requests/{request_id}/result",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    return r.headers.get("X-Sim-Malicious", "")


@pytest.mark.slow
def test_hostile_outputs_stay_inside_and_are_reported(
    simulator: SimFactory, tmp_path: Path
) -> None:
    from batchrun.simulator.malicious import VARIANTS

    sim = simulator("--malicious", "--seed", "5", "--workers", "0", "--run-time", "0.05")
    n_jobs = ROUNDS * len(VARIANTS)
    work = tmp_path / "work"
    manifest = write_manifest(
        work / "hostile.yaml",
        sweep(
            n_jobs,
            run={"max_in_flight": 4, "retries": 0, "job_timeout": "4s"},
            outputs={"max_file_size": CAP},
        ),
    )
    run_dir = work / "deep" / "run"
    before = tree_snapshot(tmp_path, exclude=run_dir)
    cmd = batchrun_cmd(
        "run", str(manifest), "--api-base", sim.base_url, "--run-dir", str(run_dir), "--quiet"
    )
    started = time.monotonic()
    res = subprocess.run(
        cmd, env=clean_env(), capture_output=True, text=True, timeout=180, cwd=work
    )
    elapsed = time.monotonic() - started
    out = res.stdout + res.stderr
    assert "Traceback" not in out, out[-3000:]
    assert res.returncode in (0, 1), f"exit {res.returncode}: {out[-3000:]}"

    # Nothing written outside the run folder.
    after = tree_snapshot(tmp_path, exclude=run_dir)
    # Making the run folder's own parents is the one change allowed outside it.
    allowed = {str(p.relative_to(tmp_path)) for p in run_dir.parents if tmp_path in p.parents}
    changed = {k for k in set(after) | set(before) if after.get(k) != before.get(k)}
    files_changed = {k for k in changed if k not in allowed}
    assert files_changed == set(), f"written outside the run folder: {files_changed}"
    for parent in run_dir.parents:
        assert not (parent / "escape.png").exists(), f"escaped to {parent}"
        if parent == Path(tmp_path).parent:
            break
    # Every file under the run folder stays under the cap; no .part is left.
    sizes = {p: p.stat().st_size for p in (run_dir / "files").rglob("*") if p.is_file()}
    assert all(size <= CAP for size in sizes.values()), {str(p): s for p, s in sizes.items()}
    assert part_files(run_dir) == []
    for p in run_dir.rglob("*"):
        assert run_dir.resolve() in p.resolve().parents, f"{p} resolves outside the run folder"

    rows = read_report(run_dir)
    assert len(rows) == n_jobs
    seen: dict[str, int] = {}
    outcome: dict[str, str] = {}
    for r in rows:
        assert r["request_id"], r
        variant = variant_of(sim.base_url, r["request_id"])
        assert variant in VARIANTS, (variant, r)
        seen[variant] = seen.get(variant, 0) + 1
        outcome[variant] = f"{r['status']}: {r['error'][:90]}"
        files = split_cell(r["output_files"])
        job_dir = run_dir / "files" / r["job_id"]
        kept = [p for p in job_dir.rglob("*") if p.is_file()] if job_dir.exists() else []
        if variant in REFUSED:
            assert "refused" in r["error"].lower(), f"{variant}: refusal not reported: {r}"
            assert files == [] and kept == [], f"{variant}: {files} {kept}"
        elif variant in NOT_KEPT:
            assert r["error"], f"{variant}: no error reported: {r}"
            assert files == [] and kept == [], f"{variant}: a bad body was kept: {kept}"
        elif variant in BAD_RESULT:
            assert r["status"] != "succeeded", f"{variant} counted as a success: {r}"
            assert r["error"], f"{variant}: no error reported: {r}"
        elif variant in ESCAPING:
            # Refused, or fetched under a sanitised name inside the job's folder.
            for name in files:
                path = (run_dir / name).resolve()
                assert path.parent == job_dir.resolve(), f"{variant}: {name}"
            assert files or "refused" in r["error"].lower(), f"{variant}: {r}"
    assert set(seen) == set(VARIANTS), f"variants met: {seen}"
    faults = sim.stats()["faults"]
    print(
        f"\nhostile server: jobs {n_jobs} in {elapsed:.1f}s, exit {res.returncode}, "
        f"variants met {seen}, faults injected {faults}, files kept {len(sizes)} "
        f"(largest {max(sizes.values(), default=0)} bytes, cap {CAP}), "
        f"written outside the run folder 0"
    )
    for variant, what in sorted(outcome.items()):
        print(f"  {variant:>14}: {what}")


# ---- redirects: every hop is checked like the first URL ----


class _Redirector(BaseHTTPRequestHandler):
    """/to?<location> answers 302 to <location>; anything else is a small file."""

    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        type(self).hits.append(self.path)
        if self.path.startswith("/to?"):
            self.send_response(302)
            self.send_header("Location", unquote(self.path[4:]))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"fine"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(
    "location",
    [
        "file:///etc/passwd",
        "ftp://127.0.0.1/escape.png",
        # Another loopback address: a host outside the allowed list that is still local, so a
        # broken check cannot reach beyond this machine.
        "http://127.0.0.2:{port}/escape.png",
        "http://user:pw@127.0.0.1:{port}/escape.png",
    ],
)
def test_redirect_to_a_refused_url_is_refused(location: str, tmp_path: Path) -> None:
    from batchrun.fetch.download import Downloader

    _Redirector.hits = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Redirector)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        port = server.server_address[1]
        target = quote(location.format(port=port), safe="")
        url = f"http://127.0.0.1:{port}/to?{target}"
        dl = Downloader(allow_hosts=["127.0.0.1"], retries=0, sleep=lambda s: None)
        [got] = dl.fetch(tmp_path / "run", "00112233aabb", [url])
    finally:
        server.shutdown()
        server.server_close()
    assert got.error and "refused" in got.error, got
    assert not got.name and not got.sha256
    assert _Redirector.hits == [f"/to?{target}"], "the refused redirect was followed"
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
