"""The marketplace: listings, installs, upgrades, earnings and refunds (API.md, Marketplace).

Thin controllers: commands go to the marketplace use cases (on a thread: they block), reads to
the marketplace and earnings projections' queries. A listing or install just made is readable
at once: reads wait for the projection to have it, and a listing it still lacks comes from the
write side.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, TypeVar
from uuid import UUID

from litestar import Controller, Request, Response, get, patch, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody, Parameter
from litestar.types import ControllerRouterHandler
from psycopg_pool import AsyncConnectionPool

from application.marketplace import MarketplaceApplication, listing_document
from application.users import User
from domain.credits import account_id_for
from interfaces.http import marketplace_dto as dto
from interfaces.http import workflow_dto
from interfaces.http.auth import admin_only
from interfaces.http.generation_routes import IdempotencyKey
from interfaces.http.problems import ProblemError
from interfaces.http.ratelimit import RATE_LIMITED
from projections import marketplace_queries, position_queries
from projections.earnings import EarningsView
from projections.ledger_queries import BadCursor
from projections.marketplace import MarketplaceView

Limit = Annotated[int, Parameter(ge=1, le=200)]
Cursor = Annotated[str | None, Parameter(max_length=200)]
#: No NUL: PostgreSQL's text cannot hold it.
Query = Annotated[str | None, Parameter(min_length=1, max_length=200, pattern=r"^[^\x00]*$")]
Sort = Annotated[Literal["newest", "installs", "price"] | None, Parameter()]
T = TypeVar("T")


class MarketplaceServices:
    """What the marketplace routes use: the write side (opened on first use) and the pool."""

    def __init__(
        self, marketplace: Callable[[], MarketplaceApplication], pool: AsyncConnectionPool
    ) -> None:
        self._marketplace = marketplace
        self.pool = pool

    @property
    def marketplace(self) -> MarketplaceApplication:
        return self._marketplace()


Services = NamedDependency[MarketplaceServices]


async def _paged(read: Callable[[], Awaitable[T]]) -> T:
    """A page of a list; a cursor we did not issue is the client's 400."""
    try:
        return await read()
    except BadCursor as bad:
        raise ProblemError(400, str(bad)) from None


class Listings(Controller):
    path = "/v1/listings"

    @post("", status_code=201, opt=RATE_LIMITED)
    async def create(
        self,
        request: Request[User, Any, Any],
        data: JSONBody[dto.CreateListing],
        marketplace_services: Services,
    ) -> dto.ListingView:
        made = await asyncio.to_thread(
            marketplace_services.marketplace.create_listing,
            request.user.id,
            data.workflow_id,
            data.version,
            data.title,
            data.description,
            dto.units_of(data.price_credits),
        )
        return dto.listing_view(made)

    @get("")
    async def browse(
        self,
        marketplace_services: Services,
        q: Query = None,
        sort: Sort = None,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> dto.ListingList:
        """Listed listings: ``q`` searches titles and descriptions (best match first unless
        ``sort`` says otherwise); ``sort`` is ``newest`` (the default), ``installs`` or
        ``price`` (lowest first)."""
        pool = marketplace_services.pool
        rows, next_cursor = await _paged(
            lambda: marketplace_queries.listings(pool, q, sort, limit, cursor)
        )
        return dto.ListingList([dto.listing_view(r) for r in rows], next_cursor)

    @get("/{listing_id:uuid}")
    async def listing(
        self, listing_id: FromPath[UUID], marketplace_services: Services
    ) -> dto.ListingView:
        return dto.listing_view(await _listing(marketplace_services, listing_id))

    @patch("/{listing_id:uuid}", status_code=200)
    async def update(
        self,
        request: Request[User, Any, Any],
        listing_id: FromPath[UUID],
        data: JSONBody[dto.UpdateListing],
        marketplace_services: Services,
    ) -> dto.ListingView:
        """Changes the title, the description or the price of future installs."""
        price = None if data.price_credits is None else dto.units_of(data.price_credits)
        await asyncio.to_thread(
            marketplace_services.marketplace.update_listing,
            request.user.id,
            listing_id,
            data.title,
            data.description,
            price,
        )
        return dto.listing_view(await _listing(marketplace_services, listing_id))

    @post("/{listing_id:uuid}/versions", status_code=200)
    async def offer_version(
        self,
        request: Request[User, Any, Any],
        listing_id: FromPath[UUID],
        data: JSONBody[dto.OfferVersion],
        marketplace_services: Services,
    ) -> dto.ListingView:
        """The listing now offers a newer version of the same workflow."""
        await asyncio.to_thread(
            marketplace_services.marketplace.offer_version,
            request.user.id,
            listing_id,
            data.version,
        )
        return dto.listing_view(await _listing(marketplace_services, listing_id))

    @post("/{listing_id:uuid}/unlist", status_code=200)
    async def unlist(
        self,
        request: Request[User, Any, Any],
        listing_id: FromPath[UUID],
        marketplace_services: Services,
    ) -> dto.ListingView:
        """Off the marketplace; installs already made are kept."""
        await asyncio.to_thread(
            marketplace_services.marketplace.unlist, request.user.id, listing_id
        )
        return dto.listing_view(await _listing(marketplace_services, listing_id))

    @post(
        "/{listing_id:uuid}/install",
        status_code=201,
        opt=RATE_LIMITED,
        responses={200: ResponseSpec(dto.InstallView, description="The install made before")},
    )
    async def install(
        self,
        request: Request[User, Any, Any],
        listing_id: FromPath[UUID],
        marketplace_services: Services,
        idempotency_key: IdempotencyKey = None,  # noqa: ARG002 - an install is idempotent itself
    ) -> Response[dto.InstallView]:
        """Pays the price once and gives the caller their own copy of the listed version:
        201 when this request made the install, 200 with the same install when it exists. The
        payment itself decides 402 (nothing recorded), so there is no pre-check to read first."""
        doc, made = await asyncio.to_thread(
            marketplace_services.marketplace.install, request.user.id, listing_id
        )
        return Response(dto.install_view(doc), status_code=201 if made else 200)


class Installs(Controller):
    path = "/v1/installs"

    @get("")
    async def installs(
        self,
        request: Request[User, Any, Any],
        marketplace_services: Services,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> dto.InstallList:
        """The caller's installs, newest first, each saying whether its listing offers a
        newer version (``update_available``: ``POST /v1/workflows/{id}/upgrade`` takes it)."""
        pool = marketplace_services.pool
        await position_queries.wait_for_head(pool, MarketplaceView)
        rows, next_cursor = await _paged(
            lambda: marketplace_queries.installs(pool, request.user.id, limit, cursor)
        )
        return dto.InstallList([dto.installed_view(r) for r in rows], next_cursor)


@post("/v1/workflows/{workflow_id:uuid}/upgrade", status_code=200, opt=RATE_LIMITED)
async def upgrade(
    request: Request[User, Any, Any],
    workflow_id: FromPath[UUID],
    marketplace_services: Services,
) -> workflow_dto.WorkflowView:
    """Moves an installed copy to the version its listing offers now, free: the copy gains it
    as its next version; runs already started keep the version they pinned."""
    doc = await asyncio.to_thread(
        marketplace_services.marketplace.upgrade, request.user.id, workflow_id
    )
    return workflow_dto.workflow_view(doc)


@get("/v1/me/earnings")
async def earnings(
    request: Request[User, Any, Any],
    marketplace_services: Services,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> dto.EarningsView:
    """What the caller earned from installs of their listings, net of refunds, newest
    movement first."""
    pool = marketplace_services.pool
    await position_queries.wait_for_aggregate(pool, EarningsView, account_id_for(request.user.id))
    found = await _paged(lambda: marketplace_queries.earnings(pool, request.user.id, limit, cursor))
    return dto.earnings_view(found)


@post("/v1/admin/installs/{install_id:uuid}/refund", status_code=200, guards=[admin_only])
async def refund(
    request: Request[User, Any, Any],
    install_id: FromPath[UUID],
    data: JSONBody[dto.Refund],
    marketplace_services: Services,
) -> dto.InstallView:
    """Refunds an install once: the buyer gets the price back, the creator's earning and the
    platform's fee are clawed back (a creator who spent it owes the rest). Again: 409."""
    doc = await asyncio.to_thread(
        marketplace_services.marketplace.refund, request.user.id, install_id, data.reason
    )
    return dto.install_view(doc)


async def _listing(services: MarketplaceServices, listing_id: UUID) -> dict[str, Any]:
    """The listing from the read model once it has every event of it; from the write side
    if the projection lags (never a 404 for a listing that exists)."""
    pool = services.pool
    await marketplace_queries.caught_up_listing(pool, listing_id)
    row = await marketplace_queries.listing(pool, listing_id)
    if row is not None:
        return row
    return listing_document(await asyncio.to_thread(services.marketplace.listing, None, listing_id))


ROUTES: list[ControllerRouterHandler] = [Listings, Installs, upgrade, earnings, refund]
