"""Test fixtures: every test runs on SQLite and on PostgreSQL, each in its own database.

The schema is built by the Alembic migrations once per session into a template (a file on
SQLite, a template database on PostgreSQL); each test gets a fresh copy, so tests are
isolated even when they start broker processes of their own.
"""

from __future__ import annotations

import os

# Tests set their environment before anything from the broker is imported.
os.environ.setdefault("BROKER_LOG_LEVEL", "WARNING")
os.environ["BROKER_SCHEDULER_ENABLED"] = "false"
for _name in list(os.environ):
    if _name.startswith("BROKER_") and _name not in {
        "BROKER_LOG_LEVEL",
        "BROKER_SCHEDULER_ENABLED",
        "BROKER_TEST_POSTGRES_URL",
    }:
        del os.environ[_name]

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

# The shared helpers in tests/support/ assert too: rewrite them as pytest rewrites test files,
# so a helper's failing assert explains itself as it did when the helpers lived in test files.
pytest.register_assert_rewrite("tests.support")

from tests.support.asgi import asgi_client
from tests.support.browser import driver  # noqa: F401  (the headless Chromium fixture)
from tests.support.databases import (
    DatabaseTemplates,
    postgres_admin_url,
    postgres_available,
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sqlite_only: runs on SQLite only")
    config.addinivalue_line(
        "markers", "postgresql_only: several processes on one database (SQLite is one process)"
    )


@pytest.fixture(scope="session")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DatabaseTemplates]:
    tpl = DatabaseTemplates(tmp_path_factory.mktemp("templates"))
    yield tpl
    tpl.cleanup()


def _backends() -> list[Any]:
    return [
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    ]


@pytest.fixture(params=_backends())
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "postgresql" and request.node.get_closest_marker("sqlite_only"):
        pytest.skip("test is specific to SQLite")
    if name == "sqlite" and request.node.get_closest_marker("postgresql_only"):
        pytest.skip("several processes on one database: PostgreSQL only")
    if name == "postgresql" and not postgres_available():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(
                "PostgreSQL is required under CI=true and is not reachable at "
                + postgres_admin_url()
            )
        pytest.skip(f"PostgreSQL not reachable at {postgres_admin_url()}")
    return name


@pytest.fixture
def database_url(backend: str, templates: DatabaseTemplates, tmp_path: Path) -> Iterator[str]:
    url = templates.fresh(backend, tmp_path)
    yield url
    templates.drop(backend, url)


@pytest.fixture
def broker_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    return home


@pytest.fixture
def settings(database_url: str, broker_home: Path) -> Any:
    from broker.settings import Settings

    return Settings(database_url=database_url, home=broker_home, issuer="https://broker.test")


@pytest.fixture
async def runtime(settings: Any) -> AsyncIterator[Any]:
    from broker.assembly import build_runtime

    rt = build_runtime(settings)
    yield rt
    await rt.close()


@pytest.fixture
async def client(runtime: Any) -> AsyncIterator[httpx.AsyncClient]:
    from broker.app import create_app

    app = create_app(runtime=runtime, configure_logs=False)
    async with asgi_client(app) as c:
        yield c


@dataclass
class Operators:
    """Tokens of ready-made operators, one per role plus a second approver."""

    admin: str
    approver: str
    approver2: str
    auditor: str

    @staticmethod
    def header(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def operators(runtime: Any) -> Operators:
    from broker.operators.service import create_operator

    tokens = {}
    async with runtime.transaction() as session:
        for name, role in (
            ("admin", "admin"),
            ("approver", "approver"),
            ("approver2", "approver"),
            ("auditor", "auditor"),
        ):
            created = await create_operator(
                session, runtime.secrets.pepper, name, role, actor="test"
            )
            tokens[name] = created.token
    return Operators(**tokens)


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:8]
