"""Run folders made directly in state.db, for commands that read one (cancel, status)."""

from __future__ import annotations

from pathlib import Path

from batchrun.plan.grid import Job
from batchrun.store import state as st
from batchrun.store.state import StateStore


def queued_run_folder(run_dir: Path, api_base: str, jobs: int = 2) -> None:
    """A run folder whose run against `api_base` left `jobs` requests (req-0, req-1...)
    queued on the server."""
    with StateStore.open(run_dir) as store:
        store.add_jobs(
            [
                Job(job_id=f"j{i}", model_id="m", inputs={"n": i}, vars={}, repeat=0, position=i)
                for i in range(jobs)
            ]
        )
        store.set_meta(api_base=api_base)
        for i in range(jobs):
            store.mark_submitting(f"j{i}")
            store.record_request_id(f"j{i}", f"req-{i}", 1.0)
            store.record_status(f"j{i}", st.QUEUED)
