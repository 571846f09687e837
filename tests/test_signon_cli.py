"""``broker login`` and ``broker logout`` against a real OpenID Provider (issue 19, part 2).

The provider is the certified ``oidc-provider`` package (tests/support/oidc_provider.py).
The whole flows run as a person runs them: ``broker serve`` and ``broker login`` as
processes, the person confirming the device code on the provider's own pages (over HTTP,
filling in its forms) or, for the loopback flow, headless Chromium following the
authorization URL through the provider's login and consent pages to the CLI's listener.
Then a CLI command works with the stored token and is audited as signed in through
``broker login``, and ``broker logout`` ends it. The refusals (no role, provider down, an
ended sign-in, a replayed or stolen code) run in-process (the CLI through
tests/support/cli.py), where the broker's answers can be read directly.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import stat
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from broker import credentials
from broker.ops_cli import config
from broker.ops_cli.errors import ConfigError
from broker.ops_cli.login import pkce_pair
from broker.ops_cli.login_token import StoredLogin, read_login, write_login
from tests.support.browser import left_the_page
from tests.support.cli import ADDR, in_process_cli
from tests.support.oidc_provider import OidcProvider, running_provider
from tests.support.problems import assert_problem
from tests.support.processes import BrokerProcess, broker_env, free_port
from tests.support.served import billing_world
from tests.support.world import bearer

WAIT = 60.0  # a device sign-in polls every 5 s; a loaded machine may take a few polls


# -- helpers -----------------------------------------------------------------------------


def cli_env(xdg: Path, **extra: str) -> dict[str, str]:
    """The environment of a person's shell: no BROKER_ setting but what the test gives."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env.update(XDG_CONFIG_HOME=str(xdg), HOME=str(xdg.parent), **extra)
    env.pop("DISPLAY", None)
    env.pop("BROWSER", None)
    return env


class CliProcess:
    """``broker ARGS`` as a process; its stderr read line by line while it runs."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "broker", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip("\n"))
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.proc.kill()
                raise AssertionError(f"no line matching {pattern!r}: {self.stderr}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            found = re.search(pattern, line)
            if found:
                return found

    def finish(self, timeout: float = WAIT) -> tuple[int, str, str]:
        """Wait for the end; (exit code, stdout, stderr). Only the pump reads stderr
        (``communicate`` would take lines from it), and stdout is a line or two."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError(f"broker did not finish in {timeout}s: {self.stderr}") from None
        assert self.proc.stdout is not None
        out = self.proc.stdout.read()
        self.proc.stdout.close()
        self._pump_thread.join(10)  # the last lines, read up to the end of the stream
        return self.proc.returncode, out, "\n".join(self.stderr)


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )


def one_line_error(stderr: str) -> str:
    """The error a failed command printed: one line, ``Error: ...``, no traceback."""
    assert "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("Error: "), stderr
    return last


def events(api: httpx.Client, admin: str, action: str) -> list[dict[str, Any]]:
    resp = api.get("/v1/admin/audit", params={"action": action}, headers=bearer(admin))
    assert resp.status_code == 200, resp.text
    found: list[dict[str, Any]] = resp.json()["events"]
    return found


@dataclass
class SsoBroker:
    provider: OidcProvider
    broker: BrokerProcess
    admin: str
    redirect_uri: str

    @property
    def url(self) -> str:
        return self.broker.url


@contextlib.contextmanager
def sso_broker(tmp_path: Path, database_url: str, **extra: str) -> Iterator[SsoBroker]:
    """A provider with alice (approvers) and bob (no group the broker maps), and
    ``broker serve`` registered at it, its CLI loopback redirect URI on a free port."""
    redirect = f"http://127.0.0.1:{free_port()}/oidc/callback"
    with running_provider(tmp_path / "provider", redirect_uris=[redirect]) as provider:
        provider.set_account("alice", ["pii-approvers"])
        provider.set_account("bob", ["staff"])
        settings = provider.broker_settings(BROKER_OIDC_CLI_REDIRECT_URI=redirect, **extra)
        env = broker_env(tmp_path, database_url, **settings)
        with BrokerProcess(env) as broker:
            admin = broker.bootstrap_token
            assert admin is not None, broker.output
            yield SsoBroker(provider, broker, admin, redirect)


def assert_private(path: Path) -> None:
    assert stat.S_IMODE(path.stat().st_mode) == 0o600, oct(path.stat().st_mode)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700, oct(path.parent.stat().st_mode)


# -- the device flow, end to end ---------------------------------------------------------


def test_device_login_then_commands_audited_then_logout(tmp_path: Path, database_url: str) -> None:
    """broker login through the provider's device pages; the stored token (0600) works for
    every command, which the audit trail shows as signed in through broker login; broker
    logout ends it (401 afterwards) and deletes the file; nothing secret reached the log."""
    with (
        sso_broker(tmp_path, database_url) as sso,
        httpx.Client(base_url=sso.url, timeout=10) as api,
    ):
        pending = billing_world(api, sso.admin, None)  # proposed by the admin, not approved
        xdg = tmp_path / "xdg"
        env = cli_env(xdg)
        login = CliProcess(["login", "--no-browser", "--addr", sso.url], env)
        shown = login.wait_for(r"Open (\S+) and confirm code (\S+)")
        uri, user_code = shown.group(1), shown.group(2)
        assert user_code in uri
        sso.provider.approve_device(uri, "alice")
        code, out, err = login.finish()
        assert code == 0, (out, err)
        assert re.fullmatch(
            rf"Signed in to {re.escape(sso.url)} as alice \(approver\) until "
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\n",
            out,
        ), out

        stored_file = xdg / "pii-broker" / "login-token"
        assert_private(stored_file)
        stored = read_login(stored_file)
        assert stored is not None
        assert (stored.addr, stored.operator, stored.role) == (sso.url, "alice", "approver")
        ttl = stored.expires_at - datetime.now(UTC)
        assert timedelta(hours=7, minutes=58) < ttl <= timedelta(hours=8)
        token = stored.token
        assert token not in out + err

        # Every command uses it: the address comes from BROKER_ADDR, the token from the file.
        with_addr = cli_env(xdg, BROKER_ADDR=sso.url)
        whoami = run_cli(["operator", "whoami"], with_addr)
        assert whoami.returncode == 0, whoami.stderr
        assert "alice" in whoami.stdout
        approved = run_cli(["policies", "approve", pending.policy_id, "--yes"], with_addr)
        assert approved.returncode == 0, approved.stderr

        signed_in = events(api, sso.admin, "operator:operator:signed_in")
        (event,) = [e for e in signed_in if e["actor"] == "operator:alice"]
        assert event["details"]["token_fingerprint"] == credentials.fingerprint(token)
        assert event["details"]["via"] == {"origin": "oidc", "signed_in_via": "login"}
        approvals = [
            e
            for e in events(api, sso.admin, "operator:policy:approved")
            if e["actor"] == "operator:alice"
        ]
        assert approvals, "the approval was not audited as alice's"
        assert approvals[0]["details"]["via"] == {"origin": "oidc", "signed_in_via": "login"}

        logout = run_cli(["logout"], env)
        assert logout.returncode == 0, logout.stderr
        assert f"Signed out of {sso.url} (alice)" in logout.stdout
        assert not stored_file.exists()
        after = api.get("/v1/admin/operators/me", headers=bearer(token))
        assert_problem(after, 401)
        (out_event,) = events(api, sso.admin, "operator:operator:signed_out")
        assert out_event["actor"] == "operator:alice"
        assert out_event["details"]["token_fingerprint"] == credentials.fingerprint(token)
        gone = run_cli(["operator", "whoami"], with_addr)
        assert gone.returncode == 2
        assert "no operator token: run broker login" in one_line_error(gone.stderr)

        sso.broker.stop()
        logged = sso.broker.output
        assert token not in logged
        assert user_code not in logged
        assert user_code.replace("-", "") not in logged


def test_person_without_a_role_is_refused_in_one_line(tmp_path: Path, database_url: str) -> None:
    """bob's groups map to no role: the device sign-in ends in one line, exit 1, no file,
    and the refusal is audited."""
    with (
        sso_broker(tmp_path, database_url) as sso,
        httpx.Client(base_url=sso.url, timeout=10) as api,
    ):
        xdg = tmp_path / "xdg"
        login = CliProcess(["login", "--no-browser", "--addr", sso.url], cli_env(xdg))
        shown = login.wait_for(r"Open (\S+) and confirm code (\S+)")
        sso.provider.approve_device(shown.group(1), "bob")
        code, out, err = login.finish()
        assert code == 1, (out, err)
        assert "no group the broker maps to a role" in one_line_error(err)
        assert not (xdg / "pii-broker" / "login-token").exists()
        refused = events(api, sso.admin, "system:operator:sign_in_refused")
        assert [e["details"]["reason"] for e in refused] == ["no-role"]
        assert refused[0]["details"]["via"] == "login"


# -- the loopback flow in a browser ------------------------------------------------------


@pytest.mark.sqlite_only
def test_loopback_login_through_chromium(tmp_path: Path, database_url: str, driver: Any) -> None:
    """--method browser: Chromium follows the authorization URL through the provider's
    login and consent pages to the CLI's loopback listener, which answers with a page to
    close; the CLI finishes the sign-in with its own PKCE verifier."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with sso_broker(tmp_path, database_url) as sso:
        xdg = tmp_path / "xdg"
        login = CliProcess(
            ["login", "--method", "browser", "--no-browser", "--addr", sso.url], cli_env(xdg)
        )
        url = login.wait_for(r"Open (\S+) to sign in").group(1)
        query = parse_qs(urlsplit(url).query)
        assert query["redirect_uri"] == [sso.redirect_uri]
        assert query["code_challenge_method"] == ["S256"]
        driver.get(url)
        wait = WebDriverWait(driver, 15)
        # The provider's own login page, then its consent page, as a person clicks them.
        login_box = wait.until(lambda d: d.find_element(By.NAME, "login"))
        login_box.send_keys("alice")
        driver.find_element(By.NAME, "password").send_keys("any password")
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait.until(lambda _d: left_the_page(login_box))
        consent = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "form button[type=submit]"))
        consent.click()
        # Then the browser lands on the CLI's listener on the loopback redirect URI.
        wait.until(lambda d: d.current_url.startswith(sso.redirect_uri))
        wait.until(lambda d: "close this tab" in d.find_element(By.TAG_NAME, "body").text)
        assert "you can close this tab" in driver.find_element(By.TAG_NAME, "body").text
        code, out, err = login.finish()
        assert code == 0, (out, err)
        assert out.startswith(f"Signed in to {sso.url} as alice (approver) until ")
        stored = read_login(xdg / "pii-broker" / "login-token")
        assert stored is not None
        me = httpx.get(sso.url + "/v1/admin/operators/me", headers=bearer(stored.token))
        assert me.status_code == 200, me.text
        assert me.json()["name"] == "alice"


# -- in process: the broker's answers, refusals and the token file ------------------------


@pytest.fixture
def cli_redirect() -> str:
    return f"http://127.0.0.1:{free_port()}/oidc/callback"


@pytest.fixture
def provider(tmp_path: Path, cli_redirect: str) -> Iterator[OidcProvider]:
    with running_provider(tmp_path / "provider", redirect_uris=[cli_redirect]) as running:
        running.set_account("alice", ["pii-approvers"])
        running.set_account("bob", ["staff"])
        yield running


@contextlib.asynccontextmanager
async def sso_app(settings: Any, values: dict[str, str]) -> AsyncIterator[Any]:
    """A runtime of ``settings`` with single sign-on set to ``values``, and its app."""
    from broker.app import create_app
    from broker.assembly import build_runtime
    from broker.settings import Settings
    from tests.support.asgi import asgi_client

    named = {k.removeprefix("BROKER_").lower(): v for k, v in values.items()}
    runtime = build_runtime(
        Settings(
            database_url=settings.database_url, home=settings.home, issuer=settings.issuer, **named
        )
    )
    try:
        app = create_app(runtime=runtime, configure_logs=False)
        async with asgi_client(app) as client:
            yield runtime, client
    finally:
        await runtime.close()


async def test_options_say_what_the_cli_may_use(
    settings: Any, provider: OidcProvider, cli_redirect: str, client: httpx.AsyncClient
) -> None:
    """GET /v1/admin/login: no single sign-on, a provider with the device grant, and a
    provider that cannot be reached (said, not failed); every answer is no-store."""
    plain = await client.get("/v1/admin/login")
    assert plain.status_code == 200
    assert plain.json()["oidc"] is False
    refused = await client.post("/v1/admin/login/device")
    assert_problem(refused, 409, "no-single-sign-on")

    values = provider.broker_settings(BROKER_OIDC_CLI_REDIRECT_URI=cli_redirect)
    async with sso_app(settings, values) as (_, sso):
        found = await sso.get("/v1/admin/login")
        assert found.status_code == 200
        assert found.headers["cache-control"] == "no-store"
        assert found.json() == {
            "oidc": True,
            "display_name": "Test Provider",
            "device": True,
            "loopback_redirect_uri": cli_redirect,
            "provider": "reachable",
        }
    closed = {**values, "BROKER_OIDC_ISSUER": f"http://127.0.0.1:{free_port()}"}
    async with sso_app(settings, closed) as (_, down):
        found = await down.get("/v1/admin/login")
        assert found.status_code == 200
        body = found.json()
        assert (body["oidc"], body["provider"]) == (True, "unreachable")
        assert "could not be reached" in body["detail"]
        started = await down.post("/v1/admin/login/device")
        problem = assert_problem(started, 503, "identity-provider-unavailable")
        assert "could not be reached" in problem["detail"]


async def test_provider_down_is_one_line_and_exit_3(
    settings: Any, provider: OidcProvider, cli_redirect: str, tmp_path: Path
) -> None:
    """Unreachable from the start, or gone between two calls: one line, exit code 3."""
    values = provider.broker_settings(BROKER_OIDC_CLI_REDIRECT_URI=cli_redirect)
    closed = {**values, "BROKER_OIDC_ISSUER": f"http://127.0.0.1:{free_port()}"}
    async with (
        sso_app(settings, closed) as (runtime, _),
        in_process_cli(runtime, tmp_path / "xdg1") as cli,
    ):
        result = await cli("login", "--no-browser", token=None)
    assert result.exit_code == 3, result.output
    line = one_line_error(result.stderr)
    assert "could not be reached" in line
    assert "try again later" in line

    async with sso_app(settings, values) as (runtime, client):
        assert (await client.get("/v1/admin/login")).json()["provider"] == "reachable"
        provider.stop()  # discovery stays cached; the device endpoint is gone
        async with in_process_cli(runtime, tmp_path / "xdg2") as cli:
            result = await cli("login", "--no-browser", token=None)
    assert result.exit_code == 3, result.output
    assert "could not be reached (device authorization)" in one_line_error(result.stderr)
    assert not (tmp_path / "xdg2" / "pii-broker" / "login-token").exists()


async def test_loopback_code_is_single_use_and_bound_to_the_verifier(
    settings: Any, provider: OidcProvider, cli_redirect: str
) -> None:
    """The code the browser brings back is worth nothing without the CLI's verifier, the
    state works once, a response from another issuer is refused; each refusal is audited
    and none names a code."""
    values = provider.broker_settings(BROKER_OIDC_CLI_REDIRECT_URI=cli_redirect)
    async with sso_app(settings, values) as (runtime, client):

        async def started(challenge: str) -> tuple[str, str]:
            resp = await client.post(
                "/v1/admin/login/browser",
                json={"code_challenge": challenge, "code_challenge_method": "S256"},
            )
            assert resp.status_code == 200, resp.text
            assert resp.headers["cache-control"] == "no-store"
            body = resp.json()
            return body["authorization_url"], body["state"]

        def answered(url: str) -> dict[str, str]:
            back = provider.sign_in(url, "alice")
            assert back.startswith(cli_redirect), back
            return {k: v[0] for k, v in parse_qs(urlsplit(back).query).items()}

        verifier, challenge = pkce_pair()
        other_verifier, _ = pkce_pair()
        url, state = await started(challenge)
        got = answered(url)
        assert got["state"] == state
        assert got["iss"] == provider.issuer
        stolen = await client.post(
            "/v1/admin/login/browser/token",
            json={**got, "code_verifier": other_verifier},
        )
        assert_problem(stolen, 403, "code-refused")
        replay = await client.post(
            "/v1/admin/login/browser/token", json={**got, "code_verifier": verifier}
        )
        assert_problem(replay, 403, "bad-state")  # the state was used by the first try

        url, state = await started(challenge)
        got = answered(url)
        mixed = await client.post(
            "/v1/admin/login/browser/token",
            json={**got, "iss": "https://another.example", "code_verifier": verifier},
        )
        assert_problem(mixed, 403, "wrong-issuer")

        url, state = await started(challenge)
        got = answered(url)
        fine = await client.post(
            "/v1/admin/login/browser/token", json={**got, "code_verifier": verifier}
        )
        assert fine.status_code == 200, fine.text
        assert fine.headers["cache-control"] == "no-store"
        body = fine.json()
        assert body["token_type"] == "Bearer"
        assert body["operator"] == {"name": "alice", "role": "approver"}
        assert body["expires_in"] == runtime.settings.login_token_ttl
        token = body["access_token"]
        again = await client.post(
            "/v1/admin/login/browser/token", json={**got, "code_verifier": verifier}
        )
        assert_problem(again, 403, "bad-state")

        me = await client.get("/v1/admin/operators/me", headers=bearer(token))
        assert me.status_code == 200
        assert me.json()["name"] == "alice"
        audit = await client.get(
            "/v1/admin/audit",
            params={"action": "system:operator:sign_in_refused"},
            headers=bearer(token),
        )
        reasons = [e["details"]["reason"] for e in audit.json()["events"]]
        assert reasons == ["code-refused", "bad-state", "wrong-issuer", "bad-state"]
        assert got["code"] not in audit.text

        # Logout ends that token and no other; the pasted (own) token cannot be signed out.
        out = await client.post("/v1/admin/logout", headers=bearer(token))
        assert out.status_code == 204, out.text
        assert_problem(await client.get("/v1/admin/operators/me", headers=bearer(token)), 401)


async def test_logout_of_an_own_token_is_refused(client: httpx.AsyncClient, operators: Any) -> None:
    resp = await client.post("/v1/admin/logout", headers=bearer(operators.admin))
    assert "cannot be signed out" in assert_problem(resp, 409, "not-a-sign-in")["detail"]
    assert_problem(await client.post("/v1/admin/logout"), 401)


async def test_login_routes_are_bounded_per_address(
    settings: Any, provider: OidcProvider, cli_redirect: str
) -> None:
    """An address that keeps calling the open login routes is paused (429, Retry-After)
    before it can make the broker hammer the provider."""
    from broker.signon.cli_login import CALLS

    values = provider.broker_settings(BROKER_OIDC_CLI_REDIRECT_URI=cli_redirect)
    async with sso_app(settings, values) as (_, client):
        answers = [(await client.get("/v1/admin/login")).status_code for _ in range(CALLS + 1)]
        assert answers[:CALLS] == [200] * CALLS
        paused = await client.post("/v1/admin/login/device")
        assert_problem(paused, 429, "sign-in-rate-limited")
        assert int(paused.headers["retry-after"]) > 0


async def test_an_ended_sign_in_says_so_in_one_line(runtime: Any, tmp_path: Path) -> None:
    """A stored sign-in that has ended: the next command says when and what to do (exit
    2) before sending anything; one for another broker is not sent to this one."""
    xdg = tmp_path / "xdg"
    token = credentials.generate(credentials.OPERATOR_TOKEN_PREFIX)
    ended = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    write_login(
        StoredLogin(ADDR, token, "alice", "approver", ended), xdg / "pii-broker" / "login-token"
    )
    async with in_process_cli(runtime, xdg) as cli:
        result = await cli("policies", "list", env={"BROKER_TOKEN": None})
        assert result.exit_code == 2, result.output
        assert one_line_error(result.stderr) == (
            f"Error: your sign-in to {ADDR} ended at 2026-01-02T03:04:05Z; run broker login"
        )
        later = datetime.now(UTC) + timedelta(hours=1)
        write_login(
            StoredLogin("https://other.example", token, "alice", "approver", later),
            xdg / "pii-broker" / "login-token",
        )
        result = await cli("policies", "list", env={"BROKER_TOKEN": None})
        assert result.exit_code == 2
        assert "no operator token: run broker login" in one_line_error(result.stderr)
        # A token that is not (or no longer) the broker's: the hint is to sign in again.
        write_login(
            StoredLogin(ADDR, token, "alice", "approver", later), xdg / "pii-broker" / "login-token"
        )
        result = await cli("policies", "list", env={"BROKER_TOKEN": None})
        assert result.exit_code == 1
        assert "your sign-in has ended; run broker login" in result.stderr


def test_token_precedence_and_file_refusals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--token > BROKER_TOKEN > the config file > the stored sign-in; a sign-in file others
    can read is refused, as the config file's token is."""
    for name in ("BROKER_ADDR", "BROKER_TOKEN", "BROKER_CONFIG", "BROKER_CACERT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    addr = "https://broker.example"
    login_token, env_token, flag_token, file_token = (
        credentials.generate(credentials.OPERATOR_TOKEN_PREFIX) for _ in range(4)
    )
    path = write_login(
        StoredLogin(
            addr + "/", login_token, "alice", "approver", datetime.now(UTC) + timedelta(hours=1)
        )
    )
    assert path == tmp_path / "pii-broker" / "login-token"
    assert_private(path)
    cfg = config.resolve(addr)
    assert (cfg.token, cfg.from_login) == (login_token, True)
    assert login_token not in repr(cfg)
    (tmp_path / "pii-broker" / "config.toml").write_text(f'token = "{file_token}"\n')
    (tmp_path / "pii-broker" / "config.toml").chmod(0o600)
    assert config.resolve(addr).token == file_token
    monkeypatch.setenv("BROKER_TOKEN", env_token)
    assert config.resolve(addr).token == env_token
    assert config.resolve(addr, flag_token).token == flag_token
    (tmp_path / "pii-broker" / "config.toml").unlink()
    monkeypatch.delenv("BROKER_TOKEN")
    assert config.resolve("https://elsewhere.example", need_token=False).token is None

    path.chmod(0o644)
    with pytest.raises(ConfigError, match="can be read by others; run: chmod 600"):
        config.resolve(addr)
    path.write_text("not json")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="run broker login"):
        config.resolve(addr)


def test_logout_when_the_broker_cannot_be_reached(tmp_path: Path) -> None:
    """The file goes all the same, and the command says the token lives on (exit 3)."""
    xdg = tmp_path / "xdg"
    addr = f"http://127.0.0.1:{free_port()}"
    token = credentials.generate(credentials.OPERATOR_TOKEN_PREFIX)
    until = datetime.now(UTC) + timedelta(hours=1)
    path = write_login(
        StoredLogin(addr, token, "alice", "approver", until), xdg / "pii-broker" / "login-token"
    )
    result = run_cli(["logout"], cli_env(xdg))
    assert result.returncode == 3, result
    line = one_line_error(result.stderr)
    assert f"deleted {path}, but the broker could not end the token" in line
    assert token not in result.stdout + result.stderr
    assert not path.exists()
    again = run_cli(["logout"], cli_env(xdg))
    assert again.returncode == 0
    assert "Not signed in" in again.stdout


async def test_login_at_a_broker_without_single_sign_on(runtime: Any, tmp_path: Path) -> None:
    async with in_process_cli(runtime, tmp_path / "xdg") as cli:
        result = await cli("login", "--no-browser", token=None)
    assert result.exit_code == 1, result.output
    assert "has no identity provider configured" in one_line_error(result.stderr)
    assert not (tmp_path / "xdg" / "pii-broker" / "login-token").exists()
