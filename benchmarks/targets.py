"""The targets every figure is judged against, and the printed tables."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Target:
    name: str
    value: Any
    goal: str
    ok: bool | None  # None: not measured


def _get(results: dict[str, Any], *keys: str) -> Any:
    node: Any = results
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def targets(results: dict[str, Any]) -> list[Target]:
    """Every target of issue 7, judged on what was measured (None where not measured)."""
    r = results

    def val(section: str, key: str) -> Any:
        data = r.get(section) or {}
        return data.get(key) if data.get("rc", 0) == 0 else None

    def judge(name: str, value: Any, goal: str, test: Callable[[Any], bool]) -> Target:
        return Target(name, value, goal, None if value is None else bool(test(value)))

    size = f"{r['params']['scale_jobs']:,}"
    simple = [  # name, section, key, goal, test
        ("rate-bound efficiency (wall)", "rate", "efficiency", ">= 0.90", lambda v: v >= 0.9),
        ("rate-bound API calls/job", "rate", "calls_per_job", "<= 2.2", lambda v: v <= 2.2),
        ("rate-bound 429s (limits agree)", "rate", "throttled_429", "== 0", lambda v: v == 0),
        ("overhead CPU ms/job", "overhead", "cpu_ms_per_job", "<= 3 ms", lambda v: v <= 3),
        (
            f"resume {size} finished: wall s",
            "state",
            "resume_wall_s",
            "<= 1.5 s",
            lambda v: v <= 1.5,
        ),
        (
            f"resume {size} finished: peak RSS MB",
            "state",
            "resume_maxrss_mb",
            "<= 150 MB",
            lambda v: v <= 150,
        ),
        (f"status of {size}: wall s", "state", "status_wall_s", "<= 1.5 s", lambda v: v <= 1.5),
        (
            f"report of {size} (unchanged): wall s",
            "state",
            "report_wall_s",
            "<= 1.5 s",
            lambda v: v <= 1.5,
        ),
        (
            f"report of {size} (another grid): wall s",
            "state",
            "report_grid_wall_s",
            "<= 1.5 s",
            lambda v: v <= 1.5,
        ),
        (
            f"report of {size} (every file rewritten): wall s",
            "state",
            "report_rewrite_wall_s",
            "<= 1.5 s",
            lambda v: v <= 1.5,
        ),
        (f"compare of {size}: wall s", "state", "compare_wall_s", "<= 1.5 s", lambda v: v <= 1.5),
        (
            "state.db bytes/job, real run (no files)",
            "state",
            "real_run_bytes_per_job",
            "<= 400",
            lambda v: v <= 400,
        ),
        (
            "state.db bytes/job, built rows (no ledger)",
            "state",
            "state_bytes_per_job",
            "<= 400",
            lambda v: v <= 400,
        ),
        ("transition cost 100k/1k", "transitions", "ratio", "<= 1.5", lambda v: v <= 1.5),
    ]
    big = f"{r['params'].get('big_run_jobs', 0):,}"
    simple += [
        (f"run of {big}, preparing: peak RSS MB", "bigrun", "prepare_maxrss_mb", "<= 300 MB",
         lambda v: v <= 300),
        (f"run of {big}, until done: peak RSS MB", "bigrun", "maxrss_mb", "<= 300 MB",
         lambda v: v <= 300),
        (f"resume {big} finished: wall s", "bigrun", "resume_wall_s", "<= 10 s",
         lambda v: v <= 10),
    ]  # fmt: skip
    out = [judge(name, val(sec, key), goal, test) for name, sec, key, goal, test in simple]
    slots = _get(r, "regimes", "slot-bound", "batchrun")
    if slots is not None and not r["params"].get("quick"):
        value = slots.get("efficiency") if slots.get("rc") == 0 else None
        out.append(judge("slot-bound regime: efficiency", value, ">= 0.95", lambda v: v >= 0.95))
    out[4:4] = plan_targets(r.get("plan") or {})
    ours: dict[str, Any] = (r.get("rate") or {}) if val("rate", "wall_s") else {}
    for i, (threads, row) in enumerate((r.get("baseline") or {}).items()):
        value = None
        if ours and row.get("rc") == 0:
            value = {
                "speedup": row.get("batchrun_speedup"),
                "calls/job": f"{ours['calls_per_job']} vs {row['calls_per_job']}",
                "429s": f"{ours['throttled_429']} vs {row['throttled_429']}",
            }

        def beats(v: dict, row: dict = row) -> bool:
            return (
                v["speedup"] > 1
                and ours["calls_per_job"] < row["calls_per_job"]
                and ours["throttled_429"] == 0
            )

        goal = "faster, fewer calls, 0 429s"
        out.insert(3 + i, judge(f"beats baseline {threads} threads", value, goal, beats))
    return out


def plan_targets(plan: dict[str, Any]) -> list[Target]:
    """Issue 23's plan targets at each size measured: `plan --json` <= 8 s and <= 200 MB at a
    million jobs (issue 7's < 5 s and < 300 MB at 100,000), the table <= 3 s."""
    out = []
    for n in plan.get("sizes") or []:
        big = n >= 1_000_000
        for kind, key, goal, limit in (
            ("--json", "wall_s", "<= 8 s" if big else "< 5 s", 8 if big else 5),
            ("--json", "maxrss_mb", "<= 200 MB" if big else "< 300 MB", 200 if big else 300),
            ("(table)", "wall_s", "<= 3 s", 3),
        ):
            row = plan.get(f"{'json' if kind == '--json' else 'table'}_{n}") or {}
            value = row.get(key) if row.get("rc") == 0 and not row.get("timed_out") else None
            unit = "wall s" if key == "wall_s" else "peak RSS MB"
            name = f"plan {kind} {n:,} jobs: {unit}"
            strict = goal.startswith("<=")
            ok = None if value is None else (value <= limit if strict else value < limit)
            out.append(Target(name, value, goal, ok))
    return out


def print_table(results: dict[str, Any], judged: list[Target]) -> None:
    rows: list[tuple[str, str]] = []

    def add(label: str, value: Any) -> None:
        if value is not None:
            rows.append(
                (label, json.dumps(value) if isinstance(value, (dict, list)) else str(value))
            )

    for section in ("rate", "baseline", "overhead", "plan", "state", "transitions", "bigrun"):
        data = results.get(section)
        if not data:
            continue
        if section == "baseline":
            for threads, row in data.items():
                for key, value in row.items():
                    add(f"baseline-{threads}.{key}", value)
            continue
        for key, value in data.items():
            if key != "stderr_tail":
                add(f"{section}.{key}", value)
    width = max((len(k) for k, _ in rows), default=10)
    print(f"\n| {'figure'.ljust(width)} | value")
    print(f"|-{'-' * width}-|------")
    for key, value in rows:
        print(f"| {key.ljust(width)} | {value}")
    tw = max(len(t.name) for t in judged)
    print(f"\n| {'target'.ljust(tw)} | {'goal'.ljust(28)} | {'result':6} | measured")
    print(f"|-{'-' * tw}-|-{'-' * 28}-|--------|---------")
    for t in judged:
        verdict = "n/a" if t.ok is None else ("PASS" if t.ok else "FAIL")
        value = json.dumps(t.value) if isinstance(t.value, dict) else t.value
        print(f"| {t.name.ljust(tw)} | {t.goal.ljust(28)} | {verdict:6} | {value}")
    for section, err in (results.get("errors") or {}).items():
        print(f"! {section}: {err.splitlines()[-1] if err else ''}")
