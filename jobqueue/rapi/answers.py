"""Answers: JSON bodies, and errors as Ganeti's RAPI gives them.

An error is an HTTP status with the JSON body ``{"code": status, "message":
text, "explain": the status's standard description}`` and the content type
``application/json``. ``HttpError`` is raised by handlers and turned into
that answer by the error middleware (``app``); ``from_luxi`` maps what the
master (or the way to it) raised onto the status Ganeti's RAPI uses:

=========================================  =====================================
queue full, queue drained                  503 Service Unavailable
not the master (a standby answered)        503
cannot reach the master daemon             502 Bad Gateway
connection lost, malformed answer          502
no answer in time                          504 Gateway Timeout
not allowed to connect to the master       500 ("no permission to connect ...")
the master refuses this change (jobs       403 Forbidden, the master's message
others submitted need the admin group)
invalid input (``OpPrereqError``), an      400 Bad Request
unknown opcode
no such job or filter                      404 Not Found
anything else                              500 Internal Server Error
=========================================  =====================================
"""

from __future__ import annotations

import http
import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from jobqueue import errors

JSON = "application/json"
#: How the LUXI client's refusal to connect begins (as opposed to the master's refusals).
CONNECT_DENIED = "Permission denied connecting to the socket"


class HttpError(Exception):
    """An HTTP error answer: ``status``, ``message`` and extra ``headers``.

    A signal for the error middleware, outside ``jobqueue.errors``' tree.
    """

    def __init__(
        self, status: int, message: str | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message or _phrase(status)
        self.headers = dict(headers or {})


def error_response(error: HttpError) -> web.Response:
    """Ganeti's error body for ``error``."""
    body = {"code": error.status, "message": error.message, "explain": _explain(error.status)}
    return web.Response(
        status=error.status,
        body=json.dumps(body).encode(),
        content_type=JSON,
        headers=error.headers,
    )


def json_response(value: Any, status: int = 200) -> web.Response:
    """``value`` as JSON (a plain string or number too, as Ganeti's RAPI answers them)."""
    return web.Response(status=status, body=json.dumps(value).encode(), content_type=JSON)


def from_luxi(err: errors.GenericError) -> HttpError:
    """The HTTP error for a failed LUXI call (see the module docstring)."""
    message = _message(err)
    if isinstance(err, errors.JobQueueFull):
        return HttpError(503, "Job queue is full, needs archiving")
    if isinstance(err, errors.JobQueueDrainError):
        return HttpError(503, "Job queue is drained, cannot submit")
    if isinstance(err, errors.NotMasterError):
        return HttpError(503, message)
    if isinstance(err, errors.NoMasterError):
        return HttpError(502, f"Can't connect to master daemon: {message}")
    if isinstance(err, errors.AccessDenied):
        if message.startswith(CONNECT_DENIED):
            return HttpError(500, "Internal error: no permission to connect to the master daemon")
        return HttpError(403, message)
    if isinstance(err, errors.RequestTimeout):
        return HttpError(504, f"Timeout while talking to the master daemon: {message}")
    if isinstance(err, errors.LuxiError):
        return HttpError(502, message)
    if isinstance(err, errors.JobLost):
        return HttpError(404, message)
    if isinstance(err, errors.OpPrereqError):
        noent = len(err.args) > 1 and err.args[1] == errors.ECODE_NOENT
        return HttpError(404 if noent else 400, message)
    if isinstance(err, errors.OpCodeUnknown):
        return HttpError(400, message)
    return HttpError(500, message)


def _message(err: errors.GenericError) -> str:
    return str(err.args[0]) if err.args else type(err).__name__


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _explain(status: int) -> str:
    try:
        return http.HTTPStatus(status).description
    except ValueError:
        return "Unknown"
