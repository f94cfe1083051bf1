"""A started queue and its reader under one name, for tests that drive both."""

from __future__ import annotations

from typing import Any

from jobqueue.daemon import Core


class QueueUnderTest:
    """A started queue and its reader, as the LUXI server uses them: changes go to
    the queue (every attribute of ``JobQueue``), questions to the reader."""

    def __init__(self, core: Core) -> None:
        self.core = core

    def __getattr__(self, name: str) -> Any:
        return getattr(self.core.queue, name)

    def query_jobs(self, job_ids: list[int] | None, fields: list[str]) -> list[list[Any]]:
        return self.core.reader.query_jobs(job_ids, fields)

    def query(self, what: str, fields: list[str], qfilter: Any, archived: bool = False) -> Any:
        return self.core.reader.query(what, fields, qfilter, archived)

    def query_fields(self, what: str, fields: list[str] | None) -> Any:
        return self.core.reader.query_fields(what, fields)
