"""The live feed routes: a generation's events and the user's, over SSE and WebSocket."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Annotated, Any
from uuid import UUID

from litestar import Request, Response, get
from litestar.connection import WebSocket
from litestar.di import NamedDependency
from litestar.handlers import websocket_stream
from litestar.params import FromPath, HeaderParameter, QueryParameter
from litestar.response import ServerSentEvent
from litestar.types import ControllerRouterHandler

from application.users import User
from interfaces.http.auth import STREAM_OPT, TokenQuery
from interfaces.http.cors import socket_origin_guard
from interfaces.http.problems import ProblemError
from interfaces.http.sse import socket_messages, sse_response
from interfaces.http.streams import LiveFeeds, UserPosition

#: An event's id is its position in the log: digits (empty: from now on).
_POSITION = r"^[0-9]*$"
LastEventId = Annotated[
    str | None,
    HeaderParameter(name="Last-Event-ID", max_length=30, pattern=_POSITION, required=False),
]
LastEventIdQuery = Annotated[
    str | None, QueryParameter(name="last_event_id", max_length=30, pattern=_POSITION)
]


#: The user feed's ids: ``<generations position>[.<workflows position>]``.
_USER_POSITION = r"^([0-9]+(\.[0-9]+)?)?$"
UserLastEventId = Annotated[
    str | None,
    HeaderParameter(name="Last-Event-ID", max_length=41, pattern=_USER_POSITION, required=False),
]
UserLastEventIdQuery = Annotated[
    str | None, QueryParameter(name="last_event_id", max_length=41, pattern=_USER_POSITION)
]


def user_position(header: str | None, query: str | None) -> UserPosition | None:
    value = header if header is not None else query
    if value is None or value == "":
        return None
    try:
        return UserPosition.parse(value)
    except ValueError:
        raise ProblemError(400, "Last-Event-ID must be the id of an event this API sent") from None


def event_position(header: str | None, query: str | None) -> int | None:
    value = header if header is not None else query
    if value is None or value == "":
        return None
    if not (value.isascii() and value.isdecimal()):
        raise ProblemError(400, "Last-Event-ID must be the id of an event this API sent")
    return int(value)


@get("/v1/generations/{generation_id:uuid}/events", opt=STREAM_OPT)
async def generation_events(
    request: Request[User, Any, Any],
    generation_id: FromPath[UUID],
    feeds: NamedDependency[LiveFeeds],
    last_event_id: LastEventId = None,
    last_event_id_query: LastEventIdQuery = None,
    token: TokenQuery = None,  # noqa: ARG001 - read by the authentication middleware
) -> Response[Any]:
    """Server-Sent Events of one generation: ``status``, ``progress`` and a final event."""
    last = event_position(last_event_id, last_event_id_query)
    stream, done = await feeds.open_generation(request.user.id, generation_id, last)
    if done:  # 204 tells an EventSource to stop reconnecting
        return Response(None, status_code=204)
    return sse_response(stream)


@get("/v1/events", opt=STREAM_OPT)
async def user_events(
    request: Request[User, Any, Any],
    feeds: NamedDependency[LiveFeeds],
    last_event_id: UserLastEventId = None,
    last_event_id_query: UserLastEventIdQuery = None,
    token: TokenQuery = None,  # noqa: ARG001 - read by the authentication middleware
) -> ServerSentEvent:
    """Server-Sent Events of every change to the caller's generations and workflow runs.

    Event ids are ``<generations position>.<workflows position>`` (``.0`` left out)."""
    last = user_position(last_event_id, last_event_id_query)
    return sse_response(await feeds.open_user(request.user.id, last))


@websocket_stream("/v1/ws", opt=STREAM_OPT, guards=[socket_origin_guard])
async def user_socket(
    socket: WebSocket[User, Any, Any],
    feeds: NamedDependency[LiveFeeds],
    last_event_id_query: UserLastEventIdQuery = None,
    token: TokenQuery = None,  # noqa: ARG001 - read by the authentication middleware
) -> AsyncGenerator[dict[str, Any], None]:
    """The user's feed as JSON messages ``{"type", "id", "data"}``."""
    last = user_position(None, last_event_id_query)
    messages = socket_messages(await feeds.open_user(socket.user.id, last))
    try:
        async for message in messages:
            yield message
    finally:
        await messages.aclose()


ROUTES: list[ControllerRouterHandler] = [generation_events, user_events, user_socket]
