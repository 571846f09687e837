"""``GET /v1/status-lists/{id}``: a Token Status List, as any JOSE verifier fetches it; and
``GET /v1/status-lists``, the draft's Status List Aggregation: the URIs of every list.

Public, like the JWKS: a list says only which indices are revoked, and a key's index is in
the key itself. ``Cache-Control`` is the list's own ``ttl`` (``status_list_max_age``), so a
verifier that honours either refetches as often as the broker refreshes the list (within
a second of a revocation on every replica).
"""

from __future__ import annotations

import msgspec
from litestar import Response, get
from litestar.di import NamedDependency
from litestar.params import FromPath

from broker.errors import NotFound
from broker.http.asgi_io import whole_number
from broker.revocation.status_index import list_uris
from broker.revocation.status_list import MEDIA_TYPE, status_lists
from broker.runtime import Runtime

MAX_LIST_ID = 2**31 - 1


def _cached(runtime: Runtime) -> dict[str, str]:
    """As long as a list may be kept: the broker refreshes them no less often."""
    return {"Cache-Control": f"public, max-age={int(runtime.settings.status_list_max_age)}"}


@get(
    "/v1/status-lists/{list_id:str}",
    tags=["revocations"],
    summary="A Token Status List (statuslist+jwt, draft-ietf-oauth-status-list)",
    description=(
        "The list a key's `status.status_list.uri` names, as a `statuslist+jwt` signed by "
        "the broker's active signing key (verify it from the JWKS). `status_list.lst` is "
        "the ZLIB-compressed, base64url bit string, one bit per key (`bits: 1`; bit `idx` "
        "is bit `idx % 8`, least significant first, of byte `idx // 8`; 1 = revoked). "
        "Every kept revocation entry is reflected within a second on every replica; "
        "`Cache-Control: max-age` and the `ttl` claim say how long it may be kept. "
        "404 for a list that does not exist."
    ),
    media_type=MEDIA_TYPE,
    include_in_schema=True,
)
async def status_list(runtime: NamedDependency[Runtime], list_id: FromPath[str]) -> Response[bytes]:
    number = whole_number(list_id, low=1, high=MAX_LIST_ID)
    found = await status_lists(runtime).published(number) if number is not None else None
    if found is None:
        raise NotFound("no status list has this id")
    return Response(found.token.encode("ascii"), media_type=MEDIA_TYPE, headers=_cached(runtime))


class StatusListAggregation(msgspec.Struct):
    status_lists: list[str]


@get(
    "/v1/status-lists",
    tags=["revocations"],
    summary="Status List Aggregation: the URI of every Token Status List",
    description=(
        '`{"status_lists": [uri, ...]}` (draft-ietf-oauth-status-list, Status List '
        "Aggregation; named by `status_list_aggregation_endpoint` in the broker's "
        "metadata): every list a key may point into, oldest first, so a verifier can fetch "
        "them before it meets the keys. Public, like the lists."
    ),
)
async def status_list_aggregation(
    runtime: NamedDependency[Runtime],
) -> Response[StatusListAggregation]:
    return Response(
        StatusListAggregation(status_lists=await list_uris(runtime)), headers=_cached(runtime)
    )


ROUTES = [status_list_aggregation, status_list]
