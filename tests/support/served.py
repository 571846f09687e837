"""A served broker the way an operator starts one: ``broker serve``, its bootstrap admin, and
operators made with the host CLI (``broker operator create``) on the same database.

The attack tests drive it over HTTP, the SDK and the CLI, like an intruder or a neighbour
would, rather than calling the app in-process.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import BrokerProcess, broker_env


@dataclass
class Served:
    """One running broker (``replicas`` on PostgreSQL may hold more) and its operators."""

    broker: BrokerProcess
    env: dict[str, str]
    admin: str
    approver: str
    auditor: str
    replicas: list[BrokerProcess]

    @property
    def url(self) -> str:
        return self.broker.url


def cli_operator(env: dict[str, str], name: str, role: str) -> str:
    """An operator made on the host (a root of trust, like the bootstrap admin)."""
    result = subprocess.run(
        [sys.executable, "-m", "broker", "operator", "create", name, "--role", role],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


@contextlib.contextmanager
def served_broker(
    tmp_path: Path, database_url: str, *, replicas: int = 1, **extra: str
) -> Iterator[Served]:
    """``broker serve`` on loopback (``replicas`` processes on one database and home, which
    only PostgreSQL supports), issuing keys under its own URL as issuer."""
    env = broker_env(tmp_path, database_url, BROKER_LOG_LEVEL="WARNING", **extra)
    first = BrokerProcess(env)
    env["BROKER_ISSUER"] = first.url
    with contextlib.ExitStack() as stack:
        started = [stack.enter_context(BrokerProcess(env, port=first.port))]
        for _ in range(replicas - 1):
            started.append(stack.enter_context(BrokerProcess(env, args=["--no-migrate"])))
        admin = started[0].bootstrap_token
        assert admin is not None, started[0].output
        yield Served(
            broker=started[0],
            env=env,
            admin=admin,
            approver=cli_operator(env, "approver", "approver"),
            auditor=cli_operator(env, "auditor", "auditor"),
            replicas=started,
        )
