"""The shared sweep in a real PostgreSQL server: claims, leases, the rate window, the budget."""

from __future__ import annotations

import sys
import threading
import time
from decimal import Decimal

import pytest

from batchrun.errors import MissingDependencyError, StateError
from batchrun.plan.grid import Job
from batchrun.store import records, transitions
from batchrun.store.shared import LeaseLost, SharedState, SharedStateLost, scrub
from testing.postgres import PgServer

MODEL = "google/nano-banana-2-lite/text-to-image"


def jobs(n: int) -> list[Job]:
    return [Job(f"{i:012x}", MODEL, {"prompt": f"p{i}"}, {}, 0, i) for i in range(n)]


def state(url: str, worker: str = "w1", sweep: str = "s") -> SharedState:
    return SharedState.connect(url, sweep=sweep, worker=worker)


def opened(url: str, worker: str = "w1", *, cap: Decimal | None = None, n: int = 0) -> SharedState:
    s = state(url, worker)
    s.open_sweep("sha-a", "sim", cap)
    if n:
        s.add_jobs(jobs(n))
    return s


def test_the_schema_is_made_once_and_a_second_worker_joins_the_sweep(pg_url: str) -> None:
    a = opened(pg_url, "a", n=10)
    b = opened(pg_url, "b")
    assert b.add_jobs(jobs(12)) == 2  # the known ten are not added again
    assert a.counts() == {records.PENDING: 12}


def test_another_manifest_or_origin_under_the_same_name_is_refused(pg_url: str) -> None:
    opened(pg_url)
    with pytest.raises(StateError, match="another sweep named 's'"):
        state(pg_url, "b").open_sweep("sha-b", "sim", None)
    with pytest.raises(StateError, match="never mixed"):
        state(pg_url, "c").open_sweep("sha-a", "https://api.example", None)
    state(pg_url, "d", sweep="other").open_sweep("sha-b", "sim", None)  # another name: fine


def test_workers_claim_disjoint_jobs_in_plan_order(pg_url: str) -> None:
    opened(pg_url, n=200)
    workers = [opened(pg_url, f"w{i}") for i in range(4)]
    got: dict[str, list[int]] = {w.worker: [] for w in workers}

    def work(w: SharedState) -> None:
        while claimed := w.claim(7).pending:
            got[w.worker] += [r.position for r in claimed]
            for r in claimed:  # what a submit does first: the job is no longer pending
                w.update(r.job_id, transitions.mark_submitting())

    threads = [threading.Thread(target=work, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [p for positions in got.values() for p in positions]
    assert sorted(every) == list(range(200))  # each job claimed once, none left
    assert all(p == sorted(p) for p in got.values())  # each worker's in plan order
    assert sum(1 for p in got.values() if p) >= 2


def test_a_held_lease_keeps_jobs_and_a_lapsed_one_hands_them_over(pg_url: str) -> None:
    a = opened(pg_url, "a", n=4)
    b = opened(pg_url, "b")
    held = a.claim(3, lease_s=0.5).pending
    assert [r.position for r in held] == [0, 1, 2]
    a.update(held[0].job_id, transitions.mark_submitting())  # a submit in the air
    a.update(held[1].job_id, transitions.mark_submitting())
    a.update(held[1].job_id, transitions.record_request_id("req-1", time.time()))
    assert [r.position for r in b.claim(10).pending] == [3]  # only the free one
    time.sleep(0.3)
    assert a.renew(lease_s=0.5) == 3  # alive: still held
    time.sleep(0.3)
    assert b.claim(10) == type(b.claim(10))(pending=[], taken_over=[])
    time.sleep(0.6)  # a is lost: its lease lapses
    claimed = b.claim(10)
    assert [r.request_id for r in claimed.taken_over] == ["req-1"]  # polled by its id
    assert [r.position for r in claimed.pending] == [2]  # never sent: b may send it
    lost = b.get(held[0].job_id)
    assert lost.status == records.UNKNOWN  # may have reached the server: never resent
    assert "--resubmit-unknown" in lost.error
    # a, late, writes what it saw: refused, and b's record stands
    with pytest.raises(LeaseLost):
        a.update(held[1].job_id, transitions.record_status(records.RUNNING, time.time()))
    assert b.get(held[1].job_id).status == records.QUEUED


def test_the_rate_window_is_shared_by_every_worker(pg_url: str) -> None:
    workers = [opened(pg_url, f"w{i}") for i in range(3)]
    limit, lock = 20, threading.Lock()
    taken: list[tuple[float, float]] = []  # (asked, answered) of each call let through
    end = time.time() + 1.6

    def work(w: SharedState) -> None:
        while time.time() < end:
            asked = time.time()
            wait = w.take_call(limit)
            if wait == 0.0:
                with lock:
                    taken.append((asked, time.time()))
            else:
                time.sleep(min(wait, 0.05))

    threads = [threading.Thread(target=work, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Each call took its place, on the database's clock (this machine's), between asking and
    # the answer: the calls asked and answered inside one second certainly fell in it, however
    # late a loaded machine ran a thread (without the window: thousands).
    starts = sorted(asked for asked, _ in taken)
    busiest = max(sum(1 for a, b in taken if s <= a and b < s + 1.0) for s in starts)
    assert busiest <= limit
    assert len(taken) >= limit  # it did let calls through: at least one window's worth


def test_reservations_never_pass_the_cap_with_workers_at_once(pg_url: str) -> None:
    cap = Decimal("1.00")
    first = opened(pg_url, "w0", cap=cap, n=100)
    workers = [first, *(opened(pg_url, f"w{i}", cap=cap) for i in range(1, 4))]
    reserved: list[str] = []
    lock = threading.Lock()

    def work(w: SharedState) -> None:
        for r in w.claim(25).pending:
            if w.reserve(r.job_id, MODEL, Decimal("0.03"), max_in_flight=None):
                with lock:
                    reserved.append(r.job_id)

    threads = [threading.Thread(target=work, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(reserved) == 33  # floor(1.00 / 0.03): not one more, whoever asked
    _, spent, held, flights = first.money()
    assert (spent, held, flights) == (0, Decimal("0.99"), 33)
    for job_id in reserved[:10]:
        first.settle(job_id, Decimal("0.02"))
        first.settle(job_id, Decimal("0.02"))  # twice (a takeover, say): counted once
    _, spent, held, flights = first.money()
    assert (spent, held, flights) == (Decimal("0.20"), Decimal("0.69"), 23)


def test_in_flight_slots_are_shared(pg_url: str) -> None:
    a = opened(pg_url, "a", n=6)
    b = opened(pg_url, "b")
    mine = a.claim(3).pending
    theirs = b.claim(3).pending
    zero = Decimal(0)
    assert [a.reserve(r.job_id, MODEL, zero, max_in_flight=4) for r in mine] == [True] * 3
    assert [b.reserve(r.job_id, MODEL, zero, max_in_flight=4) for r in theirs] == [
        True,
        False,
        False,
    ]
    a.settle(mine[0].job_id, zero, billed=False)
    assert b.reserve(theirs[1].job_id, MODEL, zero, max_in_flight=4)


def test_a_wrong_password_is_never_shown(pg_server: PgServer) -> None:
    url = pg_server.url().replace(pg_server.password, "not-the-Secret-42")
    with pytest.raises(StateError) as caught:
        state(url)
    assert "not-the-Secret-42" not in str(caught.value)
    assert "***" in str(caught.value)
    assert scrub(pg_server.url()).count(pg_server.password) == 0


def test_without_psycopg_the_fix_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(MissingDependencyError, match=r"runcomfy-batchrun\[postgres\]"):
        state("postgresql://u:pw@127.0.0.1:1/db")


def test_an_unpriced_job_goes_alone_under_a_cap_until_a_cost_is_known(pg_url: str) -> None:
    a = opened(pg_url, "a", cap=Decimal("1.00"), n=4)
    first, second, third, _ = a.claim(4).pending
    assert a.reserve(first.job_id, MODEL, None, max_in_flight=None)  # holds all the room
    assert not a.reserve(second.job_id, MODEL, None, max_in_flight=None)
    a.mark_submitting(first.job_id)
    a.record_request_id(first.job_id, "req-1", time.time())
    a.close_attempt(first.job_id, actual=Decimal("0.25"))
    a.settle(first.job_id, Decimal("0.25"))
    # now the model's cost is known: each next job holds $0.25
    assert a.reserve(second.job_id, MODEL, None, max_in_flight=None)
    assert a.reserve(third.job_id, MODEL, Decimal("0.10"), max_in_flight=None)
    assert a.money()[1:] == (Decimal("0.25"), Decimal("0.50"), 2)


def test_a_lost_submit_counts_its_reservation_as_spent(pg_url: str) -> None:
    a = opened(pg_url, "a", cap=Decimal("1.00"), n=2)
    b = opened(pg_url, "b")
    job = a.claim(1, lease_s=0.2).pending[0]
    assert a.reserve(job.job_id, MODEL, Decimal("0.30"), max_in_flight=None)
    a.mark_submitting(job.job_id, Decimal("0.30"))  # then a is killed mid-submit
    time.sleep(0.4)
    b.claim(5)
    assert a.money()[1:] == (Decimal("0.30"), Decimal("0"), 0)
    assert [x.answer for x in b.attempts()] == ["unknown"]


def test_a_version_1_database_is_migrated_keeping_its_sweep(pg_url: str) -> None:
    import psycopg

    from batchrun.store import shared

    with psycopg.connect(pg_url, autocommit=True) as conn:  # what batchrun 1 made
        conn.execute(shared.schema._SCHEMA)
        conn.execute("INSERT INTO batchrun_schema VALUES (1)")
        conn.execute(
            "INSERT INTO sweeps (sweep, manifest_sha256, origin, created) "
            "VALUES ('s', 'sha-a', 'sim', 0)"
        )
        conn.execute(
            "INSERT INTO jobs (sweep, job_id, position, model_id, inputs) "
            "VALUES ('s', 'j1', 0, %s, '{}')",
            (MODEL,),
        )
    s = state(pg_url, "w2")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        version = conn.execute("SELECT version FROM batchrun_schema").fetchone()
        gate = conn.execute("SELECT gate, files_dir FROM jobs WHERE job_id = 'j1'").fetchone()
    assert version == (shared.SCHEMA_VERSION,) and gate == ("", None)
    s.open_sweep("sha-a", "sim", None)
    assert s.counts() == {records.PENDING: 1}
    s.files_at = ("/runs/w2", "host-b")
    assert s.join("/runs/w2", "host-b", 30.0)  # the first worker of the run
    s.claim(1)
    s.record_files("j1", [])
    assert s.file_places() == {"j1": ("/runs/w2", "host-b")}
    assert [w["host"] for w in s.workers()] == ["host-b"]


def test_a_database_gone_past_the_patience_is_exit_3_naming_no_password(
    pg_server: PgServer, pg_url: str
) -> None:
    told: list[str] = []
    a = opened(pg_url, "a", n=2)
    a.patience_s, a.on_lost = 1.0, told.append
    pg_server.stop("immediate")
    try:
        started = time.monotonic()
        with pytest.raises(SharedStateLost) as lost:
            a.counts()
        assert 1.0 <= time.monotonic() - started < 10  # it waited, then gave up
        with pytest.raises(SharedStateLost):
            a.counts()  # gone: every later call fails at once
    finally:
        pg_server.start()
    assert lost.value.exit_code == 3
    assert "Rerun the same command" in str(lost.value)
    assert len(told) == 1 and "unreachable" in told[0]
    assert pg_server.password not in str(lost.value) + told[0]
