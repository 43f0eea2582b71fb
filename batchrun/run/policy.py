"""The one seam between the scheduler and everything that may hold a submit back.

A submit policy is asked before each submit (`ask`: go, hold, set aside or stop, with a reason),
told as a submit leaves (`sending`) and told what became of every attempt (`told`: the
submit's answer, the job's end at the server). The scheduler calls them in one place each,
through `Policies`; the policies of a run are, in the order they are asked:

    ModelRefusals   run/refusals.py   a model the API refused for every job
    SweepGate       run/halt.py       the failure-rate halt and the canaries
    Budget          run/budget.py     the cost cap, from the ledger
    SubmitBreaker   run/breaker.py    refused or unreadable submits in a row

(none of them changes anything when asked, so the order only decides which reason is given).

A policy reads the job table, never writes it: the scheduler and the jobs at the server
(run/flights.py) make every transition.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Protocol

from batchrun.store.records import JobRow

# What `ask` says about the next pending job.
GO = "go"  # send it now
HOLD = "hold"  # not now (something in flight decides); ask about the same job again later
SET_ASIDE = "set_aside"  # not this run: it stays pending in state.db; ask about the next job
STOP = "stop"  # no more submits this run


@dataclass(frozen=True)
class Decision:
    say: str
    reason: str = ""  # why (STOP: shown at the end of the run)
    wait: float | None = None  # HOLD: ask again after this many seconds (None: when told)
    error: BaseException | None = None  # STOP: the error the run ends with, if any


SEND = Decision(GO)

# What became of an attempt (`Told.what`).
RESUMED = "resumed"  # an earlier run's attempt, read again by this run
ACCEPTED = "accepted"  # the submit was accepted (a request id came back)
REFUSED = "refused"  # the submit was certainly not accepted (`verdict` says how)
AMBIGUOUS = "ambiguous"  # the submit may have been accepted; nothing tells
FINISHED = "finished"  # the job ended at the server (`state`, `cost`)
CANCELLED = "cancelled"  # cancelled while queued: certainly not billed
GIVEN_UP = "given_up"  # may still run and be billed; nothing more will be learnt of it
LEFT = "left"  # left on the server, unread: the next run reads it


@dataclass(frozen=True)
class Told:
    what: str
    job: JobRow
    verdict: str = ""  # REFUSED: api.answers' verdict (throttled, retry, stop, failed)
    error: BaseException | None = None  # REFUSED, AMBIGUOUS: the submit's error
    state: str = ""  # FINISHED: SUCCEEDED, FAILED or CANCELLED
    cost: float | None = None  # FINISHED: what the API said the attempt cost
    at: float = 0.0  # epoch seconds the call was sent


@dataclass(frozen=True)
class Closed:
    """The pending jobs no submit may take now: of `models`, or of every model (`every`). A
    run does not read them from state.db meanwhile (run/pages.py)."""

    models: frozenset[str] = frozenset()
    every: bool = False

    def __or__(self, other: Closed) -> Closed:
        return Closed(self.models | other.models, self.every or other.every)


OPEN = Closed()


class JobsView(Protocol):
    """What a policy reads of the scheduler's job table (run/jobtable.py)."""

    @property
    def rows(self) -> dict[str, JobRow]: ...
    @property
    def counts(self) -> Counter[str]: ...


class SubmitPolicy(Protocol):
    def ask(self, job: JobRow, jobs: JobsView) -> Decision: ...

    def sending(self, job: JobRow) -> None: ...

    def told(self, event: Told) -> Decision | None:
        """None, or STOP when this outcome means no more submits."""

    def released(self, jobs: JobsView) -> list[str]:
        """Jobs set aside earlier that may go now."""

    def closed(self) -> Closed:
        """The pending jobs it would set aside now, whichever they are."""

    def watching(self, job_id: str) -> bool:
        """Whether it still reads the job's row in the table (it must stay in memory)."""

    def explain(self, not_sent: Counter[str]) -> list[str]:
        """After the run (`not_sent`: its jobs left pending, per model): why jobs it held
        were not sent."""


class Policy:
    """A policy that lets everything go: the base of the others."""

    def ask(self, job: JobRow, jobs: JobsView) -> Decision:
        return SEND

    def sending(self, job: JobRow) -> None:
        return None

    def told(self, event: Told) -> Decision | None:
        return None

    def released(self, jobs: JobsView) -> list[str]:
        return []

    def closed(self) -> Closed:
        return OPEN

    def watching(self, job_id: str) -> bool:
        return False

    def explain(self, not_sent: Counter[str]) -> list[str]:
        return []


class Policies(Policy):
    """Several policies as one: the first that does not say GO decides."""

    def __init__(self, *policies: SubmitPolicy) -> None:
        self.policies = policies

    def ask(self, job: JobRow, jobs: JobsView) -> Decision:
        for policy in self.policies:
            decision = policy.ask(job, jobs)
            if decision.say != GO:
                return decision
        return SEND

    def sending(self, job: JobRow) -> None:
        for policy in self.policies:
            policy.sending(job)

    def told(self, event: Told) -> Decision | None:
        stop = None
        for policy in self.policies:  # every policy hears every outcome; the first stop wins
            said = policy.told(event)
            stop = stop or said
        return stop

    def released(self, jobs: JobsView) -> list[str]:
        return [job_id for policy in self.policies for job_id in policy.released(jobs)]

    def closed(self) -> Closed:
        shut = OPEN
        for policy in self.policies:
            shut |= policy.closed()
        return shut

    def watching(self, job_id: str) -> bool:
        return any(policy.watching(job_id) for policy in self.policies)

    def explain(self, not_sent: Counter[str]) -> list[str]:
        return [line for policy in self.policies for line in policy.explain(not_sent)]
