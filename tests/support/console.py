"""Browsing the web console over the in-loop ASGI client: a browser with its own cookie jar,
signing in through the login form, and the CSRF token a page's forms carry."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

HTTPS = "https://broker.test"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


async def browser(app: Any, base_url: str = HTTPS) -> httpx.AsyncClient:
    """A client with its own cookie jar, like a separate browser."""
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50001))
    return httpx.AsyncClient(transport=transport, base_url=base_url)


def csrf_of(page: httpx.Response) -> str:
    match = CSRF.search(page.text)
    assert match, page.text[:500]
    return match.group(1)


async def sign_in(c: httpx.AsyncClient, token: str) -> httpx.Response:
    form = await c.get("/console/login")
    assert form.status_code == 200, form.text
    return await c.post("/console/login", data={"csrf": csrf_of(form), "token": token})


@asynccontextmanager
async def signed_in(
    app: Any, token: str, base_url: str = HTTPS
) -> AsyncIterator[httpx.AsyncClient]:
    async with await browser(app, base_url) as c:
        done = await sign_in(c, token)
        assert done.status_code == 303, done.text
        assert done.headers["location"] == "/console"
        yield c


async def page_csrf(c: httpx.AsyncClient, path: str = "/console") -> str:
    page = await c.get(path)
    assert page.status_code == 200, page.text
    return csrf_of(page)
