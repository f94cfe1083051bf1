"""The aiohttp application: every route with the right it needs, and its middlewares.

``guard`` runs first: it finds the right the matched route needs (routes
nobody matched need none: they answer 404 or 501), lets ``access.Gate``
admit the caller (401, 403) and keeps it in ``request["caller"]``; then
``body_in_time`` reads the body of an admitted request, which must arrive
within the client timeout (408). ``answer_errors`` wraps those: ``HttpError``
and aiohttp's own HTTP errors become Ganeti's JSON error body; a method a
resource does not have is 501 with Ganeti's message; any other exception
is logged with its traceback and answered 500. Outermost, ``connections``
(``connections.Connections``) is told when each request starts and ends.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from aiohttp.typedefs import Handler as AiohttpHandler
from aiohttp.typedefs import Middleware

from jobqueue.rapi.access import SAFE_METHODS, Gate
from jobqueue.rapi.answers import HttpError, error_response
from jobqueue.rapi.connections import Connections
from jobqueue.rapi.dashboard import Dashboard
from jobqueue.rapi.exposition import CONTENT_TYPE_LATEST, render
from jobqueue.rapi.feed import Feed
from jobqueue.rapi.master import Master
from jobqueue.rapi.resources import WAIT_TIMEOUT, Resources, Route
from jobqueue.rapi.users import READ, WRITE

#: The largest request body accepted (as the master's largest LUXI message).
MAX_BODY = 16 * 1024 * 1024

RIGHTS = web.AppKey("rights", dict[object, str])
GATE = web.AppKey("gate", Gate)
LOG = web.AppKey("log", logging.Logger)


def build_app(
    master: Master,
    gate: Gate,
    *,
    dashboard_interval: float = 1.0,
    wait_timeout: float = WAIT_TIMEOUT,
    connections: Connections | None = None,
    logger: logging.Logger | None = None,
) -> web.Application:
    """The whole application; ``master`` is closed when it shuts down."""
    log = logger or logging.getLogger("jobqueue.rapi")
    keeper = connections or Connections()
    middlewares = [_counted(keeper), answer_errors, guard, _body_in_time(keeper.idle_timeout)]
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY)
    feed = Feed(master, interval=dashboard_interval, logger=log)
    dashboard = Dashboard(master, feed)
    metrics = Route("GET", "/metrics", _metrics_handler(master), READ)
    rights: dict[object, str] = {}
    resources = Resources(master, wait_timeout=wait_timeout)
    for route in [*resources.routes(), metrics, *dashboard.routes()]:
        rights[app.router.add_route(route.method, route.path, route.handler)] = route.right
    app[RIGHTS], app[GATE], app[LOG] = rights, gate, log

    async def stop_streams(_app: web.Application) -> None:
        dashboard.closing.set()
        await feed.stop()

    async def close_master(_app: web.Application) -> None:
        master.close()

    app.on_shutdown.append(stop_streams)
    app.on_cleanup.append(close_master)
    return app


def _metrics_handler(master: Master) -> AiohttpHandler:
    async def scrape(request: web.Request) -> web.StreamResponse:
        try:
            export = await master.call(lambda client: client.query_metrics())
        except Exception as err:  # the scrape still answers, saying the master is down
            request.app[LOG].warning("QueryMetrics failed: %s", err)
            export = None
        return web.Response(body=render(export), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return scrape


@web.middleware
async def guard(request: web.Request, handler: AiohttpHandler) -> web.StreamResponse:
    """Admit the caller of a matched route (see the module docstring)."""
    right = request.app[RIGHTS].get(request.match_info.route)
    if right is not None:
        caller = request.app[GATE].admit(request.method, right, request.headers, request.host)
        request["caller"] = caller
        if right == WRITE and request.method not in SAFE_METHODS:  # who changed what, for audit
            request.app[LOG].info("%s %s by user %s", request.method, request.path_qs, caller.name)
    return await handler(request)


def _counted(connections: Connections) -> Middleware:
    @web.middleware
    async def counted(request: web.Request, handler: AiohttpHandler) -> web.StreamResponse:
        """Tell ``connections`` when the request starts and ends."""
        connections.request_started(request.protocol)
        try:
            return await handler(request)
        finally:
            connections.request_ended(request.protocol)

    return counted


def _body_in_time(timeout: float) -> Middleware:
    @web.middleware
    async def body_in_time(request: web.Request, handler: AiohttpHandler) -> web.StreamResponse:
        """Read an admitted request's body, which must arrive within ``timeout`` (408)."""
        if request.body_exists:
            try:
                await asyncio.wait_for(request.read(), timeout)
            except TimeoutError:
                raise HttpError(
                    408, f"The request body did not arrive within {timeout:g}s"
                ) from None
        return await handler(request)

    return body_in_time


@web.middleware
async def answer_errors(request: web.Request, handler: AiohttpHandler) -> web.StreamResponse:
    """Answer every failure with Ganeti's JSON error body."""
    try:
        return await handler(request)
    except HttpError as err:
        return error_response(err)
    except web.HTTPMethodNotAllowed:
        message = f"Method {request.method} is unsupported for path {request.path}"
        return error_response(HttpError(501, message))
    except web.HTTPException as err:
        if err.status < 400:
            raise
        return error_response(HttpError(err.status, err.reason, _extra_headers(err)))
    except Exception as err:
        request.app[LOG].exception("%s %s failed", request.method, request.path)
        return error_response(HttpError(500, str(err) or type(err).__name__))


def _extra_headers(err: web.HTTPException) -> dict[str, str]:
    return {
        k: v for k, v in err.headers.items() if k.lower() not in ("content-type", "content-length")
    }
