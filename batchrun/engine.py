"""`batchrun run`: open the run folder, resume what is there, run the batch, write the report."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from batchrun import netenv, state as st
from batchrun.api_answers import AMBIGUOUS_SUBMIT
from batchrun.client import Client
from batchrun.download import Downloader
from batchrun.errors import ApiError
from batchrun.output_urls import collect_urls, default_allow_hosts, output_keys
from batchrun.plan import Plan
from batchrun.progress import Progress, describe
from batchrun.ratelimit import RateLimiter
from batchrun.scheduler import Scheduler
from batchrun.state import JobRow, OutputFile, StateStore

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130
# Calls leave at the configured rate but arrive with network jitter; 2% below it keeps every
# 1-second window the server sees within rate + 1.
RATE_HEADROOM = 0.98


@dataclass
class RunOptions:
    """How to run a plan: where, against which API, and what to do with earlier attempts."""

    api_base: str
    token: str
    run_dir: Path | None = None  # default: the manifest's outputs.dir
    retry_failed: bool = False
    resubmit_unknown: bool = False
    cancel_on_interrupt: bool = False
    quiet: bool = False
    resume_command: str = ""  # printed on Ctrl-C; the CLI fills it in
    workers: int = 16
    download_workers: int = 4
    session: requests.Session | None = None
    handle_signals: bool = True  # install the Ctrl-C handler (main thread only)
    echo: Callable[[str], None] = field(default=lambda text: print(text, file=sys.stderr))
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep


def run_batch(plan: Plan, options: RunOptions) -> int:
    """Run (or resume) the plan's batch; returns the exit code (0, 1 or 130).

    Raises RunFolderInUse when another run holds the folder, and AuthError (exit 3) after
    saving state and the report when the API refuses the token.
    """
    run_dir = Path(options.run_dir or plan.manifest.outputs.dir)
    with StateStore.open(run_dir) as store:
        return _Run(plan, options, run_dir, store).execute()


class _Run:
    def __init__(self, plan: Plan, options: RunOptions, run_dir: Path, store: StateStore):
        self.plan = plan
        self.opts = options
        self.run_dir = run_dir
        self.store = store
        self.echo = options.echo
        self.started = options.clock()

    def execute(self) -> int:
        manifest = self.plan.manifest
        self._prepare()
        mark = self.store.change_mark()  # before the read: a write during it shows too
        every = self.store.rows()
        rows = [r for r in every if r.in_manifest]
        client = Client(self.opts.api_base, self.opts.token, session=self.opts.session)
        rate = manifest.run.rate_limit
        limiter = RateLimiter(
            None if rate is None else rate * RATE_HEADROOM,
            clock=self.opts.clock,
            sleep=self.opts.sleep,
        )
        progress = Progress(len(rows), quiet=self.opts.quiet, clock=self.opts.clock)
        sched = Scheduler(
            store=self.store,
            client=client,
            limiter=limiter,
            run=manifest.run,
            jobs=rows,
            fetch=self._fetcher() if manifest.outputs.download else None,
            progress=progress,
            workers=self.opts.workers,
            download_workers=self.opts.download_workers,
            clock=self.opts.clock,
            wall=self.opts.wall,
        )
        sched.add_pending(r.job_id for r in rows if r.status == st.PENDING)
        for row in rows:
            if row.status in (st.QUEUED, st.RUNNING) and row.request_id:
                sched.add_flight(row)
            elif (
                row.status == st.SUCCEEDED
                and manifest.outputs.download
                and _needs_files(self.run_dir, row)
            ):
                sched.add_download(row.job_id)
        restore = self._install_interrupt(sched)
        try:
            sched.run()
        finally:
            restore()
            progress.close()
        if sched.stopped and self.opts.cancel_on_interrupt:
            self._cancel_queued(sched, client, limiter)
        # Nothing written since the read (nothing to do, say): the rows read are the state.
        unchanged = self.store.change_mark() == mark
        final = every if unchanged else self.store.rows()
        self._write_report(final, client, limiter, interrupted=sched.stopped)
        client.close()
        if sched.stopped:
            still = len(sched.flights)
            self.echo(
                f"interrupted: {still} request{'s' if still != 1 else ''} still on the server; "
                f"resume with: {self.opts.resume_command or 'batchrun run MANIFEST'}"
            )
            return EXIT_INTERRUPTED
        if sched.fatal is not None and getattr(sched.fatal, "exit_code", 1) != 1:
            raise sched.fatal
        return self._conclude([r for r in final if r.in_manifest], sched)

    # ---- before the loop ----------------------------------------------------------------

    def _prepare(self) -> None:
        manifest = self.plan.manifest
        meta = self.store.meta()
        fresh = "manifest_sha256" not in meta
        added, removed = self.store.add_jobs(self.plan.jobs)
        if fresh:
            self.store.set_meta(
                name=manifest.name,
                manifest=str(manifest.path),
                manifest_sha256=manifest.sha256,
                api_base=self.opts.api_base,
            )
        else:
            if meta["manifest_sha256"] != manifest.sha256:
                self.echo(
                    f"manifest changed since {self.run_dir} was made: {added} new job(s) added, "
                    f"finished jobs kept, {removed} job(s) no longer in the manifest are left "
                    "out of the report"
                )
                self.store.set_meta(manifest_sha256=manifest.sha256)
            if meta.get("api_base") != self.opts.api_base:
                counts = self.store.counts()
                in_flight = counts.get(st.QUEUED, 0) + counts.get(st.RUNNING, 0)
                if in_flight:
                    self.echo(
                        f"note: {in_flight} request(s) in flight were made against "
                        f"{meta.get('api_base')}; now asking {self.opts.api_base}"
                    )
                self.store.set_meta(api_base=self.opts.api_base)
        ambiguous = self.store.submitting_to_unknown(
            AMBIGUOUS_SUBMIT.format(why="the previous run stopped while submitting")
        )
        if ambiguous:
            self.echo(
                f"{ambiguous} job(s) were being submitted when the last run stopped; "
                "left as unknown (rerun with --resubmit-unknown to submit them again)"
            )
        if self.opts.resubmit_unknown:
            self.store.requeue([st.UNKNOWN])
        if self.opts.retry_failed:
            self.store.requeue([st.FAILED, st.TIMED_OUT])

    def _fetcher(self) -> Callable[[str, Any, list[OutputFile]], list[OutputFile]]:
        outputs = self.plan.manifest.outputs
        hosts = default_allow_hosts(self.opts.api_base) + list(outputs.allow_hosts)
        downloader = Downloader(allow_hosts=hosts, max_file_bytes=outputs.max_file_bytes)

        def fetch(job_id: str, output: Any, existing: list[OutputFile]) -> list[OutputFile]:
            urls = collect_urls(output)
            return downloader.fetch(
                self.run_dir, job_id, urls, existing=existing, keys=output_keys(output)
            )

        return fetch

    def _install_interrupt(self, sched: Scheduler) -> Callable[[], None]:
        main = threading.current_thread() is threading.main_thread()
        if not (self.opts.handle_signals and main):
            return lambda: None

        def on_signal(signum: int, frame: object) -> None:
            # Runs between two bytecodes of the scheduler: only set a flag and write to the fd
            # (print() or a queue here could deadlock on a lock the interrupted code holds).
            if sched.stopped:
                _say("\ninterrupted again: exiting now (state is saved)\n")
                os._exit(EXIT_INTERRUPTED)
            sched.request_stop()
            # Answers and files still arriving stop being read (a trickling server must not
            # hold the run); a submit cut off so is left unknown, never sent again blindly.
            netenv.interrupt()
            _say(
                "\ninterrupting: no new submits; saving what came back "
                "(Ctrl-C again to quit at once)\n"
            )

        # SIGTERM (kill, a service manager) and SIGHUP (a closed terminal, a dropped ssh
        # session) end a run as Ctrl-C does: state saved, report written, exit 130.
        signals = [signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)]
        netenv.interrupt(False)
        previous = {sig: signal.signal(sig, on_signal) for sig in signals if sig is not None}

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            netenv.interrupt(False)

        return restore

    # ---- after the loop -----------------------------------------------------------------

    def _cancel_queued(self, sched: Scheduler, client: Client, limiter: RateLimiter) -> None:
        """--cancel-on-interrupt: cancel what is still queued (running jobs cannot be)."""
        for flight in list(sched.flights.values()):
            if flight.status != st.QUEUED:
                continue
            limiter.acquire()
            try:
                outcome = client.cancel(flight.request_id).get("outcome")
            except ApiError as exc:
                self.echo(f"could not cancel job {flight.job_id}: {exc}")
                continue
            if outcome == "cancelled":
                sched.jobs.record_result(
                    flight.job_id,
                    st.CANCELLED,
                    finished_at=self.opts.wall(),
                    error="cancelled on interrupt",
                )
                del sched.flights[flight.job_id]

    def _write_report(
        self, rows: list[JobRow], client: Client, limiter: RateLimiter, *, interrupted: bool
    ) -> None:
        import json

        from batchrun.report import write_report

        calls = dict(sorted(client.calls.items()))
        # API calls add up over every run (resume) of the folder
        total: dict[str, int] = json.loads(self.store.meta().get("api_calls", "{}"))
        for kind, n in calls.items():
            total[kind] = total.get(kind, 0) + n
        total.pop("total", None)
        total["total"] = sum(total.values())
        self.store.set_meta(api_calls=json.dumps(total))
        extra = {
            "name": self.plan.manifest.name,
            "manifest": str(self.plan.manifest.path),
            "api_calls": total,
            "api_calls_this_run": {**calls, "total": sum(calls.values())},
            "throttled": limiter.throttled_count,
            "elapsed_s": round(self.opts.clock() - self.started, 3),
            "interrupted": interrupted,
        }
        write_report(self.run_dir, rows, extra=extra)

    def _conclude(self, rows: list[JobRow], sched: Scheduler) -> int:
        counts: dict[str, int] = {}
        for row in rows:
            counts[row.status] = counts.get(row.status, 0) + 1
        file_errors = sum(1 for r in rows for f in r.files if f.error)
        if not self.opts.quiet:
            self.echo(
                f"{len(rows)} jobs: {describe(counts)}. Report: {self.run_dir / 'report.csv'}"
            )
        if file_errors:
            self.echo(f"{file_errors} output file(s) not downloaded; see the error column")
        if counts.get(st.FAILED) or counts.get(st.TIMED_OUT):
            self.echo("rerun with --retry-failed to submit failed and timed-out jobs again")
        if counts.get(st.UNKNOWN):
            self.echo(
                f"{counts[st.UNKNOWN]} submit(s) may have reached the server; rerun with "
                "--resubmit-unknown to submit them again (may pay twice)"
            )
        if sched.abandoned:
            self.echo(f"{len(sched.abandoned)} job(s) still on the server; rerun to poll again")
        if sched.fatal is not None:
            self.echo(f"stopped submitting: {sched.fatal}")
        ok = all(r.status == st.SUCCEEDED for r in rows) and not file_errors
        return EXIT_OK if ok and sched.fatal is None else EXIT_FAILED


def _say(text: str) -> None:
    try:
        os.write(2, text.encode())
    except OSError:
        pass


def _needs_files(run_dir: Path, row: JobRow) -> bool:
    """A succeeded job whose outputs are not all on disk, complete (killed mid-download)."""
    urls = collect_urls(row.output)
    if not urls:
        return False
    if len(row.files) != len(urls):
        return True
    for f in row.files:
        if f.error or not f.name:
            return True
        try:
            if (run_dir / f.name).stat().st_size != f.size:
                return True
        except OSError:
            return True
    return False
