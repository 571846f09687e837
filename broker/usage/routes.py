"""``POST /v1/usage``: a resource service reports how it used the keys presented to it."""

from __future__ import annotations

from litestar import post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.status_codes import HTTP_202_ACCEPTED

from broker.identity.authenticate import ServiceIdentity
from broker.runtime import Runtime
from broker.usage.schemas import RejectedEventOut, UsageReceiptOut, UsageReport
from broker.usage.service import receive_report

REPORT_MAX_BYTES = 1024 * 1024


@post(
    "/v1/usage",
    tags=["usage"],
    summary="Report uses of keys (batch of up to 500 events)",
    description=(
        "Events for unknown keys, keys of another audience or older than the usage window "
        "are rejected one by one (listed in the receipt); a malformed event refuses the "
        "whole report. When the broker's queue is full the whole report is refused with "
        "429 and Retry-After. Reports are limited to 1 MiB."
    ),
    status_code=HTTP_202_ACCEPTED,
    # 500 events do not fit the default body limit meant for admin bodies.
    request_max_body_size=REPORT_MAX_BYTES,
)
async def report_usage(
    data: JSONBody[UsageReport],
    runtime: NamedDependency[Runtime],
    service: NamedDependency[ServiceIdentity],
) -> UsageReceiptOut:
    receipt = await receive_report(runtime, service.service_id, data.events)
    return UsageReceiptOut(
        accepted=receipt.accepted,
        rejected=[RejectedEventOut(r.index, r.jti, r.reason) for r in receipt.rejected],
    )


ROUTES = [report_usage]
