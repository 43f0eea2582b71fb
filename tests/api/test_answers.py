"""Every mapping of api_answers, as tables: a failed submit -> what to do and whether it may
have been paid for; a /result body -> the job state it means."""

from __future__ import annotations

import pytest

from batchrun.api import answers as aa
from batchrun.errors import (
    ApiError,
    AuthError,
    InsufficientBalanceError,
    InvalidInputError,
    NotFoundError,
    RateLimitedError,
    ServerError,
    TransportError,
)
from batchrun.store import state as st

# exception, verdict, may have paid (the server may have accepted the submit)
SUBMIT_TABLE = [
    (RateLimitedError("429", status=429, retry_after=2.0), aa.THROTTLED, False),
    (TransportError("connect refused", maybe_sent=False), aa.RETRY, False),
    (TransportError("read timed out", maybe_sent=True), aa.AMBIGUOUS, True),
    (ServerError("503", status=503), aa.RETRY, False),
    (ServerError("500 with an API body", status=500, error_code=500001), aa.RETRY, False),
    (ServerError("500 bare", status=500), aa.AMBIGUOUS, True),
    (ServerError("502 bare", status=502), aa.AMBIGUOUS, True),
    (ServerError("504 bare", status=504), aa.AMBIGUOUS, True),
    (AuthError("401", status=401), aa.STOP, False),
    (InsufficientBalanceError("402", status=402), aa.STOP, False),
    (InvalidInputError("422", status=422), aa.FAILED, False),
    (NotFoundError("404", status=404), aa.FAILED, False),
    (ApiError("400", status=400, error_code=400001), aa.FAILED, False),
    (ValueError("a bug of ours after sending"), aa.AMBIGUOUS, True),
    (KeyError("request_id"), aa.AMBIGUOUS, True),
]


@pytest.mark.parametrize(
    ("exc", "verdict", "may_have_paid"),
    SUBMIT_TABLE,
    ids=[f"{type(e).__name__}-{e}" for e, _, _ in SUBMIT_TABLE],
)
def test_submit_verdict(exc, verdict, may_have_paid):
    assert aa.submit_verdict(exc) == verdict
    # Only an ambiguous verdict stops a job from being sent again without being asked.
    assert (verdict == aa.AMBIGUOUS) is may_have_paid


def test_the_submit_table_covers_every_verdict():
    assert {v for _, v, _ in SUBMIT_TABLE} == {
        aa.THROTTLED,
        aa.RETRY,
        aa.STOP,
        aa.FAILED,
        aa.AMBIGUOUS,
    }


# body, the Answer it reads as
ANSWER_TABLE = [
    (
        {"status": "succeeded", "output": {"images": ["u"]}, "cost": "0.02"},
        aa.Answer(st.SUCCEEDED, output={"images": ["u"]}, cost_usd=0.02),
    ),
    ({"status": "completed", "output": None}, aa.Answer(st.SUCCEEDED)),
    ({"status": "SUCCESS", "output": 1, "cost": "n/a"}, aa.Answer(st.SUCCEEDED, output=1)),
    (
        {"status": "completed", "error": {"code": 500, "message": "boom"}},
        aa.Answer(st.FAILED, error="500: boom"),
    ),
    (
        {"status": "failed", "error": {"error_code": 1, "error_message": "bad"}},
        aa.Answer(st.FAILED, error="1: bad"),
    ),
    ({"status": "failed", "error": "oom"}, aa.Answer(st.FAILED, error="oom")),
    ({"status": "failed", "error_message": "nsfw"}, aa.Answer(st.FAILED, error="nsfw")),
    ({"status": "failed", "message": "m"}, aa.Answer(st.FAILED, error="m")),
    (
        {"status": "failed"},
        aa.Answer(st.FAILED, error="the job failed (no error message from the API)"),
    ),
    ({"status": "cancelled"}, aa.Answer(st.CANCELLED, error="cancelled on the server")),
    ({"status": "canceled"}, aa.Answer(st.CANCELLED, error="cancelled on the server")),
    ({"status": "in_queue", "queue_position": 3}, aa.Answer(st.QUEUED, queue_position=3)),
    ({"status": "in_queue", "queue_position": "3"}, aa.Answer(st.QUEUED)),
    ({"status": "in_progress"}, aa.Answer(st.RUNNING)),
    ({"status": "warming_up"}, aa.Answer(st.RUNNING)),
    ({}, aa.Answer(st.RUNNING)),
]


@pytest.mark.parametrize(("body", "answer"), ANSWER_TABLE)
def test_read_answer(body, answer):
    read = aa.read_answer(body)
    assert read == answer
    assert read.terminal is (answer.state in st.TERMINAL)
