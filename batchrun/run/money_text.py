"""What the run says about money: the progress line's cost, the final line's, the lines of
`status`, and the errors a run ends with when the budget or the balance stopped it. The
figures come from the budget (run/budget.py) and the ledger; only the words live here."""

from __future__ import annotations

from decimal import Decimal

from batchrun.catalog.pricing import usd
from batchrun.errors import BudgetReached, InsufficientBalanceError
from batchrun.run.budget import Budget


def progress_cost(budget: Budget) -> str:
    """`$0.48 spent, est. $1.20 (cap $1.00)`, for the progress line."""
    text = f"{spent_text(budget.spent, budget.unknown_cost)}, "
    text += estimate_text(budget.est_total, budget.unpriced)
    if budget.cap is not None:
        text += f" (cap {usd(budget.cap)})"
    return text


def unknown_cost_note(budget: Budget) -> str:
    """Why an unpriced model's lost attempt stops the run under a cap ('' if none)."""
    n = budget.unknown_cost
    if not n:
        return ""
    models = budget.unknown_cost_models()
    return (
        f"{n} attempt{'s' if n != 1 else ''} of {', '.join(models) or 'an unpriced model'} may "
        "have been billed and nothing tells what it cost (the model has no price and no result "
        "gave a cost), so under a cap nothing more is sent: give the model a price (batchrun "
        "models pull MODEL_ID) or run without a cap"
    )


def budget_reached(budget: Budget, not_run: int, share: int) -> BudgetReached:
    """The error a run ends with when the cap left jobs not run (`share`: a shard of N)."""
    assert budget.cap is not None
    cap = f"{usd(budget.cap)} cap" + (f" (this shard's 1/{share})" if share > 1 else "")
    why = unknown_cost_note(budget)
    n = budget.unknown_cost
    unknown = f" + {n} attempt{'s' if n != 1 else ''} of unknown cost" if n else ""
    return BudgetReached(
        f"stopped at the cost budget: spent {usd(budget.spent)}{unknown} of the {cap}; "
        f"{not_run} job{'s' if not_run != 1 else ''} not run. "
        + (f"{why}. " if why else "")
        + "Rerun with a higher cap (--max-cost or run.max_cost_usd) to continue; "
        "jobs already paid are not paid again"
    )


def estimate_text(est_total: Decimal, unpriced: int) -> str:
    """`est. $1.00`, `est. $1.00 + 3 unpriced`, or, when no job has a price, `no estimate: 3
    jobs unpriced` (never a bare `est. $0.00` beside jobs that will cost money)."""
    if unpriced and not est_total:
        return f"no estimate: {unpriced} job{'s' if unpriced != 1 else ''} unpriced"
    return f"est. {usd(est_total)}" + (f" + {unpriced} unpriced" if unpriced else "")


def spent_text(spent: Decimal, unknown_cost: int = 0) -> str:
    """`$0.48 spent`, or `$0.48 spent + 1 attempt of unknown cost`."""
    text = f"{usd(spent)} spent"
    if unknown_cost:
        text += f" + {unknown_cost} attempt{'s' if unknown_cost != 1 else ''} of unknown cost"
    return text


def cost_text(budget: Budget) -> str:
    """`Cost $0.80 (est. $1.00, cap $1.00)`: what the folder's attempts cost (the ledger's
    spent), beside the plan's quote."""
    est = estimate_text(budget.est_total, budget.unpriced)
    if budget.cap is not None:
        est += f", cap {usd(budget.cap)}"
    unknown = f" + {budget.unknown_cost} of unknown cost" if budget.unknown_cost else ""
    return f"Cost {usd(budget.spent)}{unknown} ({est})"


def no_balance(exc: InsufficientBalanceError, not_run: int, again: str) -> InsufficientBalanceError:
    """The API's refusal, said plainly: what did not run (`not_run` jobs) and how to go on
    (rerun `again`)."""
    return InsufficientBalanceError(
        f"{exc.message}: insufficient balance, the account cannot pay for more jobs; "
        f"stopped submitting, {not_run} job{'s' if not_run != 1 else ''} not run. "
        f"Top up the RunComfy balance, then rerun: {again or 'the same command'}",
        endpoint=exc.endpoint,
        status=exc.status,
        error_code=exc.error_code,
    )
