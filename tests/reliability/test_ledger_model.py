"""A model-based test of the money and provenance promises: hypothesis drives random sequences
of what users do (run, SIGKILL at a random moment, rerun, --retry-failed, --resubmit-unknown,
cancel, a manifest edit, a catalog re-pull with another price; each in the run folder or in one
of two shards, with or without a cross-run cache; a --simulate run filling that cache; a merge
of the shards) against a simulator that bills every submit it accepts and injects faults. After
every step it checks, on the simulator's own books (each call it billed belongs to the folder
whose step made it: steps run one at a time): each folder billed <= its cap (a shard's is half
the manifest's; + one job of the model nothing priced), no job billed in a folder more than its
attempts allow there (1 + run.retries, kills or not, as many again each time the user asked to
send jobs again), a job the cache held for this API billed nothing by a run given the cache,
each folder's origin is the API it ran against and every result in it came from that API (never
a simulated one, through the cache or a merge), every succeeded job's files verify, and
status, summary.json and report.csv agree with each other on the money.

The default profile is short (a few sequences of a few steps); BATCHRUN_MODEL_EXAMPLES and
BATCHRUN_MODEL_STEPS raise it (the long run is marked slow). Each profile prints the worst
billed/cap it saw, per kind of sweep."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from testing.cli import batchrun_cmd, clean_env, run_cli
from testing.simproc import SimProcess, start_simulator

from .conftest import canonical_identity, read_report

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
# How often the combinations happened: runs given a cache holding jobs of the sweep (and those
# jobs), shard runs, --simulate runs, merges made and mixed-origin merges refused.
SEEN: Counter[str] = Counter()


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


FOLDERS = ("run", "shard-1", "shard-2")  # the folders a step may run in, against the API
# Where a step runs: the run folder as often as both shards together (its sequences are the
# model's first).
WHERE = ("run", "run", "shard-1", "shard-2")


class Ledger(RuleBasedStateMachine):
    """One simulator, the run folder and two shards of the same manifest, one cache; the model
    is what the user asked for, and which folder each call the simulator billed came from."""

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
        self.cache = self.root / "cache"
        self.merges = 0
        # Per folder: runs with --retry-failed / --resubmit-unknown (may pay again), whether
        # its last step wrote the report, the request ids billed, the attempts per input.
        self.asks = dict.fromkeys(FOLDERS, 0)
        self.settled = dict.fromkeys(FOLDERS, False)
        self.billed_ids: dict[str, set[str]] = {f: set() for f in FOLDERS}
        self.attempts: dict[str, Counter[str]] = {f: Counter() for f in FOLDERS}
        self.seen = self._books()

    def teardown(self) -> None:
        if getattr(self, "sim", None) is not None:
            self.sim.stop()

    def _args(self, where: str, cache: bool) -> list[str]:
        """`run`'s arguments for the folder `where`, with the cache or not."""
        shard = [] if where == "run" else ["--shard", f"{where[-1]}/2"]
        return ["run", str(self.manifest), "--api-base", self.sim.base_url, "--run-dir",
                str(self.root / where), "--quiet", *shard,
                *(["--cache", str(self.cache)] if cache else [])]  # fmt: skip

    def _cap(self, where: str) -> Decimal:
        return self.cap if where == "run" else self.cap / 2  # shards split the cap

    # ---- what users do --------------------------------------------------------------------

    @rule(again=st.sampled_from(["", "--retry-failed", "--resubmit-unknown"]),
          where=st.sampled_from(WHERE), cache=st.booleans())  # fmt: skip
    def run(self, again: str, where: str, cache: bool) -> None:
        held = self._cached_here() if cache else set()
        result = run_cli(*self._args(where, cache), *([again] if again else []), token=TOKEN,
                         timeout=120)  # fmt: skip
        assert result.returncode in (0, 1, 4), result.stderr
        assert "Traceback" not in result.stderr
        self.asks[where] += bool(again)
        self.settled[where] = True
        self._account(where, held)
        SEEN["shard runs"] += where != "run"

    @rule(submits=st.integers(1, 3), accepted=st.booleans(), where=st.sampled_from(WHERE),
          cache=st.booleans())  # fmt: skip
    def kill(self, submits: int, accepted: bool, where: str, cache: bool) -> None:
        """SIGKILL a run while its `submits`-th submit is in the air (the simulator answers
        every call 0.3 s late): the worst moment, a submit that may or may not be billed; or,
        `accepted`, once the simulator has accepted `submits` more: attempts in flight, whose
        failures the rerun reads (and retries, within what is left of their allowance)."""
        held = self._cached_here() if cache else set()

        def sent() -> int:
            stats = self.sim.stats()
            return int(stats["submits"] if accepted else stats["calls"].get("submit", 0))

        seen = sent()
        proc = subprocess.Popen(batchrun_cmd(*self._args(where, cache)), env=clean_env(TOKEN),
                                stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:
            if sent() >= seen + submits:
                break
            time.sleep(0.01)
        proc.kill()
        proc.wait(30)
        self._quiet()
        self.settled[where] = False
        self._account(where, held)

    @rule(where=st.sampled_from(WHERE))
    def cancel(self, where: str) -> None:
        if (self.root / where / "state.db").exists():
            result = run_cli("cancel", str(self.root / where), "--api-base", self.sim.base_url,
                             token=TOKEN, timeout=60)  # fmt: skip
            assert result.returncode in (0, 1), result.stderr
            self._account(where, set())

    @rule(seeds=st.integers(3, 8))
    def edit(self, seeds: int) -> None:
        _manifest(self.manifest, seeds, self.priced, self.retries)

    @rule(price=st.sampled_from([0.01, 0.04, 0.08]))
    def repull(self, price: float) -> None:
        file = next(self.schemas.glob("*.json"))
        entry = json.loads(file.read_text())
        entry.update(base_price_usd=price, fetched_at=time.strftime("%Y-%m-%dT%H:%M:%SZ"))
        file.write_text(json.dumps(entry))

    @rule()
    def simulate(self) -> None:
        """The same sweep on the built-in simulator, into the same cache: results that must
        never serve a run against the API."""
        result = run_cli("run", str(self.manifest), "--simulate", "--run-dir",
                         str(self.root / "simulated"), "--cache", str(self.cache), "--quiet",
                         timeout=120)  # fmt: skip
        assert result.returncode in (0, 1, 4), result.stderr
        assert "Traceback" not in result.stderr
        SEEN["simulated runs"] += 1

    @precondition(lambda self: all((self.root / f"shard-{k}/state.db").exists() for k in (1, 2)))
    @rule()
    def merge(self) -> None:
        shards = [self.root / "shard-1", self.root / "shard-2"]
        self.merges += 1
        into = self.root / f"merged-{self.merges}"
        result = run_cli("merge", *map(str, shards), "--into", str(into), timeout=120)
        assert result.returncode in (0, 2), result.stderr
        assert "Traceback" not in result.stderr
        if result.returncode == 0:
            SEEN["merges"] += 1
            self._check_origin(into)
            self._check_reports(into)
        simulated = self.root / "simulated"
        if (simulated / "state.db").exists():
            mixed = self.root / f"mixed-{self.merges}"
            refused = run_cli("merge", str(shards[0]), str(simulated), "--into", str(mixed))
            assert refused.returncode == 2, refused.stdout + refused.stderr
            assert not (mixed / "state.db").exists()
            SEEN["mixed merges refused"] += 1

    # ---- the simulator's books, by folder -------------------------------------------------

    def _books(self) -> dict:
        deadline = time.monotonic() + 30
        while True:  # jobs still running are billed already (at accept): wait for quiet
            stats = self.sim.stats()
            if not (stats["jobs"].get("in_queue") or stats["jobs"].get("in_progress")):
                return stats
            if time.monotonic() > deadline:
                return stats
            time.sleep(0.05)

    def _quiet(self) -> None:
        """Until the simulator has answered every submit a killed run left in the air (each
        0.3 s late): what it bills is the killed step's, not the next one's."""
        deadline = time.monotonic() + 10
        before = self.sim.stats()
        while time.monotonic() < deadline:
            time.sleep(0.5)
            now = self.sim.stats()
            if all(now[k] == before[k] for k in ("calls", "submits", "billed")):
                return
            before = now

    def _account(self, where: str, held: set[str]) -> None:
        """What the simulator billed since the last step is `where`'s; `held`, the inputs the
        cache held for this API before it, must have been sent nothing."""
        stats = self._books()
        mine = set(stats["billed"]) - {r for ids in self.billed_ids.values() for r in ids}
        self.billed_ids[where] |= mine
        before = self.seen["submits_per_identity"]
        sent = Counter({k: n - before.get(k, 0) for k, n in stats["submits_per_identity"].items()})
        self.attempts[where] += sent
        self.seen = stats
        assert {k: sent[k] for k in held if sent[k]} == {}, "a job the cache held was sent"
        SEEN["cache runs"] += bool(held)
        SEEN["jobs the cache held"] += len(held)

    def _cached_here(self) -> set[str]:
        """The inputs the cache holds results of this API for (entry.json of each entry)."""
        held = set()
        for entry in self.cache.glob("entries/*/*/entry.json"):
            data = json.loads(entry.read_text())
            if data.get("origin") == self.sim.base_url:
                held.add(canonical_identity(data["model_id"], data["inputs"]))
        return held

    # ---- what must hold after every step ---------------------------------------------------

    @invariant()
    def each_folder_billed_within_its_cap(self) -> None:
        if not hasattr(self, "sim"):
            return
        billed = {r: Decimal(repr(v)) for r, v in self._books()["billed"].items()}
        assert set(billed) <= {r for ids in self.billed_ids.values() for r in ids}
        one_job = max(billed.values(), default=Decimal(0))
        kind = "priced" if self.priced else "unpriced"
        for where in FOLDERS:
            spent = sum((billed[r] for r in self.billed_ids[where] if r in billed), Decimal(0))
            cap = self._cap(where)
            _note(kind if where == "run" else f"{kind} shard", spent, cap)
            _note("promise", spent, cap + one_job)
            assert spent <= cap + one_job, (where, spent, cap)

    @invariant()
    def no_job_paid_more_than_its_attempts_allow(self) -> None:
        """Each allowance is 1 + retries attempts that may be billed, kills or not; each run
        that asked to send jobs again may grant each job one more."""
        if not hasattr(self, "sim"):
            return
        for where in FOLDERS:
            most = (1 + self.retries) * (1 + self.asks[where])
            worst = max(self.attempts[where].values(), default=0)
            seen = MOST_ATTEMPTS[0] if MOST_ATTEMPTS else (0, 1)
            if (worst / most, worst) > (seen[0] / seen[1], seen[0]):
                MOST_ATTEMPTS[:] = [(worst, most)]
            over = {k: n for k, n in self.attempts[where].items() if n > most}
            assert over == {}, (where, most, over)

    @invariant()
    def each_folder_says_where_its_results_came_from(self) -> None:
        for where in FOLDERS if hasattr(self, "root") else ():
            if (self.root / where / "state.db").exists():
                self._check_origin(self.root / where)

    @invariant()
    def reports_agree_and_files_verify(self) -> None:
        for where in FOLDERS if hasattr(self, "root") else ():
            if self.settled[where] and (self.root / where / "summary.json").exists():
                self._check_reports(self.root / where)

    def _check_origin(self, folder: Path) -> None:
        """The folder's origin is the API, and so is every result in it: the simulator's
        outputs name its own host, the built-in one's another."""
        status = json.loads(run_cli("status", str(folder), "--json").stdout)
        assert status["origin"] == self.sim.base_url
        if (folder / "report.csv").exists():
            for r in read_report(folder):
                for url in filter(None, r["output_urls"].split(";")):
                    assert url.startswith(self.sim.base_url + "/"), (folder.name, r["cached"], url)

    def _check_reports(self, folder: Path) -> None:
        status = json.loads(run_cli("status", str(folder), "--json").stdout)
        summary = json.loads((folder / "summary.json").read_text())
        for key in ("spent_usd", "spent_known_usd", "cost_usd"):
            assert status[key] == summary[key], key
        rows = read_report(folder)
        column = sum((Decimal(r["cost_usd"] or "0") for r in rows), Decimal(0))
        assert column == Decimal(repr(summary["cost_usd"]))
        for r in rows:
            if r["status"] != "succeeded" or not r["output_files"]:
                continue
            for name, sha in zip(r["output_files"].split(";"), r["output_sha256"].split(";"),
                                 strict=True):  # fmt: skip
                assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == sha


def _note(kind: str, billed: Decimal, cap: Decimal) -> None:
    if kind not in WORST or billed / cap > WORST[kind][0]:
        WORST[kind] = (billed / cap, billed, cap)


def _worst() -> str:
    """The worst billed/cap of each kind of sweep seen, as one line."""
    parts = [
        f"{kind} {ratio:.3f} (${billed:.3f} of ${cap:.3f})"
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
    SEEN.clear()
    started = time.monotonic()
    Ledger.TestCase.settings = _profile(examples, steps)
    Ledger.TestCase().runTest()
    most = "/".join(map(str, MOST_ATTEMPTS[0])) if MOST_ATTEMPTS else "-"
    print(f"\nledger model: {examples} sequences of up to {steps} steps in "
          f"{time.monotonic() - started:.1f}s, every invariant held; {_worst()}; most attempts "
          f"billed to one job / allowed {most}; {_seen()}")  # fmt: skip


def _seen() -> str:
    what = ("cache runs", "jobs the cache held", "shard runs", "simulated runs", "merges",
            "mixed merges refused")  # fmt: skip
    return ", ".join(f"{name} {SEEN[name]}" for name in what)


def test_the_ledger_model_short(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _drive(tmp_path, monkeypatch, examples=4, steps=6)


@pytest.mark.slow
def test_the_ledger_model_long(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    examples = int(os.environ.get("BATCHRUN_MODEL_EXAMPLES", "0"))
    if not examples:
        pytest.skip("set BATCHRUN_MODEL_EXAMPLES (and BATCHRUN_MODEL_STEPS) for the long profile")
    _drive(tmp_path, monkeypatch, examples, int(os.environ.get("BATCHRUN_MODEL_STEPS", "10")))
