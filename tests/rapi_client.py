"""A remote API client written from the documented shapes only (doc/rapi.rst).

It knows nothing of jobqueue's code: it speaks HTTPS with the standard
library, sends basic authentication, JSON bodies with their content type,
and decodes the JSON answers. A failed request raises ``RapiFailure`` with
the status and the decoded error body.
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


class RapiFailure(Exception):
    def __init__(self, status: int, body: Any, headers: dict[str, str]) -> None:
        super().__init__(status, body)
        self.status = status
        self.body = body
        self.headers = headers


class RapiClient:
    def __init__(
        self, url: str, cafile: str, user: str | None = None, password: str | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self.context = ssl.create_default_context(cafile=cafile)
        self.credentials = None
        if user is not None:
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            self.credentials = f"Basic {token}"

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        raw_body: bytes | None = None,
        timeout: float = 30.0,
    ) -> Any:
        data = raw_body
        sent = dict(headers or {})
        if body is not None:
            data = json.dumps(body).encode()
            sent.setdefault("Content-Type", "application/json")
        if self.credentials:
            sent["Authorization"] = self.credentials
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=sent)
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=timeout) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as err:
            text = err.read()
            raise RapiFailure(err.code, json.loads(text), dict(err.headers)) from None

    def text(self, path: str) -> tuple[str, str]:
        """A non-JSON resource: (content type, text)."""
        sent = {"Authorization": self.credentials} if self.credentials else {}
        request = urllib.request.Request(self.url + path, headers=sent)
        with urllib.request.urlopen(request, context=self.context, timeout=30) as answer:
            return answer.headers["Content-Type"], answer.read().decode()

    def overview(self, search: str = "", timeout: float = 10.0) -> Any:
        """The first ``overview`` event of ``/dashboard/events`` that has no error."""
        query = urllib.parse.urlencode({"search": search})
        sent = {"Authorization": self.credentials} if self.credentials else {}
        request = urllib.request.Request(f"{self.url}/dashboard/events?{query}", headers=sent)
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=timeout) as stream:
                event = b""
                for line in stream:  # server-sent events: "event: name", "data: json", ""
                    if line.startswith(b"event: "):
                        event = line.removeprefix(b"event: ").strip()
                    elif line.startswith(b"data: ") and event == b"overview":
                        data = json.loads(line.removeprefix(b"data: "))
                        if data["error"] is None:
                            return data
        except urllib.error.HTTPError as err:
            raise RapiFailure(err.code, json.loads(err.read()), dict(err.headers)) from None
        raise AssertionError("the event stream ended without an overview")

    # -- the documented resources --------------------------------------------------------
    def version(self) -> Any:
        return self.request("GET", "/version")

    def jobs(self, bulk: bool = False) -> Any:
        return self.request("GET", "/2/jobs" + ("?bulk=1" if bulk else ""))

    def submit(self, ops: list[dict[str, Any]], dry_run: bool = False) -> Any:
        return self.request("POST", "/2/jobs" + ("?dry-run=1" if dry_run else ""), {"ops": ops})

    def job(self, job_id: int) -> Any:
        return self.request("GET", f"/2/jobs/{job_id}")

    def cancel(self, job_id: int, kill: bool = False) -> Any:
        return self.request("DELETE", f"/2/jobs/{job_id}" + ("?kill=1" if kill else ""))

    def set_priority(self, job_id: int, priority: int) -> Any:
        return self.request("PUT", f"/2/jobs/{job_id}/priority", {"priority": priority})

    def wait(
        self, job_id: int, fields: list[str], previous_info: Any = None, previous_serial: Any = None
    ) -> Any:
        body = {
            "fields": fields,
            "previous_job_info": previous_info,
            "previous_log_serial": previous_serial,
        }
        return self.request("GET", f"/2/jobs/{job_id}/wait", body)

    def filters(self, bulk: bool = False) -> Any:
        return self.request("GET", "/2/filters" + ("?bulk=1" if bulk else ""))

    def add_filter(self, **params: Any) -> Any:
        return self.request("POST", "/2/filters", params)

    def filter(self, uuid: str) -> Any:
        return self.request("GET", f"/2/filters/{uuid}")

    def replace_filter(self, uuid: str, **params: Any) -> Any:
        return self.request("PUT", f"/2/filters/{uuid}", params)

    def delete_filter(self, uuid: str) -> Any:
        return self.request("DELETE", f"/2/filters/{uuid}")
