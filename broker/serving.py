"""``broker serve``: the app behind a production ASGI server, uvicorn (default) or granian.

Both run ``served_app`` as a factory in each worker process, so every worker builds its own
runtime (engine, caches, recorder). Uvicorn is the default after measuring both with
``bench/issue.py`` on the same machine, alternating them round by round: neither served
keys consistently faster (each won about half of the rounds, medians within the noise),
uvicorn used less CPU per key, and with one worker it is one process where granian adds a
supervisor (about 120 MB of RSS at rest against 220 MB). ``--server granian`` is there for
deployments that measure otherwise.

Shutdown on SIGTERM or SIGINT is graceful with both: the listener closes, requests in
flight run to completion (their keys are recorded and returned), and only a worker still
busy after ``BROKER_GRACEFUL_TIMEOUT`` seconds is stopped hard. Neither server reads
forwarding headers itself: ``broker.http.proxy_headers`` does, from trusted proxies only.
"""

from __future__ import annotations

import errno
import socket

from litestar.types import ASGIApp

from broker.settings import Settings, SettingsError, get_settings

FACTORY = "broker.serving:served_app"


def served_app() -> ASGIApp:
    """The ASGI app each worker serves (the servers call this factory once per worker)."""
    from broker.app import create_app
    from broker.http.proxy_headers import TrustedProxies, proxy_headers_middleware

    settings = get_settings()
    app: ASGIApp = create_app(settings, freeze_gc_after_start=True)
    trusted = TrustedProxies.parse(settings.forwarded_allow_ips)
    if trusted:
        app = proxy_headers_middleware(app, trusted)
    return app


def listen_address(settings: Settings) -> str:
    """``host:port`` as a URL authority (an IPv6 address in brackets)."""
    host = settings.host
    return f"[{host}]:{settings.port}" if ":" in host else f"{host}:{settings.port}"


def check_address(settings: Settings) -> None:
    """Bind the listen address once and let it go, so that an address in use stops the start
    with one line before anything is printed (the banner, a bootstrap token) or the database
    is touched, rather than after the banner claimed the broker was listening.

    Bound as both servers bind (``SO_REUSEADDR``): what they could take, this can take. The
    address could still be taken in the moment between this check and the server's bind;
    the server then fails with its own error.
    """
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    where = listen_address(settings)
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((settings.host, settings.port))
    except socket.gaierror:
        raise SettingsError(
            f"cannot listen on {where}: BROKER_HOST {settings.host!r} is not an address of "
            "this host (set BROKER_HOST or --host)"
        ) from None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise SettingsError(
                f"cannot listen on {where} (BROKER_HOST, BROKER_PORT): the address is already "
                "in use; stop what listens there or choose another BROKER_PORT (--port)"
            ) from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise SettingsError(
                f"cannot listen on {where}: BROKER_HOST {settings.host!r} is not an address "
                "of this host (set BROKER_HOST or --host)"
            ) from None
        reason = exc.strerror or type(exc).__name__
        raise SettingsError(
            f"cannot listen on {where} (BROKER_HOST, BROKER_PORT): {reason}"
        ) from None


def run(settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT; returns after a graceful shutdown."""
    if settings.server == "granian":
        _granian(settings)
    else:
        _uvicorn(settings)


def _uvicorn(settings: Settings) -> None:
    import uvicorn

    uvicorn.run(
        FACTORY,
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=settings.graceful_timeout,
    )


def _granian(settings: Settings) -> None:
    from granian.constants import HTTPModes, Interfaces
    from granian.log import LogLevels
    from granian.server import Server as Granian

    # Granian's own records go to the root logger, which the broker formats as JSON.
    log_config = {
        "loggers": {
            "_granian": {"handlers": [], "propagate": True},
            "granian.access": {"handlers": [], "propagate": True},
        }
    }
    Granian(
        FACTORY,
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,
        workers=settings.workers,
        http=HTTPModes.http1,
        websockets=False,
        factory=True,
        log_enabled=True,
        log_level=LogLevels(settings.log_level.lower()),
        log_dictconfig=log_config,
        log_access=False,
        workers_kill_timeout=settings.graceful_timeout,
        respawn_failed_workers=True,
    ).serve()
