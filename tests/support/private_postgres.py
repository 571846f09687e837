"""A throwaway PostgreSQL cluster of the test's own, for tests that stop and start it.

The shared server at 127.0.0.1:5432 serves every other test (and CI); stopping it would
break them. This one is made with Debian's ``initdb`` in a temporary directory, listens only
on 127.0.0.1 on a free port (its socket in that directory, not /var/run/postgresql), trusts
local connections, keeps ``fsync`` on so a crash loses only what was never committed, and is
removed on exit whatever happened. PostgreSQL refuses to run as root, so as root the
binaries run as the ``postgres`` user through ``runuser``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from tests.support.processes import free_port

BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: p.parent.name)
RUN_AS = "postgres"


def _bin_dir() -> Path | None:
    for candidate in reversed(BIN_DIRS):
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            return candidate
    return None


def unavailable_reason() -> str | None:
    """Why a private cluster cannot be made here, or None when it can."""
    if _bin_dir() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(RUN_AS)
        except KeyError:
            return f"running as root and there is no {RUN_AS!r} user to run PostgreSQL as"
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing"
    return None


class PrivatePostgres:
    """``with PrivatePostgres() as pg:`` a running cluster at ``pg.url``; ``stop``/``start``
    it at will; it is stopped and deleted on exit."""

    def __init__(self) -> None:
        reason = unavailable_reason()
        if reason is not None:
            raise RuntimeError(reason)
        bin_dir = _bin_dir()
        assert bin_dir is not None
        self.bin = bin_dir
        self.port = free_port()
        self.root: Path | None = None

    @property
    def data(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    @property
    def log(self) -> Path:
        assert self.root is not None
        return self.root / "server.log"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", RUN_AS, "--"] if os.geteuid() == 0 else []
        return subprocess.run(
            [*prefix, *args], capture_output=True, text=True, timeout=timeout, check=False
        )

    def _check(self, what: str, done: subprocess.CompletedProcess[str]) -> None:
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{what} failed ({done.returncode}): {done.stderr}\n{log}")

    def __enter__(self) -> PrivatePostgres:
        # Under /tmp, not pytest's tmp_path: the postgres user must reach it, and pytest's
        # directories are private to the user running the tests.
        self.root = Path(tempfile.mkdtemp(prefix="pii-broker-pg-"))
        try:
            if os.geteuid() == 0:
                owner = pwd.getpwnam(RUN_AS)
                os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self._check(
                "initdb",
                self._run(
                    str(self.bin / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                ),
            )
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def start(self) -> None:
        """Start (again, after a stop: crash recovery replays the WAL) and wait until it
        accepts connections."""
        assert self.root is not None
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.root} -c fsync=on -c max_connections=60"
        )
        self._check(
            "pg_ctl start",
            self._run(
                str(self.bin / "pg_ctl"),
                "start",
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-o",
                options,
                "-w",
                "-t",
                "30",
            ),
        )

    def stop(self, mode: str = "immediate") -> None:
        """``immediate``: every backend killed at once, no checkpoint, as in a crash."""
        self._check(
            "pg_ctl stop",
            self._run(
                str(self.bin / "pg_ctl"), "stop", "-D", str(self.data), "-m", mode, "-w", "-t", "30"
            ),
        )

    def running(self) -> bool:
        done = self._run(str(self.bin / "pg_ctl"), "status", "-D", str(self.data), timeout=10)
        return done.returncode == 0

    def cleanup(self) -> None:
        if self.root is None:
            return
        try:
            if self.data.exists() and self.running():
                self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()
