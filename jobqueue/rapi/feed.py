"""The dashboard's live overview: one poller for every open page.

While at least one page listens, ``Feed`` asks the master for the live
jobs (index fields only), the locks, the queue settings and the filters,
every ``interval`` seconds (stretched to ten times what the last round
took, so a huge queue is not asked more than it can answer), and wakes
every listener when something differs. Each page then picks its own view:
the jobs matching its status filter and search, newest first, at most
``VIEW_LIMIT`` of them. Nothing is asked while no page listens.

All of it runs in the event loop's thread, so what a page's view costs is
bounded: a search has at most ``MAX_SEARCH_WORDS`` words (``search_words``
refuses more), and each row's text to search is made once per snapshot,
whatever the number of pages.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from jobqueue.errors import GenericError, OpPrereqError
from jobqueue.rapi.master import Master, query_as_dicts, rows_as_dicts
from jobqueue.rapi.resources import FILTER_FIELDS

#: The job fields a list row shows.
ROW_FIELDS = ["id", "status", "priority", "summary", "received_ts", "start_ts", "end_ts"]
LOCK_FIELDS = ["name", "mode", "owner", "pending"]
CONFIG_FIELDS = ["workers", "drain_flag", "live_jobs", "max_jobs", "role", "master"]
#: Most jobs one page's list shows.
VIEW_LIMIT = 200
#: Longest search, in characters, and most words in it: more than anyone types.
MAX_SEARCH_LENGTH = 200
MAX_SEARCH_WORDS = 10


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """One round of answers; ``version`` grows whenever any of it changed."""

    version: int
    jobs: list[dict[str, Any]]
    locks: list[dict[str, Any]]
    config: dict[str, Any]
    filters: list[dict[str, Any]] | None  # None: the master has no job filters
    error: str | None = None

    @functools.cached_property
    def search_texts(self) -> list[str]:
        """Each job's id, status and summaries in lower case, in the order of ``jobs``.

        Made on first use, then shared by every page's view of this snapshot.
        """
        return [_search_text(row) for row in self.jobs]


EMPTY = Snapshot(0, [], [], {}, None, "Waiting for the first answer of the master")


class Feed:
    """See the module docstring."""

    def __init__(
        self,
        master: Master,
        *,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger | None = None,
    ) -> None:
        self._master = master
        self._interval = interval
        self._clock = clock
        self._log = logger or logging.getLogger(__name__)
        self.latest = EMPTY
        self._listeners = 0
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    @contextlib.asynccontextmanager
    async def listening(self) -> AsyncIterator[Feed]:
        """Keep the poller running while the block runs."""
        self._listeners += 1
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._poll())
        try:
            yield self
        finally:
            self._listeners -= 1
            if not self._listeners and self._task is not None:
                self._task.cancel()
                self._task = None

    async def next(self, seen: int, timeout: float) -> Snapshot:
        """The latest snapshot once its version is above ``seen``, after ``timeout``,
        or at once after ``stop``."""
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._changed.wait_for(
                        lambda: self._stopped or self.latest.version > seen
                    )
        return self.latest

    async def stop(self) -> None:
        """Wake every listener for good (the daemon stops)."""
        self._stopped = True
        async with self._changed:
            self._changed.notify_all()

    async def _poll(self) -> None:
        while True:
            started = self._clock()
            try:
                snapshot = await self._ask()
            except Exception as err:  # a malformed answer: say so, keep polling
                self._log.exception("The dashboard's poll failed")
                snapshot = dataclasses.replace(self.latest, error=f"Internal error: {err}")
            if _content(snapshot) != _content(self.latest):
                self.latest = dataclasses.replace(snapshot, version=self.latest.version + 1)
                async with self._changed:
                    self._changed.notify_all()
            took = self._clock() - started
            await asyncio.sleep(max(self._interval, 10 * took) - took)

    async def _ask(self) -> Snapshot:
        try:
            rows = await self._master.call(lambda c: c.query_jobs(None, ROW_FIELDS))
            locks = await self._master.call(lambda c: c.query("lock", LOCK_FIELDS, None))
            config = await self._master.call(lambda c: c.query_config_values(CONFIG_FIELDS))
            filters = await self._filters()
        except GenericError as err:
            return dataclasses.replace(self.latest, error=f"The master did not answer: {err}")
        return Snapshot(
            0,
            rows_as_dicts(ROW_FIELDS, rows),
            query_as_dicts(LOCK_FIELDS, locks),
            dict(zip(CONFIG_FIELDS, config, strict=True)),
            filters,
        )

    async def _filters(self) -> list[dict[str, Any]] | None:
        try:
            answer = await self._master.call(lambda c: c.query("filter", FILTER_FIELDS, None))
        except OpPrereqError:
            return None  # a master without job filters
        return query_as_dicts(FILTER_FIELDS, answer)


def _content(snapshot: Snapshot) -> str:
    return json.dumps(
        [snapshot.jobs, snapshot.locks, snapshot.config, snapshot.filters, snapshot.error],
        sort_keys=True,
    )


def search_words(search: str) -> list[str]:
    """The words of a search, in lower case.

    Raises ValueError, saying why, for a search longer than
    ``MAX_SEARCH_LENGTH`` characters or of more than ``MAX_SEARCH_WORDS`` words.
    """
    if len(search) > MAX_SEARCH_LENGTH:
        raise ValueError(f"The 'search' parameter is longer than {MAX_SEARCH_LENGTH} characters")
    words = search.lower().split()
    if len(words) > MAX_SEARCH_WORDS:
        raise ValueError(f"The 'search' parameter has more than {MAX_SEARCH_WORDS} words")
    return words


def view(snapshot: Snapshot, statuses: frozenset[str], words: list[str]) -> dict[str, Any]:
    """What one page shows: its jobs (filtered, newest first, bounded) and the rest.

    ``words`` are ``search_words``: a job matches when each appears in its
    id, status or a summary (any case).
    """
    chosen = [
        index
        for index, row in enumerate(snapshot.jobs)
        if not statuses or row["status"] in statuses
    ]
    if words:
        texts = snapshot.search_texts
        chosen = [index for index in chosen if all(word in texts[index] for word in words)]
    matching = [snapshot.jobs[index] for index in reversed(chosen)]
    counts: dict[str, int] = {}
    for row in snapshot.jobs:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    running = [row for row in snapshot.jobs if row["status"] == "running"]
    return {
        "jobs": matching[:VIEW_LIMIT],
        "matching": len(matching),
        "counts": counts,
        "locks": snapshot.locks,
        "config": snapshot.config,
        "running": running,
        "filters": snapshot.filters,
        "error": snapshot.error,
    }


def _search_text(row: dict[str, Any]) -> str:
    return " ".join([str(row["id"]), str(row["status"]), *map(str, row["summary"] or [])]).lower()
