"""Sub-processor terms over HTTP: thin handlers over ``broker.identity.sub_processors``."""

from __future__ import annotations

from litestar import Controller, delete, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.http.deps import requires
from broker.identity import sub_processors
from broker.identity.routes import service_out
from broker.identity.schemas import ServiceOut, SubProcessorIn, SubProcessorReview
from broker.operators.service import OperatorPrincipal, Role


class SubProcessorController(Controller):
    path = "/v1/admin/services/{service_id:str}/sub-processor"
    tags = ["services"]

    @requires(Role.ADMIN)
    @put(
        "/",
        summary="Register the service as an outside sub-processor, or change its terms",
        description=(
            '`{"agreement", "region", "review_by"}`: the processing agreement\'s '
            "reference, where it processes, and when its review is next due (a future "
            "instant with a time zone). Its keys then live at most "
            "`BROKER_SUBPROCESSOR_MAX_TTL`; reminders go out "
            "`BROKER_SUBPROCESSOR_REVIEW_WARNING` ahead and a lapsed review quarantines it."
        ),
    )
    async def set_sub_processor(
        self,
        service_id: FromPath[str],
        data: JSONBody[SubProcessorIn],
        db: NamedDependency[AsyncSession],
        operator: NamedDependency[OperatorPrincipal],
    ) -> ServiceOut:
        terms = sub_processors.check_terms(data.agreement, data.region, data.review_by)
        view = await sub_processors.set_sub_processor(db, service_id, terms, actor=operator.actor)
        return service_out(view)

    @requires(Role.ADMIN)
    @delete(
        "/",
        status_code=200,
        summary="The service is no longer an outside sub-processor",
    )
    async def clear_sub_processor(
        self,
        service_id: FromPath[str],
        db: NamedDependency[AsyncSession],
        operator: NamedDependency[OperatorPrincipal],
    ) -> ServiceOut:
        view = await sub_processors.clear_sub_processor(db, service_id, actor=operator.actor)
        return service_out(view)

    @requires(Role.ADMIN)
    @post(
        "/review",
        status_code=200,
        summary="Record a sub-processor's review and its next date; lifts the review's quarantine",
        description=(
            '`{"review_by", "comment"}`: the next review date (future, with a time zone) '
            "and what the review looked at (required). A quarantine the review job put on "
            "when the previous date passed is lifted in the same transaction; a quarantine "
            "by an operator or a rule stays (`/release`)."
        ),
    )
    async def review_sub_processor(
        self,
        service_id: FromPath[str],
        data: JSONBody[SubProcessorReview],
        db: NamedDependency[AsyncSession],
        operator: NamedDependency[OperatorPrincipal],
    ) -> ServiceOut:
        reviewed = await sub_processors.review(
            db, service_id, data.review_by, data.comment, actor=operator.actor
        )
        return service_out(reviewed.view)


ROUTES = [SubProcessorController]
