"""`batchrun simulate` in its own process, for tests and benchmarks: started on a free port,
its output drained into memory (and a log file if asked), stopped with SIGTERM."""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import requests
import yaml

from testing.cli import batchrun_cmd, clean_env


@dataclass
class SimProcess:
    """A `batchrun simulate` subprocess; its output is drained by a thread into `lines`."""

    proc: subprocess.Popen[str]
    base_url: str
    token: str
    lines: list[str] = field(default_factory=list)
    config: Path | None = None  # a settings file written for this process, removed at stop
    session: requests.Session = field(default_factory=requests.Session)

    @property
    def url(self) -> str:
        return self.base_url

    def stats(self) -> dict[str, Any]:
        """GET /_sim/stats: calls per endpoint, 429s, jobs by state, submits per identity."""
        r = self.session.get(
            f"{self.base_url}/_sim/stats",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
        )
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        return data

    def files(self) -> dict[str, str]:
        """url -> sha256 of every output file the simulator serves (GET /_sim/files)."""
        r = self.session.get(f"{self.base_url}/_sim/files", timeout=30)
        r.raise_for_status()
        data: dict[str, str] = r.json()
        return data

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.session.close()
        if self.config is not None:
            self.config.unlink(missing_ok=True)

    def __enter__(self) -> SimProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_simulator(
    *flags: str,
    token: str = "sim-token",
    settings: dict[str, Any] | None = None,
    log: Path | None = None,
    timeout: float = 30.0,
) -> SimProcess:
    """Start `batchrun simulate --port 0 --token TOKEN [--config FILE] FLAGS...` and wait until
    it answers. `settings` go to a YAML settings file (every setting has a name there, not
    every one a flag); flags win over it. Its output goes to `lines` and to `log` if given."""
    config = None
    cmd = batchrun_cmd("simulate", "--port", "0", "--token", token)
    if settings:
        fd, name = tempfile.mkstemp(prefix="batchrun-sim-", suffix=".yaml")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yaml.safe_dump(settings, f)
        config = Path(name)
        cmd += ["--config", name]
    cmd += flags
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=clean_env(token=None),
    )
    lines: list[str] = []
    first: list[str] = []
    got_first = threading.Event()
    sink: IO[str] | None = open(log, "w", encoding="utf-8") if log is not None else None  # noqa: SIM115

    def drain() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if sink is not None:
                sink.write(line)
                sink.flush()
            if not first and "http://" in line:
                first.append(line)
                got_first.set()
        got_first.set()
        if sink is not None:
            sink.close()

    threading.Thread(target=drain, daemon=True).start()
    if not got_first.wait(timeout) or not first:
        proc.kill()
        raise RuntimeError(f"simulator did not start: {cmd}\n{''.join(lines)}")
    url = next(w for w in first[0].split() if w.startswith("http://")).rstrip("/.,;")
    sim = SimProcess(proc=proc, base_url=url, token=token, lines=lines, config=config)
    # Wait (with a deadline) until it answers, rather than sleeping.
    deadline = time.monotonic() + timeout
    while True:
        try:
            sim.stats()
            return sim
        except (requests.RequestException, ValueError):
            if time.monotonic() > deadline or proc.poll() is not None:
                sim.stop()
                raise RuntimeError(f"simulator not answering: {''.join(lines)}") from None
            time.sleep(0.05)
