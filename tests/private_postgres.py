"""A private PostgreSQL server for tests and benchmarks: initdb into a temporary directory, its
own port and socket, stopped (and deleted) afterwards. Never the machine's own server.

`./scripts/test` installs Debian's PostgreSQL where it is missing. initdb refuses to run as
root, so as root the cluster is made and run as the `postgres` user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if found:
        return Path(found[0]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise RuntimeError("PostgreSQL is not installed: run ./scripts/test (it installs it)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivatePostgres:
    def __init__(
        self,
        settings: dict[str, str] | None = None,
        netns: str | None = None,
        host: str = "127.0.0.1",
        keep: Path | None = None,
    ) -> None:
        self.bin = _bin_dir()
        # `keep`: a directory of the caller's, whose cluster is reused and never deleted (a
        # benchmark's database built once); otherwise a temporary one, deleted by close().
        self.keep = keep is not None
        self.root = keep if keep is not None else Path(tempfile.mkdtemp(prefix="trackhouse-pg-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.data = self.root / "data"
        self.netns = netns  # run the server in this network namespace (a host of its own)
        self.host = host
        self.port = _free_port() if netns is None else 5432
        self.settings = {
            "listen_addresses": host,
            "max_connections": "300",
            "shared_buffers": "128MB",
            **(settings or {}),
        }
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        if not (self.data / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        if netns is not None:  # other test hosts reach it over their veth links
            with open(self.data / "pg_hba.conf", "a") as hba:
                hba.write("host all all 0.0.0.0/0 trust\n")
        self._databases = 0

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        if self.netns is not None:
            command = ["ip", "netns", "exec", self.netns, *command]
        subprocess.run(command, check=True, capture_output=True, cwd=self.root)

    def start(self) -> PrivatePostgres:
        options = " ".join(f"-c {k}={v}" for k, v in self.settings.items())
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w",
            "-o", f"-p {self.port} -k {self.root} {options}", "start",
        )  # fmt: skip
        return self

    def pin(self, cores: str) -> None:
        """Run the server on these cores (`taskset` syntax): its processes now, and the
        connections it forks from now on."""
        postmaster = (self.data / "postmaster.pid").read_text().split()[0]
        children = subprocess.run(
            ["pgrep", "-P", postmaster], capture_output=True, text=True
        ).stdout.split()
        subprocess.run(["taskset", "-a", "-pc", cores, postmaster], check=True, capture_output=True)
        for pid in children:  # one may have exited since (a connection, autovacuum): no matter
            subprocess.run(["taskset", "-a", "-pc", cores, pid], check=False, capture_output=True)

    def crash(self) -> None:
        """Stop at once, as a power cut would leave the files (recovery runs at next start)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        self._databases += 1
        name = f"th{self._databases}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE template0")
        return self.url(name)

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)
