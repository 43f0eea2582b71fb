"""A throwaway PostgreSQL server for tests and benchmarks: `initdb` into a temporary folder,
`pg_ctl start` on a free port of 127.0.0.1, password authentication over TCP.

The server binaries come from the machine (`initdb`, `pg_ctl` on PATH, or Debian's
/usr/lib/postgresql/N/bin). PostgreSQL refuses to run as root, so as root the server runs as the
`postgres` user (`runuser -u postgres`), which owns the data folder.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

USER = "batchrun"


def server_bin(name: str) -> str | None:
    """The path of a PostgreSQL server program (initdb, pg_ctl), or None when not installed."""
    found = shutil.which(name)
    if found:
        return found
    debian = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return debian[-1] if debian else None


def available() -> bool:
    return server_bin("initdb") is not None and server_bin("pg_ctl") is not None


@dataclass
class PgServer:
    """One running server; `url(db)` is a connection URL with the password in it."""

    root: Path
    port: int
    password: str

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/{db}"

    def create_database(self, name: str) -> str:
        """A new empty database; returns its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self, mode: str = "fast") -> None:
        _as_owner([_bin("pg_ctl"), "stop", "-D", str(self.data), "-m", mode, "-w"], check=False)

    def start(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            # fsync off: a stopped server (even `immediate`) loses nothing the OS was given;
            # synchronous_commit stays on, so a commit answered is a commit kept.
            f"-c unix_socket_directories={self.root} -c fsync=off "
            "-c full_page_writes=off -c max_connections=200"
        )
        _as_owner(
            [
                _bin("pg_ctl"),
                "start",
                "-D",
                str(self.data),
                "-w",
                "-t",
                "60",
                "-l",
                str(self.root / "server.log"),
                "-o",
                options,
            ]
        )
        _wait_for_port(self.port)

    def restart(self) -> None:
        self.stop()
        self.start()


def start_server(root: Path) -> PgServer:
    """initdb + start in `root` (created; owned by the server's user)."""
    root.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(16)
    pwfile = root / "pw"
    pwfile.write_text(password + "\n")
    _hand_over(root)
    _as_owner(
        [
            _bin("initdb"),
            "-D",
            str(root / "data"),
            "-U",
            USER,
            "--pwfile",
            str(pwfile),
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
            "--no-sync",
            "-E",
            "UTF8",
        ]
    )
    pwfile.unlink()
    server = PgServer(root=root, port=_free_port(), password=password)
    server.start()
    return server


def _bin(name: str) -> str:
    path = server_bin(name)
    if path is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed")
    return path


def _as_owner(cmd: list[str], *, check: bool = True) -> None:
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")


def _hand_over(root: Path) -> None:
    """As root, give the folder (and the way to it) to the postgres user."""
    if os.geteuid() != 0:
        return
    shutil.chown(root, "postgres", "postgres")
    for name in os.listdir(root):
        shutil.chown(root / name, "postgres", "postgres")
    for parent in root.parents:  # the server must reach its folder
        mode = parent.stat().st_mode
        if not mode & 0o001:
            os.chmod(parent, mode | 0o001)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"PostgreSQL did not listen on 127.0.0.1:{port}")
