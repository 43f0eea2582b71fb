"""`batchrun run`: open the run folder, resume what is there, run the batch, write the report."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import requests

from batchrun.api import proxies as netenv
from batchrun.api.answers import AMBIGUOUS_SUBMIT
from batchrun.api.balance import read_balance
from batchrun.api.client import Client
from batchrun.api.ratelimit import RateLimiter
from batchrun.catalog.pricing import plain, usd
from batchrun.errors import ApiError, ChoiceError, InsufficientBalanceError, StateError
from batchrun.fetch.bucket import Bucket, require_boto3
from batchrun.fetch.download import Downloader
from batchrun.fetch.expectations import unmet
from batchrun.fetch.jobfiles import JobFiles
from batchrun.plan.build import Plan
from batchrun.plan.digest import PLAN_META, PlanMark
from batchrun.plan.settings import RunSettings
from batchrun.run.budget import Budget, Estimate, estimate_of, plan_estimator
from batchrun.run.cache import Restored, fill, open_for_plan, restore_pending
from batchrun.run.downloads import PlanFiles
from batchrun.run.ending import EndCounts, say_how_it_ended
from batchrun.run.halt import SweepGate
from batchrun.run.inputs import check_ready, submitter
from batchrun.run.jobtable import JobTable
from batchrun.run.live import LiveReport, waiting_text
from batchrun.run.mirror import Mirror
from batchrun.run.money_text import budget_reached, no_balance, progress_cost
from batchrun.run.pages import PendingPages
from batchrun.run.parts import RunParts
from batchrun.run.policy import SubmitPolicy
from batchrun.run.progress import Progress, describe, server_wait
from batchrun.run.scheduler import Scheduler
from batchrun.store import origin as og, state as st
from batchrun.store.output_urls import default_allow_hosts, needs_files, output_keys
from batchrun.store.records import JobRow, OutputFile
from batchrun.store.state import StateStore
from batchrun.util.safetext import printable

EXIT_INTERRUPTED = 130  # 0 and 1: ending.say_how_it_ended
ENDED_META = "ended"  # "<revision> <EndCounts JSON>": the closing counts at that revision
# Calls arrive at the server with network jitter: the limiter's window is this much longer
# than a second, so no rolling second the server counts holds more than rate_limit calls; a
# 429 says the jitter was larger, and widens it by RATE_HEADROOM_STEP.
RATE_HEADROOM = 0.04
RATE_HEADROOM_STEP = 0.02
# The run's first calls may leave together, up to this many seconds of the rate: its first
# submits fill the slots at once rather than one per 1/rate s (a fifth of a second of idle
# slots at the start of a slot-bound run).
RATE_START_S = 0.2


@dataclass
class RunOptions:
    """How to run a plan: where, against which API, and what to do with earlier attempts."""

    api_base: str
    token: str
    # Where results come from (origin.SIMULATOR or the API base), recorded in the folder and
    # checked against what it holds; empty leaves both to the caller (tests that restart a
    # simulator on another port).
    origin: str = ""
    run_dir: Path | None = None  # default: the manifest's outputs.dir
    retry_failed: bool = False
    resubmit_unknown: bool = False
    cancel_on_interrupt: bool = False
    quiet: bool = False
    resume_command: str = ""  # printed on Ctrl-C; the CLI fills it in
    # Part of the plan: run only these job ids; the run folder's other jobs stay as they are.
    only: frozenset[str] | None = None
    left_out: int = 0  # how many of the plan's jobs `only` leaves out (for the messages)
    share: int = 1  # rate_limit and max_in_flight are divided by this (a shard of N: N)
    # Where the account balance is read before the first submit (api/balance.py); None: not.
    balance_base: str | None = None
    cache: Path | None = None  # the cross-run cache folder; default: the manifest's run.cache
    # The plan's digest (plan/digest.py), recorded in the folder once its jobs are added;
    # None records none (a resume then expands the plan again).
    plan_mark: PlanMark | None = None
    # The plan's jobs are the folder's already (its recorded digest is `plan_mark`'s): the plan
    # comes without jobs and none are added. StateError if the folder changed meanwhile.
    jobs_known: bool = False
    report_every: float | None = None  # seconds; None: the manifest's run.report_every
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

    Raises RunFolderInUse when another run holds the folder; after saving state and the
    report, AuthError or InsufficientBalanceError (exit 3) when the API refuses the token or
    the balance cannot pay, and BudgetReached (exit 4) when the cost cap stopped the run.
    """
    if plan.manifest.outputs.mirror:
        require_boto3()  # before the run folder is made
    run_dir = Path(options.run_dir or plan.manifest.outputs.dir)
    with StateStore.open(run_dir) as store:
        return _Run(plan, options, run_dir, store).execute()


class _Run:
    def __init__(self, plan: Plan, options: RunOptions, run_dir: Path, store: StateStore):
        self.plan = plan
        self.opts = options
        self.run_dir = run_dir
        self.store = store
        # Lines carry server text (errors, request ids): shown escaped, never executed.
        self.echo: Callable[[str], None] = lambda text: options.echo(printable(text, lines=True))
        self.started = options.clock()
        self.cache = open_for_plan(
            self.opts.cache or self.plan.manifest.run.cache,
            self.plan,
            og.normalise(options.origin or options.api_base),
            models=store.models() if options.jobs_known else plan.model_ids(),
        )
        self.restored = Restored()
        self.balance_before: Decimal | None = None
        # outputs.mirror: boto3 missing or a bad location stops the run before anything is sent
        mirror = plan.manifest.outputs.mirror
        self.mirror = None if mirror is None else Mirror(
            Bucket.from_url(mirror), store, run_dir, plan.manifest.name
        )  # fmt: skip

    def execute(self) -> int:
        self._prepare()
        if self.cache is not None:
            restore_pending(
                self.cache, self.store, self.run_dir, self.restored, chosen=self._chooser(),
                wall=self.opts.wall, echo=self.echo,
            )  # fmt: skip
        settings = self._run_settings()
        counts, gate = self._survey(settings)
        held = self._held(gate)
        table = JobTable(self.store, held, counts)
        client = Client(self.opts.api_base, self.opts.token, session=self.opts.session)
        limiter = run_limiter(settings, self.opts)
        estimate = plan_estimator(self.plan)
        budget = Budget.for_folder(
            self._cap(), estimate, self.store.open_attempts(), held, self.store,
            jobs=table.rows.get, settled=self.store.settled_attempts(),
        )  # fmt: skip
        budget.est_total, budget.unpriced = self._estimate(estimate)
        self._record_budget(budget)
        self.balance_before = self._check_balance(estimate, counts)
        progress = run_progress(table.total, self.opts, budget, limiter)
        policies: list[SubmitPolicy] = [budget] if gate is None else [gate, budget]
        feed = PendingPages(self.store, table, chosen=self._chooser())
        parts = RunParts(
            table, client, limiter, settings, self.opts.clock, self.opts.wall, feed=feed,
            submit=submitter(self.plan, client.submit),
        )  # fmt: skip
        sched = self._scheduler(parts, policies, budget, progress, held)
        feed.closed = sched.policy.closed  # the models no submit may take are not read
        live = LiveReport(
            settings.report_every if self.opts.report_every is None else self.opts.report_every,
            lambda: self._write_live(sched, progress, budget, live),
            lambda: parts.jobs.changes,
            self.opts.clock,
        )
        sched.between_steps.append(live.tick)
        self._loop(sched, progress)
        live.wait()  # the final report replaces the live one, not the other way round
        interrupted = sched.stop.is_set()
        if interrupted and self.opts.cancel_on_interrupt:
            self._cancel_queued(sched, client, limiter)
        if self.cache is not None and not interrupted:
            fill(self.cache, self.run_dir, self._mine(), echo=self.echo)
        if self.mirror is not None and not interrupted:
            self.mirror.copy_files(self._mine())
        self._write_report(client, limiter, budget, interrupted=interrupted)
        client.close()
        if self.mirror is not None and not interrupted:
            self.mirror.copy_reports()
            self.mirror.say(self.echo, quiet=self.opts.quiet)
        code = self._conclude(sched, budget)
        # Files left out of the bucket fail the run; the same command finishes the mirror.
        return 1 if code == 0 and self.mirror is not None and self.mirror.failed else code

    def _mine(self) -> Iterator[JobRow]:
        """This run's jobs as state.db holds them, read with a cursor."""
        rows = self.store.iter_rows(in_manifest_only=True)
        return rows if self.opts.only is None else (r for r in rows if self._chosen(r.job_id))

    def _chooser(self) -> Callable[[str], bool] | None:
        """Whether a job is this run's (None: every job of the manifest is)."""
        return None if self.opts.only is None else self._chosen

    def _survey(self, settings: RunSettings) -> tuple[Counter[str], SweepGate | None]:
        """The counts of this run's jobs by status, and its sweep gate (halt, canaries), if
        any: counted by SQL, or one pass over the jobs' ids and statuses (no row decoded)."""
        if settings.halt is None and not settings.canary and self.opts.only is None:
            return Counter(self.store.counts()), None
        brief = self.store.brief()
        mine = brief if self.opts.only is None else (b for b in brief if self._chosen(b.job_id))
        if settings.halt is None and not settings.canary:
            return Counter(b.status for b in mine), None
        gate = SweepGate(halt=settings.halt, canary=settings.canary, rows=mine)
        return Counter(gate.start), gate

    def _held(self, gate: SweepGate | None) -> list[JobRow]:
        """The jobs the run holds from the start: those at the server, the succeeded ones
        whose files are missing, and the canaries. The pending ones come in pages."""
        chosen = self._chosen
        rows = [
            r for r in self.store.iter_rows(in_manifest_only=True, statuses=(st.QUEUED, st.RUNNING))
            if chosen(r.job_id)
        ]  # fmt: skip
        if self.plan.manifest.outputs.download:
            succeeded = self.store.iter_rows(in_manifest_only=True, statuses=(st.SUCCEEDED,))
            rows += [
                r for r in succeeded
                if chosen(r.job_id) and not r.cached and needs_files(self.run_dir, r)
            ]  # fmt: skip
        if gate is not None:
            have = {r.job_id for r in rows}
            rows += [self.store.get(j) for j in gate.canary_ids() if j not in have]
        return rows

    def _estimate(self, estimate: Estimate) -> tuple[Decimal, int]:
        """The estimate of this run's jobs (those taken from the cache cost nothing) and how
        many have none: the plan's, recorded with its digest, less the cached jobs', when the
        run is the whole plan; else added up over the jobs."""
        mark = self.opts.plan_mark
        if mark is not None and self.opts.only is None:
            usd, unpriced = estimate_of(
                estimate, self.store.iter_rows(in_manifest_only=True, cached_only=True)
            )
            return mark.est_usd - usd, mark.unpriced - unpriced
        return estimate_of(estimate, (r for r in self._mine() if not r.cached))

    def _scheduler(
        self,
        parts: RunParts,
        policies: list[SubmitPolicy],
        budget: Budget,
        progress: Progress,
        held: list[JobRow],
    ) -> Scheduler:
        download = self.plan.manifest.outputs.download
        sched = Scheduler(
            parts,
            policies=policies,
            estimate=budget.estimate,
            plan_files=file_planner(self.plan, self.run_dir, self.opts.api_base)
            if download
            else None,
            progress=progress,
            echo=self.echo,
            workers=self.opts.workers,
            download_workers=self.opts.download_workers,
        )
        progress.notes.append(sched.downloads.note)  # a result of many files: what is left
        if download and self.plan.manifest.expect:
            sched.downloads.judge = self._judge
            for gate in policies:
                if isinstance(gate, SweepGate):  # a canary proves its model once judged
                    gate.unjudged = sched.downloads.holds
        # A cached job's files come from the cache, not a URL.
        sched.seed(
            held, needs_files=lambda r: download and not r.cached and needs_files(self.run_dir, r)
        )
        return sched

    def _judge(self, row: JobRow, files: list[OutputFile]) -> str:
        """What the job's files fail of its model's expectations ('' when nothing)."""
        return unmet(self.plan.manifest.expect.of(row.model_id), self.run_dir, files)

    def _loop(self, sched: Scheduler, progress: Progress) -> None:
        restore = install_interrupt(sched, handle_signals=self.opts.handle_signals)
        try:
            sched.run()
        finally:
            restore()
            progress.close()

    def _conclude(self, sched: Scheduler, budget: Budget) -> int:
        """Say how the run ended; its exit code, or the error it ends with."""
        if sched.stop.is_set():
            still = len(sched.at_server.flights)
            self.echo(
                f"interrupted: {still} request{'s' if still != 1 else ''} still on the server; "
                f"resume with: {self.opts.resume_command or 'batchrun run MANIFEST'}"
            )
            return EXIT_INTERRUPTED
        ended = self._ended()
        not_run = ended.counts[st.PENDING]
        if isinstance(sched.fatal, InsufficientBalanceError):
            raise no_balance(sched.fatal, not_run, self.opts.resume_command)
        if sched.fatal is not None and getattr(sched.fatal, "exit_code", 1) != 1:
            raise sched.fatal
        code = say_how_it_ended(
            ended, sched, budget,
            run_dir=self.run_dir, elapsed=self.opts.clock() - self.started,
            left_out=self.opts.left_out if self.opts.only else None,
            quiet=self.opts.quiet, echo=self.echo,
        )  # fmt: skip
        if budget.reached and not_run:
            raise budget_reached(budget, not_run, max(1, self.opts.share))
        return code

    def _ended(self) -> EndCounts:
        """The closing lines' counts: kept in the folder with its revision, so a run that
        changed no job (a resume of a finished sweep) reads them back, not every job."""
        if self.opts.only is not None:
            return EndCounts.of(self._mine())
        revision = self.store.revision()
        kept = self.store.meta().get(ENDED_META, "")
        number, _, text = kept.partition(" ")
        ended = EndCounts.loads(text) if number == str(revision) else None
        if ended is None:
            ended = EndCounts.of(self._mine())
            self.store.set_meta(**{ENDED_META: f"{revision} {ended.dumps()}"})
        return ended

    def _record_budget(self, budget: Budget) -> None:
        """The estimate and the cap, for `status` (which reads only the run folder)."""
        cap = "" if budget.cap is None else plain(budget.cap)
        self.store.set_meta(
            est_cost_usd=plain(budget.est_total),
            unpriced_jobs=str(budget.unpriced),
            max_cost_usd=cap,
        )

    def _balance(self) -> Decimal | None:
        """The account balance, or None (no balance base, or unreadable: a warning only)."""
        if not self.opts.balance_base:
            return None
        try:
            return read_balance(self.opts.balance_base, self.opts.token)
        except ApiError as exc:
            self.echo(f"warning: the account balance could not be read ({exc}); running on")
            return None

    def _check_balance(self, estimate: Estimate, counts: Counter[str]) -> Decimal | None:
        """Before anything is sent: below the cheapest job's estimate, InsufficientBalanceError
        (exit 3); below the plan's estimate, a warning saying how many jobs it covers."""
        if not counts[st.PENDING]:
            return None
        balance = self._balance()
        if balance is None:
            return None
        pending = self.store.iter_rows(in_manifest_only=True, statuses=(st.PENDING,))
        # the pending jobs' estimates, as how many jobs have each (a few distinct amounts)
        priced = Counter(
            e for r in pending if self._chosen(r.job_id)
            for e in [estimate(r.model_id, r.inputs)] if e is not None
        )  # fmt: skip
        if priced and balance < min(priced):
            raise InsufficientBalanceError(
                f"the account balance is {usd(balance)}, less than one job's estimate "
                f"({usd(min(priced))}); nothing was sent. Top up the RunComfy balance, then "
                f"rerun: {self.opts.resume_command or 'the same command'}"
            )
        total = sum((e * n for e, n in priced.items()), Decimal(0))
        if priced and balance < total:
            covered, left = 0, balance
            for amount, n in sorted(priced.items()):
                fits = min(n, int(left // amount)) if amount else n
                covered, left = covered + fits, left - amount * fits
                if fits < n:
                    break
            self.echo(
                f"warning: the account balance {usd(balance)} is below the estimate of the jobs "
                f"to run ({usd(total)}); it covers about {covered} of {priced.total()} priced "
                "jobs"
            )
        return balance

    def _cap(self) -> Decimal | None:
        """The cost cap of this run folder: the manifest's (or --max-cost), split like the
        rate among the shards of a CI matrix (a shard of N gets cap / N)."""
        cap = self.plan.manifest.run.max_cost_usd
        share = max(1, self.opts.share)
        return cap if cap is None or share == 1 else cap / share

    def _chosen(self, job_id: str) -> bool:
        return self.opts.only is None or job_id in self.opts.only

    def _run_settings(self) -> RunSettings:
        """The manifest's run settings, with this process's share of the rate and flights."""
        run, share = self.plan.manifest.run, max(1, self.opts.share)
        if share == 1:
            return run
        rate = None if run.rate_limit is None else run.rate_limit / share
        flights = run.max_in_flight  # None: derived from the (shared) rate, see inflight.py
        flights = None if flights is None else max(1, flights // share)
        return replace(run, rate_limit=rate, max_in_flight=flights)

    def _jobs_to_add(self) -> Iterable[Any]:
        """The plan's jobs the run folder should know: all of them (a new pass of a streamed
        plan's sweep), or for a subset the chosen ones and those it knows already (so the
        others are neither added nor dropped)."""
        only = self.opts.only
        if only is None:
            return self.plan.jobs if self.plan.sweep is None else self.plan.sweep
        known = self.store.job_ids(in_manifest_only=True)
        return [j for j in self.plan.jobs if j.job_id in only or j.job_id in known]

    # ---- before the loop ----------------------------------------------------------------

    def _prepare(self) -> None:
        manifest = self.plan.manifest
        check_ready(manifest.uploads, manifest.has_local)  # boto3, before anything is sent
        meta = self.store.meta()
        fresh = "manifest_sha256" not in meta
        origin = self.opts.origin
        held = og.recorded(meta, self.run_dir)
        if origin and held not in (None, origin) and any(r.request_id for r in self.store.rows()):
            raise og.mismatch(self.run_dir, held, origin)  # before anything is changed or sent
        if origin and meta.get("origin") != origin:
            self.store.set_meta(origin=origin)
        if self.opts.jobs_known:
            found = PlanMark.loads(meta.get(PLAN_META))
            if self.opts.plan_mark is None or found != self.opts.plan_mark:
                raise StateError(
                    f"{self.run_dir}: its plan changed while this run was starting (another "
                    "run of another manifest?); run the same command again"
                )
            added, removed = 0, 0
        else:
            added, removed = self.store.add_jobs(self._jobs_to_add(), models=self.plan.model_ids())
            mark = self.opts.plan_mark
            self.store.set_meta(**{PLAN_META: "" if mark is None else mark.dumps()})
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
            self._requeue([st.UNKNOWN], "--resubmit-unknown", "unknown job(s)")
        if self.opts.retry_failed:
            self._requeue([st.FAILED, st.TIMED_OUT], "--retry-failed", "failed or timed-out job(s)")

    def _requeue(self, statuses: list[str], flag: str, what: str) -> None:
        """The jobs in `statuses` sent again, each with a fresh allowance of retries (the
        user asked: what earlier runs spent of it no longer counts); says how many."""
        sent = self.store.requeue(statuses, only=self.opts.only)  # a subset: its own jobs
        if sent:
            retries = self.plan.manifest.run.retries
            self.echo(
                f"{flag}: {sent} {what} to send again, each with a fresh allowance of retries "
                f"(run.retries: {retries}): at most {retries + 1} more attempt(s) each"
            )

    # ---- after the loop -----------------------------------------------------------------

    def _cancel_queued(self, sched: Scheduler, client: Client, limiter: RateLimiter) -> None:
        """--cancel-on-interrupt: cancel what is still queued (running jobs cannot be)."""
        for flight in list(sched.at_server.flights.values()):
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
                del sched.at_server.flights[flight.job_id]

    def _write_live(
        self, sched: Scheduler, progress: Progress, budget: Budget, live: LiveReport
    ) -> Callable[[], None]:
        """What the live reports say of the run now (on the loop's thread), and the write
        of the reports from state.db, for the writer thread (run/live.py)."""
        from batchrun.results.html_report import Live
        from batchrun.results.report import RunFacts, grid_choice, write_from_state

        counts, done = sched.jobs.counts, sched.jobs.done()
        stopped = "budget: the cap is reached, no more submits" if budget.reached else ""
        if not stopped and not sched.submit_open and sched.pending:
            stopped = "submits stopped"
        waiting = waiting_text(
            len(sched.at_server.flights), progress.waiting() if progress.waiting else "",
            stopped=stopped,
        )  # fmt: skip
        at = time.strftime("%H:%M:%S UTC", time.gmtime(self.opts.wall()))
        text = "; ".join(
            t for t in (f"running: {done}/{sched.jobs.total} done ({describe(counts)})",
                        progress_cost(budget), waiting, f"updated {at}") if t
        )  # fmt: skip
        meta = self.store.meta()
        facts: RunFacts = {
            "name": self.plan.manifest.name,
            "manifest": str(self.plan.manifest.path),
            "origin": og.recorded(meta, self.run_dir) or self.opts.api_base,
            "elapsed_s": round(self.opts.clock() - self.started, 3),
            "est_cost_usd": float(budget.est_total),
            "unpriced_jobs": budget.unpriced,
            "max_cost_usd": None if budget.cap is None else float(budget.cap),
        }
        grid = self.plan.manifest.report
        rows_key, cols_key = grid_choice(meta, grid.rows, grid.cols)
        shown = Live(text, live.refresh_s)

        def work() -> None:
            try:
                write_from_state(self.run_dir, facts, rows_key, cols_key, live=shown)
            except (StateError, OSError) as exc:  # the run goes on; its final report will say
                self.echo(f"warning: live report not written ({exc}); no more until the end")
                live.every = 0

        return work

    def _write_report(
        self,
        client: Client,
        limiter: RateLimiter,
        budget: Budget,
        *,
        interrupted: bool,
    ) -> None:
        import json

        from batchrun.results.report import (
            REPORT_FILES_META,
            REPORT_MARK_META,
            ReportJobs,
            RunFacts,
            files_mark,
            grid_choice,
            report_mark,
            reports_present,
            write_report,
        )

        calls = dict(sorted(client.calls.items()))
        # API calls add up over every run (resume) of the folder
        meta = self.store.meta()
        total: dict[str, int] = json.loads(meta.get("api_calls", "{}"))
        for kind, n in calls.items():
            total[kind] = total.get(kind, 0) + n
        total.pop("total", None)
        total["total"] = sum(total.values())
        self.store.set_meta(api_calls=json.dumps(total))
        facts: RunFacts = {
            "name": self.plan.manifest.name,
            "manifest": str(self.plan.manifest.path),
            "origin": og.recorded(meta, self.run_dir) or self.opts.api_base,
            "api_calls": total,
            "api_calls_this_run": {**calls, "total": sum(calls.values())},
            "throttled": limiter.throttled_count,
            "elapsed_s": round(self.opts.clock() - self.started, 3),
            "interrupted": interrupted,
            "est_cost_usd": float(budget.est_total),
            "unpriced_jobs": budget.unpriced,
            "max_cost_usd": None if budget.cap is None else float(budget.cap),
            "stopped_at_budget": budget.reached,
        }
        if self.balance_before is not None:
            after = self._balance()
            facts["balance"] = {  # the whole account's, not this run's alone
                "scope": "account",
                "before_usd": float(self.balance_before),
                "after_usd": None if after is None else float(after),
            }
        if self.cache is not None:
            facts["cache"] = {
                "folder": str(self.cache.root),
                "taken_this_run": self.restored.jobs,
                "damaged_entries": len(self.restored.damaged),
            }
        if self.opts.only is not None:
            facts["selected"] = len(self.opts.only)
            facts["left_out"] = self.opts.left_out
        mirror_urls = None
        if self.mirror is not None:
            facts["mirror"] = self.mirror.facts()
            mirror_urls = self.mirror.urls()
            self.store.set_meta(mirror=self.mirror.to)  # `batchrun report` keeps the column
        grid = self.plan.manifest.report
        rows_key, cols_key = grid_choice(meta, grid.rows, grid.cols)
        written = report_mark(self.store.revision(), facts, rows_key, cols_key)
        if meta.get(REPORT_MARK_META) == written and reports_present(self.run_dir):
            return  # nothing changed since they were written
        try:
            write_report(
                self.run_dir, ReportJobs.read(self.store), facts=facts,
                rows_key=rows_key, cols_key=cols_key, mirror_urls=mirror_urls,
            )  # fmt: skip
        except ChoiceError as exc:
            self.echo(f"warning: report.html grid: {exc}; laid out automatically")
            write_report(
                self.run_dir, ReportJobs.read(self.store), facts=facts, mirror_urls=mirror_urls,
            )  # fmt: skip
        self.store.set_meta(
            **{REPORT_MARK_META: written, REPORT_FILES_META: files_mark(self.run_dir)}
        )


def run_limiter(settings: RunSettings, opts: RunOptions) -> RateLimiter:
    """The run's rate limiter: the settings' rate, with the headroom for network jitter."""
    return RateLimiter(
        settings.rate_limit,
        start_s=RATE_START_S,
        margin=RATE_HEADROOM,
        margin_step=RATE_HEADROOM_STEP,
        clock=opts.clock,
        sleep=opts.sleep,
    )


def run_progress(total: int, opts: RunOptions, budget: Budget, limiter: RateLimiter) -> Progress:
    """The progress bar or log lines of `total` jobs, with the money and the server's pauses."""
    return Progress(
        total,
        quiet=opts.quiet,
        clock=opts.clock,
        cost=lambda: progress_cost(budget),
        waiting=server_wait(limiter.paused_for),
    )


def file_planner(plan: Plan, run_dir: Path, api_base: str) -> PlanFiles:
    """What to download of a job's output, and where in the run folder."""
    outputs = plan.manifest.outputs
    hosts = default_allow_hosts(api_base) + list(outputs.allow_hosts)
    downloader = Downloader(allow_hosts=hosts, max_file_bytes=outputs.max_file_bytes)

    def planned(job_id: str, output: Any, existing: list[OutputFile]) -> JobFiles:
        keys = output_keys(output)
        return downloader.plan(run_dir, job_id, list(keys), existing, keys)

    return planned


def install_interrupt(sched: Scheduler, *, handle_signals: bool) -> Callable[[], None]:
    main = threading.current_thread() is threading.main_thread()
    if not (handle_signals and main):
        return lambda: None

    def on_signal(signum: int, frame: object) -> None:
        # Runs between two bytecodes of the scheduler: only set a flag and write to the fd
        # (print() or a queue here could deadlock on a lock the interrupted code holds).
        if sched.stop.is_set():
            _say("\ninterrupted again: exiting now (state is saved)\n")
            os._exit(EXIT_INTERRUPTED)
        sched.request_stop()
        # Answers still arriving are read for at most client.INTERRUPT_GRACE_S more, files
        # stop at once (a trickling server must not hold the run); a submit cut off so is
        # left unknown, never sent again blindly.
        netenv.interrupt()
        _say(
            "\ninterrupting: no new submits; saving what came back (Ctrl-C again to quit at once)\n"
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


def _say(text: str) -> None:
    try:
        os.write(2, text.encode())
    except OSError:
        pass
