"""Ganeti's remote API resources for jobs and filters, answered through LUXI.

Shapes follow Ganeti's RAPI (``doc/rapi.rst`` of this project lists them):

=======================================  ===============================================
``GET /version``                         ``2``
``GET /2/jobs``                          ``[{"id": 4, "uri": "/2/jobs/4"}, ...]``;
                                         with ``bulk=1`` one object of ``JOB_FIELDS_BULK``
                                         per job
``POST /2/jobs`` (jobqueue's)            body ``{"ops": [opcode, ...]}``; the job id
``GET /2/jobs/[id]``                     one object of ``JOB_FIELDS``
``DELETE /2/jobs/[id]``                  ``CancelJob``: ``[success, message]``
                                         (``kill=1``, jobqueue's, kills a running job)
``PUT /2/jobs/[id]/priority``            body ``{"priority": -10|0|10}`` (jobqueue's)
``GET /2/jobs/[id]/wait``                body ``{"fields", "previous_job_info",
                                         "previous_log_serial"}``; ``null`` when
                                         nothing changed, else ``{"job_info",
                                         "log_entries"}``
``GET /2/filters``                       ``[{"id": uuid, "uri": ...}]``, ``bulk=1``
``POST /2/filters``                      body ``{"priority", "predicates", "action",
                                         "reason"}``; the new uuid
``GET|PUT|DELETE /2/filters/[uuid]``     one filter; replace (or create) it; delete it
=======================================  ===============================================

A request body must be JSON (``Content-Type: application/json``, else 415)
and is checked here before anything reaches the master (400 naming the
parameter), as Ganeti's RAPI does. Only plain JSON passes: no ``NaN`` or
``Infinity``, no number too large for a float, lists and objects nested at
most ``MAX_BODY_NESTING`` levels; the master could not be sent anything
else. A job id in a path longer than ``MAX_JOB_ID_DIGITS`` digits names no
job, and is answered as any unknown job is, without asking the master.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from jobqueue import constants
from jobqueue.errors import GenericError
from jobqueue.luxi.client import Client
from jobqueue.luxi.protocol import NotPlainJSON, loads_plain, nesting_depth
from jobqueue.model import is_json_int
from jobqueue.plainjson import MAX_DEPTH
from jobqueue.rapi.access import Caller
from jobqueue.rapi.answers import JSON, HttpError, from_luxi, json_response
from jobqueue.rapi.master import Master, query_as_dicts, rows_as_dicts
from jobqueue.rapi.users import READ, WRITE

#: Ganeti's RAPI version, answered by ``GET /version``.
RAPI_VERSION = 2
JOB_FIELDS_BULK = [
    "id",
    "ops",
    "status",
    "summary",
    "opstatus",
    "received_ts",
    "start_ts",
    "end_ts",
]
JOB_FIELDS = [*JOB_FIELDS_BULK, "oplog", "opresult"]
FILTER_FIELDS = ["watermark", "priority", "predicates", "action", "reason_trail", "uuid"]
#: Reason trail sources, as Ganeti's (a user's own reason; its RAPI library).
REASON_SOURCE_USER = "gnt:user"
REASON_SOURCE_RAPI = "gnt:library:rlib2"
#: Seconds ``GET /2/jobs/[id]/wait`` waits for a change before answering ``null``.
WAIT_TIMEOUT = 10.0
_FILTER_PARAMS = ("priority", "predicates", "action", "reason")
#: Deepest nesting of lists and objects in a request body: twice what an opcode,
#: a filter predicate or a job's result may nest, so every body the master
#: could accept (or whose values it gave, as a wait's ``previous_job_info``)
#: passes and the master's own checks name what is too deep; far below the
#: nesting at which the master refuses the whole LUXI request as malformed
#: (``luxi.protocol.MAX_REQUEST_NESTING``), which would be answered 502.
MAX_BODY_NESTING = 2 * MAX_DEPTH
#: Most digits (leading zeros aside) of a job id in a path: more than any
#: queue reaches (2**64 has 20), far fewer than Python converts to an integer.
MAX_JOB_ID_DIGITS = 20

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclasses.dataclass(frozen=True)
class Route:
    """One method of one resource and the right it needs."""

    method: str
    path: str
    handler: Handler
    right: str


class Resources:
    """The handlers; each asks the master through ``master``.

    ``wait_timeout``: seconds ``GET /2/jobs/[id]/wait`` waits for a change.
    """

    def __init__(self, master: Master, *, wait_timeout: float = WAIT_TIMEOUT) -> None:
        self._master = master
        self._wait_timeout = wait_timeout

    def routes(self) -> list[Route]:
        job, uuid = r"/2/jobs/{job_id:\d+}", "/2/filters/{uuid}"
        return [
            Route("GET", "/version", self.version, READ),
            Route("GET", "/2/jobs", self.list_jobs, READ),
            Route("POST", "/2/jobs", self.submit_job, WRITE),
            Route("GET", job, self.get_job, READ),
            Route("DELETE", job, self.cancel_job, WRITE),
            Route("PUT", job + "/priority", self.change_priority, WRITE),
            Route("GET", job + "/wait", self.wait_job, WRITE),
            Route("GET", "/2/filters", self.list_filters, READ),
            Route("POST", "/2/filters", self.add_filter, WRITE),
            Route("GET", uuid, self.get_filter, READ),
            Route("PUT", uuid, self.replace_filter, WRITE),
            Route("DELETE", uuid, self.delete_filter, WRITE),
        ]

    async def _ask(self, call: Callable[[Client], Any]) -> Any:
        try:
            return await self._master.call(call)
        except GenericError as err:
            raise from_luxi(err) from err

    # -- /version, /2/jobs ----------------------------------------------------------
    async def version(self, request: web.Request) -> web.Response:
        return json_response(RAPI_VERSION)

    async def list_jobs(self, request: web.Request) -> web.Response:
        if flag(request, "bulk"):
            rows = await self._ask(lambda c: c.query_jobs(None, JOB_FIELDS_BULK))
            return json_response(rows_as_dicts(JOB_FIELDS_BULK, rows))
        rows = await self._ask(lambda c: c.query_jobs(None, ["id"]))
        ids = sorted(row[0] for row in rows)
        return json_response([{"id": job_id, "uri": f"/2/jobs/{job_id}"} for job_id in ids])

    async def submit_job(self, request: web.Request) -> web.Response:
        body = await json_object(request, ("ops",))
        ops = body.get("ops")
        if not isinstance(ops, list) or not ops or not all(isinstance(o, dict) for o in ops):
            raise HttpError(400, "The 'ops' parameter should be a non-empty list of opcodes")
        if flag(request, "dry-run"):
            ops = [{**op, "dry_run": True} for op in ops]
        trail = reason_trail(request, "jobs")
        ops = [
            {**op, "reason": [*op.get("reason", []), *trail]}
            if _is_list(op.get("reason", []))
            else op
            for op in ops
        ]
        return json_response(await self._ask(lambda c: c.submit_job(ops)))

    async def get_job(self, request: web.Request) -> web.Response:
        job_id = path_job_id(request)
        (row,) = await self._ask(lambda c: c.query_jobs([job_id], JOB_FIELDS))
        if row[JOB_FIELDS.index("status")] is None:
            raise HttpError(404, f"Job {job_id} not found")
        return json_response(dict(zip(JOB_FIELDS, row, strict=True)))

    async def cancel_job(self, request: web.Request) -> web.Response:
        kill = flag(request, "kill")
        try:
            job_id = path_job_id(request)
        except HttpError as err:  # as the master answers for an unknown job
            return json_response([False, err.message])
        return json_response(await self._ask(lambda c: c.cancel_job(job_id, kill)))

    async def change_priority(self, request: web.Request) -> web.Response:
        priority: Any = (await json_object(request, ("priority",))).get("priority")
        if not is_json_int(priority):
            raise HttpError(400, "The 'priority' parameter should be an integer")
        new = int(priority)
        try:
            job_id = path_job_id(request)
        except HttpError as err:  # as the master answers for an unknown job
            return json_response([False, err.message])
        return json_response(await self._ask(lambda c: c.change_job_priority(job_id, new)))

    async def wait_job(self, request: web.Request) -> web.Response:
        job_id = path_job_id(request)
        body = await json_object(request, ("fields", "previous_job_info", "previous_log_serial"))
        fields = body.get("fields")
        info = body.get("previous_job_info")
        serial = body.get("previous_log_serial")
        if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
            raise HttpError(400, "The 'fields' parameter should be a list")
        if not (info is None or isinstance(info, list)):
            raise HttpError(400, "The 'previous_job_info' parameter should be a list")
        if not (serial is None or is_json_int(serial)):
            raise HttpError(400, "The 'previous_log_serial' parameter should be a number")
        try:
            answer = await self._master.long_poll(
                lambda c: c.wait_for_job_change(job_id, fields, info, serial, self._wait_timeout)
            )
        except GenericError as err:
            raise from_luxi(err) from err
        if not answer:
            raise HttpError(404, f"Job {job_id} not found")
        if answer == constants.JOB_NOTCHANGED:
            return json_response(None)
        return json_response({"job_info": answer[0], "log_entries": answer[1]})

    # -- /2/filters -----------------------------------------------------------------
    async def list_filters(self, request: web.Request) -> web.Response:
        if flag(request, "bulk"):
            return json_response(await self._filters(None))
        rules = await self._filters(None, ["uuid"])
        uuids = sorted(rule["uuid"] for rule in rules)
        return json_response([{"id": uuid, "uri": f"/2/filters/{uuid}"} for uuid in uuids])

    async def add_filter(self, request: web.Request) -> web.Response:
        priority, predicates, action, reason = filter_parameters(
            await json_object(request, _FILTER_PARAMS)
        )
        reason = [*reason, *reason_trail(request, "filters")]
        answer = await self._ask(
            lambda c: c.call("ReplaceFilter", None, priority, predicates, action, reason)
        )
        return json_response(answer)

    async def get_filter(self, request: web.Request) -> web.Response:
        uuid = request.match_info["uuid"]
        rules = await self._filters(["==", "uuid", uuid])
        if not rules or rules[0]["uuid"] is None:
            raise HttpError(404, f"Filter {uuid} not found")
        return json_response(rules[0])

    async def replace_filter(self, request: web.Request) -> web.Response:
        uuid = request.match_info["uuid"]
        body = await json_object(request, (*_FILTER_PARAMS, "uuid"))
        if body.get("uuid", uuid) != uuid:
            raise HttpError(400, "The 'uuid' parameter differs from the filter's address")
        priority, predicates, action, reason = filter_parameters(body)
        reason = [*reason, *reason_trail(request, "filters")]
        answer = await self._ask(
            lambda c: c.call("ReplaceFilter", uuid, priority, predicates, action, reason)
        )
        return json_response(answer)

    async def delete_filter(self, request: web.Request) -> web.Response:
        uuid = request.match_info["uuid"]
        await self._ask(lambda c: c.call("DeleteFilter", uuid))
        return json_response(None)

    async def _filters(self, qfilter: Any, fields: list[str] | None = None) -> list[dict[str, Any]]:
        wanted = fields or FILTER_FIELDS
        answer = await self._ask(lambda c: c.query("filter", wanted, qfilter))
        return query_as_dicts(wanted, answer)


def reason_trail(request: web.Request, resource: str) -> list[list[Any]]:
    """Reason trail entries for a change made through this API, as Ganeti's RAPI adds them.

    A ``reason`` query parameter (Ganeti's) comes first as ``gnt:user``; then
    an entry naming the resource and the user who asked, since the master
    records jobqueue-rapi itself as the submitter.
    """
    now, trail = time.time_ns(), []
    given = request.query.get("reason")
    if given:
        trail.append([REASON_SOURCE_USER, given, now])
    caller: Caller = request["caller"]
    trail.append([f"{REASON_SOURCE_RAPI}:{resource}", f"jobqueue-rapi user {caller.name}", now])
    return trail


def _is_list(value: Any) -> bool:
    return isinstance(value, list)


def path_job_id(request: web.Request) -> int:
    """The job id in the request's path (digits only, by the route).

    Raises ``HttpError`` 404, with the text the master gives for an unknown
    job, when it has more than ``MAX_JOB_ID_DIGITS`` digits: no job has such
    an id, and Python would refuse to convert a very long one.
    """
    digits = request.match_info["job_id"].lstrip("0") or "0"
    if len(digits) > MAX_JOB_ID_DIGITS:
        raise HttpError(404, f"Job {digits} not found")
    return int(digits)


def flag(request: web.Request, name: str) -> bool:
    """A boolean query parameter: an integer, true unless 0 (400 otherwise)."""
    value = request.query.get(name)
    if value is None:
        return False
    try:
        return int(value) != 0
    except ValueError:
        raise HttpError(400, f"Invalid value for the '{name}' parameter") from None


async def json_object(request: web.Request, allowed: tuple[str, ...]) -> dict[str, Any]:
    """The request's JSON body, which must be an object of ``allowed`` keys (400, 415)."""
    data = await request.read()
    if not data:
        raise HttpError(400, "A JSON object is required as the request body")
    content_type = request.headers.get("Content-Type", "application/octet-stream")
    if content_type.split(";")[0].strip().lower() != JSON:
        raise HttpError(415, f"The request body must be {JSON}")
    body = parse_json(data)
    if not isinstance(body, dict):
        raise HttpError(400, "Invalid body contents, not a dictionary")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise HttpError(400, f"Invalid body parameters: unknown parameter '{unknown[0]}'")
    return body


def parse_json(data: bytes) -> Any:
    """The value of a request body, which must be plain JSON (see the module docstring).

    Raises ``HttpError`` 400 otherwise, and nothing else whatever the body:
    one nested deeper than the parser can go is refused as too deep too.
    """
    try:
        value = loads_plain(data)
    except NotPlainJSON as err:
        raise HttpError(400, f"Unable to parse JSON data: {err}") from None
    except RecursionError:
        raise HttpError(400, _too_deep()) from None
    except (ValueError, UnicodeDecodeError):
        raise HttpError(400, "Unable to parse JSON data") from None
    if nesting_depth(value, MAX_BODY_NESTING) > MAX_BODY_NESTING:
        raise HttpError(400, _too_deep())
    return value


def _too_deep() -> str:
    levels = MAX_BODY_NESTING
    return f"Unable to parse JSON data: lists and objects nested deeper than {levels} levels"


def filter_parameters(body: dict[str, Any]) -> tuple[int, list[Any], Any, list[Any]]:
    """``(priority, predicates, action, reason)`` of a filter body, with Ganeti's defaults."""
    priority = body.get("priority", 0)
    predicates = body.get("predicates", [])
    reason = body.get("reason", [])
    if not is_json_int(priority):
        raise HttpError(400, "'priority' parameter: an integer is expected")
    if not isinstance(predicates, list):
        raise HttpError(400, "'predicates' parameter: a list is expected")
    if not isinstance(reason, list):
        raise HttpError(400, "'reason' parameter: a list is expected")
    return priority, predicates, body.get("action", "CONTINUE"), reason
