"""Load generator for the simulator: API calls per second from several keep-alive clients.

    python benchmarks/sim_load.py                       # starts an in-process simulator
    python benchmarks/sim_load.py --base-url http://127.0.0.1:8787 --seconds 10 --threads 8

Each thread owns a requests.Session and loops: submit, then status and result polls of its
recent requests (a mix like a real run's: 1 submit : 2 status : 1 result). With no --base-url
the simulator runs in a child process, so client and server do not share one GIL.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo's testing/ helpers
from testing.simproc import SimProcess, start_simulator  # noqa: E402

MODEL = "google/nano-banana-2-lite/text-to-image"


def worker(base: str, token: str, stop_at: float, counts: list[int], errors: list[int], i: int):
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {token}"
    recent: list[str] = []
    n = 0
    while time.monotonic() < stop_at:
        step = n % 4
        if step == 0 or not recent:
            r = s.post(f"{base}/v1/models/{MODEL}", json={"prompt": f"load {i} {n}"})
            if r.status_code == 200:
                recent = (recent + [r.json()["request_id"]])[-8:]
        elif step in (1, 2):
            r = s.get(f"{base}/v1/requests/{recent[n % len(recent)]}/status")
        else:
            r = s.get(f"{base}/v1/requests/{recent[-1]}/result")
        counts[i] += 1
        if r.status_code >= 400:
            errors[i] += 1
        n += 1


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux /proc), None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url")
    ap.add_argument("--token", default="sim-token")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--workers", type=int, default=0, help="simulator workers (child only)")
    args = ap.parse_args()
    sim: SimProcess | None = None
    base, token = args.base_url, args.token
    if not base:
        sim = start_simulator("--run-time", "0.2", "--workers", str(args.workers), token=token)
        base = sim.base_url
    pid = sim.proc.pid if sim else None
    try:
        counts = [0] * args.threads
        errors = [0] * args.threads
        stop_at = time.monotonic() + args.seconds
        threads = [
            threading.Thread(target=worker, args=(base, token, stop_at, counts, errors, i))
            for i in range(args.threads)
        ]
        cpu_before = cpu_seconds(pid) if pid else None
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        cpu_after = cpu_seconds(pid) if pid else None
        stats = requests.get(f"{base}/_sim/stats", timeout=10).json()
        total = sum(counts)
        print(
            f"{total} API calls in {elapsed:.1f} s with {args.threads} threads: "
            f"{total / elapsed:.0f} calls/s, {sum(errors)} errors"
        )
        if cpu_before is not None and cpu_after is not None and total:
            cpu = cpu_after - cpu_before
            print(
                f"server CPU: {cpu:.2f} s = {1000 * cpu / total:.2f} ms per call "
                f"(~{total / max(cpu, 1e-9):.0f} calls per server CPU-second)"
            )
        print("server counted:", json.dumps(stats["calls"]), "peak_rate_1s:", stats["peak_rate_1s"])
    finally:
        if sim is not None:
            sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
