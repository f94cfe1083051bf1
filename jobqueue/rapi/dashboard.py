"""The dashboard at ``/``: one page, its script and style, and two live event streams.

Everything the page needs is served from this package (``static/``); it
loads nothing from elsewhere (its Content-Security-Policy forbids it) and
may not be framed by another site. It follows the queue through
server-sent events:

``/dashboard/events?status=running,queued&search=text``
    ``overview`` events: the jobs matching the filter (newest first, at
    most ``feed.VIEW_LIMIT``), counts by status, locks and their holders,
    the filters, the workers and the running jobs; sent whenever any of it
    changes (``feed.Feed`` polls the master for every open page at once).
    A search longer than ``feed.MAX_SEARCH_LENGTH`` characters or of more
    than ``feed.MAX_SEARCH_WORDS`` words is answered 400.
``/dashboard/jobs/[id]/events``
    one ``job`` event with the job's fields and its whole log, then a
    ``change`` event for each change (new fields and new log entries, as
    ``WaitForJobChange`` gives them), then ``end`` once the job is finished.

``/dashboard/session`` tells the page who is logged in and whether the
user may write: the cancel and priority buttons are shown to ``write``
users only, and call ``DELETE /2/jobs/[id]`` and ``PUT
/2/jobs/[id]/priority``, where the server checks the right again (and
refuses requests from other sites, see ``access``).
"""

from __future__ import annotations

import asyncio
import importlib.resources
import json
from typing import Any

from aiohttp import web

from jobqueue import constants
from jobqueue.constants import FINALIZED
from jobqueue.errors import GenericError
from jobqueue.rapi.access import Caller
from jobqueue.rapi.answers import HttpError, from_luxi, json_response
from jobqueue.rapi.feed import Feed, search_words, view
from jobqueue.rapi.master import Master
from jobqueue.rapi.resources import Route, path_job_id
from jobqueue.rapi.users import READ

#: Seconds between keep-alive comments on an idle stream.
KEEPALIVE = 15.0
#: Seconds one WaitForJobChange of a job stream waits.
JOB_WAIT = 5.0
JOB_FIELDS = [
    "id",
    "status",
    "priority",
    "summary",
    "received_ts",
    "start_ts",
    "end_ts",
    "ops",
    "opstatus",
    "opresult",
    "oplog",
]
#: What a job stream watches for changes.
WATCH_FIELDS = ["status", "priority", "opstatus", "opresult", "start_ts", "end_ts"]
_STATIC = {
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
}
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Dashboard:
    """The page's handlers; ``closing`` ends every stream (the daemon stops)."""

    def __init__(self, master: Master, feed: Feed) -> None:
        self._master = master
        self._feed = feed
        self._files = {name: _read_static(name) for name in ("index.html", *_STATIC)}
        self.closing = asyncio.Event()

    def routes(self) -> list[Route]:
        return [
            Route("GET", "/", self.page, READ),
            Route("GET", "/dashboard/session", self.session, READ),
            Route("GET", "/dashboard/events", self.overview_events, READ),
            Route("GET", r"/dashboard/jobs/{job_id:\d+}/events", self.job_events, READ),
            Route("GET", "/dashboard/{name}", self.static, READ),
        ]

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self._files["index.html"], content_type="text/html", headers=_PAGE_HEADERS
        )

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in _STATIC:
            raise HttpError(404)
        return web.Response(
            body=self._files[name], content_type=_STATIC[name], headers=_PAGE_HEADERS
        )

    async def session(self, request: web.Request) -> web.Response:
        caller: Caller = request["caller"]
        return json_response({"user": caller.name, "write": caller.can_write})

    async def overview_events(self, request: web.Request) -> web.StreamResponse:
        statuses = frozenset(s for s in request.query.get("status", "").split(",") if s)
        try:
            words = search_words(request.query.get("search", ""))
        except ValueError as err:
            raise HttpError(400, str(err)) from None
        stream = await _open_stream(request)
        seen, sent = 0, ""  # version 0 is nothing yet: wait for the first answer
        async with self._feed.listening():
            while not self.closing.is_set():
                snapshot = await self._feed.next(seen, KEEPALIVE)
                data = sent  # the same snapshot again (a keep-alive): the same view
                if not sent or snapshot.version != seen:
                    data = json.dumps(view(snapshot, statuses, words))
                seen = snapshot.version
                try:
                    if data != sent:
                        sent = data
                        await _send(stream, "overview", data)
                    else:
                        await stream.write(b": keep-alive\n\n")
                except ConnectionResetError:  # the page went away
                    break
        return stream

    async def job_events(self, request: web.Request) -> web.StreamResponse:
        job_id = path_job_id(request)
        (row,) = await self._ask(lambda c: c.query_jobs([job_id], JOB_FIELDS))
        job = dict(zip(JOB_FIELDS, row, strict=True))
        if job["status"] is None:
            raise HttpError(404, f"Job {job_id} not found")
        stream = await _open_stream(request)
        try:
            await self._follow(stream, job)
        except HttpError as err:  # the answer has begun: tell the page in an event
            await _send(stream, "failure", json.dumps({"message": err.message}))
        except ConnectionResetError:  # the page went away
            pass
        return stream

    async def _follow(self, stream: web.StreamResponse, job: dict[str, Any]) -> None:
        """Send the job, then each of its changes, until it is finished or we stop."""
        log = sorted((entry for entries in job["oplog"] for entry in entries), key=_serial)
        await _send(stream, "job", json.dumps({**job, "log": log}))
        info: list[Any] | None = [job[field] for field in WATCH_FIELDS]
        serial = log[-1][0] if log else None
        while job["status"] not in FINALIZED and not self.closing.is_set():
            answer = await self._wait(job["id"], info, serial)
            if answer == constants.JOB_NOTCHANGED:
                await stream.write(b": keep-alive\n\n")
                continue
            info, entries = answer
            serial = max([serial or 0, *(entry[0] for entry in entries)])
            job.update(zip(WATCH_FIELDS, info, strict=True))
            change = {"fields": dict(zip(WATCH_FIELDS, info, strict=True)), "log": entries}
            await _send(stream, "change", json.dumps(change))
        await _send(stream, "end", json.dumps({"status": job["status"]}))

    async def _wait(self, job_id: int, info: list[Any] | None, serial: int | None) -> Any:
        try:
            answer = await self._master.long_poll(
                lambda c: c.wait_for_job_change(job_id, WATCH_FIELDS, info, serial, JOB_WAIT),
                watch=True,
            )
        except GenericError as err:
            raise from_luxi(err) from err
        if not answer:
            raise HttpError(404, f"Job {job_id} not found")
        return answer

    async def _ask(self, call: Any) -> Any:
        try:
            return await self._master.call(call)
        except GenericError as err:
            raise from_luxi(err) from err


async def _open_stream(request: web.Request) -> web.StreamResponse:
    stream = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
    )
    await stream.prepare(request)
    return stream


async def _send(stream: web.StreamResponse, event: str, data: str) -> None:
    """One server-sent event (``data`` is one line of JSON)."""
    await stream.write(f"event: {event}\ndata: {data}\n\n".encode())


def _serial(entry: list[Any]) -> int:
    return int(entry[0])


def _read_static(name: str) -> bytes:
    return importlib.resources.files("jobqueue.rapi").joinpath("static", name).read_bytes()
