"""A model-based test of the money and provenance promises: hypothesis drives random sequences
of what users do (run, SIGKILL at a random moment, rerun, --retry-failed, --resubmit-unknown,
cancel, a manifest edit, a catalog re-pull with another price) against a simulator that bills
every submit it accepts and injects faults, and after every step checks, on the simulator's own
books: billed <= cap (+ one job of the model nothing priced), no job billed more than its
attempts allow (1 + run.retries, kills or not, as many again each time the user asked to send
jobs again), the folder's origin is the API it ran against, every succeeded job's files
verify, and status, summary.json and report.csv agree with each other on the money.

The default profile is short (a few sequences of a few steps); BATCHRUN_MODEL_EXAMPLES and
BATCHRUN_MODEL_STEPS raise it (the long run is marked slow). Each profile prints the worst
billed/cap it saw, per kind of sweep."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from testing.cli import batchrun_cmd, clean_env, run_cli
from testing.simproc import SimProcess, start_simulator

TOKEN = "tok-model-5e1f"
PRICED = "blackforestlabs/flux-1-kontext/pro/edit"  # its price is pulled from the catalog
UNPRICED = "google/nano-banana-2-lite/text-to-image"  # the packaged schema: no price
IMAGE = (
    "https://playgrounds-storage-public.runcomfy.net/tools/7063/media-files/usecase1-1-input.webp"
)
CAP = Decimal("0.30")
SMALL_CAP = Decimal("0.01")  # a sweep of the unpriced model alone: less than one job
# The most billed the invariant saw against the cap, per kind of sweep ("priced": both models
# under CAP; "unpriced": the unpriced model alone under SMALL_CAP): (billed / cap, billed, cap),
# and "promise": billed / (cap + the one job the promise allows). Printed by _drive.
WORST: dict[str, tuple[Decimal, Decimal, Decimal]] = {}
# The most attempts one job was billed against what its allowances allowed: (billed, allowed).
MOST_ATTEMPTS: list[tuple[int, int]] = []


def _manifest(path: Path, seeds: int, priced: bool = True, retries: int = 0) -> None:
    data = {
        "version": 1,
        "name": "model",
        "run": {
            "rate_limit": "100/s",
            "poll_interval": "50ms",
            "max_cost_usd": float(CAP if priced else SMALL_CAP),
            "retries": retries,
        },
        "models": [
            {"id": PRICED, "inputs": {"prompt": "a red umbrella", "image_url": IMAGE},
             "matrix": {"seed": list(range(1, seeds + 1))}},
            {"id": UNPRICED, "matrix": {"prompt": [f"a shore {i}" for i in range(seeds // 2)]}},
        ][0 if priced else 1 :],
    }  # fmt: skip
    path.write_text(json.dumps(data))


class Ledger(RuleBasedStateMachine):
    """One run folder, one simulator; the model is what the user asked for."""

    sim: SimProcess

    @initialize(costs=st.booleans(), priced=st.booleans(), retries=st.sampled_from([0, 1]))
    def start(self, costs: bool, priced: bool, retries: int) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="ex", dir=os.environ["BATCHRUN_MODEL_TMP"]))
        # With retries, most attempts fail: the retries are what the sequence is about.
        fail = "0.6" if retries else "0.2"
        flags = ["--run-time", "0.05", "--workers", "0", "--bill-on", "accept", "--seed", "3",
                 "--fail-rate", fail, "--drop-rate", "0.03", "--slow", "0.3"]  # fmt: skip
        self.sim = start_simulator(*flags, *([] if costs else ["--no-result-costs"]), token=TOKEN)
        self.manifest = self.root / "m.yaml"
        self.priced = priced  # else the unpriced model alone, under a cap of about one job
        self.cap = CAP if priced else SMALL_CAP
        self.retries = retries  # failed attempts are sent again, killed or not
        _manifest(self.manifest, 6, priced, retries)
        self.schemas = self.root / "schemas" / "models"
        pulled = run_cli("models", "pull", PRICED, "--dir", str(self.schemas),
                         "--api-base", self.sim.base_url, token=TOKEN)  # fmt: skip
        assert pulled.returncode == 0, pulled.stderr
        self.run_dir = self.root / "run"
        self.asks = 0  # runs with --retry-failed / --resubmit-unknown: may pay again
        self.settled = False  # the last step wrote the report (a run that ended, a cancel)

    def teardown(self) -> None:
        if getattr(self, "sim", None) is not None:
            self.sim.stop()

    def _run(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return run_cli("run", str(self.manifest), "--api-base", self.sim.base_url, "--run-dir",
                       str(self.run_dir), "--quiet", *extra, token=TOKEN, timeout=120)  # fmt: skip

    # ---- what users do --------------------------------------------------------------------

    @rule(again=st.sampled_from(["", "--retry-failed", "--resubmit-unknown"]))
    def run(self, again: str) -> None:
        result = self._run(*([again] if again else []))
        assert result.returncode in (0, 1, 4), result.stderr
        assert "Traceback" not in result.stderr
        self.asks += bool(again)
        self.settled = True

    @rule(submits=st.integers(1, 3), accepted=st.booleans())
    def kill(self, submits: int, accepted: bool) -> None:
        """SIGKILL a run while its `submits`-th submit is in the air (the simulator answers
        every call 0.3 s late): the worst moment, a submit that may or may not be billed; or,
        `accepted`, once the simulator has accepted `submits` more: attempts in flight, whose
        failures the rerun reads (and retries, within what is left of their allowance)."""
        cmd = batchrun_cmd("run", str(self.manifest), "--api-base", self.sim.base_url,
                           "--run-dir", str(self.run_dir), "--quiet")  # fmt: skip

        def sent() -> int:
            stats = self.sim.stats()
            return int(stats["submits"] if accepted else stats["calls"].get("submit", 0))

        seen = sent()
        proc = subprocess.Popen(cmd, env=clean_env(TOKEN), stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:
            if sent() >= seen + submits:
                break
            time.sleep(0.01)
        proc.kill()
        proc.wait(30)
        self.settled = False

    @rule()
    def cancel(self) -> None:
        if (self.run_dir / "state.db").exists():
            result = run_cli("cancel", str(self.run_dir), "--api-base", self.sim.base_url,
                             token=TOKEN, timeout=60)  # fmt: skip
            assert result.returncode in (0, 1), result.stderr

    @rule(seeds=st.integers(3, 8))
    def edit(self, seeds: int) -> None:
        _manifest(self.manifest, seeds, self.priced, self.retries)

    @rule(price=st.sampled_from([0.01, 0.04, 0.08]))
    def repull(self, price: float) -> None:
        file = next(self.schemas.glob("*.json"))
        entry = json.loads(file.read_text())
        entry.update(base_price_usd=price, fetched_at=time.strftime("%Y-%m-%dT%H:%M:%SZ"))
        file.write_text(json.dumps(entry))

    # ---- what must hold after every step ---------------------------------------------------

    def _books(self) -> dict:
        deadline = time.monotonic() + 30
        while True:  # jobs still running are billed already (at accept): wait for quiet
            stats = self.sim.stats()
            if not (stats["jobs"].get("in_queue") or stats["jobs"].get("in_progress")):
                return stats
            if time.monotonic() > deadline:
                return stats
            time.sleep(0.05)

    @invariant()
    def billed_within_the_cap(self) -> None:
        if not hasattr(self, "sim"):
            return
        stats = self._books()
        bills = [Decimal(repr(v)) for v in stats["billed"].values()]
        one_job = max(bills, default=Decimal(0))
        billed = sum(bills, Decimal(0))
        _note("priced" if self.priced else "unpriced", billed, self.cap)
        _note("promise", billed, self.cap + one_job)
        assert billed <= self.cap + one_job, stats["billed"]

    @invariant()
    def no_job_paid_more_than_its_attempts_allow(self) -> None:
        """Each allowance is 1 + retries attempts that may be billed, kills or not; each run
        that asked to send jobs again may grant each job one more."""
        if not hasattr(self, "sim"):
            return
        most = (1 + self.retries) * (1 + self.asks)
        per_job = self.sim.stats()["submits_per_identity"]
        worst = max(per_job.values(), default=0)
        seen = MOST_ATTEMPTS[0] if MOST_ATTEMPTS else (0, 1)
        if (worst / most, worst) > (seen[0] / seen[1], seen[0]):
            MOST_ATTEMPTS[:] = [(worst, most)]
        over = {k: n for k, n in per_job.items() if n > most}
        assert over == {}, (most, over)

    @invariant()
    def the_folder_says_where_its_results_came_from(self) -> None:
        if not hasattr(self, "run_dir") or not (self.run_dir / "state.db").exists():
            return
        status = json.loads(run_cli("status", str(self.run_dir), "--json").stdout)
        assert status["origin"] == self.sim.base_url

    @invariant()
    def reports_agree_and_files_verify(self) -> None:
        if not getattr(self, "settled", False) or not (self.run_dir / "summary.json").exists():
            return
        status = json.loads(run_cli("status", str(self.run_dir), "--json").stdout)
        summary = json.loads((self.run_dir / "summary.json").read_text())
        for key in ("spent_usd", "spent_known_usd", "cost_usd"):
            assert status[key] == summary[key], key
        with open(self.run_dir / "report.csv", newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        column = sum((Decimal(r["cost_usd"] or "0") for r in rows), Decimal(0))
        assert column == Decimal(repr(summary["cost_usd"]))
        for r in rows:
            if r["status"] != "succeeded" or not r["output_files"]:
                continue
            for name, sha in zip(r["output_files"].split(";"), r["output_sha256"].split(";"),
                                 strict=True):  # fmt: skip
                assert hashlib.sha256((self.run_dir / name).read_bytes()).hexdigest() == sha


def _note(kind: str, billed: Decimal, cap: Decimal) -> None:
    if kind not in WORST or billed / cap > WORST[kind][0]:
        WORST[kind] = (billed / cap, billed, cap)


def _worst() -> str:
    """The worst billed/cap of each kind of sweep seen, as one line."""
    parts = [
        f"{kind} {ratio:.3f} (${billed:.2f} of ${cap:.2f})"
        for kind, (ratio, billed, cap) in sorted(WORST.items())
        if kind != "promise"
    ]
    promise = f"{WORST['promise'][0]:.3f}" if "promise" in WORST else "-"
    return f"worst billed/cap: {', '.join(parts) or '-'}; worst billed/(cap + one job) {promise}"


def _profile(examples: int, steps: int) -> settings:
    return settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


def _drive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, examples: int, steps: int) -> None:
    monkeypatch.setenv("BATCHRUN_MODEL_TMP", str(tmp_path))
    WORST.clear()
    MOST_ATTEMPTS.clear()
    started = time.monotonic()
    Ledger.TestCase.settings = _profile(examples, steps)
    Ledger.TestCase().runTest()
    most = "/".join(map(str, MOST_ATTEMPTS[0])) if MOST_ATTEMPTS else "-"
    print(f"\nledger model: {examples} sequences of up to {steps} steps in "
          f"{time.monotonic() - started:.1f}s, every invariant held; {_worst()}; most attempts "
          f"billed to one job / allowed {most}")  # fmt: skip


def test_the_ledger_model_short(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _drive(tmp_path, monkeypatch, examples=3, steps=5)


@pytest.mark.slow
def test_the_ledger_model_long(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    examples = int(os.environ.get("BATCHRUN_MODEL_EXAMPLES", "0"))
    if not examples:
        pytest.skip("set BATCHRUN_MODEL_EXAMPLES (and BATCHRUN_MODEL_STEPS) for the long profile")
    _drive(tmp_path, monkeypatch, examples, int(os.environ.get("BATCHRUN_MODEL_STEPS", "10")))
