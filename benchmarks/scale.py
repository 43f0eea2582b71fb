"""The scale sections: plan of a big sweep, a state.db of 100,000 jobs (build, resume,
report), and the cost of one state transition at 1,000 vs 100,000 jobs. The workers run in a
child process (`run.py --worker ...`) so their time and memory are their own."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from harness import (
    MODEL,
    RUN_PY,
    Bench,
    batchrun_cmd,
    log,
    run_measured,
    sim_delta,
    simulator,
    token_env,
)


def write_scale_manifest(path: Path, *, jobs: int, out_dir: Path) -> Path:
    """`jobs` jobs as the product of two template vars: a small file that expands big."""
    a = 250
    b = jobs // a
    doc = {
        "version": 1,
        "name": "scale",
        "run": {"max_jobs": jobs * 2},
        "outputs": {"dir": str(out_dir), "download": False},
        "vars": {"a": list(range(a)), "b": list(range(b))},
        "models": [{"id": MODEL, "inputs": {"prompt": "scale prompt {a}-{b}"}}],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def bench_plan(b: Bench) -> dict[str, Any]:
    """`batchrun plan --json` and `batchrun plan` (the table) of sweeps of each of
    `plan_sizes` jobs: wall time, CPU and peak RSS of the whole command."""
    out: dict[str, Any] = {"sizes": list(b.params.plan_sizes), "rc": 0}
    for n in b.params.plan_sizes:
        manifest = write_scale_manifest(
            b.tmp / f"plan-{n}.yaml", jobs=n, out_dir=b.tmp / f"plan-{n}-run"
        )
        for kind, extra in (("json", ["--json"]), ("table", [])):
            log(f"scale: plan {' '.join(extra)} of {n:,} jobs".replace("  ", " "))
            m = run_measured(
                batchrun_cmd("plan", str(manifest), *extra, profile=b.profile(f"plan-{kind}-{n}")),
                timeout=b.params.cap_s,
            )
            listed = _listed(m.stdout, kind)
            row: dict[str, Any] = {
                "rc": m.rc,
                "timed_out": m.timed_out,
                "jobs_listed": listed,
                "wall_s": round(m.wall_s, 3),
                "cpu_s": round(m.cpu_s, 3),
                "maxrss_mb": round(m.maxrss_mb, 1),
                "stdout_mb": round(len(m.stdout) / 2**20, 1),
            }
            if m.rc != 0:
                row["stderr_tail"] = m.stderr[-2000:]
                out["rc"] = out["rc"] or m.rc
            out[f"{kind}_{n}"] = row
            log(f"  {m.wall_s:.2f} s, {m.maxrss_mb:.0f} MB RSS, {listed:,} jobs, rc {m.rc}")
    return out


def _listed(stdout: str, kind: str) -> int:
    """Jobs in the output: JSON lines, or the count the table's first line states."""
    if kind == "json":
        return stdout.count('{"job_id"')
    first = stdout.split("\n", 1)[0]  # `NAME: 1000000 jobs -> DIR`
    try:
        return int(first.split(": ", 1)[1].split(" ", 1)[0])
    except (IndexError, ValueError):
        return 0


def bench_state(b: Bench) -> dict[str, Any]:
    """state.db of `scale_jobs` jobs: creation; then a resume where every job succeeded (after
    the run that wrote the reports), `status`, `report` and `compare` of that folder."""
    n = b.params.scale_jobs
    run_dir = b.tmp / "scale-run"
    manifest = b.tmp / "scale.yaml"
    if not manifest.exists():
        write_scale_manifest(manifest, jobs=n, out_dir=run_dir)
    log(f"scale: state.db of {n} jobs, built with StateStore.add_jobs, all marked succeeded")
    with simulator(run_time=1.0, rate_limit=None, log_path=b.tmp / "sim-scale.log") as sim:
        cmd = [
            sys.executable, str(RUN_PY), "--worker", "state-build", str(manifest), str(run_dir),
            sim.url,
        ]  # fmt: skip
        m = run_measured(cmd, timeout=600)
        if m.rc != 0:
            raise RuntimeError(f"state-build worker failed:\n{m.stderr[-3000:]}")
        built = json.loads(m.stdout.strip().splitlines()[-1])
        log(f"  add_jobs {built['add_jobs_s']} s, {built['db_mb']} MB; resume with `batchrun run`")
        before = sim.stats()
        run = ("run", str(manifest), "--api-base", sim.url, "--run-dir", str(run_dir), "--quiet")
        # The first run after the build writes the reports (and records the plan's digest),
        # as the run that finished the jobs would have: the resume measured is the next one.
        first = run_measured(batchrun_cmd(*run), timeout=b.params.cap_s, env=token_env())
        log(f"  first run {first.wall_s:.2f} s (writes the reports); the resume")
        cmd = batchrun_cmd(*run, profile=b.profile("resume"))
        resume = run_measured(cmd, timeout=b.params.cap_s, env=token_env())
        counts = sim_delta(before, sim.stats())
    log(f"  resume {resume.wall_s:.2f} s (rc {resume.rc}); `batchrun status`, `report`, `compare`")
    status = run_measured(batchrun_cmd("status", str(run_dir)), timeout=b.params.cap_s)
    # The reports the run wrote are current: `report` leaves them. Then a report in another
    # grid (rows b, columns a): report.html made again (its 200 pages), report.csv and
    # summary.json current. Then, summary.json touched (as if edited), every file made again.
    report = run_measured(batchrun_cmd("report", str(run_dir)), timeout=b.params.cap_s)
    regrid = ("report", str(run_dir), "--rows", "b", "--cols", "a")
    grid = run_measured(batchrun_cmd(*regrid, profile=b.profile("grid")), timeout=b.params.cap_s)
    touched = (run_dir / "summary.json").stat().st_mtime_ns + 10**9
    os.utime(run_dir / "summary.json", ns=(touched, touched))
    rewrite = run_measured(
        batchrun_cmd("report", str(run_dir), profile=b.profile("report")), timeout=b.params.cap_s
    )
    compare = run_measured(
        batchrun_cmd("compare", str(run_dir), str(run_dir)), timeout=b.params.cap_s
    )
    size = (run_dir / "state.db").stat().st_size
    out = {
        "jobs": n,
        # A step killed at the cap still gives a figure (at least the cap): not an error.
        "rc": max(
            (m.rc for m in (first, resume, status, report, grid, rewrite) if not m.timed_out),
            default=0,
        ),
        "resume_timed_out": resume.timed_out,
        "report_timed_out": report.timed_out,
        **built,
        "first_run_wall_s": round(first.wall_s, 3),
        "resume_wall_s": round(resume.wall_s, 3),
        "resume_cpu_s": round(resume.cpu_s, 3),
        "resume_maxrss_mb": round(resume.maxrss_mb, 1),
        "resume_api_calls": counts.api_calls,
        "status_wall_s": round(status.wall_s, 3),
        "status_cpu_s": round(status.cpu_s, 3),
        "status_maxrss_mb": round(status.maxrss_mb, 1),
        "report_wall_s": round(report.wall_s, 3),
        "report_cpu_s": round(report.cpu_s, 3),
        "report_maxrss_mb": round(report.maxrss_mb, 1),
        "report_grid_wall_s": round(grid.wall_s, 3),
        "report_grid_cpu_s": round(grid.cpu_s, 3),
        "report_grid_maxrss_mb": round(grid.maxrss_mb, 1),
        "report_rewrite_wall_s": round(rewrite.wall_s, 3),
        "report_rewrite_cpu_s": round(rewrite.cpu_s, 3),
        "report_rewrite_maxrss_mb": round(rewrite.maxrss_mb, 1),
        # report.html is paged: what a browser opens first, and how many pages there are
        "report_html_first_kb": round((run_dir / "report.html").stat().st_size / 1024, 1),
        "report_html_pages": len(list(run_dir.glob("report*.html"))),
        # compare exits 0 or 1 (a regression); a folder against itself: 0
        "compare_wall_s": round(compare.wall_s, 3),
        "compare_cpu_s": round(compare.cpu_s, 3),
        "compare_maxrss_mb": round(compare.maxrss_mb, 1),
        "state_bytes_per_job": round(size / n),
    }
    steps = (
        ("resume", resume), ("status", status), ("report", report), ("grid", grid),
        ("rewrite", rewrite),
    )  # fmt: skip
    for name, proc in steps:
        if proc.rc != 0 and not proc.timed_out:
            out[f"{name}_stderr_tail"] = proc.stderr[-2000:]
    log(
        f"  report {report.wall_s:.2f} s (rc {report.rc}), another grid {grid.wall_s:.2f} s, "
        f"every file rewritten {rewrite.wall_s:.2f} s"
    )
    out.update(real_run_bytes(b))
    return out


REAL_RUN_JOBS = 10_000  # the real run whose state.db is measured (about a minute)


def real_run_bytes(b: Bench) -> dict[str, Any]:
    """state.db bytes a job of a real finished run without files (`run --simulate`, download
    off: each job's row and its ledger attempt), its WAL checkpointed; per table and index
    where SQLite has dbstat."""
    import sqlite3

    n = REAL_RUN_JOBS
    run_dir = b.tmp / "bytes-run"
    manifest = write_scale_manifest(b.tmp / "bytes.yaml", jobs=n, out_dir=run_dir)
    doc = yaml.safe_load(manifest.read_text())
    doc["run"].update(rate_limit="100000/s", max_in_flight=400)
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
    log(f"scale: state.db of a real run of {n:,} jobs (--simulate, no files)")
    sim = ("--sim", "concurrency=0", "--sim", "run_time=0.01")
    m = run_measured(
        batchrun_cmd("run", str(manifest), "--simulate", "--quiet", *sim), timeout=b.params.cap_s
    )
    out: dict[str, Any] = {"real_run_jobs": n, "real_run_rc": m.rc}
    db = run_dir / "state.db"
    if m.rc != 0 or not db.exists():
        out["real_run_stderr_tail"] = m.stderr[-2000:]
        return out
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    try:
        parts = conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name").fetchall()
        out["real_run_bytes_by_table"] = {k: round(v / n, 1) for k, v in parts if v / n >= 1}
    except sqlite3.OperationalError:  # an SQLite built without dbstat
        pass
    conn.close()
    out["real_run_bytes_per_job"] = round(db.stat().st_size / n)
    log(f"  {out['real_run_bytes_per_job']} bytes a job ({m.wall_s:.0f} s)")
    return out


def bench_transitions(b: Bench) -> dict[str, Any]:
    """One job's state transitions on a 1,000-job vs a 100,000-job state.db: O(1) or not."""
    p = b.params
    out: dict[str, Any] = {"transitions_per_size": p.transitions * 4}
    for size in p.transition_sizes:
        log(f"scale: {p.transitions} jobs x 4 transitions on a state.db of {size:,} jobs")
        folder = b.tmp / f"transitions-{size}"
        cmd = [
            sys.executable, str(RUN_PY), "--worker", "transitions", str(folder), str(size),
            str(p.transitions),
        ]  # fmt: skip
        m = run_measured(cmd, timeout=600)
        if m.rc != 0:
            raise RuntimeError(f"transitions worker failed:\n{m.stderr[-3000:]}")
        timing = json.loads(m.stdout.strip().splitlines()[-1])
        out[f"at_{size}"] = timing
        log(f"  median {timing['median_us']} us, mean {timing['mean_us']} us per transition")
    small, big = (out[f"at_{s}"] for s in p.transition_sizes[:2])
    out["ratio"] = round(big["median_us"] / small["median_us"], 3)
    out["ratio_mean"] = round(big["mean_us"] / small["mean_us"], 3)
    out["rc"] = 0
    return out


def worker_state_build(manifest: str, run_dir: str, api_base: str) -> dict[str, Any]:
    """Expand the manifest, add its jobs to a new state.db, mark every job succeeded with its
    attempt in the ledger, and set the meta a finished `batchrun run` leaves (so the resume
    sees an unchanged manifest)."""
    from batchrun.plan.build import build_plan
    from batchrun.store.state import StateStore

    t0 = time.perf_counter()
    plan = build_plan(manifest)
    t1 = time.perf_counter()
    with StateStore.open(run_dir) as store:
        store.add_jobs(plan.jobs)
        t2 = time.perf_counter()
        # A finished run, made in one transaction (100,000 single transitions would measure
        # the transitions, which bench_transitions does): the columns a real run fills in,
        # each job's output as the simulator gives it for this model (an object, its own URL).
        now = time.time()
        with store._tx() as conn:  # noqa: SLF001 - a benchmark fixture, not engine code
            conn.execute(
                "UPDATE jobs SET status = 'succeeded', request_id = 'req-' || job_id, "
                "attempts = 1, submitted_at = ?, started_at = ?, finished_at = ?, "
                "cost_usd = 0.01, output = json_object('image', ? || job_id || '/image_0.png')",
                (now - 3, now - 2, now, f"{api_base}/files/req-"),
            )
            # and each job's attempt in the ledger, as a real run records it
            conn.execute("INSERT OR IGNORE INTO names (name) VALUES ('')")
            conn.execute(
                "INSERT INTO attempts (job_id, attempt, model_id, origin, sent_at, answer, "
                "request_id, estimate_usd, actual_usd, finished_at) SELECT job_id, 1, model_id, "
                "(SELECT ref FROM names WHERE name = ''), ?, 'accepted', '', '0.01', '0.01', ? "
                "FROM jobs",
                (round(now - 3), round(now)),
            )
        t3 = time.perf_counter()
        m = plan.manifest
        store.set_meta(
            name=m.name, manifest=str(m.path), manifest_sha256=m.sha256, api_base=api_base
        )
    db = Path(run_dir) / "state.db"
    size = sum(f.stat().st_size for f in db.parent.glob("state.db*"))
    return {
        "jobs_added": len(plan.jobs),
        "expand_s": round(t1 - t0, 3),
        "add_jobs_s": round(t2 - t1, 3),
        "mark_succeeded_s": round(t3 - t2, 3),
        "db_mb": round(size / 2**20, 2),
        "db_file_mb": round(db.stat().st_size / 2**20, 2),
    }


def worker_transitions(folder: str, size: int, count: int) -> dict[str, Any]:
    """Time `count` jobs through submitting -> queued -> running -> succeeded, one by one."""
    import statistics

    from batchrun.plan.grid import Job
    from batchrun.store import state as st

    jobs = [
        Job(f"{i:012x}", MODEL, {"prompt": f"transition prompt {i}"}, {}, 0, i) for i in range(size)
    ]
    timings: list[float] = []
    cpu: list[float] = []
    with st.StateStore.open(folder) as store:
        store.add_jobs(jobs)
        step = max(1, size // count)  # spread over the whole table
        for job in jobs[::step][:count]:
            jid = job.job_id
            now = time.time()
            steps: list[tuple[Callable[..., object], tuple[Any, ...], dict[str, Any]]] = [
                (store.mark_submitting, (jid,), {}),
                (store.record_request_id, (jid, f"req-{jid}", now), {}),
                (store.record_status, (jid, st.RUNNING), {"started_at": now}),
                (store.record_result, (jid, st.SUCCEEDED), {"finished_at": now, "output": "x"}),
            ]
            for fn, fn_args, fn_kwargs in steps:
                t, c = time.perf_counter(), time.thread_time()
                fn(*fn_args, **fn_kwargs)
                timings.append(time.perf_counter() - t)
                cpu.append(time.thread_time() - c)
    return {
        "db_jobs": size,
        "transitions": len(timings),
        "median_us": round(1e6 * statistics.median(timings), 1),
        "mean_us": round(1e6 * statistics.fmean(timings), 1),
        "p95_us": round(1e6 * sorted(timings)[int(0.95 * len(timings))], 1),
        "cpu_mean_us": round(1e6 * statistics.fmean(cpu), 1),
    }


def bench_big_run(b: Bench) -> dict[str, Any]:
    """A run of `big_run_jobs` jobs against `batchrun simulate` in another process, as a user
    runs it (download off): its peak RSS over the preparation of every job (the plan checked
    and added to state.db) and until `big_run_done` jobs are done; then the resume of a
    folder of `big_run_jobs` finished jobs (built as the state section builds its own)."""
    p = b.params
    n, wanted = p.big_run_jobs, p.big_run_done
    run_dir = b.tmp / "big-run"
    manifest = write_scale_manifest(b.tmp / "big.yaml", jobs=n, out_dir=run_dir)
    doc = yaml.safe_load(manifest.read_text())
    doc["run"].update(rate_limit="2000/s", max_in_flight=300, poll_interval="50ms")
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
    log(f"big run: {n:,} jobs against a simulator process, until {wanted:,} are done")
    out: dict[str, Any] = {"jobs": n, "done_target": wanted, "rc": 0}
    with simulator(run_time=0.05, rate_limit=None, log_path=b.tmp / "sim-big.log") as sim:
        cmd = batchrun_cmd("run", str(manifest), "--api-base", sim.url, "--quiet")
        out.update(_watch_run(cmd, run_dir, wanted, cap_s=max(p.cap_s, 1200.0)))
    log(
        f"  prepared in {out['prepare_s']} s (peak {out['prepare_maxrss_mb']} MB); "
        f"{out['done']:,} done in {out['run_s']} s, peak {out['maxrss_mb']} MB"
    )
    resume_dir, resume_manifest = b.tmp / "big-resume", b.tmp / "big-resume.yaml"
    write_scale_manifest(resume_manifest, jobs=n, out_dir=resume_dir)
    with simulator(run_time=1.0, rate_limit=None, log_path=b.tmp / "sim-big2.log") as sim:
        build = [sys.executable, str(RUN_PY), "--worker", "state-build", str(resume_manifest),
                 str(resume_dir), sim.url]  # fmt: skip
        built = run_measured(build, timeout=1200)
        if built.rc != 0:
            raise RuntimeError(f"state-build worker failed:\n{built.stderr[-3000:]}")
        run = ("run", str(resume_manifest), "--api-base", sim.url, "--quiet")
        first = run_measured(batchrun_cmd(*run), timeout=1200, env=token_env())
        resume = run_measured(batchrun_cmd(*run), timeout=p.cap_s, env=token_env())
    out.update(
        resume_first_wall_s=round(first.wall_s, 2),  # writes the reports and the digest
        resume_wall_s=round(resume.wall_s, 3),
        resume_maxrss_mb=round(resume.maxrss_mb, 1),
        rc=max(out["rc"], 0 if resume.timed_out else resume.rc),
    )
    log(f"  resume of {n:,} finished jobs {out['resume_wall_s']} s, {out['resume_maxrss_mb']} MB")
    return out


def _watch_run(cmd: list[str], run_dir: Path, wanted: int, *, cap_s: float) -> dict[str, Any]:
    """Start `cmd` (a run), read its peak RSS and its state.db every half second until
    `wanted` jobs are done (or `cap_s`), then stop it: the figures."""
    import signal
    import sqlite3
    import subprocess

    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=token_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    prepared_at, prepare_kb, peak_kb, done = None, 0, 0, 0
    try:
        while proc.poll() is None and time.monotonic() - start < cap_s:
            time.sleep(0.5)
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak_kb = int(line.split()[1])
            if not (run_dir / "state.db").exists():
                continue
            with contextlib.closing(sqlite3.connect(run_dir / "state.db", timeout=5)) as db:
                try:
                    sent, done = db.execute(
                        "SELECT COUNT(request_id), SUM(status = 'succeeded') FROM jobs"
                    ).fetchone()
                except sqlite3.OperationalError:  # the tables are being made
                    continue
            done = done or 0
            if prepared_at is None and sent:
                prepared_at, prepare_kb = time.monotonic() - start, peak_kb
            if done >= wanted:
                break
        elapsed = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
    err = proc.stderr.read().decode() if proc.stderr else ""
    prepare_s = prepared_at if prepared_at is not None else elapsed
    return {
        "rc": 0 if done >= wanted else 1,
        "prepare_s": round(prepare_s, 1),
        "prepare_maxrss_mb": round(prepare_kb / 1024, 1),
        "done": int(done),
        "run_s": round(elapsed - prepare_s, 1),
        "jobs_per_s": round(done / max(elapsed - prepare_s, 1e-9), 1),
        "maxrss_mb": round(peak_kb / 1024, 1),
        **({"stderr_tail": err[-2000:]} if "Traceback" in err else {}),
    }
