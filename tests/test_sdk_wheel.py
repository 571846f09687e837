"""The SDK on its own (issue 18, point 5): the ``pii-key-broker-sdk`` wheel, built from this
repository (``broker/client/pyproject.toml``, ``make sdk``), holds only ``broker.client``
and declares only the SDK's third-party imports. Installed into a clean virtualenv with
those dependencies alone, pinned as in ``requirements-dev.lock``, it gets a key from a
served ``broker serve``, verifies it with the broker's JWKS, follows the revocation feed
until the key is refused as revoked, and masks a record. None of the server's
dependencies can be imported there.

SQLite only: the database plays no part in what the wheel holds or in how the SDK talks to
the broker (HTTP to a served process); the SDK against PostgreSQL-backed brokers is
covered by tests/test_revocation_sdk.py and tests/test_client_server.py.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import queue
import subprocess
import sys
import threading
import tomllib
import venv
import zipfile
from collections.abc import Iterable
from email.parser import Parser
from pathlib import Path
from typing import Any

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import broker
from tests.support.interop import interop_broker
from tests.support.world import bearer

pytestmark = [pytest.mark.slow, pytest.mark.sqlite_only]

ROOT = Path(__file__).resolve().parents[1]
CLIENT = ROOT / "broker" / "client"
LOCK = ROOT / "requirements-dev.lock"
SDK = "pii-key-broker-sdk"
BUILD_TIMEOUT = 120
INSTALL_TIMEOUT = 300  # downloads the pinned wheels when pip's cache lacks them
STEP_TIMEOUT = 60.0


# --- building ----------------------------------------------------------------------------


def build_wheel(source: Path, out: Path) -> Path:
    """What ``make sdk`` runs: the development environment's hatchling, no index, no
    download."""
    if importlib.util.find_spec("hatchling") is None:
        pytest.fail("hatchling, a development dependency, is not installed: run `make install`")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--disable-pip-version-check",
            "--no-index",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(out),
            str(source),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = out.glob("*.whl")
    return wheel


@pytest.fixture(scope="module")
def sdk_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(CLIENT, tmp_path_factory.mktemp("sdk-wheel"))


@pytest.fixture(scope="module")
def server_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(ROOT, tmp_path_factory.mktemp("server-wheel"))


def metadata(wheel: Path) -> Any:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return Parser().parsestr(archive.read(name).decode())


def client_sources() -> set[str]:
    return {f"broker/client/{p.name}" for p in CLIENT.glob("*.py")} | {"broker/client/py.typed"}


def third_party_imports() -> set[str]:
    """The distributions ``broker/client`` imports (read from its source, not from a list)."""
    modules: set[str] = set()
    for path in CLIENT.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    outside = modules - set(sys.stdlib_module_names) - {"broker", "__future__"}
    providers = importlib.metadata.packages_distributions()
    return {canonicalize_name(d) for module in outside for d in providers[module]}


# --- the dependencies, pinned --------------------------------------------------------------


def dependency_closure(requirements: Iterable[str]) -> set[str]:
    """The distributions ``requirements`` need, transitively, on this interpreter (whose
    environment was installed from the lock), markers and extras evaluated as pip does."""
    found: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in found:
            continue
        found.add(name)
        extras = requirement.extras or {""}
        for spec in importlib.metadata.requires(name) or []:
            needed = Requirement(spec)
            if needed.marker is None or any(
                needed.marker.evaluate({"extra": extra}) for extra in extras
            ):
                todo.append(needed)
    return found


def pinned(names: set[str]) -> str:
    """A requirements file pinning ``names`` with the versions and hashes of the lock file,
    one line each (``name==version --hash=... --hash=...``)."""
    entries: dict[str, list[str]] = {}
    entry: list[str] = []
    for line in LOCK.read_text().splitlines():
        text = line.strip().removesuffix("\\").strip()
        if line[:1].isalnum():  # "name==version \\", its hashes on the lines below
            entry = entries.setdefault(canonicalize_name(Requirement(text).name), [text])
        elif text.startswith("--hash="):
            entry.append(text)
    missing = sorted(names - entries.keys())
    assert missing == [], f"not in {LOCK.name}: {missing}"
    for name in names:
        # The closure was read from this environment: it must be the locked one.
        locked = Requirement(entries[name][0]).specifier
        assert locked.contains(importlib.metadata.version(name)), f"{name}: run `make install`"
    return "".join(" ".join(entries[name]) + "\n" for name in sorted(names))


@pytest.fixture(scope="module")
def sdk_venv(sdk_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtualenv holding the SDK wheel and only its declared dependencies (and what
    they need), each pinned with its hash as in the lock file; nothing of the server."""
    home = tmp_path_factory.mktemp("sdk-venv")
    venv.EnvBuilder(with_pip=True, clear=True).create(home / "venv")
    python = home / "venv" / "bin" / "python"
    declared = metadata(sdk_wheel).get_all("Requires-Dist") or []
    requirements = pinned(dependency_closure(declared))
    (home / "requirements.txt").write_text(requirements)
    pip = [str(python), "-m", "pip", "--disable-pip-version-check"]
    for command in (
        [
            *pip,
            "install",
            "--quiet",
            "--require-hashes",
            "--only-binary=:all:",
            "--no-deps",
            "-r",
            str(home / "requirements.txt"),
        ],
        # The wheel itself goes in without an index: nothing unpinned can come with it.
        [*pip, "install", "--quiet", "--no-index", "--no-deps", str(sdk_wheel)],
        # Every declared dependency of everything installed is satisfied.
        [*pip, "check"],
    ):
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False
        )
        assert result.returncode == 0, f"{command[3:]}:\n{result.stdout}\n{result.stderr}"
    return python


def run_in(python: Path, script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -I``: neither the repository, the current directory nor PYTHONPATH is on
    sys.path, only the virtualenv's own site-packages."""
    return subprocess.run(
        [str(python), "-I", "-c", script, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
        check=False,
    )


# --- the wheel -----------------------------------------------------------------------------


def test_the_wheel_holds_only_the_sdk_and_declares_only_its_imports(sdk_wheel: Path) -> None:
    with zipfile.ZipFile(sdk_wheel) as archive:
        names = set(archive.namelist())
    dist_info = {n for n in names if n.split("/")[0].endswith(".dist-info")}
    # broker/client/* and no broker/__init__.py: ``broker`` is a namespace package there.
    assert names - dist_info == client_sources()
    meta = metadata(sdk_wheel)
    assert meta["Name"] == SDK
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["Version"] == broker.__version__ == project["version"]
    declared = {Requirement(r) for r in meta.get_all("Requires-Dist") or []}
    assert {canonicalize_name(r.name) for r in declared} == third_party_imports()
    assert {canonicalize_name(r.name) for r in declared} == {"httpx", "pyjwt", "cryptography"}
    # The same lower bounds as the server's, so both run on the same locked versions.
    server = {
        canonicalize_name(Requirement(s).name): Requirement(s) for s in project["dependencies"]
    }
    for requirement in declared:
        assert requirement.specifier == server[canonicalize_name(requirement.name)].specifier
        assert requirement.marker is None


def test_the_server_wheel_holds_the_same_sdk(sdk_wheel: Path, server_wheel: Path) -> None:
    """Why docs/sdk.md says to install one or the other: the server's wheel already holds
    these very files, and two distributions owning one file means uninstalling either
    deletes it from under the other."""
    with zipfile.ZipFile(sdk_wheel) as sdk, zipfile.ZipFile(server_wheel) as server:
        shared = {n for n in server.namelist() if n.startswith("broker/client/")}
        assert shared == client_sources()
        for name in shared:
            assert server.read(name) == sdk.read(name), name
        assert "broker/__init__.py" in server.namelist()


# --- a resource service with only the SDK ------------------------------------------------

PROBE = """
import importlib.metadata, importlib.util, json, sys
import broker, broker.client
print(json.dumps({
    "installed": sorted(d.metadata["Name"] for d in importlib.metadata.distributions()),
    "found": [m for m in json.loads(sys.argv[1]) if importlib.util.find_spec(m) is not None],
    "broker_file": getattr(broker, "__file__", None),
    "client": broker.client.__file__,
    "prefix": sys.prefix,
}))
"""

# What a resource service runs: get a key (as billing-api), verify it offline against the
# broker's JWKS while following the revocation feed (as customers-db), mask a record by
# the grant; then, once the test has revoked the key, see it refused as revoked while a
# fresh key is still accepted. One JSON line per step.
RESOURCE_SERVICE = """
import asyncio, json, sys, time
from broker.client import InvalidKey, KeyClient, KeyVerifier, mask

url, billing_secret, customers_secret = sys.argv[1:4]
record = {"id": 7, "customer": {"email": "ada@example.com", "name": "Ada", "ssn": "123-45-6789"}}


def say(**event):
    print(json.dumps(event), flush=True)


async def main():
    async with KeyClient(url, client_id="billing-api", client_secret=billing_secret) as keys:
        key = await keys.get_key("customers-db", ["customer.email"], "billing", ttl_seconds=120)
        verifier = KeyVerifier(
            url, audience="customers-db", client_id="customers-db", client_secret=customers_secret
        )
        try:
            await verifier.start()
            grant = await verifier.verify(key.key)
            say(
                step="verified",
                jti=grant.jti,
                service=grant.service,
                fields=sorted(grant.fields),
                purpose=grant.purpose,
                jwks_fetches=verifier.jwks.fetch_count,
                masked=mask(record, grant),
                starred=mask(record, grant, rules={"customer.ssn": ("last", 4)}),
            )
            deadline = time.monotonic() + 30
            while True:
                try:
                    await verifier.verify(key.key)
                except InvalidKey as refused:
                    reason = str(refused.reason)
                    break
                if time.monotonic() > deadline:
                    say(step="still accepted")
                    return
                await asyncio.sleep(0.02)
            keys.invalidate(key)
            fresh = await verifier.verify((await keys.get_key(
                "customers-db", ["customer.email"], "billing", ttl_seconds=120)).key)
            say(
                step="revoked",
                reason=reason,
                events=verifier.revocations.events,
                fresh=fresh.jti,
            )
        finally:
            await verifier.aclose()


asyncio.run(main())
"""


def server_only_modules(sdk_closure: set[str]) -> list[str]:
    """The import names of the server's dependencies that the SDK does not need, as this
    (development) environment installs them."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    server = dependency_closure(project["dependencies"]) - sdk_closure
    assert {"litestar", "sqlmodel", "sqlalchemy", "alembic", "pydantic"} <= server
    modules = {
        module
        for module, owners in importlib.metadata.packages_distributions().items()
        if any(canonicalize_name(o) in server for o in owners)
        and not any(canonicalize_name(o) in sdk_closure for o in owners)
        and module.isidentifier()
    }
    return sorted(modules | {"broker.app", "broker.cli", "broker.db", "broker.models"})


class Lines:
    """A subprocess's stdout read line by line on a thread, each wait bounded."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.proc = proc
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.queue.put(line)
        self.queue.put(None)

    def next_event(self, errors: Path) -> dict[str, Any]:
        try:
            line = self.queue.get(timeout=STEP_TIMEOUT)
        except queue.Empty:
            raise AssertionError(f"no output in {STEP_TIMEOUT} s: {errors.read_text()}") from None
        assert line is not None, f"the script ended: {errors.read_text()[-3000:]}"
        event: dict[str, Any] = json.loads(line)
        return event


async def test_a_clean_venv_with_only_the_sdk_verifies_follows_revocations_and_masks(
    sdk_venv: Path, sdk_wheel: Path, tmp_path: Path, database_url: str
) -> None:
    closure = dependency_closure(metadata(sdk_wheel).get_all("Requires-Dist") or [])
    forbidden = server_only_modules(closure)
    probe = run_in(sdk_venv, PROBE, json.dumps(forbidden), cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    seen = json.loads(probe.stdout)
    # Exactly the SDK and its dependencies (and the virtualenv's own pip and setuptools).
    installed = {canonicalize_name(n) for n in seen["installed"]} - {"pip", "setuptools"}
    assert installed == closure | {SDK}
    assert seen["found"] == []
    assert seen["broker_file"] is None  # a namespace package: no server __init__
    assert Path(seen["client"]).is_relative_to(seen["prefix"])

    async with interop_broker(tmp_path, database_url) as served:
        errors = tmp_path / "stderr.txt"
        with errors.open("w") as stderr:
            proc = subprocess.Popen(
                [
                    str(sdk_venv),
                    "-I",
                    "-c",
                    RESOURCE_SERVICE,
                    served.url,
                    served.billing_secret,
                    served.customers_secret,
                ],
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        try:
            lines = Lines(proc)
            verified = lines.next_event(errors)
            assert verified["step"] == "verified", verified
            assert verified["service"] == "billing-api"
            assert verified["fields"] == ["customer.email"]
            assert verified["purpose"] == "billing"
            assert verified["jwks_fetches"] >= 1
            # Whatever the key does not grant is removed, or starred by a rule.
            assert verified["masked"] == {"customer": {"email": "ada@example.com"}}
            assert verified["starred"] == {
                "customer": {"email": "ada@example.com", "ssn": "*******6789"}
            }
            # An operator revokes the key: the verifier in the clean venv hears it from
            # the feed (it never asks the broker about a key).
            resp = httpx.post(
                served.url + "/v1/admin/revocations",
                headers=bearer(served.served.admin),
                json={"selector": {"jti": verified["jti"]}, "reason": "sdk wheel test"},
                timeout=STEP_TIMEOUT,
            )
            assert resp.status_code == 201, resp.text
            revoked = lines.next_event(errors)
            assert revoked["step"] == "revoked", revoked
            assert revoked["reason"] == "revoked"
            assert revoked["events"] >= 1
            assert revoked["fresh"] != verified["jti"]
            assert proc.wait(timeout=STEP_TIMEOUT) == 0, errors.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
