"""``broker login`` and ``broker logout``: a short-lived operator token for the person at
the terminal, from the identity provider (issue 19, part 2).

The broker holds the provider's client credentials; the CLI needs only the broker's
address. Two ways in, both brokered by the broker:

* the device authorization grant (RFC 8628), where the provider offers it: the CLI shows
  a code and a link, the person confirms the code at the provider (on any device), and the
  CLI polls the broker, which polls the provider once per call;
* a loopback redirect (RFC 8252), for providers without it: the CLI listens on the
  loopback redirect URI registered for the broker (``BROKER_OIDC_CLI_REDIRECT_URI``, on
  127.0.0.1), opens the provider's authorization page, and hands the code the browser brings
  back to the broker together with its own PKCE verifier. The broker only ever saw the
  challenge, so a code someone else on the machine catches on the loopback is useless.

Either way the broker signs the person in as it does in the console (role from their
groups, audited) and hands out a token lasting ``BROKER_LOGIN_TOKEN_TTL``, which the CLI
stores (``broker.ops_cli.login_token``) and every command then uses for that broker.
``broker logout`` ends the token at the broker and deletes the file.

Failures are one line each (exit 1 refused, 2 configuration, 3 broker or provider
unreachable); no code, verifier or token is ever printed.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import socket
import socketserver
import sys
import threading
import time
import webbrowser
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlparse

import click

from broker.ops_cli import config
from broker.ops_cli.common import Injected
from broker.ops_cli.errors import CliError, ConfigError, Refused, Unavailable
from broker.ops_cli.http import BrokerHTTP
from broker.ops_cli.login_token import (
    StoredLogin,
    forget_login,
    iso,
    login_path,
    read_login,
    write_login,
)

LOGIN = "/v1/admin/login"
LOGOUT = "/v1/admin/logout"
# How long ``broker login`` waits for the browser to come back to the loopback listener:
# the broker's record of the authorization request lasts ten minutes.
BROWSER_WAIT = 600.0
# The longest a device code is polled for, whatever the provider says it lasts.
DEVICE_MAX_WAIT = 1800
DEFAULT_INTERVAL = 5
SLOW_DOWN_STEP = 5  # RFC 8628 §3.5: slow_down adds 5 seconds to the interval
# The answers these commands word themselves: the broker's problems (its 4xx, and the 502,
# 503 and 504 of a provider it cannot reach) and the device flow's OAuth errors.
ANSWERS = frozenset(range(400, 500)) | frozenset({502, 503, 504})


def _say(message: str) -> None:
    click.echo(message, err=True)


def _client(cfg: config.RemoteConfig) -> BrokerHTTP:
    ctx = click.get_current_context(silent=True)
    injected = ctx.find_object(Injected) if ctx is not None else None
    return BrokerHTTP(cfg, transport=injected.transport if injected else None)


def _checked(body: Any) -> dict[str, Any]:
    """An answer the command reads; a problem document raised as its one-line detail."""
    if not isinstance(body, dict):
        raise Unavailable("the broker answered with something other than a JSON object")
    status = body.get("status")
    if isinstance(body.get("type"), str) and isinstance(status, int):
        detail = str(body.get("detail") or body.get("title") or f"HTTP {status}")
        if status >= 500:
            raise Unavailable(detail)
        raise Refused(detail, status, str(body["type"]))
    return body


def _seconds(value: Any, default: int, *, low: int, high: int) -> int:
    number = value if isinstance(value, int) and not isinstance(value, bool) else default
    return max(low, min(high, number))


def _loopback_host(host: str) -> bool:
    return host in ("127.0.0.1", "::1", "localhost")


def open_browser(url: str) -> bool:
    """Open ``url`` in the person's browser where there is one to open. On a Linux machine
    without a display (an SSH session), ``webbrowser`` would start a text browser in this
    very terminal, so it is not asked; the printed link does."""
    graphical = ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER")
    if sys.platform.startswith("linux") and not any(os.environ.get(n) for n in graphical):
        return False
    try:
        return webbrowser.open(url, new=1)
    except webbrowser.Error:
        return False


# -- the device flow (RFC 8628) ---------------------------------------------------------


def _device(http: BrokerHTTP, *, no_browser: bool) -> dict[str, Any]:
    started = _checked(http.post(f"{LOGIN}/device", answers=ANSWERS))
    try:
        device_code = str(started["device_code"])
        user_code = str(started["user_code"])
        plain_uri = str(started["verification_uri"])
    except KeyError:
        raise Unavailable("the broker's device sign-in answer is incomplete") from None
    complete = started.get("verification_uri_complete")
    if isinstance(complete, str) and complete:
        _say(f"Open {complete} and confirm code {user_code}")
    else:
        _say(f"Open {plain_uri} and enter code {user_code}")
    if not no_browser:
        open_browser(complete if isinstance(complete, str) and complete else plain_uri)
    interval = _seconds(started.get("interval"), DEFAULT_INTERVAL, low=1, high=60)
    lifetime = _seconds(started.get("expires_in"), 600, low=1, high=DEVICE_MAX_WAIT)
    deadline = time.monotonic() + lifetime
    _say("Waiting for the code to be confirmed...")
    while True:
        if time.monotonic() + interval > deadline:
            raise CliError("the code expired before it was confirmed; run broker login again")
        time.sleep(interval)
        answer = _checked(
            http.post(f"{LOGIN}/device/token", {"device_code": device_code}, answers=ANSWERS)
        )
        error = answer.get("error")
        if error is None:
            return answer
        if error == "authorization_pending":
            continue
        if error == "slow_down":
            interval += SLOW_DOWN_STEP
            continue
        if error == "expired_token":
            raise CliError("the code expired before it was confirmed; run broker login again")
        if error == "access_denied":
            raise CliError("the sign-in was refused at the identity provider (access denied)")
        described = answer.get("error_description")
        raise CliError(
            f"the identity provider refused the sign-in: {error}"
            + (f" ({described})" if isinstance(described, str) and described else "")
        )


# -- the loopback flow (RFC 8252) -------------------------------------------------------


@dataclass(frozen=True)
class Redirect:
    """What the browser brought back to the loopback listener."""

    code: str | None
    iss: str | None
    error: str | None
    error_description: str | None


_PAGE = (
    "<!DOCTYPE html><html><head><meta charset=utf-8><title>{title}</title></head>"
    "<body style='font-family:sans-serif;margin:3em'><h1>{title}</h1><p>{text}</p>"
    "</body></html>"
)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 10  # a connection that sends nothing is dropped, not waited on

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the request line holds the authorization code."""

    def _page(self, status: int, title: str, text: str) -> None:
        body = _PAGE.format(title=title, text=text).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        listener = self.server.listener
        url = urlparse(self.path)
        if url.path != listener.path:
            self._page(404, "Not found", "Nothing here.")
            return
        query = parse_qs(url.query)

        def one(name: str) -> str | None:
            values = query.get(name)
            return values[0] if values and len(values) == 1 else None

        state = one("state")
        if state is None or not hmac.compare_digest(state.encode(), listener.state.encode()):
            self._page(
                400,
                "Not this sign-in",
                "This is not the sign-in <code>broker login</code> is waiting for.",
            )
            return
        redirect = Redirect(one("code"), one("iss"), one("error"), one("error_description"))
        if redirect.error is not None or redirect.code is None:
            self._page(
                200,
                "Sign-in refused",
                "The identity provider did not sign you in. You can close this tab; the "
                "terminal says more.",
            )
        else:
            self._page(
                200,
                "Signing you in",
                "broker login has what it needs: you can close this tab and return to the "
                "terminal.",
            )
        listener.answered(redirect)


class _Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], listener: Listener) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.listener = listener
        super().__init__(address, _Handler)


class Listener:
    """A one-shot HTTP listener on the loopback redirect URI: bound before the browser is
    sent anywhere (a busy port fails at once), answering one redirect that carries this
    sign-in's ``state``, and closed after it."""

    def __init__(self, redirect_uri: str) -> None:
        url = urlparse(redirect_uri)
        host = url.hostname or ""
        try:
            port = url.port
        except ValueError:
            port = None
        if url.scheme != "http" or not _loopback_host(host) or not port:
            raise ConfigError(
                f"the broker's loopback redirect URI {redirect_uri!r} is not "
                "http://127.0.0.1:PORT/...: BROKER_OIDC_CLI_REDIRECT_URI must name a loopback "
                "address and port (RFC 8252)"
            )
        self.path = url.path or "/"
        self.state = ""
        self._answer: Redirect | None = None
        self._done = threading.Event()
        bind = "127.0.0.1" if host == "localhost" else host
        try:
            self._server = _Server((bind, port), self)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {bind}:{port} for the browser's return "
                f"({exc.strerror or type(exc).__name__}): is another broker login running?"
            ) from None
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def answered(self, redirect: Redirect) -> None:
        if not self._done.is_set():
            self._answer = redirect
            self._done.set()

    def wait(self, seconds: float) -> Redirect:
        deadline = time.monotonic() + seconds
        # Short waits, so Ctrl-C is heard at once.
        while not self._done.wait(min(0.5, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                raise CliError(
                    f"the browser did not come back within {seconds:g}s; run broker login again"
                )
        assert self._answer is not None
        return self._answer

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def pkce_pair() -> tuple[str, str]:
    """An RFC 7636 verifier (64 characters) and its S256 challenge."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _browser(http: BrokerHTTP, info: dict[str, Any], *, no_browser: bool) -> dict[str, Any]:
    listener = Listener(str(info.get("loopback_redirect_uri") or ""))
    try:
        verifier, challenge = pkce_pair()
        started = _checked(
            http.post(
                f"{LOGIN}/browser",
                {"code_challenge": challenge, "code_challenge_method": "S256"},
                answers=ANSWERS,
            )
        )
        try:
            url, listener.state = str(started["authorization_url"]), str(started["state"])
        except KeyError:
            raise Unavailable("the broker's browser sign-in answer is incomplete") from None
        _say(f"Open {url} to sign in")
        if not no_browser:
            open_browser(url)
        _say("Waiting for the browser to come back...")
        redirect = listener.wait(BROWSER_WAIT)
    finally:
        listener.close()
    if redirect.error is not None or redirect.code is None:
        if redirect.error == "access_denied":
            raise CliError("the sign-in was refused at the identity provider (access denied)")
        raise CliError(
            f"the identity provider did not sign you in: {redirect.error or 'no code'}"
            + (f" ({redirect.error_description})" if redirect.error_description else "")
        )
    body = {"state": listener.state, "code": redirect.code, "code_verifier": verifier}
    if redirect.iss is not None:
        body["iss"] = redirect.iss
    return _checked(http.post(f"{LOGIN}/browser/token", body, answers=ANSWERS))


# -- the commands -----------------------------------------------------------------------


def _sign_in_info(http: BrokerHTTP, addr: str) -> dict[str, Any]:
    try:
        info = _checked(http.request("GET", LOGIN, answers=ANSWERS))
    except Refused as exc:
        if exc.status == 404:
            raise CliError(f"the broker at {addr} does not offer broker login") from None
        raise
    if not info.get("oidc"):
        raise CliError(
            f"the broker at {addr} has no identity provider configured "
            "(BROKER_OIDC_ISSUER): sign in with an operator token instead"
        )
    if info.get("provider") == "unreachable":
        raise Unavailable(
            str(info.get("detail") or "the broker cannot reach its identity provider")
            + "; try again later"
        )
    return info


def _end_quietly(cfg: config.RemoteConfig, token: str) -> None:
    """Best effort: end a replaced sign-in's token at the broker."""
    try:
        with _client(replace(cfg, token=token)) as http:
            http.post(LOGOUT, answers=ANSWERS)
    except CliError:
        pass


def _shadowed() -> str | None:
    """What would win over the stored sign-in at the next command, if anything."""
    if os.environ.get(config.ENV_TOKEN):
        return config.ENV_TOKEN
    try:
        file = config.load_file()
    except ConfigError:
        return None
    if file.get("token") or file.get("token_file"):
        return f"the token in {config.config_path()}"
    return None


@click.command("login")
@click.option(
    "--method",
    type=click.Choice(["device", "browser"]),
    default=None,
    help="device: confirm a code at the identity provider (RFC 8628), from any device; "
    "browser: a browser on this machine comes back to a loopback listener (RFC 8252). "
    "Default: device where the provider offers it.",
)
@click.option(
    "--addr",
    metavar="URL",
    default=None,
    help="Broker address (else BROKER_ADDR, else addr in the config file).",
)
@click.option(
    "--no-browser",
    is_flag=True,
    help="Print the address to open instead of opening a browser.",
)
def login(method: str | None, addr: str | None, no_browser: bool) -> None:
    """Sign in through the company's identity provider and keep a short-lived operator
    token for this broker (BROKER_LOGIN_TOKEN_TTL) in
    $XDG_CONFIG_HOME/pii-broker/login-token (mode 0600). Every command then uses it for
    that broker unless --token, BROKER_TOKEN or the config file names a token."""
    resolved = config.resolve(addr, None, need_token=False)
    cfg = replace(resolved, token=None, from_login=False)
    host = urlparse(cfg.addr).hostname or ""
    if cfg.addr.startswith("http://") and not _loopback_host(host):
        _say(f"warning: signing in to {host} without TLS: the token travels in clear; use https://")
    with _client(cfg) as http:
        info = _sign_in_info(http, cfg.addr)
        chosen = method or ("device" if info.get("device") else "browser")
        if chosen == "device" and not info.get("device"):
            raise CliError(
                "the identity provider does not offer the device flow: use --method browser"
            )
        if chosen == "device":
            granted = _device(http, no_browser=no_browser)
        else:
            granted = _browser(http, info, no_browser=no_browser)
    try:
        token = str(granted["access_token"])
        expires_in = int(granted["expires_in"])
        who = granted.get("operator") or {}
        name, role = str(who.get("name", "?")), str(who.get("role", "?"))
    except (KeyError, TypeError, ValueError, AttributeError):
        raise Unavailable("the broker's sign-in answer is incomplete") from None
    before = None
    with contextlib.suppress(ConfigError):
        before = read_login()
    stored = StoredLogin(
        cfg.addr, token, name, role, datetime.now(UTC) + timedelta(seconds=expires_in)
    )
    write_login(stored)
    if before is not None and before.belongs_to(cfg.addr) and not before.ended():
        _end_quietly(cfg, before.token)
    click.echo(f"Signed in to {cfg.addr} as {name} ({role}) until {iso(stored.expires_at)}")
    winner = _shadowed()
    if winner is not None:
        _say(f"note: {winner} is set and wins over this sign-in; unset it to use the sign-in")


@click.command("logout")
def logout() -> None:
    """End the sign-in broker login stored: the broker ends its token at once, and the
    file is deleted (even when the broker cannot be reached, which this says)."""
    path = login_path()
    stored = read_login(private=False)
    if stored is None:
        click.echo(f"Not signed in (nothing at {path})")
        return
    if stored.ended():
        forget_login()
        click.echo(
            f"Your sign-in to {stored.addr} had already ended at {iso(stored.expires_at)}; "
            f"deleted {path}"
        )
        return
    try:
        cfg = replace(config.resolve(stored.addr, stored.token), from_login=True)
    except ConfigError:
        cfg = config.RemoteConfig(addr=stored.addr, token=stored.token, from_login=True)
    try:
        with _client(cfg) as http:
            answer = http.post(LOGOUT, answers=ANSWERS)
    except Unavailable as exc:
        forget_login()
        raise Unavailable(
            f"deleted {path}, but the broker could not end the token ({exc.message}): it "
            f"works until {iso(stored.expires_at)} for whoever holds a copy"
        ) from None
    forget_login()
    if answer is None:
        click.echo(
            f"Signed out of {stored.addr} ({stored.operator}): the token no longer works; "
            f"deleted {path}"
        )
        return
    try:
        _checked(answer)
    except Refused as exc:
        if exc.status == 401:
            click.echo(f"Your sign-in to {stored.addr} had already ended; deleted {path}")
            return
        raise Refused(f"deleted {path}; the broker said: {exc.message}", exc.status) from None
    click.echo(f"Signed out of {stored.addr} ({stored.operator}); deleted {path}")


COMMANDS: list[click.Command] = [login, logout]
