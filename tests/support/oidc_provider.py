"""A real OpenID Provider for the single sign-on tests: the certified npm package
``oidc-provider``, pinned in tests/interop/node/package-lock.json (``make test`` runs
``npm ci`` there) and started from tests/interop/node/provider.mjs on a free loopback port.

The test decides what a deployment's administrator would: the broker's redirect URIs (the
provider compares them exactly), the people and their groups (``set_account``; the file
is read at every sign-in, so taking a person out of a group takes effect at their next
one), whether the groups claim is in the ID token or only at the userinfo endpoint. Each
``OidcProvider`` is its own process with its own signing key, so a second one is an
independent provider (a mixed-up issuer) or, given the first one's issuer, an impostor
signing with another key under that issuer.

The provider's own login and consent pages (``devInteractions``: any login name, any
password) are driven by a browser in the browser tests, and here over HTTP by
``sign_in`` (the authorization code flow, up to the redirect back to the broker) and
``approve_device`` (RFC 8628's verification page), which fill in and post the forms the
provider serves, as a person would.

Without node or the installed package a test skips with the reason, except under
``CI=true`` (where .ci/run installs them), where it fails. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import threading
from collections.abc import Iterator, Sequence
from html.parser import HTMLParser
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

NODE_DIR = Path(__file__).resolve().parents[1] / "interop" / "node"
PACKAGE = NODE_DIR / "node_modules" / "oidc-provider" / "package.json"
START_WAIT = 30.0
STEP_WAIT = 10.0
MAX_STEPS = 25
CLIENT_ID = "pii-broker"
# What a company's groups mean at the broker (BROKER_OIDC_ROLE_MAP).
ROLE_MAP = "pii-admins=admin,pii-approvers=approver,pii-proposers=proposer,pii-auditors=auditor"


def _missing(message: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " (CI=true: .ci/run installs it)")
    pytest.skip(message)


def require_provider() -> str:
    """The path of node, with the pinned oidc-provider installed; skips (fails under CI)."""
    node = shutil.which("node")
    if node is None:
        _missing("node is not installed: the single sign-on tests run a real OpenID Provider")
    if not PACKAGE.is_file():
        _missing(f"oidc-provider is not installed: run `make test` (npm ci in {NODE_DIR})")
    assert node is not None
    return node


def console_redirect(broker_url: str) -> str:
    """The console's redirect URI as the broker derives it (issuer + the callback path)."""
    return broker_url.rstrip("/") + "/console/oidc/callback"


class OidcProvider:
    """One ``oidc-provider`` process on loopback, with one confidential client (the broker).

    ``issuer``: a template (``{port}`` becomes the port it listens on); by default
    ``http://127.0.0.1:{port}``. ``http://localhost:{port}`` makes the provider another
    *site* than a broker on 127.0.0.1 (cookies' SameSite rules tell sites by host name, not
    port), as a real provider is. ``claims_only_in_userinfo``: the ID token carries the
    core claims only, the groups are at the userinfo endpoint. ``device_flow=False``: a
    provider without the device authorization grant (no endpoint in its discovery).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        redirect_uris: Sequence[str],
        issuer: str | None = None,
        client_id: str = CLIENT_ID,
        claims_only_in_userinfo: bool = False,
        id_token_ttl: int | None = None,
        code_ttl: int | None = None,
        signing_alg: str = "RS256",
        device_flow: bool = True,
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.client_id = client_id
        self.client_secret = secrets.token_urlsafe(32)
        self.accounts_file = workdir / "accounts.json"
        self._accounts: dict[str, dict[str, Any]] = {}
        self._write_accounts()
        self._config: dict[str, Any] = {
            "port": 0,
            "issuer": issuer,
            "accounts_file": str(self.accounts_file),
            "client": {
                "client_id": client_id,
                "client_secret": self.client_secret,
                "redirect_uris": list(redirect_uris),
            },
            "claims_only_in_userinfo": claims_only_in_userinfo,
            "id_token_ttl": id_token_ttl,
            "code_ttl": code_ttl,
            "signing_alg": signing_alg,
            "device_flow": device_flow,
        }
        self.issuer = ""
        self.port = 0
        self._proc: subprocess.Popen[str] | None = None
        self._log = workdir / "provider.log"

    # -- the process -------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Where it listens (the issuer names the same port, perhaps under another host)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return self._log.read_text(errors="replace") if self._log.exists() else ""

    def start(self) -> OidcProvider:
        node = require_provider()
        config_file = self.workdir / "provider.json"
        config_file.write_text(json.dumps(self._config))
        log = self._log.open("w")
        self._proc = subprocess.Popen(
            [node, "provider.mjs", str(config_file)],
            cwd=NODE_DIR,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env={**os.environ, "NODE_ENV": "test"},
        )
        log.close()
        ready: dict[str, Any] = {}

        def read_first_line() -> None:
            assert self._proc is not None
            assert self._proc.stdout is not None
            line = self._proc.stdout.readline()
            with contextlib.suppress(ValueError):
                ready.update(json.loads(line))

        reader = threading.Thread(target=read_first_line, daemon=True)
        reader.start()
        reader.join(START_WAIT)
        if not ready.get("ready"):
            self.stop()
            raise RuntimeError(f"the OpenID Provider did not start:\n{self.log[-3000:]}")
        self.issuer = str(ready["issuer"])
        self.port = int(ready["port"])
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> OidcProvider:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- the people --------------------------------------------------------------------

    def _write_accounts(self) -> None:
        temporary = self.accounts_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(self._accounts))
        temporary.replace(self.accounts_file)  # never read half-written

    def set_account(
        self,
        account_id: str,
        groups: Sequence[str] = (),
        *,
        email: str | None = None,
        name: str | None = None,
        preferred_username: str | None = None,
    ) -> None:
        """Add or change a person (``sub`` = ``account_id``); ``preferred_username``
        defaults to the account id, ``email`` to ``<id>@example.test``."""
        account: dict[str, Any] = {"groups": list(groups)}
        for key, value in (
            ("email", email),
            ("name", name),
            ("preferred_username", preferred_username),
        ):
            if value is not None:
                account[key] = value
        self._accounts[account_id] = account
        self._write_accounts()

    def remove_account(self, account_id: str) -> None:
        self._accounts.pop(account_id, None)
        self._write_accounts()

    # -- what the broker is configured with ----------------------------------------------

    def broker_settings(self, **extra: str) -> dict[str, str]:
        """The BROKER_OIDC_* settings of a broker registered at this provider."""
        return {
            "BROKER_OIDC_ISSUER": self.issuer,
            "BROKER_OIDC_CLIENT_ID": self.client_id,
            "BROKER_OIDC_CLIENT_SECRET": self.client_secret,
            "BROKER_OIDC_ROLE_MAP": ROLE_MAP,
            "BROKER_OIDC_DISPLAY_NAME": "Test Provider",
            "BROKER_OIDC_TIMEOUT": "5",
            **extra,
        }

    # -- a person at the provider's pages, over HTTP -------------------------------------

    def _local(self, url: str) -> str:
        """A URL of this provider, to be requested where it listens (the issuer's host may
        be ``localhost``, which this machine may resolve to ::1 first)."""
        parts = urlsplit(url)
        return self.url + parts.path + (f"?{parts.query}" if parts.query else "")

    def _ours(self, url: str) -> bool:
        """A page of this provider: on the port it listens on (its pages are addressed by
        the host the request named, the issuer's or 127.0.0.1)."""
        parts = urlsplit(url)
        hosts = {urlsplit(self.issuer).hostname, "127.0.0.1", "localhost"}
        return parts.scheme == "http" and parts.port == self.port and parts.hostname in hosts

    def sign_in(
        self,
        authorization_url: str,
        login: str,
        *,
        abort: bool = False,
        browser: httpx.Client | None = None,
    ) -> str:
        """Follow ``authorization_url`` through the provider's login and consent pages as
        ``login`` and return the URL the provider sends the browser back to (the broker's
        redirect URI with ``code``, ``state`` and ``iss``, or an ``error``). ``abort``:
        the person cancels at the first page instead. ``browser``: a client whose cookies
        (the provider's session) carry over between sign-ins, as a browser's would."""
        with contextlib.ExitStack() as stack:
            client = browser or stack.enter_context(
                httpx.Client(timeout=STEP_WAIT, follow_redirects=False)
            )
            return self._drive(client, "GET", authorization_url, login, abort=abort)

    def approve_device(
        self,
        verification_uri: str,
        login: str,
        *,
        user_code: str | None = None,
        abort: bool = False,
    ) -> str:
        """Open RFC 8628's verification page (``verification_uri_complete``, or the plain
        URI and ``user_code``), confirm the code, sign in as ``login`` and consent; returns
        the text of the last page (the provider's success page)."""
        with httpx.Client(timeout=STEP_WAIT, follow_redirects=False) as client:
            return self._drive(
                client, "GET", verification_uri, login, abort=abort, user_code=user_code
            )

    def _drive(
        self,
        client: httpx.Client,
        method: str,
        url: str,
        login: str,
        *,
        abort: bool,
        user_code: str | None = None,
        form: dict[str, str] | None = None,
    ) -> str:
        for _ in range(MAX_STEPS):
            if not self._ours(url):
                return url  # the provider sends the browser back to the client
            resp = client.request(method, self._local(url), data=form)
            if resp.is_redirect:
                url, method, form = urljoin(url, resp.headers["location"]), "GET", None
                continue
            assert resp.status_code == 200, f"{resp.status_code} from the provider: {resp.text}"
            page = _Forms()
            page.feed(resp.text)
            if not page.forms:
                return resp.text  # a page to read (the device flow's success page)
            action, fields = page.forms[0]
            if abort and "/interaction/" in url:
                url, method, form = url.rstrip("/") + "/abort", "GET", None
                continue
            if abort and "xsrf" in fields and "confirm" in fields:
                fields.pop("confirm")
                fields["abort"] = "yes"
            if fields.get("prompt") == "login":
                fields.update(login=login, password="any password")
            if "user_code" in fields and user_code is not None:
                fields["user_code"] = user_code
            url, method, form = urljoin(url, action or url), "POST", fields
        raise AssertionError(f"the provider's pages did not end within {MAX_STEPS} steps")


class _Forms(HTMLParser):
    """The forms of a page: (action, {name: value}) of their inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[tuple[str, dict[str, str]]] = []
        self._open = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append((named.get("action", ""), {}))
            self._open = True
        elif tag == "input" and self._open and named.get("name"):
            self.forms[-1][1][named["name"]] = named.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._open = False


@contextlib.contextmanager
def running_provider(workdir: Path, **options: Any) -> Iterator[OidcProvider]:
    """An ``OidcProvider`` started for the block and stopped after it."""
    with OidcProvider(workdir, **options) as provider:
        yield provider
