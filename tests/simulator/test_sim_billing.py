"""The simulator's books: when a job is billed (`bill_on`), whether results carry their cost
(`result_costs`), and the account balance endpoint."""

from __future__ import annotations

from collections.abc import Callable

from simhelpers import T2I, SimClient

from batchrun.simulator import Simulator


def _stats(client: SimClient) -> dict:
    return dict(client.get("/_sim/stats").json())


def test_by_default_only_succeeded_jobs_are_billed(make_sim: Callable[..., Simulator]) -> None:
    client = SimClient(make_sim(fail_rate=1.0))
    rid = client.submit_ok(T2I, {"prompt": "a"})
    done = client.wait_status(rid, "completed")
    assert done["status"] == "completed"
    assert client.result(rid, include_cost="true")["cost"] == 0.0
    assert _stats(client)["billed_usd"] == 0.0


def test_bill_on_accept_bills_every_accepted_submit_failed_or_not(
    make_sim: Callable[..., Simulator],
) -> None:
    client = SimClient(make_sim(fail_rate=1.0, bill_on="accept"))
    rid = client.submit_ok(T2I, {"prompt": "a"})
    price = _stats(client)["billed"][rid]
    assert price > 0  # billed at the door, before the job ran
    client.wait_status(rid, "completed")
    result = client.result(rid, include_cost="true")
    assert result["status"] == "failed"
    assert result["cost"] == price
    assert _stats(client)["billed_usd"] == price


def test_bill_on_accept_refunds_a_job_cancelled_while_queued(
    make_sim: Callable[..., Simulator],
) -> None:
    client = SimClient(make_sim(bill_on="accept", concurrency=1, run_time=5))
    client.submit_ok(T2I, {"prompt": "a"})  # takes the one worker
    queued = client.submit_ok(T2I, {"prompt": "b"})
    assert client.post(f"/v1/requests/{queued}/cancel").json()["outcome"] == "cancelled"
    assert queued not in _stats(client)["billed"]


def test_result_costs_off_leaves_the_cost_out(make_sim: Callable[..., Simulator]) -> None:
    client = SimClient(make_sim(result_costs=False))
    rid = client.submit_ok(T2I, {"prompt": "a"})
    client.wait_status(rid, "completed")
    result = client.result(rid, include_cost="true")
    assert result["status"] == "succeeded" and "cost" not in result
    assert _stats(client)["billed_usd"] > 0  # billed all the same


def test_balance_is_what_is_left_after_the_bills(make_sim: Callable[..., Simulator]) -> None:
    client = SimClient(make_sim(balance=1.0, bill_on="accept"))
    assert client.get("/balance").json() == {"balance_usd": 1.0, "currency": "USD"}
    rid = client.submit_ok(T2I, {"prompt": "a"})
    price = _stats(client)["billed"][rid]
    assert client.get("/prod/v2/balance").json()["balance_usd"] == round(1.0 - price, 6)


def test_balance_needs_the_token(sim: Simulator) -> None:
    import requests

    answer = requests.get(f"{sim.base_url}/balance", timeout=10)
    assert answer.status_code == 401


def test_billed_per_identity_adds_up_each_inputs_requests(
    make_sim: Callable[..., Simulator],
) -> None:
    client = SimClient(make_sim(bill_on="accept", concurrency=1, run_time=5))
    first = client.submit_ok(T2I, {"prompt": "a"})
    again = client.submit_ok(T2I, {"prompt": "a"})  # the same input, paid again
    other = client.submit_ok(T2I, {"prompt": "b"})
    stats = _stats(client)
    price = stats["billed"][first]
    assert stats["billed_per_identity"] == {
        f'{T2I} {{"prompt":"a"}}': 2 * price,
        f'{T2I} {{"prompt":"b"}}': price,
    }
    assert client.post(f"/v1/requests/{other}/cancel").json()["outcome"] == "cancelled"
    assert client.post(f"/v1/requests/{again}/cancel").json()["outcome"] == "cancelled"
    assert _stats(client)["billed_per_identity"] == {f'{T2I} {{"prompt":"a"}}': price}
